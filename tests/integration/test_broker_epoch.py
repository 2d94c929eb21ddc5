"""Broker data loss noticed by its epoch (shared/messaging/epoch.py): on a real broker that
restarts and loses everything, and on the real database where the outbox is set back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import shared.runtime as runtime_module
from shared import topics
from shared.db import apply_migrations, shared_migrations
from shared.infra.kafka import EmbeddedKafka
from shared.messaging import BrokerEpoch, create_producer
from shared.messaging.epoch import epoch_health, record_epoch
from shared.settings import KafkaSettings
from tests.conftest import MakeSystem, kafka_on, new_database
from tests.factories import order_placed
from tests.support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def outbox(infra: Any) -> AsyncIterator[asyncpg.Connection]:
    """A service schema with the shared tables: three outbox rows written an hour ago and
    two a moment ago, all published."""
    conn = await asyncpg.connect(await new_database(infra))
    await apply_migrations(conn, schema="epoch_test", sources=[shared_migrations()])
    await conn.execute("SET search_path TO epoch_test")
    await conn.execute(
        """
        INSERT INTO outbox (event_id, topic, key, payload, created_at)
        SELECT gen_random_uuid(), 't', 'k' || n, '{}'::bytea,
               now() - CASE WHEN n <= 3 THEN interval '1 hour' ELSE interval '1 second' END
        FROM generate_series(1, 5) AS n
        """
    )
    await conn.execute("UPDATE outbox_relay SET published_through = (SELECT max(id) FROM outbox)")
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_new_epoch_sets_the_relay_back_over_the_window_once(
    outbox: asyncpg.Connection,
) -> None:
    ids = [r["id"] for r in await outbox.fetch("SELECT id FROM outbox ORDER BY id")]
    assert await record_epoch(outbox, "epoch-a", window_seconds=600) is None  # first sight
    assert await record_epoch(outbox, "epoch-a", window_seconds=600) is None  # no change
    assert await outbox.fetchval("SELECT published_through FROM outbox_relay") == ids[-1]

    # the broker lost its data: the two rows of the last 10 minutes go again, the old ones not
    assert await record_epoch(outbox, "epoch-b", window_seconds=600) == 2
    assert await outbox.fetchval("SELECT published_through FROM outbox_relay") == ids[2]
    # another instance of the service sees the same new epoch: nothing more
    assert await record_epoch(outbox, "epoch-b", window_seconds=600) is None
    health = await epoch_health(outbox)
    assert health is not None
    assert health["epoch"] == "epoch-b" and health["losses"] == 1
    assert health["republished"] == 2


async def test_a_relay_behind_the_window_is_not_moved_forward(outbox: asyncpg.Connection) -> None:
    ids = [r["id"] for r in await outbox.fetch("SELECT id FROM outbox ORDER BY id")]
    await outbox.execute("UPDATE outbox_relay SET published_through = $1", ids[0])
    await record_epoch(outbox, "epoch-a", window_seconds=600)
    assert await record_epoch(outbox, "epoch-b", window_seconds=600) == 0
    assert await outbox.fetchval("SELECT published_through FROM outbox_relay") == ids[0]


async def test_a_broker_that_lost_its_data_shows_another_epoch(tmp_path: Path) -> None:
    broker = EmbeddedKafka(log_path=tmp_path / "tansu.log")
    await asyncio.to_thread(broker.start)
    kafka = KafkaSettings(bootstrap=broker.bootstrap, topic_prefix="epoch.")
    producer = create_producer(kafka, client_id="epoch-test")
    await producer.start()
    one = BrokerEpoch(kafka, producer, client_id="one")
    two = BrokerEpoch(kafka, producer, client_id="two")
    await one.start()
    await two.start()
    try:
        first = await one.current(["some-topic"])
        assert first is not None
        # a second reader takes the epoch that is there, and writes none of its own
        assert await two.current([]) == first
        assert await one.read() == first

        await asyncio.to_thread(broker.stop)  # memory only: every topic is gone
        await asyncio.to_thread(broker.start)

        async def another() -> str | None:
            try:
                epoch = await two.current(["some-topic"])
            except Exception:  # the clients reconnect first
                return None
            return epoch if epoch not in (None, first) else None

        second = await wait_for(another, timeout=60, what="a new epoch after the restart")
        assert await one.read() == second
    finally:
        await one.stop()
        await two.stop()
        await producer.stop()
        await asyncio.to_thread(broker.stop)


async def test_a_topic_a_producer_made_after_the_loss_is_read_on_every_partition(
    own_broker: EmbeddedKafka, make_system: MakeSystem, publisher_factory: Any
) -> None:
    """Tansu makes a topic when a record arrives for one it lacks, with 4 partitions. After
    a loss the shop may be first: orders.placed then has 4 partitions where orders knew 2.
    Orders must read all four (it refreshes its metadata when it sees the new epoch), or it
    leaves half the orders unread for the five minutes of aiokafka's metadata age."""
    await _orders_placed_at_once_after_a_loss_are_all_accepted(
        own_broker, make_system, publisher_factory
    )


async def test_a_recovery_step_that_failed_is_done_again_at_the_next_look(
    own_broker: EmbeddedKafka,
    make_system: MakeSystem,
    publisher_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database (or the broker) may fail a step of the recovery while it settles after
    the loss. The epoch is not taken as seen then: the next look recovers, and no order
    waits on a partition the consumer was never assigned."""
    failures: list[str] = []
    real_record_epoch = runtime_module.record_epoch

    async def record_epoch_failing_once_after_the_loss(conn: Any, epoch: str, **kw: Any) -> Any:
        seen = await conn.fetchval("SELECT epoch FROM broker_epoch")
        if not failures and seen not in (None, epoch):
            failures.append(epoch)
            raise asyncpg.exceptions.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation"
            )
        return await real_record_epoch(conn, epoch, **kw)

    monkeypatch.setattr(runtime_module, "record_epoch", record_epoch_failing_once_after_the_loss)
    system = await _orders_placed_at_once_after_a_loss_are_all_accepted(
        own_broker, make_system, publisher_factory
    )
    assert failures  # the first look after the loss failed, and a later one recovered
    async with system.runtimes["orders"].pool.acquire() as conn:
        health = await epoch_health(conn)
    assert health is not None and health["losses"] == 1


async def _orders_placed_at_once_after_a_loss_are_all_accepted(
    broker: EmbeddedKafka, make_system: MakeSystem, publisher_factory: Any
) -> Any:
    """Orders on a broker that then loses everything; the shop sends 40 orders at once after
    the restart, before orders looks at the epoch. Returns the system once all 40 are
    accepted."""
    kafka = kafka_on(broker, "loss.")
    system = await make_system(
        services=["orders"],
        with_sandbox=False,
        kafka=kafka,
        service_overrides={"broker_epoch_check_seconds": 3.0},
    )
    orders = system.runtimes["orders"]
    await wait_for(lambda: orders.broker_epoch, what="the first epoch")
    before = orders.broker_epoch

    await asyncio.to_thread(broker.stop)  # memory only: every topic is gone
    await asyncio.to_thread(broker.start)
    shop = await publisher_factory(kafka)  # the shop sends at once, before orders looks
    placed = [order_placed() for _ in range(40)]
    for order in placed:
        await shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])
    ids = [order["order_id"] for order in placed]

    async def accepted() -> bool:
        async with orders.pool.acquire() as conn:
            n = await conn.fetchval(
                "SELECT count(*) FROM orders WHERE order_id = ANY($1::text[])", ids
            )
        return bool(n == len(ids))

    await wait_for(accepted, timeout=60, what="every order accepted after the loss")
    await wait_for(lambda: orders.broker_epoch != before, what="the new epoch taken as seen")
    return system
