"""Orders' side of returns: the replacement order of an exchange, and the return-decision
SLA on an injectable clock. Orders runs alone; the test publishes what returns would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import httpx
import pytest

from shared import topics
from shared.clock import ManualClock
from tests.conftest import MakeSystem
from tests.factories import new_id, order_placed, return_requested
from tests.support import bearer, wait_for
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration


def exchange_requested(order_id: str, replacement: str, lines: list[tuple[str, int]]) -> dict:  # type: ignore[type-arg]
    return {
        "event_id": str(uuid4()),
        "return_id": new_id("ret-"),
        "order_id": order_id,
        "replacement_order_id": replacement,
        "lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines],
    }


async def order_view(system: LocalSystem, order_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            f"{system.urls['orders']}/orders/{order_id}",
            headers=bearer(system.config.tokens["ops"]),
        )
    assert r.status_code == 200, r.text
    view: dict[str, Any] = r.json()
    return view


async def outbox_count(system: LocalSystem, topic: str, order_id: str) -> int:
    async with system.runtimes["orders"].pool.acquire() as conn:
        count: int = await conn.fetchval(
            # originals only: a re-drive's copies repeat an event, they do not add one
            "SELECT count(*) FROM outbox WHERE topic = $1 AND key = $2 AND redrive_of IS NULL",
            topic,
            order_id,
        )
    return count


async def test_an_exchange_creates_one_replacement_order_and_the_original_ends_exchanged(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(services=["orders"])
    log = await event_log_factory(system.config.kafka, [topics.ORDERS_ACCEPTED])
    shop = await publisher_factory(system.config.kafka)
    original = order_placed(lines=[("SHIRT-M", 2)])
    oid = original["order_id"]
    await shop.send(topics.ORDERS_PLACED, original, key=oid)
    await log.wait(topics.ORDERS_ACCEPTED, order_id=oid)

    replacement_id = "exchange:" + uuid4().hex[:20]
    request = exchange_requested(oid, replacement_id, [("SHIRT-L", 1)])
    await shop.send(topics.RETURNS_EXCHANGE_REQUESTED, request, key=oid)
    (accepted,) = await log.wait(topics.ORDERS_ACCEPTED, order_id=replacement_id)
    assert accepted["replaces_order_id"] == oid
    assert accepted["shop_id"] == original["shop_id"]
    assert accepted["ship_to"]["postal_code"] == original["ship_to"]["postal_code"]
    assert [(line["sku"], line["quantity"], line["unit_price"]) for line in accepted["lines"]] == [
        ("SHIRT-L", 1, "0.00")
    ]
    assert accepted["promised"]["deliver_by"] > accepted["promised"]["dispatch_by"]

    view = await wait_for(
        lambda: _with_status(system, oid, "exchanged"), what="the original exchanged"
    )
    assert any(
        step["status"] == "exchanged" and step["detail"]["replacement_order_id"] == replacement_id
        for step in view["timeline"]
    )
    assert (await order_view(system, replacement_id))["replaces_order_id"] == oid

    # the same exchange again (a redelivery with a new event id): nothing new
    await shop.send(
        topics.RETURNS_EXCHANGE_REQUESTED, {**request, "event_id": str(uuid4())}, key=oid
    )
    # an exchange of an order nobody knows is dead-lettered with the reason
    ghost = exchange_requested(new_id(), "exchange:" + uuid4().hex[:20], [("X", 1)])
    await shop.send(topics.RETURNS_EXCHANGE_REQUESTED, ghost, key=ghost["order_id"])

    async def dead_letter() -> str | None:
        async with system.runtimes["orders"].pool.acquire() as conn:
            error: str | None = await conn.fetchval(
                "SELECT error FROM dead_letters WHERE topic LIKE $1",
                "%" + topics.RETURNS_EXCHANGE_REQUESTED,
            )
        return error

    assert "unknown order" in await wait_for(dead_letter, what="the unknown original dead-lettered")
    # both later records were handled (same partition key order is not guaranteed across
    # keys, so ask the inbox) before counting what the redelivery produced
    await wait_for(
        lambda: _handled(system, request["return_id"]), what="the redelivered exchange handled"
    )
    assert await outbox_count(system, topics.ORDERS_ACCEPTED, replacement_id) == 1


async def _handled(system: LocalSystem, return_id: str) -> bool:
    async with system.runtimes["orders"].pool.acquire() as conn:
        handled = await conn.fetchval(
            """
            SELECT count(*) FROM order_timeline
            WHERE topic = $1 AND detail->>'return_id' = $2
            """,
            topics.RETURNS_EXCHANGE_REQUESTED,
            return_id,
        )
    return bool(handled >= 1)


async def _with_status(system: LocalSystem, order_id: str, status: str) -> dict[str, Any] | None:
    view = await order_view(system, order_id)
    return view if view["status"] == status else None


async def test_return_decisions_breach_once_when_late_or_missing(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    clock = ManualClock(datetime.now(UTC))
    system = await make_system(
        services=["orders"], clock=clock, service_overrides={"sla_check_seconds": 0.1}
    )
    log = await event_log_factory(
        system.config.kafka, [topics.ORDERS_ACCEPTED, topics.SLA_BREACHED]
    )
    shop = await publisher_factory(system.config.kafka)
    orders = {name: order_placed(lines=[("RET", 1)]) for name in ("missing", "on_time", "late")}
    for order in orders.values():
        await shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])
        await log.wait(topics.ORDERS_ACCEPTED, order_id=order["order_id"])
    requests = {
        name: return_requested(
            order_id=order["order_id"], lines=[("RET", 1)], requested_at=clock.now()
        )
        for name, order in orders.items()
    }
    for request in requests.values():
        await shop.send(topics.RETURNS_REQUESTED, request, key=request["order_id"])
    seen = await wait_for(
        lambda: _deadlines(system, [r["return_id"] for r in requests.values()]),
        what="the decision deadlines",
    )
    assert all(d == clock.now() + timedelta(seconds=60) for d in seen)

    async def decide(name: str) -> None:
        request = requests[name]
        await shop.send(
            topics.RETURNS_REJECTED,
            {
                "event_id": str(uuid4()),
                "return_id": request["return_id"],
                "order_id": request["order_id"],
                "reason": "window_expired",
            },
            key=request["order_id"],
        )
        await wait_for(lambda: _decided(system, request["return_id"]), what=f"{name} decided")

    await decide("on_time")
    clock.advance(timedelta(seconds=61))
    await decide("late")
    missing = orders["missing"]["order_id"]
    (breach,) = await log.wait(topics.SLA_BREACHED, order_id=missing, distinct=True)
    assert breach["stage"] == "return_decision"
    assert datetime.fromisoformat(breach["deadline"]) == seen[0]
    (late_breach,) = await log.wait(
        topics.SLA_BREACHED, order_id=orders["late"]["order_id"], distinct=True
    )
    assert late_breach["stage"] == "return_decision"

    orders_runtime = system.runtimes["orders"]
    checks = orders_runtime.extras["sla_checks"]
    await wait_for(lambda: orders_runtime.extras["sla_checks"] > checks + 10, what="more checks")
    for name, order in orders.items():
        expected = 0 if name == "on_time" else 1
        assert await outbox_count(system, topics.SLA_BREACHED, order["order_id"]) == expected, name
    view = await order_view(system, missing)
    (decision,) = view["return_decisions"]
    assert decision["decided_at"] is None and decision["breached_at"] is not None

    # ops see both breached returns among the orders needing attention, and on the page
    async with httpx.AsyncClient(timeout=10, headers=bearer(system.config.tokens["ops"])) as http:
        summary = (await http.get(f"{system.urls['orders']}/sla/summary")).json()
        page = await http.get(f"{system.urls['orders']}/ops/orders/{missing}")
    attention = {(a["order_id"], a["stage"], a["state"]) for a in summary["needs_attention"]}
    for name in ("missing", "late"):
        assert (orders[name]["order_id"], "return_decision", "breached") in attention, name
    assert (orders["on_time"]["order_id"], "return_decision", "breached") not in attention
    assert page.status_code == 200
    assert requests["missing"]["return_id"] in page.text
    assert 'class="pill breached"' in page.text


async def _deadlines(system: LocalSystem, return_ids: list[str]) -> list[datetime] | None:
    async with system.runtimes["orders"].pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT deadline FROM return_decisions WHERE return_id = ANY($1::text[])", return_ids
        )
    return [r["deadline"] for r in rows] if len(rows) == len(return_ids) else None


async def _decided(system: LocalSystem, return_id: str) -> bool:
    async with system.runtimes["orders"].pool.acquire() as conn:
        decided = await conn.fetchval(
            "SELECT decided_at IS NOT NULL FROM return_decisions WHERE return_id = $1", return_id
        )
    return decided is True


async def test_a_decision_seen_before_its_request_is_on_time(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    # returns.requested and the decision travel on different topics, so orders can see the
    # decision first (the demo did); the late request must not open a deadline of its own
    clock = ManualClock(datetime.now(UTC))
    system = await make_system(
        services=["orders"], clock=clock, service_overrides={"sla_check_seconds": 0.1}
    )
    log = await event_log_factory(system.config.kafka, [topics.ORDERS_ACCEPTED])
    shop = await publisher_factory(system.config.kafka)
    order = order_placed(lines=[("RET", 1)])
    oid = order["order_id"]
    await shop.send(topics.ORDERS_PLACED, order, key=oid)
    await log.wait(topics.ORDERS_ACCEPTED, order_id=oid)
    request = return_requested(order_id=oid, lines=[("RET", 1)], requested_at=clock.now())
    rejected = {
        "event_id": str(uuid4()),
        "return_id": request["return_id"],
        "order_id": oid,
        "reason": "window_expired",
    }
    await shop.send(topics.RETURNS_REJECTED, rejected, key=oid)
    await wait_for(lambda: _decided(system, request["return_id"]), what="the decision recorded")
    clock.advance(timedelta(seconds=5))
    await shop.send(topics.RETURNS_REQUESTED, request, key=oid)
    await wait_for(
        lambda: _in_timeline(system, oid, topics.RETURNS_REQUESTED), what="the request handled"
    )
    # a decision about an order orders does not know opens nothing either
    stranger = {**rejected, "event_id": str(uuid4()), "return_id": new_id("ret-")}
    stranger["order_id"] = new_id()
    await shop.send(topics.RETURNS_REJECTED, stranger, key=stranger["order_id"])

    clock.advance(timedelta(seconds=120))
    orders_runtime = system.runtimes["orders"]
    checks = orders_runtime.extras["sla_checks"]
    await wait_for(lambda: orders_runtime.extras["sla_checks"] > checks + 10, what="more checks")
    (decision,) = (await order_view(system, oid))["return_decisions"]
    assert decision["decision"] == "rejected"
    assert decision["breached_at"] is None
    assert await outbox_count(system, topics.SLA_BREACHED, oid) == 0
    assert await _deadlines(system, [stranger["return_id"]]) is None


async def _in_timeline(system: LocalSystem, order_id: str, topic: str) -> bool:
    async with system.runtimes["orders"].pool.acquire() as conn:
        seen = await conn.fetchval(
            "SELECT count(*) FROM order_timeline WHERE order_id = $1 AND topic = $2",
            order_id,
            topic,
        )
    return bool(seen)
