"""``waybill up``: the whole system on one machine, each service its own process.

Starts the embedded broker and PostgreSQL (or uses WAYBILL_KAFKA_BOOTSTRAP and
WAYBILL_DATABASE_URL), gives every service its own role and schema, starts the
carrier sandbox and the four services, waits until each is ready, prints URLs and
tokens, and on Ctrl-C stops everything it started. ``--demo`` adds warehouses and
stock, a shop simulator, automatic picking, parcels that move by themselves, and a
live progress table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.text import Text

from shared import topics
from shared.infra import start_infrastructure
from shared.messaging.kafka import client_options
from shared.settings import KafkaSettings, default_data_dir
from waybill import terminal
from waybill.processes import ProcessSystem, SystemOptions, default_ports, tokens_from_environment
from waybill.supervisor import CrashLoop
from waybill.terminal import ViewTable

log = logging.getLogger("waybill.up")

EMBEDDED_KAFKA_PORT = 19092
EMBEDDED_POSTGRES_PORT = 15432

DEMO_WAREHOUSES = [
    ("BER-1", "Berlin", "DE", "10115"),
    ("MUC-1", "Munich", "DE", "80331"),
    ("AMS-1", "Amsterdam", "NL", "1011"),
]
RETURN_AFTER_SECONDS = 3.0
DEMO_SKUS = [f"DEMO-{n}" for n in range(1, 9)]
DEMO_DESTINATIONS = [
    ("Berlin", "DE", "10178"),
    ("Hamburg", "DE", "20095"),
    ("Munich", "DE", "80469"),
    ("Cologne", "DE", "50667"),
    ("Amsterdam", "NL", "1012"),
    ("Utrecht", "NL", "3511"),
]


@dataclass
class UpOptions:
    demo: bool = False
    demo_orders: int = 50
    demo_rate: float = 5.0
    exit_when_done: bool = False
    data_dir: Path | None = None
    fresh: bool = False
    done_timeout_seconds: float = 600.0
    #: instances of each service (they share the partitions of its consumer group)
    replicas: int = 1


async def run_up(options: UpOptions) -> int:
    data_dir = options.data_dir or Path(os.environ.get("WAYBILL_DATA_DIR") or default_data_dir())
    if options.fresh and (data_dir / "postgres").exists():
        shutil.rmtree(data_dir / "postgres")
    data_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)

    print(f"Starting infrastructure (data in {data_dir}) ...", flush=True)
    infra = await asyncio.to_thread(
        start_infrastructure,
        data_dir=data_dir,
        kafka_port=int(os.environ.get("WAYBILL_BROKER_PORT", EMBEDDED_KAFKA_PORT)),
        postgres_port=int(os.environ.get("WAYBILL_POSTGRES_PORT", EMBEDDED_POSTGRES_PORT)),
        durable=True,
        prefer="embedded",
    )
    system: ProcessSystem | None = None
    try:
        system = ProcessSystem(
            infra,
            SystemOptions(
                logs=data_dir / "logs",
                ports=default_ports(),
                autopick=options.demo,
                sandbox_auto_advance=options.demo,
                sandbox_step_seconds=1.0,
                tokens=tokens_from_environment(),
                webhook_secret=os.environ.get("WAYBILL_CARRIER_WEBHOOK_SECRET") or None,
                replicas=options.replicas,
                supervise=True,
            ),
        )
        await system.start()
        assert system.supervisor is not None and system.supervision is not None
        system.supervisor.on_restart = lambda r: _say(
            f"! {r.name} ended unexpectedly ({r.exit}); starting it again in "
            f"{r.delay_seconds:.1f} s (restart {r.restarts}; log: {r.log_path})"
        )
        # a process that keeps crashing stops everything, with the reason
        crashed = asyncio.create_task(_crash_loop(system.supervision, stop))
        urls, tokens, logs = system.urls, system.tokens, system.options.logs
        _print_banner(urls, tokens, infra.kafka_bootstrap, logs, demo=options.demo)
        kafka = KafkaSettings(bootstrap=infra.kafka_bootstrap)
        if options.demo:
            demo = asyncio.create_task(
                run_demo(options, urls=urls, tokens=tokens, kafka=kafka, stop=stop)
            )
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({demo, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if demo in done:
                result = demo.result()
                if options.exit_when_done:
                    return result
                await stop.wait()
            else:
                demo.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await demo
        else:
            await stop.wait()
        if crashed.done() and crashed.result() is not None:
            _say(f"\nWaybill is stopping: {crashed.result()}")
            return 1
        return 0
    finally:
        _say("\nStopping ...")
        if system is not None:
            await system.stop()
        await asyncio.to_thread(infra.close)
        _say("Stopped.")


async def _crash_loop(supervision: asyncio.Task[None], stop: asyncio.Event) -> str | None:
    """The reason the supervisor gave up (and ``stop`` set), or None if it was stopped."""
    try:
        await supervision
    except CrashLoop as exc:
        stop.set()
        return str(exc)
    except asyncio.CancelledError:
        return None
    return None


def _say(text: str) -> None:
    """Print, unless the terminal is gone (a closed pipe must not stop the clean-up)."""
    with contextlib.suppress(OSError):
        print(text, flush=True)


def _print_banner(
    urls: dict[str, str], tokens: dict[str, str], bootstrap: str, logs: Path, *, demo: bool
) -> None:
    print("\nWaybill is up.\n")
    for part in ("orders", "inventory", "shipping", "returns", "sandbox"):
        print(f"  {part:10} {urls[part]}")
    print(f"  {'broker':10} {bootstrap}")
    print(f"\n  ops dashboard:       {urls['orders']}/ops?token={tokens['ops']}")
    print(f"  ops figures (JSON):  {urls['orders']}/sla/summary  (bearer: the ops token)")
    print(
        f"  warehouse page:      {urls['inventory']}/warehouse/<warehouse_id>"
        f"?token={tokens['warehouse']}" + ("  (demo: BER-1, MUC-1, AMS-1)" if demo else "")
    )
    for role, token in tokens.items():
        print(f"  token {role:10} {token}")
    print(
        "\n  a shop's own key:    WAYBILL_TOKEN_ADMIN=<admin token> waybill keys create SHOP_ID"
        "\n  a staff member's:    POST /warehouses/<warehouse_id>/staff (docs/tenancy.md)"
    )
    print(f"\n  logs: {logs}\n  Ctrl-C stops everything.\n", flush=True)


async def register_demo_warehouses(http: httpx.AsyncClient, inventory: str, admin: str) -> None:
    for warehouse_id, name, country, postal in DEMO_WAREHOUSES:
        r = await http.put(
            f"{inventory}/warehouses/{warehouse_id}",
            json={"name": name, "country": country, "postal_code": postal},
            headers={"Authorization": f"Bearer {admin}"},
        )
        r.raise_for_status()


def demo_bin(warehouse_index: int, sku: str) -> str:
    """Where a demo SKU lives in a demo warehouse: zone, aisle, shelf."""
    i = DEMO_SKUS.index(sku)
    return f"{'ABC'[warehouse_index]}-{i + 1:02d}-{(i * 7) % 5 + 1:02d}"


async def receive_demo_stock(
    http: httpx.AsyncClient, inventory: str, admin: str, units: Mapping[str, int]
) -> None:
    """``units[sku]`` of each SKU into every demo warehouse (POST /stock/receipts)."""
    for sku, quantity in units.items():
        for j, (warehouse_id, *_rest) in enumerate(DEMO_WAREHOUSES):
            r = await http.post(
                f"{inventory}/stock/receipts",
                json={
                    "warehouse_id": warehouse_id,
                    "sku": sku,
                    "quantity": quantity,
                    "bin": demo_bin(j, sku),
                },
                headers={"Authorization": f"Bearer {admin}"},
            )
            r.raise_for_status()


async def _demo_setup(
    http: httpx.AsyncClient, urls: dict[str, str], tokens: dict[str, str], n: int
) -> None:
    await register_demo_warehouses(http, urls["inventory"], tokens["admin"])
    per_sku = max(5, n)  # enough for every demo order, spread over the warehouses
    await receive_demo_stock(
        http, urls["inventory"], tokens["admin"], dict.fromkeys(DEMO_SKUS, per_sku)
    )


def demo_order(
    n: int, *, rng: random.Random | None = None, order_id: str | None = None
) -> dict[str, Any]:
    """An order as a shop would place it: 1-3 lines of the demo SKUs to a demo city."""
    dice = rng or random.Random()
    city, country, postal = dice.choice(DEMO_DESTINATIONS)
    lines = dice.sample(DEMO_SKUS, k=dice.randint(1, 3))
    return {
        "event_id": str(uuid4()),
        "order_id": order_id or f"demo:{uuid4().hex[:10]}",
        "shop_id": "demo-shop",
        "placed_at": datetime.now(UTC).isoformat(),
        "service_level": "express" if n % 5 == 0 else "standard",
        "currency": "EUR",
        "customer": {"name": f"Customer {n}", "email": f"customer{n}@example.org"},
        "ship_to": {
            "name": f"Customer {n}",
            "line1": f"Example Street {n}",
            "city": city,
            "postal_code": postal,
            "country": country,
        },
        "lines": [
            {
                "sku": sku,
                "quantity": dice.randint(1, 2),
                "unit_price": f"{dice.randint(5, 90)}.99",
            }
            for sku in lines
        ],
    }


async def run_demo(
    options: UpOptions,
    *,
    urls: dict[str, str],
    tokens: dict[str, str],
    kafka: KafkaSettings,
    stop: asyncio.Event,
) -> int:
    """Place demo orders, ask for some returns, and show progress; 0 when all is done."""
    async with httpx.AsyncClient(timeout=10) as http:
        await _demo_setup(http, urls, tokens, options.demo_orders)
        producer = AIOKafkaProducer(acks="all", **client_options(kafka))
        watcher = AIOKafkaConsumer(
            topics.SHIPMENTS_DELIVERED,
            topics.RETURNS_APPROVED,
            topics.RETURNS_REJECTED,
            group_id=f"demo-shop-{uuid4().hex[:6]}",
            auto_offset_reset="latest",
            **client_options(kafka),
        )
        await producer.start()
        await watcher.start()
        placed: dict[str, dict[str, Any]] = {}
        returns_requested: set[str] = set()
        delivered: set[str] = set()  # this run's orders the carrier delivered
        decisions: Counter[str] = Counter()
        try:

            async def place_orders() -> None:
                for n in range(options.demo_orders):
                    order = demo_order(n)
                    placed[order["order_id"]] = order
                    await producer.send_and_wait(
                        topics.ORDERS_PLACED,
                        json.dumps(order).encode(),
                        key=order["order_id"].encode(),
                    )
                    await asyncio.sleep(1.0 / options.demo_rate)

            async def send_return(order_id: str, line: dict[str, Any]) -> None:
                # A customer sends something back a little while after it arrived.
                await asyncio.sleep(RETURN_AFTER_SECONDS)
                await producer.send_and_wait(
                    topics.RETURNS_REQUESTED,
                    json.dumps(
                        {
                            "event_id": str(uuid4()),
                            "return_id": f"ret:{uuid4().hex[:10]}",
                            "order_id": order_id,
                            "requested_at": datetime.now(UTC).isoformat(),
                            "lines": [{"sku": line["sku"], "quantity": line["quantity"]}],
                        }
                    ).encode(),
                    key=order_id.encode(),
                )

            async def request_returns() -> None:
                # The shop follows deliveries, and every fourth customer sends something back.
                pending: set[asyncio.Task[None]] = set()
                async for record in watcher:
                    event = json.loads(record.value)
                    if record.topic != topics.SHIPMENTS_DELIVERED:
                        approved = record.topic == topics.RETURNS_APPROVED
                        decisions["approved" if approved else f"rejected:{event['reason']}"] += 1
                        continue
                    order_id = event["order_id"]
                    if order_id in placed:
                        delivered.add(order_id)
                    if order_id not in placed or order_id in returns_requested:
                        continue
                    if len(returns_requested) >= max(1, options.demo_orders // 4):
                        continue
                    returns_requested.add(order_id)
                    task = asyncio.create_task(send_return(order_id, event["lines"][0]))
                    pending.add(task)
                    task.add_done_callback(pending.discard)

            tasks = [asyncio.create_task(place_orders()), asyncio.create_task(request_returns())]
            started = time.monotonic()

            async def progress_now() -> DemoProgress:
                return DemoProgress(
                    elapsed=time.monotonic() - started,
                    placed=len(placed),
                    total=options.demo_orders,
                    delivered=len(delivered),
                    returns=len(returns_requested),
                    decisions=Counter(decisions),
                    by_status=await _summary(http, urls, tokens),
                )

            try:
                ended = await _show_progress(
                    progress_now, stop=stop, timeout=options.done_timeout_seconds
                )
                if ended is None:  # stopped
                    return 0
                if ended.done():
                    print("\nDemo complete: every order delivered, every return decided.")
                    return 0
                print("\nDemo did not finish in time.", file=sys.stderr)
                return 1
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        finally:
            await watcher.stop()
            await producer.stop()


async def _show_progress(
    progress_now: Callable[[], Awaitable[DemoProgress]],
    *,
    stop: asyncio.Event,
    timeout: float,
    every: float = 2.0,
) -> DemoProgress | None:
    """The demo's progress ``every`` seconds, redrawn in place on a terminal, a line each
    when piped, until the demo is done or out of time (its last progress), or stopped."""
    started = time.monotonic()
    out = terminal.console_for(sys.stdout)
    with terminal.live(Text("the demo begins ..."), console=out) as display:
        while not stop.is_set():
            progress = await progress_now()
            if display is None:
                print(progress.line(), flush=True)
            else:
                display.update(progress.view(), refresh=True)
            if progress.done() or time.monotonic() - started > timeout:
                return progress
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
    return None


async def _summary(
    http: httpx.AsyncClient, urls: dict[str, str], tokens: dict[str, str]
) -> dict[str, int]:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        r = await http.get(
            f"{urls['orders']}/sla/summary", headers={"Authorization": f"Bearer {tokens['ops']}"}
        )
        counts: dict[str, int] = r.json()["orders_by_status"]
        return counts
    return {}


#: the statuses the demo's progress counts, in the order an order passes them
_COLUMNS = (
    "accepted",
    "backordered",
    "reserved",
    "picking",
    "packed",
    "label_created",
    "shipped",
    "delivered",
    "return_requested",
    "rejected",
)
#: how a status count looks on a terminal
_STATUS_STYLES = {"backordered": "yellow", "delivered": "green", "rejected": "red"}


@dataclass
class DemoProgress:
    """Where the demo stands: this run's orders and returns, and every order by status."""

    elapsed: float
    placed: int
    total: int
    delivered: int
    returns: int
    decisions: Counter[str]
    by_status: dict[str, int]

    def done(self) -> bool:
        """Every order of this run delivered and every return it asked for decided."""
        return (
            self.delivered >= self.total
            and self.returns > 0
            and sum(self.decisions.values()) >= self.returns
        )

    def line(self) -> str:
        """One plain line (printed every two seconds when the output is piped)."""
        counts = self.by_status
        cells = "  ".join(f"{c}={counts.get(c, 0)}" for c in _COLUMNS if counts.get(c))
        decided = ", ".join(f"{k}={v}" for k, v in sorted(self.decisions.items())) or "-"
        return (
            f"[{self.elapsed:6.1f}s] this run: placed {self.placed}/{self.total},"
            f" delivered {self.delivered}/{self.total} | all orders: {cells or 'waiting'}"
            f" | returns requested {self.returns}, decided: {decided}"
        )

    def view(self) -> RenderableType:
        """The live display on a terminal: this run, then every order by status."""
        run = ViewTable("elapsed", "placed", "delivered", "", "returns requested", "decided")
        decided = Text(", ").join(
            Text(f"{k} {v}", "green" if k == "approved" else "yellow")
            for k, v in sorted(self.decisions.items())
        )
        run.add_row(
            f"{self.elapsed:.0f} s",
            f"{self.placed}/{self.total}",
            Text(
                f"{self.delivered}/{self.total}",
                "bold green" if self.delivered >= self.total else "",
            ),
            ProgressBar(total=max(1, self.total), completed=self.delivered, width=20),
            str(self.returns),
            decided or Text("-"),
        )
        shown = [c for c in _COLUMNS if self.by_status.get(c)]
        if not shown:
            return Group(Text("this run", "bold"), run, Text("all orders: waiting", "dim"))
        statuses = ViewTable()
        for status in shown:
            statuses.add_column(status, justify="right")
        statuses.add_row(*(Text(str(self.by_status[c]), _STATUS_STYLES.get(c, "")) for c in shown))
        return Group(Text("this run", "bold"), run, Text("all orders by status", "bold"), statuses)
