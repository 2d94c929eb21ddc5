"""Reservation on the real broker and PostgreSQL: never oversell, conserve stock,
serve backorders oldest first, split across the fewest warehouses.

Two inventory instances share the consumer group in the concurrent tests, so
reservations really race for the same rows in separate transactions.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from shared import topics
from shared.runtime import ServiceRuntime
from tests.conftest import MakeSystem
from tests.factories import order_placed
from tests.support import EventLog, bearer, wait_for
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration

OUTCOMES = [topics.STOCK_RESERVED, topics.STOCK_BACKORDERED]


async def setup_stock(
    system: LocalSystem, warehouses: list[tuple[str, str, str]], stock: list[tuple[str, str, int]]
) -> None:
    tokens = system.config.tokens
    async with httpx.AsyncClient(timeout=30) as http:
        for warehouse_id, country, postal in warehouses:
            r = await http.put(
                f"{system.urls['inventory']}/warehouses/{warehouse_id}",
                json={"name": warehouse_id, "country": country, "postal_code": postal},
                headers=bearer(tokens["admin"]),
            )
            assert r.status_code == 200, r.text
        for warehouse_id, sku, quantity in stock:
            r = await http.post(
                f"{system.urls['inventory']}/stock/receipts",
                json={"warehouse_id": warehouse_id, "sku": sku, "quantity": quantity, "bin": "A-1"},
                headers=bearer(tokens["admin"]),
            )
            assert r.status_code == 202, r.text


async def second_inventory(system: LocalSystem) -> ServiceRuntime:
    """Another inventory instance in the same consumer group, sharing the partitions."""
    extra = system.build_runtime("inventory")
    await extra.start()
    first = system.runtimes["inventory"]
    await wait_for(
        lambda: extra.assigned_partitions() and first.assigned_partitions(),
        what="both inventory instances to hold partitions",
    )
    return extra


async def outcomes(log: EventLog, count: int) -> dict[str, dict[str, Any]]:
    def seen() -> dict[str, dict[str, Any]] | None:
        found = {
            e["order_id"]: {"topic": topic, **e} for topic in OUTCOMES for e in log.about(topic)
        }
        return found if len(found) >= count else None

    result: dict[str, dict[str, Any]] = await wait_for(
        seen, timeout=120, what=f"{count} reservation outcomes"
    )
    return result


async def stock_rows(runtime: ServiceRuntime) -> list[dict[str, Any]]:
    rows = await runtime.pool.fetch("SELECT warehouse_id, sku, on_hand, reserved FROM stock")
    return [dict(r) for r in rows]


async def test_five_hundred_orders_for_one_hundred_units_never_oversell(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(services=["orders", "inventory"], with_sandbox=False, autopick=False)
    await setup_stock(system, [("BER-1", "DE", "10115")], [("BER-1", "HOT", 100)])
    extra = await second_inventory(system)
    try:
        log = await event_log_factory(system.config.kafka, OUTCOMES)
        shop = await publisher_factory(system.config.kafka)
        orders = [order_placed(lines=[("HOT", 1)]) for _ in range(500)]
        await asyncio.gather(
            *(shop.send(topics.ORDERS_PLACED, o, key=o["order_id"]) for o in orders)
        )
        result = await outcomes(log, 500)
        by_topic = Counter(r["topic"] for r in result.values())
        assert by_topic == {topics.STOCK_RESERVED: 100, topics.STOCK_BACKORDERED: 400}
        assert {o["order_id"] for o in orders} == set(result)
        [row] = await stock_rows(system.runtimes["inventory"])
        assert (row["on_hand"], row["reserved"]) == (100, 100)
        # both instances did part of the work
        assert extra.consumer.handled > 0
        assert system.runtimes["inventory"].consumer.handled > 0
        dead = await extra.pool.fetchval("SELECT count(*) FROM dead_letters")
        assert dead == 0
    finally:
        await extra.stop()


async def test_random_multi_sku_baskets_conserve_stock_without_deadlocks(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    rng = random.Random(20261122)
    system = await make_system(services=["orders", "inventory"], with_sandbox=False, autopick=False)
    warehouses = [("BER-1", "DE", "10115"), ("MUC-1", "DE", "80331"), ("AMS-1", "NL", "1011")]
    skus = [f"SKU-{n:02d}" for n in range(20)]
    stock = [(w, sku, rng.randint(0, 12)) for w, _, _ in warehouses for sku in skus]
    await setup_stock(system, warehouses, [s for s in stock if s[2] > 0])
    extra = await second_inventory(system)
    try:
        log = await event_log_factory(system.config.kafka, OUTCOMES)
        shop = await publisher_factory(system.config.kafka)
        orders = []
        for _ in range(200):
            basket = rng.sample(skus, k=rng.randint(1, 5))
            orders.append(
                order_placed(
                    lines=[(sku, rng.randint(1, 3)) for sku in basket],
                    postal_code=rng.choice(["10117", "80469", "50667"]),
                )
            )
        await asyncio.gather(
            *(shop.send(topics.ORDERS_PLACED, o, key=o["order_id"]) for o in orders)
        )
        result = await outcomes(log, 200)

        reserved_by_events: Counter[tuple[str, str]] = Counter()
        for order in orders:
            outcome = result[order["order_id"]]
            wanted = Counter({line["sku"]: line["quantity"] for line in order["lines"]})
            if outcome["topic"] == topics.STOCK_RESERVED:
                got: Counter[str] = Counter()
                for a in outcome["allocations"]:
                    got[a["sku"]] += a["quantity"]
                    reserved_by_events[(a["warehouse_id"], a["sku"])] += a["quantity"]
                assert got == wanted, "a reservation covers exactly the order's lines"
        rows = await stock_rows(system.runtimes["inventory"])
        initial = {(w, sku): q for w, sku, q in stock if q > 0}
        for row in rows:
            key = (row["warehouse_id"], row["sku"])
            assert row["on_hand"] == initial[key], "nothing is packed, so on hand is unchanged"
            assert 0 <= row["reserved"] <= row["on_hand"]
            assert row["reserved"] == reserved_by_events[key], f"conserved for {key}"
        for pool in (extra.pool, system.runtimes["inventory"].pool):
            assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0
        assert Counter(r["topic"] for r in result.values())[topics.STOCK_RESERVED] > 0
    finally:
        await extra.stop()


async def test_arriving_stock_serves_the_oldest_backorders_first(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(services=["orders", "inventory"], with_sandbox=False, autopick=False)
    await setup_stock(system, [("BER-1", "DE", "10115")], [])
    log = await event_log_factory(system.config.kafka, OUTCOMES)
    shop = await publisher_factory(system.config.kafka)
    now = datetime.now(UTC)
    oldest, middle, newest = (
        order_placed(lines=[("LATE", 1)], placed_at=now - timedelta(minutes=m))
        for m in (30, 20, 10)
    )
    for order in (newest, middle, oldest):  # arrival order is the reverse of placement
        await shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])
        await log.wait(topics.STOCK_BACKORDERED, order_id=order["order_id"])
    await setup_stock(system, [], [("BER-1", "LATE", 2)])
    for order in (oldest, middle):
        await log.wait(topics.STOCK_RESERVED, order_id=order["order_id"])
    assert log.about(topics.STOCK_RESERVED, order_id=newest["order_id"]) == []
    status = await system.runtimes["inventory"].pool.fetchval(
        "SELECT status FROM inventory_orders WHERE order_id = $1", newest["order_id"]
    )
    assert status == "backordered"


async def test_an_order_no_warehouse_can_fill_is_split_across_the_fewest(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(services=["orders", "inventory"], with_sandbox=False, autopick=False)
    await setup_stock(
        system,
        [("NEAR", "DE", "10118"), ("BER-1", "DE", "10115"), ("AMS-1", "NL", "1011")],
        [("NEAR", "A", 1), ("NEAR", "B", 1), ("BER-1", "A", 2), ("AMS-1", "B", 2)],
    )
    log = await event_log_factory(system.config.kafka, OUTCOMES)
    shop = await publisher_factory(system.config.kafka)
    order = order_placed(lines=[("A", 2), ("B", 2)], postal_code="10117")
    await shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])
    reserved = (await log.wait(topics.STOCK_RESERVED, order_id=order["order_id"]))[0]
    used: defaultdict[str, int] = defaultdict(int)
    for a in reserved["allocations"]:
        used[a["warehouse_id"]] += a["quantity"]
    assert dict(used) == {"BER-1": 2, "AMS-1": 2}
