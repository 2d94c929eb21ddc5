"""Fixtures of the property tests: each service's real consumer on a real PostgreSQL, and the
whole system serving HTTP.

The consumers are built by the services' own composition roots (``services/<name>/main.py``
through :class:`waybill.system.LocalSystem`), migrated and bound to a pool of the service's
own role and schema, exactly as ``ServiceRuntime.start`` does; records are handed to
:meth:`EventConsumer.process` as aiokafka ``ConsumerRecord`` objects, as the broker
subscription hands them over. What the consumer emits stays in the outbox (no relay runs),
so a test reads every answer and dead letter where the transaction wrote it.

The HTTP tests run against :class:`waybill.system.LocalSystem`, as ``make_system`` starts
it: the four services and the carrier sandbox on real ports, on the embedded broker and
PostgreSQL, with a known warehouse, stock and orders.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest
from aiokafka.structs import ConsumerRecord

from services.inventory.storage import repository as inventory_repo
from shared.db import apply_migrations, create_pool, shared_migrations, unit_of_work
from shared.infra import Infrastructure, provision_service_database
from shared.messaging import EventConsumer
from shared.runtime import ServiceRuntime
from shared.settings import KafkaSettings
from tests.conftest import new_database, new_kafka
from tests.factories import order_accepted, order_packed, order_placed, shipment_delivered
from tests.property.strategies import KNOWN
from tests.support import bearer
from waybill.system import SERVICES, LocalSystem, SystemConfig


@dataclass(frozen=True)
class Answer:
    """An outbox row: an event the consumer emitted."""

    topic: str
    key: str | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class DeadLetterRow:
    offset: int
    error: str
    error_type: str


@dataclass
class ConsumingService:
    """One service's consumer, its pool, and the offsets handed out on its topics."""

    name: str
    runtime: ServiceRuntime
    pool: asyncpg.Pool
    topic_prefix: str
    _offsets: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def consumer(self) -> EventConsumer:
        return self.runtime.consumer

    def record(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> ConsumerRecord[bytes, bytes]:
        """A record as the broker delivers it, at an offset no other record of the test
        module had (the fallback dedupe id and the dead letter are keyed by it)."""
        return ConsumerRecord(
            topic=self.topic_prefix + topic,
            partition=0,
            offset=next(self._offsets),
            timestamp=int(datetime.now(UTC).timestamp() * 1000),
            timestamp_type=0,
            key=key,
            value=value,
            checksum=None,
            serialized_key_size=len(key or b""),
            serialized_value_size=len(value or b""),
            headers=tuple(headers),
        )

    async def outbox_position(self) -> int:
        position: int = await self.pool.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
        return position

    async def answers_since(self, position: int) -> list[Answer]:
        rows = await self.pool.fetch(
            "SELECT topic, key, payload FROM outbox WHERE id > $1 ORDER BY id", position
        )
        return [Answer(r["topic"], r["key"], json.loads(r["payload"])) for r in rows]

    async def dead_letters(self, topic: str, offsets: Sequence[int]) -> dict[int, DeadLetterRow]:
        rows = await self.pool.fetch(
            """
            SELECT "offset", error, error_type FROM dead_letters
            WHERE consumer_group = $1 AND topic = $2 AND partition = 0
              AND "offset" = ANY($3::bigint[])
            """,
            self.consumer.group_id,
            topic,
            list(offsets),
        )
        return {r["offset"]: DeadLetterRow(r["offset"], r["error"], r["error_type"]) for r in rows}

    async def claimed(self, topic: str, event_id: str) -> bool:
        found: bool = await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM inbox WHERE consumer = $1 AND event_id = $2::uuid)",
            self.consumer.inbox_name(topic),
            event_id,
        )
        return found

    async def feed(self, topic: str, payload: dict[str, Any]) -> None:
        """Hand one valid event to the consumer (setting up what the fuzzed records meet)."""
        await self.consumer.process([self.record(topic, json.dumps(payload).encode(), key=b"seed")])


async def _start(
    system: LocalSystem, name: str, kafka: KafkaSettings
) -> tuple[ServiceRuntime, asyncpg.Pool]:
    runtime = system.build_runtime(name)
    conn = await asyncpg.connect(runtime.dsn)
    try:
        await apply_migrations(
            conn,
            schema=runtime.schema,
            sources=[shared_migrations(), runtime.definition.migrations],
        )
    finally:
        await conn.close()
    pool = await create_pool(runtime.dsn, schema=runtime.schema, min_size=1, max_size=4)
    runtime.consumer.bind(pool, topic_prefix=kafka.topic_prefix)
    return runtime, pool


async def _seed(services: dict[str, ConsumingService]) -> None:
    """Known orders, a warehouse with stock, a packed and a delivered order: fuzzed records
    that name them reach the handlers' deeper paths."""
    first, second = KNOWN["order_id"]
    sku, other_sku = KNOWN["sku"]
    warehouse = KNOWN["warehouse_id"][0]
    lines = [(sku, 2), (other_sku, 1)]
    orders = services["orders"]
    for order_id in (first, second):
        await orders.feed("orders.placed", order_placed(order_id=order_id, lines=lines))
    inventory = services["inventory"]
    async with unit_of_work(inventory.pool, schema=inventory.runtime.schema) as uow:
        await inventory_repo.upsert_warehouse(
            uow.conn, warehouse_id=warehouse, name="Fuzz", country="DE", postal_code="10115"
        )
    await inventory.feed(
        "inventory.stock-received",
        {"event_id": str(uuid4()), "warehouse_id": warehouse, "sku": sku, "quantity": 50},
    )
    for order_id in (first, second):
        accepted = order_accepted(order_id=order_id, lines=lines)
        for name in ("inventory", "shipping", "returns"):
            await services[name].feed("orders.accepted", accepted)
    await services["shipping"].feed("orders.packed", order_packed(first, warehouse_id=warehouse))
    await services["returns"].feed(
        "shipments.delivered",
        shipment_delivered(
            first,
            delivered_at=datetime.now(UTC) - timedelta(days=1),
            lines=lines,
            warehouse_id=warehouse,
        ),
    )


@pytest.fixture(scope="package")
async def consuming_services(
    infra: Infrastructure, role_password: str
) -> AsyncIterator[dict[str, ConsumingService]]:
    """Every service's consumer on one fresh database (a schema and role each)."""
    admin = await new_database(infra)
    urls = {
        name: await provision_service_database(admin, name, password=role_password)
        for name in SERVICES
    }
    kafka = new_kafka(infra)
    system = LocalSystem(
        SystemConfig(
            kafka=kafka,
            database_urls=urls,
            # a record that keeps failing is retried at once, not after seconds
            service_overrides={"consumer_retry_base_seconds": 0.005},
        ),
        with_sandbox=False,
    )
    services: dict[str, ConsumingService] = {}
    try:
        for name in SERVICES:
            runtime, pool = await _start(system, name, kafka)
            services[name] = ConsumingService(name, runtime, pool, kafka.topic_prefix)
        await _seed(services)
        yield services
    finally:
        for service in services.values():
            await service.pool.close()
            for cleanup in reversed(service.runtime.cleanups):
                await cleanup()


async def _seed_over_http(system: LocalSystem) -> None:
    """A warehouse, stock and two orders, entered as admin and shop would."""
    tokens = system.config.tokens
    warehouse = KNOWN["warehouse_id"][0]
    sku, other_sku = KNOWN["sku"]
    async with httpx.AsyncClient(timeout=30) as http:
        inventory = system.urls["inventory"]
        answer = await http.put(
            f"{inventory}/warehouses/{warehouse}",
            json={"name": "Fuzz", "country": "DE", "postal_code": "10115"},
            headers=bearer(tokens["admin"]),
        )
        answer.raise_for_status()
        for stocked in (sku, other_sku):
            answer = await http.post(
                f"{inventory}/stock/receipts",
                json={"warehouse_id": warehouse, "sku": stocked, "quantity": 50},
                headers=bearer(tokens["admin"]),
            )
            answer.raise_for_status()
        for order_id in KNOWN["order_id"]:
            answer = await http.post(
                f"{system.urls['orders']}/orders",
                json=order_placed(order_id=order_id, lines=[(sku, 2), (other_sku, 1)]),
                headers=bearer(tokens["shop"]),
            )
            answer.raise_for_status()


@pytest.fixture(scope="package")
async def running_system(infra: Infrastructure, role_password: str) -> AsyncIterator[LocalSystem]:
    """The whole system on real ports (as ``make_system`` starts it), shared by the HTTP
    property tests."""
    admin = await new_database(infra)
    urls = {
        name: await provision_service_database(admin, name, password=role_password)
        for name in SERVICES
    }
    system = LocalSystem(
        SystemConfig(
            kafka=new_kafka(infra),
            database_urls=urls,
            service_overrides={"consumer_retry_base_seconds": 0.05, "outbox_poll_seconds": 0.5},
        )
    )
    try:
        await system.start()
        await _seed_over_http(system)
        yield system
    finally:
        await system.stop()
