"""The consumer runtime on the real broker and PostgreSQL: exactly-once effects,
at-least-once delivery, bounded retries and dead letters.

The handler here is an ordinary function that records its effect in a table; what is
under test is the runtime around it (inbox, outbox, acknowledgement, retries, DLQ).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from uuid import uuid4

import asyncpg
import pytest
from faststream.kafka import KafkaBroker

from shared.db import apply_migrations, create_pool, shared_migrations
from shared.db.uow import UnitOfWork
from shared.events import Event
from shared.faults import ENV as FAULTS_ENV
from shared.faults import HANDLER_FAILS, arm_keys
from shared.messaging import (
    EventConsumer,
    OutboxRelay,
    create_broker,
    create_producer,
    ensure_topics,
    subscribe,
)
from shared.settings import KafkaSettings
from shared.topics import dead_letter_topic
from tests.conftest import new_database, new_kafka
from tests.support import EventLog, Publisher, wait_for
from waybill.dlq import replay_dead_letters

pytestmark = pytest.mark.integration

TOPIC = "test.commands"


class Recorded(Event):
    TOPIC: ClassVar[str] = TOPIC

    order_id: str
    note: str = ""


class Echoed(Event):
    TOPIC: ClassVar[str] = "test.echoes"

    order_id: str


@dataclass
class Harness:
    kafka: KafkaSettings
    pool: asyncpg.Pool
    consumer: EventConsumer
    publisher: Publisher
    log: EventLog
    poison: set[str]

    async def effects(self, order_id: str, note: str = "") -> int:
        n: int = await self.pool.fetchval(
            "SELECT count(*) FROM effects WHERE order_id = $1 AND note = $2", order_id, note
        )
        return n

    async def send(self, value: Any, *, key: str = "k") -> None:
        await self.publisher.send(TOPIC, value, key=key)


@pytest.fixture
async def harness(infra: Any) -> AsyncIterator[Harness]:
    dsn = await new_database(infra)
    kafka = new_kafka(infra)
    schema = "runtime_test"
    conn = await asyncpg.connect(dsn)
    await apply_migrations(conn, schema=schema, sources=[shared_migrations()])
    await conn.execute("CREATE TABLE effects (order_id text NOT NULL, note text)")
    await conn.execute("CREATE TABLE observed (topic text NOT NULL, order_id text NOT NULL)")
    await conn.close()
    pool = await create_pool(dsn, schema=schema, min_size=1, max_size=4)
    poison: set[str] = set()
    consumer = EventConsumer(
        group_id="runtime-test", schema=schema, max_attempts=3, retry_base_seconds=0.05
    )

    @consumer.handles(Recorded)
    async def on_recorded(event: Recorded, uow: UnitOfWork) -> None:
        await uow.conn.execute(
            "INSERT INTO effects (order_id, note) VALUES ($1, $2)", event.order_id, event.note
        )
        if event.order_id in poison:
            raise RuntimeError(f"cannot handle {event.order_id}")
        uow.emit(Echoed(order_id=event.order_id))

    @consumer.handles(Echoed)
    async def on_echoed(event: Echoed, uow: UnitOfWork) -> None:
        await uow.conn.execute(
            "INSERT INTO effects (order_id, note) VALUES ($1, 'echo')", event.order_id
        )

    async def observe(events: Sequence[Event], uow: UnitOfWork) -> None:
        await uow.conn.execute(
            "INSERT INTO observed SELECT * FROM unnest($1::text[], $2::text[])",
            [e.TOPIC for e in events],
            [e.partition_key() for e in events],
        )

    consumer.observe(observe)

    await ensure_topics(
        kafka, [TOPIC, Echoed.TOPIC, dead_letter_topic(TOPIC), dead_letter_topic(Echoed.TOPIC)]
    )
    consumer.bind(pool, topic_prefix=kafka.topic_prefix)
    producer = create_producer(kafka, client_id="runtime-test")
    await producer.start()
    relay = OutboxRelay(
        dsn=dsn,
        pool=pool,
        schema=schema,
        producer=producer,
        poll_seconds=0.2,
        topic_prefix=kafka.topic_prefix,
    )
    relay.start()
    broker: KafkaBroker = create_broker(kafka, client_id="runtime-test")
    subscribe(
        broker,
        consumer,
        max_records=50,
        batch_timeout_ms=20,
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
    )
    await broker.start()
    publisher = Publisher(kafka)
    await publisher.start()
    log = EventLog(kafka, [Echoed.TOPIC, dead_letter_topic(TOPIC)])
    await log.start()
    try:
        yield Harness(kafka, pool, consumer, publisher, log, poison)
    finally:
        await log.stop()
        await publisher.stop()
        await broker.stop()
        await relay.stop()
        await producer.stop()
        await pool.close()


def recorded(order_id: str, **fields: Any) -> dict[str, Any]:
    return json.loads(Recorded(order_id=order_id, **fields).to_bytes())


async def test_the_same_event_twice_in_one_batch_has_one_effect(harness: Harness) -> None:
    event = recorded("dup-batch")
    await harness.send(event)
    await harness.send(event)
    await harness.send(recorded("after-dup-batch"))
    await harness.log.wait(Echoed.TOPIC, order_id="after-dup-batch")
    await wait_for(lambda: harness.consumer.duplicates >= 1, what="the duplicate to be absorbed")
    assert await harness.effects("dup-batch") == 1
    assert len(harness.log.about(Echoed.TOPIC, order_id="dup-batch")) == 1


async def test_the_same_event_again_later_is_absorbed_by_the_inbox(harness: Harness) -> None:
    event = recorded("dup-later")
    await harness.send(event)
    await harness.log.wait(Echoed.TOPIC, order_id="dup-later")  # handled and committed
    await harness.send(event)  # so the copy arrives in a later batch
    await wait_for(lambda: harness.consumer.duplicates >= 1, what="the copy to be absorbed")
    assert await harness.effects("dup-later") == 1
    assert len(harness.log.about(Echoed.TOPIC, order_id="dup-later")) == 1


async def test_an_outbox_row_published_twice_is_absorbed_downstream(harness: Harness) -> None:
    # The relay publishes a row again when it crashed between publish and marking it sent.
    await harness.send(recorded("outbox-1"))
    echoed = (await harness.log.wait(Echoed.TOPIC, order_id="outbox-1"))[0]
    await wait_for(lambda: harness.effects("outbox-1", "echo"), what="the echo to be consumed")
    # the watermark set back to just before the row: the relay publishes it (and what
    # follows it) again
    republished = await harness.pool.execute(
        """
        UPDATE outbox_relay SET published_through =
            (SELECT id - 1 FROM outbox WHERE event_id = $1::uuid)
        """,
        echoed["event_id"],
    )
    assert republished == "UPDATE 1"
    copies = await harness.log.wait(Echoed.TOPIC, order_id="outbox-1", count=2)
    assert copies[0]["event_id"] == copies[1]["event_id"]
    await wait_for(lambda: harness.consumer.duplicates >= 1, what="the copy to be absorbed")
    assert await harness.effects("outbox-1", "echo") == 1


async def test_a_crash_after_commit_before_ack_redelivers_without_double_effect(
    harness: Harness,
) -> None:
    crashes: list[int] = []

    async def crash_once(records: Sequence[Any]) -> None:
        if not crashes and any(b"crash-1" in (r.value or b"") for r in records):
            crashes.append(len(records))
            raise ConnectionResetError("process died before committing the offset")

    harness.consumer.after_commit = crash_once
    await harness.send(recorded("crash-1"))
    await harness.send(recorded("crash-2"))
    await harness.log.wait(Echoed.TOPIC, order_id="crash-2")
    await wait_for(lambda: harness.consumer.duplicates >= 1, what="the redelivery")
    assert crashes, "the fault was injected"
    assert await harness.effects("crash-1") == 1
    assert len(harness.log.about(Echoed.TOPIC, order_id="crash-1")) == 1


async def test_a_poison_record_is_retried_a_bounded_number_of_times_then_dead_lettered(
    harness: Harness,
) -> None:
    harness.poison.add("poison-1")
    await harness.send(recorded("before-poison"))
    await harness.send(recorded("poison-1"))
    await harness.send(recorded("after-poison"))
    dead = (await harness.log.wait(dead_letter_topic(TOPIC)))[0]
    assert dead["attempts"] == 3
    assert "cannot handle poison-1" in dead["error"]
    assert dead["original_topic"] == TOPIC
    assert json.loads(base64.b64decode(dead["value_base64"]))["order_id"] == "poison-1"
    # the records around it are handled exactly once, the poison one never committed
    await harness.log.wait(Echoed.TOPIC, order_id="after-poison")
    assert await harness.effects("before-poison") == 1
    assert await harness.effects("after-poison") == 1
    assert await harness.effects("poison-1") == 0
    stored = await harness.pool.fetchrow("SELECT attempts, error_type FROM dead_letters")
    assert stored["attempts"] == 3 and stored["error_type"] == "RuntimeError"


async def test_undecodable_and_invalid_records_go_to_the_dlq_and_the_partition_moves_on(
    harness: Harness,
) -> None:
    await harness.send(b"\xff not json {", key="same")
    await harness.send({"event_id": str(uuid4()), "note": "no order id"}, key="same")
    await harness.send(recorded("good-after-bad"), key="same")
    await harness.log.wait(Echoed.TOPIC, order_id="good-after-bad")
    dead = await harness.log.wait(dead_letter_topic(TOPIC), count=2)
    errors = sorted(d["error"] for d in dead)
    assert errors[0].startswith("not JSON")
    assert "order_id" in errors[1] and "Field required" in errors[1]
    raw = {base64.b64decode(d["value_base64"]) for d in dead}
    assert b"\xff not json {" in raw  # the original bytes, untouched
    assert all(d["consumer_group"] == "runtime-test" for d in dead)


async def test_a_dead_letter_replayed_after_the_fix_is_handled_and_settled(
    harness: Harness,
) -> None:
    harness.poison.add("fixed-later")
    await harness.send(recorded("fixed-later"))
    await harness.log.wait(dead_letter_topic(TOPIC))
    assert await harness.pool.fetchval("SELECT count(*) FROM dead_letters") == 1
    harness.poison.discard("fixed-later")  # the fix is deployed
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert await replay_dead_letters(topic=TOPIC, event_id=None, kafka=harness.kafka) == 0
    assert "replayed 1 record" in out.getvalue()
    await harness.log.wait(Echoed.TOPIC, order_id="fixed-later")
    assert await harness.effects("fixed-later") == 1
    # ops no longer count it: the dead letter is settled in the transaction that handled it
    settled = await harness.pool.fetchval(
        "SELECT replayed_at IS NOT NULL FROM dead_letters WHERE key = 'k'"
    )
    assert settled is True


async def test_a_handler_failing_on_an_armed_key_is_dead_lettered_with_the_fault(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the fault point of `waybill chaos poison`: only the armed topic and key fail
    monkeypatch.setenv(FAULTS_ENV, str(tmp_path))
    arm_keys(tmp_path, HANDLER_FAILS, "runtime_test", TOPIC, ["armed-1"])
    await harness.send(recorded("armed-1"), key="armed")
    await harness.send(recorded("not-armed"), key="armed")
    dead = (await harness.log.wait(dead_letter_topic(TOPIC)))[0]
    assert dead["error_type"] == "InjectedFault" and dead["attempts"] == 3
    await harness.log.wait(Echoed.TOPIC, order_id="not-armed")
    assert await harness.effects("armed-1") == 0


async def test_an_observer_sees_each_handled_event_once_in_its_transaction(
    harness: Harness,
) -> None:
    harness.poison.add("observed-poison")
    twice = recorded("observed-twice")
    await harness.send(twice)
    await harness.send(twice)
    await harness.send({"event_id": str(uuid4()), "note": "no order id"})
    await harness.send(recorded("observed-poison"))
    await harness.send(recorded("observed-last"))
    await harness.log.wait(Echoed.TOPIC, order_id="observed-last")
    await wait_for(
        lambda: harness.pool.fetchval(
            "SELECT count(*) FROM observed WHERE topic = $1 AND order_id = 'observed-last'",
            Echoed.TOPIC,
        ),
        what="the echo observed",
    )
    rows = await harness.pool.fetch("SELECT topic, order_id FROM observed")
    seen = sorted((r["topic"], r["order_id"]) for r in rows)
    # handled events once each; not the copy, not the invalid record, not the poison one
    # (its transaction rolled back with the observer's row in it)
    assert seen == sorted(
        [
            (TOPIC, "observed-twice"),
            (TOPIC, "observed-last"),
            (Echoed.TOPIC, "observed-twice"),
            (Echoed.TOPIC, "observed-last"),
        ]
    )
