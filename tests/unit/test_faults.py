"""Fault points armed from outside: the first process to take the file dies with SIGKILL,
the others and unarmed processes go on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shared.faults import ENV, RELAY_AFTER_PUBLISH, arm

PASS_THE_POINT = (
    "from shared.faults import die_if_armed; "
    "die_if_armed('relay-after-publish', 'orders'); print('went on')"
)


def run_point(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PASS_THE_POINT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_an_armed_point_kills_the_first_process_that_reaches_it_and_only_that(
    tmp_path: Path,
) -> None:
    env = {**os.environ, ENV: str(tmp_path)}
    armed = arm(tmp_path, RELAY_AFTER_PUBLISH, "orders")
    first = run_point(env)
    assert first.returncode == -9 and "went on" not in first.stdout
    assert not armed.exists()  # taken
    second = run_point(env)
    assert second.returncode == 0 and "went on" in second.stdout


def test_a_point_armed_for_another_service_or_without_the_folder_does_nothing(
    tmp_path: Path,
) -> None:
    arm(tmp_path, RELAY_AFTER_PUBLISH, "shipping")
    assert run_point({**os.environ, ENV: str(tmp_path)}).returncode == 0
    without = {k: v for k, v in os.environ.items() if k != ENV}
    arm(tmp_path, RELAY_AFTER_PUBLISH, "orders")
    assert run_point(without).returncode == 0
    assert (tmp_path / f"{RELAY_AFTER_PUBLISH}.orders").exists()
