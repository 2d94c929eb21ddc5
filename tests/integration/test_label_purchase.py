"""Label purchase against a faulty carrier sandbox: one label per order, whatever happens.

Shipping runs alone here; the test plays orders and inventory by publishing
``orders.accepted`` and ``orders.packed`` itself.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any
from uuid import uuid4

import httpx
import pytest

from services.shipping.handlers import purchase_state
from services.shipping.storage import repository as repo
from shared import topics
from shared.carriers.purchase import Attempt
from tests.conftest import MakeSystem
from tests.factories import order_accepted, order_packed
from tests.support import Publisher, bearer, wait_for
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration

ORDERS = 200
BUDGET = 25


async def ship(shop: Publisher, orders: list[dict[str, Any]]) -> None:
    for order in orders:
        await shop.send(topics.ORDERS_ACCEPTED, order, key=order["order_id"])
        packed = order_packed(order["order_id"])
        await shop.send(topics.ORDERS_PACKED, packed, key=order["order_id"])


async def sandbox(system: LocalSystem, method: str, path: str, **kwargs: Any) -> Any:
    async with httpx.AsyncClient(base_url=system.urls["sandbox"], timeout=10) as http:
        r = await http.request(method, path, **kwargs)
    assert r.status_code < 300, r.text
    return r.json()


async def labels_by_order(system: LocalSystem) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for label in (await sandbox(system, "GET", "/sandbox/labels", params={"limit": 10_000}))[
        "labels"
    ]:
        found.setdefault(label["reference"], []).append(label)
    return found


async def carrier_health(system: LocalSystem) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(
            f"{system.urls['shipping']}/carriers", headers=bearer(system.config.tokens["ops"])
        )
    assert r.status_code == 200, r.text
    return {c["carrier"]: c for c in r.json()["carriers"]}


async def test_every_order_gets_exactly_one_label_through_errors_timeouts_and_429s(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(
        services=["shipping"],
        service_overrides={
            "carrier_timeout_seconds": 0.5,
            "label_max_attempts": BUDGET,
            "label_retry_base_seconds": 0.2,
            "label_retry_cap_seconds": 2.0,
            "carrier_breaker_open_seconds": 2.0,
        },
    )
    await sandbox(
        system,
        "POST",
        "/sandbox/faults",
        json={
            "error_rate": 0.3,
            # drawn once per request, and labels go in bulk (a few dozen requests in all):
            # often enough that some request surely hangs
            "timeout_rate": 0.25,
            "rate_limit_rate": 0.05,
            "retry_after_seconds": 1,
            # hangs past the client's timeout, after buying: the answer is lost, not the label
            "timeout_seconds": 1.0,
        },
    )
    log = await event_log_factory(system.config.kafka, [topics.SHIPMENTS_LABEL_CREATED])
    shop = await publisher_factory(system.config.kafka)
    orders = [order_accepted() for _ in range(ORDERS)]
    await ship(shop, orders)
    await wait_for(
        lambda: len(log.about(topics.SHIPMENTS_LABEL_CREATED)) >= ORDERS or None,
        timeout=300,
        what=f"{ORDERS} labels",
    )
    await sandbox(system, "DELETE", "/sandbox/faults")

    # exactly one label per order, counted where labels are sold
    sold = await labels_by_order(system)
    assert sorted(sold) == sorted(o["order_id"] for o in orders)
    assert {oid: labels for oid, labels in sold.items() if len(labels) != 1} == {}
    events = Counter(e["order_id"] for e in log.about(topics.SHIPMENTS_LABEL_CREATED))
    assert set(events.values()) == {1}
    for event in log.about(topics.SHIPMENTS_LABEL_CREATED):
        assert event["tracking_number"] == sold[event["order_id"]][0]["tracking_number"]

    # every fault really happened, and the 429s' Retry-After was waited out
    stats = await sandbox(system, "GET", "/sandbox/stats")
    assert stats["errors"] > 0 and stats["timeouts"] > 0 and stats["rate_limited"] > 0
    assert stats["retry_after_honoured"] > 0
    assert stats["retry_after_violations"] == 0

    # every call is accounted for, and no label used more than its budget
    async with system.runtimes["shipping"].pool.acquire() as conn:
        rows = await conn.fetch("SELECT state, attempts FROM shipping.shipments")
    assert {r["state"] for r in rows} == {"label_created"}
    assert max(r["attempts"] for r in rows) <= BUDGET
    # labels are bought in bulk: each label of a bulk request is a call of its purchase
    calls = stats["requests"]["POST /v1/rates"] + stats["label_requests"]
    assert sum(r["attempts"] for r in rows) == calls
    # the faults cost retries: more label calls than the one per order a calm day needs
    # (a calm day's rates are mostly reused: shared/carriers/pacing.py)
    assert stats["label_requests"] > ORDERS
    print(
        f"{ORDERS} labels in {calls} carrier calls (at most "
        f"{max(r['attempts'] for r in rows)} for one label, budget {BUDGET}); injected "
        f"{stats['errors']} errors, {stats['timeouts']} timeouts, {stats['rate_limited']} 429s; "
        f"Retry-After waited out {stats['retry_after_honoured']} times; "
        f"{stats['requests']['POST /v1/shipments/batch']} bulk requests"
    )


async def test_a_try_whose_outcome_is_lost_leaves_its_key_pinned(make_system: MakeSystem) -> None:
    """A try that dies between its carrier call and recording what came of it may have
    bought a label: the next try must replay the same key, never choose another carrier
    (whose breaker may be open by then) and buy a second label."""
    system = await make_system(services=["shipping"])
    pool = system.runtimes["shipping"].pool
    shipment_id = uuid4()
    order_id = f"order-{shipment_id}"
    held = timedelta(minutes=10)  # the running label worker never sees the row due

    async def lease_again(conn: Any) -> dict[str, Any]:
        """The lease of the try before ran out (its worker died): the next try takes it."""
        await conn.execute(
            "UPDATE shipments SET next_attempt_at = now() - interval '1 second'"
            " WHERE shipment_id = $1",
            shipment_id,
        )
        (leased,) = await repo.lease_due_shipments(conn, limit=10, lease=held)
        return leased

    async def stored_pin(conn: Any) -> bool:
        return bool(
            await conn.fetchval(
                "SELECT carrier_pinned FROM shipments WHERE shipment_id = $1", shipment_id
            )
        )

    async with pool.acquire() as conn:
        async with conn.transaction():  # inserted and leased at once: the worker skips it
            await conn.execute(
                """
                INSERT INTO shipping_orders (order_id, service_level, placed_at, deliver_by,
                                             ship_to)
                VALUES ($1, 'standard', now(), now() + interval '3 days',
                        '{"country": "DE", "postal_code": "10115"}')
                """,
                order_id,
            )
            await conn.execute(
                """
                INSERT INTO shipments (shipment_id, order_id, warehouse_id, state,
                                       idempotency_key, parcels, next_attempt_at)
                VALUES ($1, $2, 'BER-1', 'label_pending', $3, '[]', now())
                """,
                shipment_id,
                order_id,
                f"waybill-{shipment_id}",
            )
            first = await lease_again(conn)
        # nothing chosen yet: nothing can have been bought, nothing to pin
        assert purchase_state(first).choice is None
        assert not await stored_pin(conn)

        # the try chooses a carrier (durably, before its call) and dies during the call
        await repo.choose_services(
            conn,
            [
                {
                    "shipment_id": shipment_id,
                    "carrier": "swiftpost",
                    "service": "ground",
                    "estimated_delivery": None,
                    "at_risk": False,
                    "idempotency_key": f"waybill-{shipment_id}-swiftpost-ground",
                }
            ],
        )
        assert await stored_pin(conn)
        async with conn.transaction():
            second = await lease_again(conn)
        state = purchase_state(second)
        assert state.choice is not None and state.choice.carrier == "swiftpost"
        assert state.pinned, "the key of a call whose outcome was lost must stay"

        # that try's call failed for sure (a 503: not processed) and it says so: unpinned
        await repo.PURCHASES.save_attempts(
            conn, [(shipment_id, Attempt(replace(state, pinned=False), retry_in=600.0))]
        )
        assert not await stored_pin(conn)
        async with conn.transaction():
            third = await lease_again(conn)
        # the next try may switch carriers, but while it runs the store pins the key again
        assert not purchase_state(third).pinned
        assert await stored_pin(conn)


async def test_an_outage_opens_the_breaker_orders_go_elsewhere_and_it_closes_again(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(
        services=["shipping"],
        service_overrides={
            "carrier_breaker_failures": 3,
            "carrier_breaker_open_seconds": 1.5,
            "label_retry_base_seconds": 0.1,
        },
    )
    log = await event_log_factory(system.config.kafka, [topics.SHIPMENTS_LABEL_CREATED])
    shop = await publisher_factory(system.config.kafka)

    # a calm day: swiftpost is the cheapest for these parcels
    calm = order_accepted()
    await ship(shop, [calm])
    label = (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=calm["order_id"]))[0]
    favourite = label["carrier"]
    assert favourite == "swiftpost"
    assert (await carrier_health(system))[favourite]["circuit"] == "closed"

    await sandbox(system, "POST", "/sandbox/faults", json={"outage": True, "carriers": [favourite]})
    during = [order_accepted() for _ in range(8)]
    await ship(shop, during)
    for order in during:
        await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=order["order_id"])
    health = await carrier_health(system)
    assert health[favourite]["times_opened"] >= 1
    assert health[favourite]["circuit"] in ("open", "half_open")
    sold = await labels_by_order(system)
    assert all(sold[o["order_id"]][0]["carrier"] != favourite for o in during)

    # the carrier recovers; once the open period is over the next order is its trial
    await sandbox(system, "DELETE", "/sandbox/faults")
    await wait_for(lambda: _trial_due(system), timeout=10, what=f"{favourite}'s open period to end")
    after = order_accepted()
    await ship(shop, [after])
    label = (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=after["order_id"]))[0]
    assert label["carrier"] == favourite
    health = await carrier_health(system)
    assert health[favourite]["circuit"] == "closed"
    assert health[favourite]["consecutive_failures"] == 0


async def _trial_due(system: LocalSystem) -> bool:
    health = await carrier_health(system)
    return health["swiftpost"]["retry_in_seconds"] == 0


async def test_budget_spent_hands_the_label_to_ops_who_can_retry_it(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(
        services=["shipping"],
        service_overrides={"label_max_attempts": 3, "label_retry_base_seconds": 0.05},
    )
    log = await event_log_factory(
        system.config.kafka, [topics.SHIPMENTS_LABEL_CREATED, topics.SHIPMENTS_EXCEPTION]
    )
    shop = await publisher_factory(system.config.kafka)
    await sandbox(system, "POST", "/sandbox/faults", json={"outage": True})  # every carrier
    order = order_accepted()
    oid = order["order_id"]
    await ship(shop, [order])
    (problem,) = await log.wait(topics.SHIPMENTS_EXCEPTION, order_id=oid)
    assert problem["status"] == "label_failed"
    assert "503" in problem["detail"]

    ops = bearer(system.config.tokens["ops"])
    async with httpx.AsyncClient(base_url=system.urls["shipping"], timeout=10) as http:
        shipment = (await http.get(f"/shipments/{oid}", headers=ops)).json()["shipments"][0]
        assert shipment["state"] == "label_failed" and shipment["attempts"] == 3
        shop_token = bearer(system.config.tokens["shop"])
        assert (
            await http.post(f"/shipments/{oid}/labels/retry", headers=shop_token)
        ).status_code == 403

        await sandbox(system, "DELETE", "/sandbox/faults")
        r = await http.post(f"/shipments/{oid}/labels/retry", headers=ops)
        assert r.status_code == 202 and r.json()["retried"] == 1
        await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=oid)
        again = await http.post(f"/shipments/{oid}/labels/retry", headers=ops)
        assert again.status_code == 409  # nothing failed any more
    assert len((await labels_by_order(system))[oid]) == 1


async def test_a_cancelled_order_has_its_label_voided_even_mid_purchase(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(services=["shipping"])
    log = await event_log_factory(
        system.config.kafka, [topics.SHIPMENTS_LABEL_CREATED, topics.SHIPMENTS_EXCEPTION]
    )
    shop = await publisher_factory(system.config.kafka)
    ops = bearer(system.config.tokens["ops"])

    async def shipment_of(oid: str) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.get(f"{system.urls['shipping']}/shipments/{oid}", headers=ops)
        assert r.status_code == 200, r.text
        shipment: dict[str, Any] = r.json()["shipments"][0]
        return shipment

    async def cancel(oid: str) -> None:
        await shop.send(
            topics.ORDERS_CANCELLED,
            {"order_id": oid, "reason": "customer asked", "event_id": str(uuid4())},
            key=oid,
        )

    async def voided(oid: str) -> dict[str, Any] | None:
        shipment = await shipment_of(oid)
        done = shipment["state"] == "cancelled" and shipment["voided_at"] is not None
        return shipment if done else None

    # 1. a label bought and not yet scanned is voided at the carrier
    bought = order_accepted()
    await ship(shop, [bought])
    await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=bought["order_id"])
    await cancel(bought["order_id"])
    shipment = await wait_for(lambda: voided(bought["order_id"]), what="the label voided")
    assert shipment["voided_at"] is not None
    (label,) = (await labels_by_order(system))[bought["order_id"]]
    assert label["status"] == "cancelled"

    # 2. cancelled while the purchase is on its way: the label arrives, and is voided
    await sandbox(system, "POST", "/sandbox/faults", json={"latency_ms": 3000})
    racing = order_accepted()
    await ship(shop, [racing])
    await wait_for(
        lambda: _purchase_started(system, racing["order_id"]), what="the purchase under way"
    )
    await cancel(racing["order_id"])
    cancelled_first = await wait_for(
        lambda: _cancelled_before_label(system, racing["order_id"]), what="the cancellation"
    )
    assert cancelled_first == "no label yet"  # the race this step is about did happen
    await sandbox(system, "DELETE", "/sandbox/faults")
    await wait_for(lambda: voided(racing["order_id"]), timeout=30, what="the late label voided")
    (label,) = (await labels_by_order(system))[racing["order_id"]]
    assert label["status"] == "cancelled"
    assert log.about(topics.SHIPMENTS_LABEL_CREATED, order_id=racing["order_id"]) == []

    # 3. the parcel was scanned before the cancellation: the carrier refuses, ops hear of it
    scanned = order_accepted()
    await ship(shop, [scanned])
    created = (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=scanned["order_id"]))[0]
    await sandbox(
        system,
        "POST",
        f"/sandbox/trackers/{created['tracking_number']}/events",
        json={"status": "picked_up", "push": False},  # shipping has not heard of it yet
    )
    await cancel(scanned["order_id"])
    (problem,) = await log.wait(topics.SHIPMENTS_EXCEPTION, order_id=scanned["order_id"])
    assert problem["status"] == "void_refused"
    assert "too late" in problem["detail"]
    assert (await shipment_of(scanned["order_id"]))["state"] == "void_refused"
    (label,) = (await labels_by_order(system))[scanned["order_id"]]
    assert label["status"] == "purchased"


async def _purchase_started(system: LocalSystem, order_id: str) -> bool:
    async with system.runtimes["shipping"].pool.acquire() as conn:
        chosen = await conn.fetchval(
            "SELECT carrier IS NOT NULL FROM shipping.shipments WHERE order_id = $1", order_id
        )
    return chosen is True


async def _cancelled_before_label(system: LocalSystem, order_id: str) -> str | None:
    async with system.runtimes["shipping"].pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT state, tracking_number FROM shipping.shipments WHERE order_id = $1", order_id
        )
    assert row is not None
    if row["state"] == "label_created":
        return "label first"
    if row["state"] in ("cancelled", "void_pending"):
        return "no label yet" if row["tracking_number"] is None else "label first"
    return None
