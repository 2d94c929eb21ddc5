"""The unit of work: one transaction holding the state change, the inbox and the outbox.

Handlers never publish. They record the events they emit with :meth:`UnitOfWork.emit`;
the rows reach the ``outbox`` table in the same transaction as the state change, and
the relay publishes them after the commit. ``NOTIFY`` is sent inside the transaction,
so PostgreSQL delivers it only if the transaction commits.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from opentelemetry import propagate

from shared.events import Event

Connection = asyncpg.Connection | PoolConnectionProxy


def outbox_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which a service's relay is woken."""
    return f"waybill_outbox_{schema}"


@dataclass(frozen=True)
class OutboxMessage:
    event_id: UUID
    topic: str
    key: str | None
    payload: bytes
    headers: list[tuple[str, str]]


def trace_headers() -> list[tuple[str, str]]:
    """The W3C trace context of the current span, carried on to the published record."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return sorted(carrier.items())


@dataclass
class UnitOfWork:
    """A connection inside an open transaction, and the events it will emit."""

    conn: Connection
    schema: str
    _pending: list[OutboxMessage] = field(default_factory=list)

    def emit(self, event: Event, *, topic: str | None = None) -> None:
        """Record ``event`` for publication once this unit of work commits."""
        destination = topic or event.TOPIC
        if not destination:
            raise ValueError(f"{type(event).__name__} has no topic")
        self._pending.append(
            OutboxMessage(
                event_id=event.event_id,
                topic=destination,
                key=event.partition_key(),
                payload=event.to_bytes(),
                headers=trace_headers(),
            )
        )

    @property
    def pending(self) -> list[OutboxMessage]:
        return list(self._pending)

    async def claim(self, consumer: str, event_ids: Iterable[UUID]) -> set[UUID]:
        """Insert ``(consumer, event_id)`` into the inbox; return the ids not seen before."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return set()
        rows = await self.conn.fetch(
            """
            INSERT INTO inbox (consumer, event_id)
            SELECT $1, unnest($2::uuid[])
            ON CONFLICT DO NOTHING
            RETURNING event_id
            """,
            consumer,
            ids,
        )
        return {r["event_id"] for r in rows}

    async def flush(self) -> int:
        """Write the pending events to the outbox in one statement and wake the relay."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, []
        await self.conn.execute(
            """
            INSERT INTO outbox (event_id, topic, key, payload, headers)
            SELECT e, t, k, p, h::jsonb
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[])
                 AS m(e, t, k, p, h)
            """,
            [m.event_id for m in batch],
            [m.topic for m in batch],
            [m.key for m in batch],
            [m.payload for m in batch],
            # as JSON text: asyncpg would read nested lists as a multi-dimensional array
            [json.dumps(m.headers) for m in batch],
        )
        await self.conn.execute("SELECT pg_notify($1, '')", outbox_channel(self.schema))
        return len(batch)


@asynccontextmanager
async def unit_of_work(pool: asyncpg.Pool, *, schema: str) -> AsyncIterator[UnitOfWork]:
    """Open a transaction; on normal exit flush the outbox and commit, else roll back."""
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn=conn, schema=schema)
        yield uow
        await uow.flush()
