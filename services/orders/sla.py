"""The SLA engine of the orders service: each order's deadlines per stage (DESIGN.md, SLAs),
met by the events that show progress, breached exactly once per order and stage.

Orders publishes ``sla.breached`` for ``accept`` and ``dispatch`` (and ``return_decision``,
see handlers); ``delivery`` is shipping's to publish, and is recorded here when it comes.
Everything is judged on the times given, so tests drive it with a ManualClock.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from services.orders.domain.sla import AT_RISK_SHARE, OWN_STAGES
from services.orders.storage import repository as repo
from shared import metrics
from shared.db import UnitOfWork
from shared.db.uow import Connection
from shared.events import Promise, SlaBreached

#: an order must be accepted (or rejected) within this long after ``placed_at``
ACCEPT_WITHIN = timedelta(seconds=60)


async def open_stages(
    uow: UnitOfWork, *, order_id: str, placed_at: datetime, promise: Promise, accepted_at: datetime
) -> None:
    """An accepted order: its windows open at ``placed_at``; accept is met right now."""
    windows = {
        "accept": placed_at + ACCEPT_WITHIN,
        "dispatch": promise.dispatch_by,
        "delivery": promise.deliver_by,
    }
    for stage, deadline in windows.items():
        await repo.open_sla(
            uow.conn, order_id=order_id, stage=stage, window_start=placed_at, deadline=deadline
        )
    await stage_met(uow, order_id=order_id, stage="accept", at=accepted_at)


async def stage_met(uow: UnitOfWork, *, order_id: str, stage: str, at: datetime) -> None:
    """Progress: the stage is met at ``at``; late is a breach (once), observed at ``at``."""
    row = await repo.meet_sla(uow.conn, order_id=order_id, stage=stage, at=at)
    if row is not None:
        seconds = max(0.0, (at - row["window_start"]).total_seconds())
        metrics.stage_latency.record(seconds, {"service": "orders", "stage": stage})
    if row is not None and at > row["deadline"] and stage in OWN_STAGES:
        await breach(uow, order_id=order_id, stage=stage, deadline=row["deadline"], at=at)


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
