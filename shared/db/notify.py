"""Wake a background loop when a transaction commits work for it (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any

import asyncpg

from shared.db.uow import Connection


async def notify(conn: Connection, channel: str) -> None:
    """Queue a notification; PostgreSQL delivers it only when the transaction commits."""
    await conn.execute("SELECT pg_notify($1, '')", channel)


class ChannelListener:
    """A dedicated connection listening on ``channel``; ``wait`` returns on a notification."""

    def __init__(self, dsn: str, channel: str) -> None:
        self._dsn = dsn
        self._channel = channel
        self._event = asyncio.Event()
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> ChannelListener:
        self._conn = await asyncpg.connect(self._dsn)
        await self._conn.add_listener(self._channel, self._on_notify)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    def _on_notify(self, *_: Any) -> None:
        self._event.set()

    def wake(self) -> None:
        """End the current (or next) :meth:`wait` at once, as a notification would."""
        self._event.set()

    async def wait(self, seconds: float) -> None:
        """Until a notification arrives or ``seconds`` pass (the polling fallback)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)
        self._event.clear()
