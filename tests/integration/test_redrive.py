"""Stuck orders: an order whose event was lost (the memory-only broker restarted while it was in
flight) is re-driven from the outbox once its stage is overdue and moves on; one that still
does not move is reported, and leaves the report when it moves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest

from shared import topics
from shared.clock import ManualClock
from shared.infra.kafka import EmbeddedKafka
from shared.settings import KafkaSettings
from tests.conftest import MakeSystem
from tests.factories import order_placed
from tests.integration.test_reservation import setup_stock
from tests.support import bearer, wait_for
from waybill.cli import main
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration

FAST = {"sla_check_seconds": 0.1, "broker_check_seconds": 1.0, "redrive_wait_seconds": 60}


@pytest.fixture
async def own_broker(tmp_path: Path) -> AsyncIterator[EmbeddedKafka]:
    """A broker of this test's own: restarting it loses every topic, as the embedded one does."""
    broker = EmbeddedKafka(log_path=tmp_path / "broker.log")
    await asyncio.to_thread(broker.start)
    try:
        yield broker
    finally:
        await asyncio.to_thread(broker.stop)


def kafka_on(broker: EmbeddedKafka) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=broker.bootstrap,
        topic_prefix=f"r{uuid4().hex[:6]}.",
        topic_partitions=3,
        session_timeout_ms=2_000,
        heartbeat_interval_ms=500,
    )


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


def moved_past_accepted(view: dict[str, Any]) -> bool:
    return view["status"] not in ("received", "accepted")


async def test_an_order_whose_event_a_broker_restart_lost_moves_on_after_the_redrive(
    own_broker: EmbeddedKafka, make_system: MakeSystem, publisher_factory
) -> None:
    clock = ManualClock(datetime.now(UTC))
    kafka = kafka_on(own_broker)
    # inventory is not running yet: nobody consumes orders.accepted before the restart
    system = await make_system(
        services=["orders", "shipping", "returns"],
        clock=clock,
        kafka=kafka,
        service_overrides=FAST,
    )
    shop = await publisher_factory(kafka)
    lost = order_placed(lines=[("LOST", 1)], placed_at=clock.now())
    oid = lost["order_id"]
    await shop.send(topics.ORDERS_PLACED, lost, key=oid)
    await wait_for(
        lambda: published(system, oid, topics.ORDERS_ACCEPTED), what="orders.accepted published"
    )

    # the memory-only broker restarts: every topic, and orders.accepted with them, is gone
    await asyncio.to_thread(own_broker.stop)
    await asyncio.to_thread(own_broker.start)

    inventory = LocalSystem(system.config, services=["inventory"], clock=clock, with_sandbox=False)
    await inventory.start()
    try:
        await setup_stock(
            inventory, [("BER-1", "DE", "10115")], [("BER-1", "LOST", 5), ("BER-1", "SEEN", 5)]
        )
        # the services found their topics gone and made them again: an order placed now flows
        shop_after = await publisher_factory(kafka)
        seen = order_placed(lines=[("SEEN", 1)], placed_at=clock.now())
        await shop_after.send(topics.ORDERS_PLACED, seen, key=seen["order_id"])

        async def seen_moves() -> bool:
            async with httpx.AsyncClient(timeout=10) as http:
                r = await http.get(
                    f"{system.urls['orders']}/orders/{seen['order_id']}",
                    headers=bearer(system.config.tokens["ops"]),
                )
            return r.status_code == 200 and r.json()["status"] in ("label_created", "shipped")

        await wait_for(seen_moves, timeout=90, what="the order placed after the restart flows")
        # while the one whose event was lost has not: the broker never gave it to inventory
        before = await order_view(system, oid)
        assert before["status"] == "accepted" and before["redrives"] == []

        # its dispatch deadline passes: the SLA watcher re-drives it once
        clock.set(datetime.fromisoformat(before["promised"]["dispatch_by"]) + timedelta(seconds=1))

        async def lost_moves() -> dict[str, Any] | None:
            view = await order_view(system, oid)
            return view if moved_past_accepted(view) else None

        after = await wait_for(lost_moves, timeout=60, what="the lost order moves on")
        dispatch = [r for r in after["redrives"] if r["stage"] == "dispatch"]
        assert len(dispatch) == 1 and dispatch[0]["status"] == "accepted"
        assert dispatch[0]["republished"] >= 1  # orders.accepted, published again
        assert any(t["topic"] == topics.ORDERS_REDRIVE_REQUESTED for t in after["timeline"])

        async def settled() -> bool:
            view = await order_view(system, oid)
            return all(r["resolved_at"] for r in view["redrives"])

        await wait_for(settled, what="the re-drive is settled as worked")
        assert oid not in {s["order_id"] for s in (await sla_summary(system))["stuck"]}
        # once per order and stage, however many checks ran since
        assert await published(system, oid, topics.ORDERS_REDRIVE_REQUESTED) == 1

        # the order placed after the restart was overdue too: every service published its
        # events again, and the inboxes absorbed them (one reservation, one label)
        sid = seen["order_id"]
        runtimes = {**system.runtimes, "inventory": inventory.runtimes["inventory"]}

        async def copies(service: str) -> int:
            async with runtimes[service].pool.acquire() as conn:
                n: int = await conn.fetchval(
                    """
                    SELECT count(*) FROM outbox
                    WHERE key = $1 AND redrive_of IS NOT NULL
                      AND id <= (SELECT published_through FROM outbox_relay)
                    """,
                    sid,
                )
            return n

        for service in ("orders", "inventory", "shipping"):
            await wait_for(lambda s=service: copies(s), what=f"{service} re-drove its events")
        async with runtimes["inventory"].pool.acquire() as conn:
            reservations = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE key = $1 AND topic = $2 AND redrive_of IS NULL",
                sid,
                topics.STOCK_RESERVED,
            )
        async with runtimes["shipping"].pool.acquire() as conn:
            labels = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE key = $1 AND topic = $2 AND redrive_of IS NULL",
                sid,
                topics.SHIPMENTS_LABEL_CREATED,
            )
        assert (reservations, labels) == (1, 1)
    finally:
        await inventory.stop()


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

    async def checks_pass(n: int) -> None:
        start = orders.extras.get("sla_checks", 0)
        await wait_for(lambda: orders.extras.get("sla_checks", 0) >= start + n, what="checks")

    clock.set(datetime.fromisoformat(accepted["promised"]["dispatch_by"]) + timedelta(seconds=1))
    (request,) = await log.wait(topics.ORDERS_REDRIVE_REQUESTED, order_id=oid)
    assert request["stage"] == "dispatch" and request["status"] == "accepted"
    # the copy of orders.accepted went out too, with the same event id (inboxes skip it)
    copies = await log.wait(topics.ORDERS_ACCEPTED, order_id=oid, count=2)
    assert {c["event_id"] for c in copies} == {accepted["event_id"]}

    await checks_pass(3)
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
    assert "dispatch" in line and "order accepted" in line
    assert "inventory  unreachable (not configured)" in report  # orders runs alone here
    await checks_pass(3)
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
