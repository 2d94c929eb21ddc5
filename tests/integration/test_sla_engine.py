"""The SLA engine in orders, on an injectable clock: deadlines per order and stage, at risk at
80 % of a window, one breach per order and stage however often the watcher looks.

Orders runs alone; the test publishes what shipping would."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import httpx
import pytest

from shared import topics
from shared.clock import ManualClock
from tests.conftest import MakeSystem
from tests.factories import order_placed
from tests.support import EventLog, Publisher, bearer, wait_for
from waybill.cli import main
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration


class Desk:
    def __init__(
        self, system: LocalSystem, clock: ManualClock, log: EventLog, shop: Publisher
    ) -> None:
        self.system, self.clock, self.log, self.shop = system, clock, log, shop

    async def place(self, placed_at: datetime | None = None) -> dict[str, Any]:
        order = order_placed(placed_at=placed_at or self.clock.now())
        await self.shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])
        (accepted,) = await self.log.wait(topics.ORDERS_ACCEPTED, order_id=order["order_id"])
        return accepted

    async def sla(self, order_id: str) -> dict[str, dict[str, Any]]:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(
                f"{self.system.urls['orders']}/orders/{order_id}",
                headers=bearer(self.system.config.tokens["ops"]),
            )
        assert r.status_code == 200, r.text
        return {s["stage"]: s for s in r.json()["sla"]}

    async def checks_pass(self, n: int) -> None:
        orders = self.system.runtimes["orders"]
        start = orders.extras.get("sla_checks", 0)
        await wait_for(lambda: orders.extras.get("sla_checks", 0) >= start + n, what="checks")

    async def breaches(self, order_id: str) -> list[dict[str, Any]]:
        async with self.system.runtimes["orders"].pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT convert_from(payload, 'UTF8')::jsonb AS event FROM outbox
                WHERE topic = $1 AND key = $2
                  AND redrive_of IS NULL  -- a re-drive's copies repeat a breach, not add one
                ORDER BY id
                """,
                topics.SLA_BREACHED,
                order_id,
            )
        return [dict(r["event"]) if isinstance(r["event"], dict) else r["event"] for r in rows]

    async def shipped(self, accepted: dict[str, Any], at: datetime) -> None:
        oid = accepted["order_id"]
        await self.shop.send(
            topics.SHIPMENTS_SHIPPED,
            {
                "event_id": str(uuid4()),
                "order_id": oid,
                "shipment_id": str(uuid4()),
                "carrier": "swiftpost",
                "tracking_number": "SP123",
                "shipped_at": at.isoformat(),
            },
            key=oid,
        )


@pytest.fixture
async def desk(make_system: MakeSystem, event_log_factory, publisher_factory):  # type: ignore[no-untyped-def]
    # a Wednesday morning: the dispatch cut-off is the same day, 14:00 Berlin time
    clock = ManualClock(datetime(2026, 11, 25, 8, 0, tzinfo=UTC))
    system = await make_system(
        services=["orders"], clock=clock, service_overrides={"sla_check_seconds": 0.05}
    )
    log = await event_log_factory(
        system.config.kafka, [topics.ORDERS_ACCEPTED, topics.SLA_BREACHED]
    )
    return Desk(system, clock, log, await publisher_factory(system.config.kafka))


async def test_accepting_late_breaches_accept_once(desk: Desk) -> None:
    on_time = await desk.place()
    late = await desk.place(placed_at=desk.clock.now() - timedelta(minutes=2))
    (breach,) = await desk.log.wait(topics.SLA_BREACHED, order_id=late["order_id"], distinct=True)
    assert breach["stage"] == "accept"
    assert datetime.fromisoformat(breach["deadline"]) == datetime.fromisoformat(
        late["placed_at"]
    ) + timedelta(seconds=60)
    await desk.checks_pass(20)
    assert [b["stage"] for b in await desk.breaches(late["order_id"])] == ["accept"]
    assert await desk.breaches(on_time["order_id"]) == []
    stages = await desk.sla(on_time["order_id"])
    assert stages["accept"]["state"] == "met"
    assert (await desk.sla(late["order_id"]))["accept"]["state"] == "breached"


async def test_dispatch_goes_at_risk_then_breaches_exactly_once(desk: Desk) -> None:
    waiting = await desk.place()
    handed_over = await desk.place()
    cancelled = await desk.place()
    await desk.shop.send(
        topics.ORDERS_CANCELLATION_REQUESTED,
        {
            "event_id": str(uuid4()),
            "order_id": cancelled["order_id"],
            "requested_at": desk.clock.now().isoformat(),
        },
        key=cancelled["order_id"],
    )
    start = datetime.fromisoformat(waiting["placed_at"])
    deadline = datetime.fromisoformat(waiting["promised"]["dispatch_by"])
    assert (await desk.sla(waiting["order_id"]))["dispatch"]["state"] == "pending"

    await desk.shipped(handed_over, desk.clock.now() + timedelta(minutes=5))
    desk.clock.set(start + (deadline - start) * 0.85)
    await desk.checks_pass(3)
    stages = await desk.sla(waiting["order_id"])
    assert stages["dispatch"]["state"] == "at_risk"
    assert stages["dispatch"]["at_risk_since"] is not None
    assert stages["delivery"]["state"] == "pending"  # its window is days long
    assert await desk.breaches(waiting["order_id"]) == []

    desk.clock.set(deadline + timedelta(seconds=1))
    (breach,) = await desk.log.wait(
        topics.SLA_BREACHED, order_id=waiting["order_id"], distinct=True
    )
    assert breach["stage"] == "dispatch"
    assert datetime.fromisoformat(breach["observed_at"]) == deadline + timedelta(seconds=1)
    await desk.checks_pass(30)
    assert [b["stage"] for b in await desk.breaches(waiting["order_id"])] == ["dispatch"]
    assert (await desk.sla(waiting["order_id"]))["dispatch"]["state"] == "breached"

    # handed over in time, or cancelled: no breach, however long the watcher looks
    assert (await desk.sla(handed_over["order_id"]))["dispatch"]["state"] == "met"
    assert (await desk.sla(cancelled["order_id"]))["dispatch"]["state"] == "cancelled"
    assert await desk.breaches(handed_over["order_id"]) == []
    assert await desk.breaches(cancelled["order_id"]) == []


async def test_a_late_scan_breaches_dispatch_when_it_arrives(desk: Desk) -> None:
    accepted = await desk.place()
    deadline = datetime.fromisoformat(accepted["promised"]["dispatch_by"])
    # the carrier scanned it after the cut-off; the clock has not got there yet
    await desk.shipped(accepted, deadline + timedelta(hours=3))
    (breach,) = await desk.log.wait(
        topics.SLA_BREACHED, order_id=accepted["order_id"], distinct=True
    )
    assert breach["stage"] == "dispatch"
    assert datetime.fromisoformat(breach["observed_at"]) == deadline + timedelta(hours=3)


async def test_delivery_breaches_come_from_shipping_and_are_shown(desk: Desk) -> None:
    accepted = await desk.place()
    deliver_by = datetime.fromisoformat(accepted["promised"]["deliver_by"])
    observed = deliver_by + timedelta(hours=1)
    await desk.shop.send(
        topics.SLA_BREACHED,
        {
            "event_id": str(uuid4()),
            "order_id": accepted["order_id"],
            "stage": "delivery",
            "deadline": deliver_by.isoformat(),
            "observed_at": observed.isoformat(),
        },
        key=accepted["order_id"],
    )

    async def shown() -> dict[str, Any] | None:
        stage = (await desk.sla(accepted["order_id"]))["delivery"]
        return stage if stage["state"] == "breached" else None

    stage = await wait_for(shown, what="the delivery breach on the order")
    assert datetime.fromisoformat(stage["breached_at"]) == observed
    assert await desk.breaches(accepted["order_id"]) == []  # shipping's to publish, not ours


async def test_the_summary_and_waybill_sla_report_each_stage(
    desk: Desk, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = await desk.place()
    late = await desk.place(placed_at=desk.clock.now() - timedelta(minutes=2))
    await desk.log.wait(topics.SLA_BREACHED, order_id=late["order_id"])
    start = datetime.fromisoformat(prompt["placed_at"])
    deadline = datetime.fromisoformat(prompt["promised"]["dispatch_by"])
    desk.clock.set(start + (deadline - start) * 0.9)
    await desk.checks_pass(3)

    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            f"{desk.system.urls['orders']}/sla/summary",
            headers=bearer(desk.system.config.tokens["ops"]),
        )
    assert r.status_code == 200, r.text
    stages = {s["stage"]: s for s in r.json()["stages"]}
    accept = stages["accept"]
    assert (accept["met"], accept["breached"], accept["open"]) == (2, 1, 0)
    assert accept["p95_seconds"] > 100 > accept["p50_seconds"] >= 0
    dispatch = stages["dispatch"]
    assert (dispatch["met"], dispatch["at_risk"], dispatch["open"]) == (0, 2, 2)
    attention = {(a["order_id"], a["stage"], a["state"]) for a in r.json()["needs_attention"]}
    assert (late["order_id"], "accept", "breached") in attention
    assert (prompt["order_id"], "dispatch", "at_risk") in attention

    # the same figures in the terminal (the report blocks, so it runs beside the loop)
    argv = ["sla", "--url", desk.system.urls["orders"], "--token", "wrong"]
    assert await asyncio.to_thread(main, argv) == 2
    assert "ops token" in capsys.readouterr().out
    argv[-1] = desk.system.config.tokens["ops"]
    assert await asyncio.to_thread(main, argv) == 0
    report = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in report.splitlines() if line[:1].isalpha()}
    assert rows["accept"][1:2] == ["2"] and rows["accept"][-3:] == ["1", "0", "0"]
    assert rows["dispatch"][1:2] == ["0"] and rows["dispatch"][-3:] == ["0", "2", "2"]
    assert late["order_id"] in report
