"""Stuck orders (issue: observability and SLA operations): an order whose stage is past its
deadline without being met is re-driven once, and reported if that does not move it.

Re-driving publishes the order's events again: orders copies its own outbox rows for the
order and publishes ``orders.redrive-requested``, which makes inventory, shipping and
returns copy theirs (shared/messaging/redrive.py). Consumers' inboxes absorb every copy
they handled; an event the broker lost (the memory-only embedded broker restarted while it
was in flight) is handled now, and the order moves on. An order that has not moved
``redrive_wait`` after its re-drive (its status unchanged and the stage still not met) is
reported: a warning in the log, ``waybill.orders.stuck`` in the metrics, and the "stuck"
list of ``GET /sla/summary``, the ops page and ``waybill sla``, until it moves.

Everything is judged on the injectable clock, like the SLA engine.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from services.orders.storage import repository as repo
from shared import metrics, telemetry, topics
from shared.db import UnitOfWork
from shared.events import RedriveRequested
from shared.messaging.redrive import republish_order

log = logging.getLogger("waybill.orders.redrive")

#: how many overdue stages one round of the check re-drives
BATCH = 100


async def check(uow: UnitOfWork, *, now: datetime, wait: timedelta) -> None:
    """One round: re-drive overdue stages, settle re-drives that worked, report the rest."""
    for overdue in await repo.overdue_without_redrive(uow.conn, now=now, limit=BATCH):
        await redrive(uow, overdue, now=now)
    for moved in await repo.resolve_redrives(uow.conn, now=now):
        log.info(
            "order %s moved on after its re-drive (stage %s)%s",
            moved["order_id"],
            moved["stage"],
            " and is no longer reported stuck" if moved["reported_at"] else "",
        )
    for stuck in await repo.report_stuck(uow.conn, now=now, redriven_before=now - wait):
        log.warning(
            "order %s is stuck: stage %s overdue since %s, status %s unchanged %s after its "
            "re-drive",
            stuck["order_id"],
            stuck["stage"],
            stuck["deadline"].isoformat(),
            stuck["status"],
            now - stuck["redriven_at"],
        )
        metrics.stuck_orders.add(1, {"service": "orders", "stage": stuck["stage"]})


async def redrive(uow: UnitOfWork, overdue: dict[str, Any], *, now: datetime) -> None:
    order_id, stage = overdue["order_id"], overdue["stage"]
    parent = telemetry.context_from(await repo.first_trace_headers(uow.conn, order_id))
    with telemetry.span(
        "redrive order",
        service="orders",
        parent=parent,
        attributes={
            "waybill.order_id": order_id,
            "waybill.stage": stage,
            "waybill.sla_deadline": overdue["deadline"].isoformat(),
        },
    ) as span:
        request = RedriveRequested(
            order_id=order_id, stage=stage, status=overdue["status"], requested_at=now
        )
        first = await repo.record_redrive(
            uow.conn,
            order_id=order_id,
            stage=stage,
            return_id=overdue["return_id"],
            status=overdue["status"],
            deadline=overdue["deadline"],
            at=now,
        )
        if not first:  # another instance of orders got there first
            return
        copied = await republish_order(uow, order_id=order_id, request_id=str(request.event_id))
        await repo.count_republished(
            uow.conn, order_id=order_id, stage=stage, return_id=overdue["return_id"], n=copied
        )
        uow.emit(request)
        await repo.append_timeline(
            uow.conn,
            order_id=order_id,
            status=overdue["status"],
            at=now,
            topic=topics.ORDERS_REDRIVE_REQUESTED,
            event_id=request.event_id,
            detail={"stage": stage, "republished": copied},
        )
        span.set_attribute("waybill.republished", copied)
    metrics.redrives.add(1, {"service": "orders", "stage": stage})
    log.info(
        "order %s re-driven: stage %s overdue since %s at status %s; %d events of orders "
        "published again, the other services asked for theirs",
        order_id,
        stage,
        overdue["deadline"].isoformat(),
        overdue["status"],
        copied,
    )
