"""A running service: pool, migrations, topics, outbox relay, broker, background workers.

Each service's composition root (``services/<name>/main.py``) describes itself as a
:class:`ServiceDefinition`; :class:`ServiceRuntime` starts and stops the parts in
order. Nothing is created at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faststream.kafka import KafkaBroker

from shared.clock import Clock, SystemClock
from shared.db import MigrationSource, apply_migrations, create_pool, shared_migrations
from shared.messaging import (
    BrokerEpoch,
    EventConsumer,
    FetchPacer,
    OutboxRelay,
    create_broker,
    create_producer,
    ensure_topics,
    pace_fetches,
    subscribe,
    track_topics,
)
from shared.messaging.epoch import record_epoch
from shared.messaging.groups import (
    leave_unannounced,
    rejoin_as_new_member,
    settle_before_leaving,
    unannounced_leaves,
)
from shared.metrics import broker_losses, configure_metrics, forget, observe
from shared.ops_health import save_consumer_lag
from shared.settings import KafkaSettings, ServiceSettings
from shared.telemetry import configure_tracing
from shared.topics import dead_letter_topic

log = logging.getLogger("waybill.runtime")

Worker = Callable[["ServiceRuntime"], Awaitable[None]]


class BrokerLossRecoveryIncomplete(RuntimeError):
    """A step of the recovery from a broker's data loss did not complete; it is done again
    at the next look at the epoch."""


#: the longest any one shutdown step may take
STOP_STEP_SECONDS = 20.0


@dataclass
class ServiceDefinition:
    """What a service is made of; built by its composition root."""

    name: str
    migrations: MigrationSource
    consumer: EventConsumer
    produces: list[str]
    workers: list[Worker] = field(default_factory=list)


class ServiceRuntime:
    def __init__(
        self,
        definition: ServiceDefinition,
        *,
        settings: ServiceSettings,
        kafka: KafkaSettings,
        clock: Clock | None = None,
    ) -> None:
        self.definition = definition
        self.settings = settings
        self.kafka = kafka
        self.clock: Clock = clock or SystemClock()
        self.schema = definition.name
        self._pool: asyncpg.Pool | None = None
        self._producer: AIOKafkaProducer | None = None
        self._relay: OutboxRelay | None = None
        self._broker: KafkaBroker | None = None
        self._pacer: FetchPacer | None = None
        self._epoch: BrokerEpoch | None = None
        #: the broker epoch this instance saw last (None before its first look)
        self.broker_epoch: str | None = None
        self._workers: list[asyncio.Task[None]] = []
        self.extras: dict[str, Any] = {}
        #: run at stop, last first: clients the composition root opened
        self.cleanups: list[Callable[[], Awaitable[None]]] = []

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def consumer(self) -> EventConsumer:
        return self.definition.consumer

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._pool

    @property
    def relay(self) -> OutboxRelay:
        if self._relay is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._relay

    @property
    def producer(self) -> AIOKafkaProducer:
        """The producer of the outbox relay (and of the broker epoch's marker)."""
        if self._producer is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._producer

    @property
    def dsn(self) -> str:
        if not self.settings.database_url:
            raise RuntimeError(
                "WAYBILL_DATABASE_URL is not set: `waybill up` sets it for each service; "
                "`waybill run SERVICE` needs it pointing at your PostgreSQL server"
            )
        return self.settings.database_url

    def topics(self) -> list[str]:
        consumed = self.consumer.topics
        return sorted(
            set(consumed) | set(self.definition.produces) | {dead_letter_topic(t) for t in consumed}
        )

    async def start(self) -> None:
        log.info("starting %s", self.name)
        configure_tracing(self.name, otlp_endpoint=self.settings.otlp_endpoint)
        configure_metrics(self.name, otlp_endpoint=self.settings.otlp_endpoint)
        conn = await asyncpg.connect(self.dsn)
        try:
            await apply_migrations(
                conn, schema=self.schema, sources=[shared_migrations(), self.definition.migrations]
            )
        finally:
            await conn.close()
        self._pool = await create_pool(
            self.dsn,
            schema=self.schema,
            min_size=self.settings.db_pool_min,
            max_size=self.settings.db_pool_max,
        )
        await ensure_topics(self.kafka, self.topics())
        self._producer = create_producer(self.kafka, client_id=f"waybill-{self.name}-relay")
        await self._producer.start()
        # every topic the relay may publish: what it produces, and what a dead letter's
        # replay or a re-drive sends again
        await track_topics(self._producer, [self.kafka.topic_prefix + t for t in self.topics()])
        self._relay = OutboxRelay(
            dsn=self.dsn,
            pool=self._pool,
            schema=self.schema,
            producer=self._producer,
            batch_max=self.settings.outbox_batch_max,
            poll_seconds=self.settings.outbox_poll_seconds,
            topic_prefix=self.kafka.topic_prefix,
        )
        self._relay.start()
        self._epoch = BrokerEpoch(self.kafka, self._producer, client_id=f"waybill-{self.name}")
        await self._epoch.start()
        self.consumer.bind(self._pool, topic_prefix=self.kafka.topic_prefix)
        if self.consumer.topics:
            self._broker = create_broker(self.kafka, client_id=f"waybill-{self.name}")
            self._pacer = subscribe(
                self._broker,
                self.consumer,
                max_records=self.settings.consumer_batch_max,
                batch_timeout_ms=self.settings.consumer_batch_wait_ms,
                linger_ms=self.settings.consumer_linger_ms,
                linger_records=self.settings.consumer_linger_records,
                session_timeout_ms=self.kafka.session_timeout_ms,
                heartbeat_interval_ms=self.kafka.heartbeat_interval_ms,
                pacer=FetchPacer(
                    min_ms=self.kafka.fetch_wait_min_ms,
                    max_ms=self.kafka.fetch_wait_max_ms,
                    busy_ms=self.kafka.fetch_spacing_max_ms,
                    full_rate=self.kafka.fetch_spacing_full_rate,
                ),
            )
            await self._broker.start()
            pace_fetches(self._broker, self._pacer)
        for worker in [*self.definition.workers, _watch_outbox, _watch_broker, _watch_epoch]:
            self._workers.append(
                asyncio.create_task(self._supervise(worker), name=f"{self.name}-worker")
            )
        observe("waybill.outbox.backlog", self._outbox_backlog)
        observe("waybill.outbox.oldest_age", self._outbox_age)
        observe("waybill.consumer.lag", self._lag_observations)
        observe("waybill.process.restarts", self._restarts)
        log.info("%s started", self.name)

    def _outbox_backlog(self) -> list[tuple[float, dict[str, str]]]:
        return [(float(self.extras.get("outbox_backlog", 0)), {"service": self.name})]

    def _outbox_age(self) -> list[tuple[float, dict[str, str]]]:
        return [(float(self.extras.get("outbox_oldest_seconds", 0.0)), {"service": self.name})]

    def _restarts(self) -> list[tuple[float, dict[str, str]]]:
        return [(float(self.settings.supervisor_restarts), {"service": self.name})]

    def _lag_observations(self) -> list[tuple[float, dict[str, str]]]:
        lag: dict[tuple[str, int], int] = self.extras.get("consumer_lag", {})
        return [
            (float(n), {"service": self.name, "topic": topic, "partition": str(partition)})
            for (topic, partition), n in sorted(lag.items())
        ]

    async def _supervise(self, worker: Worker) -> None:
        # A background loop that crashes is logged and restarted, never silently gone.
        while True:
            try:
                await worker(self)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker of %s failed; restarting in 1 s", self.name)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        log.info("stopping %s", self.name)
        forget(self._outbox_backlog)
        forget(self._outbox_age)
        forget(self._lag_observations)
        forget(self._restarts)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()
        # Each step is bounded: a stop that hangs would outlive any orchestrator's grace period.
        if self._broker is not None:
            await self._bounded(
                settle_before_leaving(
                    self.group_consumers(), timeout=self.kafka.session_timeout_ms / 1000
                ),
                "group rebalance",
            )
            unannounced = unannounced_leaves(self.group_consumers())
            await self._bounded(self._broker.stop(), "broker")
            self._broker = None
            if unannounced and self._producer is not None:
                await self._bounded(
                    leave_unannounced(self._producer.client, unannounced), "group leave"
                )
        if self._relay is not None:
            await self._bounded(self._relay.stop(), "outbox relay")
            self._relay = None
        if self._epoch is not None:
            await self._bounded(self._epoch.stop(), "broker epoch reader")
            self._epoch = None
        if self._producer is not None:
            await self._bounded(self._producer.stop(), "producer")
            self._producer = None
        if self._pool is not None:
            if not await self._bounded(self._pool.close(), "database pool"):
                self._pool.terminate()
            self._pool = None
        for cleanup in reversed(self.cleanups):
            await cleanup()
        self.cleanups.clear()

    async def _bounded(self, step: Awaitable[Any], what: str) -> bool:
        try:
            await asyncio.wait_for(step, STOP_STEP_SECONDS)
            return True
        except TimeoutError:
            log.warning("%s of %s did not stop within %s s", what, self.name, STOP_STEP_SECONDS)
            return False

    def assigned_partitions(self) -> set[tuple[str, int]]:
        """The topic partitions this instance's consumer holds now (its share of the group)."""
        assigned: set[tuple[str, int]] = set()
        if self._broker is None:
            return assigned
        for subscriber in self._broker.subscribers:
            consumer = getattr(subscriber, "consumer", None)
            if consumer is not None:
                assigned |= {(tp.topic, tp.partition) for tp in consumer.assignment()}
        return assigned

    async def consumer_lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition (unprefixed topic): records not yet fetched.

        Computed from the high watermark the last fetch saw, not from ``end_offsets()``,
        which the embedded broker answers wrongly (INFRA.md). A partition not fetched from
        yet has no high watermark and is left out.
        """
        lag: dict[tuple[str, int], int] = {}
        if self._broker is None:
            return lag
        prefix = self.kafka.topic_prefix
        for subscriber in self._broker.subscribers:
            consumer = getattr(subscriber, "consumer", None)
            if consumer is None:
                continue
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue
                with contextlib.suppress(Exception):  # a partition revoked meanwhile
                    position = await asyncio.wait_for(consumer.position(tp), 1.0)
                    topic = tp.topic.removeprefix(prefix)
                    lag[(topic, tp.partition)] = max(0, highwater - position)
        return lag

    def group_consumers(self) -> list[AIOKafkaConsumer]:
        """The Kafka consumers of this instance's consumer group (none before start)."""
        if self._broker is None:
            return []
        found = (getattr(s, "consumer", None) for s in self._broker.subscribers)
        return [c for c in found if c is not None]

    async def check_epoch(self) -> None:
        """Read the broker epoch; when it is not the one seen before, the broker lost its
        data: publish the recent outbox again and read the topics from their beginning
        (shared/messaging/epoch.py).

        The new epoch is taken as seen only once every step of the recovery is done: a step
        that fails (the broker or the database still settling after the loss) raises, and
        the next look does the recovery again. Each step is safe to repeat: topics are made
        if missing, the outbox is set back once per epoch (``record_epoch``), and a consumer
        that joins and reads from the beginning again finds what it handled in its inbox."""
        assert self._epoch is not None
        epoch = await self._epoch.current(self.topics())
        if epoch is None or epoch == self.broker_epoch:
            return
        seen_before = self.broker_epoch
        if seen_before is not None:
            # this service's topics went with the data: make them now, before the relay's
            # next round or a consumer's rejoin, not at the next topic check
            await ensure_topics(self.kafka, self.topics())
            await self.refresh_metadata()
        window = self.settings.broker_loss_republish_seconds
        async with self.pool.acquire() as conn:
            republished = await record_epoch(conn, epoch, window_seconds=window)
        if republished is not None:
            broker_losses.add(1, {"service": self.name})
            log.warning(
                "%s: the broker lost its data (epoch %s, was %s); publishing the %d outbox "
                "events of the last %.0f s again",
                self.name,
                epoch,
                seen_before or "another one",
                republished,
                window,
            )
            if self._relay is not None:
                self._relay.wake()
        if seen_before is not None:
            # assigned again from the new topics' partitions, then, since what was published
            # after the loss and before this look is in the new topics, below offsets this
            # consumer may have passed in the old ones: from their beginning
            for consumer in self.group_consumers():
                if not await rejoin_as_new_member(consumer):
                    raise BrokerLossRecoveryIncomplete(
                        f"a consumer of {self.name} has not rejoined its group"
                    )
                if consumer.assignment():
                    await consumer.seek_to_beginning()
            log.warning("%s: reading its topics from the beginning again", self.name)
        self.broker_epoch = epoch

    async def refresh_metadata(self) -> None:
        """Have this instance's clients read the broker's metadata now, not within five
        minutes (aiokafka's ``metadata_max_age_ms``): after topics were made again, a topic
        may have other partitions than before. A broker that creates a topic when a record
        arrives for it (Tansu does, with 4 partitions) makes one that way whenever a producer
        (a shop, another service's relay) is faster than the services that create it. The
        consumers then rebalance onto every partition and the producer spreads keys over
        them; with the old metadata they would leave partitions unread.

        aiokafka has no public call for it: ``force_metadata_update`` of the client a
        consumer holds (the producer's is public as ``client``)."""
        clients = [consumer._client for consumer in self.group_consumers()]
        if self._producer is not None:
            clients.append(self._producer.client)
        for client in clients:
            await client.force_metadata_update()

    async def readiness(self) -> dict[str, bool]:
        """Whether the database and the broker answer."""
        database = broker = False
        with contextlib.suppress(Exception):
            database = await asyncio.wait_for(self.pool.fetchval("SELECT true"), 2.0) is True
        if self._producer is not None:
            with contextlib.suppress(Exception):
                broker = bool(
                    await asyncio.wait_for(self._producer.client.force_metadata_update(), 2.0)
                )
        return {"database": database, "broker": broker}


OUTBOX_WATCH_SECONDS = 5.0


async def _watch_outbox(runtime: ServiceRuntime) -> None:
    """Keep the outbox backlog and the age of its oldest row fresh for the metrics."""
    while True:
        async with runtime.pool.acquire() as conn:
            row = await conn.fetchrow(
                """
                SELECT count(*) AS backlog,
                       coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest
                FROM outbox WHERE id > (SELECT published_through FROM outbox_relay)
                """
            )
        if row is not None:
            runtime.extras["outbox_backlog"] = int(row["backlog"])
            runtime.extras["outbox_oldest_seconds"] = float(row["oldest"])
        await asyncio.sleep(OUTBOX_WATCH_SECONDS)


async def _watch_epoch(runtime: ServiceRuntime) -> None:
    """Read the broker epoch at once, then every ``broker_epoch_check_seconds``."""
    while True:
        try:
            await runtime.check_epoch()
        except Exception as exc:  # the broker is down or settling: look again next round
            log.warning(
                "%s: the broker epoch check did not complete (again in %.0f s): %s",
                runtime.name,
                runtime.settings.broker_epoch_check_seconds,
                str(exc) or type(exc).__name__,
            )
        await asyncio.sleep(runtime.settings.broker_epoch_check_seconds)


async def _watch_broker(runtime: ServiceRuntime) -> None:
    """Every ``broker_check_seconds``: create this service's topics if they are missing and
    measure its consumer lag.

    Topics go missing when a memory-only broker (the embedded one) restarts; the epoch
    check (``_watch_epoch``) notices that within seconds, creates them and publishes the
    events that were in flight again; this round is the slower check of the topics alone.
    """
    interval = runtime.settings.broker_check_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            if await ensure_topics(runtime.kafka, runtime.topics()):
                await runtime.refresh_metadata()
        except Exception as exc:  # the broker is down: say so, look again next round
            log.warning("%s could not check its topics: %s", runtime.name, exc)
        if runtime._broker is not None and runtime._pacer is not None:
            pace_fetches(runtime._broker, runtime._pacer)  # a consumer made anew is paced too
        lag = await runtime.consumer_lag()
        runtime.extras["consumer_lag"] = lag
        async with runtime.pool.acquire() as conn:
            await save_consumer_lag(conn, lag)
