"""Waves, picking and packing on the real system: broker, database, HTTP.

Orders go in as ``orders.placed`` through the orders service; inventory reserves them,
queues them for picking and releases pick lists in waves; the warehouse picks and
packs over HTTP, and ``orders.packed`` comes out on the broker.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
import pytest

from services.inventory.picking import WaveBuilderStats, release_unpicked
from shared import topics
from shared.clock import ManualClock
from shared.db import unit_of_work
from tests.conftest import MakeSystem
from tests.factories import order_placed
from tests.support import EventLog, Publisher, bearer, wait_for
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration

WATCHED = [topics.STOCK_RESERVED, topics.PICKLISTS_CREATED, topics.ORDERS_PACKED]
PARCEL = {"weight_grams": 1200, "length_mm": 300, "width_mm": 200, "height_mm": 100}


class Floor:
    """One test system seen from the warehouse: stock in, orders in, HTTP calls."""

    def __init__(
        self, system: LocalSystem, http: httpx.AsyncClient, shop: Publisher, log: EventLog
    ) -> None:
        self.system = system
        self.http = http
        self.shop = shop
        self.log = log
        self.url = system.urls["inventory"]
        self.tokens = system.config.tokens
        self.inventory = system.runtimes["inventory"]

    @property
    def waves(self) -> WaveBuilderStats:
        stats: WaveBuilderStats = self.inventory.extras["waves"]
        return stats

    async def stock(self, sku: str, quantity: int, bin: str, warehouse_id: str = "BER-1") -> None:
        r = await self.http.post(
            f"{self.url}/stock/receipts",
            json={"warehouse_id": warehouse_id, "sku": sku, "quantity": quantity, "bin": bin},
            headers=bearer(self.tokens["warehouse"]),
        )
        assert r.status_code == 202, r.text

    async def order(self, lines: list[tuple[str, int]]) -> str:
        """Place an order and wait until inventory has reserved it."""
        placed = order_placed(lines=lines)
        await self.shop.send(topics.ORDERS_PLACED, placed, key=placed["order_id"])
        await self.log.wait(topics.STOCK_RESERVED, order_id=placed["order_id"])
        order_id: str = placed["order_id"]
        return order_id

    async def queued(self) -> dict[str, datetime]:
        rows = await self.inventory.pool.fetch(
            "SELECT order_id, min(queued_at) AS at FROM picking_queue GROUP BY order_id"
        )
        return {r["order_id"]: r["at"] for r in rows}

    async def picklist_count(self) -> int:
        count: int = await self.inventory.pool.fetchval("SELECT count(*) FROM picklists")
        return count

    async def checks_pass(self, n: int = 2) -> None:
        """Let the wave builder look at the queue ``n`` more times."""
        start = self.waves.checks
        await wait_for(lambda: self.waves.checks >= start + n, what=f"{n} wave checks")

    async def picklists(
        self, status: str = "open", warehouse_id: str = "BER-1"
    ) -> list[dict[str, Any]]:
        r = await self.http.get(
            f"{self.url}/picklists",
            params={"warehouse_id": warehouse_id, "status": status},
            headers=bearer(self.tokens["warehouse"]),
        )
        assert r.status_code == 200, r.text
        found: list[dict[str, Any]] = r.json()["picklists"]
        return found

    async def pick(self, picklist_id: str, line_no: int, sku: str, quantity: int) -> httpx.Response:
        return await self.http.post(
            f"{self.url}/picklists/{picklist_id}/lines/{line_no}/picked",
            json={"quantity": quantity, "scanned_sku": sku},
            headers=bearer(self.tokens["warehouse"]),
        )

    async def pack(self, order_id: str, **body: Any) -> httpx.Response:
        return await self.http.post(
            f"{self.url}/orders/{order_id}/packed",
            json={"parcels": [PARCEL], **body},
            headers=bearer(self.tokens["warehouse"]),
        )

    async def on_hand(self, sku: str) -> tuple[int, int]:
        r = await self.http.get(f"{self.url}/stock/{sku}", headers=bearer(self.tokens["ops"]))
        w = r.json()["warehouses"][0]
        return w["on_hand"], w["reserved"]


@pytest.fixture
async def open_floor(make_system: MakeSystem, event_log_factory, publisher_factory):
    opened: list[httpx.AsyncClient] = []

    async def open_(*, clock: ManualClock | None = None, **waves: Any) -> Floor:
        system = await make_system(
            autopick=False,
            services=["orders", "inventory"],
            with_sandbox=False,
            clock=clock,
            service_overrides=waves,
        )
        http = httpx.AsyncClient(timeout=30)
        opened.append(http)
        r = await http.put(
            f"{system.urls['inventory']}/warehouses/BER-1",
            json={"name": "Berlin", "country": "DE", "postal_code": "10115"},
            headers=bearer(system.config.tokens["admin"]),
        )
        assert r.status_code == 200, r.text
        log = await event_log_factory(system.config.kafka, WATCHED)
        shop = await publisher_factory(system.config.kafka)
        return Floor(system, http, shop, log)

    yield open_
    for http in opened:
        await http.aclose()


async def test_a_full_wave_is_released_at_once_in_walking_order(open_floor) -> None:
    clock = ManualClock(datetime.now(UTC))
    floor: Floor = await open_floor(
        clock=clock, wave_max_orders=3, wave_max_age_seconds=3600, wave_check_seconds=0.1
    )
    for sku, bin in (
        ("SKU-C", "B-01-1"),
        ("SKU-A", "A-10-1"),
        ("SKU-B", "A-2-3"),
        ("SKU-D", "A-01-1"),
    ):
        await floor.stock(sku, 5, bin)
    first = await floor.order([("SKU-C", 1)])
    clock.advance(timedelta(seconds=1))
    second = await floor.order([("SKU-A", 2)])
    await wait_for(lambda: _has(floor.queued(), first, second), what="two orders queued")
    await floor.checks_pass()
    assert await floor.picklist_count() == 0, "a wave of two is not full yet"
    clock.advance(timedelta(seconds=1))
    third = await floor.order([("SKU-B", 3)])

    created = (await floor.log.wait(topics.PICKLISTS_CREATED))[0]
    assert created["warehouse_id"] == "BER-1"
    assert [(x["bin"], x["sku"], x["quantity"], x["order_id"]) for x in created["lines"]] == [
        ("A-2-3", "SKU-B", 3, third),
        ("A-10-1", "SKU-A", 2, second),
        ("B-01-1", "SKU-C", 1, first),
    ]
    fourth = await floor.order([("SKU-D", 1)])
    await wait_for(lambda: _has(floor.queued(), fourth), what="the fourth order queued")
    await floor.checks_pass()
    assert await floor.picklist_count() == 1
    assert set(await floor.queued()) == {fourth}

    [listed] = await floor.picklists()
    assert listed["picklist_id"] == created["picklist_id"]
    assert [x["line_no"] for x in listed["lines"]] == [1, 2, 3]
    assert [x["bin"] for x in listed["lines"]] == ["A-2-3", "A-10-1", "B-01-1"]
    assert {o["order_id"]: o["status"] for o in listed["orders"]} == {
        first: "picking",
        second: "picking",
        third: "picking",
    }


async def test_a_wave_is_released_when_its_oldest_order_has_waited_long_enough(
    open_floor,
) -> None:
    clock = ManualClock(datetime.now(UTC))
    floor: Floor = await open_floor(
        clock=clock, wave_max_orders=20, wave_max_age_seconds=60, wave_check_seconds=0.1
    )
    await floor.stock("SKU-RED", 10, "A-01-1")
    order_id = await floor.order([("SKU-RED", 2)])
    queued = await wait_for(floor.queued, what="the order queued")
    queued_at = queued[order_id]

    clock.set(queued_at + timedelta(seconds=59))
    await floor.checks_pass()
    assert await floor.picklist_count() == 0, "released before it waited a minute"

    clock.set(queued_at + timedelta(seconds=60))
    created = (await floor.log.wait(topics.PICKLISTS_CREATED))[0]
    assert [(x["order_id"], x["sku"], x["quantity"]) for x in created["lines"]] == [
        (order_id, "SKU-RED", 2)
    ]
    assert await floor.queued() == {}


async def test_picking_refuses_wrong_skus_and_over_picks_and_packing_waits_for_every_line(
    open_floor,
) -> None:
    # a wave of one, and a builder that polls only every minute: the reservation's
    # NOTIFY is what wakes it
    floor: Floor = await open_floor(wave_max_orders=1, wave_check_seconds=60)
    await floor.stock("SKU-RED", 10, "A-03-2")
    await floor.stock("SKU-BLUE", 5, "A-01-1")
    order_id = await floor.order([("SKU-RED", 2), ("SKU-BLUE", 1)])
    created = (await floor.log.wait(topics.PICKLISTS_CREATED, timeout=15))[0]
    picklist_id = created["picklist_id"]
    [listed] = await floor.picklists()
    blue, red = listed["lines"]
    assert (blue["sku"], blue["line_no"], red["sku"], red["line_no"]) == (
        "SKU-BLUE",
        1,
        "SKU-RED",
        2,
    )

    r = await floor.pack(order_id)
    assert r.status_code == 409, r.text
    assert {m["sku"] for m in r.json()["detail"]["missing"]} == {"SKU-RED", "SKU-BLUE"}

    r = await floor.pick(picklist_id, 2, "SKU-BLUE", 1)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "scanned_sku"]
    assert "wrong SKU" in error["msg"] and "SKU-RED" in error["msg"]

    r = await floor.pick(picklist_id, 2, "SKU-RED", 3)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "quantity"]
    assert "only 2 more" in r.json()["detail"][0]["msg"]

    r = await floor.pick(picklist_id, 2, "SKU-RED", 1)
    assert r.status_code == 200, r.text
    assert (r.json()["picked_quantity"], r.json()["status"]) == (1, "open")
    r = await floor.pick(picklist_id, 2, " SKU-RED ", 1)  # a scanner's stray whitespace
    assert r.status_code == 200, r.text
    assert (r.json()["picked_quantity"], r.json()["status"]) == (2, "picked")
    assert r.json()["order_picked"] is False

    r = await floor.pick(picklist_id, 2, "SKU-RED", 2)  # the full scan again: no change
    assert r.status_code == 200, r.text
    assert (r.json()["picked_quantity"], r.json()["repeated"]) == (2, True)
    r = await floor.pick(picklist_id, 2, "SKU-RED", 1)
    assert r.status_code == 422, r.text

    r = await floor.pack(order_id)
    assert r.status_code == 409, r.text
    assert [m["sku"] for m in r.json()["detail"]["missing"]] == ["SKU-BLUE"]

    r = await floor.pick(picklist_id, 1, "SKU-BLUE", 1)
    assert r.status_code == 200, r.text
    assert r.json()["order_picked"] is True
    assert await floor.on_hand("SKU-RED") == (10, 2)

    r = await floor.pack(order_id, warehouse_id="BER-1")
    assert r.status_code == 200, r.text
    packed = (await floor.log.wait(topics.ORDERS_PACKED, order_id=order_id))[0]
    assert packed["warehouse_id"] == "BER-1"
    assert packed["parcels"] == [PARCEL]
    assert packed["lines"] == [
        {"sku": "SKU-BLUE", "quantity": 1},
        {"sku": "SKU-RED", "quantity": 2},
    ]
    assert packed["ship_from"] == {"country": "DE", "postal_code": "10115"}
    assert await floor.on_hand("SKU-RED") == (8, 0)
    assert await floor.on_hand("SKU-BLUE") == (4, 0)

    r = await floor.pack(order_id)
    assert r.status_code == 409, r.text
    assert "packed already" in r.json()["detail"]
    r = await floor.pick(picklist_id, 1, "SKU-BLUE", 1)
    assert r.status_code == 409, r.text
    # the refused second packing emitted nothing: one orders.packed in the outbox, ever
    emitted = await floor.inventory.pool.fetchval(
        "SELECT count(*) FROM outbox WHERE topic = $1 AND key = $2",
        topics.ORDERS_PACKED,
        order_id,
    )
    assert emitted == 1
    assert await floor.picklists() == []
    [done] = await floor.picklists(status="done")
    assert {o["order_id"]: o["status"] for o in done["orders"]} == {order_id: "packed"}
    assert {x["status"] for x in done["lines"]} == {"packed"}


async def test_bad_requests_are_refused_with_reasons(open_floor) -> None:
    floor: Floor = await open_floor(wave_max_orders=1)
    await floor.stock("SKU-RED", 10, "A-03-2")
    order_id = await floor.order([("SKU-RED", 1)])
    created = (await floor.log.wait(topics.PICKLISTS_CREATED))[0]
    url = f"{floor.url}/picklists/{created['picklist_id']}/lines/1/picked"
    warehouse = bearer(floor.tokens["warehouse"])

    assert (
        await floor.http.post(url, json={"quantity": 1, "scanned_sku": "SKU-RED"})
    ).status_code == 401
    r = await floor.http.post(
        url, json={"quantity": 1, "scanned_sku": "SKU-RED"}, headers=bearer(floor.tokens["shop"])
    )
    assert r.status_code == 403
    r = await floor.http.post(url, json={"quantity": 0}, headers=warehouse)
    assert r.status_code == 422
    assert {tuple(e["loc"]) for e in r.json()["detail"]} == {
        ("body", "quantity"),
        ("body", "scanned_sku"),
    }
    r = await floor.http.post(
        f"{floor.url}/picklists/{created['picklist_id']}/lines/9/picked",
        json={"quantity": 1, "scanned_sku": "SKU-RED"},
        headers=warehouse,
    )
    assert r.status_code == 404
    r = await floor.http.post(
        f"{floor.url}/orders/{order_id}/packed", json={"parcels": []}, headers=warehouse
    )
    assert r.status_code == 422
    r = await floor.http.post(
        f"{floor.url}/orders/{order_id}/packed",
        json={"parcels": [{**PARCEL, "weight_grams": -1}]},
        headers=warehouse,
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "parcels", 0, "weight_grams"]
    r = await floor.pack("shop1:no-such-order")
    assert r.status_code == 404
    r = await floor.http.get(
        f"{floor.url}/picklists", params={"status": "maybe"}, headers=warehouse
    )
    assert r.status_code == 422


async def test_release_unpicked_takes_an_order_off_the_queue_and_its_pick_list(
    open_floor,
) -> None:
    floor: Floor = await open_floor(
        wave_max_orders=2, wave_max_age_seconds=3600, wave_check_seconds=0.1
    )
    runtime = floor.inventory
    for sku, bin in (("SKU-A", "A-01-1"), ("SKU-B", "A-02-1"), ("SKU-C", "A-03-1")):
        await floor.stock(sku, 10, bin)

    async def release(order_id: str) -> bool:
        async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
            return await release_unpicked(uow, order_id)

    # waiting in the queue: simply taken out
    queued_only = await floor.order([("SKU-C", 1)])
    await wait_for(lambda: _has(floor.queued(), queued_only), what="the order queued")
    assert await release(queued_only) is True
    assert await floor.queued() == {}

    # on an open pick list, partly picked: its lines are cancelled, the others stay
    cancelled = await floor.order([("SKU-A", 2)])
    kept = await floor.order([("SKU-B", 1)])
    created = (await floor.log.wait(topics.PICKLISTS_CREATED))[0]
    picklist_id = created["picklist_id"]
    assert (await floor.pick(picklist_id, 1, "SKU-A", 1)).status_code == 200
    assert await release(cancelled) is True
    [listed] = await floor.picklists()
    assert [(x["order_id"], x["status"], x["picked_quantity"]) for x in listed["lines"]] == [
        (cancelled, "cancelled", 1),
        (kept, "open", 0),
    ]
    assert {o["order_id"]: o["status"] for o in listed["orders"]} == {
        cancelled: "cancelled",
        kept: "picking",
    }
    r = await floor.pick(picklist_id, 1, "SKU-A", 1)
    assert r.status_code == 409 and "cancelled" in r.json()["detail"], r.text
    r = await floor.pack(cancelled)
    assert r.status_code == 409, r.text
    assert await release(cancelled) is True  # again: nothing left to take out

    # packed: refused, and nothing changes
    assert (await floor.pick(picklist_id, 2, "SKU-B", 1)).status_code == 200
    assert (await floor.pack(kept)).status_code == 200
    assert await release(kept) is False
    [done] = await floor.picklists(status="done")
    assert [x["status"] for x in done["lines"]] == ["cancelled", "packed"]


async def _has(queued: Any, *order_ids: str) -> bool:
    return set(order_ids) <= set(await queued)


async def test_an_order_split_across_warehouses_is_packed_once_per_warehouse(
    open_floor,
) -> None:
    floor: Floor = await open_floor(wave_max_orders=1)
    r = await floor.http.put(
        f"{floor.url}/warehouses/MUC-1",
        json={"name": "Munich", "country": "DE", "postal_code": "80331"},
        headers=bearer(floor.tokens["admin"]),
    )
    assert r.status_code == 200, r.text
    await floor.stock("SKU-A", 1, "A-01-1", warehouse_id="BER-1")
    await floor.stock("SKU-B", 1, "B-01-1", warehouse_id="MUC-1")
    order_id = await floor.order([("SKU-A", 1), ("SKU-B", 1)])
    await floor.log.wait(topics.PICKLISTS_CREATED, count=2)
    [berlin] = await floor.picklists(warehouse_id="BER-1")
    [munich] = await floor.picklists(warehouse_id="MUC-1")

    r = await floor.pack(order_id)
    assert r.status_code == 422, r.text
    assert "BER-1, MUC-1" in r.json()["detail"][0]["msg"]
    assert (await floor.pick(berlin["picklist_id"], 1, "SKU-A", 1)).status_code == 200
    r = await floor.pack(order_id, warehouse_id="MUC-1")
    assert r.status_code == 409, r.text
    r = await floor.pack(order_id, warehouse_id="BER-1")
    assert r.status_code == 200, r.text
    assert r.json()["order_packed"] is False
    packed = (await floor.log.wait(topics.ORDERS_PACKED, order_id=order_id))[0]
    assert (packed["warehouse_id"], packed["lines"]) == ("BER-1", [{"sku": "SKU-A", "quantity": 1}])

    runtime = floor.inventory
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        assert await release_unpicked(uow, order_id) is False
    [still_open] = await floor.picklists(warehouse_id="MUC-1")
    assert still_open["lines"][0]["status"] == "open"
    # a cancellation that goes ahead although Berlin packed: Munich's line comes off
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        assert await release_unpicked(uow, order_id, also_when_packed=True) is False
    assert await floor.picklists(warehouse_id="MUC-1") == []
    [closed] = await floor.picklists(status="done", warehouse_id="MUC-1")
    assert closed["picklist_id"] == munich["picklist_id"]
    assert closed["lines"][0]["status"] == "cancelled"


async def test_the_page_signs_in_by_cookie_escapes_what_it_shows_and_posts_back(
    open_floor,
) -> None:
    floor: Floor = await open_floor(wave_max_orders=1)
    sku = '<b>MUG&"x</b>'
    await floor.stock(sku, 5, "<i>A-01-1")
    await floor.order([(sku, 1)])
    created = (await floor.log.wait(topics.PICKLISTS_CREATED))[0]
    page = f"{floor.url}/warehouse/BER-1"
    # a client that keeps no cookies: each request says what it carries
    floor.http = httpx.AsyncClient(
        timeout=30, cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    )

    r = await floor.http.get(page)
    assert r.status_code == 401
    assert 'action="/warehouse/BER-1/login"' in r.text and "Traceback" not in r.text
    r = await floor.http.get(page, params={"token": "not-a-token"})
    assert r.status_code == 401 and "not valid" in r.text
    r = await floor.http.get(page, params={"token": floor.tokens["ops"]})
    assert r.status_code == 403

    r = await floor.http.get(page, params={"token": floor.tokens["warehouse"]})
    assert r.status_code == 303 and r.headers["location"] == "/warehouse/BER-1"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/warehouse" in cookie
    session = {"cookie": f"waybill_warehouse={floor.tokens['warehouse']}"}

    for headers in (session, bearer(floor.tokens["warehouse"])):
        r = await floor.http.get(page, headers=headers)
        assert r.status_code == 200, r.text
    assert "&lt;b&gt;MUG&amp;&#34;x&lt;/b&gt;" in r.text and "<b>MUG" not in r.text
    assert "&lt;i&gt;A-01-1" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    r = await floor.http.get(f"{floor.url}/warehouse-assets/warehouse.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    assert "@media print" in r.text

    scan = {
        "picklist_id": created["picklist_id"],
        "line_no": "1",
        "scanned_sku": "<script>",
        "quantity": "1",
    }
    r = await floor.http.post(f"{page}/scan", data=scan, headers=session)
    assert r.status_code == 303 and r.headers["location"] == "/warehouse/BER-1"
    flash = r.cookies["waybill_flash"]
    r = await floor.http.get(
        page, headers={"cookie": f"{session['cookie']}; waybill_flash={flash}"}
    )
    assert 'role="alert"' in r.text and "&#34;&lt;script&gt;&#34;" in r.text
    assert "<script>" not in r.text
    assert 'waybill_flash=""' in r.headers["set-cookie"]  # shown once

    foreign = {**session, "origin": "http://attacker.example"}
    r = await floor.http.post(f"{page}/scan", data=scan, headers=foreign)
    assert r.status_code == 403
    r = await floor.http.post(f"{page}/scan", data=scan)
    assert r.status_code == 401

    r = await floor.http.post(f"{page}/scan", data={**scan, "scanned_sku": sku}, headers=session)
    assert r.status_code == 303
    [listed] = await floor.picklists()
    assert listed["lines"][0]["status"] == "picked"

    r = await floor.http.post(
        f"{page}/pack",
        data={
            "order_id": listed["lines"][0]["order_id"],
            "weight_grams": "",
            "length_mm": "1",
            "width_mm": "1",
            "height_mm": "1",
        },
        headers=session,
    )
    assert r.status_code == 303
    assert "parcels=1" in r.headers["location"] and "#pack-" in r.headers["location"]
    assert await floor.picklists() != []  # not packed: the weight was missing

    r = await floor.http.get(f"{floor.url}/warehouse/NOPE", headers=session)
    assert r.status_code == 404
    r = await floor.http.post(f"{page}/login", data={"token": floor.tokens["warehouse"]})
    assert r.status_code == 303 and "waybill_warehouse=" in r.headers["set-cookie"]
    r = await floor.http.post(f"{page}/login", data={"token": floor.tokens["admin"]})
    assert r.status_code == 403
    await floor.http.aclose()
