"""Choose and start the broker and the database (DESIGN.md, "Where it runs").

In order: servers named by ``WAYBILL_KAFKA_BOOTSTRAP`` / ``WAYBILL_DATABASE_URL`` (each
one set is used as it is, and only the other part is started); else containers
through testcontainers when a Docker engine answers; else the embedded broker and
PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self
from urllib.parse import urlsplit

from shared.infra.kafka import EmbeddedKafka
from shared.infra.postgres import EmbeddedPostgres

log = logging.getLogger("waybill.infra")

InfraKind = Literal["external", "docker", "embedded"]

KAFKA_BOOTSTRAP_ENV = "WAYBILL_KAFKA_BOOTSTRAP"
DATABASE_URL_ENV = "WAYBILL_DATABASE_URL"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
POSTGRES_IMAGE = "postgres:17"
DOCKER_PING_TIMEOUT_SECONDS = 3


@dataclass
class Infrastructure:
    """Where the broker and the database are, and how to stop what was started for them.

    ``kind`` is ``"external"`` when nothing was started, otherwise how the started
    parts run; ``kafka_kind`` and ``database_kind`` tell each part apart when they mix.
    The embedded servers are at hand in ``embedded_kafka`` / ``embedded_postgres``
    (for instance to restart the broker in a test).
    """

    kafka_bootstrap: str
    admin_dsn: str = field(repr=False)  # may hold a password
    kind: InfraKind
    kafka_kind: InfraKind = "external"
    database_kind: InfraKind = "external"
    embedded_kafka: EmbeddedKafka | None = field(default=None, repr=False)
    embedded_postgres: EmbeddedPostgres | None = field(default=None, repr=False)
    _resources: contextlib.ExitStack = field(
        default_factory=contextlib.ExitStack, init=False, repr=False, compare=False
    )

    def close(self) -> None:
        """Stop whatever was started, last started first. Closing twice is a no-op."""
        self._resources.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def docker_engine_available() -> bool:
    """Whether a Docker engine answers a ping (within a few seconds)."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=DOCKER_PING_TIMEOUT_SECONDS)
    except Exception:  # no socket, bad DOCKER_HOST, unreadable config: no engine for us
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def start_infrastructure(
    *,
    data_dir: Path,
    kafka_port: int = 0,
    postgres_port: int = 0,
    durable: bool = True,
    prefer: Literal["auto", "embedded"] = "auto",
    environ: Mapping[str, str] | None = None,
) -> Infrastructure:
    """Find or start a broker and a PostgreSQL server; the result stops what it started.

    ``data_dir`` holds the embedded servers' files (``postgres/``, ``tansu.log``); the
    ports apply to the embedded servers (0 picks free ones). ``durable=False`` trades
    crash safety for speed (tests). ``prefer="embedded"`` skips Docker. ``environ``
    defaults to ``os.environ``.
    """
    env = os.environ if environ is None else environ
    external_kafka = env.get(KAFKA_BOOTSTRAP_ENV) or None
    external_database = env.get(DATABASE_URL_ENV) or None
    with contextlib.ExitStack() as resources:
        infra = Infrastructure(
            kafka_bootstrap=external_kafka or "",
            admin_dsn=external_database or "",
            kind="external",
        )
        want_kafka = external_kafka is None
        want_database = external_database is None
        if (want_kafka or want_database) and prefer == "auto" and docker_engine_available():
            try:
                with contextlib.ExitStack() as containers:
                    _start_containers(
                        infra, containers, kafka=want_kafka, database=want_database, durable=durable
                    )
                    resources.enter_context(containers.pop_all())
                want_kafka = want_database = False
            except Exception:
                log.warning(
                    "a Docker engine answers but the containers did not start; "
                    "using the embedded broker and database instead",
                    exc_info=True,
                )
        if want_database:
            postgres = EmbeddedPostgres(data_dir / "postgres", port=postgres_port, durable=durable)
            resources.callback(postgres.stop)
            infra.admin_dsn = postgres.start()
            infra.embedded_postgres = postgres
            infra.database_kind = "embedded"
        if want_kafka:
            kafka = EmbeddedKafka(port=kafka_port, log_path=data_dir / "tansu.log")
            resources.callback(kafka.stop)
            infra.kafka_bootstrap = kafka.start()
            infra.embedded_kafka = kafka
            infra.kafka_kind = "embedded"
        infra.kind = _overall_kind(infra.kafka_kind, infra.database_kind)
        infra._resources = resources.pop_all()
    log.info(
        "infrastructure: %s (broker %s at %s, database %s at %s)",
        infra.kind,
        infra.kafka_kind,
        infra.kafka_bootstrap,
        infra.database_kind,
        _where(infra.admin_dsn),
    )
    return infra


def _overall_kind(kafka: InfraKind, database: InfraKind) -> InfraKind:
    if "docker" in (kafka, database):
        return "docker"
    if "embedded" in (kafka, database):
        return "embedded"
    return "external"


def _where(dsn: str) -> str:
    """Host, port and database of a DSN, without its credentials (for logs)."""
    parts = urlsplit(dsn)
    return f"{parts.netloc.rpartition('@')[2]}{parts.path}"


def _start_containers(
    infra: Infrastructure,
    containers: contextlib.ExitStack,
    *,
    kafka: bool,
    database: bool,
    durable: bool,
) -> None:
    # testcontainers is a test dependency: imported only when a Docker engine is there.
    try:
        from testcontainers.community.kafka import KafkaContainer
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before the "community" namespace
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

    if database:
        password = secrets.token_hex(16)
        command = ["postgres", "-c", "max_connections=300"]
        if not durable:
            for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
                command += ["-c", setting]
        postgres = PostgresContainer(
            POSTGRES_IMAGE, username="postgres", password=password, dbname="postgres", driver=None
        ).with_command(" ".join(command))
        containers.callback(postgres.stop)
        postgres.start()
        host = postgres.get_container_host_ip()
        port = postgres.get_exposed_port(5432)
        infra.admin_dsn = f"postgresql://postgres:{password}@{host}:{port}/postgres"
        infra.database_kind = "docker"
    if kafka:
        broker = KafkaContainer(KAFKA_IMAGE).with_kraft()
        containers.callback(broker.stop)
        broker.start()
        infra.kafka_bootstrap = broker.get_bootstrap_server()
        infra.kafka_kind = "docker"
