"""The migration runner against a real PostgreSQL server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from shared.db import MigrationSource, apply_migrations
from shared.db.migrations import MigrationError
from tests.support import wait_for

pytestmark = pytest.mark.integration


#: an advisory lock that migration 0003 takes: held by a test, the migration waits for it
GATE = 7_310_001


def write(folder: Path, name: str, sql: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(sql)


@pytest.fixture
def migrations(tmp_path: Path) -> tuple[MigrationSource, Path]:
    folder = tmp_path / "migrations"
    # 0002 depends on 0001: applying out of order would fail
    write(folder, "0002_add_note.sql", "ALTER TABLE things ADD COLUMN note text;")
    write(folder, "0001_things.sql", "CREATE TABLE things (id int PRIMARY KEY);")
    # waits at a gate that a test can hold closed, so that concurrent runners overlap
    write(
        folder,
        "0003_gated.sql",
        f"SELECT pg_advisory_xact_lock({GATE}); INSERT INTO things VALUES (1, 'x');",
    )
    return MigrationSource("demo", folder), folder


async def test_applies_in_order_once_and_records_each_file(
    admin_dsn: str, migrations: tuple[MigrationSource, Path]
) -> None:
    source, _ = migrations
    conn = await asyncpg.connect(admin_dsn)
    try:
        applied = await apply_migrations(conn, schema="mig", sources=[source])
        assert applied == ["demo/0001_things.sql", "demo/0002_add_note.sql", "demo/0003_gated.sql"]
        assert await apply_migrations(conn, schema="mig", sources=[source]) == []
        assert await conn.fetchval("SELECT count(*) FROM mig.things") == 1
        versions = await conn.fetch("SELECT version FROM mig.schema_migrations ORDER BY version")
        assert [r["version"] for r in versions] == applied
    finally:
        await conn.close()


async def test_two_concurrent_runners_do_not_collide(
    admin_dsn: str, migrations: tuple[MigrationSource, Path]
) -> None:
    source, _ = migrations
    a, b = await asyncpg.connect(admin_dsn), await asyncpg.connect(admin_dsn)
    gate = await asyncpg.connect(admin_dsn)
    try:
        await gate.execute("SELECT pg_advisory_lock($1)", GATE)
        runners = asyncio.gather(
            apply_migrations(a, schema="race", sources=[source]),
            apply_migrations(b, schema="race", sources=[source]),
        )

        async def both_waiting() -> bool:
            # one runner inside 0003, waiting at the gate; the other for the runners' lock
            at_gate, in_all = await gate.fetchrow(
                """
                SELECT count(*) FILTER (WHERE classid = 0 AND objid = $1), count(*)
                FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                """,
                GATE,
            )
            return bool(at_gate == 1 and in_all >= 2)

        await wait_for(both_waiting, timeout=30, what="both runners waiting")
        await gate.execute("SELECT pg_advisory_unlock($1)", GATE)
        first, second = await runners
        assert sorted([len(first), len(second)]) == [0, 3]  # one did all, the other nothing
        assert await a.fetchval("SELECT count(*) FROM race.things") == 1
    finally:
        await a.close()
        await b.close()
        await gate.close()


async def test_an_applied_file_that_was_edited_is_refused(
    admin_dsn: str, migrations: tuple[MigrationSource, Path]
) -> None:
    source, folder = migrations
    conn = await asyncpg.connect(admin_dsn)
    try:
        await apply_migrations(conn, schema="edited", sources=[source])
        write(folder, "0001_things.sql", "CREATE TABLE things (id bigint PRIMARY KEY);")
        with pytest.raises(MigrationError, match="different content"):
            await apply_migrations(conn, schema="edited", sources=[source])
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_half_applied(
    admin_dsn: str, tmp_path: Path
) -> None:
    folder = tmp_path / "broken"
    write(folder, "0001_ok.sql", "CREATE TABLE fine (id int);")
    write(folder, "0002_broken.sql", "CREATE TABLE half (id int); SELECT no_such_function();")
    source = MigrationSource("broken", folder)
    conn = await asyncpg.connect(admin_dsn)
    try:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await apply_migrations(conn, schema="broken", sources=[source])
        assert await conn.fetchval("SELECT to_regclass('broken.half')") is None
        versions = await conn.fetch("SELECT version FROM broken.schema_migrations")
        assert [r["version"] for r in versions] == ["broken/0001_ok.sql"]
    finally:
        await conn.close()
