"""``waybill chaos SCENARIO``: the system under a real fault, driven by orders at a steady
rate, and a verdict on what it lost, doubled or drifted.

It starts the system the way ``waybill up`` does (embedded broker and database, the carrier
sandbox, the four services as supervised processes, automatic picking), stocks it, places
orders at ``--rate`` per second and injects the scenario's fault while they flow. Then it
waits for every order to get its label and checks, at the carrier and in the stock, that
each got exactly one and that stock moved by exactly the units ordered
(the same checks as ``waybill bench``).

Scenarios built so far:

- ``kill-consumer``: every ``--interval`` seconds a random service process is killed with
  SIGKILL, in the middle of whatever batch it holds; the supervisor starts it again.
- ``kill-relay``: every ``--interval`` seconds the fault point ``relay-after-publish`` is
  armed for a random service on the path placed → label (orders, inventory, shipping):
  the next relay round of that service that the broker acknowledged kills its process
  before the watermark moves (shared/faults.py), so those rows are published twice.
- ``carrier-faults``: while the orders flow, the carrier sandbox fails 30 % of requests
  with a 500, lets 10 % hang past the client's timeout after acting on them, and answers
  5 % with a 429; labels are retried, pinned and moved between carriers. Once the last
  order is placed the carriers recover, and each order must have exactly one label.

The verdict's exit status is 1 on any order lost, any second label at the carrier, any
stock drift or dead letter.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

from shared import topics
from shared.faults import ENV as FAULTS_ENV
from shared.faults import HANDLER_FAILS, RELAY_AFTER_PUBLISH, arm, arm_keys
from shared.infra import Infrastructure, start_infrastructure
from shared.messaging.consumer import REPLAYED_FROM
from waybill.bench import Bench, BenchFailed, BenchOptions
from waybill.dlq import read_dead_letters, replay_dead_letters
from waybill.processes import Child, ProcessSystem, SystemOptions
from waybill.supervisor import RestartPolicy
from waybill.system import SERVICES

log = logging.getLogger("waybill.chaos")

SCENARIOS = (
    "kill-consumer",
    "kill-relay",
    "rebalance",
    "broker-restart",
    "database-restart",
    "carrier-faults",
    "poison",
)
#: faults injected by default, and seconds between them where they come on a clock
DEFAULT_FAULTS = {
    "kill-consumer": 20,
    "kill-relay": 20,
    "rebalance": 24,
    "broker-restart": 2,
    "database-restart": 2,
    "carrier-faults": 1,
    "poison": 1,
}
DEFAULT_INTERVAL = {"rebalance": 5.0}
#: scenarios whose verdict lists each fault (the others count faults per process)
LISTED_FAULTS = ("broker-restart", "database-restart", "carrier-faults", "poison")
#: how long the restart scenarios place orders by default
RESTART_SECONDS = 60.0
#: a shop that finds the broker's data lost sends again what it placed this long before
SHOP_RESEND_SECONDS = 30.0
#: the services whose relays publish on the path placed -> label (returns publishes only
#: what returns do, which the load does not make)
RELAY_SERVICES = ("orders", "inventory", "shipping")
#: an armed fault point that no relay round took in this long is disarmed and tried elsewhere
ARMED_SECONDS = 10.0
#: how long the path stalls after a fault, for the default number of orders: a relay
#: killed on the path holds its downstream hops (and so the next fault point) until its
#: consumer group has settled again, several seconds on the embedded broker
SETTLE_SECONDS = {"kill-relay": 8.0}
#: how long ``carrier-faults`` places orders by default
CARRIER_FAULT_SECONDS = 30.0
#: what the sandbox does to every carrier request during ``carrier-faults`` (a timed-out
#: request hangs past the services' carrier timeout, after the sandbox acted on it)
CARRIER_FAULTS = {
    "error_rate": 0.3,
    "timeout_rate": 0.1,
    "rate_limit_rate": 0.05,
    "retry_after_seconds": 1,
    "timeout_seconds": 10.0,
}

#: WAYBILL_CONSUMER_MAX_ATTEMPTS of the services (the default)
CONSUMER_MAX_ATTEMPTS = 5

#: a process killed this often is not in a crash loop: the supervisor must not give up
CHAOS_RESTARTS = RestartPolicy(base_seconds=0.5, max_seconds=2.0, max_restarts=1000)


@dataclass
class ChaosOptions:
    scenario: str
    #: default: enough for the faults to happen while orders flow
    orders: int | None = None
    rate: float = 100.0
    #: faults to inject (default: the scenario's, DEFAULT_FAULTS)
    kills: int | None = None
    #: seconds between faults on a clock (default: the scenario's, or 2)
    interval: float | None = None
    seed: int = 1
    data_dir: Path | None = None
    as_json: bool = False


@dataclass
class ChaosResult:
    scenario: str
    orders: int
    rate: float
    faults: list[str] = field(default_factory=list)
    restarts: int = 0
    seconds: float = 0.0
    #: the longest time from a fault until every order placed before it had its label
    recovered_seconds: float | None = None
    checks: dict[str, Any] = field(default_factory=dict)
    passed: bool = False


@dataclass
class Plan:
    """A scenario's run, its defaults filled in."""

    scenario: str
    orders: int
    rate: float
    faults: int
    interval: float
    seed: int

    @classmethod
    def of(cls, options: ChaosOptions) -> Plan:
        scenario = options.scenario
        faults = options.kills or DEFAULT_FAULTS[scenario]
        interval = options.interval or DEFAULT_INTERVAL.get(scenario, 2.0)
        if options.orders:
            orders = options.orders
        elif scenario in ("carrier-faults", "poison"):
            orders = round(options.rate * CARRIER_FAULT_SECONDS)
        elif scenario in ("broker-restart", "database-restart"):
            orders = round(options.rate * RESTART_SECONDS)
        else:  # faults on a clock: they all come while orders flow
            settle = SETTLE_SECONDS.get(scenario, 0.0)
            orders = round(options.rate * (faults + 2) * (interval + settle))
        return cls(scenario, orders, options.rate, faults, interval, options.seed)


class Faults:
    """The faults injected so far ("<monotonic time> <what> <where>"), each with when it
    came (wall clock) and how many orders the shop had placed by then."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.log: list[str] = []
        self.marks: list[tuple[float, int]] = []

    def add(self, what: str) -> None:
        self.log.append(f"{time.monotonic():.1f} {what}")
        self.marks.append((time.time(), len(self.bench.placed)))

    def __len__(self) -> int:
        return len(self.log)

    def recovered_seconds(self) -> float | None:
        """The longest time from a fault until every order placed before it had its label:
        how long the fault held up what was in flight. None without faults, or when an
        order placed before a fault has no label."""
        labels = self.bench.watch.first_seen[topics.SHIPMENTS_LABEL_CREATED]
        placed = list(self.bench.placed)
        longest: float | None = None
        for at, n in self.marks:
            before = placed[:n]
            if not all(i in labels for i in before):
                return None
            done = max((labels[i] for i in before), default=at)
            longest = max(longest or 0.0, done - at)
        return round(longest, 1) if longest is not None else None


async def kill_consumers(system: ProcessSystem, plan: Plan, faults: Faults) -> None:
    """SIGKILL a random service instance every ``interval`` seconds, ``faults`` times."""
    rng = random.Random(plan.seed)
    services = [child for name in SERVICES for child in system.instances(name)]
    while len(faults) < plan.faults:
        await asyncio.sleep(plan.interval)
        running = [c for c in services if c.process is not None and c.process.returncode is None]
        if not running:
            continue  # all are being started again
        victim = rng.choice(running)
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        faults.add(f"SIGKILL {victim.name}")


async def kill_relays(folder: Path, plan: Plan, faults: Faults) -> None:
    """Arm ``relay-after-publish`` for a random service every ``interval`` seconds, and
    count it once a relay round took it (the file is gone: that process is dead)."""
    rng = random.Random(plan.seed)
    while len(faults) < plan.faults:
        await asyncio.sleep(plan.interval)
        service = rng.choice(RELAY_SERVICES)
        armed = arm(folder, RELAY_AFTER_PUBLISH, service)
        deadline = time.monotonic() + ARMED_SECONDS
        # another process takes the file: nothing here to wait on but the file itself
        while armed.exists() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if armed.exists():
            armed.unlink(missing_ok=True)  # nothing published meanwhile: not a fault
            continue
        faults.add(f"{RELAY_AFTER_PUBLISH} {service}")


async def rebalance(system: ProcessSystem, plan: Plan, faults: Faults) -> None:
    """Every ``interval`` seconds a replica leaves (stopped gracefully, as a scale-in does)
    or the one that left joins again: each change moves partitions within a consumer
    group and may move a relay's leadership."""
    assert system.supervisor is not None
    supervisor = system.supervisor
    rng = random.Random(plan.seed)
    away: Child | None = None
    try:
        while len(faults) < plan.faults:
            await asyncio.sleep(plan.interval)
            if away is not None:
                supervisor.join(away)
                faults.add(f"joined {away.name}")
                away = None
                continue
            away = rng.choice([c for name in SERVICES for c in system.instances(name)])
            await supervisor.leave(away)
            faults.add(f"left {away.name}")
    finally:
        if away is not None:  # the load ended first: everyone back for the verdict
            supervisor.join(away)


async def _at_shares(bench: Bench, plan: Plan) -> AsyncIterator[int]:
    """Yield when 1/(n+1), 2/(n+1) ... of the orders are placed, n = ``plan.faults``."""
    for i in range(plan.faults):
        target = plan.orders * (i + 1) // (plan.faults + 1)
        while len(bench.placed) < target:  # noqa: ASYNC110 (the shop's count)
            await asyncio.sleep(0.05)
        yield i


async def restart_broker(bench: Bench, infra: Infrastructure, plan: Plan, faults: Faults) -> None:
    """Kill the memory-only embedded broker (SIGKILL) mid-load and start it again: every
    topic, every record in it and every consumer group's offsets are gone. The services
    notice the new broker epoch, make their topics again and publish their recent outbox
    again; the shop sends again what it placed shortly before (Bench.after_broker_loss)."""
    kafka = infra.embedded_kafka
    if kafka is None:
        raise RuntimeError("broker-restart restarts the embedded broker: run it without one")
    async for _ in _at_shares(bench, plan):
        lost_from = time.time() - SHOP_RESEND_SECONDS
        began = time.monotonic()
        if kafka.pid is not None:
            os.kill(kafka.pid, signal.SIGKILL)
        await asyncio.to_thread(kafka.stop)  # reaps it
        await asyncio.to_thread(kafka.start)
        faults.add(f"SIGKILL, started again ({time.monotonic() - began:.1f} s down) broker")
        again = await bench.after_broker_loss(placed_since=lost_from)
        faults.log[-1] += f"; the shop sent {again} orders again"


async def restart_database(bench: Bench, infra: Infrastructure, plan: Plan, faults: Faults) -> None:
    """Stop PostgreSQL (a fast shutdown: sessions cut, transactions in flight rolled back)
    and start it again mid-load; its data is kept (a durable data directory)."""
    postgres = infra.embedded_postgres
    if postgres is None:
        raise RuntimeError("database-restart restarts the embedded PostgreSQL")
    async for _ in _at_shares(bench, plan):
        began = time.monotonic()
        await asyncio.to_thread(postgres.stop)
        await asyncio.to_thread(postgres.start)
        faults.add(f"restarted ({time.monotonic() - began:.1f} s down) database")


async def carrier_faults(bench: Bench, faults: Faults, orders: int) -> None:
    """Faulty carriers from the first order to the last one placed; then the carriers
    recover (the faults are cleared) and what was injected is counted by the sandbox."""
    sandbox = bench.system.urls["sandbox"]
    r = await bench.http.post(f"{sandbox}/sandbox/faults", json=CARRIER_FAULTS)
    r.raise_for_status()
    faults.add("carriers: " + json.dumps(CARRIER_FAULTS))
    while len(bench.placed) < orders:  # noqa: ASYNC110 (the shop's count, no event to wait on)
        await asyncio.sleep(0.1)
    stats = (await bench.http.get(f"{sandbox}/sandbox/stats")).json()
    (await bench.http.delete(f"{sandbox}/sandbox/faults")).raise_for_status()
    faults.add(
        f"{stats['errors']} errors, {stats['timeouts']} timeouts, "
        f"{stats['rate_limited']} 429s in {stats['label_requests']} label requests, "
        "then the carriers recovered"
    )


@dataclass
class Poison:
    """A record ``poison`` put on a topic, and what must become of it."""

    kind: str
    topic: str
    partition: int = -1
    offset: int = -1
    #: "dead letter" (in every group that reads the topic) or "rejected" (orders.rejected)
    outcome: str = "dead letter"
    order_id: str | None = None


def _poison_record(kind: str, n: int, run: str) -> tuple[str, bytes, str | None, str]:
    """(topic, value, key, outcome) of the ``n``-th poison record of ``kind``."""
    order_id = f"poison-{run}-{n:04d}"
    if kind == "undecodable":  # bytes no JSON parser takes, on a shop's topic and a service's
        topic = topics.ORDERS_PLACED if n // len(POISON_KINDS) % 2 == 0 else topics.ORDERS_PACKED
        return topic, b"\xff\xfe not json " + bytes([n % 256]), order_id, "dead letter"
    if kind == "no-order-id":  # JSON, but nothing to key it by (CONTRACT: the .dlq)
        body: dict[str, Any] = {"event_id": str(uuid4()), "shop_id": "poison", "lines": "none"}
        return topics.ORDERS_PLACED, json.dumps(body).encode(), None, "dead letter"
    if kind == "invalid-event":  # a service's event that breaks its schema
        body = {"event_id": str(uuid4()), "order_id": order_id, "parcels": "three"}
        return topics.ORDERS_PACKED, json.dumps(body).encode(), order_id, "dead letter"
    # an order a shop got wrong: answered with orders.rejected and its reasons
    body = {
        "event_id": str(uuid4()),
        "order_id": order_id,
        "shop_id": "poison",
        "placed_at": "2026-01-01T00:00:00Z",
        "lines": [{"sku": "", "quantity": -1}],
    }
    return topics.ORDERS_PLACED, json.dumps(body).encode(), order_id, "rejected"


POISON_KINDS = ("undecodable", "no-order-id", "invalid-event", "invalid-order")
#: the share of the load whose orders.packed handler fails in shipping until "fixed"
FAILING_SHARE = 0.02


async def poison(
    bench: Bench, plan: Plan, faults: Faults, faults_dir: Path, injected: list[Poison]
) -> None:
    """Mix poison into the load: every ``interval`` seconds a record that cannot be decoded,
    has no key, breaks its event's schema, or is an order that must be rejected; and for a
    share of the orders, shipping's handler fails (fault point ``handler-fails``). Once
    those are dead-lettered, the "fix" is deployed (the fault point disarmed) and
    ``waybill dlq replay orders.packed`` re-drives them: they must get their labels."""
    rng = random.Random(plan.seed)
    failing = sorted(
        bench.order_id(plan.scenario, i)
        for i in rng.sample(range(plan.orders), max(1, round(plan.orders * FAILING_SHARE)))
    )
    armed = arm_keys(faults_dir, HANDLER_FAILS, "shipping", topics.ORDERS_PACKED, failing)
    faults.add(f"handler-fails armed for {len(failing)} orders in shipping")
    run = bench.run_id
    n = 0
    while len(bench.placed) < plan.orders:
        await asyncio.sleep(plan.interval)
        kind = POISON_KINDS[n % len(POISON_KINDS)]
        topic, value, key, outcome = _poison_record(kind, n, run)
        meta = await bench.producer.send_and_wait(
            topic, value, key=key.encode() if key is not None else None
        )
        injected.append(Poison(kind, topic, meta.partition, meta.offset, outcome, key))
        n += 1
    # every failing order is dead-lettered after its bounded attempts; then the fix
    kafka = bench.kafka
    deadline = time.monotonic() + 300
    while True:
        letters = await read_dead_letters(kafka, topic=topics.ORDERS_PACKED)
        failed = {
            d.key for _, _, _, d, _ in letters if d is not None and d.error_type == "InjectedFault"
        }
        if failed >= set(failing):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(set(failing) - failed)} failing orders never dead-lettered")
        await asyncio.sleep(1.0)
    armed.unlink()
    faults.add(f"handler fixed; dlq replay {topics.ORDERS_PACKED}")
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the verdict's
        replayed = await replay_dead_letters(topic=topics.ORDERS_PACKED, event_id=None, kafka=kafka)
    if replayed != 0:
        raise RuntimeError("waybill dlq replay found nothing to replay")


async def account_for_poison(
    bench: Bench, injected: list[Poison], max_attempts: int
) -> dict[str, Any]:
    """Every poison record accounted for: a dead letter with its reason (attempts: 1, no
    retry can fix it) or the order's orders.rejected; every failing order dead-lettered
    after ``max_attempts`` and, replayed, labelled."""
    letters = [d for _, _, _, d, _ in await read_dead_letters(bench.kafka) if d is not None]
    by_place: dict[tuple[str, int, int], list[Any]] = {}
    for d in letters:
        by_place.setdefault((d.original_topic, d.partition, d.offset), []).append(d)
    rejected = bench.watch.first_seen[topics.ORDERS_REJECTED]
    problems: list[str] = []
    kinds: Counter[str] = Counter()
    for p in injected:
        kinds[p.kind] += 1
        if p.outcome == "rejected":
            if p.order_id not in rejected:
                problems.append(f"poison order {p.order_id} was not rejected")
            continue
        found = by_place.get((p.topic, p.partition, p.offset), [])
        if not found:
            problems.append(
                f"{p.kind} record {p.topic}[{p.partition}]@{p.offset} not dead-lettered"
            )
        elif any(not d.error or d.attempts != 1 for d in found):
            problems.append(f"{p.kind} record {p.topic}@{p.offset}: a dead letter without reason")
    injected_faults = [d for d in letters if d.error_type == "InjectedFault"]
    if any(d.attempts != max_attempts for d in injected_faults):
        problems.append(f"a failing handler was not tried {max_attempts} times")
    places = {(p.topic, p.partition, p.offset) for p in injected}
    strays = [
        d
        for d in letters
        if d.error_type != "InjectedFault"
        and (d.original_topic, d.partition, d.offset) not in places
        and not any(k == REPLAYED_FROM for k, _ in _headers(d))
    ]
    if strays:
        problems.append(
            f"{len(strays)} dead letters of records never poisoned, e.g. {strays[0].error[:200]}"
        )
    report: dict[str, Any] = {
        "injected": dict(kinds),
        "dead_letters": len(letters),
        "handler_failures": len(injected_faults),
        # each kind of error once, with how many dead letters gave it and one of them
        "reasons": {
            kind: {"count": n, "example": next(d.error for d in letters if d.error_type == kind)}
            for kind, n in sorted(Counter(d.error_type for d in letters).items())
        },
        "problems": problems,
    }
    return report


def _headers(letter: Any) -> list[tuple[str, bytes]]:
    return [(h.key, base64.b64decode(h.value_base64)) for h in letter.headers]


async def _inject(
    plan: Plan,
    faults: Faults,
    system: ProcessSystem,
    bench: Bench,
    faults_dir: Path,
    injected: list[Poison],
) -> None:
    """The scenario's faults, while ``bench`` places the orders."""
    infra = system.infra
    if plan.scenario == "kill-consumer":
        await kill_consumers(system, plan, faults)
    elif plan.scenario == "kill-relay":
        await kill_relays(faults_dir, plan, faults)
    elif plan.scenario == "rebalance":
        await rebalance(system, plan, faults)
    elif plan.scenario == "broker-restart":
        await restart_broker(bench, infra, plan, faults)
    elif plan.scenario == "database-restart":
        await restart_database(bench, infra, plan, faults)
    elif plan.scenario == "carrier-faults":
        await carrier_faults(bench, faults, plan.orders)
    elif plan.scenario == "poison":
        await poison(bench, plan, faults, faults_dir, injected)
    else:
        raise ValueError(f"no such scenario: {plan.scenario}")


async def _judge_poison(bench: Bench, result: ChaosResult, injected: list[Poison]) -> None:
    """Dead letters are the point of ``poison``: the bench's "no dead letters" gives way to
    an account of every poison record; the ones not fixable stay as dead letters."""
    checks = result.checks
    report = await account_for_poison(bench, injected, max_attempts=CONSUMER_MAX_ATTEMPTS)
    checks["poison"] = report
    unfixable = sum(
        1 for p in injected if p.outcome == "dead letter"
    )  # at least one dead letter each (one per group that reads the topic)
    open_letters = sum((checks.get("dead_letters") or {}).values())
    checks["problems"] = [p for p in checks["problems"] if not p.startswith("dead letters:")]
    checks["problems"] += report["problems"]
    if open_letters < unfixable:
        checks["problems"].append(
            f"{open_letters} dead letters open after the replay, fewer than the {unfixable} "
            "poison records no fix can handle"
        )


async def run_scenario(options: ChaosOptions) -> ChaosResult:
    plan = Plan.of(options)
    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="waybill-chaos-"))
    print(f"waybill chaos {plan.scenario}: data and logs in {data_dir}", file=sys.stderr)
    infra = await asyncio.to_thread(
        start_infrastructure, data_dir=data_dir, durable=True, prefer="embedded"
    )
    faults_dir = data_dir / "faults"
    faults_dir.mkdir(parents=True, exist_ok=True)
    result = ChaosResult(plan.scenario, plan.orders, plan.rate)
    system = ProcessSystem(
        infra,
        SystemOptions(
            logs=data_dir / "logs",
            replicas=2 if plan.scenario == "rebalance" else 1,
            autopick=True,
            sandbox_step_seconds=0.25,
            supervise=True,
            restart_policy=CHAOS_RESTARTS,
            service_env={FAULTS_ENV: str(faults_dir)},
        ),
    )
    result_faults: list[str] = []
    try:
        await system.start()
        bench = Bench(BenchOptions(orders=plan.orders, references=False), infra, system)
        faults = Faults(bench)
        result_faults = faults.log
        try:
            await bench.start()
            injected: list[Poison] = []
            fault = asyncio.create_task(_inject(plan, faults, system, bench, faults_dir, injected))
            started = time.monotonic()
            try:
                await bench.phase(plan.scenario, plan.orders, plan.rate)
            except BenchFailed as exc:  # orders that never got a label in time
                print(f"waybill chaos: {exc}", file=sys.stderr)
            finally:
                if not fault.done() and plan.scenario in ("broker-restart", "database-restart"):
                    await fault  # a restart under way finishes before the verdict
                fault.cancel()
                await asyncio.gather(fault, return_exceptions=True)
                if fault.done() and not fault.cancelled():
                    error = fault.exception()
                    if error is not None:
                        raise error
            result.seconds = round(time.monotonic() - started, 1)
            result.recovered_seconds = faults.recovered_seconds()
            # a process restarting, a replica joining: back before the verdict asks them
            await system.wait_ready(restarting=True)
            await bench.settle()
            result.checks = await bench.check(strict=False)
            if plan.scenario == "poison":
                await _judge_poison(bench, result, injected)
            result.passed = not result.checks["problems"]
        finally:
            await bench.close()
        result.restarts = len(system.supervisor.restarts) if system.supervisor else 0
    finally:
        result.faults = result_faults
        await system.stop()
        await asyncio.to_thread(infra.close)
        if options.data_dir is None and result.passed:
            shutil.rmtree(data_dir, ignore_errors=True)
    return result


def render(results: list[ChaosResult]) -> str:
    head = (
        f"{'scenario':<16}{'placed':>8}{'labelled':>10}{'lost':>6}{'doubled':>9}"
        f"{'drift':>7}{'dead':>6}{'faults':>8}{'restarts':>10}{'recovered':>11}  verdict"
    )
    lines = [head]
    for r in results:
        c = r.checks
        drift = c.get("units_shipped", 0) - c.get("units_ordered", 0)
        dead = sum((c.get("dead_letters") or {}).values())
        recovered = f"{r.recovered_seconds:.1f} s" if r.recovered_seconds is not None else "-"
        lines.append(
            f"{r.scenario:<16}{c.get('orders', 0):>8}{c.get('labelled', 0):>10}"
            f"{c.get('lost', 0):>6}{c.get('doubled', 0):>9}{drift:>7}{dead:>6}"
            f"{len(r.faults):>8}{r.restarts:>10}{recovered:>11}  {'PASS' if r.passed else 'FAIL'}"
        )
        if r.scenario in LISTED_FAULTS:
            lines += [f"  injected: {f.split(' ', 1)[1]}" for f in r.faults]
        else:  # "<time> <fault> <service>"
            hit = Counter(f.rsplit(" ", 1)[-1] for f in r.faults)
            lines.append(
                "  faults per service: " + ", ".join(f"{k} {n}" for k, n in sorted(hit.items()))
            )
        if "poison" in c:
            report = c["poison"]
            lines.append(
                f"  poison: {report['injected']}; {report['dead_letters']} dead letters, "
                f"{report['handler_failures']} of them failing handlers (fixed, then replayed)"
            )
            lines += [
                f"  {kind} x{r['count']}: {r['example'][:90]}"
                for kind, r in report["reasons"].items()
            ]
        for problem in c.get("problems") or []:
            lines.append(f"  problem: {problem}")
    return "\n".join(lines)


async def run_chaos(options: ChaosOptions) -> int:
    scenarios = SCENARIOS if options.scenario == "all" else (options.scenario,)
    results = []
    for scenario in scenarios:
        one = ChaosOptions(**{**asdict(options), "scenario": scenario})
        if options.data_dir is not None and len(scenarios) > 1:
            one.data_dir = options.data_dir / scenario  # a system of its own each
        try:
            result = await run_scenario(one)
        except Exception as exc:  # a scenario that broke is a failed one; the others run
            log.exception("waybill chaos %s broke", scenario)
            result = ChaosResult(scenario, 0, one.rate)
            result.checks = {"problems": [f"the scenario broke: {type(exc).__name__}: {exc}"]}
        results.append(result)
        if len(scenarios) > 1:  # each verdict as soon as it is known
            print(render([result]), file=sys.stderr, flush=True)
    if options.as_json:
        print(json.dumps([asdict(r) for r in results], indent=2, default=str))
    else:
        print(render(results))
    return 0 if all(r.passed for r in results) else 1
