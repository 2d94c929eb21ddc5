"""Stuck orders: an order whose events were lost on their way is re-driven from the outbox
once its stage is overdue, with only the events that stage needs, and moves on; one that
still does not move is reported, and leaves the report when it moves. An order that waits
for stock or for the carrier is a breach, and is not re-driven."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from services.orders.domain.redrive import redrive_topics
from shared import topics
from shared.clock import ManualClock
from shared.messaging.kafka import client_options
from shared.runtime import ServiceRuntime
from shared.settings import KafkaSettings
from tests.conftest import MakeSystem
from tests.factories import new_id, order_placed
from tests.integration.test_reservation import setup_stock
from tests.support import bearer, wait_for
from waybill.cli import main
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration

FAST = {"sla_check_seconds": 0.1, "broker_check_seconds": 1.0, "redrive_wait_seconds": 60}


async def lose_for(
    kafka: KafkaSettings, group: str, lost_topics: list[str], *, order_id: str
) -> None:
    """Move the consumer group ``group`` (its service is not running) past every record now
    on ``lost_topics``, the order's among them: to that service they are lost, as if the
    broker had lost them before it read them. Without a broker restart, which the services
    notice and recover from by themselves: here only the re-drive can bring them back."""
    consumer = AIOKafkaConsumer(
        group_id=kafka.topic_prefix + group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **client_options(kafka),
    )
    await consumer.start()
    try:
        names = {kafka.topic_prefix + t for t in lost_topics}
        partitions = [
            TopicPartition(name, p)
            for name in sorted(names)
            for p in sorted(consumer.partitions_for_topic(name) or ())
        ]
        assert {tp.topic for tp in partitions} == names, "the topics exist"
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        seen: set[str] = set()

        async def read_the_orders_records() -> bool:
            batches = await consumer.getmany(timeout_ms=100)
            seen.update(
                tp.topic
                for tp, records in batches.items()
                for r in records
                if r.key == order_id.encode()
            )
            return seen == names

        await wait_for(read_the_orders_records, what=f"the order's records on {sorted(names)}")
        await consumer.commit()  # the positions read to: the group starts after them
    finally:
        await consumer.stop()


def same_partition_as(order_id: str, partitions: int) -> str:
    """A new order id whose records land in the same partition as ``order_id``'s (keyed by
    order id, with the producer's default partitioner)."""
    partitioner, every = DefaultPartitioner(), list(range(partitions))
    wanted = partitioner(order_id.encode(), every, every)
    while partitioner((candidate := new_id()).encode(), every, every) != wanted:
        pass
    return candidate


async def order_view(system: LocalSystem, order_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            f"{system.urls['orders']}/orders/{order_id}",
            headers=bearer(system.config.tokens["ops"]),
        )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def sla_summary(system: LocalSystem) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            f"{system.urls['orders']}/sla/summary", headers=bearer(system.config.tokens["ops"])
        )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def published(system: LocalSystem, order_id: str, topic: str) -> int:
    async with system.runtimes["orders"].pool.acquire() as conn:
        n: int = await conn.fetchval(
            """
            SELECT count(*) FROM outbox
            WHERE key = $1 AND topic = $2
              AND id <= (SELECT published_through FROM outbox_relay)
            """,
            order_id,
            topic,
        )
    return n


async def outbox_topics(runtime: ServiceRuntime, order_id: str, *, copies: bool) -> list[str]:
    """The topics of a service's outbox rows for the order: its re-driven copies (written in
    the transaction of the re-drive, or of its answer to the request), or its originals."""
    async with runtime.pool.acquire() as conn:
        rows = await conn.fetch(
            """
            SELECT topic FROM outbox
            WHERE key = $1 AND (redrive_of IS NOT NULL) = $2
            ORDER BY id
            """,
            order_id,
            copies,
        )
    return [r["topic"] for r in rows]


async def status_is(system: LocalSystem, order_id: str, *statuses: str) -> dict[str, Any] | None:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            f"{system.urls['orders']}/orders/{order_id}",
            headers=bearer(system.config.tokens["ops"]),
        )
    if r.status_code != 200:
        return None
    view: dict[str, Any] = r.json()
    return view if view["status"] in statuses else None


async def checks_pass(runtime: ServiceRuntime, n: int) -> None:
    """Wait for ``n`` more rounds of orders' SLA watcher (each ends with the re-drive check)."""
    start = runtime.extras.get("sla_checks", 0)
    await wait_for(lambda: runtime.extras.get("sla_checks", 0) >= start + n, what="checks")


async def test_an_order_whose_events_were_lost_is_redriven_with_what_its_stage_needs(
    make_system: MakeSystem, publisher_factory
) -> None:
    clock = ManualClock(datetime.now(UTC))
    # shipping is not running yet: nobody buys the label of the order packed meanwhile
    system = await make_system(
        services=["orders", "inventory", "returns"], clock=clock, service_overrides=FAST
    )
    await setup_stock(system, [("BER-1", "DE", "10115")], [("BER-1", "LOST", 5)])
    shop = await publisher_factory(system.config.kafka)
    order = order_placed(lines=[("LOST", 1)], placed_at=clock.now())
    oid = order["order_id"]
    await shop.send(topics.ORDERS_PLACED, order, key=oid)
    packed = await wait_for(lambda: status_is(system, oid, "packed"), what="the order packed")
    # the broker lost what shipping buys the label with before shipping read it
    await lose_for(
        system.config.kafka,
        "waybill-shipping",
        [topics.ORDERS_ACCEPTED, topics.ORDERS_PACKED],
        order_id=oid,
    )
    # shipping starts (with a carrier sandbox of its own) and never hears of the order: an
    # order placed now, whose events come after the lost ones in their partitions, gets its
    # label while the lost one does not
    late = LocalSystem(system.config, services=["shipping"], clock=clock)
    await late.start()
    try:
        shipping = late.runtimes["shipping"]
        after_it = order_placed(
            order_id=same_partition_as(oid, system.config.kafka.topic_partitions),
            lines=[("LOST", 1)],
            placed_at=clock.now(),
        )
        await shop.send(topics.ORDERS_PLACED, after_it, key=after_it["order_id"])
        await wait_for(
            lambda: status_is(system, after_it["order_id"], "label_created"),
            what="the order placed after the loss gets its label",
        )
        async with shipping.pool.acquire() as conn:
            shipments = await conn.fetchval(
                "SELECT count(*) FROM shipments WHERE order_id = $1", oid
            )
        assert shipments == 0
        before = await order_view(system, oid)
        assert before["status"] == "packed" and before["redrives"] == []

        # its dispatch deadline passes: it waits for a label, which a lost event can hold
        clock.set(datetime.fromisoformat(packed["promised"]["dispatch_by"]) + timedelta(seconds=1))
        after = await wait_for(
            lambda: status_is(system, oid, "label_created", "shipped"),
            timeout=60,
            what="the order moves on after its re-drive",
        )
        (redrive,) = after["redrives"]
        needed = redrive_topics("dispatch", "packed")
        assert needed is not None
        assert redrive["stage"] == "dispatch" and redrive["status"] == "packed"
        assert redrive["topics"] == list(needed)
        assert set(needed) == {
            topics.ORDERS_ACCEPTED,
            topics.ORDERS_PACKED,
            topics.SHIPMENTS_LABEL_CREATED,
            topics.SHIPMENTS_SHIPPED,
        }
        (request,) = [t for t in after["timeline"] if t["topic"] == topics.ORDERS_REDRIVE_REQUESTED]
        assert request["detail"]["topics"] == list(needed)

        # only the events the label needs were published again, not the order's history:
        # orders' acceptance but not its dispatch breach, inventory's packing but not its
        # reservation
        orders, inventory = system.runtimes["orders"], system.runtimes["inventory"]
        assert await outbox_topics(orders, oid, copies=True) == [topics.ORDERS_ACCEPTED]
        assert redrive["republished"] == 1
        await wait_for(
            lambda: published(system, oid, topics.SLA_BREACHED), what="the dispatch breach"
        )
        copied = await wait_for(
            lambda: outbox_topics(inventory, oid, copies=True), what="inventory re-drove its events"
        )
        assert copied == [topics.ORDERS_PACKED]
        originals = await outbox_topics(inventory, oid, copies=False)
        assert topics.STOCK_RESERVED in originals and topics.ORDERS_PACKED in originals
        # shipping had nothing of them when it answered, or the label it bought since
        assert set(await outbox_topics(shipping, oid, copies=True)) <= {
            topics.SHIPMENTS_LABEL_CREATED
        }
        assert (await outbox_topics(shipping, oid, copies=False)).count(
            topics.SHIPMENTS_LABEL_CREATED
        ) == 1

        async def settled() -> bool:
            view = await order_view(system, oid)
            return all(r["resolved_at"] for r in view["redrives"])

        await wait_for(settled, what="the re-drive is settled as worked")
        assert oid not in {s["order_id"] for s in (await sla_summary(system))["stuck"]}
        # once per order and stage, however many checks ran since; and the order now waits
        # for the carrier, which no re-drive helps
        await checks_pass(orders, 3)
        assert await published(system, oid, topics.ORDERS_REDRIVE_REQUESTED) == 1
    finally:
        await late.stop()


async def test_orders_waiting_for_stock_or_for_the_carrier_breach_but_are_not_redriven(
    make_system: MakeSystem, publisher_factory
) -> None:
    clock = ManualClock(datetime.now(UTC))
    system = await make_system(clock=clock, service_overrides=FAST)
    await setup_stock(system, [("BER-1", "DE", "10115")], [("BER-1", "SHIP", 5)])
    shop = await publisher_factory(system.config.kafka)
    # nobody has this SKU: the order waits for stock
    stockless = order_placed(lines=[("NONE", 1)], placed_at=clock.now())
    # this one gets its label and waits for the carrier's first scan (no sandbox auto-advance)
    labelled = order_placed(lines=[("SHIP", 1)], placed_at=clock.now())
    for order in (stockless, labelled):
        await shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])
    waiting, carried = stockless["order_id"], labelled["order_id"]
    backordered = await wait_for(
        lambda: status_is(system, waiting, "backordered"), what="backorder"
    )
    await wait_for(lambda: status_is(system, carried, "label_created"), what="the label")
    orders = system.runtimes["orders"]

    async def breached(order_id: str, stage: str) -> bool:
        view = await order_view(system, order_id)
        return any(s["stage"] == stage and s["breached_at"] for s in view["sla"])

    async def not_redriven() -> None:
        await checks_pass(orders, 3)  # each round ends with the re-drive check
        for order_id in (waiting, carried):
            view = await order_view(system, order_id)
            assert view["redrives"] == [], (order_id, view["status"])
            assert await published(system, order_id, topics.ORDERS_REDRIVE_REQUESTED) == 0
        assert not {waiting, carried} & {
            s["order_id"] for s in (await sla_summary(system))["stuck"]
        }

    # both miss their dispatch deadline: breaches, on the dashboard, and nothing re-driven
    promised = backordered["promised"]
    clock.set(datetime.fromisoformat(promised["dispatch_by"]) + timedelta(seconds=1))
    for order_id in (waiting, carried):
        await wait_for(lambda o=order_id: breached(o, "dispatch"), what="the dispatch breach")
    attention = {a["order_id"] for a in (await sla_summary(system))["needs_attention"]}
    assert {waiting, carried} <= attention
    await not_redriven()

    # the carrier scans the parcel at last (dispatch met, late); then both miss the delivery
    # promise: the one still waiting for stock, and the one the carrier has not delivered
    async with httpx.AsyncClient(timeout=10) as http:
        shipment = (
            await http.get(
                f"{system.urls['shipping']}/shipments/{carried}",
                headers=bearer(system.config.tokens["ops"]),
            )
        ).json()
        tracking_number = shipment["shipments"][0]["tracking_number"]
        r = await http.post(
            f"{system.urls['sandbox']}/sandbox/trackers/{tracking_number}/events",
            json={"status": "in_transit", "at": clock.now().isoformat()},
        )
        assert r.status_code == 202, r.text
    await wait_for(lambda: status_is(system, carried, "shipped"), what="the first scan")
    clock.set(datetime.fromisoformat(promised["deliver_by"]) + timedelta(minutes=1))
    await wait_for(lambda: breached(carried, "delivery"), what="shipping's delivery breach")
    await not_redriven()
    assert (await order_view(system, waiting))["status"] == "backordered"


async def test_an_order_the_redrive_does_not_move_is_reported_until_it_moves(
    make_system: MakeSystem,
    event_log_factory,
    publisher_factory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = ManualClock(datetime.now(UTC))
    # orders alone: nothing will ever reserve this order, so the re-drive cannot help
    system = await make_system(services=["orders"], clock=clock, service_overrides=FAST)
    log = await event_log_factory(
        system.config.kafka, [topics.ORDERS_ACCEPTED, topics.ORDERS_REDRIVE_REQUESTED]
    )
    shop = await publisher_factory(system.config.kafka)
    order = order_placed(placed_at=clock.now())
    oid = order["order_id"]
    await shop.send(topics.ORDERS_PLACED, order, key=oid)
    (accepted,) = await log.wait(topics.ORDERS_ACCEPTED, order_id=oid)
    orders = system.runtimes["orders"]

    clock.set(datetime.fromisoformat(accepted["promised"]["dispatch_by"]) + timedelta(seconds=1))
    (request,) = await log.wait(topics.ORDERS_REDRIVE_REQUESTED, order_id=oid)
    assert request["stage"] == "dispatch" and request["status"] == "accepted"
    # waiting for the reservation: the order, inventory's answer, and what follows up to the
    # carrier's first scan (each service copies its own events of these topics)
    assert request["topics"] == list(redrive_topics("dispatch", "accepted") or ())
    assert {topics.ORDERS_ACCEPTED, topics.STOCK_RESERVED, topics.STOCK_BACKORDERED} <= set(
        request["topics"]
    )
    assert topics.SLA_BREACHED not in request["topics"]
    # the copy of orders.accepted went out too, with the same event id (inboxes skip it)
    copies = await log.wait(topics.ORDERS_ACCEPTED, order_id=oid, count=2)
    assert {c["event_id"] for c in copies} == {accepted["event_id"]}
    assert await outbox_topics(orders, oid, copies=True) == [topics.ORDERS_ACCEPTED]

    await checks_pass(orders, 3)
    waiting = {s["order_id"]: s for s in (await sla_summary(system))["stuck"]}
    assert waiting[oid]["state"] == "redriven" and waiting[oid]["reported_at"] is None

    clock.advance(timedelta(seconds=FAST["redrive_wait_seconds"] + 1))

    async def reported() -> dict[str, Any] | None:
        stuck = {s["order_id"]: s for s in (await sla_summary(system))["stuck"]}
        return stuck.get(oid) if stuck.get(oid, {}).get("state") == "stuck" else None

    row = await wait_for(reported, what="the order reported stuck")
    assert row["stage"] == "dispatch" and row["status"] == "accepted"
    # the same in the terminal (the report blocks, so it runs beside the loop)
    argv = ["sla", "--url", system.urls["orders"], "--token", system.config.tokens["ops"]]
    assert await asyncio.to_thread(main, argv) == 0
    report = capsys.readouterr().out
    (line,) = [line for line in report.splitlines() if oid in line and "STUCK" in line]
    # the row of the Stuck table: order, stage, state, order status, re-driven at
    assert line.split()[:4] == [oid, "dispatch", "STUCK", "accepted"]
    # orders runs alone here: the Services table says so of the others
    (inventory,) = [line for line in report.splitlines() if line.startswith("inventory ")]
    assert inventory.endswith("unreachable (not configured)"), report
    await checks_pass(orders, 3)
    assert len(log.about(topics.ORDERS_REDRIVE_REQUESTED, order_id=oid)) == 1, "re-driven once"

    # inventory (played by the test) reserves it at last: the order leaves the report
    await shop.send(
        topics.STOCK_RESERVED,
        {
            "event_id": str(uuid4()),
            "order_id": oid,
            "allocations": [
                {"sku": line["sku"], "quantity": line["quantity"], "warehouse_id": "BER-1"}
                for line in order["lines"]
            ],
        },
        key=oid,
    )

    async def gone() -> bool:
        return oid not in {s["order_id"] for s in (await sla_summary(system))["stuck"]}

    await wait_for(gone, what="the order leaves the stuck list")
    view = await order_view(system, oid)
    assert view["status"] == "reserved"
    (redrive,) = view["redrives"]
    assert redrive["reported_at"] and redrive["resolved_at"]
