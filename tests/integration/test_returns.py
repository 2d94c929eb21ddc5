"""The returns service on a real broker, database and carrier sandbox.

Returns runs alone here; the test plays orders and shipping by publishing
``orders.accepted`` and ``shipments.delivered`` itself, and the shop by publishing
``returns.requested``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import httpx
import pytest

from shared import topics
from tests.conftest import MakeSystem
from tests.factories import new_id, order_accepted, return_requested, shipment_delivered
from tests.support import EventLog, Publisher, bearer, wait_for
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration

DECISIONS = [topics.RETURNS_APPROVED, topics.RETURNS_REJECTED]
#: how long a request for an order or delivery not heard of yet waits (default 20 s)
QUICK = {"return_decision_grace_seconds": 1.0}


class Shop:
    """Publishes what the other services and the shop would, and reads the decisions."""

    def __init__(self, system: LocalSystem, publisher: Publisher, log: EventLog) -> None:
        self.system, self.publisher, self.log = system, publisher, log

    async def delivered_order(
        self,
        lines: list[tuple[str, int]],
        *,
        deliveries: list[tuple[datetime, list[tuple[str, int]], str, str]],
        unit_price: str = "19.99",
    ) -> str:
        """An accepted order, delivered in shipments of (at, lines, warehouse, carrier)."""
        order = order_accepted(lines=lines, unit_price=unit_price)
        oid = order["order_id"]
        await self.publisher.send(topics.ORDERS_ACCEPTED, order, key=oid)
        for at, held, warehouse, carrier in deliveries:
            delivered = shipment_delivered(
                oid, delivered_at=at, lines=held, warehouse_id=warehouse, carrier=carrier
            )
            await self.publisher.send(topics.SHIPMENTS_DELIVERED, delivered, key=oid)
        # the shop asks once it has seen the deliveries; so does the test, at the source
        await wait_for(
            lambda: self._recorded(oid, len(deliveries)), what=f"deliveries of {oid} recorded"
        )
        return oid

    async def _recorded(self, order_id: str, deliveries: int) -> bool:
        async with self.system.runtimes["returns"].pool.acquire() as conn:
            known = await conn.fetchval(
                """
                SELECT (SELECT count(*) FROM return_orders WHERE order_id = $1)
                     + (SELECT count(*) FROM deliveries WHERE order_id = $1)
                """,
                order_id,
            )
        return bool(known == deliveries + 1)

    async def request(
        self,
        order_id: str,
        lines: list[tuple[str, int]],
        at: datetime,
        *,
        return_id: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        request = return_requested(order_id=order_id, lines=lines, requested_at=at, **extra)
        if return_id is not None:
            request["return_id"] = return_id
        await self.publisher.send(topics.RETURNS_REQUESTED, request, key=order_id)
        return request

    async def decision(self, return_id: str) -> tuple[str, dict[str, Any]]:
        def decided() -> tuple[str, dict[str, Any]] | None:
            for topic in DECISIONS:
                if events := self.log.about(topic, return_id=return_id):
                    return topic, events[0]
            return None

        return await wait_for(decided, what=f"a decision on return {return_id}")

    async def outbox_count(self, topic: str, return_id: str) -> int:
        async with self.system.runtimes["returns"].pool.acquire() as conn:
            count: int = await conn.fetchval(
                """
                SELECT count(*) FROM outbox
                WHERE topic = $1 AND convert_from(payload, 'UTF8')::jsonb->>'return_id' = $2
                  AND redrive_of IS NULL  -- a re-drive's copies repeat an event, not add one
                """,
                topic,
                return_id,
            )
        return count


@pytest.fixture
async def shop_factory(event_log_factory, publisher_factory):  # type: ignore[no-untyped-def]
    async def make(system: LocalSystem) -> Shop:
        log = await event_log_factory(
            system.config.kafka,
            [
                *DECISIONS,
                topics.RETURNS_RECEIVED,
                topics.REFUNDS_REQUESTED,
                topics.RETURNS_EXCHANGE_REQUESTED,
            ],
        )
        return Shop(system, await publisher_factory(system.config.kafka), log)

    return make


@pytest.mark.parametrize("window_days", [7, 14])
async def test_the_window_at_its_edges(make_system: MakeSystem, shop_factory, window_days) -> None:  # type: ignore[no-untyped-def]
    system = await make_system(
        services=["returns"], return_window_days=window_days, service_overrides=QUICK
    )
    shop = await shop_factory(system)
    delivered_at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
    oid = await shop.delivered_order(
        [("EDGE", 5)], deliveries=[(delivered_at, [("EDGE", 5)], "BER-1", "swiftpost")]
    )
    closes = delivered_at + timedelta(days=window_days)
    cases = {
        "last second": (closes, "approved"),
        "one second late": (closes + timedelta(seconds=1), "window_expired"),
        "before delivery": (delivered_at - timedelta(seconds=1), "not_delivered"),
        "in the future": (datetime.now(UTC) + timedelta(minutes=10), "invalid"),
        "a week in, either way": (delivered_at + timedelta(days=7), "approved"),
        "8 days in": (
            delivered_at + timedelta(days=8),
            "approved" if window_days == 14 else "window_expired",
        ),
    }
    requests = {name: await shop.request(oid, [("EDGE", 1)], at) for name, (at, _) in cases.items()}
    unknown = await shop.request(new_id(), [("EDGE", 1)], delivered_at + timedelta(days=1))
    for name, (_, expected) in cases.items():
        topic, event = await shop.decision(requests[name]["return_id"])
        outcome = "approved" if topic == topics.RETURNS_APPROVED else event["reason"]
        assert outcome == expected, name
    topic, event = await shop.decision(unknown["return_id"])
    assert (topic, event["reason"]) == (topics.RETURNS_REJECTED, "unknown_order")


async def test_partial_returns_up_to_the_delivered_quantity(
    make_system: MakeSystem, shop_factory
) -> None:  # type: ignore[no-untyped-def]
    system = await make_system(services=["returns"], service_overrides=QUICK)
    shop = await shop_factory(system)
    day = datetime.now(UTC) - timedelta(days=2)
    oid = await shop.delivered_order(
        [("PART", 3)], deliveries=[(day, [("PART", 3)], "BER-1", "swiftpost")]
    )
    outcomes = []
    for quantity in (2, 1, 1):
        request = await shop.request(oid, [("PART", quantity)], day + timedelta(hours=1))
        topic, event = await shop.decision(request["return_id"])
        outcomes.append("approved" if topic == topics.RETURNS_APPROVED else event["reason"])
    assert outcomes == ["approved", "approved", "quantity_exceeds_delivered"]


async def test_each_line_counts_from_its_own_shipments_delivery(
    make_system: MakeSystem, shop_factory
) -> None:  # type: ignore[no-untyped-def]
    system = await make_system(services=["returns"], service_overrides=QUICK)
    shop = await shop_factory(system)
    now = datetime.now(UTC)
    early, late = now - timedelta(days=9), now - timedelta(days=3)
    oid = await shop.delivered_order(
        [("ALPHA", 1), ("BETA", 1)],
        deliveries=[
            (early, [("ALPHA", 1)], "BER-1", "swiftpost"),
            (late, [("BETA", 1)], "MUC-1", "ecoship"),
        ],
    )
    both = await shop.request(oid, [("ALPHA", 1), ("BETA", 1)], now)
    topic, event = await shop.decision(both["return_id"])
    assert (topic, event["reason"]) == (topics.RETURNS_REJECTED, "window_expired")
    beta = await shop.request(oid, [("BETA", 1)], now)
    topic, approved = await shop.decision(beta["return_id"])
    assert topic == topics.RETURNS_APPROVED
    # it goes back to the warehouse that shipped it, with the carrier that delivered it
    assert approved["warehouse_id"] == "MUC-1"
    assert approved["return_label"]["carrier"] == "ecoship"
    alpha_in_time = await shop.request(oid, [("ALPHA", 1)], early + timedelta(days=7))
    topic, _ = await shop.decision(alpha_in_time["return_id"])
    assert topic == topics.RETURNS_APPROVED


async def test_receipt_publishes_received_and_an_exact_refund_once(
    make_system: MakeSystem, shop_factory
) -> None:  # type: ignore[no-untyped-def]
    system = await make_system(services=["returns"], service_overrides=QUICK)
    shop = await shop_factory(system)
    day = datetime.now(UTC) - timedelta(days=1)
    oid = await shop.delivered_order(
        [("CENT", 3), ("KEEP", 1)],
        deliveries=[(day, [("CENT", 3), ("KEEP", 1)], "BER-1", "swiftpost")],
        unit_price="33.33",
    )
    request = await shop.request(oid, [("CENT", 3)], day + timedelta(hours=2))
    rid = request["return_id"]
    topic, approved = await shop.decision(rid)
    assert topic == topics.RETURNS_APPROVED and approved["rma"].startswith("RMA-")
    assert approved["lines"] == [{"sku": "CENT", "quantity": 3}]

    warehouse = bearer(system.config.tokens["warehouse"])
    url = f"{system.urls['returns']}/returns/{rid}/received"
    good = {
        "lines": [
            {"sku": "CENT", "quantity": 2, "condition": "sellable"},
            {"sku": "CENT", "quantity": 1, "condition": "damaged"},
        ]
    }
    async with httpx.AsyncClient(timeout=10) as http:
        shop_token = bearer(system.config.tokens["shop"])
        assert (await http.post(url, json=good, headers=shop_token)).status_code == 403
        bad = await http.post(
            url, json={"lines": [{"sku": "CENT", "quantity": 0}]}, headers=warehouse
        )
        assert bad.status_code == 422  # quantity and condition, by field
        fields = {tuple(e["loc"]) for e in bad.json()["detail"]}
        assert ("body", "lines", 0, "quantity") in fields
        assert ("body", "lines", 0, "condition") in fields
        over = {"lines": [{"sku": "CENT", "quantity": 4, "condition": "sellable"}]}
        r = await http.post(url, json=over, headers=warehouse)
        assert r.status_code == 422 and "3 expected" in r.text
        other = {"lines": [{"sku": "KEEP", "quantity": 1, "condition": "sellable"}]}
        r = await http.post(url, json=other, headers=warehouse)
        assert r.status_code == 422 and "not part of return" in r.text
        # FastAPI's field-error shape, like every other 422
        (error,) = r.json()["detail"]
        assert error["loc"] == ["body", "lines", 0, "sku"] and error["type"] == "value_error"

        first = await http.post(url, json=good, headers=warehouse)
        assert first.status_code == 200, first.text
        assert first.json()["refund"] == {"amount": "99.99", "currency": "EUR"}
        again = await http.post(url, json=good, headers=warehouse)
        assert again.status_code == 200 and again.json() == first.json()
        different = {"lines": [{"sku": "CENT", "quantity": 3, "condition": "sellable"}]}
        assert (await http.post(url, json=different, headers=warehouse)).status_code == 409

    (received,) = await shop.log.wait(topics.RETURNS_RECEIVED, return_id=rid)
    assert received["warehouse_id"] == "BER-1" and received["order_id"] == oid
    assert sorted((line["condition"], line["quantity"]) for line in received["lines"]) == [
        ("damaged", 1),
        ("sellable", 2),
    ]
    (refund,) = await shop.log.wait(topics.REFUNDS_REQUESTED, return_id=rid)
    assert (refund["amount"], refund["currency"]) == ("99.99", "EUR")
    assert await shop.outbox_count(topics.RETURNS_RECEIVED, rid) == 1
    assert await shop.outbox_count(topics.REFUNDS_REQUESTED, rid) == 1

    # a rejected return cannot be received
    late = await shop.request(oid, [("KEEP", 1)], day + timedelta(days=30))
    await shop.decision(late["return_id"])
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(
            f"{system.urls['returns']}/returns/{late['return_id']}/received",
            json=other,
            headers=warehouse,
        )
    assert r.status_code == 409 and "rejected" in r.text


async def test_the_warehouse_page_receipt_and_the_same_request_twice(
    make_system: MakeSystem, shop_factory
) -> None:  # type: ignore[no-untyped-def]
    system = await make_system(services=["returns"], service_overrides=QUICK)
    shop = await shop_factory(system)
    day = datetime.now(UTC) - timedelta(days=1)
    oid = await shop.delivered_order(
        [("SCAN", 2)], deliveries=[(day, [("SCAN", 2)], "BER-1", "swiftpost")]
    )
    request = await shop.request(oid, [("SCAN", 2)], day)
    rid = request["return_id"]
    # the shop sends the very same request again (a new event id): one decision
    await shop.request(oid, [("SCAN", 2)], day, return_id=rid)
    topic, _ = await shop.decision(rid)
    assert topic == topics.RETURNS_APPROVED

    # received on the warehouse page (inventory publishes warehouse.return-scanned)
    scanned = {
        "event_id": str(uuid4()),
        "return_id": rid,
        "warehouse_id": "BER-1",
        "lines": [{"sku": "SCAN", "quantity": 2, "condition": "sellable"}],
    }
    await shop.publisher.send(topics.WAREHOUSE_RETURN_SCANNED, scanned, key=rid)
    await shop.publisher.send(
        topics.WAREHOUSE_RETURN_SCANNED, {**scanned, "event_id": str(uuid4())}, key=rid
    )
    (refund,) = await shop.log.wait(topics.REFUNDS_REQUESTED, return_id=rid)
    assert refund["amount"] == "39.98"
    await shop.log.wait(topics.RETURNS_RECEIVED, return_id=rid)
    assert await shop.outbox_count(topics.RETURNS_APPROVED, rid) == 1
    assert await shop.outbox_count(topics.RETURNS_RECEIVED, rid) == 1
    assert await shop.outbox_count(topics.REFUNDS_REQUESTED, rid) == 1


async def test_an_exchange_asks_orders_for_a_replacement_and_refunds_nothing(
    make_system: MakeSystem, shop_factory
) -> None:  # type: ignore[no-untyped-def]
    system = await make_system(services=["returns"], service_overrides=QUICK)
    shop = await shop_factory(system)
    day = datetime.now(UTC) - timedelta(days=1)
    oid = await shop.delivered_order(
        [("SHIRT-M", 1)], deliveries=[(day, [("SHIRT-M", 1)], "BER-1", "swiftpost")]
    )
    request = await shop.request(
        oid,
        [("SHIRT-M", 1)],
        day,
        resolution="exchange",
        exchange_for=[{"sku": "SHIRT-L", "quantity": 1}],
    )
    rid = request["return_id"]
    topic, approved = await shop.decision(rid)
    assert topic == topics.RETURNS_APPROVED and approved["resolution"] == "exchange"
    (exchange,) = await shop.log.wait(topics.RETURNS_EXCHANGE_REQUESTED, return_id=rid)
    assert exchange["order_id"] == oid
    assert exchange["lines"] == [{"sku": "SHIRT-L", "quantity": 1}]
    assert exchange["replacement_order_id"].startswith("exchange:")

    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(
            f"{system.urls['returns']}/returns/{rid}/received",
            json={"lines": [{"sku": "SHIRT-M", "quantity": 1, "condition": "sellable"}]},
            headers=bearer(system.config.tokens["warehouse"]),
        )
    assert r.status_code == 200 and r.json()["refund"] is None
    await shop.log.wait(topics.RETURNS_RECEIVED, return_id=rid)
    assert await shop.outbox_count(topics.REFUNDS_REQUESTED, rid) == 0


async def test_the_return_label_falls_back_when_the_delivering_carrier_is_down(
    make_system: MakeSystem, shop_factory
) -> None:  # type: ignore[no-untyped-def]
    system = await make_system(services=["returns"], service_overrides=QUICK)
    shop = await shop_factory(system)
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(
            f"{system.urls['sandbox']}/sandbox/faults",
            json={"outage": True, "carriers": ["ecoship"]},
        )
        assert r.status_code == 200
    day = datetime.now(UTC) - timedelta(days=1)
    oid = await shop.delivered_order(
        [("DOWN", 1)], deliveries=[(day, [("DOWN", 1)], "BER-1", "ecoship")]
    )
    request = await shop.request(oid, [("DOWN", 1)], day)
    topic, approved = await shop.decision(request["return_id"])
    assert topic == topics.RETURNS_APPROVED
    assert approved["return_label"]["carrier"] != "ecoship"


async def test_a_request_that_overtakes_its_delivery_waits_for_it(
    make_system: MakeSystem, shop_factory
) -> None:  # type: ignore[no-untyped-def]
    system = await make_system(
        services=["returns"], service_overrides={"return_decision_grace_seconds": 30.0}
    )
    shop = await shop_factory(system)
    day = datetime.now(UTC) - timedelta(days=1)
    order = order_accepted(lines=[("RACE", 1)])
    oid = order["order_id"]
    # the request reaches returns before the order and the delivery do
    request = await shop.request(oid, [("RACE", 1)], day + timedelta(hours=1))
    rid = request["return_id"]

    async def status() -> str | None:
        async with system.runtimes["returns"].pool.acquire() as conn:
            found: str | None = await conn.fetchval(
                "SELECT status FROM returns WHERE return_id = $1", rid
            )
        return found

    assert await wait_for(status, what="the request recorded") == "pending"
    await shop.publisher.send(topics.ORDERS_ACCEPTED, order, key=oid)
    delivered = shipment_delivered(oid, delivered_at=day, lines=[("RACE", 1)])
    await shop.publisher.send(topics.SHIPMENTS_DELIVERED, delivered, key=oid)
    topic, _ = await shop.decision(rid)
    assert topic == topics.RETURNS_APPROVED
