"""The shipped Prometheus pieces against the real thing: the alert rules pass `promtool check`
and their unit tests, and a real Prometheus (Debian's package; `make test` installs it when
run as root) scrapes the running services with the shipped scrape configuration and
answers PromQL about an order's stages and the consumer lag, and every query of the shipped
Grafana dashboard parses and returns series."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared import topics
from shared.topics import dead_letter_topic
from tests.conftest import MakeSystem
from tests.e2e.test_walking_skeleton import _stock_warehouse
from tests.e2e.test_waybill_up import free_port
from tests.factories import order_placed
from tests.integration.test_shop_webhooks import subscribe
from tests.support import wait_for
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "waybill.json"
#: what Grafana puts in place of its variables before it sends a query: the interval
#: variables as their smallest sound value at this test's 1 s scrapes, "All" for the others
GRAFANA_VARIABLES = {
    "$__rate_interval": "30s",
    "$__interval": "1s",
    "$__range": "1h",
    "$service": ".*",
    "$stage": ".*",
}


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is missing: `make test` installs Debian's prometheus package when run as "
            "root (apt-get install prometheus)"
        )
    return found


def test_the_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    promtool = _tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", "alerts.yml"],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "9 rules found" in checked.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_severity_a_summary_and_what_to_do() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"][0]["rules"]
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])


def scrape_config_for(system: LocalSystem, token_file: Path, *, interval: str) -> dict[str, Any]:
    """The shipped configuration, pointed at this system: only targets, the token file and
    the intervals change."""
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(PROMETHEUS_DIR / "alerts.yml")]
    for job in config["scrape_configs"]:
        service = job["job_name"].removeprefix("waybill-")
        job["authorization"]["credentials_file"] = str(token_file)
        job["static_configs"] = [{"targets": [system.urls[service].removeprefix("http://")]}]
    return config


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[Any]:
    binary = _tool("prometheus")
    started: list[asyncio.subprocess.Process] = []
    log_path = tmp_path / "prometheus.log"

    async def start(config: dict[str, Any]) -> str:
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        started.append(process)
        url = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            if process.returncode is not None:
                raise AssertionError(log_path.read_text()[-2000:])
            try:
                async with httpx.AsyncClient(timeout=2) as http:
                    return (await http.get(f"{url}/-/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(ready, timeout=30, interval=0.2, what="Prometheus ready")
        return url

    yield start
    for process in started:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


async def query(http: httpx.AsyncClient, url: str, promql: str) -> list[dict[str, Any]]:
    r = await http.get(f"{url}/api/v1/query", params={"query": promql})
    assert r.status_code == 200, r.text
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


async def test_a_real_prometheus_scrapes_the_services_and_answers_the_dashboard(
    make_system: MakeSystem, event_log_factory, publisher_factory, prometheus, tmp_path: Path
) -> None:
    system = await make_system(autopick=True, service_overrides={"webhook_poll_seconds": 0.1})
    log = await event_log_factory(
        system.config.kafka,
        [
            topics.SHIPMENTS_LABEL_CREATED,
            topics.SLA_BREACHED,
            dead_letter_topic(topics.ORDERS_PLACED),
        ],
    )
    shop = await publisher_factory(system.config.kafka)
    token_file = tmp_path / "ops-token"
    token_file.write_text(system.config.tokens["ops"])
    url = await prometheus(scrape_config_for(system, token_file, interval="1s"))
    async with httpx.AsyncClient(timeout=30) as http:
        await _stock_warehouse(http, system, "TEAPOT", 10)
        # what the dashboard's failure panels need to show something: a shop's webhook, a
        # record that cannot be read, an order placed two minutes ago (its accept is late)
        await subscribe(http, system, "shop1", "prometheus-test")
        await shop.send(topics.ORDERS_PLACED, b"{not json", key="shop1:poison")
        late = order_placed(
            lines=[("TEAPOT", 1)], placed_at=datetime.now(UTC) - timedelta(minutes=2)
        )
        await shop.send(topics.ORDERS_PLACED, late, key=late["order_id"])
        placed = order_placed(lines=[("TEAPOT", 1)])
        await shop.send(topics.ORDERS_PLACED, placed, key=placed["order_id"])
        await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=placed["order_id"])
        await log.wait(topics.SLA_BREACHED, order_id=late["order_id"])
        await log.wait(dead_letter_topic(topics.ORDERS_PLACED))

        async def every_service_up() -> list[dict[str, Any]] | None:
            found = await query(http, url, 'up{job=~"waybill-.*"} == 1')
            return found if len(found) == 4 else None

        up = await wait_for(every_service_up, timeout=30, what="four services scraped")
        assert {s["metric"]["job"] for s in up} == {
            f"waybill-{name}" for name in ("orders", "inventory", "shipping", "returns")
        }

        # the order's stages as the scrapes saw them: accepted, then dispatched-to-label
        async def stages() -> set[str] | None:
            found = await query(
                http, url, "sum by (stage) (waybill_stage_latency_seconds_count) > 0"
            )
            names = {s["metric"]["stage"] for s in found}
            return names if "accept" in names else None

        assert "accept" in await wait_for(stages, timeout=30, what="stage latencies")
        handled = await query(
            http,
            url,
            'sum by (service, topic) (waybill_events_handled_total{topic="orders.accepted"})',
        )
        assert {s["metric"]["service"] for s in handled} >= {"inventory", "shipping", "returns"}

        # each service measures its lag every WAYBILL_BROKER_CHECK_SECONDS (10 s)
        async def lag() -> list[dict[str, Any]] | None:
            found = await query(http, url, "sum by (service, topic) (waybill_consumer_lag)")
            services = {s["metric"]["service"] for s in found}
            return found if services >= {"orders", "shipping"} else None

        lags = await wait_for(lag, timeout=40, what="consumer lag of orders and shipping")
        assert all(float(s["value"][1]) >= 0 for s in lags)

        # restarts and the at-risk gauge are there from the start; the rules are loaded
        restarts = await query(http, url, "waybill_process_restarts")
        assert {s["metric"]["service"] for s in restarts} == {
            "orders",
            "inventory",
            "shipping",
            "returns",
        }
        assert await query(http, url, 'waybill_sla_at_risk{stage="dispatch"}')
        assert await query(http, url, 'process_start_time_seconds{job="waybill-orders"}')
        r = await http.get(f"{url}/api/v1/rules")
        loaded = {rule["name"] for g in r.json()["data"]["groups"] for rule in g["rules"]}
        assert len(loaded) == 9 and "WaybillServiceDown" in loaded

        # every query of the Grafana dashboard, as Grafana sends it, over these scrapes
        for title, promql in dashboard_queries():

            async def answered(promql: str = promql) -> list[dict[str, Any]] | None:
                return await query(http, url, promql) or None

            await wait_for(answered, timeout=30, what=f"series for the panel {title!r}")
        for name, metric, label in dashboard_variables():
            r = await http.get(f"{url}/api/v1/label/{label}/values", params={"match[]": metric})
            assert r.status_code == 200 and r.json()["data"], (name, r.text)


def dashboard() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return found


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def grafana_expanded(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with the variables filled in) for every query of every panel."""
    return [
        (f"{panel['title']} ({target['refId']})", grafana_expanded(target["expr"]))
        for panel in panels()
        for target in panel["targets"]
    ]


def dashboard_variables() -> list[tuple[str, str, str]]:
    """(variable, metric, label) of each ``label_values(metric, label)`` variable."""
    found = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"])
        assert match, variable
        found.append((variable["name"], match[1], match[2]))
    return found


def test_the_dashboard_is_whole_and_speaks_of_the_shipped_alerts() -> None:
    """What Grafana needs to draw it: unique ids, panels on the grid without overlaps, each
    query on the dashboard's Prometheus variable, and the alerts it names exist."""
    board = dashboard()
    every = board["panels"]
    assert len({p["id"] for p in every}) == len(every)
    taken: set[tuple[int, int]] = set()
    for p in every:
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{p['title']} overlaps another panel"
        taken |= cells
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in panels():
        assert p["title"] and p["description"], p["id"]
        assert p["targets"], p["title"]
        for target in [p, *p["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    shipped = {
        r["alert"]
        for g in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    named = set(re.findall(r"\bWaybill[A-Z]\w+", DASHBOARD.read_text()))
    assert named and named <= shipped, named - shipped
    # what the issue asks the dashboard to show, each by the metric behind it
    queries = " ".join(expr for _, expr in dashboard_queries())
    for metric in (
        "waybill_sla_breaches_total",
        "waybill_sla_at_risk",
        "waybill_stage_latency_seconds_bucket",
        "waybill_events_handled_total",
        "waybill_consumer_lag",
        "waybill_outbox_backlog",
        "waybill_outbox_oldest_age_seconds",
        "waybill_dead_letters_total",
        "waybill_carrier_calls_total",
        "waybill_carrier_breaker_state",
        "waybill_process_restarts",
        "waybill_webhook_deliveries_total",
    ):
        assert metric in queries, metric
