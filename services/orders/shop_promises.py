"""Which promise a shop's orders get: the house promise unless the shop has its own.

Intake needs it for every order; a shop's settings change rarely, so they are read
through a short-lived cache instead of one query per order.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services.orders.domain.promises import PromisePolicy
from services.orders.storage import repository as repo
from shared.db.uow import Connection

#: how long another replica may keep promising by a shop's previous settings
CACHE_SECONDS = 30.0


class ShopPromises:
    def __init__(
        self,
        house: PromisePolicy,
        *,
        cache_seconds: float = CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.house = house
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._cached: dict[str, tuple[float, PromisePolicy | None]] = {}

    async def policy_for(self, conn: Connection, shop_id: str) -> PromisePolicy:
        now = self._monotonic()
        hit = self._cached.get(shop_id)
        if hit is None or now - hit[0] > self._cache_seconds:
            hit = (now, await repo.shop_promise_policy(conn, shop_id))
            self._cached[shop_id] = hit
        return hit[1] or self.house

    def forget(self, shop_id: str) -> None:
        """A shop's settings changed here: the next order reads them again."""
        self._cached.pop(shop_id, None)
