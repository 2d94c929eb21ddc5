"""Group commit for background workers: many concurrent calls, one statement.

A worker that runs many tasks at once (label purchases) would otherwise write each task's
outcome in a transaction of its own: a round trip and a commit each. A :class:`Coalescer`
collects the calls that arrive while its previous flush is running and hands them to one
flush together; each caller gets its own result (or the flush's exception) and continues
only once the flush is done, so a caller that needs its write durable before going on (an
idempotency key stored before the carrier call) still has it. At low load a call flushes
alone, at once; under load the batches grow by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """``await submit(item)``: ``item`` goes to the next ``flush(items)``, which returns one
    result per item, in order."""

    def __init__(
        self, flush: Callable[[Sequence[T]], Awaitable[Sequence[R]]], *, max_items: int = 1000
    ) -> None:
        self._flush = flush
        self._max_items = max_items
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        #: flushes so far and items they carried (tests and metrics)
        self.flushes = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._queue:
            await asyncio.sleep(0)  # the other callers of this turn of the loop join in
            batch = self._queue[: self._max_items]
            del self._queue[: len(batch)]
            try:
                results = await self._flush([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for {len(batch)} items")
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self.flushes += 1
            self.items += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()
