"""Inventory's side of returns at its edges: a return without a warehouse, refused receipts
that leave no trace, returns.received before returns.approved or without a warehouse, and
a receipt for a warehouse inventory does not know (dead-lettered, replayed once fixed).

Inventory runs alone; the test publishes what returns would."""

from __future__ import annotations

import base64
import json
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from uuid import uuid4

import httpx
import pytest

from shared import topics
from shared.events import ReturnApproved, ReturnLabel, ReturnLine, ReturnReceived
from shared.topics import dead_letter_topic
from tests.conftest import MakeSystem
from tests.factories import new_id
from tests.integration.test_reservation import setup_stock
from tests.support import bearer, wait_for
from waybill.dlq import replay_dead_letters
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration


def approved(
    warehouse_id: str | None, lines: list[tuple[str, int]], *, order_id: str | None = None
) -> dict[str, Any]:
    return ReturnApproved(
        return_id=new_id("ret-"),
        order_id=order_id or new_id(),
        rma="RMA-" + uuid4().hex[:10].upper(),
        return_label=ReturnLabel(carrier="swiftpost", tracking_number="SP1", label_url="x"),
        lines=[ReturnLine(sku=sku, quantity=q) for sku, q in lines],
        warehouse_id=warehouse_id,
    ).model_dump(mode="json")


def received(
    ret: dict[str, Any], lines: list[tuple[str, int, str]], *, warehouse_id: Any = "same"
) -> dict[str, Any]:
    return ReturnReceived.model_validate(
        {
            "return_id": ret["return_id"],
            "order_id": ret["order_id"],
            "warehouse_id": ret["warehouse_id"] if warehouse_id == "same" else warehouse_id,
            "lines": [{"sku": s, "quantity": q, "condition": c} for s, q, c in lines],
        }
    ).model_dump(mode="json")


def flash_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 303, response.text
    flash: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(response.cookies["waybill_flash"].encode())
    )
    return flash


async def expected(system: LocalSystem, warehouse_id: str | None = None) -> list[dict[str, Any]]:
    params = {"warehouse_id": warehouse_id} if warehouse_id else {}
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            f"{system.urls['inventory']}/returns/expected",
            params=params,
            headers=bearer(system.config.tokens["ops"]),
        )
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["returns"]
    return found


async def stock(system: LocalSystem, sku: str) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            f"{system.urls['inventory']}/stock/{sku}", headers=bearer(system.config.tokens["ops"])
        )
    assert r.status_code == 200, r.text
    return {w["warehouse_id"]: w for w in r.json()["warehouses"]}


async def scans_in_outbox(system: LocalSystem, return_id: str) -> int:
    """warehouse.return-scanned events inventory committed for this return."""
    async with system.runtimes["inventory"].pool.acquire() as conn:
        count: int = await conn.fetchval(
            """
            SELECT count(*) FROM outbox
            WHERE topic LIKE '%' || $1
              AND convert_from(payload, 'UTF8')::jsonb ->> 'return_id' = $2
            """,
            topics.WAREHOUSE_RETURN_SCANNED,
            return_id,
        )
    return count


async def test_a_return_without_warehouse_is_on_no_page_and_refused_receipts_record_nothing(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(services=["inventory"], autopick=False)
    await setup_stock(
        system, [("BER-1", "DE", "10115"), ("MUC-1", "DE", "80331")], [("BER-1", "RET-C", 3)]
    )
    log = await event_log_factory(system.config.kafka, [topics.WAREHOUSE_RETURN_SCANNED])
    shop = await publisher_factory(system.config.kafka)
    nowhere = approved(None, [("RET-C", 1)])
    berlin = approved("BER-1", [("RET-C", 2)])
    for ret in (nowhere, berlin):
        await shop.send(topics.RETURNS_APPROVED, ret, key=ret["order_id"])

    async def both_stored() -> list[dict[str, Any]] | None:
        found = await expected(system)
        return found if len(found) == 2 else None

    everything = {e["return_id"]: e for e in await wait_for(both_stored, what="both returns")}
    assert everything[nowhere["return_id"]]["warehouse_id"] is None
    assert everything[nowhere["return_id"]]["rma"] == nowhere["rma"]
    assert everything[berlin["return_id"]]["lines"] == [{"sku": "RET-C", "quantity": 2}]
    assert [e["return_id"] for e in await expected(system, "BER-1")] == [berlin["return_id"]]
    assert await expected(system, "MUC-1") == []

    warehouse = system.config.tokens["warehouse"]
    session = {"cookie": f"waybill_warehouse={warehouse}"}
    base = f"{system.urls['inventory']}/warehouse"
    async with httpx.AsyncClient(
        timeout=30, cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    ) as http:
        berlin_page = (await http.get(f"{base}/BER-1", headers=session)).text
        munich_page = (await http.get(f"{base}/MUC-1", headers=session)).text
        assert berlin["rma"] in berlin_page and nowhere["rma"] not in berlin_page
        assert berlin["rma"] not in munich_page and nowhere["rma"] not in munich_page
        assert "No returns on their way" in munich_page
        # the JSON list needs the warehouse or ops role
        r = await http.get(
            f"{system.urls['inventory']}/returns/expected",
            headers=bearer(system.config.tokens["shop"]),
        )
        assert r.status_code == 403

        form = f"{base}/BER-1/returns/{berlin['return_id']}/receive"
        refused = [
            ({"sku": "RET-C", "sellable": "2", "damaged": "1"}, "announced 2"),
            ({"sku": "RET-C", "sellable": "3", "damaged": "0"}, "announced 2"),
            ({"sku": "RET-C", "sellable": "0", "damaged": "0"}, "at least one item"),
            ({"sku": "RET-C", "sellable": "-1", "damaged": "2"}, "negative"),
            ({"sku": "RET-C", "sellable": "two", "damaged": "0"}, "not a whole number"),
            ({"sku": "RET-X", "sellable": "1", "damaged": "0"}, "not part of"),
        ]
        for data, why in refused:
            flash = flash_of(await http.post(form, data=data, headers=session))
            assert flash["kind"] == "error" and why in flash["text"], (data, flash)
        # another warehouse's page cannot receive it, nor can a page receive the return
        # that belongs to no warehouse
        other = f"{base}/MUC-1/returns/{berlin['return_id']}/receive"
        flash = flash_of(
            await http.post(
                other, data={"sku": "RET-C", "sellable": "2", "damaged": "0"}, headers=session
            )
        )
        assert flash["kind"] == "error" and "No return" in flash["text"]
        stray = f"{base}/BER-1/returns/{nowhere['return_id']}/receive"
        flash = flash_of(
            await http.post(
                stray, data={"sku": "RET-C", "sellable": "1", "damaged": "0"}, headers=session
            )
        )
        assert flash["kind"] == "error"
        # no role, no receipt
        r = await http.post(form, data={"sku": "RET-C", "sellable": "2", "damaged": "0"})
        assert r.status_code == 401

        # nothing was recorded: still expected, nothing in the outbox
        assert await scans_in_outbox(system, berlin["return_id"]) == 0
        assert await scans_in_outbox(system, nowhere["return_id"]) == 0
        assert [e["return_id"] for e in await expected(system, "BER-1")] == [berlin["return_id"]]

        good = {"sku": "RET-C", "sellable": "2", "damaged": "0"}  # the form's defaults
        assert flash_of(await http.post(form, data=good, headers=session))["kind"] == "ok"
        again = flash_of(await http.post(form, data=good, headers=session))
        assert again["kind"] == "error" and "received already" in again["text"]

    (scanned,) = await log.wait(topics.WAREHOUSE_RETURN_SCANNED, return_id=berlin["return_id"])
    assert scanned["warehouse_id"] == "BER-1"
    assert scanned["lines"] == [{"sku": "RET-C", "quantity": 2, "condition": "sellable"}]
    assert await scans_in_outbox(system, berlin["return_id"]) == 1
    # scanned, not yet received: off the list; stock only moves on returns.received
    assert await expected(system, "BER-1") == []
    assert (await stock(system, "RET-C"))["BER-1"]["on_hand"] == 3


async def test_returns_received_early_without_warehouse_or_for_an_unknown_one(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(services=["inventory"], autopick=False)
    kafka = system.config.kafka
    await setup_stock(
        system,
        [("BER-1", "DE", "10115"), ("MUC-1", "DE", "80331")],
        [("BER-1", "RET-D", 1), ("MUC-1", "RET-D", 1)],
    )
    log = await event_log_factory(
        kafka, [topics.STOCK_RESTOCKED, dead_letter_topic(topics.RETURNS_RECEIVED)]
    )
    shop = await publisher_factory(kafka)

    # returns.received overtakes returns.approved (another topic): the approval arriving
    # afterwards must not put the parcel on the page again
    early = approved("BER-1", [("RET-D", 1)])
    await shop.send(
        topics.RETURNS_RECEIVED, received(early, [("RET-D", 1, "sellable")]), key=early["order_id"]
    )
    await log.wait(topics.STOCK_RESTOCKED, return_id=early["return_id"])
    # a second return of the same order after it, on the same partition: once that is
    # listed, the early approval has been handled
    later = approved("BER-1", [("RET-D", 2)], order_id=early["order_id"])
    for ret in (early, later):
        await shop.send(topics.RETURNS_APPROVED, ret, key=ret["order_id"])

    async def later_listed() -> list[dict[str, Any]] | None:
        found = await expected(system, "BER-1")
        return found if any(e["return_id"] == later["return_id"] for e in found) else None

    listed = await wait_for(later_listed, what="the later return on the list")
    assert [e["return_id"] for e in listed] == [later["return_id"]]

    # returns.received without a warehouse: the approval's warehouse is used
    no_warehouse = received(
        later, [("RET-D", 1, "sellable"), ("RET-D", 1, "damaged")], warehouse_id=None
    )
    await shop.send(topics.RETURNS_RECEIVED, no_warehouse, key=later["order_id"])
    (restocked,) = await log.wait(topics.STOCK_RESTOCKED, return_id=later["return_id"])
    assert (restocked["warehouse_id"], restocked["sku"], restocked["quantity"]) == (
        "BER-1",
        "RET-D",
        1,
    )
    assert restocked["order_id"] == later["order_id"]
    assert await expected(system) == []
    after = await stock(system, "RET-D")
    assert (after["BER-1"]["on_hand"], after["BER-1"]["written_off"]) == (3, 1)
    assert (after["MUC-1"]["on_hand"], after["MUC-1"]["written_off"]) == (1, 0)

    # a warehouse inventory does not know: dead-lettered, nothing applied
    ghost = approved("GHOST-1", [("RET-D", 2)])
    await shop.send(topics.RETURNS_APPROVED, ghost, key=ghost["order_id"])
    ghost_back = received(ghost, [("RET-D", 1, "sellable"), ("RET-D", 1, "damaged")])
    await shop.send(topics.RETURNS_RECEIVED, ghost_back, key=ghost["order_id"])
    (dead,) = await log.wait(dead_letter_topic(topics.RETURNS_RECEIVED))
    assert "unknown warehouse 'GHOST-1'" in dead["error"] and dead["attempts"] == 1
    assert log.about(topics.STOCK_RESTOCKED, return_id=ghost["return_id"]) == []
    assert await stock(system, "RET-D") == after
    assert [e["return_id"] for e in await expected(system)] == [ghost["return_id"]]

    # ops register the warehouse and replay the dead letter: restocked once, like any other
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.put(
            f"{system.urls['inventory']}/warehouses/GHOST-1",
            json={"name": "Ghost", "country": "DE", "postal_code": "04109"},
            headers=bearer(system.config.tokens["admin"]),
        )
        assert r.status_code == 200, r.text
    replay = await replay_dead_letters(
        topic=topics.RETURNS_RECEIVED, event_id=ghost_back["event_id"], kafka=kafka
    )
    assert replay == 0
    (restocked,) = await log.wait(topics.STOCK_RESTOCKED, return_id=ghost["return_id"])
    assert (restocked["warehouse_id"], restocked["quantity"]) == ("GHOST-1", 1)
    final = await stock(system, "RET-D")
    assert (final["GHOST-1"]["on_hand"], final["GHOST-1"]["written_off"]) == (1, 1)
    assert final["BER-1"] == after["BER-1"] and final["MUC-1"] == after["MUC-1"]
    assert await expected(system) == []
