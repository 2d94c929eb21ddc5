"""Keeps the processes of ``waybill up`` running: a process that exits unexpectedly is started
again after a backoff, and one that keeps crashing stops the system with a clear message.

The restarted process learns what happened from its environment
(``WAYBILL_SUPERVISOR_RESTARTS``, ``_LAST_EXIT``, ``_RESTARTED_AT``) and shows it in its
``GET /ops/health``, so the ops dashboard and ``waybill sla`` show restarts. On
Kubernetes the kubelet does this job, and the pod's restart count is the figure to watch.

Backoff: the first restart after a quiet spell waits ``base_seconds``, each further restart
within ``window_seconds`` twice as long, up to ``max_seconds``. More than ``max_restarts``
restarts of one process within ``window_seconds`` is a crash loop: the supervisor gives up
and says which process, how it last ended and where its log is.

A process stopped on purpose (``leave``: a replica scaled in) is not restarted until it is
asked back (``join``), and neither counts as a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

log = logging.getLogger("waybill.supervisor")


class Supervised(Protocol):
    """What the supervisor needs of a process (waybill.processes.Child has it)."""

    name: str
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL``."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class RestartPolicy:
    base_seconds: float = 0.5
    max_seconds: float = 30.0
    #: more restarts than this of one process within window_seconds: a crash loop
    max_restarts: int = 5
    window_seconds: float = 60.0

    def delay(self, recent_restarts: int) -> float:
        """The wait before a restart, given the restarts already made within the window."""
        return float(min(self.max_seconds, self.base_seconds * 2**recent_restarts))


@dataclass
class Restart:
    """One restart, as the supervisor reports it."""

    name: str
    exit: str
    at: datetime
    restarts: int
    delay_seconds: float
    log_path: Path


@dataclass
class _Record:
    restarts: int = 0
    recent: deque[float] = field(default_factory=deque)


class CrashLoop(RuntimeError):
    """A process kept crashing: the system is stopped."""


class Supervisor:
    """Watches ``children`` once they have started; ``run()`` returns only by raising
    :class:`CrashLoop` (or when cancelled)."""

    def __init__(
        self,
        children: Sequence[Supervised],
        *,
        policy: RestartPolicy | None = None,
        on_restart: Callable[[Restart], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = list(children)
        self.policy = policy or RestartPolicy()
        self.on_restart = on_restart
        self._monotonic = monotonic
        self._records = {c.name: _Record() for c in self.children}
        #: processes stopped on purpose, each until its event is set (join)
        self._away: dict[str, asyncio.Event] = {}
        #: every restart made so far, oldest first
        self.restarts: list[Restart] = []

    def restarts_of(self, name: str) -> int:
        return self._records[name].restarts

    def is_away(self, name: str) -> bool:
        return name in self._away

    async def leave(self, child: Supervised) -> None:
        """Stop ``child`` gracefully (SIGTERM), not to be restarted until :meth:`join`."""
        if child.name in self._away:
            return
        self._away[child.name] = asyncio.Event()
        await child.stop()

    def join(self, child: Supervised) -> None:
        """Start a process that left again (its watcher starts it)."""
        away = self._away.pop(child.name, None)
        if away is not None:
            away.set()

    async def run(self) -> None:
        watchers = {asyncio.create_task(self._watch(child)): child for child in self.children}
        try:
            done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a CrashLoop goes to the caller
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def _watch(self, child: Supervised) -> None:
        record = self._records[child.name]
        while True:
            process = child.process
            if process is None:
                raise RuntimeError(f"{child.name} was never started")
            returncode = await process.wait()
            away = self._away.get(child.name)
            if away is not None:  # it left on purpose: back when asked, not a restart
                await away.wait()
                await child.start()
                continue
            ended = describe_exit(returncode)
            now = self._monotonic()
            window = self.policy.window_seconds
            while record.recent and record.recent[0] < now - window:
                record.recent.popleft()
            if len(record.recent) >= self.policy.max_restarts:
                raise CrashLoop(
                    f"{child.name} ended {len(record.recent) + 1} times within "
                    f"{window:.0f} s (last: {ended}); see {child.log_path}"
                )
            delay = self.policy.delay(len(record.recent))
            record.recent.append(now)
            record.restarts += 1
            restart = Restart(
                child.name, ended, datetime.now(UTC), record.restarts, delay, child.log_path
            )
            self.restarts.append(restart)
            log.warning(
                "%s ended unexpectedly (%s); restart %d in %.1f s",
                child.name,
                ended,
                record.restarts,
                delay,
            )
            if self.on_restart is not None:
                self.on_restart(restart)
            await asyncio.sleep(delay)
            child.env = {
                **child.env,
                "WAYBILL_SUPERVISOR_RESTARTS": str(record.restarts),
                "WAYBILL_SUPERVISOR_LAST_EXIT": ended,
                "WAYBILL_SUPERVISOR_RESTARTED_AT": restart.at.isoformat(timespec="seconds"),
            }
            await child.start()
