"""Stuck orders (issue: observability and SLA operations): the last resort for an event the
broker lost. An order whose stage is past its deadline without being met is re-driven once,
and reported if that does not move it.

Only an order that may wait on a lost event is re-driven (services/orders/domain/redrive.py):
not one waiting for stock (``backordered``) or for the carrier (``label_created``,
``shipped``), which are breaches and nothing more. And only the events the overdue stage
needs from the order's status on are published again: orders copies its own outbox rows of
those topics for the order and publishes ``orders.redrive-requested`` naming them, which
makes inventory, shipping and returns copy theirs of the same topics
(shared/messaging/redrive.py). Consumers' inboxes absorb every copy they handled; an event
the broker lost is handled now, and the order moves on. (When the broker loses its data,
each service publishes its recent outbox again by itself, shared/runtime.py: the re-drive
is for what that does not cover.) An order that has not moved ``redrive_wait`` after its
re-drive (its status unchanged and the stage still not met) is reported: a warning in the
log, ``waybill.orders.stuck`` in the metrics, and the "stuck" list of ``GET /sla/summary``,
the ops page and ``waybill sla``, until it moves.

Everything is judged on the injectable clock, like the SLA engine.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from services.orders.domain.redrive import not_redriven_keys, redrive_topics
from services.orders.storage import repository as repo
from shared import metrics, telemetry, topics
from shared.db import UnitOfWork
from shared.events import RedriveRequested
from shared.messaging.redrive import republish_order

log = logging.getLogger("waybill.orders.redrive")

#: how many overdue stages one round of the check re-drives
BATCH = 100


async def check(uow: UnitOfWork, *, now: datetime, wait: timedelta) -> None:
    """One round: re-drive overdue stages (those that may wait on a lost event), settle
    re-drives that worked, report the rest."""
    overdue_stages = await repo.overdue_without_redrive(
        uow.conn, now=now, limit=BATCH, not_redriven=not_redriven_keys()
    )
    for overdue in overdue_stages:
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
    order_id, stage, status = overdue["order_id"], overdue["stage"], overdue["status"]
    needed = redrive_topics(stage, status)
    topics_asked = list(needed) if needed is not None else None
    parent = telemetry.context_from(await repo.first_trace_headers(uow.conn, order_id))
    with telemetry.span(
        "redrive order",
        service="orders",
        parent=parent,
        attributes={
            "waybill.order_id": order_id,
            "waybill.stage": stage,
            "waybill.sla_deadline": overdue["deadline"].isoformat(),
            "waybill.redrive_topics": topics_asked if topics_asked is not None else ["*"],
        },
    ) as span:
        request = RedriveRequested(
            order_id=order_id,
            stage=stage,
            status=status,
            requested_at=now,
            topics=topics_asked,
        )
        first = await repo.record_redrive(
            uow.conn,
            order_id=order_id,
            stage=stage,
            return_id=overdue["return_id"],
            status=status,
            deadline=overdue["deadline"],
            at=now,
            topics=topics_asked,
        )
        if not first:  # another instance of orders got there first
            return
        copied = await republish_order(
            uow, order_id=order_id, request_id=str(request.event_id), topics=topics_asked
        )
        await repo.count_republished(
            uow.conn, order_id=order_id, stage=stage, return_id=overdue["return_id"], n=copied
        )
        uow.emit(request)
        await repo.append_timeline(
            uow.conn,
            order_id=order_id,
            status=status,
            at=now,
            topic=topics.ORDERS_REDRIVE_REQUESTED,
            event_id=request.event_id,
            detail={"stage": stage, "topics": topics_asked, "republished": copied},
        )
        span.set_attribute("waybill.republished", copied)
    metrics.redrives.add(1, {"service": "orders", "stage": stage})
    log.info(
        "order %s re-driven: stage %s overdue since %s at status %s; %d events of orders "
        "published again, the other services asked for theirs (%s)",
        order_id,
        stage,
        overdue["deadline"].isoformat(),
        status,
        copied,
        ", ".join(topics_asked) if topics_asked is not None else "every topic",
    )
