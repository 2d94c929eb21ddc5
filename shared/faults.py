"""Fault points that a test or ``waybill chaos`` arms from outside a running process.

With ``WAYBILL_FAULT_POINTS_DIR`` set, a process checks at each fault point whether a file
named ``<point>.<service>`` exists in that folder; the first process to remove it (an
atomic claim) dies there at once with SIGKILL, as a process killed by the kernel or an
operator would. Without the variable (production), a fault point costs one dictionary
look-up. Points:

- ``relay-after-publish``: the outbox relay's send was acknowledged by the broker and its
  watermark not yet moved, so the rows are published again after the restart.

And one that does not kill: ``handler-fails``, whose file lists ``<topic> <key>`` lines.
While it exists, the service's handler fails on every event of those topics and keys (order
ids), as a handler with a bug would: the records are retried, then dead-lettered with the
error. Removing the file is the fix; ``waybill dlq replay`` then re-drives them.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger("waybill.faults")

ENV = "WAYBILL_FAULT_POINTS_DIR"
RELAY_AFTER_PUBLISH = "relay-after-publish"
HANDLER_FAILS = "handler-fails"


class InjectedFault(RuntimeError):
    """A handler failure that a fault point asked for."""


def arm(folder: Path, point: str, service: str) -> Path:
    """Arm ``point`` for (one process of) ``service``; returns the file that arms it."""
    path = folder / f"{point}.{service}"
    path.touch()
    return path


def die_if_armed(point: str, service: str) -> None:
    folder = os.environ.get(ENV)
    if not folder:
        return
    try:
        os.unlink(os.path.join(folder, f"{point}.{service}"))
    except FileNotFoundError:
        return
    log.critical("fault point %s armed for %s: killing this process", point, service)
    os.kill(os.getpid(), signal.SIGKILL)


def arm_keys(folder: Path, point: str, service: str, topic: str, keys: list[str]) -> Path:
    """Arm a point that fails for ``keys`` of ``topic`` in ``service``; remove the file to
    disarm it."""
    path = folder / f"{point}.{service}"
    path.write_text("".join(f"{topic} {k}\n" for k in keys))
    return path


def armed_keys(point: str, service: str) -> set[str]:
    """The ``<topic> <key>`` lines ``point`` is armed with for ``service`` (empty: not
    armed)."""
    folder = os.environ.get(ENV)
    if not folder:
        return set()
    try:
        with open(os.path.join(folder, f"{point}.{service}")) as armed:
            return {line.strip() for line in armed if line.strip()}
    except FileNotFoundError:
        return set()
