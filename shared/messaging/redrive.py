"""Re-drive: publish a stuck order's events again from a service's outbox.

Orders decides that an order is stuck, and which of its events the overdue stage needs
(services/orders/redrive.py), and publishes ``orders.redrive-requested`` with those
topics; every other service answers it with :func:`republish_order`, copying only its own
events of those topics, and orders does the same for its own. The copies keep the original
``event_id`` and trace headers, so consumers that handled an event skip it (inbox), the
one that never saw it (the broker lost it) handles it, and the work joins the order's
trace.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from shared.db import UnitOfWork
from shared.events import RedriveRequested
from shared.messaging.consumer import EventConsumer
from shared.topics import ORDERS_REDRIVE_REQUESTED

log = logging.getLogger("waybill.redrive")

#: the record header a re-driven copy carries (the id of the re-drive request)
REDRIVE_HEADER = "waybill-redrive"


async def republish_order(
    uow: UnitOfWork, *, order_id: str, request_id: str, topics: Collection[str] | None = None
) -> int:
    """Copy the published outbox rows keyed ``order_id`` (originals only, oldest first) on
    ``topics`` (None: on every topic) to the end of the outbox when the unit of work
    commits; the relay publishes the copies. Returns how many will be copied."""
    rows = await uow.conn.fetch(
        """
        SELECT id FROM outbox
        WHERE key = $1 AND redrive_of IS NULL AND topic <> $2
          AND ($3::text[] IS NULL OR topic = ANY($3::text[]))
          AND id <= (SELECT published_through FROM outbox_relay)
        """,
        order_id,
        ORDERS_REDRIVE_REQUESTED,  # the requests themselves are not repeated
        sorted(topics) if topics is not None else None,
    )
    ids = [r["id"] for r in rows]
    # copied under the outbox lock at commit, like every outbox row (shared/db/uow.py)
    uow.copy_published(ids, header=(REDRIVE_HEADER, request_id))
    return len(ids)


def answer_redrives(consumer: EventConsumer, *, service: str) -> None:
    """Make ``consumer`` answer ``orders.redrive-requested`` with its service's events of the
    topics asked for."""

    @consumer.handles(RedriveRequested)
    async def on_redrive_requested(event: RedriveRequested, uow: UnitOfWork) -> None:
        copied = await republish_order(
            uow, order_id=event.order_id, request_id=str(event.event_id), topics=event.topics
        )
        log.info(
            "%s re-drives order %s (stage %s, %s): %d events published again",
            service,
            event.order_id,
            event.stage,
            ", ".join(event.topics) if event.topics is not None else "every topic",
            copied,
        )
