"""SQL of the orders service, next to the tables it touches (storage/migrations)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from services.orders.domain.promises import PromisePolicy
from services.orders.domain.status import TERMINAL
from shared.db.uow import Connection


async def lock_status(conn: Connection, order_id: str) -> str | None:
    value: str | None = await conn.fetchval(
        "SELECT status FROM orders WHERE order_id = $1 FOR UPDATE", order_id
    )
    return value


async def append_timeline(
    conn: Connection,
    *,
    order_id: str,
    status: str,
    at: datetime,
    topic: str,
    event_id: UUID,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """
        INSERT INTO order_timeline (order_id, status, at, topic, event_id, detail)
        VALUES ($1, $2, $3, $4, $5, $6)
        """,
        order_id,
        status,
        at,
        topic,
        event_id,
        detail or {},
    )


async def insert_rejection(
    conn: Connection,
    *,
    event_id: UUID,
    order_id: str,
    shop_id: str | None,
    reason: str,
    reasons: list[dict[str, str]],
) -> None:
    await conn.execute(
        """
        INSERT INTO rejections (event_id, order_id, shop_id, reason, reasons)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (event_id) DO NOTHING
        """,
        event_id,
        order_id,
        shop_id,
        reason,
        reasons,
    )


async def fetch_order(conn: Connection, order_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM orders WHERE order_id = $1", order_id)
    if row is None:
        return None
    order = dict(row)
    order["timeline"] = [
        dict(r)
        for r in await conn.fetch(
            """
            SELECT status, at, topic, detail FROM order_timeline
            WHERE order_id = $1 ORDER BY id
            """,
            order_id,
        )
    ]
    return order


async def fetch_rejections(conn: Connection, order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT shop_id, reason, reasons, rejected_at FROM rejections
        WHERE order_id = $1 ORDER BY rejected_at
        """,
        order_id,
    )
    return [dict(r) for r in rows]


async def count_by_status(conn: Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM orders GROUP BY status")
    counts = {r["status"]: r["n"] for r in rows}
    rejected = await conn.fetchval(
        """
        SELECT count(DISTINCT r.order_id) FROM rejections r
        WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.order_id = r.order_id)
        """
    )
    if rejected:
        counts["rejected"] = counts.get("rejected", 0) + rejected
    return counts


async def shop_promise_policy(conn: Connection, shop_id: str) -> PromisePolicy | None:
    return (await shop_promise_policies(conn, [shop_id])).get(shop_id)


async def save_shop_promise_policy(conn: Connection, shop_id: str, policy: PromisePolicy) -> None:
    await conn.execute(
        """
        INSERT INTO shop_promises (shop_id, time_zone, standard_cutoff, express_cutoff,
                                   collection_time, standard_business_days, express_business_days)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (shop_id) DO UPDATE SET
            time_zone = excluded.time_zone, standard_cutoff = excluded.standard_cutoff,
            express_cutoff = excluded.express_cutoff, collection_time = excluded.collection_time,
            standard_business_days = excluded.standard_business_days,
            express_business_days = excluded.express_business_days, updated_at = now()
        """,
        shop_id,
        policy.time_zone,
        policy.standard_cutoff,
        policy.express_cutoff,
        policy.collection_time,
        policy.standard_business_days,
        policy.express_business_days,
    )


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


async def record_return_request(
    conn: Connection, *, return_id: str, order_id: str, seen_at: datetime, deadline: datetime
) -> None:
    await conn.execute(
        """
        INSERT INTO return_decisions (return_id, order_id, requested_at, deadline)
        VALUES ($1, $2, $3, $4) ON CONFLICT (return_id) DO NOTHING
        """,
        return_id,
        order_id,
        seen_at,
        deadline,
    )


async def record_return_decision(
    conn: Connection,
    *,
    return_id: str,
    order_id: str,
    decision: str,
    decided_at: datetime,
    deadline_if_unseen: datetime,
) -> dict[str, Any] | None:
    """The decision's time, once; returns the row when its deadline had passed unbreached.

    The request and its decision come on different topics, so the decision can be seen
    first. Then the request counts as seen at the decision (on time), and the request's
    later arrival (:func:`record_return_request`) keeps this row. Orders that are not ours
    get no row, as their requests get none.
    """
    row = await conn.fetchrow(
        """
        INSERT INTO return_decisions
            (return_id, order_id, requested_at, deadline, decided_at, decision)
        SELECT $1, $2, $4, $5, $4, $3
        WHERE EXISTS (SELECT 1 FROM orders WHERE order_id = $2)
        ON CONFLICT (return_id) DO UPDATE SET decided_at = $4, decision = $3
            WHERE return_decisions.decided_at IS NULL
        RETURNING order_id, deadline, breached_at
        """,
        return_id,
        order_id,
        decision,
        decided_at,
        deadline_if_unseen,
    )
    if row is None or row["breached_at"] is not None or decided_at <= row["deadline"]:
        return None
    return dict(row)


async def overdue_return_decisions(
    conn: Connection, *, now: datetime, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT return_id, order_id, deadline FROM return_decisions
        WHERE decided_at IS NULL AND breached_at IS NULL AND deadline < $1
        ORDER BY deadline LIMIT $2 FOR UPDATE SKIP LOCKED
        """,
        now,
        limit,
    )
    return [dict(r) for r in rows]


async def mark_return_decision_breached(conn: Connection, return_id: str, at: datetime) -> bool:
    status = await conn.execute(
        """
        UPDATE return_decisions SET breached_at = $2
        WHERE return_id = $1 AND breached_at IS NULL
        """,
        return_id,
        at,
    )
    return status == "UPDATE 1"


async def return_decisions_of(conn: Connection, order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT return_id, requested_at, deadline, decided_at, decision, breached_at
        FROM return_decisions WHERE order_id = $1 ORDER BY requested_at
        """,
        order_id,
    )
    return [dict(r) for r in rows]


# --- the SLA engine -----------------------------------------------------------------------


async def mark_sla_breached(conn: Connection, *, order_id: str, stage: str, at: datetime) -> bool:
    """True only the first time: the breach is published once per order and stage."""
    status = await conn.execute(
        """
        UPDATE order_slas SET breached_at = $3
        WHERE order_id = $1 AND stage = $2 AND breached_at IS NULL
        """,
        order_id,
        stage,
        at,
    )
    return status == "UPDATE 1"


async def close_slas(conn: Connection, order_id: str) -> None:
    await conn.execute(
        "UPDATE order_slas SET closed = true WHERE order_id = $1 AND met_at IS NULL", order_id
    )


async def overdue_slas(
    conn: Connection, *, stages: tuple[str, ...], now: datetime, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT order_id, stage, deadline FROM order_slas
        WHERE met_at IS NULL AND breached_at IS NULL AND NOT closed
          AND stage = ANY($1::text[]) AND deadline < $2
        ORDER BY deadline LIMIT $3 FOR UPDATE SKIP LOCKED
        """,
        list(stages),
        now,
        limit,
    )
    return [dict(r) for r in rows]


async def mark_at_risk(conn: Connection, *, now: datetime, share: float) -> int:
    """Stages past ``share`` of their window and not met: at risk from now on."""
    status = await conn.execute(
        """
        UPDATE order_slas SET at_risk_at = $1
        WHERE met_at IS NULL AND breached_at IS NULL AND NOT closed AND at_risk_at IS NULL
          AND window_start + (deadline - window_start) * $2 <= $1
        """,
        now,
        share,
    )
    return int(status.split()[-1])


async def at_risk_counts(conn: Connection) -> dict[str, int]:
    """Open stages at risk now (past 80 % of their window, not met, not breached), by stage."""
    rows = await conn.fetch(
        """
        SELECT stage, count(*) AS n FROM order_slas
        WHERE at_risk_at IS NOT NULL AND met_at IS NULL AND breached_at IS NULL AND NOT closed
        GROUP BY stage
        """
    )
    return {r["stage"]: r["n"] for r in rows}


async def slas_of(conn: Connection, order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT stage, window_start, deadline, met_at, at_risk_at, breached_at, closed
        FROM order_slas WHERE order_id = $1
        ORDER BY array_position(ARRAY['accept', 'dispatch', 'delivery'], stage)
        """,
        order_id,
    )
    return [dict(r) for r in rows]


#: Every SLA stage of every order, one row each: the order's own stages (accept, dispatch,
#: delivery) and each return's decision. The summary, the orders needing attention and the
#: latency chart all read this, so they count the same things.
_SLA_STAGES = """
    SELECT order_id, stage, window_start AS started, deadline, met_at AS done, breached_at,
           closed
    FROM order_slas
    UNION ALL
    SELECT order_id, 'return_decision', requested_at, deadline, decided_at, breached_at, false
    FROM return_decisions
"""


async def stage_summary(
    conn: Connection, *, now: datetime, at_risk_share: float
) -> list[dict[str, Any]]:
    """Per stage: how many were met, p50 and p95 of the time they took (seconds from the
    window's start), how many breached, how many are at risk or still open now."""
    rows = await conn.fetch(
        f"""
        WITH stages AS ({_SLA_STAGES})
        SELECT stage,
               count(done) AS met,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM done - started))
                   FILTER (WHERE done IS NOT NULL) AS p50_seconds,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM done - started))
                   FILTER (WHERE done IS NOT NULL) AS p95_seconds,
               count(*) FILTER (WHERE breached_at IS NOT NULL OR done > deadline) AS breached,
               count(*) FILTER (
                   WHERE done IS NULL AND breached_at IS NULL AND NOT closed AND deadline >= $1
                     AND started + (deadline - started) * $2 <= $1) AS at_risk,
               count(*) FILTER (WHERE done IS NULL AND breached_at IS NULL AND NOT closed)
                   AS open
        FROM stages GROUP BY stage
        ORDER BY array_position(ARRAY['accept', 'dispatch', 'delivery', 'return_decision'],
                                stage)
        """,
        now,
        at_risk_share,
    )
    return [
        {
            **dict(r),
            "p50_seconds": None if r["p50_seconds"] is None else round(r["p50_seconds"], 3),
            "p95_seconds": None if r["p95_seconds"] is None else round(r["p95_seconds"], 3),
        }
        for r in rows
    ]


async def orders_at_risk_or_breached(
    conn: Connection, *, now: datetime, at_risk_share: float, limit: int = 50
) -> list[dict[str, Any]]:
    """The orders ops should look at: a stage breached, or at risk now; newest first."""
    rows = await conn.fetch(
        f"""
        WITH stages AS ({_SLA_STAGES})
        SELECT s.order_id, s.stage, s.deadline,
               CASE WHEN s.breached_at IS NOT NULL OR s.done > s.deadline
                         OR (s.done IS NULL AND NOT s.closed AND s.deadline < $1)
                    THEN 'breached' ELSE 'at_risk' END AS state,
               o.status
        FROM stages s JOIN orders o USING (order_id)
        WHERE s.breached_at IS NOT NULL OR s.done > s.deadline
           OR (s.done IS NULL AND NOT s.closed
               AND s.started + (s.deadline - s.started) * $2 <= $1)
        ORDER BY s.deadline DESC LIMIT $3
        """,
        now,
        at_risk_share,
        limit,
    )
    return [dict(r) for r in rows]


async def stage_latency_by_hour(
    conn: Connection, *, since: datetime, until: datetime
) -> list[dict[str, Any]]:
    """p50 time to meet each stage, per hour in which stages were met (for the chart)."""
    rows = await conn.fetch(
        f"""
        WITH stages AS ({_SLA_STAGES})
        SELECT stage, date_trunc('hour', done) AS hour, count(*) AS met,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM done - started))
                   AS p50_seconds
        FROM stages WHERE done >= $1 AND done < $2
        GROUP BY stage, hour ORDER BY hour, stage
        """,
        since,
        until,
    )
    return [dict(r) for r in rows]


# --- stuck orders (services/orders/redrive.py) ----------------------------------------------


async def overdue_without_redrive(
    conn: Connection, *, now: datetime, limit: int, not_redriven: list[str]
) -> list[dict[str, Any]]:
    """Stages past their deadline, not met, whose order was not re-driven for them yet and
    does not wait for a known reason (``not_redriven``: ``stage/status`` keys, such as an
    order waiting for stock). Those are left out here, not after the limit, so that however
    many of them there are they never hold back the others."""
    rows = await conn.fetch(
        """
        SELECT s.order_id, s.stage, '' AS return_id, s.deadline, o.status
        FROM order_slas s JOIN orders o USING (order_id)
        WHERE s.met_at IS NULL AND NOT s.closed AND s.deadline < $1
          AND o.status <> ALL($3::text[])
          AND s.stage || '/' || o.status <> ALL($4::text[])
          AND NOT EXISTS (SELECT 1 FROM order_redrives r
                          WHERE r.order_id = s.order_id AND r.stage = s.stage
                            AND r.return_id = '')
        UNION ALL
        SELECT d.order_id, 'return_decision', d.return_id, d.deadline,
               coalesce(o.status, 'unknown')
        FROM return_decisions d LEFT JOIN orders o USING (order_id)
        WHERE d.decided_at IS NULL AND d.deadline < $1
          AND NOT EXISTS (SELECT 1 FROM order_redrives r
                          WHERE r.order_id = d.order_id AND r.stage = 'return_decision'
                            AND r.return_id = d.return_id)
        ORDER BY deadline LIMIT $2
        """,
        now,
        limit,
        sorted(TERMINAL),
        not_redriven,
    )
    return [dict(r) for r in rows]


async def record_redrive(
    conn: Connection,
    *,
    order_id: str,
    stage: str,
    return_id: str,
    status: str,
    deadline: datetime,
    at: datetime,
    topics: list[str] | None,
) -> bool:
    """True the first time for this order and stage (one re-drive each). ``topics``: the
    ones re-driven (None: every topic)."""
    result = await conn.execute(
        """
        INSERT INTO order_redrives
            (order_id, stage, return_id, status, deadline, redriven_at, republished, topics)
        VALUES ($1, $2, $3, $4, $5, $6, 0, $7)
        ON CONFLICT DO NOTHING
        """,
        order_id,
        stage,
        return_id,
        status,
        deadline,
        at,
        topics,
    )
    return bool(result == "INSERT 0 1")


async def count_republished(
    conn: Connection, *, order_id: str, stage: str, return_id: str, n: int
) -> None:
    await conn.execute(
        """
        UPDATE order_redrives SET republished = $4
        WHERE order_id = $1 AND stage = $2 AND return_id = $3
        """,
        order_id,
        stage,
        return_id,
        n,
    )


async def resolve_redrives(conn: Connection, *, now: datetime) -> list[dict[str, Any]]:
    """Re-driven orders that moved on since: their status changed, or the stage was met."""
    rows = await conn.fetch(
        """
        UPDATE order_redrives r SET resolved_at = $1
        WHERE r.resolved_at IS NULL AND (
            coalesce((SELECT o.status FROM orders o WHERE o.order_id = r.order_id), 'unknown')
                <> r.status
            OR EXISTS (SELECT 1 FROM order_slas s
                       WHERE s.order_id = r.order_id AND s.stage = r.stage
                         AND (s.met_at IS NOT NULL OR s.closed))
            OR EXISTS (SELECT 1 FROM return_decisions d
                       WHERE r.return_id <> '' AND d.return_id = r.return_id
                         AND d.decided_at IS NOT NULL))
        RETURNING r.order_id, r.stage, r.return_id, r.reported_at
        """,
        now,
    )
    return [dict(r) for r in rows]


async def report_stuck(
    conn: Connection, *, now: datetime, redriven_before: datetime
) -> list[dict[str, Any]]:
    """Re-driven orders that did not move within the wait: reported now, once."""
    rows = await conn.fetch(
        """
        UPDATE order_redrives SET reported_at = $1
        WHERE resolved_at IS NULL AND reported_at IS NULL AND redriven_at <= $2
        RETURNING order_id, stage, return_id, status, deadline, redriven_at
        """,
        now,
        redriven_before,
    )
    return [dict(r) for r in rows]


async def unresolved_redrives(conn: Connection, *, limit: int = 100) -> list[dict[str, Any]]:
    """Re-driven orders that have not moved yet: reported as stuck first, then waiting."""
    rows = await conn.fetch(
        """
        SELECT order_id, stage, nullif(return_id, '') AS return_id, status, deadline,
               redriven_at, reported_at,
               CASE WHEN reported_at IS NULL THEN 'redriven' ELSE 'stuck' END AS state
        FROM order_redrives WHERE resolved_at IS NULL
        ORDER BY reported_at IS NULL, redriven_at LIMIT $1
        """,
        limit,
    )
    return [dict(r) for r in rows]


async def redrives_of(conn: Connection, order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """
        SELECT stage, nullif(return_id, '') AS return_id, status, deadline, redriven_at,
               topics, republished, resolved_at, reported_at
        FROM order_redrives WHERE order_id = $1 ORDER BY redriven_at
        """,
        order_id,
    )
    return [dict(r) for r in rows]


async def first_trace_headers(conn: Connection, order_id: str) -> list[tuple[str, str]]:
    """The trace context of the first event orders emitted for the order (its trace)."""
    headers = await conn.fetchval(
        "SELECT headers FROM outbox WHERE key = $1 ORDER BY id LIMIT 1", order_id
    )
    return [(str(k), str(v)) for k, v in (headers or [])]


# --- set-based statements of the hot path (one statement per batch, not per event) ---------


async def insert_orders(conn: Connection, orders: list[dict[str, Any]]) -> set[str]:
    """Insert new orders (dicts of the ``orders`` columns); returns the order_ids inserted
    (the others exist already)."""
    if not orders:
        return set()
    columns = (
        ("order_id", "text"),
        ("shop_id", "text"),
        ("service_level", "text"),
        ("currency", "text"),
        ("placed_at", "timestamptz"),
        ("content_hash", "text"),
        ("lines", "text"),
        ("ship_to", "text"),
        ("customer", "text"),
        ("dispatch_by", "timestamptz"),
        ("deliver_by", "timestamptz"),
        ("replaces_order_id", "text"),
        ("replaces_return_id", "text"),
    )
    json_columns = {"lines", "ship_to", "customer"}
    arrays = [
        [json.dumps(o[name]) if name in json_columns else o[name] for o in orders]
        for name, _ in columns
    ]
    rows = await conn.fetch(
        """
        INSERT INTO orders (order_id, shop_id, status, service_level, currency, placed_at,
                            content_hash, lines, ship_to, customer, dispatch_by, deliver_by,
                            replaces_order_id, replaces_return_id)
        SELECT o, s, 'accepted', l, c, p, h, li::jsonb, st::jsonb, cu::jsonb, db, dl, ro, rr
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                    $6::text[], $7::text[], $8::text[], $9::text[], $10::timestamptz[],
                    $11::timestamptz[], $12::text[], $13::text[])
             AS n(o, s, l, c, p, h, li, st, cu, db, dl, ro, rr)
        ON CONFLICT (order_id) DO NOTHING
        RETURNING order_id
        """,
        *arrays,
    )
    return {r["order_id"] for r in rows}


async def content_hashes(conn: Connection, order_ids: list[str]) -> dict[str, str]:
    if not order_ids:
        return {}
    rows = await conn.fetch(
        "SELECT order_id, content_hash FROM orders WHERE order_id = ANY($1::text[])", order_ids
    )
    return {r["order_id"]: r["content_hash"] for r in rows}


async def insert_rejections(conn: Connection, rejections: list[dict[str, Any]]) -> None:
    """Rejections (event_id, order_id, shop_id, reason, reasons) in one statement."""
    if not rejections:
        return
    await conn.execute(
        """
        INSERT INTO rejections (event_id, order_id, shop_id, reason, reasons)
        SELECT e, o, s, r, rs::jsonb
        FROM unnest($1::uuid[], $2::text[], $5::text[], $3::text[], $4::text[])
             AS n(e, o, s, r, rs)
        ON CONFLICT (event_id) DO NOTHING
        """,
        [x["event_id"] for x in rejections],
        [x["order_id"] for x in rejections],
        [x["reason"] for x in rejections],
        [json.dumps(x["reasons"]) for x in rejections],
        [x["shop_id"] for x in rejections],
    )


async def append_timelines(conn: Connection, entries: list[dict[str, Any]]) -> None:
    """Timeline entries (order_id, status, at, topic, event_id, detail), kept in list order."""
    if not entries:
        return
    await conn.execute(
        """
        INSERT INTO order_timeline (order_id, status, at, topic, event_id, detail)
        SELECT o, s, a, t, e, d::jsonb
        FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::uuid[],
                    $6::text[]) WITH ORDINALITY AS n(o, s, a, t, e, d, i)
        ORDER BY i
        """,
        [x["order_id"] for x in entries],
        [x["status"] for x in entries],
        [x["at"] for x in entries],
        [x["topic"] for x in entries],
        [x["event_id"] for x in entries],
        [json.dumps(x.get("detail") or {}) for x in entries],
    )


async def lock_statuses(conn: Connection, order_ids: list[str]) -> dict[str, str]:
    """Lock the orders' rows (in one global order, so batches never deadlock); their status."""
    if not order_ids:
        return {}
    rows = await conn.fetch(
        """
        SELECT order_id, status FROM orders WHERE order_id = ANY($1::text[])
        ORDER BY order_id FOR UPDATE
        """,
        sorted(set(order_ids)),
    )
    return {r["order_id"]: r["status"] for r in rows}


async def set_statuses(conn: Connection, statuses: dict[str, str]) -> None:
    if not statuses:
        return
    await conn.execute(
        """
        UPDATE orders o SET status = n.s, updated_at = now()
        FROM unnest($1::text[], $2::text[]) AS n(id, s)
        WHERE o.order_id = n.id AND o.order_id = ANY($1::text[])
        """,
        list(statuses),
        list(statuses.values()),
    )


async def open_slas(conn: Connection, windows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """SLA rows (order_id, stage, window_start, deadline, met_at, breached_at); returns the
    (order_id, stage) pairs inserted (an existing row is left as it is)."""
    if not windows:
        return set()
    rows = await conn.fetch(
        """
        INSERT INTO order_slas (order_id, stage, window_start, deadline, met_at, breached_at)
        SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[],
                             $5::timestamptz[], $6::timestamptz[])
        ON CONFLICT DO NOTHING
        RETURNING order_id, stage
        """,
        [w["order_id"] for w in windows],
        [w["stage"] for w in windows],
        [w["window_start"] for w in windows],
        [w["deadline"] for w in windows],
        [w.get("met_at") for w in windows],
        [w.get("breached_at") for w in windows],
    )
    return {(r["order_id"], r["stage"]) for r in rows}


async def meet_slas(conn: Connection, met: list[tuple[str, str, datetime]]) -> list[dict[str, Any]]:
    """Each (order_id, stage) met at its time, the first time only; the rows met now."""
    if not met:
        return []
    rows = await conn.fetch(
        """
        UPDATE order_slas s SET met_at = n.at
        FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS n(o, st, at)
        WHERE s.order_id = n.o AND s.stage = n.st AND s.met_at IS NULL
          AND s.order_id = ANY($1::text[])
        RETURNING s.order_id, s.stage, s.window_start, s.deadline, s.breached_at, s.met_at
        """,
        [m[0] for m in met],
        [m[1] for m in met],
        [m[2] for m in met],
    )
    return [dict(r) for r in rows]


async def mark_slas_breached(
    conn: Connection, breaches: list[tuple[str, str, datetime]]
) -> set[tuple[str, str]]:
    """Each (order_id, stage) breached at its time, the first time only; those marked now."""
    if not breaches:
        return set()
    rows = await conn.fetch(
        """
        UPDATE order_slas s SET breached_at = n.at
        FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS n(o, st, at)
        WHERE s.order_id = n.o AND s.stage = n.st AND s.breached_at IS NULL
          AND s.order_id = ANY($1::text[])
        RETURNING s.order_id, s.stage
        """,
        [b[0] for b in breaches],
        [b[1] for b in breaches],
        [b[2] for b in breaches],
    )
    return {(r["order_id"], r["stage"]) for r in rows}


async def shop_promise_policies(conn: Connection, shop_ids: list[str]) -> dict[str, PromisePolicy]:
    """The shops among ``shop_ids`` that have promise settings of their own."""
    if not shop_ids:
        return {}
    rows = await conn.fetch(
        "SELECT * FROM shop_promises WHERE shop_id = ANY($1::text[])", sorted(set(shop_ids))
    )
    return {
        r["shop_id"]: PromisePolicy(
            time_zone=r["time_zone"],
            standard_cutoff=r["standard_cutoff"],
            express_cutoff=r["express_cutoff"],
            collection_time=r["collection_time"],
            standard_business_days=r["standard_business_days"],
            express_business_days=r["express_business_days"],
        )
        for r in rows
    }
