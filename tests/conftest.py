"""Fixtures: real infrastructure once per session, an isolated system per test that asks.

Infrastructure is chosen as DESIGN.md says: external servers from WAYBILL_KAFKA_BOOTSTRAP
and WAYBILL_DATABASE_URL, else testcontainers when a Docker engine answers, else the
embedded broker and PostgreSQL. Each system gets its own database and topic prefix, so
tests never see each other's events or rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from shared.infra import Infrastructure, provision_service_database, start_infrastructure
from shared.infra.kafka import EmbeddedKafka
from shared.logs import HANDLER_NAME
from shared.settings import KafkaSettings
from tests.support import EventLog, Publisher, describe_system
from waybill.system import SERVICES, LocalSystem, SystemConfig


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infrastructure]:
    data_dir = Path(os.environ.get("WAYBILL_TEST_DATA_DIR") or tmp_path_factory.mktemp("infra"))
    infrastructure = start_infrastructure(data_dir=data_dir, durable=False)
    try:
        yield infrastructure
    finally:
        infrastructure.close()


log = logging.getLogger("waybill.tests")

#: the report of a test's call phase, for fixtures that say more when the test failed
CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test that ``request`` serves failed (read in a fixture's teardown)."""
    report = request.node.stash.get(CALL_REPORT, None)
    return report is not None and report.failed


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs the CLI in-process (``waybill.cli.main``) has it configure root
    logging: its own handler to standard error, and a level. Both go with the test, so
    later tests' records are not written twice, and at the level they chose."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def role_password() -> str:
    # one password per test session: every provisioning call sets the same one
    return secrets.token_urlsafe(18)


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def new_database(infra: Infrastructure) -> str:
    """A fresh database on the test server; returns its admin DSN."""
    name = f"waybill_t_{secrets.token_hex(5)}"
    conn = await asyncpg.connect(infra.admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(infra.admin_dsn, name)


def new_kafka(infra: Infrastructure) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=infra.kafka_bootstrap,
        topic_prefix=f"t{secrets.token_hex(4)}.",
        topic_partitions=3,
        # the embedded broker completes a group join after half the session timeout
        session_timeout_ms=2_000,
        heartbeat_interval_ms=500,
    )


@pytest.fixture
async def own_broker(tmp_path: Path) -> AsyncIterator[EmbeddedKafka]:
    """An embedded broker of the test's own, for a test that restarts it or needs a
    consumer group's first join. Name it before ``make_system`` in the test's arguments:
    it then stops after the systems the test made."""
    broker = EmbeddedKafka(log_path=tmp_path / "tansu.log")
    await asyncio.to_thread(broker.start)
    try:
        yield broker
    finally:
        await asyncio.to_thread(broker.stop)


def kafka_on(
    broker: EmbeddedKafka,
    topic_prefix: str,
    *,
    session_timeout_ms: int = 2_000,
    heartbeat_interval_ms: int = 500,
) -> KafkaSettings:
    """Settings for ``broker``, with two partitions per topic (the embedded default)."""
    return KafkaSettings(
        bootstrap=broker.bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=2,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms,
    )


@pytest.fixture
async def admin_dsn(infra: Infrastructure) -> str:
    return await new_database(infra)


MakeSystem = Callable[..., Awaitable[LocalSystem]]


@pytest.fixture
async def make_system(
    infra: Infrastructure, role_password: str, request: pytest.FixtureRequest
) -> AsyncIterator[MakeSystem]:
    """Start an isolated system: ``await make_system(autopick=True, services=[...])``. When
    the test fails, where each service's consumers, relay and outbox stood is logged."""
    systems: list[LocalSystem] = []

    async def make(
        *,
        services: list[str] | None = None,
        clock: Any = None,
        with_sandbox: bool = True,
        kafka: KafkaSettings | None = None,
        **config: Any,
    ) -> LocalSystem:
        admin = await new_database(infra)
        urls = {
            name: await provision_service_database(admin, name, password=role_password)
            for name in SERVICES
        }
        overrides = {"consumer_retry_base_seconds": 0.05, "outbox_poll_seconds": 0.5}
        overrides.update(config.pop("service_overrides", {}))
        system = LocalSystem(
            SystemConfig(
                kafka=kafka or new_kafka(infra),
                database_urls=urls,
                service_overrides=overrides,
                **config,
            ),
            services=services or list(SERVICES),
            clock=clock,
            with_sandbox=with_sandbox,
        )
        systems.append(system)
        await system.start()
        return system

    yield make
    if failed(request):
        for system in systems:
            state = await describe_system(system)
            log.warning(
                "after the failure, system %s: %s",
                system.config.kafka.topic_prefix,
                json.dumps(state, default=str),
            )
    for system in reversed(systems):
        await system.stop()


@pytest.fixture
async def event_log_factory() -> AsyncIterator[Callable[..., Awaitable[EventLog]]]:
    logs: list[EventLog] = []

    async def make(kafka: KafkaSettings, topics: list[str]) -> EventLog:
        log = EventLog(kafka, topics)
        await log.start()
        logs.append(log)
        return log

    yield make
    for log in logs:
        await log.stop()


@pytest.fixture
async def publisher_factory() -> AsyncIterator[Callable[[KafkaSettings], Awaitable[Publisher]]]:
    publishers: list[Publisher] = []

    async def make(kafka: KafkaSettings) -> Publisher:
        publisher = Publisher(kafka)
        await publisher.start()
        publishers.append(publisher)
        return publisher

    yield make
    for publisher in publishers:
        await publisher.stop()
