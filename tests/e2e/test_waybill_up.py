"""The README's first command, as a user runs it: `waybill up --demo`, in its own process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

T = TypeVar("T")

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_environment() -> dict[str, str]:
    """This process's environment without WAYBILL_ settings, each port a free one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYBILL_")}
    for name in ("BROKER", "POSTGRES", "ORDERS", "INVENTORY", "SHIPPING", "RETURNS", "SANDBOX"):
        env[f"WAYBILL_{name}_PORT"] = str(free_port())
    return env


def run_demo(
    data_dir: Path, env: dict[str, str], *, orders: int
) -> subprocess.CompletedProcess[str]:
    """`waybill up --demo` in its own process until its orders are done; it must succeed."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "waybill.cli",
            "up",
            "--demo",
            "--orders",
            str(orders),
            "--rate",
            str(orders),
            "--exit-when-done",
            "--data-dir",
            str(data_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_demo_moves_every_order_to_delivered_and_stops_cleanly(tmp_path: Path) -> None:
    env = fresh_environment()
    result = run_demo(tmp_path, env, orders=8)
    assert "Waybill is up." in result.stdout
    assert re.search(r"/warehouse/<warehouse_id>\?token=\S+", result.stdout)
    # the dashboard's link signs ops in with the ops token the banner lists
    dashboard = re.search(
        r"ops dashboard: +http://127\.0\.0\.1:(\d+)/ops\?token=(\S+)", result.stdout
    )
    ops_token = re.search(r"token ops +(\S+)", result.stdout)
    assert dashboard and ops_token, result.stdout[:2000]
    assert dashboard[1] == env["WAYBILL_ORDERS_PORT"]
    assert dashboard[2] == ops_token[1]
    assert "Demo complete" in result.stdout
    progress = re.findall(r"delivered (\d+)/8", result.stdout)
    assert progress and progress[-1] == "8", "the progress table counts this run's deliveries"
    assert "Stopped." in result.stdout
    # what this run started: servers on its data directory or its broker port
    marks = (str(tmp_path), f"127.0.0.1:{env['WAYBILL_BROKER_PORT']}")
    leftovers = []
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(m in cmdline for m in marks):
            leftovers.append(f"{process.info['name']}: {cmdline[:120]}")
    assert leftovers == [], f"processes left running: {leftovers}"


def _until(condition: Callable[[], T | None], *, timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def test_a_service_killed_with_9_is_started_again_and_ops_see_the_restart(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYBILL_")}
    for name in ("BROKER", "POSTGRES", "ORDERS", "INVENTORY", "SHIPPING", "RETURNS", "SANDBOX"):
        env[f"WAYBILL_{name}_PORT"] = str(free_port())
    out = tmp_path / "up.out"
    with out.open("w") as stdout:
        up = subprocess.Popen(
            [sys.executable, "-m", "waybill.cli", "up", "--data-dir", str(tmp_path / "data")],
            env=env,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        _until(lambda: "Waybill is up." in out.read_text(), timeout=180, what="waybill up")
        token_match = re.search(r"token ops +(\S+)", out.read_text())
        assert token_match, out.read_text()[-2000:]
        token = token_match[1]
        shipping_url = f"http://127.0.0.1:{env['WAYBILL_SHIPPING_PORT']}"
        ops = {"Authorization": f"Bearer {token}"}

        def shipping_process() -> psutil.Process | None:
            for child in psutil.Process(up.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.cmdline()[-2:] == ["run", "shipping"]:
                        return child
            return None

        first = _until(shipping_process, timeout=10, what="the shipping process")
        first.send_signal(signal.SIGKILL)

        def restarted() -> dict[str, Any] | None:
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"{shipping_url}/ops/health", headers=ops, timeout=2)
                if r.status_code == 200 and r.json()["process"]["restarts"] == 1:
                    return dict(r.json()["process"])
            return None

        process = _until(restarted, timeout=90, what="shipping started again")
        assert process["last_exit"] == "killed by SIGKILL"
        again = shipping_process()
        assert again is not None and again.pid != first.pid
        assert "! shipping ended unexpectedly (killed by SIGKILL)" in out.read_text()
        # ops see it in `waybill sla` (and the dashboard, from the same figures)
        report = subprocess.run(
            [
                sys.executable,
                "-m",
                "waybill.cli",
                "sla",
                "--url",
                f"http://127.0.0.1:{env['WAYBILL_ORDERS_PORT']}",
                f"--token={token}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert report.returncode == 0, report.stdout + report.stderr
        line = next(x for x in report.stdout.splitlines() if x.strip().startswith("shipping"))
        assert "restarts 1 (last: killed by SIGKILL" in line, report.stdout
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert up.returncode == 0, out.read_text()[-3000:]
    assert "Stopped." in out.read_text()
