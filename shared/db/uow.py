"""The unit of work: one transaction holding the state change, the inbox and the outbox.

Handlers never publish. They record the events they emit with :meth:`UnitOfWork.emit`;
the rows reach the ``outbox`` table in the same transaction as the state change, and
the relay publishes them after the commit. ``NOTIFY`` is sent inside the transaction,
so PostgreSQL delivers it only if the transaction commits.

Outbox order: a transaction writes its outbox rows last, under the service's outbox lock
(a transaction-scoped advisory lock, released at commit). Ids are drawn under that lock,
so within one service the id order of outbox rows is their commit order, and a relay
that sees a row sees every row with a smaller id (shared/messaging/relay.py). The lock is
the last one a transaction takes, so it cannot take part in a deadlock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from opentelemetry.context import Context

from shared import telemetry
from shared.events import Event

Connection = asyncpg.Connection | PoolConnectionProxy


def outbox_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which a service's relay is woken."""
    return f"waybill_outbox_{schema}"


def outbox_lock_key(schema: str) -> int:
    """The advisory lock under which a service's transactions write their outbox rows."""
    digest = hashlib.sha256(f"waybill.outbox.{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class OutboxMessage:
    event_id: UUID
    topic: str
    key: str | None
    payload: bytes
    headers: list[tuple[str, str]]


def trace_headers(context: Context | None = None) -> list[tuple[str, str]]:
    """The W3C trace context of ``context`` (default: the current span), carried on to the
    published record."""
    return sorted(telemetry.headers_of(context).items())


@dataclass(frozen=True)
class OutboxCopy:
    """Published outbox rows to append again (a re-drive), with one more header."""

    ids: list[int]
    header: tuple[str, str]


@dataclass
class UnitOfWork:
    """A connection inside an open transaction, and the events it will emit."""

    conn: Connection
    schema: str
    _pending: list[OutboxMessage] = field(default_factory=list)
    _copies: list[OutboxCopy] = field(default_factory=list)
    #: the trace context in which each event of the batch is handled (event_id -> context),
    #: set by the consumer: what an event emitted because of it continues
    causes: dict[UUID, Context] = field(default_factory=dict)

    def context_of(self, cause: Event | None) -> Context | None:
        """The trace context of handling ``cause`` (None: the current one)."""
        if cause is None:
            return None
        return self.causes.get(cause.event_id)

    def trace_of(self, cause: Event | None = None) -> dict[str, str]:
        """The trace context of handling ``cause`` (or the current one) as headers, to store
        with work that happens later."""
        return dict(trace_headers(self.context_of(cause)))

    def emit(
        self,
        event: Event,
        *,
        topic: str | None = None,
        cause: Event | None = None,
        context: Context | None = None,
    ) -> None:
        """Record ``event`` for publication once this unit of work commits. It continues the
        trace of ``context``, else of handling ``cause`` (the event it answers), else of the
        current span."""
        destination = topic or event.TOPIC
        if not destination:
            raise ValueError(f"{type(event).__name__} has no topic")
        self._pending.append(
            OutboxMessage(
                event_id=event.event_id,
                topic=destination,
                key=event.partition_key(),
                payload=event.to_bytes(),
                headers=trace_headers(context or self.context_of(cause)),
            )
        )

    def copy_published(self, ids: Sequence[int], *, header: tuple[str, str]) -> None:
        """Append copies of these published outbox rows when the unit of work commits (in id
        order, with ``header`` added); consumers' inboxes absorb what they handled."""
        if ids:
            self._copies.append(OutboxCopy(sorted(ids), header))

    @property
    def pending(self) -> list[OutboxMessage]:
        return list(self._pending)

    async def claim(self, consumer: str, event_ids: Iterable[UUID]) -> set[UUID]:
        """Insert ``(consumer, event_id)`` into the inbox; return the ids not seen before."""
        ids = list(dict.fromkeys(event_ids))
        claimed = await self.claim_many([(consumer, i) for i in ids])
        return {event_id for _, event_id in claimed}

    async def claim_many(self, entries: Sequence[tuple[str, UUID]]) -> set[tuple[str, UUID]]:
        """Insert every ``(consumer, event_id)`` into the inbox in one statement; return the
        entries not seen before."""
        unique = list(dict.fromkeys(entries))
        if not unique:
            return set()
        rows = await self.conn.fetch(
            """
            INSERT INTO inbox (consumer, event_id)
            SELECT * FROM unnest($1::text[], $2::uuid[])
            ON CONFLICT DO NOTHING
            RETURNING consumer, event_id
            """,
            [c for c, _ in unique],
            [e for _, e in unique],
        )
        return {(r["consumer"], r["event_id"]) for r in rows}

    async def flush(self) -> int:
        """Write the pending events (and re-driven copies) to the outbox under the outbox
        lock, and wake the relay. The last statements before the commit."""
        if not self._pending and not self._copies:
            return 0
        batch, self._pending = self._pending, []
        copies, self._copies = self._copies, []
        await self.conn.execute(
            "SELECT pg_advisory_xact_lock($1), pg_notify($2, '')",
            outbox_lock_key(self.schema),
            outbox_channel(self.schema),
        )
        if batch:
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
        for copy in copies:
            await self.conn.execute(
                """
                INSERT INTO outbox (event_id, topic, key, payload, headers, redrive_of)
                SELECT event_id, topic, key, payload,
                       headers || jsonb_build_array(jsonb_build_array($2::text, $3::text)), id
                FROM outbox WHERE id = ANY($1::bigint[]) ORDER BY id
                """,
                copy.ids,
                *copy.header,
            )
        return len(batch)


@asynccontextmanager
async def unit_of_work(pool: asyncpg.Pool, *, schema: str) -> AsyncIterator[UnitOfWork]:
    """Open a transaction; on normal exit flush the outbox and commit, else roll back."""
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn=conn, schema=schema)
        yield uow
        await uow.flush()
