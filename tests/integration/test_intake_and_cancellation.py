"""Order intake (Kafka and HTTP, one outcome), shop promises, and cancellation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from shared import topics
from tests.conftest import MakeSystem
from tests.factories import order_placed
from tests.integration.test_reservation import setup_stock
from tests.support import bearer, wait_for

pytestmark = pytest.mark.integration

ANSWERS = [topics.ORDERS_ACCEPTED, topics.ORDERS_REJECTED]


async def test_conflict_duplicate_and_size_limit_on_kafka(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(services=["orders"], with_sandbox=False)
    log = await event_log_factory(system.config.kafka, ANSWERS)
    shop = await publisher_factory(system.config.kafka)
    order = order_placed()
    oid = order["order_id"]
    same_again = order | {"event_id": order_placed()["event_id"]}  # same content, new id
    different = order_placed(order_id=oid, lines=[("OTHER", 3)])
    huge = order_placed(customer={"name": "x" * 100, "email": "a@b.de"})
    huge["padding"] = "p" * (300 * 1024)
    for payload in (order, same_again, different, huge):
        await shop.send(topics.ORDERS_PLACED, payload, key=payload["order_id"])

    await log.wait(topics.ORDERS_ACCEPTED, order_id=oid)
    conflict = (await log.wait(topics.ORDERS_REJECTED, order_id=oid))[0]
    assert conflict["reason"] == "conflict"
    too_big = (await log.wait(topics.ORDERS_REJECTED, order_id=huge["order_id"]))[0]
    assert too_big["reasons"][0]["field"] == "(record)"
    assert "allowed" in too_big["reasons"][0]["message"]
    # the same content under a new event_id is a no-op: one acceptance only
    assert len(log.about(topics.ORDERS_ACCEPTED, order_id=oid)) == 1


async def test_http_and_kafka_intake_give_the_same_outcome(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(services=["orders"], with_sandbox=False)
    log = await event_log_factory(system.config.kafka, ANSWERS)
    shop = await publisher_factory(system.config.kafka)
    placed_at = datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
    by_kafka, by_http = (order_placed(placed_at=placed_at) for _ in range(2))
    bad_kafka, bad_http = (order_placed(currency="EURO", lines=[("A", 0)]) for _ in range(2))
    await shop.send(topics.ORDERS_PLACED, by_kafka, key=by_kafka["order_id"])
    await shop.send(topics.ORDERS_PLACED, bad_kafka, key=bad_kafka["order_id"])
    url = f"{system.urls['orders']}/orders"
    headers = bearer(system.config.tokens["shop"])
    async with httpx.AsyncClient(timeout=10) as http:
        ok = await http.post(url, json=by_http, headers=headers)
        bad = await http.post(url, json=bad_http, headers=headers)
        assert (ok.status_code, ok.json()["outcome"]) == (202, "accepted")
        assert bad.status_code == 422
        assert (await http.post(url, content=b"{nope", headers=headers)).status_code == 422
        oversized = order_placed() | {"padding": "p" * (300 * 1024)}
        assert (await http.post(url, json=oversized, headers=headers)).status_code == 413

    kafka_accepted = (await log.wait(topics.ORDERS_ACCEPTED, order_id=by_kafka["order_id"]))[0]
    http_accepted = (await log.wait(topics.ORDERS_ACCEPTED, order_id=by_http["order_id"]))[0]
    assert kafka_accepted["promised"] == http_accepted["promised"]
    kafka_rejected = (await log.wait(topics.ORDERS_REJECTED, order_id=bad_kafka["order_id"]))[0]
    http_rejected = (await log.wait(topics.ORDERS_REJECTED, order_id=bad_http["order_id"]))[0]
    assert kafka_rejected["reasons"] == http_rejected["reasons"]
    assert {r["field"] for r in bad.json()["reasons"]} == {
        r["field"] for r in http_rejected["reasons"]
    }


async def test_a_shop_can_have_its_own_promise(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(services=["orders"], with_sandbox=False)
    log = await event_log_factory(system.config.kafka, ANSWERS)
    shop = await publisher_factory(system.config.kafka)
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.put(
            f"{system.urls['orders']}/shops/fastshop/promise",
            json={"time_zone": "Europe/Amsterdam", "standard_business_days": 3},
            headers=bearer(system.config.tokens["admin"]),
        )
        assert r.status_code == 200, r.text
        bad = await http.put(
            f"{system.urls['orders']}/shops/fastshop/promise",
            json={"time_zone": "Mars/Olympus"},
            headers=bearer(system.config.tokens["admin"]),
        )
        assert bad.status_code == 422
    monday = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    fast = order_placed(shop_id="fastshop", placed_at=monday)
    house = order_placed(placed_at=monday)
    for order in (fast, house):
        await shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])
    fast_by = (await log.wait(topics.ORDERS_ACCEPTED, order_id=fast["order_id"]))[0]
    house_by = (await log.wait(topics.ORDERS_ACCEPTED, order_id=house["order_id"]))[0]
    assert fast_by["promised"]["deliver_by"].startswith("2026-11-26")  # Mon + 3 business days
    assert house_by["promised"]["deliver_by"].startswith("2026-11-30")  # Mon + 5


async def order_status(http: httpx.AsyncClient, system: Any, order_id: str) -> str:
    r = await http.get(
        f"{system.urls['orders']}/orders/{order_id}", headers=bearer(system.config.tokens["ops"])
    )
    return str(r.json().get("status"))


async def test_cancellation_before_handover_releases_the_stock(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(services=["orders", "inventory"], with_sandbox=False, autopick=False)
    await setup_stock(system, [("BER-1", "DE", "10115")], [("BER-1", "CXL", 3)])
    log = await event_log_factory(
        system.config.kafka,
        [
            topics.STOCK_RESERVED,
            topics.STOCK_RELEASED,
            topics.ORDERS_CANCELLED,
            topics.ORDERS_CANCELLATION_REJECTED,
        ],
    )
    shop = await publisher_factory(system.config.kafka)
    order = order_placed(lines=[("CXL", 2)])
    oid = order["order_id"]
    await shop.send(topics.ORDERS_PLACED, order, key=oid)
    await log.wait(topics.STOCK_RESERVED, order_id=oid)
    cancel = {
        "event_id": order_placed()["event_id"],
        "order_id": oid,
        "requested_at": datetime.now(UTC).isoformat(),
        "reason": "customer changed mind",
    }
    await shop.send(topics.ORDERS_CANCELLATION_REQUESTED, cancel, key=oid)
    await log.wait(topics.ORDERS_CANCELLED, order_id=oid)
    released = (await log.wait(topics.STOCK_RELEASED, order_id=oid))[0]
    assert released["allocations"] == [{"warehouse_id": "BER-1", "sku": "CXL", "quantity": 2}]
    inventory = system.runtimes["inventory"]
    row = await inventory.pool.fetchrow("SELECT on_hand, reserved FROM stock WHERE sku = 'CXL'")
    assert (row["on_hand"], row["reserved"]) == (3, 0)
    # a second cancellation is refused, the stock is not released twice
    again = cancel | {"event_id": order_placed()["event_id"]}
    await shop.send(topics.ORDERS_CANCELLATION_REQUESTED, again, key=oid)
    refused = (await log.wait(topics.ORDERS_CANCELLATION_REJECTED, order_id=oid))[0]
    assert refused["reason"] == "already_cancelled"
    assert len(log.about(topics.STOCK_RELEASED, order_id=oid)) == 1
    async with httpx.AsyncClient(timeout=10) as http:
        assert await order_status(http, system, oid) == "cancelled"


async def test_cancellation_after_handover_is_rejected(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(autopick=True)
    await setup_stock(system, [("BER-1", "DE", "10115")], [("BER-1", "SHP", 3)])
    log = await event_log_factory(
        system.config.kafka,
        [
            topics.SHIPMENTS_LABEL_CREATED,
            topics.SHIPMENTS_SHIPPED,
            topics.ORDERS_CANCELLATION_REJECTED,
            topics.ORDERS_CANCELLED,
        ],
    )
    shop = await publisher_factory(system.config.kafka)
    order = order_placed(lines=[("SHP", 1)])
    oid = order["order_id"]
    await shop.send(topics.ORDERS_PLACED, order, key=oid)
    label = (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=oid))[0]
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(
            f"{system.urls['sandbox']}/sandbox/trackers/{label['tracking_number']}/events",
            json={
                "status": "picked_up",
                "at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
            },
        )
        assert r.status_code == 202
        await log.wait(topics.SHIPMENTS_SHIPPED, order_id=oid)
        await wait_for(
            lambda: _is(order_status(http, system, oid), "shipped"),
            what="orders to see the handover",
        )
        cancel = {
            "event_id": order_placed()["event_id"],
            "order_id": oid,
            "requested_at": datetime.now(UTC).isoformat(),
        }
        await shop.send(topics.ORDERS_CANCELLATION_REQUESTED, cancel, key=oid)
        refused = (await log.wait(topics.ORDERS_CANCELLATION_REJECTED, order_id=oid))[0]
        assert refused["reason"] == "already_shipped"
        assert log.about(topics.ORDERS_CANCELLED, order_id=oid) == []
        assert await order_status(http, system, oid) == "shipped"


async def _is(status: Any, expected: str) -> bool:
    return bool(await status == expected)
