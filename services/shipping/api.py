"""HTTP routes of the shipping service: carrier webhooks and shipment tracking."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import (
    AfterValidator,
    BaseModel,
    StringConstraints,
    ValidationError,
)

from services.shipping import handlers
from services.shipping.storage import repository as repo
from shared.carriers import CarrierGateway
from shared.carriers.purchase import LabelPurchaser
from shared.db import unit_of_work
from shared.db.notify import notify
from shared.events.base import Text, Timestamp, storable_text
from shared.http import require_role, runtime_of
from shared.signing import WebhookPayloadError, WebhookSignatureError
from shared.tenancy import Principal

router = APIRouter(tags=["shipping"])


class TrackingPush(BaseModel):
    """What a carrier's push must come to, whatever its format, to be recorded: the parsers
    read the carrier's JSON loosely (a number where text belongs, a time without an offset)."""

    tracking_number: Annotated[str, StringConstraints(min_length=1), AfterValidator(storable_text)]
    status: Text
    at: Timestamp
    event_id: Text | None = None
    description: Text | None = None


@router.post("/webhooks/carriers/{carrier}", status_code=202)
async def carrier_webhook(carrier: str, request: Request) -> dict[str, Any]:
    """A carrier's tracking push: the signature over the raw body decides, not a token."""
    runtime = runtime_of(request)
    gateway: CarrierGateway = runtime.extras["carriers"]
    body = await request.body()
    try:
        update = gateway.parse_webhook(
            {k.lower(): v for k, v in request.headers.items()}, body, now=time.time()
        )
        TrackingPush.model_validate(update, from_attributes=True)
    except WebhookPayloadError as exc:
        unreadable = {"loc": ["body"], "msg": f"not a tracking event: {exc}", "type": "value_error"}
        raise HTTPException(422, [unreadable]) from exc
    except WebhookSignatureError as exc:
        raise HTTPException(401, f"webhook refused: {exc}") from exc
    except ValidationError as exc:  # signed, readable, but not what a tracking event holds
        fields = [
            {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False)
        ]
        raise HTTPException(422, fields) from exc
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        applied = await handlers.record_tracking(uow, update, source="webhook")
    if applied is None:
        raise HTTPException(404, f"no shipment with tracking number {update.tracking_number}")
    return {"status": "applied" if applied else "duplicate"}


@router.get("/shipments/{order_id}")
async def get_shipments(
    order_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require_role("shop", "ops"))],
) -> dict[str, Any]:
    """An order's shipments with their tracking. A shop's key sees its own shop's orders
    only: another shop's is 404, as if there were none."""
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        shipments = await repo.shipments_of_order(conn, order_id)
        scoped = principal.shop_id is not None and bool(shipments)
        if scoped and await repo.shop_of_order(conn, order_id) != principal.shop_id:
            shipments = []
    if not shipments:
        raise HTTPException(404, f"no shipments for order {order_id}")
    public = (
        "shipment_id",
        "warehouse_id",
        "state",
        "tracking_status",
        "carrier",
        "service",
        "tracking_number",
        "label_url",
        "estimated_delivery",
        "at_risk",
        "attempts",
        "last_error",
        "voided_at",
        "label_created_at",
        "shipped_at",
        "delivered_at",
        "lines",
        "tracking",
    )
    return {"order_id": order_id, "shipments": [{k: s[k] for k in public} for s in shipments]}


@router.post(
    "/shipments/{order_id}/labels/retry",
    dependencies=[Depends(require_role("ops"))],
    status_code=202,
)
async def retry_labels(order_id: str, request: Request) -> dict[str, Any]:
    """Give failed label purchases (``label_failed``) a fresh retry budget."""
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn, conn.transaction():
        retried = await repo.PURCHASES.retry_failed(conn, "order_id", order_id)
        if retried:
            await notify(conn, repo.LABELS_CHANNEL)
    if not retried:
        raise HTTPException(409, f"order {order_id} has no failed label purchase")
    return {"order_id": order_id, "retried": retried}


@router.get("/carriers", dependencies=[Depends(require_role("ops"))])
async def carrier_health(request: Request) -> dict[str, Any]:
    """Each carrier's circuit breaker in this process: closed, open or half_open."""
    purchaser: LabelPurchaser = runtime_of(request).extras["purchaser"]
    return {"carriers": purchaser.circuits()}
