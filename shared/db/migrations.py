"""The SQL migration runner: files applied in order, once, under an advisory lock.

Sources are folders of ``NNNN_name.sql`` files. Each applied file is recorded in
``schema_migrations`` with its checksum; a recorded file whose content changed is
an error, never silently re-applied. Two runners at once serialise on a
session-level advisory lock, so the second finds the work done.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import asyncpg

log = logging.getLogger("waybill.migrations")

_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class MigrationSource:
    """A folder of migrations; ``namespace`` keeps shared and service files apart."""

    namespace: str
    folder: Traversable

    def scripts(self) -> list[tuple[str, str]]:
        found = []
        for entry in self.folder.iterdir():
            if entry.name.endswith(".sql"):
                if not _FILE_NAME.match(entry.name):
                    raise MigrationError(f"migration file name not NNNN_name.sql: {entry.name}")
                found.append((entry.name, entry.read_text(encoding="utf-8")))
        return sorted(found)


def shared_migrations() -> MigrationSource:
    """The inbox, outbox and dead-letter tables every service has."""
    return MigrationSource("shared", files("shared.db").joinpath("migrations"))


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"waybill.migrations.{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def apply_migrations(
    conn: asyncpg.Connection, *, schema: str, sources: list[MigrationSource]
) -> list[str]:
    """Apply what is not yet applied, in order; return the versions applied now."""
    # The lock comes first: two runners must not both find the schema missing.
    lock = _lock_key(schema)
    await conn.execute("SELECT pg_advisory_lock($1)", lock)
    try:
        # A service role may own its schema without the right to create schemas: look first.
        if not await conn.fetchval("SELECT true FROM pg_namespace WHERE nspname = $1", schema):
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version     text        PRIMARY KEY,
                checksum    text        NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        applied = {r["version"]: r["checksum"] for r in rows}
        done: list[str] = []
        for source in sources:
            for name, sql in source.scripts():
                version = f"{source.namespace}/{name}"
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if version in applied:
                    if applied[version] != checksum:
                        raise MigrationError(
                            f"{version} was applied with different content; "
                            "write a new migration instead of editing an applied one"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                        version,
                        checksum,
                    )
                log.info("applied migration %s to schema %s", version, schema)
                done.append(version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock)
