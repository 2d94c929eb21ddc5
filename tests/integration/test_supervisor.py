"""The supervisor of `waybill up` against real processes: restarts with what happened in the
environment, and a crash loop that gives up with the reason."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.support import wait_for
from waybill.processes import Child
from waybill.supervisor import CrashLoop, RestartPolicy, Supervisor, describe_exit

#: writes what the supervisor told it to a file named by its argument, then waits
REPORTING = """
import json, os, signal, sys
keys = ("WAYBILL_SUPERVISOR_RESTARTS", "WAYBILL_SUPERVISOR_LAST_EXIT",
        "WAYBILL_SUPERVISOR_RESTARTED_AT")
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"pid": os.getpid(), **{k: os.environ.get(k) for k in keys}}) + "\\n")
signal.pause()  # until the test kills it
"""


def starts(path: Path) -> list[dict[str, str | None]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_a_process_killed_with_9_is_started_again_and_told_how_it_ended(
    tmp_path: Path,
) -> None:
    report = tmp_path / "starts.jsonl"
    child = Child(
        "worker",
        [sys.executable, "-c", REPORTING, str(report)],
        dict(os.environ),
        tmp_path / "w.log",
    )
    await child.start()
    restarts = []
    supervisor = Supervisor(
        [child], policy=RestartPolicy(base_seconds=0.05), on_restart=restarts.append
    )
    supervision = asyncio.create_task(supervisor.run())
    try:
        await wait_for(lambda: len(starts(report)) == 1, timeout=20)
        first = starts(report)[0]
        assert first["WAYBILL_SUPERVISOR_RESTARTS"] is None
        os.kill(int(str(first["pid"])), signal.SIGKILL)
        await wait_for(lambda: len(starts(report)) == 2, timeout=20)
        second = starts(report)[1]
        assert second["pid"] != first["pid"]
        assert second["WAYBILL_SUPERVISOR_RESTARTS"] == "1"
        assert second["WAYBILL_SUPERVISOR_LAST_EXIT"] == "killed by SIGKILL"
        assert second["WAYBILL_SUPERVISOR_RESTARTED_AT"]
        assert supervisor.restarts_of("worker") == 1
        assert [(r.name, r.exit, r.restarts) for r in restarts] == [
            ("worker", "killed by SIGKILL", 1)
        ]
        assert not supervision.done()
    finally:
        supervision.cancel()
        await asyncio.gather(supervision, return_exceptions=True)
        await child.stop()


async def test_a_process_that_keeps_crashing_stops_the_supervision_with_the_reason(
    tmp_path: Path,
) -> None:
    log = tmp_path / "crashing.log"
    child = Child(
        "crashing",
        [sys.executable, "-c", "import sys; print('bad config', flush=True); sys.exit(3)"],
        dict(os.environ),
        log,
    )
    await child.start()
    supervisor = Supervisor(
        [child], policy=RestartPolicy(base_seconds=0.01, max_restarts=3, window_seconds=60)
    )
    with pytest.raises(CrashLoop) as crash:
        await asyncio.wait_for(supervisor.run(), timeout=60)
    assert supervisor.restarts_of("crashing") == 3  # then the fourth end within the window
    message = str(crash.value)
    assert "crashing ended 4 times within 60 s" in message
    assert "exit code 3" in message and str(log) in message
    assert log.read_text().count("bad config") == 4


def test_exits_are_described_by_code_or_signal() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-15) == "killed by SIGTERM"


def test_restarts_back_off_within_the_window() -> None:
    policy = RestartPolicy(base_seconds=0.5, max_seconds=4)
    assert [policy.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


async def test_a_replica_that_leaves_stays_away_until_it_joins_and_is_no_restart(
    tmp_path: Path,
) -> None:
    report = tmp_path / "starts.jsonl"
    child = Child(
        "replica",
        [sys.executable, "-c", REPORTING, str(report)],
        dict(os.environ),
        tmp_path / "r.log",
    )
    await child.start()
    supervisor = Supervisor([child], policy=RestartPolicy(base_seconds=0.05))
    supervision = asyncio.create_task(supervisor.run())
    try:
        await wait_for(lambda: len(starts(report)) == 1, timeout=20)
        await supervisor.leave(child)  # SIGTERM, as a scale-in stops it
        assert child.process is not None and child.process.returncode is not None
        assert supervisor.is_away("replica")
        # it stays stopped: the one start so far, and no restart counted
        assert len(starts(report)) == 1 and supervisor.restarts_of("replica") == 0
        supervisor.join(child)
        await wait_for(lambda: len(starts(report)) == 2, timeout=20)
        assert starts(report)[1]["WAYBILL_SUPERVISOR_RESTARTS"] is None
        assert supervisor.restarts_of("replica") == 0 and not supervisor.is_away("replica")
        assert not supervision.done()
    finally:
        supervision.cancel()
        await asyncio.gather(supervision, return_exceptions=True)
        await child.stop()
