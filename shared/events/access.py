"""Who may call the HTTP APIs: shop keys and staff keys, as state that every service keeps.

Each event carries the whole state of one key (never the key itself: its SHA-256), so a
service that sees them again, or out of order, keeps the newest (``occurred_at``). The
orders service owns shop keys, the inventory service staff keys; every service that
accepts keys follows both topics into its own ``access_keys`` table.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from shared import topics
from shared.events.base import Event, Identifier, ShortText, Timestamp

#: a key's public id (the part of the key before its secret)
KeyId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
#: SHA-256 of the whole key, in hex
KeyHash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class ShopKeyChanged(Event):
    """A shop's API key was issued or revoked (orders to every service)."""

    TOPIC = topics.SHOPS_KEY_CHANGED

    shop_id: Identifier
    key_id: KeyId
    key_hash: KeyHash
    created_at: Timestamp
    revoked_at: Timestamp | None = None

    def partition_key(self) -> str | None:
        return self.key_id


class StaffKeyChanged(Event):
    """A staff member's key was issued, bound to other warehouses, or revoked (inventory to
    every service)."""

    TOPIC = topics.STAFF_KEY_CHANGED

    staff_id: Identifier
    name: ShortText
    key_id: KeyId
    key_hash: KeyHash
    warehouse_ids: list[Identifier] = Field(min_length=1, max_length=100)
    created_at: Timestamp
    revoked_at: Timestamp | None = None

    def partition_key(self) -> str | None:
        return self.key_id
