"""Batch handlers on the real broker and PostgreSQL: a whole batch of a topic in one call,
topics handled together, per-key order, a poison record isolated by the one-by-one
fallback, and each emitted event continuing the trace of the event it answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faststream.kafka import KafkaBroker

from shared.db import apply_migrations, create_pool, shared_migrations
from shared.db.uow import UnitOfWork
from shared.events import Event
from shared.messaging import (
    EventConsumer,
    OutboxRelay,
    client_options,
    create_broker,
    create_producer,
    ensure_topics,
    subscribe,
)
from shared.settings import KafkaSettings
from shared.topics import dead_letter_topic
from tests.conftest import new_database, new_kafka
from tests.support import wait_for

pytestmark = pytest.mark.integration


class Step(Event):
    TOPIC: ClassVar[str] = "test.steps"

    order_id: str
    seq: int


class Note(Event):
    TOPIC: ClassVar[str] = "test.notes"

    order_id: str
    seq: int


class Done(Event):
    TOPIC: ClassVar[str] = "test.done"

    order_id: str
    seq: int


TOPICS = [Step.TOPIC, Note.TOPIC, Done.TOPIC, dead_letter_topic(Step.TOPIC)]


@dataclass
class Harness:
    kafka: KafkaSettings
    pool: asyncpg.Pool
    consumer: EventConsumer
    producer: AIOKafkaProducer
    poison: set[int]

    async def send(self, event: Event, *, headers: list[tuple[str, bytes]] | None = None) -> None:
        await self.producer.send(
            self.kafka.topic_prefix + event.TOPIC,
            event.to_bytes(),
            key=(event.partition_key() or "").encode(),
            headers=headers or [],
        )

    async def calls(self) -> list[list[tuple[str, str, int]]]:
        rows = await self.pool.fetch("SELECT call, topic, order_id, seq FROM calls ORDER BY id")
        by_call: dict[int, list[tuple[str, str, int]]] = {}
        for r in rows:
            by_call.setdefault(r["call"], []).append((r["topic"], r["order_id"], r["seq"]))
        return list(by_call.values())


@pytest.fixture
async def harness(infra: Any) -> AsyncIterator[Harness]:
    dsn = await new_database(infra)
    kafka = new_kafka(infra)
    schema = "batch_test"
    conn = await asyncpg.connect(dsn)
    await apply_migrations(conn, schema=schema, sources=[shared_migrations()])
    await conn.execute(
        """
        CREATE TABLE calls (id bigserial PRIMARY KEY, call bigint NOT NULL, topic text NOT NULL,
                            order_id text NOT NULL, seq int NOT NULL);
        CREATE SEQUENCE call_ids;
        """
    )
    await conn.close()
    pool = await create_pool(dsn, schema=schema, min_size=1, max_size=4)
    poison: set[int] = set()
    consumer = EventConsumer(
        group_id="batch-test", schema=schema, max_attempts=2, retry_base_seconds=0.05
    )

    async def record(events: Sequence[Step | Note], uow: UnitOfWork) -> None:
        # one row per event, all of one call under one call id, in the order received
        await uow.conn.execute(
            """
            WITH this AS MATERIALIZED (SELECT nextval('call_ids') AS call)
            INSERT INTO calls (call, topic, order_id, seq)
            SELECT this.call, t, o, s
            FROM this, unnest($1::text[], $2::text[], $3::int[]) WITH ORDINALITY AS n(t, o, s, i)
            ORDER BY i
            """,
            [e.TOPIC for e in events],
            [e.order_id for e in events],
            [e.seq for e in events],
        )
        if any(e.seq in poison for e in events):
            raise RuntimeError("a poison step")
        for e in events:
            if isinstance(e, Step):
                uow.emit(Done(order_id=e.order_id, seq=e.seq), cause=e)

    consumer.handles_batch(Step, together="steps")(record)
    consumer.handles_batch(Note, together="steps")(record)
    await ensure_topics(kafka, TOPICS)
    consumer.bind(pool, topic_prefix=kafka.topic_prefix)
    producer = create_producer(kafka, client_id="batch-test")
    await producer.start()
    relay = OutboxRelay(
        dsn=dsn, pool=pool, schema=schema, producer=producer, topic_prefix=kafka.topic_prefix
    )
    relay.start()
    broker: KafkaBroker = create_broker(kafka, client_id="batch-test")
    # records that come within half a second come in one batch
    subscribe(
        broker,
        consumer,
        max_records=500,
        linger_ms=500,
        linger_records=500,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
    )
    await broker.start()
    shop = AIOKafkaProducer(acks="all", linger_ms=50, **client_options(kafka))
    await shop.start()
    try:
        yield Harness(kafka, pool, consumer, shop, poison)
    finally:
        await shop.stop()
        await broker.stop()
        await relay.stop()
        await producer.stop()
        await pool.close()


async def test_a_batch_of_a_topic_is_one_call_and_each_key_keeps_its_order(
    harness: Harness,
) -> None:
    for seq in range(40):
        await harness.send(Step(order_id=f"o{seq % 4}", seq=seq))
    await harness.producer.flush()
    await wait_for(lambda: _count(harness, 40), what="40 steps handled", timeout=60)
    calls = await harness.calls()
    assert sum(len(c) for c in calls) == 40
    assert len(calls) < 40, "several events per call"
    for order in ("o0", "o1", "o2", "o3"):
        seen = [seq for call in calls for _, o, seq in call if o == order]
        assert seen == sorted(seen), f"{order} out of order: {seen}"


async def test_topics_registered_together_come_in_the_same_call(harness: Harness) -> None:
    for seq in range(10):
        await harness.send(Step(order_id="o1", seq=seq))
        await harness.send(Note(order_id="o1", seq=100 + seq))
    await harness.producer.flush()
    await wait_for(lambda: _count(harness, 20), what="20 events handled", timeout=60)
    calls = await harness.calls()
    assert any({t for t, _, _ in call} == {Step.TOPIC, Note.TOPIC} for call in calls), calls


async def test_a_poison_event_is_dead_lettered_alone_and_the_batch_handled_once(
    harness: Harness,
) -> None:
    harness.poison.add(7)
    for seq in range(15):
        await harness.send(Step(order_id=f"o{seq % 3}", seq=seq))
    await harness.producer.flush()

    async def dead_letters() -> int:
        n: int = await harness.pool.fetchval("SELECT count(*) FROM dead_letters")
        return n

    await wait_for(dead_letters, what="the poison step dead-lettered", timeout=60)
    row = await harness.pool.fetchrow("SELECT error, attempts FROM dead_letters")
    assert row is not None and "a poison step" in row["error"] and row["attempts"] == 2

    # the batch failed as a whole and was handled record by record: every other step's
    # effect (a Done in the outbox) exists exactly once
    async def done() -> list[int]:
        rows = await harness.pool.fetch("SELECT payload FROM outbox WHERE topic = $1", Done.TOPIC)
        return sorted(json.loads(r["payload"])["seq"] for r in rows)

    await wait_for(lambda: _at_least(done, 14), what="the other 14 steps handled", timeout=60)
    assert await done() == [s for s in range(15) if s != 7]


async def test_an_event_emitted_in_a_batch_continues_the_trace_of_its_cause(
    harness: Harness,
) -> None:
    traces = {seq: f"{seq + 1:032x}" for seq in range(6)}
    for seq, trace_id in traces.items():
        parent = f"00-{trace_id}-{seq + 1:016x}-01"
        await harness.send(
            Step(order_id=f"t{seq % 2}", seq=seq), headers=[("traceparent", parent.encode())]
        )
    await harness.producer.flush()
    await wait_for(lambda: _count(harness, 6), what="6 steps handled", timeout=60)
    assert any(len(call) > 1 for call in await harness.calls()), "handled as a batch"
    consumer = AIOKafkaConsumer(
        harness.kafka.topic_prefix + Done.TOPIC,
        group_id="batch-test-reader",
        auto_offset_reset="earliest",
        **client_options(harness.kafka),
    )
    await consumer.start()
    found: dict[int, str] = {}
    try:
        async with asyncio.timeout(60):
            while len(found) < 6:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        headers = dict(record.headers)
                        found[json.loads(record.value)["seq"]] = headers["traceparent"].decode()
    finally:
        await consumer.stop()
    for seq, traceparent in found.items():
        assert traceparent.split("-")[1] == traces[seq], (seq, traceparent)


async def _at_least(probe: Any, n: int) -> bool:
    return len(await probe()) >= n


async def _count(harness: Harness, n: int) -> bool:
    got: int = await harness.pool.fetchval("SELECT count(*) FROM calls")
    return got >= n
