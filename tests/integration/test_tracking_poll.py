"""Polling finds what no webhook announced; what both bring counts once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from shared import topics
from tests.conftest import MakeSystem
from tests.factories import order_placed
from tests.integration.test_reservation import setup_stock
from tests.support import wait_for

pytestmark = pytest.mark.integration


async def test_polling_delivers_a_status_no_webhook_announced(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(
        autopick=True,
        service_overrides={"poll_after_seconds": 0, "poll_interval_seconds": 0.1},
    )
    await setup_stock(system, [("BER-1", "DE", "10115")], [("BER-1", "POLL", 2)])
    log = await event_log_factory(
        system.config.kafka,
        [topics.SHIPMENTS_LABEL_CREATED, topics.SHIPMENTS_SHIPPED, topics.SHIPMENTS_DELIVERED],
    )
    shop = await publisher_factory(system.config.kafka)
    order = order_placed(lines=[("POLL", 1)])
    await shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])
    label = (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=order["order_id"]))[0]
    sandbox = system.urls["sandbox"]
    tracker = f"{sandbox}/sandbox/trackers/{label['tracking_number']}/events"
    picked_up = datetime.now(UTC) - timedelta(hours=5)
    delivered = datetime.now(UTC) - timedelta(hours=1)
    async with httpx.AsyncClient(timeout=10) as http:
        # pushed by webhook, and seen again by every poll afterwards
        r = await http.post(tracker, json={"status": "picked_up", "at": picked_up.isoformat()})
        assert r.status_code == 202
        await log.wait(topics.SHIPMENTS_SHIPPED, order_id=order["order_id"])
        # this one the carrier never pushes: only polling can find it
        r = await http.post(
            tracker, json={"status": "delivered", "at": delivered.isoformat(), "push": False}
        )
        assert r.status_code == 202
        webhooks = (await http.get(f"{sandbox}/sandbox/webhooks")).json()["attempts"]
        assert {a["tracking_status"] for a in webhooks} == {"picked_up"}

    event = (await log.wait(topics.SHIPMENTS_DELIVERED, order_id=order["order_id"]))[0]
    assert event["source"] == "poll"
    assert datetime.fromisoformat(event["delivered_at"]) == delivered
    shipping = system.runtimes["shipping"]
    rounds = shipping.extras.get("poll_rounds", 0)
    # the poller keeps running after the delivery is known: nothing is recorded twice
    await wait_for(
        lambda: shipping.extras.get("poll_rounds", 0) > rounds + 5, what="more poll rounds"
    )
    history = await shipping.pool.fetch("SELECT status, source FROM tracking_events")
    # each carrier event once, whoever brought it first (webhook and poll share its id);
    # pre_transit is the label's first event, which the carrier never pushes
    assert sorted(r["status"] for r in history) == ["delivered", "picked_up", "pre_transit"]
    sources = {r["status"]: r["source"] for r in history}
    assert sources["delivered"] == "poll" and sources["pre_transit"] == "poll"
    assert len(log.about(topics.SHIPMENTS_SHIPPED, order_id=order["order_id"])) == 1
