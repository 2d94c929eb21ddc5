"""Webhooks to shops: every event about a shop's orders, POSTed to its endpoint, signed.

Queued where the event is handled or emitted, in the same transaction (the orders service
sees every event about an order: it consumes the other services' topics, and a trigger on
its outbox queues its own), so a delivery is never lost; sent by :func:`deliver_webhooks`,
at least once, one at a time per order and in the order queued, retried with backoff on
anything but a 2xx for ``webhook_retry_seconds`` (24 h), then marked dead (``POST
.../deliveries/{id}/retry`` sends it again).

A shop's slow or dead endpoint holds only its own slots (``webhook_per_shop`` requests at
once, each bounded by ``webhook_timeout_seconds``): other shops' deliveries and the event
pipeline, which only writes rows, do not wait for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from shared import metrics, topics
from shared.db import UnitOfWork
from shared.db.uow import Connection
from shared.events import Event
from shared.events.base import STAFF_FIELDS
from shared.runtime import ServiceRuntime
from shared.signing import sign_webhook

log = logging.getLogger("waybill.orders.webhooks")

SIGNATURE_HEADER = "Waybill-Signature"
EVENT_ID_HEADER = "Waybill-Event-Id"

#: what a shop may subscribe to: the outbound events about its orders (not the ones it
#: sends itself, not the warehouse's internal pick lists, which mix shops)
WEBHOOK_TOPICS: tuple[str, ...] = (
    topics.ORDERS_ACCEPTED,
    topics.ORDERS_REJECTED,
    topics.ORDERS_CANCELLED,
    topics.ORDERS_CANCELLATION_REJECTED,
    topics.STOCK_RESERVED,
    topics.STOCK_BACKORDERED,
    topics.STOCK_RELEASED,
    topics.ORDERS_PACKED,
    topics.SHIPMENTS_LABEL_CREATED,
    topics.SHIPMENTS_SHIPPED,
    topics.SHIPMENTS_DELIVERED,
    topics.SHIPMENTS_EXCEPTION,
    topics.SLA_BREACHED,
    topics.RETURNS_APPROVED,
    topics.RETURNS_REJECTED,
    topics.RETURNS_RECEIVED,
    topics.REFUNDS_REQUESTED,
    topics.STOCK_RESTOCKED,
)


@dataclass(frozen=True)
class WebhookSettings:
    timeout_seconds: float = 10.0
    retry_seconds: float = 24 * 3600.0
    backoff_base_seconds: float = 5.0
    backoff_max_seconds: float = 3600.0
    concurrency: int = 32
    per_shop: int = 4
    poll_seconds: float = 0.5


# -- queueing ---------------------------------------------------------------------------------


#: how often each orders process reads which topics shops subscribe to
SUBSCRIPTIONS_REFRESH_SECONDS = 2.0


class Subscriptions:
    """Which topics some shop subscribes to, as this process last read them: events of
    other topics are not even serialised, and while no shop has a webhook the delivery
    worker looks for nothing to send. Read again every SUBSCRIPTIONS_REFRESH_SECONDS and at
    once after a change made in this process."""

    def __init__(self) -> None:
        self.topics: frozenset[str] = frozenset()

    async def refresh(self, conn: Connection) -> None:
        rows = await conn.fetch("SELECT DISTINCT unnest(topics) AS topic FROM shop_webhooks")
        self.topics = frozenset(r["topic"] for r in rows)


def observer(subscriptions: Subscriptions) -> Any:
    """The consumer's observer: queue the handled events some shop subscribed to (one
    statement a batch, none while no shop has a webhook)."""

    async def queue(events: Sequence[Event], uow: UnitOfWork) -> None:
        wanted = [
            e for e in events if e.TOPIC in subscriptions.topics and e.partition_key() is not None
        ]
        if not wanted:
            return
        await uow.conn.execute(
            """
            INSERT INTO webhook_deliveries (shop_id, order_id, event_id, topic, event)
            SELECT o.shop_id, n.order_id, n.event_id, n.topic, n.event::jsonb
            FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[])
                 WITH ORDINALITY AS n(order_id, event_id, topic, event, i)
            JOIN orders o ON o.order_id = n.order_id
            JOIN shop_webhooks w ON w.shop_id = o.shop_id AND n.topic = ANY (w.topics)
            ORDER BY n.i
            ON CONFLICT (shop_id, event_id) DO NOTHING
            """,
            [e.partition_key() for e in wanted],
            [e.event_id for e in wanted],
            [e.TOPIC for e in wanted],
            [
                e.model_dump_json(exclude=set(STAFF_FIELDS & set(type(e).model_fields)))
                for e in wanted
            ],
        )

    return queue


# -- sending ----------------------------------------------------------------------------------


def backoff(attempts: int, settings: WebhookSettings) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: doubling, capped,
    with jitter (a recovering endpoint is not hit by every shop's backlog at once)."""
    ceiling = min(settings.backoff_max_seconds, settings.backoff_base_seconds * 2 ** (attempts - 1))
    return random.uniform(ceiling / 2, ceiling)


async def claim_due(
    conn: Connection, *, limit: int, per_shop: int, lease_seconds: float
) -> list[dict[str, Any]]:
    """Lease what is due: each order's oldest pending delivery only (an order's events go
    one by one, in order), at most ``per_shop`` in flight per shop, ``limit`` in all."""
    rows = await conn.fetch(
        """
        WITH heads AS (
            SELECT DISTINCT ON (shop_id, order_id)
                   delivery_id, shop_id, next_attempt_at, leased_until
            FROM webhook_deliveries WHERE status = 'pending'
            ORDER BY shop_id, order_id, delivery_id
        ), busy AS (
            SELECT shop_id, count(*) AS n FROM heads WHERE leased_until > now()
            GROUP BY shop_id
        ), due AS (
            SELECT h.delivery_id, h.next_attempt_at,
                   row_number() OVER (PARTITION BY h.shop_id
                                      ORDER BY h.next_attempt_at, h.delivery_id) AS n,
                   coalesce(b.n, 0) AS in_flight
            FROM heads h LEFT JOIN busy b USING (shop_id)
            WHERE h.next_attempt_at <= now()
              AND (h.leased_until IS NULL OR h.leased_until <= now())
        ), chosen AS (
            SELECT delivery_id FROM due WHERE n + in_flight <= $2
            ORDER BY next_attempt_at, delivery_id LIMIT $1
        )
        UPDATE webhook_deliveries d
        SET leased_until = now() + make_interval(secs => $3), attempts = d.attempts + 1,
            last_attempt_at = now()
        FROM chosen, shop_webhooks w
        WHERE d.delivery_id = chosen.delivery_id AND w.shop_id = d.shop_id
          AND d.status = 'pending' AND (d.leased_until IS NULL OR d.leased_until <= now())
        RETURNING d.delivery_id, d.shop_id, d.order_id, d.event_id, d.topic, d.event::text,
                  d.attempts, d.window_start, w.url, w.secret
        """,
        limit,
        per_shop,
        lease_seconds,
    )
    return [dict(r) for r in rows]


def request_of(delivery: dict[str, Any], *, now: float) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one attempt: the event in an envelope, signed."""
    body = json.dumps(
        {
            "event_id": str(delivery["event_id"]),
            "topic": delivery["topic"],
            "shop_id": delivery["shop_id"],
            "order_id": delivery["order_id"],
            "event": json.loads(delivery["event"]),
        },
        separators=(",", ":"),
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Waybill-Webhooks/1",
        SIGNATURE_HEADER: sign_webhook(delivery["secret"], body, timestamp=int(now)),
        EVENT_ID_HEADER: str(delivery["event_id"]),
        "Waybill-Topic": delivery["topic"],
        "Waybill-Delivery-Attempt": str(delivery["attempts"]),
    }
    return body, headers


async def send(
    client: httpx.AsyncClient, delivery: dict[str, Any], settings: WebhookSettings
) -> tuple[int | None, str | None, int]:
    """One attempt: (status code or None, error or None, milliseconds)."""
    body, headers = request_of(delivery, now=time.time())
    started = time.monotonic()
    try:
        response = await client.post(
            delivery["url"], content=body, headers=headers, timeout=settings.timeout_seconds
        )
    except httpx.TimeoutException:
        took = int((time.monotonic() - started) * 1000)
        return None, f"no answer within {settings.timeout_seconds:g} s", took
    except httpx.HTTPError as exc:
        took = int((time.monotonic() - started) * 1000)
        return None, f"{type(exc).__name__}: {exc}"[:500], took
    took = int((time.monotonic() - started) * 1000)
    if 200 <= response.status_code < 300:
        return response.status_code, None, took
    return response.status_code, f"answered {response.status_code}", took


async def record(
    conn: Connection,
    delivery: dict[str, Any],
    outcome: tuple[int | None, str | None, int],
    settings: WebhookSettings,
    *,
    now: datetime,
) -> str:
    """Write the attempt and what follows: delivered, another attempt later, or dead."""
    status_code, error, took = outcome
    if error is None:
        state, next_at = "delivered", now
    elif now - delivery["window_start"] >= timedelta(seconds=settings.retry_seconds):
        state, next_at = "dead", now
    else:
        wait = backoff(delivery["attempts"], settings)
        state, next_at = "pending", now + timedelta(seconds=wait)
    async with conn.transaction():
        await conn.execute(
            """
            INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error,
                                          duration_ms)
            VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING
            """,
            delivery["delivery_id"],
            delivery["attempts"],
            now,
            status_code,
            error,
            took,
        )
        await conn.execute(
            """
            UPDATE webhook_deliveries
            SET status = $2::text, next_attempt_at = $3, leased_until = NULL, last_status = $4,
                last_error = $5,
                delivered_at = CASE WHEN $2::text = 'delivered' THEN $6::timestamptz END
            WHERE delivery_id = $1
            """,
            delivery["delivery_id"],
            state,
            next_at,
            status_code,
            error,
            now,
        )
    counted = {"pending": "retry"}.get(state, state)
    metrics.webhook_deliveries.add(1, {"shop_id": delivery["shop_id"], "outcome": counted})
    if state == "dead":
        log.warning(
            "webhook delivery %s (%s of order %s) to shop %s is dead after %d attempts: %s",
            delivery["delivery_id"],
            delivery["topic"],
            delivery["order_id"],
            delivery["shop_id"],
            delivery["attempts"],
            error,
        )
    return state


async def deliver_webhooks(runtime: ServiceRuntime) -> None:
    """The delivery worker: lease what is due, send each on its own task, record."""
    settings: WebhookSettings = runtime.extras["webhook_settings"]
    subscriptions: Subscriptions = runtime.extras["webhook_subscriptions"]
    lease = settings.timeout_seconds + 30.0
    in_flight: set[asyncio.Task[None]] = set()

    async def attempt(client: httpx.AsyncClient, delivery: dict[str, Any]) -> None:
        outcome = await send(client, delivery, settings)
        try:
            async with runtime.pool.acquire() as conn:
                await record(conn, delivery, outcome, settings, now=runtime.clock.now())
        except Exception:  # the lease runs out and the delivery is sent again
            log.exception("recording webhook delivery %s failed", delivery["delivery_id"])

    async with httpx.AsyncClient(follow_redirects=False) as client:
        try:
            refreshed = -SUBSCRIPTIONS_REFRESH_SECONDS
            while True:
                async with runtime.pool.acquire() as conn:
                    if time.monotonic() - refreshed >= SUBSCRIPTIONS_REFRESH_SECONDS:
                        await subscriptions.refresh(conn)
                        refreshed = time.monotonic()
                    free = settings.concurrency - len(in_flight)
                    due = (
                        await claim_due(
                            conn, limit=free, per_shop=settings.per_shop, lease_seconds=lease
                        )
                        if free > 0 and subscriptions.topics
                        else []
                    )
                for delivery in due:
                    task = asyncio.create_task(attempt(client, delivery))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if in_flight:
                    await asyncio.wait(
                        in_flight,
                        timeout=settings.poll_seconds,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                else:
                    await asyncio.sleep(settings.poll_seconds)
        finally:
            for task in in_flight:
                task.cancel()
