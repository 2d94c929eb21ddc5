"""The asyncpg pool of one service: its own schema first on the search path."""

from __future__ import annotations

import json
from typing import Any

import asyncpg


async def init_connection(conn: asyncpg.Connection) -> None:
    """JSON columns as Python values (every pool connection, and dedicated ones)."""
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a pool connection needs on release: nothing beyond what asyncpg always does
    (an open transaction is rolled back). Pool connections keep no session state: LISTEN,
    session advisory locks and SET live on dedicated connections (the relay, listeners,
    migrations). asyncpg's default reset costs a statement (UNLISTEN, RESET ALL, ...) on
    every release, that is on every transaction of every service."""


async def create_pool(
    dsn: str, *, schema: str, min_size: int = 2, max_size: int = 8
) -> asyncpg.Pool:
    """A pool whose connections see ``schema`` first and decode JSON columns."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        reset=_keep_session,
        server_settings={"search_path": schema, "application_name": f"waybill-{schema}"},
    )
    return pool


def is_transient_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the database's passing trouble, not the record's: retry, never DLQ."""
    connection_errors: tuple[type[BaseException], ...] = (
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError,
        ConnectionError,
        OSError,
        TimeoutError,
    )
    if isinstance(exc, connection_errors):
        return True
    # Serialization failures and deadlocks are transient by nature: the retry succeeds.
    sqlstate: Any = getattr(exc, "sqlstate", None)
    return sqlstate in {"40001", "40P01", "57P01", "57P02", "57P03"}
