"""SQL of the returns service."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from services.returns.domain.window import Delivery
from shared.carriers.purchase_store import PurchaseRows, as_leased
from shared.db.uow import Connection

LABELS_CHANNEL = "waybill_returns_labels"

#: return label purchases: one per approved return (status ``label_pending`` meanwhile)
PURCHASES = PurchaseRows(
    table="returns",
    id_column="return_id",
    status_column="status",
    carrier_column="label_carrier",
    service_column="label_service",
)


async def remember_orders(conn: Connection, orders: list[dict[str, Any]]) -> None:
    """What returns keeps of each accepted order (order_id, currency, lines, ship_to)."""
    if not orders:
        return
    await conn.execute(
        """
        INSERT INTO return_orders (order_id, currency, lines, ship_to, shop_id)
        SELECT o, c, l::jsonb, s::jsonb, sh
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
             AS n(o, c, l, s, sh)
        ON CONFLICT (order_id) DO NOTHING
        """,
        [o["order_id"] for o in orders],
        [o["currency"] for o in orders],
        [json.dumps(o["lines"]) for o in orders],
        [json.dumps(o["ship_to"]) for o in orders],
        [o["shop_id"] for o in orders],
    )


async def shop_of_order(conn: Connection, order_id: str) -> str | None:
    shop_id: str | None = await conn.fetchval(
        "SELECT shop_id FROM return_orders WHERE order_id = $1", order_id
    )
    return shop_id


async def record_delivery(
    conn: Connection,
    *,
    shipment_id: UUID,
    order_id: str,
    delivered_at: datetime,
    carrier: str | None,
    warehouse_id: str | None,
    ship_from: dict[str, Any] | None,
    lines: list[dict[str, Any]],
) -> None:
    await conn.execute(
        """
        INSERT INTO deliveries (shipment_id, order_id, delivered_at, carrier, warehouse_id,
                                ship_from, lines)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (shipment_id) DO NOTHING
        """,
        shipment_id,
        order_id,
        delivered_at,
        carrier,
        warehouse_id,
        ship_from,
        lines,
    )


async def lock_order(conn: Connection, order_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT * FROM return_orders WHERE order_id = $1 FOR UPDATE", order_id
    )
    return dict(row) if row is not None else None


async def deliveries_of(conn: Connection, order_id: str) -> list[tuple[Delivery, dict[str, Any]]]:
    rows = await conn.fetch(
        "SELECT * FROM deliveries WHERE order_id = $1 ORDER BY delivered_at", order_id
    )
    result = []
    for r in rows:
        lines: dict[str, int] = {}
        for line in r["lines"]:
            lines[line["sku"]] = lines.get(line["sku"], 0) + int(line["quantity"])
        result.append((Delivery(str(r["shipment_id"]), r["delivered_at"], lines), dict(r)))
    return result


async def returned_quantities(conn: Connection, order_id: str) -> dict[str, int]:
    """What earlier approved returns of the order already take back, per sku."""
    rows = await conn.fetch(
        """
        SELECT line->>'sku' AS sku, sum((line->>'quantity')::int)::int AS quantity
        FROM returns, jsonb_array_elements(lines) AS line
        WHERE order_id = $1
          AND status IN ('label_pending', 'approved', 'label_failed', 'received')
        GROUP BY line->>'sku'
        """,
        order_id,
    )
    return {r["sku"]: r["quantity"] for r in rows}


async def find_return(conn: Connection, return_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM returns WHERE return_id = $1", return_id)
    return dict(row) if row is not None else None


async def insert_return(conn: Connection, **fields: Any) -> bool:
    columns = ", ".join(fields)
    placeholders = ", ".join(f"${i}" for i in range(1, len(fields) + 1))
    inserted = await conn.fetchval(
        f"INSERT INTO returns ({columns}) VALUES ({placeholders}) "
        "ON CONFLICT (return_id) DO NOTHING RETURNING true",
        *fields.values(),
    )
    return inserted is True


async def wait_until(conn: Connection, return_id: str, *, delay: timedelta) -> None:
    """A pending request is decided for good once ``delay`` has passed."""
    await conn.execute(
        "UPDATE returns SET next_attempt_at = now() + $2::interval WHERE return_id = $1",
        return_id,
        delay,
    )


async def decide(
    conn: Connection, return_id: str, *, status: str, decided_at: datetime, **fields: Any
) -> None:
    """A pending request decided: rejected, or approved pending its label."""
    names = ["status", "decided_at", *fields]
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
    await conn.execute(
        f"UPDATE returns SET {assignments}, next_attempt_at = now() "
        "WHERE return_id = $1 AND status = 'pending'",
        return_id,
        status,
        decided_at,
        *fields.values(),
    )


async def pending_of_order(conn: Connection, order_id: str) -> list[dict[str, Any]]:
    return await pending_of_orders(conn, [order_id])


async def pending_of_orders(conn: Connection, order_ids: list[str]) -> list[dict[str, Any]]:
    """Requests still waiting for news of these orders, oldest first per order."""
    rows = await conn.fetch(
        """
        SELECT * FROM returns WHERE order_id = ANY($1::text[]) AND status = 'pending'
        ORDER BY order_id, created_at FOR UPDATE
        """,
        sorted(set(order_ids)),
    )
    return [dict(r) for r in rows]


async def lease_overdue_pending(conn: Connection, *, limit: int) -> list[dict[str, Any]]:
    """Pending requests whose grace is over (the caller decides them in this transaction)."""
    rows = await conn.fetch(
        """
        SELECT * FROM returns WHERE status = 'pending' AND next_attempt_at <= now()
        ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED
        """,
        limit,
    )
    return [dict(r) for r in rows]


async def lease_due_labels(
    conn: Connection, *, limit: int, lease: timedelta
) -> list[dict[str, Any]]:
    """Take due return labels for ``lease``. A stored choice is pinned while the try may
    call the carrier with it; each row's ``carrier_pinned`` is what the last recorded
    outcome said (:func:`as_leased`)."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT return_id, carrier_pinned FROM returns
            WHERE status = 'label_pending' AND next_attempt_at <= now()
            ORDER BY next_attempt_at LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE returns r SET next_attempt_at = now() + $2::interval,
                             carrier_pinned = r.carrier_pinned OR r.label_carrier IS NOT NULL
        FROM return_orders o, due d
        -- by primary key (see shipping's lease): never a scan of the whole table
        WHERE r.return_id = ANY(ARRAY(SELECT return_id FROM due))
          AND d.return_id = r.return_id AND o.order_id = r.order_id
        RETURNING r.*, d.carrier_pinned AS pinned_before, o.ship_to AS customer_address
        """,
        limit,
        lease,
    )
    return [as_leased(r) for r in rows]


async def choose_label(
    conn: Connection, return_id: str, *, carrier: str, service: str, idempotency_key: str
) -> None:
    """The return label's carrier and service, stored before it is bought, pinned until
    the try that buys it records its outcome (see :func:`lease_due_labels`)."""
    await conn.execute(
        """
        UPDATE returns SET label_carrier = $2, label_service = $3, idempotency_key = $4,
                           carrier_pinned = true
        WHERE return_id = $1
        """,
        return_id,
        carrier,
        service,
        idempotency_key,
    )


async def approve(
    conn: Connection,
    return_id: str,
    *,
    label: dict[str, Any],
    attempts: int,
    replacement_order_id: str | None,
) -> bool:
    status = await conn.execute(
        """
        UPDATE returns SET status = 'approved', label = $2, decided_at = now(), last_error = NULL,
                           attempts = $3, replacement_order_id = $4
        WHERE return_id = $1 AND status = 'label_pending'
        """,
        return_id,
        label,
        attempts,
        replacement_order_id,
    )
    return status == "UPDATE 1"


async def lock_return(conn: Connection, return_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        """
        SELECT r.*, o.currency, o.lines AS order_lines
        FROM returns r JOIN return_orders o USING (order_id)
        WHERE r.return_id = $1 FOR UPDATE OF r
        """,
        return_id,
    )
    return dict(row) if row is not None else None


async def record_receipt(
    conn: Connection,
    return_id: str,
    *,
    lines: list[dict[str, Any]],
    refund_amount: Decimal | None,
    received_at: datetime,
) -> None:
    await conn.execute(
        """
        UPDATE returns SET status = 'received', received_lines = $2, refund_amount = $3,
                           received_at = $4
        WHERE return_id = $1 AND status = 'approved'
        """,
        return_id,
        lines,
        refund_amount,
        received_at,
    )
