"""HTTP routes of the orders service about shops as tenants: API keys and webhooks.

The orders service owns shop keys: it stores their SHA-256 and tells every other service
through ``shops.key-changed`` (shared/tenancy.py). It also sends each shop the events
about its orders, to the webhook set here (services/orders/webhooks.py).
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AnyHttpUrl, BaseModel, Field, field_validator

from services.orders.webhooks import WEBHOOK_TOPICS, Subscriptions
from shared import tenancy
from shared.db import unit_of_work
from shared.http import require_role, runtime_of
from shared.tenancy import Principal

router = APIRouter(tags=["shops"])

ShopId = Annotated[str, Path(min_length=1, max_length=64)]
KeyIdParam = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]


def own_shop_or_admin(principal: Principal, shop_id: str) -> None:
    """A shop's key reaches its own shop's settings only (404 for another, as if none)."""
    if principal.role == "shop" and not principal.acts_for_shop(shop_id):
        raise HTTPException(404, f"no shop {shop_id}")


@router.post("/shops/{shop_id}/keys", status_code=201)
async def create_key(
    shop_id: ShopId,
    request: Request,
    principal: Annotated[Principal, Depends(require_role("admin"))],
) -> JSONResponse:
    """A new key for the shop, shown in this answer only (kept as its SHA-256). A shop holds
    at most two live keys, so that it can rotate: a third is 409 until one is revoked."""
    runtime = runtime_of(request)
    try:
        async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
            issued = await tenancy.issue_shop_key(uow, shop_id, now=runtime.clock.now())
    except tenancy.KeyRefused as exc:
        raise HTTPException(409, str(exc)) from exc
    body = {
        "shop_id": shop_id,
        "key_id": issued["key_id"],
        "key": issued["key"],
        "created_at": issued["created_at"].isoformat(),
    }
    return JSONResponse(body, status_code=201, headers={"Cache-Control": "no-store"})


@router.get("/shops/{shop_id}/keys")
async def list_keys(
    shop_id: ShopId,
    request: Request,
    principal: Annotated[Principal, Depends(require_role("admin", "shop"))],
) -> dict[str, Any]:
    """The shop's keys, live and revoked: ids and dates, never a key. ``last_used_at`` is
    the last request the orders service took with the key, to the minute."""
    own_shop_or_admin(principal, shop_id)
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        keys = await tenancy.shop_keys(conn, shop_id)
    return {"shop_id": shop_id, "keys": keys}


@router.delete("/shops/{shop_id}/keys/{key_id}")
async def revoke_key(
    shop_id: ShopId,
    key_id: KeyIdParam,
    request: Request,
    principal: Annotated[Principal, Depends(require_role("admin", "shop"))],
) -> dict[str, Any]:
    """Revoke a key at once here, and in every other service as soon as it has read
    ``shops.key-changed`` (seconds). A shop's key may revoke its own shop's keys (the old
    one after a rotation), itself included."""
    own_shop_or_admin(principal, shop_id)
    runtime = runtime_of(request)
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        revoked = await tenancy.revoke_shop_key(uow, shop_id, key_id, now=runtime.clock.now())
    if revoked is None:
        raise HTTPException(404, f"shop {shop_id} has no key {key_id}")
    return {"shop_id": shop_id, **revoked}


# -- webhooks ---------------------------------------------------------------------------------


class WebhookBody(BaseModel):
    """Where to send the shop's events, and which (topics; ``["*"]``: all of them)."""

    url: AnyHttpUrl
    events: list[str] = Field(min_length=1, max_length=len(WEBHOOK_TOPICS))
    #: a new signing secret (answered once); the first PUT always makes one
    rotate_secret: bool = False

    @field_validator("url")
    @classmethod
    def _bounded(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        if len(str(url)) > 2000:
            raise ValueError("must be at most 2000 characters")
        return url

    @field_validator("events")
    @classmethod
    def _known(cls, events: list[str]) -> list[str]:
        if events == ["*"]:
            return list(WEBHOOK_TOPICS)
        unknown = [e for e in events if e not in WEBHOOK_TOPICS]
        if unknown:
            raise ValueError(
                f"not events a shop can subscribe to: {', '.join(unknown)} "
                f'(one of {", ".join(WEBHOOK_TOPICS)}, or ["*"])'
            )
        return list(dict.fromkeys(events))


ShopOrAdmin = Annotated[Principal, Depends(require_role("admin", "shop"))]


async def _resubscribe(request: Request) -> None:
    runtime = runtime_of(request)
    subscriptions: Subscriptions = runtime.extras["webhook_subscriptions"]
    async with runtime.pool.acquire() as conn:
        await subscriptions.refresh(conn)


@router.put("/shops/{shop_id}/webhook")
async def put_webhook(
    shop_id: ShopId, body: WebhookBody, request: Request, principal: ShopOrAdmin
) -> JSONResponse:
    """Send the shop's events to ``url``. The answer holds the signing secret the first time
    (and with ``rotate_secret``), never again: each delivery carries ``Waybill-Signature:
    t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` under it."""
    own_shop_or_admin(principal, shop_id)
    runtime = runtime_of(request)
    fresh = secrets.token_hex(32)
    async with runtime.pool.acquire() as conn:
        row = await conn.fetchrow(
            """
            INSERT INTO shop_webhooks (shop_id, url, topics, secret) VALUES ($1, $2, $3, $4)
            ON CONFLICT (shop_id) DO UPDATE
            SET url = excluded.url, topics = excluded.topics, updated_at = now(),
                secret = CASE WHEN $5 THEN excluded.secret ELSE shop_webhooks.secret END
            RETURNING (xmax = 0) AS created, secret = $4 AS new_secret, created_at, updated_at
            """,
            shop_id,
            str(body.url),
            body.events,
            fresh,
            body.rotate_secret,
        )
    if row is None:  # an upsert always returns its row
        raise RuntimeError("the webhook upsert returned nothing")
    await _resubscribe(request)
    answer: dict[str, Any] = {
        "shop_id": shop_id,
        "url": str(body.url),
        "events": body.events,
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }
    if row["new_secret"]:
        answer["secret"] = fresh
    status = 201 if row["created"] else 200
    return JSONResponse(answer, status_code=status, headers={"Cache-Control": "no-store"})


@router.get("/shops/{shop_id}/webhook")
async def get_webhook(shop_id: ShopId, request: Request, principal: ShopOrAdmin) -> dict[str, Any]:
    """The shop's webhook (never its secret) and its deliveries by state."""
    own_shop_or_admin(principal, shop_id)
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT url, topics, created_at, updated_at FROM shop_webhooks WHERE shop_id = $1",
            shop_id,
        )
        counts = await conn.fetch(
            "SELECT status, count(*) AS n FROM webhook_deliveries WHERE shop_id = $1 "
            "GROUP BY status",
            shop_id,
        )
    if row is None:
        raise HTTPException(404, f"shop {shop_id} has no webhook")
    return {
        "shop_id": shop_id,
        "url": row["url"],
        "events": row["topics"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "deliveries": {r["status"]: r["n"] for r in counts},
    }


@router.delete("/shops/{shop_id}/webhook")
async def delete_webhook(
    shop_id: ShopId, request: Request, principal: ShopOrAdmin
) -> dict[str, Any]:
    """No more deliveries: the webhook goes, and what was still pending is marked dead (a
    retry after a new PUT sends it to the new endpoint)."""
    own_shop_or_admin(principal, shop_id)
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn, conn.transaction():
        deleted = await conn.fetchval(
            "DELETE FROM shop_webhooks WHERE shop_id = $1 RETURNING shop_id", shop_id
        )
        if deleted is None:
            raise HTTPException(404, f"shop {shop_id} has no webhook")
        dropped = await conn.execute(
            """
            UPDATE webhook_deliveries
            SET status = 'dead', leased_until = NULL, last_error = 'the webhook was deleted'
            WHERE shop_id = $1 AND status = 'pending'
            """,
            shop_id,
        )
    await _resubscribe(request)
    return {"shop_id": shop_id, "deleted": True, "pending_dropped": int(dropped.split()[-1])}


@router.get("/shops/{shop_id}/webhook/deliveries")
async def list_deliveries(
    shop_id: ShopId,
    request: Request,
    principal: ShopOrAdmin,
    status: Literal["pending", "delivered", "dead"] | None = None,
    order_id: str | None = Query(default=None, max_length=64),
    limit: int = Query(default=50, ge=1, le=500),
) -> dict[str, Any]:
    """The shop's deliveries, newest first, each with every attempt and its outcome."""
    own_shop_or_admin(principal, shop_id)
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        rows = await conn.fetch(
            """
            SELECT d.delivery_id, d.event_id, d.topic, d.order_id, d.status, d.attempts,
                   d.created_at, d.next_attempt_at, d.last_status, d.last_error,
                   d.delivered_at,
                   coalesce((SELECT jsonb_agg(jsonb_build_object(
                                 'attempt', a.attempt, 'at', a.at,
                                 'status_code', a.status_code, 'error', a.error,
                                 'duration_ms', a.duration_ms) ORDER BY a.attempt)
                             FROM webhook_attempts a WHERE a.delivery_id = d.delivery_id),
                            '[]') AS attempt_log
            FROM webhook_deliveries d
            WHERE d.shop_id = $1 AND ($2::text IS NULL OR d.status = $2)
              AND ($3::text IS NULL OR d.order_id = $3)
            ORDER BY d.delivery_id DESC LIMIT $4
            """,
            shop_id,
            status,
            order_id,
            limit,
        )
    deliveries = []
    for r in rows:
        d = dict(r)
        d["next_attempt_at"] = d["next_attempt_at"] if d["status"] == "pending" else None
        deliveries.append(d)
    return {"shop_id": shop_id, "deliveries": deliveries}


@router.post("/shops/{shop_id}/webhook/deliveries/{delivery_id}/retry", status_code=202)
async def retry_delivery(
    shop_id: ShopId,
    delivery_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    request: Request,
    principal: ShopOrAdmin,
) -> dict[str, Any]:
    """Send a delivery again now (a dead one gets a new retry window; a delivered one is sent
    once more: receivers dedupe on ``Waybill-Event-Id``)."""
    own_shop_or_admin(principal, shop_id)
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        row = await conn.fetchrow(
            """
            UPDATE webhook_deliveries
            SET status = 'pending', next_attempt_at = now(), window_start = now(),
                leased_until = NULL, delivered_at = NULL
            WHERE shop_id = $1 AND delivery_id = $2
              AND EXISTS (SELECT 1 FROM shop_webhooks w WHERE w.shop_id = $1)
            RETURNING delivery_id, status
            """,
            shop_id,
            delivery_id,
        )
    if row is None:
        raise HTTPException(404, f"shop {shop_id} has no delivery {delivery_id} (or no webhook)")
    return {"shop_id": shop_id, **dict(row)}
