"""The whole system in one event loop: the four services and the carrier sandbox.

Each part is a real HTTP server on a real port, each service has its own database
role and schema and talks to the others only through the broker. Tests use this to
run several isolated systems side by side (own database, own topic prefix); the
``waybill up`` command runs the same parts as separate processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from shared.clock import Clock
from shared.http import new_token
from shared.runtime import ServiceRuntime
from shared.settings import KafkaSettings, Role, ServiceSettings

log = logging.getLogger("waybill.system")

SERVICES: tuple[str, ...] = ("orders", "inventory", "shipping", "returns")
DEFAULT_PORTS: dict[str, int] = {
    "orders": 8081,
    "inventory": 8082,
    "shipping": 8083,
    "returns": 8084,
    "sandbox": 8090,
}


def random_tokens() -> dict[Role, str]:
    return {role: new_token() for role in ("shop", "warehouse", "ops", "admin")}


@dataclass
class SystemConfig:
    kafka: KafkaSettings
    #: each service's own database URL (its role, its schema)
    database_urls: dict[str, str]
    tokens: dict[Role, str] = field(default_factory=random_tokens)
    webhook_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    autopick: bool = True
    return_window_days: int = 7
    host: str = "127.0.0.1"
    #: port per part (0: any free port)
    ports: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DEFAULT_PORTS, 0))
    sandbox_auto_advance: bool = False
    sandbox_step_seconds: float = 2.0
    #: overrides of ServiceSettings fields for every service (batch sizes, retry timing)
    service_overrides: dict[str, Any] = field(default_factory=dict)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening address taken now (port 0: any free one), served later."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class ServedApp:
    """A FastAPI app served by uvicorn on a socket bound beforehand."""

    def __init__(self, name: str, app: FastAPI, sock: socket.socket) -> None:
        self.name = name
        self.sock = sock
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self, *, within_seconds: float = 60.0) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        deadline = asyncio.get_running_loop().time() + within_seconds
        while not self.server.started:
            if self.task.done():
                self.task.result()  # raises what made the start fail
                raise RuntimeError(f"{self.name} stopped during start-up (see its log)")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{self.name} did not start within {within_seconds} s")
            await asyncio.sleep(0.02)

    async def stop(self, *, within_seconds: float = 60.0) -> None:
        self.server.should_exit = True
        if self.task is not None:
            done, _ = await asyncio.wait({self.task}, timeout=within_seconds)
            if not done:
                log.warning("%s did not stop within %s s; cancelling it", self.name, within_seconds)
                self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        self.sock.close()


PEERS = ("inventory", "shipping", "returns")


class LocalSystem:
    def __init__(
        self,
        config: SystemConfig,
        *,
        services: Sequence[str] = SERVICES,
        clock: Clock | None = None,
        with_sandbox: bool = True,
    ) -> None:
        self.config = config
        self.services = list(services)
        self.clock = clock
        self.with_sandbox = with_sandbox
        self.urls: dict[str, str] = {}
        self.runtimes: dict[str, ServiceRuntime] = {}
        self._served: list[ServedApp] = []

    def _settings(self, name: str, **extra: Any) -> dict[str, Any]:
        tokens = self.config.tokens
        return {
            "database_url": self.config.database_urls[name],
            "token_shop": SecretStr(tokens["shop"]),
            "token_warehouse": SecretStr(tokens["warehouse"]),
            "token_ops": SecretStr(tokens["ops"]),
            "token_admin": SecretStr(tokens["admin"]),
            **self.config.service_overrides,
            **extra,
        }

    def _extra_settings(self, name: str) -> dict[str, Any]:
        carrier = {
            "carrier_sandbox_url": self.urls.get("sandbox", "http://127.0.0.1:9"),
            "carrier_webhook_secret": SecretStr(self.config.webhook_secret),
        }
        extras: dict[str, dict[str, Any]] = {
            "orders": {f"{peer}_url": self.urls.get(peer) for peer in PEERS},
            "inventory": {"autopick": self.config.autopick},
            "shipping": carrier,
            "returns": {"return_window_days": self.config.return_window_days, **carrier},
        }
        return extras[name]

    def build_runtime(self, name: str) -> ServiceRuntime:
        """The service's own composition root, given this system's settings."""
        if name not in SERVICES:
            raise ValueError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")
        main = importlib.import_module(f"services.{name}.main")
        settings = main.SETTINGS(**self._settings(name, **self._extra_settings(name)))
        runtime: ServiceRuntime = main.build_runtime(settings, self.config.kafka, clock=self.clock)
        return runtime

    async def start(self) -> None:
        from waybill.carrier_sandbox import SandboxConfig, create_app

        parts = (["sandbox"] if self.with_sandbox else []) + self.services
        sockets = {p: bind_socket(self.config.host, self.config.ports.get(p, 0)) for p in parts}
        for part, sock in sockets.items():
            self.urls[part] = f"http://{self.config.host}:{sock.getsockname()[1]}"
        try:
            if self.with_sandbox:
                webhook = (
                    f"{self.urls['shipping']}/webhooks/carriers/{{carrier}}"
                    if "shipping" in self.urls
                    else None
                )
                sandbox = create_app(
                    SandboxConfig(
                        webhook_url_template=webhook,
                        webhook_secret=self.config.webhook_secret,
                        public_url=self.urls["sandbox"],
                        auto_advance=self.config.sandbox_auto_advance,
                        auto_advance_step_seconds=self.config.sandbox_step_seconds,
                    )
                )
                await self._serve("sandbox", sandbox, sockets.pop("sandbox"))
            for name in self.services:
                runtime = self.build_runtime(name)
                self.runtimes[name] = runtime
                main = importlib.import_module(f"services.{name}.main")
                await self._serve(name, main.create_app(runtime), sockets.pop(name))
        except BaseException:
            for sock in sockets.values():
                sock.close()
            await self.stop()
            raise

    async def _serve(self, name: str, app: FastAPI, sock: socket.socket) -> None:
        served = ServedApp(name, app, sock)
        self._served.append(served)
        await served.start()
        log.info("%s listening on %s", name, self.urls[name])

    async def stop(self) -> None:
        for served in reversed(self._served):
            await served.stop()
        self._served.clear()

    def settings_of(self, name: str) -> ServiceSettings:
        return self.runtimes[name].settings
