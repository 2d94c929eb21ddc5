"""Child-process plumbing shared by the embedded servers.

Servers are spawned so that they never outlive us: each child asks the kernel for a
signal when its parent dies (``PR_SET_PDEATHSIG``). The kernel ties that signal to the
*thread* that forked the child, not to the process, so every spawn goes through one
daemon thread that lives as long as the interpreter; callers may then start servers
from short-lived threads (``asyncio.to_thread``, executors) without the servers dying
when those threads end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import os
import queue
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

import psutil

T = TypeVar("T")

LOCALHOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port``.

    Checked before talking to a port, so that a readiness probe never mistakes another
    program that already holds the port for the server we are starting.
    """
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(
        conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr[1] == port
        for conn in connections
    )


def open_log(path: Path, *, rotate_bytes: int = 16 * 1024 * 1024) -> IO[bytes]:
    """Open a server's log for appending; past ``rotate_bytes`` it first moves to ``*.1``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > rotate_bytes:
            path.replace(path.with_name(path.name + ".1"))
    return path.open("ab")


def tail(path: Path | None, *, since: int = 0, lines: int = 40) -> str:
    """The last ``lines`` lines written to a log file from byte ``since`` on."""
    if path is None:
        return "(no log file)"
    try:
        with path.open("rb") as log_file:
            log_file.seek(since)
            text = log_file.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(nothing logged)"


def _load_prctl() -> Callable[..., int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    prctl = getattr(libc, "prctl", None)
    if prctl is None:
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    function: Callable[..., int] = prctl
    return function


# Resolved in the parent: the forked child must do as little as possible before exec.
_prctl = _load_prctl()


def _die_with_parent(death_signal: signal.Signals) -> Callable[[], None]:
    parent = os.getpid()

    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody will signal us.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def die_with_parent(death_signal: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``death_signal`` when the thread that started it
    ends (start children from a thread that lives as long as the process)."""
    return _die_with_parent(death_signal)


_Job = tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]


class _Spawner:
    """One long-lived daemon thread that forks every server (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def call(self, function: Callable[[], T]) -> T:
        if threading.current_thread() is self._thread:
            return function()
        with self._lock:
            # After os.fork() in a child process the old thread no longer exists.
            if self._thread is None or not self._thread.is_alive():
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=self._run, args=(self._jobs,), name="waybill-infra-spawner", daemon=True
                )
                self._thread.start()
            jobs = self._jobs
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        jobs.put((function, future))
        return future.result()

    @staticmethod
    def _run(jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            function, future = jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function())
            except BaseException as exc:
                future.set_exception(exc)


_spawner = _Spawner()


def spawn(
    argv: Sequence[str],
    *,
    output: IO[bytes] | int,
    death_signal: signal.Signals,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    uid: int | None = None,
    gid: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, as ``uid``/``gid`` if given, dying with us.

    Its own session keeps a terminal's Ctrl-C away from it: the owner stops it in order.
    """

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent(death_signal),
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
        )

    return _spawner.call(start)


def stop_process(
    process: subprocess.Popen[bytes], *, signal_first: signal.Signals, grace_seconds: float
) -> None:
    """Send ``signal_first``, wait up to ``grace_seconds``, then SIGKILL the whole tree."""
    if process.poll() is not None:
        return
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    graceful = True
    try:
        process.send_signal(signal_first)
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        graceful = False
        process.kill()
        process.wait()
    # A server reaps its workers before it exits; after a SIGKILL they are orphans.
    _, survivors = psutil.wait_procs(descendants, timeout=1.0 if graceful else 0)
    for survivor in survivors:
        with contextlib.suppress(psutil.NoSuchProcess):
            survivor.kill()
    psutil.wait_procs(survivors, timeout=5.0)


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code.

    Inside a running event loop (a synchronous call made from async code) it runs in a
    fresh loop on a helper thread, since a thread can run only one loop at a time.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="waybill-infra") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


class ChildServer:
    """What both embedded servers share: a child process, its pid, ``with`` support."""

    _process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
