"""``waybill bench``: the end-to-end benchmark (DESIGN.md, Performance).

One invocation starts the system the way ``waybill up`` does (embedded broker and
PostgreSQL, the carrier sandbox without faults, every service its own process, automatic
picking), stocks it, and measures in phases:

- peak: N orders produced as fast as the shop's producer goes; orders/s from the first
  produce to the N-th ``shipments.label-created``, and the steady rate (the middle 80 %);
- latency ``orders.placed`` to ``shipments.label-created`` at a fixed offered rate of half
  the peak, and at a low rate (10 orders/s);
- idle: the CPU the system uses with nothing to do;
- on the same broker and database, after Waybill's processes stopped: the ceiling (a null
  pipeline of the same number of hops, batched) and the naive one-at-a-time baseline.

CPU is summed over every process of the system (the services, broker, PostgreSQL with
its backends, sandbox) from /proc; memory is each process's peak (PostgreSQL: the
proportional set size of the postmaster and its backends, shared memory counted once).
At the end the bench checks that every order got exactly one label at the carrier and
that stock moved by exactly the units ordered, and fails loudly if not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from shared import topics
from shared.infra import Infrastructure, start_infrastructure
from shared.messaging.epoch import BrokerEpoch
from shared.messaging.fetch import FetchPacer
from shared.messaging.kafka import client_options
from shared.settings import KafkaSettings
from waybill import terminal
from waybill.processes import Child, ProcessSystem, SystemOptions
from waybill.terminal import ViewTable
from waybill.up import (
    DEMO_SKUS,
    demo_order,
    receive_demo_stock,
    register_demo_warehouses,
)

#: the hops of the path placed -> label: orders (intake), inventory (reservation, automatic
#: picking and packing), shipping (the packed order) and shipping's label worker
PATH_HOPS = 4
LOW_RATE = 10.0


@dataclass
class BenchOptions:
    orders: int = 20_000
    full: bool = False
    replicas: int = 1
    partitions: int = 2
    latency_seconds: float = 20.0
    low_rate: float = LOW_RATE
    idle_seconds: float = 10.0
    hops: int = PATH_HOPS
    #: orders through the naive baseline (it is slow: a few thousand are plenty)
    naive_orders: int = 2_000
    references: bool = True
    latency: bool = True
    output: Path | None = None
    as_json: bool = False
    data_dir: Path | None = None
    keep_data: bool = False
    #: sample every service with py-spy during each phase into this folder
    profile: Path | None = None
    #: more WAYBILL_* settings for every service (experiments)
    service_env: dict[str, str] = field(default_factory=dict)
    seed: int = 1


# --- what the system's processes use ----------------------------------------------------


class ProcessMeter:
    """CPU seconds and peak memory of named processes, read from /proc through psutil.

    A process named in ``trees`` counts with its children (PostgreSQL's postmaster and its
    backends, also those that ended: their time is the postmaster's children time).
    """

    def __init__(self, pids: dict[str, int], *, trees: Iterable[str] = ()) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.trees = set(trees)
        self.peak_mb: dict[str, float] = dict.fromkeys(self.processes, 0.0)
        self._task: asyncio.Task[None] | None = None

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) of each named process so far."""
        used: dict[str, float] = {}
        for name, process in self.processes.items():
            try:
                times = process.cpu_times()
                total = times.user + times.system
                if name in self.trees:
                    total += times.children_user + times.children_system
                    for child in process.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            t = child.cpu_times()
                            total += t.user + t.system
            except psutil.Error:
                total = math.nan
            used[name] = total
        return used

    def _memory_mb(self, name: str, process: psutil.Process) -> float:
        if name not in self.trees:
            return float(process.memory_info().rss) / 2**20
        total = 0.0
        for p in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += float(p.memory_full_info().pss)
        return total / 2**20

    async def _sample(self) -> None:
        while True:
            for name, process in self.processes.items():
                with contextlib.suppress(psutil.Error):
                    self.peak_mb[name] = max(self.peak_mb[name], self._memory_mb(name, process))
            await asyncio.sleep(1.0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before.get(name, 0.0), 3) for name in after}


# --- watching topics --------------------------------------------------------------------


#: the shop's producer lingers as Kafka's own clients do by default (linger.ms 5 in the Java
#: client since Kafka 4.0, and in librdkafka): records sent within 5 ms share a batch. The
#: embedded broker stores every batch as an object and lists a partition's objects on
#: every fetch of it (docs/performance.md), so a shop that sends a batch per record makes
#: every later fetch of orders.placed dearer.
SHOP_LINGER_MS = 5

#: how often the benchmark's watch fetches (ms): its times are the records' timestamps
WATCH_FETCH_MS = 250
#: how often the shop sends an order the broker refused before it gives up
SHOP_SEND_ATTEMPTS = 10


class TopicWatch:
    """Reads topics from the beginning (no consumer group: no join delay) and keeps, for each
    order_id (the record key) of each topic, when its first record was published: the
    record's timestamp, set by the producer that sent it (a service's relay), in wall-clock
    seconds. So the times do not depend on how often the watch fetches, and it can fetch
    rarely: a fetch costs the broker the same whether it brings one record or a thousand."""

    def __init__(self, kafka: KafkaSettings, names: Sequence[str], *, partitions: int) -> None:
        self.kafka = kafka
        self.partitions = partitions
        self.names = [kafka.topic_prefix + n for n in names]
        self.first_seen: dict[str, dict[str, float]] = {n: {} for n in names}
        #: each topic's keys in the order they were first seen (what a Tally reads on from)
        self.arrivals: dict[str, list[str]] = {n: [] for n in names}
        self.records = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.on_record: list[Any] = []
        self.pacer = FetchPacer(min_ms=WATCH_FETCH_MS, max_ms=500)

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            # a broker that lost its data starts its offsets again: read the new log whole
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.pacer.max_ms,
            max_partition_fetch_bytes=4 * 2**20,
            **client_options(self.kafka),
        )
        await consumer.start()
        # the shop's watch fetches the way the services do (shared/messaging/fetch.py)
        self.pacer.attach(consumer)
        await self._wait_for_topics(consumer)
        partitions = [
            TopicPartition(name, p) for name in self.names for p in range(self.partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run())

    async def _wait_for_topics(self, consumer: AIOKafkaConsumer) -> None:
        """Until the broker has every watched topic (created a moment ago, or made again
        after the broker lost its data)."""
        deadline = time.monotonic() + 30
        while True:
            known = await consumer.topics()
            if set(self.names) <= known or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        if not set(self.names) <= known:
            raise BenchFailed(f"topics missing on the broker: {sorted(set(self.names) - known)}")

    async def _run(self) -> None:
        assert self._consumer is not None
        prefix = self.kafka.topic_prefix
        while True:
            batches = await self._consumer.getmany(timeout_ms=50, max_records=10_000)
            if not batches:
                continue
            self.pacer.records_seen()
            now = time.time()
            for tp, records in batches.items():
                topic = tp.topic.removeprefix(prefix)
                seen, arrivals = self.first_seen[topic], self.arrivals[topic]
                for record in records:
                    self.records += 1
                    if record.key is None:
                        continue
                    key = record.key.decode()
                    if key not in seen:
                        seen[key] = record.timestamp / 1000 if record.timestamp > 0 else now
                        arrivals.append(key)
                        for callback in self.on_record:
                            callback(tp.topic.removeprefix(prefix), key, record.value)
            # a few fetches a second: the times kept are the records' own, and the shop's
            # watch costs the broker little of what it measures
            await asyncio.sleep(WATCH_FETCH_MS / 1000)

    async def rewind(self) -> None:
        """Read every topic from its beginning again (after the broker lost its data, the
        new topics' first records lie below the offsets already read), every partition the
        broker has now (a topic made again may have more: see
        ``ServiceRuntime.refresh_metadata``); what was seen stays."""
        consumer = self._consumer
        if consumer is None:
            return
        await self._wait_for_topics(consumer)
        await consumer._client.force_metadata_update()  # no public call (aiokafka 0.14)
        partitions = [
            TopicPartition(name, p)
            for name in self.names
            for p in sorted(consumer.partitions_for_topic(name) or range(self.partitions))
        ]
        if set(partitions) != consumer.assignment():
            consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)

    async def stop(self) -> None:
        """Stop watching (a second call does nothing); what was seen stays."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def tally(self, keys: Iterable[str], *topics: str) -> Tally:
        """A running count of ``keys`` seen on any of ``topics``."""
        return Tally([self.arrivals[t] for t in topics], keys)


class Tally:
    """How many of a set of keys some topics carried, counted as they arrive: a check
    reads only what came since the last one. (Looking each of 20,000 keys up a hundred
    times a second cost the benchmark a fifth of a core, taken from the system it
    measures.)"""

    def __init__(self, arrivals: list[list[str]], keys: Iterable[str]) -> None:
        self._arrivals = arrivals
        self._read = [0] * len(arrivals)
        self._wanted = set(keys)
        self._found: set[str] = set()

    @property
    def total(self) -> int:
        return len(self._wanted)

    def done(self) -> int:
        for i, arrivals in enumerate(self._arrivals):
            new = arrivals[self._read[i] :]
            self._read[i] += len(new)
            self._found.update(k for k in new if k in self._wanted)
        return len(self._found)

    def complete(self) -> bool:
        return self.done() == len(self._wanted)


def percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))
    return ordered[index]


# --- results ----------------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    orders: int
    offered_rate: float | None
    seconds: float
    rate: float
    steady_rate: float | None
    latency_ms: dict[str, float]
    cpu_ms_per_order: float
    cpu_seconds: dict[str, float]
    #: records per batch each service's consumers took from the broker
    batch_sizes: dict[str, float] = field(default_factory=dict)
    #: per order: database transactions committed and rows written (pg_stat_database)
    database_per_order: dict[str, float] = field(default_factory=dict)
    #: p50 and p99 of each hop: placed -> accepted -> packed -> label (ms)
    hops_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    #: --full: placed -> return decision
    lifecycle: dict[str, float] | None = None


@dataclass
class ReferenceResult:
    name: str
    hops: int
    orders: int
    seconds: float
    rate: float
    cpu_ms_per_order: float
    cpu_seconds: dict[str, float]


@dataclass
class BenchResult:
    started_at: str
    machine: dict[str, Any]
    options: dict[str, Any]
    phases: list[PhaseResult] = field(default_factory=list)
    idle_cores: float | None = None
    idle_cpu_seconds: dict[str, float] = field(default_factory=dict)
    references: list[ReferenceResult] = field(default_factory=list)
    peak_memory_mb: dict[str, float] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    valid: bool = False
    ratios: dict[str, float] = field(default_factory=dict)


class BenchFailed(RuntimeError):
    """A number the bench would print is not real: an order lost, doubled or stuck."""


# --- the bench --------------------------------------------------------------------------


@dataclass
class PhaseCounts:
    """How far a phase is: the orders the shop placed, and those that came back labelled
    (and, ``--full``, with their return decided)."""

    phase: str
    orders: int
    placed: int
    labelled: int
    decided: int | None = None


class PhaseProgress:
    """While a phase runs: on a terminal, a progress bar redrawn in place twice a second;
    piped, a line on stderr every second. Both read counts the bench keeps anyway, and the
    labels per second over the last two seconds."""

    #: the rate shown is the labels of the last this many seconds
    WINDOW_SECONDS = 2.0
    #: seconds between refreshes of the display, and between plain lines
    TERMINAL_INTERVAL = 0.5
    PLAIN_INTERVAL = 1.0

    def __init__(self, console: Console) -> None:
        self.console = console
        self._task: asyncio.Task[None] | None = None

    def start(self, count: Callable[[], PhaseCounts]) -> None:
        self._task = asyncio.create_task(self._run(count))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, count: Callable[[], PhaseCounts]) -> None:
        first, started = count(), time.monotonic()
        interval = self.TERMINAL_INTERVAL if self.console.is_terminal else self.PLAIN_INTERVAL
        kept = max(1, round(self.WINDOW_SECONDS / interval))
        samples = deque([(started, first.labelled)], maxlen=kept)
        bar = Progress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        task = bar.add_task(first.phase, total=first.orders, counts="")

        def now_counts() -> tuple[PhaseCounts, float]:
            """The counts, and the labels per second since the oldest sample kept."""
            now, counts = time.monotonic(), count()
            then, before = samples[0]
            samples.append((now, counts.labelled))
            return counts, (counts.labelled - before) / (now - then) if now > then else 0.0

        with terminal.live(bar, console=self.console) as display:
            if display is None:
                while True:
                    await asyncio.sleep(interval)
                    counts, rate = now_counts()
                    elapsed = time.monotonic() - started
                    line = f"  [{elapsed:6.1f} s] {describe(counts, rate)}"
                    print(line, file=self.console.file, flush=True)
            try:
                while True:
                    await asyncio.sleep(interval)
                    self._update(bar, task, *now_counts())
                    display.refresh()
            finally:  # the phase is over: the display keeps how it ended
                self._update(bar, task, *now_counts())
                display.refresh()

    @staticmethod
    def _update(bar: Progress, task: TaskID, counts: PhaseCounts, rate: float) -> None:
        done = counts.labelled if counts.decided is None else counts.decided
        bar.update(task, completed=done, counts=describe(counts, rate, named=False))


def describe(counts: PhaseCounts, rate: float, *, named: bool = True) -> str:
    """``peak: placed 1200/20000, labelled 900/20000, 850 labelled/s``."""
    n = counts.orders
    text = f"placed {counts.placed}/{n}, labelled {counts.labelled}/{n}"
    if counts.decided is not None:
        text += f", decided {counts.decided}/{n}"
    text += f", {rate:.0f} labelled/s"
    return f"{counts.phase}: {text}" if named else text


class Bench:
    def __init__(self, options: BenchOptions, infra: Infrastructure, system: ProcessSystem):
        self.options = options
        self.infra = infra
        self.system = system
        self.kafka = KafkaSettings(bootstrap=infra.kafka_bootstrap)
        self.rng = random.Random(options.seed)
        self.run_id = secrets.token_hex(3)
        self.placed: dict[str, dict[str, Any]] = {}
        self.sent_at: dict[str, float] = {}
        self.received: Counter[str] = Counter()
        self.progress = PhaseProgress(terminal.console_for(sys.stderr))
        # the hops of the path, to tell where an order's time goes
        watched = [
            topics.ORDERS_ACCEPTED,
            topics.ORDERS_REJECTED,
            topics.ORDERS_PACKED,
            topics.SHIPMENTS_LABEL_CREATED,
        ]
        if options.full:
            watched += [
                topics.SHIPMENTS_SHIPPED,
                topics.SHIPMENTS_DELIVERED,
                topics.RETURNS_APPROVED,
                topics.RETURNS_REJECTED,
            ]
        self.watch = TopicWatch(self.kafka, watched, partitions=options.partitions)
        self.producer = AIOKafkaProducer(
            acks="all",
            linger_ms=SHOP_LINGER_MS,
            max_batch_size=512 * 1024,
            **client_options(self.kafka),
        )
        self.meter = ProcessMeter(self._pids(), trees=["postgres"])
        self.http = httpx.AsyncClient(timeout=30)
        self._returns_sent: set[str] = set()
        self._pending: set[asyncio.Task[None]] = set()

    def _pids(self) -> dict[str, int]:
        pids = dict(self.system.pids())
        if self.infra.embedded_kafka is not None and self.infra.embedded_kafka.pid:
            pids["broker"] = self.infra.embedded_kafka.pid
        if self.infra.embedded_postgres is not None and self.infra.embedded_postgres.pid:
            pids["postgres"] = self.infra.embedded_postgres.pid
        return pids

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    async def start(self) -> None:
        await self.producer.start()
        await self.watch.start()
        if self.options.full:
            self.watch.on_record.append(self._on_lifecycle_event)
        self.meter.start()
        await register_demo_warehouses(
            self.http, self.system.urls["inventory"], self.system.tokens["admin"]
        )

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await self.meter.stop()
        await self.watch.stop()
        await self.producer.stop()
        await self.http.aclose()

    # -- the shop ---------------------------------------------------------------------

    def order_id(self, phase: str, i: int) -> str:
        """The id of the ``i``-th order the phase places."""
        return f"bench-{self.run_id}-{phase}-{i:06d}"

    def new_orders(self, phase: str, n: int) -> list[dict[str, Any]]:
        orders = [demo_order(i, rng=self.rng, order_id=self.order_id(phase, i)) for i in range(n)]
        for order in orders:
            order["shop_id"] = "bench-shop"
        return orders

    async def stock_for(self, orders: Sequence[dict[str, Any]]) -> None:
        """Stock enough for ``orders`` in every warehouse (receipts are counted)."""
        units: Counter[str] = Counter()
        for order in orders:
            for line in order["lines"]:
                units[line["sku"]] += line["quantity"]
        await receive_demo_stock(
            self.http, self.system.urls["inventory"], self.system.tokens["admin"], units
        )
        for sku, quantity in units.items():
            self.received[sku] += quantity * 3  # one receipt per demo warehouse

    async def send(self, order: dict[str, Any], body: bytes) -> asyncio.Future[Any]:
        """Place ``order``; the future ends when the broker acknowledged it."""
        self.placed[order["order_id"]] = order
        self.sent_at[order["order_id"]] = time.time()  # the clock of record timestamps
        return await self._send_placed(order["order_id"], body)

    async def _send_placed(self, order_id: str, body: bytes) -> asyncio.Future[Any]:
        delivery: asyncio.Future[Any]
        try:
            delivery = await self.producer.send(topics.ORDERS_PLACED, body, key=order_id.encode())
        except KafkaError as exc:  # no broker to take it now: sent again below
            delivery = asyncio.get_running_loop().create_future()
            delivery.set_exception(exc)
        return asyncio.ensure_future(self._until_acknowledged(order_id, body, delivery))

    async def _until_acknowledged(
        self, order_id: str, body: bytes, delivery: asyncio.Future[Any]
    ) -> Any:
        # a shop sends again what the broker refused (the same event_id: orders absorbs a
        # copy it had), as every Kafka producer must that is not to lose orders
        for attempt in range(SHOP_SEND_ATTEMPTS):
            try:
                return await delivery
            except KafkaError:
                if attempt == SHOP_SEND_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                with contextlib.suppress(KafkaError):  # counted as the next attempt's failure
                    delivery = await self.producer.send(
                        topics.ORDERS_PLACED, body, key=order_id.encode()
                    )
        raise AssertionError("unreachable")

    async def after_broker_loss(self, *, placed_since: float, timeout: float = 120.0) -> int:
        """What a shop does when the broker lost its data (a new broker epoch,
        shared/messaging/epoch.py): wait until the services have made the topics again, read
        its topics from their beginning, and send again every order it placed since
        ``placed_since`` (wall-clock), each with its own event_id, so orders absorbs those it
        had. Returns how many were sent again."""
        epoch = BrokerEpoch(self.kafka, self.producer, client_id="waybill-bench-shop")
        await epoch.start()
        try:
            deadline = time.monotonic() + timeout
            while await epoch.read() is None:
                if time.monotonic() > deadline:
                    raise BenchFailed(f"no broker epoch {timeout:.0f} s after the broker loss")
        finally:
            await epoch.stop()
        await self.watch.rewind()
        await self.producer.client.force_metadata_update()  # orders.placed may have new partitions
        again = [i for i, at in self.sent_at.items() if at >= placed_since]
        deliveries = [
            await self._send_placed(i, json.dumps(self.placed[i]).encode()) for i in again
        ]
        await asyncio.gather(*deliveries)
        return len(again)

    def _on_lifecycle_event(self, topic: str, order_id: str, value: bytes) -> None:
        # the shop follows deliveries and asks to return what arrived (full mode)
        if topic != topics.SHIPMENTS_DELIVERED or order_id not in self.placed:
            return
        if order_id in self._returns_sent:
            return
        self._returns_sent.add(order_id)
        task = asyncio.create_task(self._request_return(self.placed[order_id]))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _request_return(self, order: dict[str, Any]) -> None:
        request = {
            "event_id": str(uuid4()),
            "return_id": f"ret-{order['order_id']}",
            "order_id": order["order_id"],
            "requested_at": datetime.now(UTC).isoformat(),
            "lines": [{"sku": x["sku"], "quantity": x["quantity"]} for x in order["lines"]],
        }
        await self.producer.send(
            topics.RETURNS_REQUESTED, json.dumps(request).encode(), key=order["order_id"].encode()
        )

    # -- phases -----------------------------------------------------------------------

    def decided(self, order_id: str) -> float | None:
        seen = self.watch.first_seen
        return seen[topics.RETURNS_APPROVED].get(order_id) or seen[topics.RETURNS_REJECTED].get(
            order_id
        )

    def done_tally(self, ids: Sequence[str]) -> Tally:
        """Orders of ``ids`` done: labelled (or, ``--full``, with a return decided)."""
        if not self.options.full:
            return self.watch.tally(ids, topics.SHIPMENTS_LABEL_CREATED)
        return self.watch.tally(ids, topics.RETURNS_APPROVED, topics.RETURNS_REJECTED)

    async def phase(self, name: str, n: int, rate: float | None) -> PhaseResult:
        orders = self.new_orders(name, n)
        await self.stock_for(orders)
        bodies = [json.dumps(o).encode() for o in orders]
        ids = [o["order_id"] for o in orders]
        labels = self.watch.first_seen[topics.SHIPMENTS_LABEL_CREATED]
        labelled = self.watch.tally(ids, topics.SHIPMENTS_LABEL_CREATED)
        done = self.done_tally(ids)
        sent = 0

        def count() -> PhaseCounts:
            decided = done.done() if self.options.full else None
            return PhaseCounts(name, n, sent, labelled.done(), decided)

        self.say(f"phase {name}: {n} orders" + (f" at {rate:.0f}/s" if rate else " at once"))
        self.progress.start(count)
        profilers = await self.start_profilers(name)
        cpu_before = self.meter.cpu()
        db_before = await self.database_counters()
        consumed_before = await self.consumed()
        started, paced_from = time.time(), time.monotonic()
        deliveries: list[asyncio.Future[Any]] = []
        try:
            for i, (order, body) in enumerate(zip(orders, bodies, strict=True)):
                if rate:
                    wait = paced_from + i / rate - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                deliveries.append(await self.send(order, body))
                sent += 1
            await asyncio.gather(*deliveries)
            await self._wait_done(done, timeout=max(120.0, n / 50))
        finally:
            await self.progress.stop()
            await self.stop_profilers(profilers)
        finished = max(self.decided(i) or 0.0 for i in ids) if self.options.full else None
        cpu_after = self.meter.cpu()
        db_after = await self.database_counters()
        consumed_after = await self.consumed()
        label_times = sorted(labels[i] for i in ids)
        last = label_times[-1]
        latencies = [(labels[i] - self.sent_at[i]) * 1000 for i in ids]
        steady = None
        if rate is None and n >= 100:
            # the middle 80 % of the labels: no start-up, no tail
            first, last_steady = n // 10, (9 * n) // 10
            span = label_times[last_steady] - label_times[first]
            if span > 0:
                steady = (last_steady - first) / span
        cpu = cpu_delta(cpu_before, cpu_after)
        seen = self.watch.first_seen
        accepted, packed = seen[topics.ORDERS_ACCEPTED], seen[topics.ORDERS_PACKED]
        stages = {
            "placed->accepted": [
                (accepted[i] - self.sent_at[i]) * 1000 for i in ids if i in accepted
            ],
            "accepted->packed": [
                (packed[i] - accepted[i]) * 1000 for i in ids if i in packed and i in accepted
            ],
            "packed->label": [(labels[i] - packed[i]) * 1000 for i in ids if i in packed],
        }
        hops_ms = {
            hop: {"p50": round(percentile(v, 0.5), 1), "p99": round(percentile(v, 0.99), 1)}
            for hop, v in stages.items()
        }
        lifecycle = None
        if finished is not None:
            decided = [((self.decided(i) or 0.0) - self.sent_at[i]) * 1000 for i in ids]
            lifecycle = {
                "seconds": round(finished - started, 3),
                "orders_per_second": round(n / (finished - started), 1),
                "p50_ms_to_decision": round(percentile(decided, 0.5), 1),
                "p99_ms_to_decision": round(percentile(decided, 0.99), 1),
            }
        return PhaseResult(
            name=name,
            orders=n,
            offered_rate=rate,
            seconds=round(last - started, 3),
            rate=round(n / (last - started), 1),
            steady_rate=round(steady, 1) if steady else None,
            latency_ms={
                "p50": round(percentile(latencies, 0.5), 1),
                "p95": round(percentile(latencies, 0.95), 1),
                "p99": round(percentile(latencies, 0.99), 1),
                "max": round(max(latencies), 1),
            },
            cpu_ms_per_order=round(sum(cpu.values()) * 1000 / n, 3),
            cpu_seconds=cpu,
            database_per_order={
                k: round((db_after[k] - db_before[k]) / n, 2) for k in db_after if k in db_before
            },
            hops_ms=hops_ms,
            batch_sizes={
                name: round(
                    (records - consumed_before[name][1])
                    / max(1, batches - consumed_before[name][0]),
                    1,
                )
                for name, (batches, records) in consumed_after.items()
                if name in consumed_before
            },
            lifecycle=lifecycle,
        )

    async def start_profilers(self, phase: str) -> list[asyncio.subprocess.Process]:
        """py-spy on every service process (``--profile``): collapsed stacks per process."""
        folder = self.options.profile
        if folder is None:
            return []
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        folder.mkdir(parents=True, exist_ok=True)
        profilers = []
        for name, pid in self.system.pids().items():
            out = folder / f"{phase}-{name.replace('#', '-')}.raw"
            profilers.append(
                await asyncio.create_subprocess_exec(
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                    "--nonblocking",
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
            )
        return profilers

    async def stop_profilers(self, profilers: list[asyncio.subprocess.Process]) -> None:
        for profiler in profilers:
            with contextlib.suppress(ProcessLookupError):
                profiler.send_signal(signal.SIGINT)
        for profiler in profilers:
            await profiler.wait()

    async def consumed(self) -> dict[str, tuple[int, int]]:
        """Batches and records each service instance's consumer has handled so far."""
        ops = {"Authorization": f"Bearer {self.system.tokens['ops']}"}
        counts: dict[str, tuple[int, int]] = {}
        for child in self.system.children:
            if child.name == "sandbox":
                continue
            url = self.system.instance_url(child.name)
            try:
                r = await self.http.get(f"{url}/ops/health", headers=ops)
            except httpx.TransportError:
                continue  # not running now (a replica that left, one restarting)
            r.raise_for_status()
            consumed = r.json()["consumed"]
            counts[child.name] = (consumed["batches"], consumed["records"])
        return counts

    async def settle(self, *, quiet_seconds: float = 1.0, timeout: float = 300.0) -> float:
        """Wait until no service's consumer has handled a record for ``quiet_seconds``:
        the previous phase's events (the timeline of its last orders, say) are worked off,
        so that the next phase measures its own orders only. Returns the seconds waited."""
        started = time.monotonic()
        last = await self.consumed()
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < quiet_seconds:
            if time.monotonic() - started > timeout:
                raise BenchFailed(f"the system was still busy {timeout:.0f} s after a phase")
            await asyncio.sleep(0.25)
            now = await self.consumed()
            if now != last:
                last, quiet_since = now, time.monotonic()
        waited = time.monotonic() - started
        self.say(f"settled: the system was quiet after {waited:.1f} s")
        return waited

    async def database_counters(self) -> dict[str, float]:
        """What PostgreSQL has done so far in the system's database."""
        conn = await asyncpg.connect(self.infra.admin_dsn)
        try:
            row = await conn.fetchrow(
                """
                SELECT xact_commit AS transactions,
                       tup_inserted + tup_updated + tup_deleted AS rows_written,
                       tup_inserted AS rows_inserted, tup_updated AS rows_updated
                FROM pg_stat_database WHERE datname = current_database()
                """
            )
        finally:
            await conn.close()
        return {k: float(v) for k, v in dict(row or {}).items()}

    async def _wait_done(self, done: Tally, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done.complete():
            if time.monotonic() > deadline:
                missing = done.total - done.done()
                raise BenchFailed(
                    f"{missing} of {done.total} orders not done after {timeout:.0f} s "
                    "(see the services' logs)"
                )
            await asyncio.sleep(0.01)

    async def idle(self) -> tuple[float, dict[str, float]]:
        self.say(f"idle: measuring the CPU of the idle system for {self.options.idle_seconds} s")
        await self.watch.stop()  # the shop stops watching: only the system's own CPU counts
        await asyncio.sleep(2.0)  # let the last acknowledgements and relays settle
        before = self.meter.cpu()
        started = time.monotonic()
        await asyncio.sleep(self.options.idle_seconds)
        cpu = cpu_delta(before, self.meter.cpu())
        return round(sum(cpu.values()) / (time.monotonic() - started), 4), cpu

    # -- checks -----------------------------------------------------------------------

    async def check(self, *, strict: bool = True) -> dict[str, Any]:
        """Every order one label at the carrier, stock moved by exactly the units ordered,
        no dead letters; raises BenchFailed otherwise (``strict``), or lists the problems."""
        ids = list(self.placed)
        r = await self.http.get(
            f"{self.system.urls['sandbox']}/sandbox/labels", params={"limit": 1_000_000}
        )
        r.raise_for_status()
        at_carrier = Counter(label["reference"] for label in r.json()["labels"])
        ordered: Counter[str] = Counter()
        for order in self.placed.values():
            for line in order["lines"]:
                ordered[line["sku"]] += line["quantity"]
        ops = {"Authorization": f"Bearer {self.system.tokens['ops']}"}
        stock: dict[str, dict[str, int]] = {}
        for sku in sorted(set(DEMO_SKUS) | set(ordered)):
            r = await self.http.get(f"{self.system.urls['inventory']}/stock/{sku}", headers=ops)
            r.raise_for_status()
            warehouses = r.json()["warehouses"]
            stock[sku] = {
                "received": self.received[sku],
                "ordered": ordered[sku],
                "on_hand": sum(w["on_hand"] for w in warehouses),
                "reserved": sum(w["reserved"] for w in warehouses),
            }
        dead_letters: dict[str, int] = {}
        for child in self.system.children:
            name = child.name.split("#")[0]
            if name == "sandbox" or name in dead_letters:
                continue
            r = await self.http.get(f"{self.system.urls[name]}/ops/health", headers=ops)
            r.raise_for_status()
            dead_letters[name] = r.json()["dead_letters"]
        checks = verdict(
            ids,
            labelled={i for i in ids if i in self.watch.first_seen[topics.SHIPMENTS_LABEL_CREATED]},
            labels_at_carrier=at_carrier,
            stock=stock,
            dead_letters=dead_letters,
            undecided=[i for i in ids if self.decided(i) is None] if self.options.full else [],
        )
        if checks["problems"] and strict:
            raise BenchFailed("; ".join(checks["problems"]))
        return checks


def verdict(
    placed: Sequence[str],
    *,
    labelled: set[str],
    labels_at_carrier: Counter[str],
    stock: dict[str, dict[str, int]],
    dead_letters: dict[str, int],
    undecided: Sequence[str] = (),
) -> dict[str, Any]:
    """What the run did, and every way in which it was not exactly once."""
    problems: list[str] = []
    missing = [i for i in placed if i not in labelled]
    if missing:
        problems.append(f"{len(missing)} orders have no shipments.label-created")
    doubled = {ref: n for ref, n in labels_at_carrier.items() if n > 1}
    if doubled:
        problems.append(f"{len(doubled)} orders have more than one label at the carrier")
    unlabelled = [i for i in placed if labels_at_carrier.get(i, 0) == 0]
    if unlabelled:
        problems.append(f"{len(unlabelled)} orders have no label at the carrier")
    strangers = set(labels_at_carrier) - set(placed)
    if strangers:
        problems.append(f"{len(strangers)} labels at the carrier for orders never placed")
    for sku, s in sorted(stock.items()):
        expected = s["received"] - s["ordered"]
        if s["on_hand"] != expected or s["reserved"] != 0:
            problems.append(
                f"stock of {sku} moved wrongly: received {s['received']}, ordered "
                f"{s['ordered']}, on hand {s['on_hand']} (expected {expected}), reserved "
                f"{s['reserved']} (expected 0)"
            )
    if any(dead_letters.values()):
        problems.append(f"dead letters: {dead_letters}")
    if undecided:
        problems.append(f"{len(undecided)} orders have no return decision")
    return {
        "orders": len(placed),
        "labelled": len(placed) - len(missing),
        "lost": len(missing),
        "doubled": len(doubled),
        "labels_at_carrier": sum(labels_at_carrier.values()),
        "units_ordered": sum(s["ordered"] for s in stock.values()),
        "units_shipped": sum(s["received"] - s["on_hand"] for s in stock.values()),
        "dead_letters": dead_letters,
        "stock": stock,
        "problems": problems,
    }


# --- the references ---------------------------------------------------------------------


async def run_reference(
    infra: Infrastructure,
    *,
    mode: str,
    hops: int,
    orders: int,
    partitions: int,
    logs: Path,
    rng: random.Random,
) -> ReferenceResult:
    """A chain of ``hops`` null-pipeline processes on the same broker and database."""
    prefix = f"bench{secrets.token_hex(3)}."
    database = f"waybill_bench_{mode}"
    admin = await asyncpg.connect(infra.admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    dsn = _with_database(infra.admin_dsn, database)
    kafka = KafkaSettings(bootstrap=infra.kafka_bootstrap)
    client = AIOKafkaAdminClient(**client_options(kafka))
    await client.start()
    try:
        await client.create_topics(
            [NewTopic(f"{prefix}null.{i}", partitions, 1) for i in range(hops + 1)]
        )
    finally:
        await client.close()
    children = [
        Child(
            f"{mode}-{i}",
            [
                sys.executable,
                "-m",
                "waybill.bench_pipeline",
                mode,
                "--hop",
                str(i),
                "--bootstrap",
                infra.kafka_bootstrap,
                "--dsn",
                dsn,
                "--prefix",
                prefix,
            ],
            dict(os.environ),
            logs / f"reference-{mode}-{i}.log",
        )
        for i in range(hops)
    ]
    watch = TopicWatch(kafka, [f"{prefix}null.{hops}"], partitions=partitions)
    producer = AIOKafkaProducer(
        acks="all", linger_ms=SHOP_LINGER_MS, max_batch_size=512 * 1024, **client_options(kafka)
    )
    await producer.start()
    try:
        for child in children:
            await child.start()
        await watch.start()
        # warm up: a record per partition through the chain also waits out the group joins
        warm = [f"warm-{p}" for p in range(partitions * 2)]
        for key in warm:
            body = json.dumps({"event_id": str(uuid4())}).encode()
            await producer.send(f"{prefix}null.0", body, key=key.encode())
        await _until(watch.tally(warm, f"{prefix}null.{hops}").complete, 180)
        pids = {c.name: c.pid for c in children if c.pid is not None}
        if infra.embedded_kafka is not None and infra.embedded_kafka.pid:
            pids["broker"] = infra.embedded_kafka.pid
        if infra.embedded_postgres is not None and infra.embedded_postgres.pid:
            pids["postgres"] = infra.embedded_postgres.pid
        meter = ProcessMeter(pids, trees=["postgres"])
        bodies = []
        for i in range(orders):
            order = demo_order(i, rng=rng, order_id=f"{mode}-{i:06d}")
            bodies.append((order["order_id"], json.dumps(order).encode()))
        keys = [k for k, _ in bodies]
        print(f"reference {mode}: {orders} records through {hops} hops", file=sys.stderr)
        before = meter.cpu()
        started = time.time()  # the clock of the records' timestamps
        sent = [await producer.send(f"{prefix}null.0", b, key=k.encode()) for k, b in bodies]
        await asyncio.gather(*sent)
        await _until(watch.tally(keys, f"{prefix}null.{hops}").complete, max(180, orders / 20))
        last = max(watch.first_seen[f"{prefix}null.{hops}"][k] for k in keys)
        cpu = cpu_delta(before, meter.cpu())
    finally:
        await watch.stop()
        await producer.stop()
        for child in children:
            await child.stop()
    return ReferenceResult(
        name="null pipeline, batched" if mode == "batched" else "naive, one at a time",
        hops=hops,
        orders=orders,
        seconds=round(last - started, 3),
        rate=round(orders / (last - started), 1),
        cpu_ms_per_order=round(sum(cpu.values()) * 1000 / orders, 3),
        cpu_seconds=cpu,
    )


async def _until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchFailed(f"the reference pipeline did not finish within {timeout:.0f} s")
        await asyncio.sleep(0.01)


def _with_database(dsn: str, database: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


# --- running it -------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def run_bench(options: BenchOptions) -> int:
    result = BenchResult(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine(),
        options={k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
    )
    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="waybill-bench-"))
    print(f"waybill bench: data and logs in {data_dir}", file=sys.stderr)
    infra = await asyncio.to_thread(
        start_infrastructure, data_dir=data_dir, durable=True, prefer="embedded"
    )
    failure: BaseException | None = None
    system: ProcessSystem | None = None
    try:
        env = {
            "WAYBILL_KAFKA_TOPIC_PARTITIONS": str(options.partitions),
            **options.service_env,
        }
        system = ProcessSystem(
            infra,
            SystemOptions(
                logs=data_dir / "logs",
                replicas=options.replicas,
                autopick=True,
                sandbox_auto_advance=options.full,
                sandbox_step_seconds=0.25,
                service_env=env,
            ),
        )
        await system.start()
        bench = Bench(options, infra, system)
        try:
            await bench.start()
            try:
                peak = await bench.phase("peak", options.orders, None)
                result.phases.append(peak)
                if options.latency:
                    half = max(1.0, round(peak.rate / 2))
                    n = max(10, round(half * options.latency_seconds))
                    await bench.settle()
                    result.phases.append(await bench.phase("half-peak", n, half))
                    low = options.low_rate
                    n = max(10, round(low * options.latency_seconds))
                    await bench.settle()
                    result.phases.append(await bench.phase("low-rate", n, low))
                result.checks = await bench.check()
                await bench.settle()
                result.idle_cores, result.idle_cpu_seconds = await bench.idle()
            except BenchFailed as exc:
                failure = exc
                with contextlib.suppress(Exception):
                    result.checks = {"problems": [str(exc)]}
            result.peak_memory_mb = {k: round(v, 1) for k, v in bench.meter.peak_mb.items()}
        finally:
            await bench.close()
        await system.stop()
        system = None
        if failure is None and options.references:
            rng = random.Random(options.seed + 1)
            for mode, n in (("batched", options.orders), ("naive", options.naive_orders)):
                result.references.append(
                    await run_reference(
                        infra,
                        mode=mode,
                        hops=options.hops,
                        orders=n,
                        partitions=options.partitions,
                        logs=data_dir / "logs",
                        rng=rng,
                    )
                )
    finally:
        if system is not None:
            await system.stop()
        await asyncio.to_thread(infra.close)
        if not options.keep_data and options.data_dir is None and failure is None:
            shutil.rmtree(data_dir, ignore_errors=True)
    result.valid = failure is None
    if result.phases and result.references:
        peak_rate = result.phases[0].rate
        ceiling, naive = result.references[0].rate, result.references[-1].rate
        result.ratios = {
            "of_ceiling": round(peak_rate / ceiling, 3),
            "of_naive": round(peak_rate / naive, 2),
        }
    output = options.output or Path("bench-results") / (
        datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ".json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(asdict(result), indent=2) + "\n")
    print_result(result, as_json=options.as_json)
    print(f"result written to {output}", file=sys.stderr)
    if failure is not None:
        print(f"\nBENCH FAILED: {failure}", file=sys.stderr)
        if options.data_dir is None:
            print(f"logs kept in {data_dir / 'logs'}", file=sys.stderr)
        return 1
    return 0


PASS_STYLE = "bold green"
FAIL_STYLE = "bold red"


def print_result(result: BenchResult, *, as_json: bool) -> None:
    """The result on standard output: JSON (``--json``), or the tables."""
    if as_json:
        print(json.dumps(asdict(result), indent=2))
    else:
        terminal.show(render(result))


def render(result: BenchResult) -> RenderableType:
    """The phases as a table (with how each spent its time), the references, where the CPU
    went, and the verdict."""
    o = result.options
    parts: list[RenderableType] = [
        Text(
            f"Waybill bench, {result.started_at}: {result.machine['cpus']} cores, "
            f"{o['partitions']} partitions, {o['replicas']} replica(s) per service"
            + (", full lifecycle" if o["full"] else ""),
            "bold",
        ),
        Text(),
    ]
    phases = ViewTable("phase")
    for header in ("orders", "orders/s", "steady/s", "p50 ms", "p95 ms", "p99 ms"):
        phases.add_column(header, justify="right")
    phases.add_column("CPU-ms/order", justify="right")
    for p in result.phases:
        label = p.name if p.offered_rate is None else f"{p.name} ({p.offered_rate:g}/s)"
        phases.add_row(
            label,
            str(p.orders),
            f"{p.rate:.1f}",
            f"{p.steady_rate:.1f}" if p.steady_rate else "-",
            f"{p.latency_ms['p50']:.0f}",
            f"{p.latency_ms['p95']:.0f}",
            f"{p.latency_ms['p99']:.0f}",
            f"{p.cpu_ms_per_order:.2f}",
        )
        if p.lifecycle:
            phases.add_row(
                f"{label} to return decision",
                str(p.orders),
                f"{p.lifecycle['orders_per_second']:.1f}",
                "-",
                f"{p.lifecycle['p50_ms_to_decision']:.0f}",
                "-",
                f"{p.lifecycle['p99_ms_to_decision']:.0f}",
                "-",
            )
    parts.append(phases)
    if result.idle_cores is not None:
        parts.append(Text(f"idle: CPU {result.idle_cores:.3f} cores"))
    inside = [p for p in result.phases if p.database_per_order or p.batch_sizes or p.hops_ms]
    if inside:
        parts += [Text(), _where_the_time_goes(inside)]
    if result.references:
        references = ViewTable("reference")
        for header in ("orders", "orders/s", "CPU-ms/order"):
            references.add_column(header, justify="right")
        for ref in result.references:
            references.add_row(
                ref.name, str(ref.orders), f"{ref.rate:.1f}", f"{ref.cpu_ms_per_order:.2f}"
            )
        parts += [
            Text(),
            Text(f"references on the same broker and database ({o['hops']} hops):", "bold"),
            references,
        ]
        if result.ratios:
            parts.append(
                Text(
                    f"Waybill's peak is {result.ratios['of_ceiling']:.3f} of the ceiling and "
                    f"{result.ratios['of_naive']:.1f}x the naive baseline"
                )
            )
    parts.append(Text())
    if result.phases:
        cpu = result.phases[0].cpu_seconds
        total = sum(cpu.values()) or 1.0
        by_use = sorted(cpu.items(), key=lambda x: -x[1])
        share = ", ".join(f"{name} {100 * sec / total:.0f}%" for name, sec in by_use)
        parts.append(Text(f"CPU at peak by process: {share}"))
    if result.peak_memory_mb:
        memory = ", ".join(f"{k} {v:.0f}" for k, v in sorted(result.peak_memory_mb.items()))
        parts.append(Text(f"peak memory (MB): {memory}"))
    checks = result.checks
    if result.valid:
        verdict_line = Text.assemble(
            f"checks: {checks['orders']} orders, {checks['labels_at_carrier']} labels at the "
            f"carrier (one each), {checks['units_shipped']} units shipped = "
            f"{checks['units_ordered']} ordered, no dead letters: ",
            ("PASS", PASS_STYLE),
        )
    else:
        problems = "; ".join(checks.get("problems", []))
        verdict_line = Text.assemble("checks: ", (f"FAILED: {problems}", FAIL_STYLE))
    parts += [Text(), verdict_line]
    return Group(*parts)


def _where_the_time_goes(phases: Sequence[PhaseResult]) -> ViewTable:
    """Per phase: database work per order, the consumers' batches, each hop's latency."""
    table = ViewTable("phase")
    table.add_column("transactions/order", justify="right")
    table.add_column("rows written/order", justify="right")
    table.add_column("hops p50/p99 ms")
    table.add_column("records per batch")
    for p in phases:
        d = p.database_per_order
        table.add_row(
            p.name,
            f"{d['transactions']:.1f}" if "transactions" in d else "-",
            f"{d['rows_written']:.1f}" if "rows_written" in d else "-",
            ", ".join(f"{h} {v['p50']:.0f}/{v['p99']:.0f}" for h, v in p.hops_ms.items()) or "-",
            ", ".join(f"{name} {size:g}" for name, size in p.batch_sizes.items()) or "-",
        )
    return table
