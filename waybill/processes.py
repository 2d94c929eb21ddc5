"""The whole system as separate processes: the carrier sandbox and every service instance.

``waybill up`` and ``waybill bench`` start the system the same way: each service is
``waybill run SERVICE`` in its own process, with its own database role and schema, and
talks to the others only through the broker. ``replicas`` runs several instances of each
service; they share the partitions of the service's consumer group and elect one outbox
relay leader among themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.http import new_token
from shared.infra import Infrastructure, die_with_parent, provision_service_database
from shared.settings import KafkaSettings
from waybill.supervisor import CrashLoop, RestartPolicy, Supervisor
from waybill.system import DEFAULT_PORTS, SERVICES

ROLES = ("shop", "warehouse", "ops", "admin")
READY_SECONDS = 90.0
#: partitions per topic on the embedded broker (WAYBILL_KAFKA_TOPIC_PARTITIONS overrides)
EMBEDDED_PARTITIONS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A process of the system; its output goes to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            # started from the event loop's (main) thread: the child gets SIGTERM if its
            # parent dies without stopping it, so nothing is ever orphaned
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                stdout=out,
                stderr=out,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )

    async def stop(self, grace_seconds: float = 15.0) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), grace_seconds)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@dataclass
class SystemOptions:
    """How to run the system's processes."""

    logs: Path
    #: every part's port; a part missing here gets a free port
    ports: Mapping[str, int] = field(default_factory=dict)
    #: instances of each service (replica 1 has the part's port, the others free ones)
    replicas: int = 1
    autopick: bool = False
    sandbox_auto_advance: bool = False
    sandbox_step_seconds: float = 1.0
    #: more environment for every service (WAYBILL_* settings)
    service_env: Mapping[str, str] = field(default_factory=dict)
    tokens: Mapping[str, str] | None = None
    webhook_secret: str | None = None
    #: restart a process that ends unexpectedly (waybill.supervisor); off for the benchmark,
    #: where a crash is a failure to report
    supervise: bool = False
    restart_policy: RestartPolicy | None = None


def default_ports() -> dict[str, int]:
    """The contract's ports, each overridable by ``WAYBILL_<PART>_PORT``."""
    return {
        part: int(os.environ.get(f"WAYBILL_{part.upper()}_PORT", port))
        for part, port in DEFAULT_PORTS.items()
    }


def tokens_from_environment() -> dict[str, str]:
    """``WAYBILL_TOKEN_<ROLE>`` where set, else a random token."""
    return {
        role: os.environ.get(f"WAYBILL_TOKEN_{role.upper()}") or new_token(18) for role in ROLES
    }


class ProcessSystem:
    """The sandbox and ``replicas`` instances of each service, on ``infra``."""

    def __init__(self, infra: Infrastructure, options: SystemOptions) -> None:
        self.infra = infra
        self.options = options
        self.kafka = KafkaSettings(bootstrap=infra.kafka_bootstrap)
        self.tokens = dict(options.tokens or {role: new_token(18) for role in ROLES})
        self.webhook_secret = options.webhook_secret or new_token(18)
        self.children: list[Child] = []
        self.supervisor: Supervisor | None = None
        #: ends with CrashLoop when a process keeps crashing (only with ``supervise``)
        self.supervision: asyncio.Task[None] | None = None
        #: the first instance of each part (what users and the other services call)
        self.urls: dict[str, str] = {}
        self._child_urls: dict[str, str] = {}

    def instances(self, service: str) -> list[Child]:
        return [c for c in self.children if c.name.split("#")[0] == service]

    def instance_url(self, name: str) -> str:
        """Where the named process (``orders``, ``orders#2``, ``sandbox``) answers."""
        return self._child_urls[name]

    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in self.children if c.pid is not None}

    async def start(self) -> None:
        ports = {part: self.options.ports.get(part) or free_port() for part in DEFAULT_PORTS}
        self.urls = {part: f"http://127.0.0.1:{port}" for part, port in ports.items()}
        password = secrets.token_urlsafe(18)
        dsns = {
            name: await provision_service_database(self.infra.admin_dsn, name, password=password)
            for name in SERVICES
        }
        base_env = {
            **os.environ,
            "WAYBILL_KAFKA_BOOTSTRAP": self.infra.kafka_bootstrap,
            "WAYBILL_CARRIER_WEBHOOK_SECRET": self.webhook_secret,
            "WAYBILL_CARRIER_SANDBOX_URL": self.urls["sandbox"],
            # orders' ops dashboard asks the other services for their plumbing
            **{
                f"WAYBILL_{peer.upper()}_URL": self.urls[peer]
                for peer in ("inventory", "shipping", "returns")
            },
            **{f"WAYBILL_TOKEN_{role.upper()}": token for role, token in self.tokens.items()},
            **self.options.service_env,
        }
        if self.options.autopick:
            base_env["WAYBILL_AUTOPICK"] = "1"
        if self.infra.kafka_kind == "embedded":
            # the embedded broker's fetches cost it per partition fetched (INFRA.md, and
            # docs/performance.md): on one machine, two partitions per topic are plenty
            base_env.setdefault("WAYBILL_KAFKA_TOPIC_PARTITIONS", str(EMBEDDED_PARTITIONS))
        python = [sys.executable, "-m", "waybill.cli"]
        logs = self.options.logs
        sandbox_argv = [
            *python,
            "carrier-sandbox",
            "--port",
            str(ports["sandbox"]),
            "--webhook-url",
            f"{self.urls['shipping']}/webhooks/carriers/{{carrier}}",
            # the secret travels in the environment (base_env), never on a command line:
            # other users can read those, and a random one starting with "-" is an option
        ]
        if self.options.sandbox_auto_advance:
            sandbox_argv += [
                "--auto-advance",
                "--step-seconds",
                str(self.options.sandbox_step_seconds),
            ]
        self.children.append(Child("sandbox", sandbox_argv, base_env, logs / "sandbox.log"))
        self._child_urls["sandbox"] = self.urls["sandbox"]
        for name in SERVICES:
            for replica in range(1, self.options.replicas + 1):
                port = ports[name] if replica == 1 else free_port()
                label = name if self.options.replicas == 1 else f"{name}#{replica}"
                env = {**base_env, "WAYBILL_DATABASE_URL": dsns[name]}
                env[f"WAYBILL_{name.upper()}_PORT"] = str(port)
                log_name = name if replica == 1 else f"{name}-{replica}"
                self.children.append(
                    Child(label, [*python, "run", name], env, logs / f"{log_name}.log")
                )
                self._child_urls[label] = f"http://127.0.0.1:{port}"
        for child in self.children:
            await child.start()
        await self.wait_ready()
        if self.options.supervise:
            self.supervisor = Supervisor(self.children, policy=self.options.restart_policy)
            self.supervision = asyncio.create_task(self.supervisor.run(), name="supervisor")

    async def wait_ready(self, *, restarting: bool = False) -> None:
        """Until every process answers its readiness probe. ``restarting``: a process that
        has ended is being started again by the supervisor (not a failure to start)."""
        async with httpx.AsyncClient() as http:
            for child in self.children:
                probe = "/healthz" if child.name == "sandbox" else "/readyz"
                url = self._child_urls[child.name] + probe
                await _wait_ready(http, child, url, restarting=restarting)

    async def stop(self) -> None:
        # the supervisor first: the processes stopped now are not to be started again
        if self.supervision is not None:
            self.supervision.cancel()
            with contextlib.suppress(asyncio.CancelledError, CrashLoop):
                await self.supervision
            self.supervision = None
        for child in reversed(self.children):
            await child.stop()


async def _wait_ready(
    http: httpx.AsyncClient, child: Child, url: str, *, restarting: bool = False
) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        process = child.process
        if process is not None and process.returncode is not None and not restarting:
            raise RuntimeError(
                f"{child.name} exited with {process.returncode}; see {child.log_path}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get(url, timeout=2)).status_code == 200:
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(
        f"{child.name} not ready at {url} after {READY_SECONDS:.0f} s; see {child.log_path}"
    )
