"""Returns through all four services: a refund restocks what comes back sellable, and an
exchange's replacement order is reserved, packed, labelled and shipped like any order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from shared import topics
from tests.conftest import MakeSystem
from tests.e2e.test_walking_skeleton import _deliver, _stock_warehouse
from tests.factories import order_placed, return_requested
from tests.support import bearer, wait_for

pytestmark = pytest.mark.integration

WATCHED = [
    topics.ORDERS_ACCEPTED,
    topics.STOCK_RESERVED,
    topics.STOCK_BACKORDERED,
    topics.SHIPMENTS_LABEL_CREATED,
    topics.SHIPMENTS_SHIPPED,
    topics.SHIPMENTS_DELIVERED,
    topics.RETURNS_APPROVED,
    topics.RETURNS_RECEIVED,
    topics.REFUNDS_REQUESTED,
    topics.STOCK_RESTOCKED,
]


async def test_a_refund_restocks_and_an_exchange_ships_a_replacement(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(autopick=True)
    log = await event_log_factory(system.config.kafka, WATCHED)
    shop = await publisher_factory(system.config.kafka)
    tokens = system.config.tokens
    urls = system.urls
    async with httpx.AsyncClient(timeout=30) as http:
        await _stock_warehouse(http, system, "TEE-M", 5)

        async def on_hand(sku: str) -> int:
            r = await http.get(f"{urls['inventory']}/stock/{sku}", headers=bearer(tokens["ops"]))
            assert r.status_code == 200, r.text
            return int(sum(w["on_hand"] for w in r.json()["warehouses"]))

        refund_order = order_placed(lines=[("TEE-M", 3)])
        exchange_order = order_placed(lines=[("TEE-M", 1)])
        delivered_at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
        for order in (refund_order, exchange_order):
            oid = order["order_id"]
            await shop.send(topics.ORDERS_PLACED, order, key=oid)
            label = (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=oid))[0]
            await _deliver(http, urls["sandbox"], label["tracking_number"], delivered_at)
            await log.wait(topics.SHIPMENTS_DELIVERED, order_id=oid)
        assert await on_hand("TEE-M") == 1  # 5 received, 4 shipped

        # a refund: 2 of the 3 back, one sellable and one damaged
        refund = return_requested(
            order_id=refund_order["order_id"], lines=[("TEE-M", 2)], requested_at=delivered_at
        )
        await shop.send(topics.RETURNS_REQUESTED, refund, key=refund["order_id"])
        approved = (await log.wait(topics.RETURNS_APPROVED, return_id=refund["return_id"]))[0]
        assert approved["warehouse_id"] == "BER-1"
        r = await http.post(
            f"{urls['returns']}/returns/{refund['return_id']}/received",
            json={
                "lines": [
                    {"sku": "TEE-M", "quantity": 1, "condition": "sellable"},
                    {"sku": "TEE-M", "quantity": 1, "condition": "damaged"},
                ]
            },
            headers=bearer(tokens["warehouse"]),
        )
        assert r.status_code == 200, r.text
        (money,) = await log.wait(topics.REFUNDS_REQUESTED, return_id=refund["return_id"])
        assert (money["amount"], money["currency"]) == ("39.98", "EUR")
        (restocked,) = await log.wait(topics.STOCK_RESTOCKED, return_id=refund["return_id"])
        assert (restocked["sku"], restocked["quantity"]) == ("TEE-M", 1)
        assert await wait_for(lambda: _equals(on_hand("TEE-M"), 2), what="one tee back on hand")

        # an exchange for another size that is in stock
        await _stock_warehouse(http, system, "TEE-L", 1)
        exchange = return_requested(
            order_id=exchange_order["order_id"],
            lines=[("TEE-M", 1)],
            requested_at=delivered_at + timedelta(days=1),
            resolution="exchange",
            exchange_for=[{"sku": "TEE-L", "quantity": 1}],
        )
        await shop.send(topics.RETURNS_REQUESTED, exchange, key=exchange["order_id"])
        await log.wait(topics.RETURNS_APPROVED, return_id=exchange["return_id"])
        replacement = await wait_for(
            lambda: _replacement_of(log.about(topics.ORDERS_ACCEPTED), exchange_order),
            what="the replacement order",
        )
        rid = replacement["order_id"]
        assert [(line["sku"], line["quantity"]) for line in replacement["lines"]] == [("TEE-L", 1)]
        await log.wait(topics.STOCK_RESERVED, order_id=rid)
        label = (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=rid))[0]
        await _deliver(http, urls["sandbox"], label["tracking_number"], datetime.now(UTC))
        await log.wait(topics.SHIPMENTS_SHIPPED, order_id=rid)

        async def original_status() -> str | None:
            r = await http.get(
                f"{urls['orders']}/orders/{exchange_order['order_id']}",
                headers=bearer(tokens["ops"]),
            )
            status: str = r.json()["status"]
            return status if status == "exchanged" else None

        assert await wait_for(original_status, what="the original order exchanged") == "exchanged"

        # an exchange for something out of stock: the shop sees the replacement backordered
        sold_out = return_requested(
            order_id=refund_order["order_id"],
            lines=[("TEE-M", 1)],
            requested_at=delivered_at + timedelta(days=1),
            resolution="exchange",
            exchange_for=[{"sku": "TEE-XXL", "quantity": 1}],
        )
        # (the refund took back two of its three tees; this takes back the third)
        await shop.send(topics.RETURNS_REQUESTED, sold_out, key=sold_out["order_id"])
        waiting = await wait_for(
            lambda: _replacement_of(log.about(topics.ORDERS_ACCEPTED), refund_order),
            what="the second replacement order",
        )
        (backordered,) = await log.wait(topics.STOCK_BACKORDERED, order_id=waiting["order_id"])
        assert backordered["missing"] == [{"sku": "TEE-XXL", "quantity": 1}]


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


def _replacement_of(accepted: list[dict[str, Any]], original: dict[str, Any]) -> dict[str, Any]:
    found = [e for e in accepted if e.get("replaces_order_id") == original["order_id"]]
    return found[0] if found else {}
