"""The SLA engine of the orders service: each order's deadlines per stage (DESIGN.md, SLAs),
met by the events that show progress, breached exactly once per order and stage.

Orders publishes ``sla.breached`` for ``accept`` and ``dispatch`` (and ``return_decision``,
see handlers); ``delivery`` is shipping's to publish, and is recorded here when it comes.
Everything is judged on the times given, so tests drive it with a ManualClock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from services.orders.domain.sla import AT_RISK_SHARE, OWN_STAGES
from services.orders.storage import repository as repo
from shared import metrics
from shared.db import UnitOfWork
from shared.db.uow import Connection
from shared.events import Event, OrderPlaced, Promise, SlaBreached

#: an order must be accepted (or rejected) within this long after ``placed_at``
ACCEPT_WITHIN = timedelta(seconds=60)


def windows_of(
    order: OrderPlaced, promise: Promise, *, accepted_at: datetime
) -> list[dict[str, Any]]:
    """An accepted order's SLA rows: every window opens at ``placed_at``; accept is met at
    ``accepted_at`` (and breached then, when that is late)."""
    accept_by = order.placed_at + ACCEPT_WITHIN
    return [
        {
            "order_id": order.order_id,
            "stage": "accept",
            "window_start": order.placed_at,
            "deadline": accept_by,
            "met_at": accepted_at,
            "breached_at": accepted_at if accepted_at > accept_by else None,
        },
        {
            "order_id": order.order_id,
            "stage": "dispatch",
            "window_start": order.placed_at,
            "deadline": promise.dispatch_by,
        },
        {
            "order_id": order.order_id,
            "stage": "delivery",
            "window_start": order.placed_at,
            "deadline": promise.deliver_by,
        },
    ]


def opened(uow: UnitOfWork, windows: list[dict[str, Any]], causes: Mapping[str, Event]) -> None:
    """New SLA rows: the latency of the stages met at once, and the breaches among them."""
    for w in windows:
        if w.get("met_at") is None:
            continue
        seconds = max(0.0, (w["met_at"] - w["window_start"]).total_seconds())
        metrics.stage_latency.record(seconds, {"service": "orders", "stage": w["stage"]})
        if w.get("breached_at") is not None:
            _emit_breach(uow, w["order_id"], w["stage"], w["deadline"], w["breached_at"], causes)


async def stage_met(uow: UnitOfWork, *, order_id: str, stage: str, at: datetime) -> None:
    """Progress: the stage is met at ``at``; late is a breach (once), observed at ``at``."""
    await stages_met(uow, [(order_id, stage, at)], {})


async def stages_met(
    uow: UnitOfWork,
    met: Sequence[tuple[str, str, datetime]],
    causes: Mapping[str, Event],
) -> None:
    """Each (order_id, stage) met at its time, the first time only; late own stages breach
    (once). Two statements for the batch; ``causes``: the event that met each order's stage."""
    rows = await repo.meet_slas(uow.conn, list(met))
    late = []
    for row in rows:
        at = row["met_at"]
        seconds = max(0.0, (at - row["window_start"]).total_seconds())
        metrics.stage_latency.record(seconds, {"service": "orders", "stage": row["stage"]})
        if at > row["deadline"] and row["stage"] in OWN_STAGES:
            late.append(row)
    marked = await repo.mark_slas_breached(
        uow.conn, [(r["order_id"], r["stage"], r["met_at"]) for r in late]
    )
    for row in late:
        if (row["order_id"], row["stage"]) in marked:
            _emit_breach(uow, row["order_id"], row["stage"], row["deadline"], row["met_at"], causes)


def _emit_breach(
    uow: UnitOfWork,
    order_id: str,
    stage: str,
    deadline: datetime,
    at: datetime,
    causes: Mapping[str, Event],
) -> None:
    uow.emit(
        SlaBreached(order_id=order_id, stage=stage, deadline=deadline, observed_at=at),
        cause=causes.get(order_id),
    )
    metrics.sla_breaches.add(1, {"service": "orders", "stage": stage})


async def breach(
    uow: UnitOfWork, *, order_id: str, stage: str, deadline: datetime, at: datetime
) -> None:
    if await repo.mark_sla_breached(uow.conn, order_id=order_id, stage=stage, at=at):
        uow.emit(SlaBreached(order_id=order_id, stage=stage, deadline=deadline, observed_at=at))
        metrics.sla_breaches.add(1, {"service": "orders", "stage": stage})


async def breach_seen(uow: UnitOfWork, event: SlaBreached) -> None:
    """A breach on the topic: shipping's (delivery) is recorded; our own are recorded already."""
    if event.stage == "delivery":
        await repo.mark_sla_breached(
            uow.conn, order_id=event.order_id, stage=event.stage, at=event.observed_at
        )


async def check(uow: UnitOfWork, *, now: datetime) -> None:
    """One round of the watcher: overdue own stages breach; stages past 80 % are at risk."""
    for overdue in await repo.overdue_slas(uow.conn, stages=OWN_STAGES, now=now, limit=500):
        await breach(
            uow,
            order_id=overdue["order_id"],
            stage=overdue["stage"],
            deadline=overdue["deadline"],
            at=now,
        )
    await repo.mark_at_risk(uow.conn, now=now, share=AT_RISK_SHARE)


async def figures(conn: Connection, *, now: datetime) -> dict[str, Any]:
    """What ``GET /sla/summary``, the ops page and ``waybill sla`` show."""
    counts = await repo.count_by_status(conn)
    return {
        "orders_by_status": counts,
        "orders_total": sum(counts.values()),
        "as_of": now,
        "stages": await repo.stage_summary(conn, now=now, at_risk_share=AT_RISK_SHARE),
        "needs_attention": await repo.orders_at_risk_or_breached(
            conn, now=now, at_risk_share=AT_RISK_SHARE
        ),
        # re-driven orders that have not moved yet ("stuck" once the wait is over)
        "stuck": await repo.unresolved_redrives(conn),
    }
