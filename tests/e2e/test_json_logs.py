"""Logs that join traces, and keep customers out: a whole `waybill up --demo` run with
WAYBILL_LOG_FORMAT=json, its every log line read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.test_waybill_up import fresh_environment, run_demo

pytestmark = pytest.mark.integration

ORDERS = 6


def test_a_whole_run_logs_json_lines_with_trace_ids_and_no_customer_data(
    tmp_path: Path,
) -> None:
    env = fresh_environment()
    env["WAYBILL_LOG_FORMAT"] = "json"
    env["WAYBILL_LOG_LEVEL"] = "DEBUG"
    result = run_demo(tmp_path, env, orders=ORDERS)
    texts = {"waybill up": result.stderr}
    for path in sorted((tmp_path / "logs").glob("*.log")):
        texts[path.stem] = path.read_text(errors="replace")
    assert {"orders", "inventory", "shipping", "returns"} <= set(texts)

    # the demo's customers are "Customer <n>", customer<n>@example.org, "Example Street <n>"
    for name, text in texts.items():
        for n in range(ORDERS + 1):
            for private in (f"Customer {n}", f"customer{n}@example.org", f"Example Street {n}"):
                assert private not in text, f"{private!r} in the log of {name}"

    lines = []
    for name in ("orders", "inventory", "shipping", "returns"):
        for raw in texts[name].splitlines():
            if not raw.strip():
                continue
            line = json.loads(raw)  # every line is one JSON object
            assert {"timestamp", "level", "service", "logger", "message"} <= set(line), raw
            assert line["service"] == name
            lines.append(line)
    traced = [line for line in lines if "trace_id" in line and "span_id" in line]
    assert traced, "no line carries the trace it was logged in"
    assert all(len(line["trace_id"]) == 32 for line in traced)
    about_orders = [line for line in lines if line.get("order_id", "").startswith("demo:")]
    assert about_orders, "no line names the order it is about"
