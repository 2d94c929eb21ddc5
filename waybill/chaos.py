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
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shared.faults import ENV as FAULTS_ENV
from shared.faults import RELAY_AFTER_PUBLISH, arm
from shared.infra import start_infrastructure
from waybill.bench import Bench, BenchFailed, BenchOptions
from waybill.processes import ProcessSystem, SystemOptions
from waybill.supervisor import RestartPolicy
from waybill.system import SERVICES

SCENARIOS = ("kill-consumer", "kill-relay", "carrier-faults")
#: the services whose relays publish on the path placed -> label (returns publishes only
#: what returns do, which the load does not make)
RELAY_SERVICES = ("orders", "inventory", "shipping")
#: an armed fault point that no relay round took in this long is disarmed and tried elsewhere
ARMED_SECONDS = 10.0
#: how long the path stalls after a fault, for the default number of orders: a relay
#: killed on the path holds its downstream hops (and so the next fault point) until its
#: consumer group has settled again, several seconds on the embedded broker
SETTLE_SECONDS = {"kill-consumer": 0.0, "kill-relay": 8.0, "carrier-faults": 0.0}
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

#: a process killed this often is not in a crash loop: the supervisor must not give up
CHAOS_RESTARTS = RestartPolicy(base_seconds=0.5, max_seconds=2.0, max_restarts=1000)


@dataclass
class ChaosOptions:
    scenario: str
    #: default: enough for the faults to happen while orders flow
    orders: int | None = None
    rate: float = 100.0
    kills: int = 20
    interval: float = 2.0
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
    #: from the last fault to the last order's label
    recovered_seconds: float | None = None
    checks: dict[str, Any] = field(default_factory=dict)
    passed: bool = False


async def kill_consumers(
    system: ProcessSystem, options: ChaosOptions, faults: list[str], last_fault: list[float]
) -> None:
    """SIGKILL a random service instance every ``interval`` seconds, ``kills`` times."""
    rng = random.Random(options.seed)
    services = [child for name in SERVICES for child in system.instances(name)]
    while len(faults) < options.kills:
        await asyncio.sleep(options.interval)
        running = [c for c in services if c.process is not None and c.process.returncode is None]
        if not running:
            continue  # all are being started again
        victim = rng.choice(running)
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        faults.append(f"{time.monotonic():.1f} SIGKILL {victim.name}")
        last_fault[0] = time.monotonic()


async def kill_relays(
    folder: Path, options: ChaosOptions, faults: list[str], last_fault: list[float]
) -> None:
    """Arm ``relay-after-publish`` for a random service every ``interval`` seconds, and
    count it once a relay round took it (the file is gone: that process is dead)."""
    rng = random.Random(options.seed)
    while len(faults) < options.kills:
        await asyncio.sleep(options.interval)
        service = rng.choice(RELAY_SERVICES)
        armed = arm(folder, RELAY_AFTER_PUBLISH, service)
        deadline = time.monotonic() + ARMED_SECONDS
        # another process takes the file: nothing here to wait on but the file itself
        while armed.exists() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if armed.exists():
            armed.unlink(missing_ok=True)  # nothing published meanwhile: not a fault
            continue
        faults.append(f"{time.monotonic():.1f} {RELAY_AFTER_PUBLISH} {service}")
        last_fault[0] = time.monotonic()


async def carrier_faults(bench: Bench, faults: list[str], orders: int) -> None:
    """Faulty carriers from the first order to the last one placed; then the carriers
    recover (the faults are cleared) and what was injected is counted by the sandbox."""
    sandbox = bench.system.urls["sandbox"]
    r = await bench.http.post(f"{sandbox}/sandbox/faults", json=CARRIER_FAULTS)
    r.raise_for_status()
    faults.append(f"{time.monotonic():.1f} carriers: " + json.dumps(CARRIER_FAULTS))
    while len(bench.placed) < orders:  # noqa: ASYNC110 (the shop's count, no event to wait on)
        await asyncio.sleep(0.1)
    stats = (await bench.http.get(f"{sandbox}/sandbox/stats")).json()
    (await bench.http.delete(f"{sandbox}/sandbox/faults")).raise_for_status()
    faults.append(
        f"{time.monotonic():.1f} {stats['errors']} errors, {stats['timeouts']} timeouts, "
        f"{stats['rate_limited']} 429s in {stats['label_requests']} label requests, "
        "then the carriers recovered"
    )


async def run_scenario(options: ChaosOptions) -> ChaosResult:
    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="waybill-chaos-"))
    print(f"waybill chaos {options.scenario}: data and logs in {data_dir}", file=sys.stderr)
    infra = await asyncio.to_thread(
        start_infrastructure, data_dir=data_dir, durable=True, prefer="embedded"
    )
    orders = options.orders or (
        round(options.rate * CARRIER_FAULT_SECONDS)
        if options.scenario == "carrier-faults"
        else round(
            options.rate
            * (options.kills + 2)
            * (options.interval + SETTLE_SECONDS[options.scenario])
        )
    )
    faults_dir = data_dir / "faults"
    faults_dir.mkdir(parents=True, exist_ok=True)
    result = ChaosResult(options.scenario, orders, options.rate)
    system = ProcessSystem(
        infra,
        SystemOptions(
            logs=data_dir / "logs",
            autopick=True,
            sandbox_step_seconds=0.25,
            supervise=True,
            restart_policy=CHAOS_RESTARTS,
            service_env={FAULTS_ENV: str(faults_dir)},
        ),
    )
    try:
        await system.start()
        bench = Bench(BenchOptions(orders=orders, references=False), infra, system)
        try:
            await bench.start()
            last_fault = [0.0]
            if options.scenario == "kill-consumer":
                inject = kill_consumers(system, options, result.faults, last_fault)
            elif options.scenario == "kill-relay":
                inject = kill_relays(faults_dir, options, result.faults, last_fault)
            else:
                inject = carrier_faults(bench, result.faults, orders)
            fault = asyncio.create_task(inject)
            started = time.monotonic()
            try:
                await bench.phase(options.scenario, orders, options.rate)
            except BenchFailed as exc:  # orders that never got a label in time
                print(f"waybill chaos: {exc}", file=sys.stderr)
            finally:
                fault.cancel()
                await asyncio.gather(fault, return_exceptions=True)
            result.seconds = round(time.monotonic() - started, 1)
            if last_fault[0]:
                result.recovered_seconds = round(max(0.0, time.monotonic() - last_fault[0]), 1)
            await bench.settle()
            result.checks = await bench.check(strict=False)
            result.passed = not result.checks["problems"]
        finally:
            await bench.close()
        result.restarts = len(system.supervisor.restarts) if system.supervisor else 0
    finally:
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
        if r.scenario == "carrier-faults":
            lines += [f"  injected: {f.split(' ', 1)[1]}" for f in r.faults]
        else:  # "<time> <fault> <service>"
            hit = Counter(f.rsplit(" ", 1)[-1] for f in r.faults)
            lines.append(
                "  faults per service: " + ", ".join(f"{k} {n}" for k, n in sorted(hit.items()))
            )
        for problem in c.get("problems") or []:
            lines.append(f"  problem: {problem}")
    return "\n".join(lines)


async def run_chaos(options: ChaosOptions) -> int:
    scenarios = SCENARIOS if options.scenario == "all" else (options.scenario,)
    results = []
    for scenario in scenarios:
        one = ChaosOptions(**{**asdict(options), "scenario": scenario})
        results.append(await run_scenario(one))
    if options.as_json:
        print(json.dumps([asdict(r) for r in results], indent=2, default=str))
    else:
        print(render(results))
    return 0 if all(r.passed for r in results) else 1
