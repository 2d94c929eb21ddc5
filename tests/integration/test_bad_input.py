"""Bad input on the real broker ends where the contract says, and loses nothing."""

from __future__ import annotations

import base64

import httpx
import pytest

from shared import topics
from shared.topics import dead_letter_topic
from tests.conftest import MakeSystem
from tests.factories import order_placed
from tests.support import bearer

pytestmark = pytest.mark.integration


async def test_orders_placed_bad_records_are_rejected_or_dead_lettered_and_the_partition_moves_on(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(services=["orders"], with_sandbox=False)
    kafka = system.config.kafka
    log = await event_log_factory(
        kafka,
        [topics.ORDERS_ACCEPTED, topics.ORDERS_REJECTED, dead_letter_topic(topics.ORDERS_PLACED)],
    )
    shop = await publisher_factory(kafka)
    key = "shop1:same-partition"

    await shop.send(topics.ORDERS_PLACED, b"{this is not json", key=key)
    no_id = order_placed()
    del no_id["order_id"]
    await shop.send(topics.ORDERS_PLACED, no_id, key=key)
    invalid = order_placed(currency="EURO", lines=[("SKU-1", 0)])
    invalid["placed_at"] = "2026-11-22T10:00:00"  # no offset: invalid
    invalid["lines"][0]["unit_price"] = 19.99  # a float, not a decimal string
    invalid["ship_to"]["country"] = "XX"
    await shop.send(topics.ORDERS_PLACED, invalid, key=key)
    good = order_placed()
    await shop.send(topics.ORDERS_PLACED, good, key=key)

    await log.wait(topics.ORDERS_ACCEPTED, order_id=good["order_id"])

    rejected = (await log.wait(topics.ORDERS_REJECTED, order_id=invalid["order_id"]))[0]
    assert rejected["reason"] == "invalid"
    fields = {r["field"] for r in rejected["reasons"]}
    assert {
        "currency",
        "placed_at",
        "lines.0.quantity",
        "lines.0.unit_price",
        "ship_to.country",
    } <= fields
    assert all(r["message"] for r in rejected["reasons"])

    dead = await log.wait(dead_letter_topic(topics.ORDERS_PLACED), count=2)
    by_value = {base64.b64decode(d["value_base64"]): d for d in dead}
    assert by_value[b"{this is not json"]["error"].startswith("not JSON")
    assert any("order_id" in d["error"] for d in dead)
    assert all(d["attempts"] == 1 and d["key"] == key for d in dead)

    async with httpx.AsyncClient(timeout=10) as http:
        view = await http.get(
            f"{system.urls['orders']}/orders/{invalid['order_id']}",
            headers=bearer(system.config.tokens["shop"]),
        )
        assert view.status_code == 200
        assert view.json()["status"] == "rejected"


async def test_http_intake_refuses_a_bad_body_with_field_errors_and_a_wrong_token(
    make_system: MakeSystem,
) -> None:
    system = await make_system(services=["orders"], with_sandbox=False)
    url = f"{system.urls['orders']}/orders"
    tokens = system.config.tokens
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.post(url, json=order_placed())).status_code == 401
        assert (
            await http.post(url, json=order_placed(), headers=bearer("wrong"))
        ).status_code == 401
        assert (
            await http.post(url, json=order_placed(), headers=bearer(tokens["ops"]))
        ).status_code == 403
        bad = order_placed(currency="EURO")
        response = await http.post(url, json=bad, headers=bearer(tokens["shop"]))
        assert response.status_code == 422
        assert any(err["loc"][-1] == "currency" for err in response.json()["detail"])
        good = order_placed()
        response = await http.post(url, json=good, headers=bearer(tokens["shop"]))
        assert response.status_code == 202
        assert response.json()["outcome"] == "accepted"
        again = await http.post(url, json=good, headers=bearer(tokens["shop"]))
        assert again.json()["outcome"] == "duplicate"
