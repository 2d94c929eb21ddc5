"""SQL of the inventory service."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from services.inventory.domain.allocation import BinStock, Pick, Warehouse
from shared.db.uow import Connection

DEFAULT_BIN = "RECEIVING"


class StockChanged(RuntimeError):
    """A conditional stock update did not apply: never expected under the row locks."""


async def upsert_warehouse(
    conn: Connection, *, warehouse_id: str, name: str, country: str, postal_code: str
) -> None:
    await conn.execute(
        """
        INSERT INTO warehouses (warehouse_id, name, country, postal_code)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (warehouse_id) DO UPDATE
           SET name = excluded.name, country = excluded.country,
               postal_code = excluded.postal_code, updated_at = now()
        """,
        warehouse_id,
        name,
        country,
        postal_code,
    )


async def warehouse_exists(conn: Connection, warehouse_id: str) -> bool:
    found = await conn.fetchval("SELECT true FROM warehouses WHERE warehouse_id = $1", warehouse_id)
    return found is True


async def warehouse_origin(conn: Connection, warehouse_id: str) -> tuple[str, str]:
    row = await conn.fetchrow(
        "SELECT country, postal_code FROM warehouses WHERE warehouse_id = $1", warehouse_id
    )
    if row is None:
        raise LookupError(f"unknown warehouse {warehouse_id}")
    return row["country"], row["postal_code"]


async def all_warehouses(conn: Connection) -> list[Warehouse]:
    rows = await conn.fetch("SELECT warehouse_id, country, postal_code FROM warehouses")
    return [Warehouse(r["warehouse_id"], r["country"], r["postal_code"]) for r in rows]


async def receive_stock(
    conn: Connection, *, warehouse_id: str, sku: str, bin: str, quantity: int
) -> None:
    await conn.execute(
        """
        INSERT INTO stock (warehouse_id, sku, bin, on_hand) VALUES ($1, $2, $3, $4)
        ON CONFLICT (warehouse_id, sku, bin) DO UPDATE SET on_hand = stock.on_hand + $4
        """,
        warehouse_id,
        sku,
        bin,
        quantity,
    )


async def lock_stock(conn: Connection, skus: Iterable[str]) -> list[BinStock]:
    """Lock every bin of these SKUs, always in one global order, so baskets never deadlock."""
    rows = await conn.fetch(
        """
        SELECT warehouse_id, sku, bin, on_hand - reserved AS available
        FROM stock
        WHERE sku = ANY($1::text[])
        ORDER BY warehouse_id, sku, bin
        FOR UPDATE
        """,
        sorted(set(skus)),
    )
    return [BinStock(r["warehouse_id"], r["sku"], r["bin"], r["available"]) for r in rows]


async def set_order_status(
    conn: Connection, order_id: str, status: str, *, missing: dict[str, int] | None = None
) -> None:
    await conn.execute(
        """
        UPDATE inventory_orders SET status = $2, missing = $3, updated_at = now()
        WHERE order_id = $1
        """,
        order_id,
        status,
        missing or {},
    )


async def fetch_order(conn: Connection, order_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT * FROM inventory_orders WHERE order_id = $1 FOR UPDATE", order_id
    )
    return dict(row) if row is not None else None


async def backordered_waiting_for(conn: Connection, sku: str, *, limit: int) -> list[str]:
    """Backordered orders that miss ``sku``, oldest first."""
    rows = await conn.fetch(
        """
        SELECT order_id FROM inventory_orders
        WHERE status = 'backordered' AND missing ? $1
        ORDER BY placed_at, order_id
        LIMIT $2
        """,
        sku,
        limit,
    )
    return [r["order_id"] for r in rows]


async def ship_out(conn: Connection, order_id: str, warehouse_id: str) -> None:
    """Packed goods leave the shelves: on hand and reserved both go down."""
    await conn.execute(
        """
        WITH packed AS (
            UPDATE reservations SET status = 'packed'
            WHERE order_id = $1 AND warehouse_id = $2 AND status = 'reserved'
            RETURNING warehouse_id, sku, bin, quantity
        ), totals AS (
            SELECT warehouse_id, sku, bin, sum(quantity)::int AS quantity
            FROM packed GROUP BY warehouse_id, sku, bin
        )
        UPDATE stock s SET on_hand = s.on_hand - p.quantity, reserved = s.reserved - p.quantity
        FROM totals p
        WHERE s.warehouse_id = p.warehouse_id AND s.sku = p.sku AND s.bin = p.bin
        """,
        order_id,
        warehouse_id,
    )


async def stock_of_sku(conn: Connection, sku: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT warehouse_id, bin, on_hand, reserved, on_hand - reserved AS available
        FROM stock WHERE sku = $1 ORDER BY warehouse_id, bin
        """,
        sku,
    )
    return [dict(r) for r in rows]


async def remember_cancelled(conn: Connection, order_id: str) -> None:
    await conn.execute(
        "INSERT INTO cancelled_orders (order_id) VALUES ($1) ON CONFLICT DO NOTHING", order_id
    )


async def release_reservations(conn: Connection, order_id: str) -> list[tuple[Pick, str]]:
    """Give back what an order holds: reserved stock is freed, packed goods go back on
    the shelf. Returns each reservation with the status it had."""
    rows = await conn.fetch(
        """
        SELECT id, warehouse_id, sku, bin, quantity, status FROM reservations
        WHERE order_id = $1 AND status IN ('reserved', 'packed')
        ORDER BY warehouse_id, sku, bin
        FOR UPDATE
        """,
        order_id,
    )
    if not rows:
        return []
    await conn.execute(
        "UPDATE reservations SET status = 'released' WHERE id = ANY($1::bigint[])",
        [r["id"] for r in rows],
    )
    for column, status in (("reserved", "reserved"), ("on_hand", "packed")):
        chosen = [r for r in rows if r["status"] == status]
        if not chosen:
            continue
        sign = "-" if column == "reserved" else "+"
        await conn.execute(
            f"""
            UPDATE stock s SET {column} = s.{column} {sign} t.quantity
            FROM (
                SELECT w, k, b, sum(q)::int AS quantity
                FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) AS u(w, k, b, q)
                GROUP BY w, k, b
            ) AS t
            WHERE s.warehouse_id = t.w AND s.sku = t.k AND s.bin = t.b
            """,
            [r["warehouse_id"] for r in chosen],
            [r["sku"] for r in chosen],
            [r["bin"] for r in chosen],
            [r["quantity"] for r in chosen],
        )
    return [(Pick(r["warehouse_id"], r["sku"], r["bin"], r["quantity"]), r["status"]) for r in rows]


# --- returns ----------------------------------------------------------------------------


async def expect_return(
    conn: Connection,
    *,
    return_id: str,
    rma: str,
    order_id: str,
    warehouse_id: str | None,
    lines: list[dict[str, Any]],
    resolution: str,
    approved_at: datetime,
    received_at: datetime | None = None,
) -> None:
    """Store an approved return once; as ``received`` already when ``received_at`` is given."""
    await conn.execute(
        """
        INSERT INTO expected_returns (return_id, rma, order_id, warehouse_id, lines,
                                      resolution, approved_at, status, received_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7,
                CASE WHEN $8::timestamptz IS NULL THEN 'expected' ELSE 'received' END, $8)
        ON CONFLICT (return_id) DO NOTHING
        """,
        return_id,
        rma,
        order_id,
        warehouse_id,
        lines,
        resolution,
        approved_at,
        received_at,
    )


async def lock_return(conn: Connection, return_id: str) -> None:
    """Serialise the handling of one return's approval and receipt (they arrive on different
    topics, so different partitions and consumers may handle them at the same time)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('return:' || $1))", return_id)


async def return_received_at(conn: Connection, return_id: str) -> datetime | None:
    """When ``returns.received`` of this return was applied (restocked or written off)."""
    at: datetime | None = await conn.fetchval(
        """
        SELECT min(at) FROM (
            SELECT at FROM restocks WHERE return_id = $1
            UNION ALL
            SELECT at FROM write_offs WHERE return_id = $1
        ) AS applied
        """,
        return_id,
    )
    return at


async def expected_returns(
    conn: Connection, *, warehouse_id: str | None, limit: int = 200
) -> list[dict[str, Any]]:
    """Returns still to be received (of one warehouse, or all), oldest first."""
    rows = await conn.fetch(
        """
        SELECT return_id, rma, order_id, warehouse_id, lines, resolution, status, approved_at
        FROM expected_returns
        WHERE status = 'expected' AND ($1::text IS NULL OR warehouse_id = $1)
        ORDER BY approved_at, rma LIMIT $2
        """,
        warehouse_id,
        limit,
    )
    return [dict(r) for r in rows]


async def lock_expected_return(conn: Connection, return_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT * FROM expected_returns WHERE return_id = $1 FOR UPDATE", return_id
    )
    return dict(row) if row is not None else None


async def mark_return(conn: Connection, return_id: str, *, status: str, at: datetime) -> None:
    column = {"scanned": "scanned_at", "received": "received_at"}[status]
    await conn.execute(
        f"UPDATE expected_returns SET status = $2, {column} = $3 WHERE return_id = $1",
        return_id,
        status,
        at,
    )


async def restock(
    conn: Connection, *, return_id: str, warehouse_id: str, sku: str, quantity: int
) -> bool:
    """Put a return's sellable goods back in the sku's first bin in that warehouse (or the
    default bin); False if this return's sku was restocked already."""
    bin_ = await conn.fetchval(
        "SELECT min(bin) FROM stock WHERE warehouse_id = $1 AND sku = $2", warehouse_id, sku
    )
    recorded = await conn.fetchval(
        """
        INSERT INTO restocks (return_id, sku, warehouse_id, bin, quantity)
        VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true
        """,
        return_id,
        sku,
        warehouse_id,
        bin_ or DEFAULT_BIN,
        quantity,
    )
    if recorded is not True:
        return False
    await receive_stock(
        conn, warehouse_id=warehouse_id, sku=sku, bin=bin_ or DEFAULT_BIN, quantity=quantity
    )
    return True


async def write_off(
    conn: Connection, *, return_id: str, warehouse_id: str, sku: str, quantity: int
) -> None:
    await conn.execute(
        """
        INSERT INTO write_offs (return_id, sku, warehouse_id, quantity)
        VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING
        """,
        return_id,
        sku,
        warehouse_id,
        quantity,
    )


async def written_off(conn: Connection, sku: str) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT warehouse_id, sum(quantity)::int AS q FROM write_offs WHERE sku = $1 "
        "GROUP BY warehouse_id",
        sku,
    )
    return {r["warehouse_id"]: r["q"] for r in rows}


# --- set-based statements of the hot path (one statement per batch, not per order) ---------


async def insert_orders(conn: Connection, orders: list[dict[str, Any]]) -> set[str]:
    """New orders (not cancelled before we heard of them); returns the order_ids inserted."""
    if not orders:
        return set()
    rows = await conn.fetch(
        """
        INSERT INTO inventory_orders (order_id, status, lines, ship_country, ship_postal_code,
                                      accepted_at, placed_at)
        SELECT o, 'new', l::jsonb, c, p, a, pl
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                    $6::timestamptz[]) AS n(o, l, c, p, a, pl)
        WHERE NOT EXISTS (SELECT 1 FROM cancelled_orders x WHERE x.order_id = n.o)
        ON CONFLICT (order_id) DO NOTHING
        RETURNING order_id
        """,
        [o["order_id"] for o in orders],
        [json.dumps(o["lines"]) for o in orders],
        [o["country"] for o in orders],
        [o["postal_code"] for o in orders],
        [o["accepted_at"] for o in orders],
        [o["placed_at"] for o in orders],
    )
    return {r["order_id"] for r in rows}


async def lock_orders(conn: Connection, order_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Lock the orders' rows (in one global order, so batches never deadlock)."""
    if not order_ids:
        return {}
    rows = await conn.fetch(
        """
        SELECT * FROM inventory_orders WHERE order_id = ANY($1::text[])
        ORDER BY order_id FOR UPDATE
        """,
        sorted(set(order_ids)),
    )
    return {r["order_id"]: dict(r) for r in rows}


async def set_order_statuses(
    conn: Connection, statuses: list[tuple[str, str, dict[str, int]]]
) -> None:
    """Each (order_id, status, missing) in one statement."""
    if not statuses:
        return
    await conn.execute(
        """
        UPDATE inventory_orders o SET status = n.s, missing = n.m::jsonb, updated_at = now()
        FROM unnest($1::text[], $2::text[], $3::text[]) AS n(id, s, m)
        WHERE o.order_id = n.id AND o.order_id = ANY($1::text[])
        """,
        [s[0] for s in statuses],
        [s[1] for s in statuses],
        [json.dumps(s[2]) for s in statuses],
    )


def _per_bin(picks: Iterable[Pick]) -> dict[tuple[str, str, str], int]:
    totals: dict[tuple[str, str, str], int] = {}
    for p in picks:
        key = (p.warehouse_id, p.sku, p.bin)
        totals[key] = totals.get(key, 0) + p.quantity
    return totals


async def take_stock(
    conn: Connection, reservations: list[tuple[str, Pick]], *, shipped: bool
) -> None:
    """Reserve what the orders' picks take from their bins (``shipped``: the goods leave at
    once, as when the warehouse picks and packs automatically), in two statements. The
    stock rows are locked already (:func:`lock_stock`): the conditional update is the last
    line of defence, and the CHECK constraints refuse oversell too."""
    if not reservations:
        return
    totals = _per_bin(p for _, p in reservations)
    column = "on_hand" if shipped else "reserved"
    sign = "-" if shipped else "+"
    status = await conn.execute(
        f"""
        UPDATE stock s SET {column} = s.{column} {sign} n.q
        FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) AS n(w, k, b, q)
        WHERE s.warehouse_id = n.w AND s.sku = n.k AND s.bin = n.b
          AND s.on_hand - s.reserved >= n.q
        """,
        [k[0] for k in totals],
        [k[1] for k in totals],
        [k[2] for k in totals],
        list(totals.values()),
    )
    if status != f"UPDATE {len(totals)}":
        raise StockChanged(f"stock changed under its lock: {status} of {len(totals)} bins")
    await conn.execute(
        """
        INSERT INTO reservations (order_id, warehouse_id, sku, bin, quantity, status)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[],
                             $6::text[])
        """,
        [o for o, _ in reservations],
        [p.warehouse_id for _, p in reservations],
        [p.sku for _, p in reservations],
        [p.bin for _, p in reservations],
        [p.quantity for _, p in reservations],
        ["packed" if shipped else "reserved"] * len(reservations),
    )
