"""The shipped Prometheus pieces against the real thing: the alert rules pass `promtool check`
and their unit tests, and a real Prometheus (Debian's package; `make test` installs it when
run as root) scrapes the running services with the shipped scrape configuration and
answers PromQL about an order's stages and the consumer lag."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared import topics
from tests.conftest import MakeSystem
from tests.e2e.test_walking_skeleton import _stock_warehouse
from tests.e2e.test_waybill_up import free_port
from tests.factories import order_placed
from tests.support import wait_for
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


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


async def test_a_real_prometheus_scrapes_the_services_with_the_shipped_configuration(
    make_system: MakeSystem, event_log_factory, publisher_factory, prometheus, tmp_path: Path
) -> None:
    system = await make_system(autopick=True)
    log = await event_log_factory(system.config.kafka, [topics.SHIPMENTS_LABEL_CREATED])
    shop = await publisher_factory(system.config.kafka)
    token_file = tmp_path / "ops-token"
    token_file.write_text(system.config.tokens["ops"])
    url = await prometheus(scrape_config_for(system, token_file, interval="1s"))
    async with httpx.AsyncClient(timeout=30) as http:
        await _stock_warehouse(http, system, "TEAPOT", 10)
        placed = order_placed(lines=[("TEAPOT", 1)])
        await shop.send(topics.ORDERS_PLACED, placed, key=placed["order_id"])
        await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=placed["order_id"])

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
