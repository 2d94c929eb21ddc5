"""Shops as tenants: per-shop keys, scoped reads and writes, rotation, revocation everywhere,
no key in clear anywhere, and the intake's rate limit (real broker, real PostgreSQL)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from shared import topics
from tests.conftest import MakeSystem
from tests.e2e.test_walking_skeleton import _deliver, _stock_warehouse
from tests.factories import order_placed, return_requested
from tests.support import bearer, wait_for
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration

SCHEMAS = ("orders", "inventory", "shipping", "returns")


async def issue(http: httpx.AsyncClient, system: LocalSystem, shop_id: str) -> dict[str, Any]:
    r = await http.post(
        f"{system.urls['orders']}/shops/{shop_id}/keys",
        headers=bearer(system.config.tokens["admin"]),
    )
    assert r.status_code == 201, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def test_a_shop_key_reads_and_writes_its_own_shop_only(
    make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    system = await make_system(autopick=True)
    log = await event_log_factory(
        system.config.kafka,
        [
            topics.ORDERS_ACCEPTED,
            topics.ORDERS_REJECTED,
            topics.SHIPMENTS_LABEL_CREATED,
            topics.SHIPMENTS_DELIVERED,
            topics.RETURNS_APPROVED,
        ],
    )
    shop = await publisher_factory(system.config.kafka)
    urls, tokens = system.urls, system.config.tokens
    async with httpx.AsyncClient(timeout=30) as http:
        await _stock_warehouse(http, system, "MUG", 5)
        alpha = (await issue(http, system, "alpha"))["key"]
        beta = (await issue(http, system, "beta"))["key"]

        # a write for another shop: 403, valid or not, and nothing stored or emitted
        foreign = order_placed(shop_id="beta", lines=[("MUG", 1)])
        foreign_invalid = order_placed(shop_id="beta", currency="EURO")
        for body in (foreign, foreign_invalid):
            r = await http.post(f"{urls['orders']}/orders", json=body, headers=bearer(alpha))
            assert r.status_code == 403, r.text
        own = order_placed(shop_id="alpha", lines=[("MUG", 1)])
        r = await http.post(f"{urls['orders']}/orders", json=own, headers=bearer(alpha))
        assert r.status_code == 202, r.text
        oid = own["order_id"]
        label = (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=oid))[0]
        # the order placed after the refused ones is through: they left no trace behind it
        for body in (foreign, foreign_invalid):
            assert not log.about(topics.ORDERS_ACCEPTED, order_id=body["order_id"])
            assert not log.about(topics.ORDERS_REJECTED, order_id=body["order_id"])
        async with system.runtimes["orders"].pool.acquire() as conn:
            traces = await conn.fetchval(
                """
                SELECT (SELECT count(*) FROM orders WHERE order_id = ANY($1::text[]))
                     + (SELECT count(*) FROM rejections WHERE order_id = ANY($1::text[]))
                     + (SELECT count(*) FROM outbox WHERE key = ANY($1::text[]))
                """,
                [foreign["order_id"], foreign_invalid["order_id"]],
            )
        assert traces == 0

        await _deliver(http, urls["sandbox"], label["tracking_number"], datetime.now(UTC))
        await log.wait(topics.SHIPMENTS_DELIVERED, order_id=oid)
        ret = return_requested(
            order_id=oid, lines=[("MUG", 1)], requested_at=datetime.now(UTC) + timedelta(seconds=1)
        )
        await shop.send(topics.RETURNS_REQUESTED, ret, key=oid)
        await log.wait(topics.RETURNS_APPROVED, return_id=ret["return_id"])

        reads = {
            "orders": f"{urls['orders']}/orders/{oid}",
            "shipping": f"{urls['shipping']}/shipments/{oid}",
            "returns": f"{urls['returns']}/returns/{ret['return_id']}",
        }
        missing = {
            "orders": f"{urls['orders']}/orders/no-such-order",
            "shipping": f"{urls['shipping']}/shipments/no-such-order",
            "returns": f"{urls['returns']}/returns/no-such-return",
        }
        for service, url in reads.items():
            for who in (alpha, tokens["shop"], tokens["ops"]):
                r = await http.get(url, headers=bearer(who))
                assert r.status_code == 200, (service, r.text)
            # another shop's: exactly as if there were none
            refused = await http.get(url, headers=bearer(beta))
            absent = await http.get(missing[service], headers=bearer(beta))
            assert refused.status_code == absent.status_code == 404, service
            asked, other = url.rsplit("/", 1)[1], missing[service].rsplit("/", 1)[1]
            assert refused.text.replace(asked, "ID") == absent.text.replace(other, "ID")

        # shops reach their own keys only; issuing is the admin's
        r = await http.get(f"{urls['orders']}/shops/beta/keys", headers=bearer(alpha))
        assert r.status_code == 404
        r = await http.post(f"{urls['orders']}/shops/alpha/keys", headers=bearer(alpha))
        assert r.status_code == 403


async def test_rotation_with_two_live_keys_and_revocation_in_every_service(
    make_system: MakeSystem,
) -> None:
    system = await make_system(with_sandbox=False)
    urls = system.urls
    probes = {
        "orders": f"{urls['orders']}/orders/none",
        "shipping": f"{urls['shipping']}/shipments/none",
        "returns": f"{urls['returns']}/returns/none",
    }

    async def answers(key: str) -> dict[str, int]:
        return {
            service: (await http.get(url, headers=bearer(key))).status_code
            for service, url in probes.items()
        }

    async with httpx.AsyncClient(timeout=30) as http:
        old = await issue(http, system, "alpha")
        new = await issue(http, system, "alpha")
        third = await http.post(
            f"{urls['orders']}/shops/alpha/keys", headers=bearer(system.config.tokens["admin"])
        )
        assert third.status_code == 409, third.text
        # both keys work everywhere (404: signed in, no such order) once every service knows them
        for key in (old["key"], new["key"]):
            await wait_for(
                lambda key=key: _all(answers(key), 404), timeout=15, what="both keys known"
            )

        r = await http.delete(
            f"{urls['orders']}/shops/alpha/keys/{old['key_id']}", headers=bearer(new["key"])
        )
        assert r.status_code == 200, r.text
        assert (await answers(old["key"]))["orders"] == 401  # at once where it is owned
        # everywhere else within seconds: as soon as each service read shops.key-changed
        await wait_for(
            lambda: _all(answers(old["key"]), 401), timeout=10, what="revoked everywhere"
        )
        assert await answers(new["key"]) == dict.fromkeys(probes, 404)

        listed = await http.get(
            f"{urls['orders']}/shops/alpha/keys", headers=bearer(system.config.tokens["admin"])
        )
        keys = {k["key_id"]: k for k in listed.json()["keys"]}
        assert set(keys) == {old["key_id"], new["key_id"]}
        assert keys[old["key_id"]]["revoked_at"] is not None
        assert keys[new["key_id"]]["revoked_at"] is None
        assert keys[new["key_id"]]["last_used_at"] is not None
        assert "key" not in keys[new["key_id"]]
        # with one live key left, a new one may be issued again
        await issue(http, system, "alpha")


async def _all(answers: Any, status: int) -> bool:
    return all(code == status for code in (await answers).values())


async def test_a_key_is_never_stored_or_logged_in_clear(
    make_system: MakeSystem, event_log_factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    system = await make_system(with_sandbox=False)
    log = await event_log_factory(system.config.kafka, [topics.SHOPS_KEY_CHANGED])
    async with httpx.AsyncClient(timeout=30) as http:
        issued = await issue(http, system, "alpha")
        key = issued["key"]
        secret = key.rsplit("_", 1)[1]
        body = order_placed(shop_id="alpha")
        r = await http.post(f"{system.urls['orders']}/orders", json=body, headers=bearer(key))
        assert r.status_code == 202, r.text
        await http.get(f"{system.urls['shipping']}/shipments/x", headers=bearer(key))
        await http.delete(
            f"{system.urls['orders']}/shops/alpha/keys/{issued['key_id']}",
            headers=bearer(system.config.tokens["admin"]),
        )
        await http.get(f"{system.urls['orders']}/orders/x", headers=bearer(key))  # revoked: 401
    (changes) = await log.wait(topics.SHOPS_KEY_CHANGED, key_id=issued["key_id"], count=2)
    for change in changes:
        assert secret not in str(change)

    async def copies_known() -> bool:
        counts = []
        for name in SCHEMAS:
            async with system.runtimes[name].pool.acquire() as conn:
                counts.append(
                    await conn.fetchval(
                        "SELECT count(*) FROM access_keys WHERE key_id = $1 "
                        "AND revoked_at IS NOT NULL",
                        issued["key_id"],
                    )
                )
        return counts == [1, 1, 1, 1]

    await wait_for(copies_known, what="every service's copy of the revoked key")
    for name in SCHEMAS:
        async with system.runtimes[name].pool.acquire() as conn:
            assert await _occurrences(conn, name, secret) == [], name
    assert secret not in caplog.text


async def _occurrences(conn: Any, schema: str, secret: str) -> list[str]:
    """Every column of every table of ``schema`` that holds ``secret``, as text or bytes."""
    columns = await conn.fetch(
        """
        SELECT table_name, column_name, data_type FROM information_schema.columns
        WHERE table_schema = $1 AND table_name IN (
            SELECT table_name FROM information_schema.tables
            WHERE table_schema = $1 AND table_type = 'BASE TABLE')
        """,
        schema,
    )
    found = []
    for c in columns:
        column = f'{schema}."{c["table_name"]}"."{c["column_name"]}"'
        table = f'{schema}."{c["table_name"]}"'
        if c["data_type"] == "bytea":
            test = f'position($1::bytea IN "{c["column_name"]}") > 0'
            arg: Any = secret.encode()
        else:
            test = f'"{c["column_name"]}"::text LIKE $1'
            arg = f"%{secret}%"
        if await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {test}", arg):
            found.append(column)
    return found


async def test_the_intake_limits_each_key_with_retry_after(make_system: MakeSystem) -> None:
    system = await make_system(
        services=["orders"],
        with_sandbox=False,
        service_overrides={"rate_limit_per_second": 1.0, "rate_limit_burst": 3},
    )
    url = f"{system.urls['orders']}/orders"
    async with httpx.AsyncClient(timeout=30) as http:
        alpha = (await issue(http, system, "alpha"))["key"]
        beta = (await issue(http, system, "beta"))["key"]
        answers = [
            (await http.post(url, json=order_placed(shop_id="alpha"), headers=bearer(alpha)))
            for _ in range(5)
        ]
        assert [a.status_code for a in answers[:3]] == [202, 202, 202]
        limited = answers[3]
        assert limited.status_code == 429, limited.text
        assert int(limited.headers["Retry-After"]) >= 1
        # another key has its own bucket; the platform token is not limited
        r = await http.post(url, json=order_placed(shop_id="beta"), headers=bearer(beta))
        assert r.status_code == 202
        for _ in range(5):
            r = await http.post(
                url, json=order_placed(shop_id="x"), headers=bearer(system.config.tokens["shop"])
            )
            assert r.status_code == 202

        async def accepted_again() -> bool:
            r = await http.post(url, json=order_placed(shop_id="alpha"), headers=bearer(alpha))
            assert r.status_code in (202, 429), r.text
            return r.status_code == 202

        await wait_for(accepted_again, timeout=5, interval=0.25, what="the bucket refilled")
