"""The outbox relay: publishes committed outbox rows to Kafka in order, in batches.

Ordering: a service's transactions draw their outbox ids under its outbox lock, which they
hold until they commit (shared/db/uow.py), so the id order is the commit order and a row
that is visible has every smaller id visible (or rolled back) too. The relay reads
unpublished rows in ``id`` order and sends them in that order; rows of one key go to one
partition in send order. Nothing waits for unrelated transactions: a long transaction of
another service, or of this one that has not written its outbox yet, holds nobody back.

What is published is one watermark, ``outbox_relay.published_through``: every row up to
it. One relay per service is active at a time (a session advisory lock); others wait as
stand-bys. It wakes on ``NOTIFY`` (sent by every transaction that writes the outbox) and
polls as a fallback. A crash between the publish and the watermark's update publishes
again: consumers' inboxes absorb it. That is also why the update is committed
asynchronously (``synchronous_commit = off``): losing it in a crash costs a re-send, never
an event. Setting the watermark back publishes everything after it again; a round moves
the watermark only from the value it read, so a setting back during a round holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from shared.db.pool import init_connection
from shared.db.uow import outbox_channel
from shared.faults import RELAY_AFTER_PUBLISH, die_if_armed

log = logging.getLogger("waybill.relay")


def _leader_key(schema: str) -> int:
    digest = hashlib.sha256(f"waybill.relay.{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class OutboxRelay:
    def __init__(
        self,
        *,
        dsn: str,
        pool: asyncpg.Pool,
        schema: str,
        producer: AIOKafkaProducer,
        batch_max: int = 1000,
        poll_seconds: float = 1.0,
        topic_prefix: str = "",
    ) -> None:
        self._dsn = dsn
        self._pool = pool
        self._schema = schema
        self._producer = producer
        self._batch_max = batch_max
        self._poll_seconds = poll_seconds
        self._topic_prefix = topic_prefix
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published_total = 0
        self.is_leader = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._schema}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._lead()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay of %s failed; restarting", self._schema)
                self.is_leader = False
                await asyncio.sleep(self._poll_seconds)

    async def _lead(self) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(
            self._dsn,
            server_settings={"search_path": self._schema, "synchronous_commit": "off"},
        )
        try:
            await init_connection(conn)
            # A stand-by polls for the lock: PostgreSQL offers no wake-up when it frees.
            while not await conn.fetchval(  # noqa: ASYNC110
                "SELECT pg_try_advisory_lock($1)", _leader_key(self._schema)
            ):
                await asyncio.sleep(self._poll_seconds)
            self.is_leader = True
            await conn.add_listener(outbox_channel(self._schema), self._on_notify)
            while True:
                self._wake.clear()
                if await self.publish_batch(conn) >= self._batch_max:
                    continue  # a full batch: more are waiting
                # rows committed meanwhile sent their NOTIFY: the wait returns at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._poll_seconds)
        finally:
            self.is_leader = False
            with contextlib.suppress(Exception):
                await conn.close()

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def publish_batch(self, conn: asyncpg.Connection | None = None) -> int:
        """Publish one batch of committed rows in id order; return how many were published."""
        db: Any = conn if conn is not None else self._pool
        rows = await db.fetch(
            """
            SELECT w.through, o.id, o.topic, o.key, o.payload, o.headers
            FROM (SELECT published_through AS through FROM outbox_relay) w
            JOIN LATERAL (
                SELECT id, topic, key, payload, headers FROM outbox
                WHERE id > w.through ORDER BY id LIMIT $1
            ) o ON true
            """,
            self._batch_max,
        )
        if not rows:
            return 0
        prefix = self._topic_prefix
        send = self._producer.send
        deliveries = []
        for row in rows:
            key = row["key"]
            deliveries.append(
                await send(
                    prefix + row["topic"],
                    value=row["payload"],
                    key=key.encode() if key is not None else None,
                    headers=[(k, v.encode()) for k, v in row["headers"]],
                )
            )
        await asyncio.gather(*deliveries)
        # acknowledged by the broker, watermark not moved: a crash here publishes them again
        die_if_armed(RELAY_AFTER_PUBLISH, self._schema)
        # only from where this round read it: a watermark set back meanwhile (the broker
        # lost its data, shared/messaging/epoch.py) stays back, and those rows go again
        await db.execute(
            """
            UPDATE outbox_relay SET published_through = $1, updated_at = now()
            WHERE published_through = $2
            """,
            rows[-1]["id"],
            rows[0]["through"],
        )
        self.published_total += len(rows)
        return len(rows)
