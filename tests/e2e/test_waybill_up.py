"""The README's first command, as a user runs it: `waybill up --demo`, in its own process."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_moves_every_order_to_delivered_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYBILL_")}
    for name in ("BROKER", "POSTGRES", "ORDERS", "INVENTORY", "SHIPPING", "RETURNS", "SANDBOX"):
        env[f"WAYBILL_{name}_PORT"] = str(free_port())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "waybill.cli",
            "up",
            "--demo",
            "--orders",
            "8",
            "--rate",
            "8",
            "--exit-when-done",
            "--data-dir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
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
