"""Metrics: an order's journey shows up in each service's Prometheus scrape."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from shared import topics
from tests.conftest import MakeSystem
from tests.factories import order_placed
from tests.integration.test_reservation import setup_stock
from tests.support import bearer, wait_for
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration


def value_of(scrape: str, name: str, **labels: str) -> float | None:
    """The sample ``name{labels...}`` (all given labels must match), summed over the rest."""
    total = None
    for line in scrape.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? ([-+0-9.eE]+|NaN)$", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total = (total or 0.0) + float(match.group(3))
    return total


async def scrape(system: LocalSystem, service: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            f"{system.urls[service]}/metrics", headers=bearer(system.config.tokens["ops"])
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


async def test_each_service_exposes_its_part_of_an_orders_journey(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(autopick=True)
    await setup_stock(system, [("BER-1", "DE", "10115")], [("BER-1", "METRIC", 2)])
    log = await event_log_factory(system.config.kafka, [topics.SHIPMENTS_LABEL_CREATED])
    shop = await publisher_factory(system.config.kafka)
    order = order_placed(lines=[("METRIC", 1)])
    await shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])
    label = (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=order["order_id"]))[0]

    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{system.urls['orders']}/metrics")).status_code == 401
        shop_token = bearer(system.config.tokens["shop"])
        assert (
            await http.get(f"{system.urls['orders']}/metrics", headers=shop_token)
        ).status_code == 403

    orders = await scrape(system, "orders")
    handled = value_of(
        orders, "waybill_events_handled_total", service="orders", topic=topics.ORDERS_PLACED
    )
    assert handled is not None and handled >= 1
    accepted = value_of(
        orders, "waybill_stage_latency_seconds_count", service="orders", stage="accept"
    )
    assert accepted is not None and accepted >= 1

    shipping = await scrape(system, "shipping")
    bought = value_of(
        shipping, "waybill_carrier_calls_total", carrier=label["carrier"], operation="buy"
    )
    assert bought is not None and bought >= 1
    breaker = value_of(
        shipping, "waybill_carrier_breaker_state", service="shipping", carrier=label["carrier"]
    )
    assert breaker == 0.0  # closed
    inventory = await scrape(system, "inventory")

    async def backlog_seen() -> bool:
        text = await scrape(system, "inventory")
        return value_of(text, "waybill_outbox_backlog", service="inventory") is not None

    await wait_for(backlog_seen, what="the inventory outbox backlog gauge")
    assert value_of(inventory, "waybill_events_handled_total", service="inventory") is not None


async def test_consumer_lag_comes_from_the_fetch_high_watermark_and_drains(
    make_system: MakeSystem, publisher_factory
) -> None:
    # one record per batch, so that a backlog of placements takes seconds to work through
    system = await make_system(
        services=["orders"],
        service_overrides={"consumer_batch_max": 1, "broker_check_seconds": 0.1},
    )
    shop = await publisher_factory(system.config.kafka)
    placed = [order_placed() for _ in range(400)]
    for order in placed:
        await shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])
    token = bearer(system.config.tokens["ops"])

    async def health() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"{system.urls['orders']}/ops/health", headers=token)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def lagging() -> dict[str, Any] | None:
        body = await health()
        return body if body["consumer_lag"] > 0 else None

    seen = await wait_for(lagging, what="a consumer lag above zero while orders catch up")
    assert topics.ORDERS_PLACED in seen["consumer_lag_by_topic"]
    assert (
        value_of(await scrape(system, "orders"), "waybill_consumer_lag", topic=topics.ORDERS_PLACED)
        is not None
    )

    async def drained() -> dict[str, Any] | None:
        body = await health()
        measured = body["consumer_lag_by_topic"].get(topics.ORDERS_PLACED)
        return body if measured and measured["lag"] == 0 else None

    await wait_for(drained, timeout=90, what="the lag back at zero once all are handled")
    async with system.runtimes["orders"].pool.acquire() as conn:
        handled = await conn.fetchval("SELECT count(*) FROM orders")
    assert handled == len(placed)
