"""Inventory's side of returns: expected returns on the warehouse page, receiving them there,
and restocking what returns says came back (damaged goods written off).

Inventory runs alone; the test publishes what orders and returns would."""

from __future__ import annotations

import base64
import json
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from uuid import uuid4

import httpx
import pytest

from shared import topics
from shared.events import ReturnApproved, ReturnLabel, ReturnLine
from tests.conftest import MakeSystem
from tests.factories import new_id, order_accepted
from tests.integration.test_reservation import setup_stock
from tests.support import bearer, wait_for
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration


def approved(warehouse_id: str, lines: list[tuple[str, int]]) -> dict[str, Any]:
    return_id = new_id("ret-")
    return ReturnApproved(
        return_id=return_id,
        order_id=new_id(),
        rma="RMA-" + uuid4().hex[:10].upper(),
        return_label=ReturnLabel(carrier="swiftpost", tracking_number="SP1", label_url="x"),
        lines=[ReturnLine(sku=sku, quantity=q) for sku, q in lines],
        warehouse_id=warehouse_id,
    ).model_dump(mode="json")


def received(ret: dict[str, Any], lines: list[tuple[str, int, str]]) -> dict[str, Any]:
    return {
        "event_id": str(uuid4()),
        "return_id": ret["return_id"],
        "order_id": ret["order_id"],
        "warehouse_id": ret["warehouse_id"],
        "lines": [{"sku": s, "quantity": q, "condition": c} for s, q, c in lines],
    }


async def stock(system: LocalSystem, sku: str) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            f"{system.urls['inventory']}/stock/{sku}", headers=bearer(system.config.tokens["ops"])
        )
    assert r.status_code == 200, r.text
    return {w["warehouse_id"]: w for w in r.json()["warehouses"]}


def flash_of(response: httpx.Response) -> dict[str, Any]:
    raw = response.cookies["waybill_flash"]
    flash: dict[str, Any] = json.loads(base64.urlsafe_b64decode(raw.encode()))
    return flash


async def test_expected_returns_are_received_on_the_page_and_restocked(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(services=["inventory"], autopick=False)
    await setup_stock(
        system,
        [("BER-1", "DE", "10115"), ("MUC-1", "DE", "80331")],
        [("BER-1", "RET-A", 1), ("MUC-1", "RET-A", 4)],
    )
    log = await event_log_factory(
        system.config.kafka,
        [
            topics.WAREHOUSE_RETURN_SCANNED,
            topics.STOCK_RESTOCKED,
            topics.STOCK_BACKORDERED,
            topics.STOCK_RESERVED,
        ],
    )
    shop = await publisher_factory(system.config.kafka)
    berlin = approved("BER-1", [("RET-A", 2), ("RET-B", 1)])
    munich = approved("MUC-1", [("RET-A", 1)])
    for ret in (berlin, munich):
        await shop.send(topics.RETURNS_APPROVED, ret, key=ret["order_id"])

    warehouse = system.config.tokens["warehouse"]
    page = f"{system.urls['inventory']}/warehouse/BER-1"
    session = {"cookie": f"waybill_warehouse={warehouse}"}
    async with httpx.AsyncClient(
        timeout=30, cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    ) as http:

        async def listed() -> str | None:
            r = await http.get(page, headers=session)
            return r.text if berlin["rma"] in r.text else None

        html = await wait_for(listed, what="the return on the Berlin page")
        assert munich["rma"] not in html and "Returns expected" in html
        r = await http.get(
            f"{system.urls['inventory']}/returns/expected",
            params={"warehouse_id": "BER-1"},
            headers=bearer(warehouse),
        )
        assert [e["rma"] for e in r.json()["returns"]] == [berlin["rma"]]

        form = f"{page}/returns/{berlin['return_id']}/receive"
        too_many = {"sku": ["RET-A", "RET-B"], "sellable": ["2", "1"], "damaged": ["1", "0"]}
        r = await http.post(form, data=too_many, headers=session)
        assert r.status_code == 303 and flash_of(r)["kind"] == "error"
        assert "announced 2" in flash_of(r)["text"]
        nothing = {"sku": ["RET-A", "RET-B"], "sellable": ["0", "0"], "damaged": ["0", "0"]}
        r = await http.post(form, data=nothing, headers=session)
        assert flash_of(r)["kind"] == "error"
        foreign = {**session, "origin": "http://attacker.example"}
        assert (await http.post(form, data=too_many, headers=foreign)).status_code == 403

        good = {"sku": ["RET-A", "RET-B"], "sellable": ["1", "0"], "damaged": ["1", "1"]}
        r = await http.post(form, data=good, headers=session)
        assert flash_of(r)["kind"] == "ok", flash_of(r)
        again = await http.post(form, data=good, headers=session)
        assert flash_of(again)["kind"] == "error" and "already" in flash_of(again)["text"]
        assert berlin["rma"] not in (await http.get(page, headers=session)).text

    (scanned,) = await log.wait(topics.WAREHOUSE_RETURN_SCANNED, return_id=berlin["return_id"])
    assert scanned["warehouse_id"] == "BER-1"
    assert sorted((x["sku"], x["quantity"], x["condition"]) for x in scanned["lines"]) == [
        ("RET-A", 1, "damaged"),
        ("RET-A", 1, "sellable"),
        ("RET-B", 1, "damaged"),
    ]

    # an order waits for RET-A beyond what is on hand anywhere
    waiting = order_accepted(lines=[("RET-A", 6)])
    await shop.send(topics.ORDERS_ACCEPTED, waiting, key=waiting["order_id"])
    await log.wait(topics.STOCK_BACKORDERED, order_id=waiting["order_id"])

    # returns confirms what came back: one sellable RET-A in Berlin
    confirmation = received(
        berlin, [("RET-A", 1, "sellable"), ("RET-A", 1, "damaged"), ("RET-B", 1, "damaged")]
    )
    await shop.send(topics.RETURNS_RECEIVED, confirmation, key=berlin["order_id"])
    (restocked,) = await log.wait(topics.STOCK_RESTOCKED, return_id=berlin["return_id"])
    assert (restocked["warehouse_id"], restocked["sku"], restocked["quantity"]) == (
        "BER-1",
        "RET-A",
        1,
    )
    await log.wait(topics.STOCK_RESERVED, order_id=waiting["order_id"])  # 2 + 4 = 6 now
    after = await stock(system, "RET-A")
    assert after["BER-1"]["on_hand"] == 2 and after["MUC-1"]["on_hand"] == 4
    assert after["BER-1"]["written_off"] == 1 and after["MUC-1"]["written_off"] == 0
    assert (await stock(system, "RET-B"))["BER-1"] == {
        "warehouse_id": "BER-1",
        "on_hand": 0,
        "reserved": 0,
        "available": 0,
        "written_off": 1,
        "bins": [],
    }

    # the same confirmation again, as a new event: nothing more goes on the shelf
    repeat = {**confirmation, "event_id": str(uuid4())}
    await shop.send(topics.RETURNS_RECEIVED, repeat, key=berlin["order_id"])
    munich_back = received(munich, [("RET-A", 1, "sellable")])
    await shop.send(topics.RETURNS_RECEIVED, munich_back, key=munich["order_id"])
    await log.wait(topics.STOCK_RESTOCKED, return_id=munich["return_id"])
    await wait_for(lambda: _inbox_has(system, repeat["event_id"]), what="the repeat handled")
    assert len(log.about(topics.STOCK_RESTOCKED, return_id=berlin["return_id"])) == 1
    final = await stock(system, "RET-A")
    assert final["BER-1"]["on_hand"] == 2 and final["BER-1"]["written_off"] == 1
    assert final["MUC-1"]["on_hand"] == 5


async def _inbox_has(system: LocalSystem, event_id: str) -> bool:
    async with system.runtimes["inventory"].pool.acquire() as conn:
        handled = await conn.fetchval(
            "SELECT count(*) FROM inbox WHERE event_id = $1::uuid", event_id
        )
    return bool(handled)
