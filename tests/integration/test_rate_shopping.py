"""Rate shopping on the real system: cheapest that meets deliver_by, else fastest at risk."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import httpx
import pytest

from services.shipping.domain.rating import estimated_delivery
from shared import topics
from shared.carriers import Rate
from tests.conftest import MakeSystem
from tests.factories import order_placed
from tests.integration.test_reservation import setup_stock
from tests.support import bearer

pytestmark = pytest.mark.integration


async def quotes(http: httpx.AsyncClient, sandbox: str, packed: dict, ship_to: dict) -> list[Rate]:
    r = await http.post(
        f"{sandbox}/v1/rates",
        json={
            "ship_from": packed["ship_from"],
            "ship_to": {"country": ship_to["country"], "postal_code": ship_to["postal_code"]},
            "parcels": packed["parcels"],
        },
    )
    assert r.status_code == 200, r.text
    return [
        Rate(q["carrier"], q["service"], Decimal(q["price"]), q["currency"], q["transit_days"])
        for q in r.json()["rates"]
    ]


async def test_cheapest_service_meeting_the_promise_else_the_fastest_at_risk(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(autopick=True)
    await setup_stock(system, [("BER-1", "DE", "10115")], [("BER-1", "RATE", 4)])
    log = await event_log_factory(
        system.config.kafka,
        [topics.ORDERS_ACCEPTED, topics.ORDERS_PACKED, topics.SHIPMENTS_LABEL_CREATED],
    )
    shop = await publisher_factory(system.config.kafka)
    async with httpx.AsyncClient(timeout=10) as http:
        for shop_id, days in (("hurry", 1), ("soon", 2)):
            r = await http.put(
                f"{system.urls['orders']}/shops/{shop_id}/promise",
                json={"standard_business_days": days},
                headers=bearer(system.config.tokens["admin"]),
            )
            assert r.status_code == 200
        near = order_placed(lines=[("RATE", 1)], postal_code="10117")
        far = order_placed(shop_id="hurry", lines=[("RATE", 1)], country="US", postal_code="10001")
        soon = order_placed(shop_id="soon", lines=[("RATE", 1)], postal_code="80469")
        for order in (near, far, soon):
            await shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])

        for order, expect_risk in ((near, False), (far, True), (soon, False)):
            oid = order["order_id"]
            deliver_by = datetime.fromisoformat(
                (await log.wait(topics.ORDERS_ACCEPTED, order_id=oid))[0]["promised"]["deliver_by"]
            )
            packed = (await log.wait(topics.ORDERS_PACKED, order_id=oid))[0]
            label = (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=oid))[0]
            ship_at = datetime.fromisoformat(label["occurred_at"])
            rates = await quotes(http, system.urls["sandbox"], packed, order["ship_to"])
            chosen = next(
                r for r in rates if (r.carrier, r.service) == (label["carrier"], label["service"])
            )
            meeting = [r for r in rates if estimated_delivery(r, ship_at) <= deliver_by]
            assert label["at_risk"] is expect_risk
            if expect_risk:
                assert meeting == []
                assert chosen.transit_days == min(r.transit_days for r in rates)
            else:
                assert chosen in meeting
                assert chosen.price == min(r.price for r in meeting)
                if order is soon:
                    # the promise ruled out the cheapest service: the choice was not trivial
                    assert min(rates, key=lambda r: r.price) not in meeting
