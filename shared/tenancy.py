"""Shops and staff as principals: API keys, who a request acts for, and every service's copy.

A key is ``wbk_<key_id>_<secret>``: ``key_id`` (16 hex digits) finds its row, the secret
(64 hex digits, 256 random bits) makes it unguessable. Only the SHA-256 of the whole key is
stored, here and in the events that carry it to the other services, and it is compared in
constant time. A fast hash is the right one for a random secret of this length: there is
no dictionary to try, so a slow password hash would only slow every request down.

The orders service owns shop keys (``POST /shops/{shop_id}/keys``), the inventory service
staff keys (``POST /warehouses/{warehouse_id}/staff``); each writes its keys and emits
their new state in one unit of work, and every service keeps its own copy from the events
(:func:`follow_access_keys`), so a revocation reaches all of them within a consumer's lag.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.db import UnitOfWork
from shared.db.uow import Connection
from shared.events import ShopKeyChanged, StaffKeyChanged
from shared.events.base import StaffRef
from shared.messaging import EventConsumer
from shared.settings import Role

log = logging.getLogger("waybill.tenancy")

KEY_PATTERN = re.compile(r"^wbk_([0-9a-f]{16})_([0-9a-f]{64})$")
#: a shop holds at most this many live keys: the one in use and the one replacing it
MAX_LIVE_SHOP_KEYS = 2
#: a key's last use is written at most this often per key and process
LAST_USED_EVERY_SECONDS = 60.0


def new_key() -> tuple[str, str]:
    """A new key and its id."""
    key_id = secrets.token_hex(8)
    return key_id, f"wbk_{key_id}_{secrets.token_hex(32)}"


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def looks_like_key(presented: str) -> bool:
    return KEY_PATTERN.match(presented) is not None


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a role, and for a key the shop or the staff member's
    warehouses it is bound to (``None``: a role token, which reaches every shop and
    warehouse)."""

    role: Role
    shop_id: str | None = None
    staff_id: str | None = None
    staff_name: str | None = None
    warehouse_ids: frozenset[str] | None = None
    key_id: str | None = None

    def acts_for_shop(self, shop_id: str | None) -> bool:
        return self.shop_id is None or self.shop_id == shop_id

    def works_in(self, warehouse_id: str | None) -> bool:
        return self.warehouse_ids is None or warehouse_id in self.warehouse_ids

    def who(self) -> StaffRef | None:
        """The staff member, as picks, packs and receipts record them (None: a role token)."""
        if self.staff_id is None:
            return None
        return StaffRef(staff_id=self.staff_id, name=self.staff_name or self.staff_id)


class KeyRefused(Exception):
    """A key that cannot be issued (a shop holding its two keys already, say)."""


# -- authentication ---------------------------------------------------------------------------


class LastUse:
    """Writes a key's last use at most once a minute per key in this process."""

    def __init__(self) -> None:
        self._written: dict[str, float] = {}

    def due(self, key_id: str) -> bool:
        now = time.monotonic()
        last = self._written.get(key_id)
        if last is not None and now - last < LAST_USED_EVERY_SECONDS:
            return False
        self._written[key_id] = now
        return True


_LAST_USE = LastUse()


async def principal_of_key(pool: asyncpg.Pool, presented: str) -> Principal | None:
    """The principal of a live key; None for a malformed, unknown or revoked one."""
    match = KEY_PATTERN.match(presented)
    if match is None:
        return None
    key_id = match.group(1)
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """
            SELECT kind, key_hash, shop_id, staff_id, staff_name, warehouse_ids, revoked_at
            FROM access_keys WHERE key_id = $1
            """,
            key_id,
        )
        if row is None or not hmac.compare_digest(bytes(row["key_hash"]), key_hash(presented)):
            return None
        if row["revoked_at"] is not None:
            return None
        if _LAST_USE.due(key_id):
            await conn.execute(
                "UPDATE access_keys SET last_used_at = now() WHERE key_id = $1", key_id
            )
    if row["kind"] == "shop":
        return Principal("shop", shop_id=row["shop_id"], key_id=key_id)
    return Principal(
        "warehouse",
        staff_id=row["staff_id"],
        staff_name=row["staff_name"],
        warehouse_ids=frozenset(row["warehouse_ids"]),
        key_id=key_id,
    )


# -- keeping the copy -------------------------------------------------------------------------


async def save_keys(conn: Connection, events: Sequence[ShopKeyChanged | StaffKeyChanged]) -> None:
    """Write each key's state unless a newer one is there already (one statement)."""
    if not events:
        return
    shops = [e for e in events if isinstance(e, ShopKeyChanged)]
    staff = [e for e in events if isinstance(e, StaffKeyChanged)]
    rows: list[tuple[Any, ...]] = [
        ("shop", e.key_id, bytes.fromhex(e.key_hash), e.shop_id, None, None, None, e) for e in shops
    ] + [
        (
            "staff",
            e.key_id,
            bytes.fromhex(e.key_hash),
            None,
            e.staff_id,
            e.name,
            json.dumps(list(e.warehouse_ids)),
            e,
        )
        for e in staff
    ]
    await conn.execute(
        """
        INSERT INTO access_keys (kind, key_id, key_hash, shop_id, staff_id, staff_name,
                                 warehouse_ids, created_at, revoked_at, changed_at)
        SELECT k, i, h, s, st, n,
               CASE WHEN w IS NULL THEN NULL
                    ELSE ARRAY(SELECT jsonb_array_elements_text(w::jsonb)) END,
               c, r, a
        FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[],
                    $7::text[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[])
             AS n(k, i, h, s, st, n, w, c, r, a)
        ON CONFLICT (key_id) DO UPDATE
        SET staff_name = excluded.staff_name, warehouse_ids = excluded.warehouse_ids,
            revoked_at = excluded.revoked_at, changed_at = excluded.changed_at
        WHERE access_keys.changed_at <= excluded.changed_at
        """,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
        [r[4] for r in rows],
        [r[5] for r in rows],
        [r[6] for r in rows],
        [r[7].created_at for r in rows],
        [r[7].revoked_at for r in rows],
        [r[7].occurred_at for r in rows],
    )


def follow_access_keys(consumer: EventConsumer) -> None:
    """Keep this service's copy of every shop and staff key from their events."""

    @consumer.handles_batch(ShopKeyChanged)
    async def on_shop_keys(events: Sequence[ShopKeyChanged], uow: UnitOfWork) -> None:
        await save_keys(uow.conn, events)

    @consumer.handles_batch(StaffKeyChanged)
    async def on_staff_keys(events: Sequence[StaffKeyChanged], uow: UnitOfWork) -> None:
        await save_keys(uow.conn, events)


# -- shop keys (the orders service) -----------------------------------------------------------


async def issue_shop_key(uow: UnitOfWork, shop_id: str, *, now: datetime) -> dict[str, Any]:
    """A new key for ``shop_id``: its row and its event, in ``uow``. The answer holds the key,
    which is shown this once and kept nowhere."""
    await uow.conn.execute("SELECT pg_advisory_xact_lock(hashtext('shop-keys:' || $1))", shop_id)
    live = await uow.conn.fetchval(
        "SELECT count(*) FROM access_keys WHERE kind = 'shop' AND shop_id = $1 "
        "AND revoked_at IS NULL",
        shop_id,
    )
    if live >= MAX_LIVE_SHOP_KEYS:
        raise KeyRefused(
            f"shop {shop_id} holds {live} live keys, the most it may: revoke one first"
        )
    key_id, key = new_key()
    event = ShopKeyChanged(
        shop_id=shop_id,
        key_id=key_id,
        key_hash=key_hash(key).hex(),
        created_at=now,
        occurred_at=now,
    )
    await save_keys(uow.conn, [event])
    uow.emit(event)
    return {"key_id": key_id, "key": key, "created_at": now}


async def revoke_shop_key(
    uow: UnitOfWork, shop_id: str, key_id: str, *, now: datetime
) -> dict[str, Any] | None:
    """Revoke the key (already revoked: as it was); None if the shop has no such key."""
    row = await uow.conn.fetchrow(
        """
        UPDATE access_keys SET revoked_at = coalesce(revoked_at, $3), changed_at = $3
        WHERE kind = 'shop' AND shop_id = $1 AND key_id = $2
        RETURNING key_id, key_hash, created_at, revoked_at
        """,
        shop_id,
        key_id,
        now,
    )
    if row is None:
        return None
    uow.emit(
        ShopKeyChanged(
            shop_id=shop_id,
            key_id=key_id,
            key_hash=bytes(row["key_hash"]).hex(),
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
            occurred_at=now,
        )
    )
    return {"key_id": key_id, "created_at": row["created_at"], "revoked_at": row["revoked_at"]}


async def shop_keys(conn: Connection, shop_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT key_id, created_at, last_used_at, revoked_at FROM access_keys
        WHERE kind = 'shop' AND shop_id = $1 ORDER BY created_at, key_id
        """,
        shop_id,
    )
    return [dict(r) for r in rows]


# -- staff keys (the inventory service) -------------------------------------------------------


async def staff_member(conn: Connection, staff_id: str) -> dict[str, Any] | None:
    """A staff member's live key, if any: id, name, warehouses, when issued."""
    row = await conn.fetchrow(
        """
        SELECT key_id, key_hash, staff_id, staff_name, warehouse_ids, created_at, last_used_at
        FROM access_keys WHERE kind = 'staff' AND staff_id = $1 AND revoked_at IS NULL
        """,
        staff_id,
    )
    return dict(row) if row is not None else None


async def issue_staff_key(
    uow: UnitOfWork, *, staff_id: str, name: str, warehouse_ids: list[str], now: datetime
) -> dict[str, Any]:
    """A staff member's key (their live one, if any, is revoked): shown this once."""
    await _lock_staff(uow, staff_id)
    old = await staff_member(uow.conn, staff_id)
    if old is not None:
        await _write_staff(uow, old, warehouse_ids=old["warehouse_ids"], revoked_at=now, now=now)
    key_id, key = new_key()
    row = {
        "key_id": key_id,
        "key_hash": key_hash(key),
        "staff_id": staff_id,
        "staff_name": name,
        "created_at": now,
    }
    await _write_staff(uow, row, warehouse_ids=warehouse_ids, revoked_at=None, now=now)
    return {
        "staff_id": staff_id,
        "name": name,
        "warehouse_ids": warehouse_ids,
        "key_id": key_id,
        "key": key,
        "created_at": now,
    }


async def rebind_staff(
    uow: UnitOfWork, staff_id: str, *, warehouse_ids: list[str], now: datetime
) -> dict[str, Any] | None:
    """Bind the staff member's live key to ``warehouse_ids``; none left: the key is revoked.
    None if they have no live key."""
    await _lock_staff(uow, staff_id)
    member = await staff_member(uow.conn, staff_id)
    if member is None:
        return None
    if warehouse_ids:
        await _write_staff(uow, member, warehouse_ids=warehouse_ids, revoked_at=None, now=now)
    else:
        await _write_staff(
            uow, member, warehouse_ids=member["warehouse_ids"], revoked_at=now, now=now
        )
    return {
        "staff_id": staff_id,
        "name": member["staff_name"],
        "warehouse_ids": warehouse_ids,
        "revoked": not warehouse_ids,
    }


async def staff_of_warehouse(conn: Connection, warehouse_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT staff_id, staff_name AS name, warehouse_ids, key_id, created_at, last_used_at
        FROM access_keys
        WHERE kind = 'staff' AND revoked_at IS NULL AND $1 = ANY(warehouse_ids)
        ORDER BY staff_name, staff_id
        """,
        warehouse_id,
    )
    return [dict(r) for r in rows]


async def _lock_staff(uow: UnitOfWork, staff_id: str) -> None:
    await uow.conn.execute("SELECT pg_advisory_xact_lock(hashtext('staff-keys:' || $1))", staff_id)


async def _write_staff(
    uow: UnitOfWork,
    row: dict[str, Any],
    *,
    warehouse_ids: list[str],
    revoked_at: datetime | None,
    now: datetime,
) -> None:
    event = StaffKeyChanged(
        staff_id=row["staff_id"],
        name=row["staff_name"],
        key_id=row["key_id"],
        key_hash=bytes(row["key_hash"]).hex(),
        warehouse_ids=warehouse_ids,
        created_at=row["created_at"],
        revoked_at=revoked_at,
        occurred_at=now,
    )
    await save_keys(uow.conn, [event])
    uow.emit(event)
