"""Helpers for tests against the real broker: publish, collect events, wait for conditions."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from uuid import uuid4

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI

from shared.messaging.kafka import client_options
from shared.ops_health import messaging_health
from shared.settings import KafkaSettings
from waybill.system import LocalSystem, ServedApp, bind_socket

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T | None] | T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        result = probe()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        last = result
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


async def describe_consumer(consumer: AIOKafkaConsumer, *, prefix: str = "") -> dict[str, Any]:
    """Where a consumer stands, for a failing test's report: its group membership, how many
    partitions it holds and, for those not empty and unread, ``position/high watermark``."""
    coordinator = getattr(consumer, "_coordinator", None)
    held = sorted(consumer.assignment())
    partitions: dict[str, str] = {}
    for tp in held:
        try:
            position: Any = await asyncio.wait_for(consumer.position(tp), 1.0)
        except Exception as exc:  # no position yet (the offset reset is under way)
            position = type(exc).__name__
        highwater = consumer.highwater(tp)
        if position == 0 and highwater in (0, None):
            continue
        partitions[f"{tp.topic.removeprefix(prefix)}[{tp.partition}]"] = f"{position}/{highwater}"
    return {
        "group": getattr(coordinator, "group_id", None),
        "member": getattr(coordinator, "member_id", None),
        "generation": getattr(coordinator, "generation", None),
        "held": len(held),
        "partitions": partitions,
    }


async def describe_system(system: LocalSystem) -> dict[str, Any]:
    """What each service of a running system holds, for a failing test's report: its
    consumers, its relay and its messaging health, so that a test that waited in vain says
    where the event stopped."""
    described: dict[str, Any] = {}
    prefix = system.config.kafka.topic_prefix
    for name, runtime in system.runtimes.items():
        state: dict[str, Any] = {
            "consumers": [
                await describe_consumer(c, prefix=prefix) for c in runtime.group_consumers()
            ]
        }
        with contextlib.suppress(Exception):  # a runtime that did not start has no relay
            cluster = runtime.producer.client.cluster
            state["relay"] = {
                "leader": runtime.relay.is_leader,
                "published": runtime.relay.published_total,
                # the topics it publishes that its producer has no partitions of
                "unknown_topics": sorted(
                    t
                    for t in runtime.definition.produces
                    if not cluster.partitions_for_topic(prefix + t)
                ),
            }
        try:  # what GET /ops/health shows of it: outbox backlog, dead letters, lag, epoch
            async with runtime.pool.acquire() as conn:
                state["messaging"] = await asyncio.wait_for(
                    messaging_health(conn, fresh_seconds=60), 5.0
                )
        except Exception as exc:
            state["messaging"] = repr(exc)
        described[name] = state
    return described


class EventLog:
    """Reads topics from the beginning into memory, so tests can wait for events."""

    def __init__(self, kafka: KafkaSettings, topics: Iterable[str]) -> None:
        self._kafka = kafka
        self._topics = sorted(set(topics))
        self.records: dict[str, list[Any]] = defaultdict(list)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            *[self._kafka.topic_prefix + t for t in self._topics],
            group_id=f"test-log-{uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=self._kafka.session_timeout_ms,
            heartbeat_interval_ms=self._kafka.heartbeat_interval_ms,
            **client_options(self._kafka),
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            topic = record.topic.removeprefix(self._kafka.topic_prefix)
            try:
                value: Any = json.loads(record.value)
            except (ValueError, TypeError):
                value = record.value
            self.records[topic].append(value)

    async def describe(self) -> dict[str, Any]:
        """What the log has read, and where its consumer stands (a failing wait's report)."""
        seen = {topic: len(events) for topic, events in sorted(self.records.items())}
        if self._consumer is None:
            return {"seen": seen}
        consumer = await describe_consumer(self._consumer, prefix=self._kafka.topic_prefix)
        return {"seen": seen, **consumer}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    def about(self, topic: str, *, distinct: bool = False, **match: Any) -> list[dict[str, Any]]:
        """The events on ``topic`` whose fields equal ``match``. With ``distinct``, one record
        per ``event_id`` (the first): a re-drive or a redelivery repeats an event, it does not
        add one, and consumers are to treat the repeat as handled."""
        found = [
            e
            for e in self.records.get(topic, [])
            if isinstance(e, dict) and all(e.get(k) == v for k, v in match.items())
        ]
        if not distinct:
            return found
        first: dict[Any, dict[str, Any]] = {}
        for e in found:
            first.setdefault(e.get("event_id"), e)
        return list(first.values())

    async def wait(
        self,
        topic: str,
        *,
        count: int = 1,
        timeout: float = 30.0,
        distinct: bool = False,
        **match: Any,
    ) -> list[dict[str, Any]]:
        try:
            found: list[dict[str, Any]] = await wait_for(
                lambda: (
                    events
                    if len(events := self.about(topic, distinct=distinct, **match)) >= count
                    else None
                ),
                timeout=timeout,
                what=f"{count} event(s) on {topic} matching {match}",
            )
        except AssertionError as failed:
            raise AssertionError(f"{failed}; the log: {await self.describe()}") from None
        return found


class Publisher:
    """Publishes raw records to the system's topics, as a shop's producer would."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._producer = AIOKafkaProducer(acks="all", **client_options(kafka))

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, topic: str, value: bytes | dict[str, Any], *, key: str | None) -> None:
        payload = value if isinstance(value, bytes) else json.dumps(value).encode()
        await self._producer.send_and_wait(
            self._kafka.topic_prefix + topic,
            payload,
            key=key.encode() if key is not None else None,
        )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=30.0)


@asynccontextmanager
async def serving(make_app: Callable[[str], FastAPI]) -> AsyncIterator[tuple[str, FastAPI]]:
    """Serve ``make_app(base_url)`` with uvicorn on a free port of 127.0.0.1."""
    sock = bind_socket("127.0.0.1", 0)
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = make_app(base_url)
    served = ServedApp("test server", app, sock)
    await served.start(within_seconds=10)
    try:
        yield base_url, app
    finally:
        await served.stop(within_seconds=15)
