"""Shipping's carrier webhook: signature over the raw body, freshness, replay, order."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import httpx
import pytest

from shared import topics
from shared.signing import SIGNATURE_HEADER, sign_webhook
from tests.conftest import MakeSystem
from tests.factories import order_placed
from tests.integration.test_reservation import setup_stock

pytestmark = pytest.mark.integration


def push(status: str, tracking_number: str, at: datetime, event_id: str | None = None) -> bytes:
    return json.dumps(
        {
            "event_id": event_id or str(uuid4()),
            "carrier": "any",
            "tracking_number": tracking_number,
            "status": status,
            "occurred_at": at.isoformat(),
        }
    ).encode()


async def test_webhooks_are_verified_applied_once_and_never_move_status_back(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(autopick=True)
    await setup_stock(system, [("BER-1", "DE", "10115")], [("BER-1", "HOOK", 2)])
    log = await event_log_factory(
        system.config.kafka,
        [topics.SHIPMENTS_LABEL_CREATED, topics.SHIPMENTS_SHIPPED, topics.SHIPMENTS_DELIVERED],
    )
    shop = await publisher_factory(system.config.kafka)
    order = order_placed(lines=[("HOOK", 1)])
    oid = order["order_id"]
    await shop.send(topics.ORDERS_PLACED, order, key=oid)
    label = (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=oid))[0]
    tn = label["tracking_number"]
    url = f"{system.urls['shipping']}/webhooks/carriers/{label['carrier']}"
    secret = system.config.webhook_secret
    now = datetime.now(UTC)

    async def send(body: bytes, *, secret: str = secret, at: int | None = None) -> int:
        stamp = at if at is not None else int(time.time())
        header = sign_webhook(secret, body, timestamp=stamp)
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(
                url,
                content=body,
                headers={SIGNATURE_HEADER: header, "content-type": "application/json"},
            )
        return r.status_code

    good = push("in_transit", tn, now - timedelta(hours=3))
    assert await send(good, secret="not-the-secret-at-all") == 401
    assert await send(good, at=int(time.time()) - 301) == 401  # older than 5 minutes
    tampered = good.replace(b"in_transit", b"delivered_")
    header = sign_webhook(secret, good, timestamp=int(time.time()))
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(url, content=tampered, headers={SIGNATURE_HEADER: header})
        assert r.status_code == 401  # the signature covers the raw body
        assert (await http.post(url, content=good)).status_code == 401  # no signature
    assert await send(good) == 202
    assert await send(good) == 202  # a replay is accepted and changes nothing

    delivered_at = now - timedelta(hours=1)
    assert await send(push("delivered", tn, delivered_at)) == 202
    late_scan = push("in_transit", tn, now - timedelta(minutes=30))
    assert await send(late_scan) == 202  # out of order: history only

    delivered = await log.wait(topics.SHIPMENTS_DELIVERED, order_id=oid)
    assert datetime.fromisoformat(delivered[0]["delivered_at"]) == delivered_at
    shipping = system.runtimes["shipping"]
    status = await shipping.pool.fetchval(
        "SELECT tracking_status FROM shipments WHERE tracking_number = $1", tn
    )
    assert status == "delivered"
    history = await shipping.pool.fetch(
        """
        SELECT t.status FROM tracking_events t JOIN shipments s USING (shipment_id)
        WHERE s.tracking_number = $1 AND t.source = 'webhook' ORDER BY t.at
        """,
        tn,
    )
    assert [r["status"] for r in history] == ["in_transit", "delivered", "in_transit"]
    assert len(log.about(topics.SHIPMENTS_SHIPPED, order_id=oid)) == 1
    assert len(log.about(topics.SHIPMENTS_DELIVERED, order_id=oid)) == 1
