"""SQL of picking: the wave queue, pick-list lines as they are picked, packings."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from services.inventory.domain.allocation import Pick
from services.inventory.domain.waves import PickLine, WaitingOrder
from shared.db.uow import Connection

#: what a line's status is, from its columns (one place, used by every query below)
_LINE_STATUS = """
    CASE WHEN l.cancelled_at IS NOT NULL THEN 'cancelled'
         WHEN l.packed_at IS NOT NULL THEN 'packed'
         WHEN l.picked_quantity >= l.quantity THEN 'picked'
         ELSE 'open' END
"""


def waves_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel that wakes the wave builder after a reservation."""
    return f"waybill_waves_{schema}"


def _wave_lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"waybill.waves.{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def lock_wave_builder(conn: Connection, schema: str) -> bool:
    """Only one wave builder at a time (replicas): a lock held until the transaction ends."""
    locked = await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _wave_lock_key(schema))
    return locked is True


# -- the queue --------------------------------------------------------------------------


async def waiting_orders(conn: Connection) -> list[WaitingOrder]:
    rows = await conn.fetch(
        """
        SELECT order_id, warehouse_id, min(queued_at) AS queued_at
        FROM picking_queue GROUP BY order_id, warehouse_id
        """
    )
    return [WaitingOrder(r["order_id"], r["warehouse_id"], r["queued_at"]) for r in rows]


async def take_from_queue(
    conn: Connection, *, warehouse_id: str, order_ids: Sequence[str]
) -> list[PickLine]:
    """Remove these orders' lines from the queue; only what is still there comes back."""
    rows = await conn.fetch(
        """
        DELETE FROM picking_queue
        WHERE warehouse_id = $1 AND order_id = ANY($2::text[])
        RETURNING order_id, sku, bin, quantity
        """,
        warehouse_id,
        list(order_ids),
    )
    return [PickLine(r["order_id"], r["sku"], r["bin"], r["quantity"]) for r in rows]


async def queued_lines_of_order(
    conn: Connection, order_id: str, *, lock: bool
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"""
        SELECT warehouse_id, sku, bin, quantity FROM picking_queue
        WHERE order_id = $1 ORDER BY id
        {"FOR UPDATE" if lock else ""}
        """,
        order_id,
    )
    return [dict(r) for r in rows]


async def drop_cancelled_from_queue(conn: Connection) -> None:
    await conn.execute(
        """
        DELETE FROM picking_queue q USING inventory_orders o
        WHERE o.order_id = q.order_id AND o.status = 'cancelled'
        """
    )


async def dequeue_order(conn: Connection, order_id: str) -> int:
    status = await conn.execute("DELETE FROM picking_queue WHERE order_id = $1", order_id)
    return int(status.split()[-1])


# -- pick lists -------------------------------------------------------------------------


async def warehouse_name(conn: Connection, warehouse_id: str) -> str | None:
    name = await conn.fetchval("SELECT name FROM warehouses WHERE warehouse_id = $1", warehouse_id)
    return name if isinstance(name, str) else None


async def picklists(
    conn: Connection,
    *,
    warehouse_id: str | None,
    status: str | None,
    picklist_id: UUID | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Pick lists (oldest open first, newest done first) with their lines in walking order."""
    heads = await conn.fetch(
        """
        SELECT picklist_id, warehouse_id, status, created_at, closed_at FROM picklists
        WHERE ($1::text IS NULL OR warehouse_id = $1)
          AND ($2::text IS NULL OR status = $2)
          AND ($3::uuid IS NULL OR picklist_id = $3)
        ORDER BY CASE WHEN status = 'open' THEN created_at END ASC,
                 created_at DESC, picklist_id
        LIMIT $4
        """,
        warehouse_id,
        status,
        picklist_id,
        limit,
    )
    if not heads:
        return []
    lines = await conn.fetch(
        f"""
        SELECT l.picklist_id, l.line_no, l.order_id, l.sku, l.bin, l.quantity,
               l.picked_quantity, {_LINE_STATUS} AS status
        FROM picklist_lines l
        WHERE l.picklist_id = ANY($1::uuid[])
        ORDER BY l.picklist_id, l.line_no
        """,
        [h["picklist_id"] for h in heads],
    )
    by_list: dict[UUID, list[dict[str, Any]]] = {h["picklist_id"]: [] for h in heads}
    for line in lines:
        fields = dict(line)
        by_list[fields.pop("picklist_id")].append(fields)
    return [{**dict(h), "lines": by_list[h["picklist_id"]]} for h in heads]


async def lock_line(conn: Connection, picklist_id: UUID, line_no: int) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"""
        SELECT l.picklist_id, l.line_no, p.warehouse_id, l.order_id, l.sku, l.bin, l.quantity,
               l.picked_quantity, {_LINE_STATUS} AS status, o.status AS order_status
        FROM picklist_lines l JOIN picklists p USING (picklist_id)
             LEFT JOIN inventory_orders o ON o.order_id = l.order_id
        WHERE l.picklist_id = $1 AND l.line_no = $2
        FOR UPDATE OF l
        """,
        picklist_id,
        line_no,
    )
    return dict(row) if row is not None else None


async def add_picked(
    conn: Connection,
    picklist_id: UUID,
    line_no: int,
    *,
    quantity: int,
    now: datetime,
    by: dict[str, str] | None = None,
) -> int:
    """Count ``quantity`` more as picked (by ``by``, a staff member, once in the line's list
    of pickers); returns the line's picked quantity now."""
    picked: int = await conn.fetchval(
        """
        UPDATE picklist_lines
           SET picked_quantity = picked_quantity + $3,
               picked_at = CASE WHEN picked_quantity + $3 >= quantity THEN $4::timestamptz END,
               picked_by = CASE WHEN $5::jsonb IS NULL OR picked_by @> jsonb_build_array($5::jsonb)
                                THEN picked_by ELSE picked_by || jsonb_build_array($5::jsonb) END
        WHERE picklist_id = $1 AND line_no = $2
        RETURNING picked_quantity
        """,
        picklist_id,
        line_no,
        quantity,
        now,
        by,
    )
    return picked


async def record_packer(
    conn: Connection, *, order_id: str, warehouse_id: str, by: dict[str, str]
) -> None:
    await conn.execute(
        "UPDATE packings SET packed_by = $3::jsonb WHERE order_id = $1 AND warehouse_id = $2",
        order_id,
        warehouse_id,
        by,
    )


async def create_lines(
    conn: Connection, *, picklist_id: UUID, warehouse_id: str, lines: Sequence[PickLine]
) -> None:
    """A new open pick list; its line numbers follow the order of ``lines``."""
    await conn.execute(
        # clock_timestamp: several waves of one transaction keep their order
        """
        INSERT INTO picklists (picklist_id, warehouse_id, created_at)
        VALUES ($1, $2, clock_timestamp())
        """,
        picklist_id,
        warehouse_id,
    )
    await conn.execute(
        """
        INSERT INTO picklist_lines (picklist_id, line_no, order_id, sku, bin, quantity)
        SELECT $1, * FROM unnest($2::int[], $3::text[], $4::text[], $5::text[], $6::int[])
        """,
        picklist_id,
        list(range(1, len(lines) + 1)),
        [line.order_id for line in lines],
        [line.sku for line in lines],
        [line.bin for line in lines],
        [line.quantity for line in lines],
    )


async def lines_of_order(conn: Connection, order_id: str, *, lock: bool) -> list[dict[str, Any]]:
    """The order's pick-list lines (cancelled ones left out) with their warehouse.

    ``lock`` only under the order's row lock (packing): two pickers each holding one
    line of the order must not wait for each other's line.
    """
    rows = await conn.fetch(
        f"""
        SELECT l.picklist_id, l.line_no, p.warehouse_id, l.order_id, l.sku, l.bin, l.quantity,
               l.picked_quantity, {_LINE_STATUS} AS status, l.picked_by
        FROM picklist_lines l JOIN picklists p USING (picklist_id)
        WHERE l.order_id = $1 AND l.cancelled_at IS NULL
        ORDER BY p.warehouse_id, l.picklist_id, l.line_no
        {"FOR UPDATE OF l" if lock else ""}
        """,
        order_id,
    )
    return [dict(r) for r in rows]


async def orders_picked_in(
    conn: Connection, picklist_ids: Iterable[UUID]
) -> dict[UUID, dict[str, str]]:
    """Per pick list: each order on it and where it stands (picking, picked, packed, cancelled).

    An order counts as picked when every one of its lines in that warehouse is, also
    on other pick lists and in the queue.
    """
    rows = await conn.fetch(
        """
        WITH members AS (
            SELECT DISTINCT l.picklist_id, p.warehouse_id, l.order_id
            FROM picklist_lines l JOIN picklists p USING (picklist_id)
            WHERE l.picklist_id = ANY($1::uuid[])
        ), order_lines AS (
            SELECT p.warehouse_id, l.order_id, l.quantity, l.picked_quantity
            FROM picklist_lines l JOIN picklists p USING (picklist_id)
            WHERE l.order_id IN (SELECT order_id FROM members) AND l.cancelled_at IS NULL
        )
        SELECT m.picklist_id, m.order_id,
               CASE
                 WHEN EXISTS (SELECT 1 FROM packings k
                              WHERE k.order_id = m.order_id AND k.warehouse_id = m.warehouse_id)
                   THEN 'packed'
                 WHEN NOT EXISTS (SELECT 1 FROM order_lines o
                                  WHERE o.order_id = m.order_id
                                    AND o.warehouse_id = m.warehouse_id)
                   THEN 'cancelled'
                 WHEN EXISTS (SELECT 1 FROM order_lines o
                              WHERE o.order_id = m.order_id AND o.warehouse_id = m.warehouse_id
                                AND o.picked_quantity < o.quantity)
                   OR EXISTS (SELECT 1 FROM picking_queue q
                              WHERE q.order_id = m.order_id AND q.warehouse_id = m.warehouse_id)
                   THEN 'picking'
                 ELSE 'picked'
               END AS status
        FROM members m
        ORDER BY m.picklist_id, m.order_id
        """,
        list(picklist_ids),
    )
    result: dict[UUID, dict[str, str]] = {}
    for r in rows:
        result.setdefault(r["picklist_id"], {})[r["order_id"]] = r["status"]
    return result


async def close_finished_picklists(
    conn: Connection, picklist_ids: Iterable[UUID], *, now: datetime | None
) -> None:
    """Pick lists whose every line is packed or cancelled are done (at ``now`` or the
    database's time)."""
    await conn.execute(
        """
        UPDATE picklists p SET status = 'done', closed_at = coalesce($2::timestamptz, now())
        WHERE p.picklist_id = ANY($1::uuid[]) AND p.status = 'open'
          AND NOT EXISTS (SELECT 1 FROM picklist_lines l
                          WHERE l.picklist_id = p.picklist_id
                            AND l.packed_at IS NULL AND l.cancelled_at IS NULL)
        """,
        list(set(picklist_ids)),
        now,
    )


async def cancel_unpacked_lines(
    conn: Connection, order_id: str, *, now: datetime | None
) -> list[UUID]:
    """Take an order's unpacked lines off their pick lists; returns those pick lists."""
    rows = await conn.fetch(
        """
        UPDATE picklist_lines SET cancelled_at = coalesce($2::timestamptz, now())
        WHERE order_id = $1 AND cancelled_at IS NULL AND packed_at IS NULL
        RETURNING picklist_id
        """,
        order_id,
        now,
    )
    return list(dict.fromkeys(r["picklist_id"] for r in rows))


# -- packing ----------------------------------------------------------------------------


async def lock_order(conn: Connection, order_id: str) -> str | None:
    """Lock the order's row (packing and cancelling take it first); returns its status."""
    status = await conn.fetchval(
        "SELECT status FROM inventory_orders WHERE order_id = $1 FOR UPDATE", order_id
    )
    return status if isinstance(status, str) else None


async def packed_warehouses(conn: Connection, order_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT warehouse_id FROM packings WHERE order_id = $1 ORDER BY warehouse_id", order_id
    )
    return [r["warehouse_id"] for r in rows]


async def insert_packing(
    conn: Connection,
    *,
    order_id: str,
    warehouse_id: str,
    parcels: list[dict[str, Any]],
    packed_at: datetime,
) -> bool:
    packed = await insert_packings(conn, [(order_id, warehouse_id, parcels)], packed_at=packed_at)
    return bool(packed)


async def mark_packed(
    conn: Connection, *, order_id: str, warehouse_id: str, now: datetime
) -> list[UUID]:
    """The order's lines in that warehouse are packed; returns their pick lists."""
    rows = await conn.fetch(
        """
        UPDATE picklist_lines l SET packed_at = $3
        FROM picklists p
        WHERE p.picklist_id = l.picklist_id AND l.order_id = $1 AND p.warehouse_id = $2
          AND l.cancelled_at IS NULL AND l.packed_at IS NULL
        RETURNING l.picklist_id
        """,
        order_id,
        warehouse_id,
        now,
    )
    return list(dict.fromkeys(r["picklist_id"] for r in rows))


async def still_reserved(conn: Connection, order_id: str) -> bool:
    """Whether some of the order's reservations are not packed yet (another warehouse)."""
    found = await conn.fetchval(
        "SELECT true FROM reservations WHERE order_id = $1 AND status = 'reserved' LIMIT 1",
        order_id,
    )
    return found is True


# -- set-based statements of the hot path --------------------------------------------------


async def enqueue_many(
    conn: Connection, queued: Sequence[tuple[str, Pick]], *, queued_at: datetime
) -> None:
    """Put the reserved picks of several orders on the wave queue, in one statement."""
    if not queued:
        return
    await conn.execute(
        """
        INSERT INTO picking_queue (order_id, warehouse_id, sku, bin, quantity, queued_at)
        SELECT o, w, s, b, q, $6
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[])
             WITH ORDINALITY AS p(o, w, s, b, q, i)
        ORDER BY i
        """,
        [o for o, _ in queued],
        [p.warehouse_id for _, p in queued],
        [p.sku for _, p in queued],
        [p.bin for _, p in queued],
        [p.quantity for _, p in queued],
        queued_at,
    )


async def create_picked_and_packed(
    conn: Connection,
    picklists: Sequence[tuple[UUID, str, Sequence[PickLine]]],
    *,
    now: datetime,
) -> None:
    """Pick lists confirmed and packed at once (automatic picking): each ``(picklist_id,
    warehouse_id, lines)`` done, its lines picked and packed, in two statements."""
    if not picklists:
        return
    await conn.execute(
        # clock_timestamp per row: the pick lists of one batch keep their order
        """
        INSERT INTO picklists (picklist_id, warehouse_id, status, created_at, closed_at)
        SELECT p, w, 'done', clock_timestamp(), $3
        FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS n(p, w, i)
        ORDER BY i
        """,
        [p for p, _, _ in picklists],
        [w for _, w, _ in picklists],
        now,
    )
    lines = [
        (picklist_id, n, line)
        for picklist_id, _, picked in picklists
        for n, line in enumerate(picked, start=1)
    ]
    await conn.execute(
        """
        INSERT INTO picklist_lines (picklist_id, line_no, order_id, sku, bin, quantity,
                                    picked_quantity, picked_at, packed_at)
        SELECT p, n, o, s, b, q, q, $7, $7
        FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::int[])
             AS l(p, n, o, s, b, q)
        """,
        [p for p, _, _ in lines],
        [n for _, n, _ in lines],
        [line.order_id for _, _, line in lines],
        [line.sku for _, _, line in lines],
        [line.bin for _, _, line in lines],
        [line.quantity for _, _, line in lines],
        now,
    )


async def insert_packings(
    conn: Connection,
    packings: Sequence[tuple[str, str, list[dict[str, Any]]]],
    *,
    packed_at: datetime,
) -> set[tuple[str, str]]:
    """Each ``(order_id, warehouse_id, parcels)`` packed once; returns those packed now."""
    if not packings:
        return set()
    rows = await conn.fetch(
        """
        INSERT INTO packings (order_id, warehouse_id, parcels, packed_at)
        SELECT o, w, p::jsonb, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS n(o, w, p)
        ON CONFLICT DO NOTHING
        RETURNING order_id, warehouse_id
        """,
        [o for o, _, _ in packings],
        [w for _, w, _ in packings],
        [json.dumps(p) for _, _, p in packings],
        packed_at,
    )
    return {(r["order_id"], r["warehouse_id"]) for r in rows}
