"""The delivery promise on the real system, judged on an injectable clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from shared import topics
from shared.clock import ManualClock
from tests.conftest import MakeSystem
from tests.factories import order_placed
from tests.integration.test_reservation import setup_stock
from tests.support import wait_for

pytestmark = pytest.mark.integration


async def test_late_and_missing_deliveries_each_breach_exactly_once(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    clock = ManualClock(datetime.now(UTC))
    system = await make_system(
        autopick=True, clock=clock, service_overrides={"sla_check_seconds": 0.1}
    )
    await setup_stock(system, [("BER-1", "DE", "10115")], [("BER-1", "SLA", 5)])
    log = await event_log_factory(
        system.config.kafka,
        [
            topics.ORDERS_ACCEPTED,
            topics.SHIPMENTS_LABEL_CREATED,
            topics.SHIPMENTS_DELIVERED,
            topics.SLA_BREACHED,
        ],
    )
    shop = await publisher_factory(system.config.kafka)
    late, missing = order_placed(lines=[("SLA", 1)]), order_placed(lines=[("SLA", 1)])
    for order in (late, missing):
        await shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])
    labels = {
        o["order_id"]: (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=o["order_id"]))[0]
        for o in (late, missing)
    }
    deliver_by = {
        o["order_id"]: datetime.fromisoformat(
            (await log.wait(topics.ORDERS_ACCEPTED, order_id=o["order_id"]))[0]["promised"][
                "deliver_by"
            ]
        )
        for o in (late, missing)
    }

    # delivered a day after the promise, and the carrier repeats the delivery scan
    delivered_at = deliver_by[late["order_id"]] + timedelta(days=1)
    tracking = labels[late["order_id"]]["tracking_number"]
    async with httpx.AsyncClient(timeout=10) as http:
        for status in ("picked_up", "delivered", "delivered"):
            at = delivered_at - timedelta(days=2) if status == "picked_up" else delivered_at
            r = await http.post(
                f"{system.urls['sandbox']}/sandbox/trackers/{tracking}/events",
                json={"status": status, "at": at.isoformat()},
            )
            assert r.status_code == 202
    await log.wait(topics.SHIPMENTS_DELIVERED, order_id=late["order_id"])
    breach = (await log.wait(topics.SLA_BREACHED, order_id=late["order_id"], stage="delivery"))[0]
    assert breach["stage"] == "delivery"
    assert datetime.fromisoformat(breach["observed_at"]) == delivered_at
    assert datetime.fromisoformat(breach["deadline"]) == deliver_by[late["order_id"]]

    # nothing delivers the other order: no breach until the clock passes its promise
    shipping = system.runtimes["shipping"]
    checks = shipping.extras.get("sla_checks", 0)
    await wait_for(lambda: shipping.extras.get("sla_checks", 0) > checks + 3, what="checks")
    # (orders' SLA engine may breach other stages of these orders: only delivery counts here)
    assert log.about(topics.SLA_BREACHED, order_id=missing["order_id"], stage="delivery") == []
    clock.set(deliver_by[missing["order_id"]] + timedelta(minutes=1))
    await log.wait(topics.SLA_BREACHED, order_id=missing["order_id"], stage="delivery")
    checks = shipping.extras["sla_checks"]
    await wait_for(lambda: shipping.extras["sla_checks"] > checks + 10, what="many more checks")
    for order in (late, missing):
        # one breach, however often it is seen: the overdue orders are re-driven, which
        # publishes copies of their events with the same event_id
        delivery = log.about(
            topics.SLA_BREACHED, order_id=order["order_id"], stage="delivery", distinct=True
        )
        assert len(delivery) == 1
