"""Webhooks to shops through the whole system: signed, retried through a receiver that fails
its first attempts, one at a time and in order per order, a dead endpoint holding up nobody
else, dead after the retry window and sent again on request (real broker, real PostgreSQL,
the sandbox's real HTTP receivers)."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import httpx
import pytest

from shared import topics
from tests.conftest import MakeSystem
from tests.e2e.test_walking_skeleton import _stock_warehouse
from tests.factories import order_placed
from tests.support import bearer, wait_for
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration

#: what every order of these tests goes through with the automatic picker
STAGES = [
    topics.ORDERS_ACCEPTED,
    topics.STOCK_RESERVED,
    topics.ORDERS_PACKED,
    topics.SHIPMENTS_LABEL_CREATED,
]
QUICK = {
    "webhook_backoff_base_seconds": 0.2,
    "webhook_backoff_max_seconds": 1.0,
    "webhook_timeout_seconds": 1.5,
    "webhook_poll_seconds": 0.1,
    "webhook_per_shop": 2,
}


async def subscribe(
    http: httpx.AsyncClient,
    system: LocalSystem,
    shop_id: str,
    receiver: str,
    **receiver_options: Any,
) -> str:
    """The shop's webhook to the sandbox receiver ``receiver``; its signing secret."""
    r = await http.put(
        f"{system.urls['orders']}/shops/{shop_id}/webhook",
        json={"url": f"{system.urls['sandbox']}/sandbox/receivers/{receiver}", "events": STAGES},
        headers=bearer(system.config.tokens["admin"]),
    )
    assert r.status_code == 201, r.text
    secret: str = r.json()["secret"]
    r = await http.put(
        f"{system.urls['sandbox']}/sandbox/receivers/{receiver}",
        json={"secret": secret, **receiver_options},
    )
    assert r.status_code == 200, r.text
    return secret


async def received(http: httpx.AsyncClient, system: LocalSystem, receiver: str) -> dict[str, Any]:
    r = await http.get(f"{system.urls['sandbox']}/sandbox/receivers/{receiver}")
    assert r.status_code == 200, r.text
    report: dict[str, Any] = r.json()
    return report


async def deliveries(
    http: httpx.AsyncClient, system: LocalSystem, shop_id: str, **params: Any
) -> list[dict[str, Any]]:
    r = await http.get(
        f"{system.urls['orders']}/shops/{shop_id}/webhook/deliveries",
        params={"limit": 500, **params},
        headers=bearer(system.config.tokens["admin"]),
    )
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["deliveries"]
    return found


async def test_deliveries_are_signed_retried_in_order_per_order_and_isolated_per_shop(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(autopick=True, service_overrides=QUICK)
    log = await event_log_factory(system.config.kafka, [topics.SHIPMENTS_LABEL_CREATED])
    shop = await publisher_factory(system.config.kafka)
    async with httpx.AsyncClient(timeout=30) as http:
        await _stock_warehouse(http, system, "KETTLE", 20)
        await subscribe(http, system, "alpha", "alpha", fail_first=3)
        # beta's endpoint answers only after 5 s, beyond the 1.5 s a delivery may take
        await subscribe(http, system, "beta", "beta", delay_ms=5000)
        orders = {
            shop_id: [order_placed(shop_id=shop_id, lines=[("KETTLE", 1)]) for _ in range(3)]
            for shop_id in ("alpha", "beta")
        }
        for placed in orders["alpha"] + orders["beta"]:
            await shop.send(topics.ORDERS_PLACED, placed, key=placed["order_id"])
        alpha_ids = {o["order_id"] for o in orders["alpha"]}

        async def alpha_has_everything() -> dict[str, Any] | None:
            report = await received(http, system, "alpha")
            got = {(r["order_id"], r["topic"]) for r in report["received"]}
            return report if got >= {(o, t) for o in alpha_ids for t in STAGES} else None

        report = await wait_for(alpha_has_everything, timeout=60, what="alpha's events")
        # the pipeline and alpha went on while beta's endpoint hung
        for placed in orders["beta"]:
            await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=placed["order_id"])

        async def beta_timed_out() -> list[dict[str, Any]] | None:
            beta = await deliveries(http, system, "beta")
            timed_out = any("no answer within" in (d["last_error"] or "") for d in beta)
            return beta if timed_out else None

        beta = await wait_for(beta_timed_out, what="beta's endpoint timing out")
        assert all(d["status"] == "pending" for d in beta), beta

        # signed (the receiver refused nothing), once each, retried after the 503s
        assert report["refused"] == []
        assert report["requests"] >= len(report["received"]) + 3
        assert len({r["event_id"] for r in report["received"]}) == len(report["received"])
        alpha = await deliveries(http, system, "alpha")
        assert all(d["status"] == "delivered" for d in alpha)
        retried = [d for d in alpha if d["attempts"] > 1]
        assert retried and retried[0]["attempt_log"][0]["status_code"] == 503
        for d in alpha:
            assert d["event_id"] in {r["event_id"] for r in report["received"]}
            assert d["topic"] in STAGES and d["order_id"] in alpha_ids
            assert "packed_by" not in str(d)

        # per order: sent in the order queued, each after the one before was delivered
        for order_id in alpha_ids:
            queued = sorted((d for d in alpha if d["order_id"] == order_id), key=_id)
            arrived = [r["event_id"] for r in report["received"] if r["order_id"] == order_id]
            assert arrived == [d["event_id"] for d in queued], order_id
            assert queued[0]["topic"] == topics.ORDERS_ACCEPTED
            for before, after in itertools.pairwise(queued):
                first_try = _at(after["attempt_log"][0]["at"])
                assert first_try >= _at(before["delivered_at"]), order_id

        # beta's endpoint recovers: its backlog goes out with the next attempts
        r = await http.put(
            f"{system.urls['sandbox']}/sandbox/receivers/beta",
            json={"secret": await _secret_of(http, system, "beta")},
        )
        assert r.status_code == 200, r.text

        async def beta_delivered() -> bool:
            return all(d["status"] == "delivered" for d in await deliveries(http, system, "beta"))

        await wait_for(beta_delivered, timeout=60, what="beta's backlog delivered")


def _id(delivery: dict[str, Any]) -> int:
    return int(delivery["delivery_id"])


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def _secret_of(http: httpx.AsyncClient, system: LocalSystem, shop_id: str) -> str:
    r = await http.put(
        f"{system.urls['orders']}/shops/{shop_id}/webhook",
        json={
            "url": f"{system.urls['sandbox']}/sandbox/receivers/{shop_id}",
            "events": STAGES,
            "rotate_secret": True,
        },
        headers=bearer(system.config.tokens["admin"]),
    )
    assert r.status_code == 200, r.text
    secret: str = r.json()["secret"]
    return secret


async def test_a_delivery_is_dead_after_the_retry_window_and_sent_again_on_request(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(
        services=["orders"],
        with_sandbox=True,
        service_overrides={**QUICK, "webhook_retry_seconds": 2},
    )
    async with httpx.AsyncClient(timeout=30) as http:
        secret = await subscribe(http, system, "gamma", "gamma", fail_first=1000, fail_status=500)
        placed = order_placed(shop_id="gamma")
        r = await http.post(
            f"{system.urls['orders']}/orders",
            json=placed,
            headers=bearer(system.config.tokens["shop"]),
        )
        assert r.status_code == 202, r.text

        async def dead() -> list[dict[str, Any]]:
            return await deliveries(http, system, "gamma", status="dead")

        [gone] = await wait_for(dead, timeout=30, what="the delivery given up")
        assert gone["topic"] == topics.ORDERS_ACCEPTED and gone["attempts"] >= 2
        assert {a["status_code"] for a in gone["attempt_log"]} == {500}

        # the shop fixed its endpoint and asks for it again
        r = await http.put(
            f"{system.urls['sandbox']}/sandbox/receivers/gamma", json={"secret": secret}
        )
        r = await http.post(
            f"{system.urls['orders']}/shops/gamma/webhook/deliveries/{gone['delivery_id']}/retry",
            headers=bearer(system.config.tokens["admin"]),
        )
        assert r.status_code == 202, r.text

        async def delivered() -> list[dict[str, Any]]:
            return await deliveries(http, system, "gamma", status="delivered")

        await wait_for(delivered, timeout=30, what="the retried delivery")
        report = await received(http, system, "gamma")
        assert [x["event_id"] for x in report["received"]] == [str(gone["event_id"])]
        assert report["received"][0]["event"]["order_id"] == placed["order_id"]

        # a shop's key reaches its own webhook only; a bad body is a 422 with the field
        other = await http.post(
            f"{system.urls['orders']}/shops/delta/keys",
            headers=bearer(system.config.tokens["admin"]),
        )
        delta = other.json()["key"]
        r = await http.get(
            f"{system.urls['orders']}/shops/gamma/webhook/deliveries", headers=bearer(delta)
        )
        assert r.status_code == 404
        r = await http.put(
            f"{system.urls['orders']}/shops/delta/webhook",
            json={"url": "ftp://example.org/x", "events": ["orders.placed"]},
            headers=bearer(delta),
        )
        assert r.status_code == 422
        fields = {tuple(e["loc"]) for e in r.json()["detail"]}
        assert fields == {("body", "url"), ("body", "events")}
