"""Warehouse staff with personal keys: bound to their warehouses, recorded on every pick,
pack and return receipt, shown on the order's timeline, revoked everywhere (real broker,
real PostgreSQL, all four services)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from shared import topics
from tests.conftest import MakeSystem
from tests.e2e.test_walking_skeleton import _deliver
from tests.factories import order_placed, return_requested
from tests.support import bearer, wait_for
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration

PARCEL = {"weight_grams": 800, "length_mm": 300, "width_mm": 200, "height_mm": 100}
WATCHED = [
    topics.PICKLISTS_CREATED,
    topics.ORDERS_PACKED,
    topics.SHIPMENTS_LABEL_CREATED,
    topics.SHIPMENTS_DELIVERED,
    topics.RETURNS_APPROVED,
    topics.RETURNS_RECEIVED,
]


async def add_staff(
    http: httpx.AsyncClient, system: LocalSystem, warehouse_id: str, **body: Any
) -> httpx.Response:
    return await http.post(
        f"{system.urls['inventory']}/warehouses/{warehouse_id}/staff",
        json=body,
        headers=bearer(system.config.tokens["admin"]),
    )


async def test_staff_work_in_their_warehouses_and_are_recorded_on_the_timeline(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(
        autopick=False, service_overrides={"wave_max_orders": 1, "wave_check_seconds": 1}
    )
    log = await event_log_factory(system.config.kafka, WATCHED)
    shop = await publisher_factory(system.config.kafka)
    inventory, tokens = system.urls["inventory"], system.config.tokens
    async with httpx.AsyncClient(timeout=30) as http:
        for wid, postal in (("BER-1", "10115"), ("HAM-1", "20095")):
            r = await http.put(
                f"{inventory}/warehouses/{wid}",
                json={"name": wid, "country": "DE", "postal_code": postal},
                headers=bearer(tokens["admin"]),
            )
            assert r.status_code == 200, r.text
        ada = (await add_staff(http, system, "BER-1", name="Ada", staff_id="ada")).json()
        bob = await add_staff(http, system, "BER-1", name="Bob")
        carl = await add_staff(http, system, "HAM-1", name="Carl", staff_id="carl")
        assert bob.status_code == carl.status_code == 201
        bob, carl = bob.json(), carl.json()
        assert ada["warehouse_ids"] == ["BER-1"] and ada["key"].startswith("wbk_")
        assert (await add_staff(http, system, "NOWHERE", name="Eve")).status_code == 404
        listed = await http.get(
            f"{inventory}/warehouses/BER-1/staff", headers=bearer(tokens["ops"])
        )
        assert {m["staff_id"] for m in listed.json()["staff"]} == {"ada", bob["staff_id"]}
        assert "key" not in listed.json()["staff"][0]

        # stock in: Ada into her warehouse only
        receipt = {"warehouse_id": "BER-1", "sku": "LAMP", "quantity": 4, "bin": "B-02-1"}
        r = await http.post(f"{inventory}/stock/receipts", json=receipt, headers=bearer(ada["key"]))
        assert r.status_code == 202, r.text
        r = await http.post(
            f"{inventory}/stock/receipts",
            json={**receipt, "warehouse_id": "HAM-1"},
            headers=bearer(ada["key"]),
        )
        assert r.status_code == 403

        order = order_placed(lines=[("LAMP", 1)])
        oid = order["order_id"]
        await shop.send(topics.ORDERS_PLACED, order, key=oid)
        created = (await log.wait(topics.PICKLISTS_CREATED, timeout=30))[0]
        picklist = created["picklist_id"]

        r = await http.get(
            f"{inventory}/picklists", params={"warehouse_id": "HAM-1"}, headers=bearer(ada["key"])
        )
        assert r.status_code == 403
        r = await http.get(f"{inventory}/picklists", headers=bearer(carl["key"]))
        assert r.status_code == 200 and r.json()["picklists"] == []  # none in Hamburg
        r = await http.get(f"{inventory}/picklists", headers=bearer(ada["key"]))
        assert [p["picklist_id"] for p in r.json()["picklists"]] == [picklist]

        pick = {"quantity": 1, "scanned_sku": "LAMP"}
        url = f"{inventory}/picklists/{picklist}/lines/1/picked"
        r = await http.post(url, json=pick, headers=bearer(carl["key"]))
        assert r.status_code == 403, r.text
        r = await http.post(url, json=pick, headers=bearer(ada["key"]))
        assert r.status_code == 200, r.text
        packed_url = f"{inventory}/orders/{oid}/packed"
        r = await http.post(packed_url, json={"parcels": [PARCEL]}, headers=bearer(carl["key"]))
        assert r.status_code == 403, r.text
        r = await http.post(packed_url, json={"parcels": [PARCEL]}, headers=bearer(bob["key"]))
        assert r.status_code == 200, r.text
        packed = (await log.wait(topics.ORDERS_PACKED, order_id=oid))[0]
        assert packed["packed_by"] == {"staff_id": bob["staff_id"], "name": "Bob"}
        assert packed["picked_by"] == [{"staff_id": "ada", "name": "Ada"}]

        # a return received in Berlin by Ada; Carl (Hamburg) may not
        label = (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=oid))[0]
        await _deliver(http, system.urls["sandbox"], label["tracking_number"], datetime.now(UTC))
        await log.wait(topics.SHIPMENTS_DELIVERED, order_id=oid)
        ret = return_requested(order_id=oid, lines=[("LAMP", 1)], requested_at=datetime.now(UTC))
        await shop.send(topics.RETURNS_REQUESTED, ret, key=oid)
        await log.wait(topics.RETURNS_APPROVED, return_id=ret["return_id"])
        received = {"lines": [{"sku": "LAMP", "quantity": 1, "condition": "sellable"}]}
        receive_url = f"{system.urls['returns']}/returns/{ret['return_id']}/received"

        async def known_in_returns(key: str, status: int) -> bool:
            r = await http.post(receive_url, json=received, headers=bearer(key))
            return r.status_code == status

        await wait_for(lambda: known_in_returns(carl["key"], 403), what="Carl refused")
        r = await http.post(receive_url, json=received, headers=bearer(ada["key"]))
        assert r.status_code == 200, r.text
        (got,) = await log.wait(topics.RETURNS_RECEIVED, return_id=ret["return_id"])
        assert got["received_by"] == {"staff_id": "ada", "name": "Ada"}

        async def timeline() -> dict[str, dict[str, Any]] | None:
            r = await http.get(
                f"{system.urls['orders']}/orders/{oid}", headers=bearer(tokens["ops"])
            )
            steps = {step["status"]: step["detail"] for step in r.json()["timeline"]}
            return steps if "returned" in steps and "packed" in steps else None

        steps = await wait_for(timeline, what="the timeline with packing and the return")
        assert steps["packed"]["packed_by"]["name"] == "Bob"
        assert steps["packed"]["picked_by"] == [{"staff_id": "ada", "name": "Ada"}]
        assert steps["returned"]["received_by"] == {"staff_id": "ada", "name": "Ada"}

        # Ada also in Hamburg, then out of Berlin; out of both: her key is revoked everywhere
        r = await add_staff(http, system, "HAM-1", staff_id="ada")
        assert (r.status_code, r.json()["warehouse_ids"], "key" in r.json()) == (
            200,
            ["BER-1", "HAM-1"],
            False,
        )
        for wid in ("BER-1", "HAM-1"):
            r = await http.delete(
                f"{inventory}/warehouses/{wid}/staff/ada", headers=bearer(tokens["admin"])
            )
            assert r.status_code == 200, r.text
        assert r.json()["revoked"] is True
        r = await http.get(f"{inventory}/picklists", headers=bearer(ada["key"]))
        assert r.status_code == 401
        await wait_for(lambda: known_in_returns(ada["key"], 401), timeout=10, what="revoked")
