"""`waybill chaos` as a user runs it, short: services killed with -9 while orders flow, each
started again by the supervisor, and a verdict that nothing was lost, doubled or drifted.
The long version (20 kills and more) is the command's, never the test suite's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def chaos(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run `waybill chaos ARGS --json` as a user would; its one verdict, which passed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYBILL_")}
    result = subprocess.run(
        [sys.executable, "-m", "waybill.cli", "chaos", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (verdict,) = json.loads(result.stdout)
    assert verdict["scenario"] == args[0] and verdict["passed"] is True
    return dict(verdict)


def test_services_killed_with_9_under_load_lose_and_double_nothing(tmp_path: Path) -> None:
    verdict = chaos(tmp_path, "kill-consumer", "--faults", "4", "--interval", "2", "--rate", "40")
    assert len(verdict["faults"]) == 4
    assert all(" SIGKILL " in fault for fault in verdict["faults"])
    assert verdict["restarts"] >= 4  # every killed process was started again
    checks = verdict["checks"]
    assert checks["orders"] == verdict["orders"] == 40 * 6 * 2
    assert checks["lost"] == 0 and checks["doubled"] == 0
    assert checks["labels_at_carrier"] == checks["orders"]
    assert checks["units_shipped"] == checks["units_ordered"]
    assert not any(checks["dead_letters"].values())


def test_relays_killed_after_the_broker_acknowledged_publish_again_and_lose_nothing(
    tmp_path: Path,
) -> None:
    verdict = chaos(tmp_path, "kill-relay", "--faults", "2", "--interval", "1", "--rate", "40")
    assert len(verdict["faults"]) == 2
    assert all(" relay-after-publish " in fault for fault in verdict["faults"])
    assert verdict["restarts"] >= 2  # each process that took the fault point was killed
    checks = verdict["checks"]
    assert checks["lost"] == 0 and checks["doubled"] == 0
    assert checks["labels_at_carrier"] == checks["orders"] == verdict["orders"]
    assert checks["units_shipped"] == checks["units_ordered"]


def test_faulty_carriers_still_sell_exactly_one_label_per_order(tmp_path: Path) -> None:
    verdict = chaos(tmp_path, "carrier-faults", "--rate", "20", "--orders", "200")
    injected = verdict["faults"][-1]
    errors, _timeouts, limited = (
        int(n) for n in re.findall(r"(\d+) (?:errors|timeouts|429s)", injected)
    )
    assert errors > 0 and limited > 0, injected  # the faults really happened
    checks = verdict["checks"]
    assert checks["orders"] == 200 and checks["lost"] == 0 and checks["doubled"] == 0
    assert checks["labels_at_carrier"] == 200
    assert checks["units_shipped"] == checks["units_ordered"]


def _exactly_once(verdict: dict[str, Any]) -> dict[str, Any]:
    checks = verdict["checks"]
    assert checks["orders"] == verdict["orders"]
    assert checks["lost"] == 0 and checks["doubled"] == 0
    assert checks["labels_at_carrier"] == checks["orders"]
    assert checks["units_shipped"] == checks["units_ordered"]
    return dict(checks)


def test_replicas_leaving_and_joining_under_load_lose_and_double_nothing(
    tmp_path: Path,
) -> None:
    verdict = chaos(tmp_path, "rebalance", "--faults", "4", "--interval", "4", "--rate", "30")
    assert [f.split(" ")[1] for f in verdict["faults"]] == ["left", "joined", "left", "joined"]
    assert verdict["restarts"] == 0  # a replica that left on purpose is not a crash
    assert not any(_exactly_once(verdict)["dead_letters"].values())


def test_a_broker_that_lost_everything_mid_load_is_recovered_from_the_outboxes(
    tmp_path: Path,
) -> None:
    # the memory-only broker killed and started empty: without the services' republish of
    # their recent outbox (WAYBILL_BROKER_LOSS_REPUBLISH_SECONDS=0) orders are lost here
    verdict = chaos(tmp_path, "broker-restart", "--faults", "1", "--rate", "40", "--orders", "800")
    assert len(verdict["faults"]) == 1 and "SIGKILL" in verdict["faults"][0]
    assert not any(_exactly_once(verdict)["dead_letters"].values())


def test_a_database_restart_mid_load_leaves_nothing_partial(tmp_path: Path) -> None:
    verdict = chaos(
        tmp_path, "database-restart", "--faults", "1", "--rate", "40", "--orders", "800"
    )
    assert len(verdict["faults"]) == 1 and "database" in verdict["faults"][0]
    assert not any(_exactly_once(verdict)["dead_letters"].values())


def test_poison_is_dead_lettered_with_reasons_and_the_fixable_replayed(tmp_path: Path) -> None:
    verdict = chaos(
        tmp_path, "poison", "--rate", "40", "--orders", "600", "--interval", "1", "--seed", "3"
    )
    checks = _exactly_once(verdict)  # the failing orders got their labels once replayed
    report = checks["poison"]
    assert set(report["injected"]) == {
        "undecodable",
        "no-order-id",
        "invalid-event",
        "invalid-order",
    }
    assert report["handler_failures"] >= 1 and not report["problems"]
    reasons = report["reasons"]
    assert {"UndecodableRecord", "ValidationError", "InjectedFault"} <= set(reasons)
    assert reasons["InjectedFault"]["count"] == report["handler_failures"]
    assert "not JSON" in reasons["UndecodableRecord"]["example"]
    # what no fix can handle stays dead-lettered, and ops see it
    assert sum(checks["dead_letters"].values()) >= sum(
        n for kind, n in report["injected"].items() if kind != "invalid-order"
    )
