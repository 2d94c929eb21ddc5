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
        return (await self.policies_for(conn, [shop_id]))[shop_id]

    async def policies_for(self, conn: Connection, shop_ids: list[str]) -> dict[str, PromisePolicy]:
        """Each shop's policy; the shops not cached (or cached too long) in one query."""
        now = self._monotonic()
        stale = {
            shop_id
            for shop_id in shop_ids
            if (hit := self._cached.get(shop_id)) is None or now - hit[0] > self._cache_seconds
        }
        if stale:
            own = await repo.shop_promise_policies(conn, sorted(stale))
            for shop_id in stale:
                self._cached[shop_id] = (now, own.get(shop_id))
        return {shop_id: self._cached[shop_id][1] or self.house for shop_id in shop_ids}

    def forget(self, shop_id: str) -> None:
        """A shop's settings changed here: the next order reads them again."""
        self._cached.pop(shop_id, None)
