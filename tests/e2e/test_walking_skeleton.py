"""One order through all four services on the real broker and database.

orders.placed -> orders.accepted -> stock.reserved -> (autopick) orders.packed ->
shipments.label-created (bought from the sandbox over HTTP) -> shipments.shipped ->
shipments.delivered (a signed webhook from the sandbox) -> returns.requested ->
returns.approved, and a late return -> returns.rejected (window_expired).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from shared import topics
from tests.conftest import MakeSystem
from tests.factories import order_placed, return_requested
from tests.support import bearer, wait_for

pytestmark = pytest.mark.integration

WATCHED = [
    topics.ORDERS_ACCEPTED,
    topics.STOCK_RESERVED,
    topics.PICKLISTS_CREATED,
    topics.ORDERS_PACKED,
    topics.SHIPMENTS_LABEL_CREATED,
    topics.SHIPMENTS_SHIPPED,
    topics.SHIPMENTS_DELIVERED,
    topics.RETURNS_APPROVED,
    topics.RETURNS_REJECTED,
]


async def _stock_warehouse(http: httpx.AsyncClient, system: object, sku: str, qty: int) -> None:
    urls = system.urls  # type: ignore[attr-defined]
    tokens = system.config.tokens  # type: ignore[attr-defined]
    r = await http.put(
        f"{urls['inventory']}/warehouses/BER-1",
        json={"name": "Berlin", "country": "DE", "postal_code": "10115"},
        headers=bearer(tokens["admin"]),
    )
    assert r.status_code == 200, r.text
    r = await http.post(
        f"{urls['inventory']}/stock/receipts",
        json={"warehouse_id": "BER-1", "sku": sku, "quantity": qty, "bin": "A-01-02"},
        headers=bearer(tokens["warehouse"]),
    )
    assert r.status_code == 202, r.text


async def _deliver(
    http: httpx.AsyncClient, sandbox: str, tracking_number: str, delivered_at: datetime
) -> None:
    for status, at in (
        ("picked_up", delivered_at - timedelta(days=1)),
        ("delivered", delivered_at),
    ):
        r = await http.post(
            f"{sandbox}/sandbox/trackers/{tracking_number}/events",
            json={"status": status, "at": at.isoformat()},
        )
        assert r.status_code == 202, r.text


async def test_an_order_flows_from_placement_to_return_decision(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(autopick=True)
    log = await event_log_factory(system.config.kafka, WATCHED)
    shop = await publisher_factory(system.config.kafka)
    tokens = system.config.tokens
    async with httpx.AsyncClient(timeout=30) as http:
        await _stock_warehouse(http, system, "SKU-RED", 10)

        on_time = order_placed(lines=[("SKU-RED", 2)])
        late = order_placed(lines=[("SKU-RED", 1)])
        for order in (on_time, late):
            await shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])

        for order in (on_time, late):
            oid = order["order_id"]
            accepted = (await log.wait(topics.ORDERS_ACCEPTED, order_id=oid))[0]
            assert accepted["promised"]["deliver_by"] > accepted["promised"]["dispatch_by"]
            reserved = (await log.wait(topics.STOCK_RESERVED, order_id=oid))[0]
            assert reserved["allocations"][0]["warehouse_id"] == "BER-1"
            await log.wait(topics.ORDERS_PACKED, order_id=oid)

        labels = {}
        for order in (on_time, late):
            label = (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=order["order_id"]))[0]
            labels[order["order_id"]] = label
            pdf = await http.get(label["label_url"])
            assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")

        stats = (await http.get(f"{system.urls['sandbox']}/sandbox/stats")).json()
        assert sum(stats["labels_by_carrier"].values()) == 2  # one label per shipment

        now = datetime.now(UTC).replace(microsecond=0)
        delivered_at = {
            on_time["order_id"]: now - timedelta(days=3),
            late["order_id"]: now - timedelta(days=8),
        }
        for oid, label in labels.items():
            await _deliver(
                http, system.urls["sandbox"], label["tracking_number"], delivered_at[oid]
            )
            shipped = (await log.wait(topics.SHIPMENTS_SHIPPED, order_id=oid))[0]
            assert shipped["tracking_number"] == label["tracking_number"]
            delivered = (await log.wait(topics.SHIPMENTS_DELIVERED, order_id=oid))[0]
            assert delivered["source"] == "webhook"
            assert datetime.fromisoformat(delivered["delivered_at"]) == delivered_at[oid]

        # returns keeps its own copy of the delivery: wait until it has it
        returns = system.runtimes["returns"]

        async def delivered_known() -> bool:
            n = await returns.pool.fetchval("SELECT count(*) FROM deliveries")
            return bool(n == 2)

        await wait_for(delivered_known, what="returns to record both deliveries")

        ok = return_requested(
            order_id=on_time["order_id"], lines=[("SKU-RED", 1)], requested_at=now
        )
        too_late = return_requested(
            order_id=late["order_id"], lines=[("SKU-RED", 1)], requested_at=now
        )
        for request in (ok, too_late):
            await shop.send(topics.RETURNS_REQUESTED, request, key=request["order_id"])

        approved = (await log.wait(topics.RETURNS_APPROVED, return_id=ok["return_id"]))[0]
        assert approved["rma"].startswith("RMA-")
        assert approved["return_label"]["tracking_number"]
        rejected = (await log.wait(topics.RETURNS_REJECTED, return_id=too_late["return_id"]))[0]
        assert rejected["reason"] == "window_expired"

        # ops see the whole story in the orders service's timeline
        async def timeline_reaches_returns() -> dict | None:
            r = await http.get(
                f"{system.urls['orders']}/orders/{on_time['order_id']}",
                headers=bearer(tokens["ops"]),
            )
            body = r.json()
            seen = {entry["status"] for entry in body.get("timeline", [])}
            return body if {"return_requested", "return_approved"} <= seen else None

        order_view = await wait_for(timeline_reaches_returns, what="the timeline to show returns")
        seen = [entry["status"] for entry in order_view["timeline"]]
        for status in (
            "received",
            "accepted",
            "reserved",
            "picking",
            "packed",
            "label_created",
            "shipped",
            "delivered",
        ):
            assert status in seen
        assert order_view["status"] == "return_requested"

        stock = await http.get(
            f"{system.urls['inventory']}/stock/SKU-RED", headers=bearer(tokens["ops"])
        )
        assert stock.json()["warehouses"][0]["on_hand"] == 10 - 3
