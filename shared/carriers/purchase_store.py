"""Where a service keeps its label purchases between tries: the SQL that shipping (one row
per shipment) and returns (one row per return) share.

Each row holds the purchase's status (``label_pending`` while it is being bought), the
chosen carrier and service, the idempotency key, whether it is pinned, the carrier calls
used (``attempts``), when to try next (``next_attempt_at``) and the last error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.carriers.purchase import Attempt, PurchaseState
from shared.db.uow import Connection


def as_leased(row: asyncpg.Record) -> dict[str, Any]:
    """A row as a lease returns it to its try. The lease pins a stored choice in the store,
    since the try may call the carrier with its key (a try that dies on the way then leaves
    it pinned, and the next cannot switch carriers and buy a second label); the try itself
    goes by what the last recorded outcome said, which the lease returns as
    ``pinned_before``."""
    leased = dict(row)
    leased["carrier_pinned"] = leased.pop("pinned_before")
    return leased


@dataclass(frozen=True)
class PurchaseRows:
    """The table and column names of one service's purchases (fixed names, never input)."""

    table: str
    id_column: str
    status_column: str
    carrier_column: str
    service_column: str
    #: the SQL type of ``id_column``
    id_type: str = "text"

    async def save_attempt(self, conn: Connection, row_id: object, attempt: Attempt) -> None:
        """A try without a label: the calls used, whether the choice still stands, and when
        to try again."""
        await self.save_attempts(conn, [(row_id, attempt)])

    async def save_attempts(
        self, conn: Connection, attempts: Sequence[tuple[object, Attempt]]
    ) -> None:
        """:meth:`save_attempt` for several purchases in one statement."""
        if not attempts:
            return
        await conn.execute(
            f"""
            UPDATE {self.table} t
               SET attempts = n.a, carrier_pinned = n.p,
                   next_attempt_at = now() + make_interval(secs => n.r), last_error = n.e,
                   {self.carrier_column} = CASE WHEN n.c THEN t.{self.carrier_column} END,
                   {self.service_column} = CASE WHEN n.c THEN t.{self.service_column} END
              FROM unnest($1::{self.id_type}[], $2::int[], $3::boolean[], $4::float8[],
                          $5::text[], $6::boolean[]) AS n(i, a, p, r, e, c)
             WHERE t.{self.id_column} = n.i AND t.{self.id_column} = ANY($1::{self.id_type}[])
               AND t.{self.status_column} = 'label_pending'
            """,
            [row_id for row_id, _ in attempts],
            [a.state.attempts for _, a in attempts],
            [a.state.pinned for _, a in attempts],
            [a.retry_in or 0.0 for _, a in attempts],
            [(a.error or "")[:1000] for _, a in attempts],
            [a.state.choice is not None for _, a in attempts],
        )

    async def give_up(
        self, conn: Connection, row_id: object, state: PurchaseState, error: str
    ) -> bool:
        """The budget is spent: ``label_failed`` until ops retry. True if it changed now."""
        status = await conn.execute(
            f"""
            UPDATE {self.table}
               SET {self.status_column} = 'label_failed', attempts = $2, carrier_pinned = $3,
                   last_error = $4
             WHERE {self.id_column} = $1 AND {self.status_column} = 'label_pending'
            """,
            row_id,
            state.attempts,
            state.pinned,
            error[:1000],
        )
        return status == "UPDATE 1"

    async def retry_failed(self, conn: Connection, column: str, value: object) -> int:
        """Ops asked for another round for the failed purchases whose ``column`` is
        ``value``: the budget starts again, the choice and the pin stay."""
        if column not in (self.id_column, "order_id"):
            raise ValueError(f"cannot select purchases by {column!r}")
        status = await conn.execute(
            f"""
            UPDATE {self.table}
               SET {self.status_column} = 'label_pending', attempts = 0, next_attempt_at = now()
             WHERE {column} = $1 AND {self.status_column} = 'label_failed'
            """,
            value,
        )
        return int(status.split()[-1])
