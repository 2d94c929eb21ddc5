"""`waybill bench` as a user runs it, small: every phase, both references, the checks, the
result file. The numbers themselves are the benchmark's to judge, never a test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_a_small_bench_measures_every_phase_and_checks_every_order(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYBILL_")}
    output = tmp_path / "result.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "waybill.cli",
            "bench",
            "--orders",
            "300",
            "--latency-seconds",
            "3",
            "--low-rate",
            "10",
            "--idle-seconds",
            "1",
            "--hops",
            "2",
            "--naive-orders",
            "40",
            "--output",
            str(output),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASS" in result.stdout
    report = json.loads(output.read_text())
    assert report["valid"] is True
    phases = {p["name"]: p for p in report["phases"]}
    assert set(phases) == {"peak", "half-peak", "low-rate"}
    peak = phases["peak"]
    assert peak["orders"] == 300 and peak["rate"] > 0
    assert phases["low-rate"]["offered_rate"] == 10
    assert phases["half-peak"]["offered_rate"] == max(1.0, round(peak["rate"] / 2))
    for phase in report["phases"]:
        assert phase["latency_ms"]["p50"] <= phase["latency_ms"]["p99"]
        # CPU of every part of the system was measured
        assert {
            "orders",
            "inventory",
            "shipping",
            "returns",
            "sandbox",
            "broker",
            "postgres",
        } <= set(phase["cpu_seconds"])
        assert phase["cpu_ms_per_order"] > 0
    checks = report["checks"]
    ordered = sum(p["orders"] for p in report["phases"])
    assert checks["orders"] == checks["labels_at_carrier"] == ordered
    assert checks["units_shipped"] == checks["units_ordered"] > 0
    references = {r["name"]: r for r in report["references"]}
    assert references["null pipeline, batched"]["orders"] == 300
    assert references["naive, one at a time"]["orders"] == 40
    assert all(r["hops"] == 2 and r["rate"] > 0 for r in references.values())
    assert report["ratios"]["of_ceiling"] > 0
    assert report["idle_cores"] is not None
    assert set(report["peak_memory_mb"]) >= {"orders", "broker", "postgres"}
