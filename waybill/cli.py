"""The ``waybill`` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

SERVICES = ("orders", "inventory", "shipping", "returns")
#: waybill.chaos.SCENARIOS, named here so that parsing arguments imports nothing heavy
CHAOS_SCENARIOS = (
    "kill-consumer",
    "kill-relay",
    "rebalance",
    "broker-restart",
    "database-restart",
    "carrier-faults",
    "poison",
)


def _configure_logging(level: str, *, service: str) -> None:
    from shared.logs import configure_logging

    log_format = os.environ.get("WAYBILL_LOG_FORMAT", "plain").lower()
    configure_logging(level, service=service, json_lines=log_format == "json")


def cmd_run(args: argparse.Namespace) -> int:
    """One service as its own process, against external Kafka and PostgreSQL."""
    import importlib

    import uvicorn

    from shared.gc_policy import tune_for_batches

    main = importlib.import_module(f"services.{args.service}.main")
    settings = main.SETTINGS()
    runtime = main.build_runtime(settings)
    app = main.create_app(runtime)
    tune_for_batches()
    uvicorn.run(
        app,
        host=args.host or settings.http_host,
        port=args.port or settings.http_port,
        log_level="warning",
        access_log=False,
    )
    return 0


def cmd_carrier_sandbox(args: argparse.Namespace) -> int:
    from waybill.carrier_sandbox import SandboxConfig, run_sandbox

    config = SandboxConfig(
        webhook_url_template=args.webhook_url,
        webhook_secret=args.webhook_secret or os.environ.get("WAYBILL_CARRIER_WEBHOOK_SECRET", ""),
        public_url=args.public_url or f"http://{args.host}:{args.port}",
        auto_advance=args.auto_advance,
        auto_advance_step_seconds=args.step_seconds,
    )
    run_sandbox(config, host=args.host, port=args.port)
    return 0


def cmd_sla(args: argparse.Namespace) -> int:
    import json

    import httpx

    from waybill.sla_report import default_orders_url, fetch_summary, render
    from waybill.terminal import show

    url = args.url or default_orders_url()
    token = _token(args, "ops", "waybill sla")
    if token is None:
        return 2
    try:
        summary = fetch_summary(url, token)
    except PermissionError as exc:
        print(f"waybill sla: {exc}")
        return 2
    except httpx.HTTPError as exc:
        print(f"waybill sla: cannot reach the orders service at {url}: {exc}")
        return 1
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        show(render(summary))
    return 0


def _token(args: argparse.Namespace, role: str, command: str) -> str | None:
    """The role's token from --token or WAYBILL_TOKEN_<ROLE>; None (said why) without one."""
    variable = f"WAYBILL_TOKEN_{role.upper()}"
    token: str = args.token or os.environ.get(variable, "")
    if not token:
        print(f"{command}: set {variable} (printed by `waybill up`) or pass --token")
        return None
    return token


def _generated(text: str, target: Path, *, check: bool, command: str) -> int:
    """Write a file generated from the code, or with ``check`` fail if it is stale."""
    if check:
        current = target.read_text() if target.exists() else ""
        if current != text:
            print(f"{target} is stale: run `{command}` and commit it", file=sys.stderr)
            return 1
        print(f"{target} is up to date")
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"wrote {target}")
    return 0


def cmd_kafka_acls(args: argparse.Namespace) -> int:
    from waybill.kafka_acls import render

    script = render()
    if args.output == "-":
        print(script, end="")
        return 0
    path = Path(args.output)
    written = _generated(
        script, path, check=args.check, command=f"waybill kafka-acls --output {path}"
    )
    if written == 0 and not args.check:
        path.chmod(0o755)
    return written


def cmd_keys(args: argparse.Namespace) -> int:
    from waybill import keys
    from waybill.sla_report import default_orders_url

    url = args.url or default_orders_url()
    token = _token(args, "admin", "waybill keys")
    if token is None:
        return 2
    try:
        if args.keys_command == "create":
            answer = keys.create(url, token, args.shop_id)
        elif args.keys_command == "revoke":
            answer = keys.revoke(url, token, args.shop_id, args.key_id)
        else:
            answer = keys.list_keys(url, token, args.shop_id)
    except keys.KeysError as exc:
        print(f"waybill keys {args.keys_command}: {exc}", file=sys.stderr)
        return 1
    print(keys.render(args.keys_command, answer, as_json=args.json))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from waybill.up import UpOptions, run_up

    options = UpOptions(
        demo=args.demo,
        demo_orders=args.orders,
        demo_rate=args.rate,
        exit_when_done=args.exit_when_done,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        fresh=args.fresh,
        replicas=args.replicas,
    )
    return asyncio.run(run_up(options))


def cmd_bench(args: argparse.Namespace) -> int:
    from shared.gc_policy import tune_for_batches
    from waybill.bench import BenchOptions, run_bench

    options = BenchOptions(
        orders=args.orders,
        full=args.full,
        replicas=args.replicas,
        partitions=args.partitions,
        latency_seconds=args.latency_seconds,
        low_rate=args.low_rate,
        idle_seconds=args.idle_seconds,
        hops=args.hops,
        naive_orders=args.naive_orders,
        references=not args.no_references,
        latency=not args.no_latency,
        output=Path(args.output) if args.output else None,
        as_json=args.json,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        keep_data=args.keep_data,
        profile=Path(args.profile) if args.profile else None,
        service_env=dict(item.split("=", 1) for item in args.env),
    )
    tune_for_batches()  # the shop and its watch take as little CPU from the system as they can
    return asyncio.run(run_bench(options))


def cmd_chaos(args: argparse.Namespace) -> int:
    from shared.gc_policy import tune_for_batches
    from waybill.chaos import ChaosOptions, run_chaos

    options = ChaosOptions(
        scenario=args.scenario,
        orders=args.orders,
        rate=args.rate,
        kills=args.faults,
        interval=args.interval,
        seed=args.seed,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        as_json=args.json,
    )
    tune_for_batches()
    return asyncio.run(run_chaos(options))


def cmd_asyncapi(args: argparse.Namespace) -> int:
    from waybill.asyncapi import render

    return _generated(render(), Path(args.output), check=args.check, command="waybill asyncapi")


def cmd_prometheus_rule(args: argparse.Namespace) -> int:
    from waybill.prometheus_rule import ALERTS, OUTPUT, render

    text = render(Path(args.alerts or ALERTS).read_text())
    return _generated(
        text, Path(args.output or OUTPUT), check=args.check, command="waybill prometheus-rule"
    )


def cmd_dlq(args: argparse.Namespace) -> int:
    from waybill.dlq import list_dead_letters, replay_dead_letters

    if args.dlq_command == "list":
        return asyncio.run(list_dead_letters(topic=args.topic, as_json=args.json))
    return asyncio.run(replay_dead_letters(topic=args.topic, event_id=args.event_id))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="waybill", description="Event-driven order fulfilment and logistics."
    )
    parser.add_argument("--log-level", default=os.environ.get("WAYBILL_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="the whole system on this machine (embedded infra)")
    up.add_argument("--demo", action="store_true", help="sample data, a shop simulator, progress")
    up.add_argument("--orders", type=int, default=50, help="demo: how many orders to place")
    up.add_argument("--rate", type=float, default=5.0, help="demo: orders per second")
    up.add_argument(
        "--exit-when-done",
        action="store_true",
        help="demo: stop once every demo order is delivered and its return decided",
    )
    up.add_argument("--data-dir", help="where embedded data lives (WAYBILL_DATA_DIR)")
    up.add_argument("--fresh", action="store_true", help="start from an empty database")
    up.add_argument(
        "--replicas",
        type=int,
        default=1,
        choices=range(1, 9),
        metavar="N",
        help="instances of each service, 1-8 (they share its partitions; one relay leads)",
    )
    up.set_defaults(handler=cmd_up)

    run = commands.add_parser("run", help="one service against external Kafka and PostgreSQL")
    run.add_argument("service", choices=SERVICES)
    run.add_argument("--host")
    run.add_argument("--port", type=int)
    run.set_defaults(handler=cmd_run)

    sandbox = commands.add_parser("carrier-sandbox", help="the carrier sandbox alone")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8090)
    sandbox.add_argument("--public-url")
    sandbox.add_argument(
        "--webhook-url",
        default=os.environ.get(
            "WAYBILL_SANDBOX_WEBHOOK_URL", "http://127.0.0.1:8083/webhooks/carriers/{carrier}"
        ),
        help="where tracking webhooks go; {carrier} is replaced",
    )
    sandbox.add_argument("--webhook-secret")
    sandbox.add_argument("--auto-advance", action="store_true", help="move parcels by itself")
    sandbox.add_argument("--step-seconds", type=float, default=2.0)
    sandbox.set_defaults(handler=cmd_carrier_sandbox)

    sla = commands.add_parser("sla", help="SLA report per stage (count, p50, p95, breaches)")
    sla.add_argument("--url", default=None, help="the orders service (WAYBILL_ORDERS_URL)")
    sla.add_argument(
        "--token",
        help="the ops token (default WAYBILL_TOKEN_OPS; write --token=TOKEN if it begins with -)",
    )
    sla.add_argument("--json", action="store_true", help="the figures as JSON")
    sla.set_defaults(handler=cmd_sla)

    bench = commands.add_parser(
        "bench", help="the end-to-end benchmark on the embedded broker and database"
    )
    bench.add_argument("--orders", type=int, default=20_000, help="orders in the peak phase")
    bench.add_argument(
        "--full", action="store_true", help="every order on to delivery and a return decision"
    )
    bench.add_argument("--replicas", type=int, default=1, help="instances of each service")
    bench.add_argument("--partitions", type=int, default=2, help="partitions per topic")
    bench.add_argument(
        "--latency-seconds", type=float, default=20.0, help="length of each fixed-rate phase"
    )
    bench.add_argument("--low-rate", type=float, default=10.0, help="orders/s of the low phase")
    bench.add_argument("--idle-seconds", type=float, default=10.0)
    bench.add_argument("--hops", type=int, default=4, help="hops of the reference pipelines")
    bench.add_argument("--naive-orders", type=int, default=2_000)
    bench.add_argument("--no-references", action="store_true", help="skip the references")
    bench.add_argument("--no-latency", action="store_true", help="skip the fixed-rate phases")
    bench.add_argument("--output", help="result file (default bench-results/<time>.json)")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    bench.add_argument("--data-dir", help="embedded data and logs (default: a temporary one)")
    bench.add_argument("--keep-data", action="store_true", help="keep the temporary data")
    bench.add_argument("--profile", help="py-spy every service during each phase into this folder")
    bench.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="WAYBILL_X=VALUE",
        help="a setting for every service (repeatable), for experiments",
    )
    bench.set_defaults(handler=cmd_bench)

    chaos = commands.add_parser(
        "chaos", help="the system under a real fault; exit 1 on any loss, duplicate or drift"
    )
    chaos.add_argument("scenario", choices=[*CHAOS_SCENARIOS, "all"])
    chaos.add_argument(
        "--orders",
        type=int,
        default=None,
        help="default: enough for every fault to happen under load",
    )
    chaos.add_argument("--rate", type=float, default=100.0, help="orders per second")
    chaos.add_argument(
        "--faults",
        type=int,
        help="how many faults to inject (default: the scenario's: 20 kills, 24 replica "
        "changes, 2 restarts)",
    )
    chaos.add_argument(
        "--interval",
        type=float,
        help="seconds between faults that come on a clock (default 2; rebalance 5)",
    )
    chaos.add_argument("--seed", type=int, default=1)
    chaos.add_argument("--data-dir", help="embedded data and logs (default: a temporary one)")
    chaos.add_argument("--json", action="store_true", help="the verdicts as JSON")
    chaos.set_defaults(handler=cmd_chaos)

    keys = commands.add_parser("keys", help="issue, list and revoke a shop's API keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    for name, what in (
        ("create", "a new key for the shop (shown once)"),
        ("list", "the shop's keys, never the keys themselves"),
        ("revoke", "revoke one of the shop's keys, everywhere"),
    ):
        sub = keys_commands.add_parser(name, help=what)
        sub.add_argument("shop_id")
        if name == "revoke":
            sub.add_argument("key_id")
        sub.add_argument("--url", default=None, help="the orders service (WAYBILL_ORDERS_URL)")
        sub.add_argument(
            "--token", help="the admin token (default WAYBILL_TOKEN_ADMIN; --token=T if it is -T)"
        )
        sub.add_argument("--json", action="store_true")
    keys.set_defaults(handler=cmd_keys)

    acls = commands.add_parser(
        "kafka-acls", help="the Kafka ACL commands for a real cluster (deploy/kafka/acls.sh)"
    )
    acls.add_argument("--output", default="-", help="a file, or - for standard output")
    acls.add_argument("--check", action="store_true", help="fail if the file is stale")
    acls.set_defaults(handler=cmd_kafka_acls)

    asyncapi = commands.add_parser("asyncapi", help="write docs/asyncapi.yaml from the code")
    asyncapi.add_argument("--output", default="docs/asyncapi.yaml")
    asyncapi.add_argument("--check", action="store_true", help="fail if the file is stale")
    asyncapi.set_defaults(handler=cmd_asyncapi)

    rule = commands.add_parser(
        "prometheus-rule",
        help="write the keda-prometheus overlay's PrometheusRule from the alert rules",
    )
    rule.add_argument("--alerts", help="default deploy/prometheus/alerts.yml")
    rule.add_argument(
        "--output", help="default deploy/k8s/overlays/keda-prometheus/prometheus-rule.yaml"
    )
    rule.add_argument("--check", action="store_true", help="fail if the file is stale")
    rule.set_defaults(handler=cmd_prometheus_rule)

    dlq = commands.add_parser("dlq", help="inspect and re-drive dead-lettered records")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_commands.add_parser("list", help="dead letters of every topic, or one")
    dlq_list.add_argument("topic", nargs="?")
    dlq_list.add_argument("--json", action="store_true")
    dlq_replay = dlq_commands.add_parser("replay", help="publish dead letters to their topic again")
    dlq_replay.add_argument("topic")
    dlq_replay.add_argument("--event-id")
    dlq.set_defaults(handler=cmd_dlq)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    service = args.service if args.handler is cmd_run else f"waybill-{args.command}"
    _configure_logging(args.log_level, service=service)
    try:
        result: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
