"""The migration runner against a real PostgreSQL server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from shared.db import MigrationSource, apply_migrations
from shared.db.migrations import MigrationError

pytestmark = pytest.mark.integration


def write(folder: Path, name: str, sql: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(sql)


@pytest.fixture
def migrations(tmp_path: Path) -> tuple[MigrationSource, Path]:
    folder = tmp_path / "migrations"
    # 0002 depends on 0001: applying out of order would fail
    write(folder, "0002_add_note.sql", "ALTER TABLE things ADD COLUMN note text;")
    write(folder, "0001_things.sql", "CREATE TABLE things (id int PRIMARY KEY);")
    # the second one sleeps, so concurrent runners really overlap
    write(folder, "0003_slow.sql", "SELECT pg_sleep(0.3); INSERT INTO things VALUES (1, 'x');")
    return MigrationSource("demo", folder), folder


async def test_applies_in_order_once_and_records_each_file(
    admin_dsn: str, migrations: tuple[MigrationSource, Path]
) -> None:
    source, _ = migrations
    conn = await asyncpg.connect(admin_dsn)
    try:
        applied = await apply_migrations(conn, schema="mig", sources=[source])
        assert applied == ["demo/0001_things.sql", "demo/0002_add_note.sql", "demo/0003_slow.sql"]
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
    try:
        first, second = await asyncio.gather(
            apply_migrations(a, schema="race", sources=[source]),
            apply_migrations(b, schema="race", sources=[source]),
        )
        assert sorted([len(first), len(second)]) == [0, 3]  # one did all, the other nothing
        assert await a.fetchval("SELECT count(*) FROM race.things") == 1
    finally:
        await a.close()
        await b.close()


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
