"""HTTP routes of the orders service."""

from __future__ import annotations

import json
from datetime import datetime, time
from typing import Annotated, Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from opentelemetry.trace import SpanKind
from pydantic import BaseModel, Field, ValidationError, field_validator

from services.orders import handlers, sla
from services.orders.consumers import MAX_ORDER_BYTES
from services.orders.domain.promises import PromisePolicy
from services.orders.domain.sla import at_risk_from, state_of
from services.orders.peers import services_health
from services.orders.shop_promises import ShopPromises
from services.orders.storage import repository as repo
from shared import telemetry
from shared.db import unit_of_work
from shared.events import OrderPlaced
from shared.events.base import STAFF_FIELDS
from shared.http import limit_rate, require_role, runtime_of
from shared.messaging import InvalidEvent, field_errors_of
from shared.tenancy import Principal

router = APIRouter(tags=["orders"])


@router.post(
    "/orders",
    status_code=202,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": OrderPlaced.model_json_schema()}},
        }
    },
)
async def submit_order(
    request: Request, principal: Annotated[Principal, Depends(require_role("shop"))]
) -> JSONResponse:
    """HTTP intake: the same body, handler and outcome as ``orders.placed``.

    A valid order: 202 and ``orders.accepted`` (or ``orders.rejected``, conflict). An
    invalid one: 422 with every field error, and ``orders.rejected`` when it names an order.
    A shop's key places orders of its own shop only: another ``shop_id`` is 403, and nothing
    is stored or emitted.
    """
    runtime = runtime_of(request)
    body = await request.body()
    if len(body) > MAX_ORDER_BYTES:
        return JSONResponse(
            {"detail": f"{len(body)} bytes is more than the {MAX_ORDER_BYTES} allowed"},
            status_code=413,
        )
    try:
        payload: Any = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than parsed
        return _unprocessable([("(body)", f"not JSON: {exc}")])
    if not isinstance(payload, dict):
        return _unprocessable([("(body)", "must be a JSON object")])
    if not principal.acts_for_shop(payload.get("shop_id")):
        raise HTTPException(403, f"this key places orders of shop {principal.shop_id} only")
    await limit_rate(runtime, principal)
    promises: ShopPromises = runtime.extras["shop_promises"]
    inbox = runtime.consumer.inbox_name(OrderPlaced.TOPIC)
    try:
        order = OrderPlaced.model_validate(payload)
    except ValidationError as exc:
        invalid = InvalidEvent(OrderPlaced.TOPIC, payload, field_errors_of(exc))
        event_id = _uuid_or_none(payload.get("event_id"))
        async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
            if event_id is None or await uow.claim(inbox, [event_id]):
                await handlers.reject_invalid_order(invalid, uow)
        return _unprocessable(invalid.field_errors())
    with telemetry.span(
        "orders.placed http",
        service="orders",
        kind=SpanKind.SERVER,
        attributes={"waybill.order_id": order.order_id},
    ):
        async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
            if not await uow.claim(inbox, [order.event_id]):
                outcome = "duplicate"
            else:
                outcome = await handlers.place_order(
                    order, uow, promises=promises, now=runtime.clock.now()
                )
    status = {"accepted": "accepted", "duplicate": "accepted", "conflict": "rejected"}[outcome]
    return JSONResponse(
        {"order_id": order.order_id, "outcome": outcome, "status": status}, status_code=202
    )


def _timeline_for(principal: Principal, timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if principal.role != "shop":
        return timeline
    shown = []
    for step in timeline:
        detail = step.get("detail")
        if isinstance(detail, dict) and not STAFF_FIELDS.isdisjoint(detail):
            step = {**step, "detail": {k: v for k, v in detail.items() if k not in STAFF_FIELDS}}
        shown.append(step)
    return shown


def _at_risk_now(stage: dict[str, Any], now: datetime) -> datetime | None:
    """The at-risk moment when it has passed and the watcher has not marked it yet."""
    if stage["met_at"] is not None or stage["closed"]:
        return None
    moment = at_risk_from(stage["window_start"], stage["deadline"])
    return moment if now >= moment else None


def _unprocessable(errors: list[tuple[str, str]]) -> JSONResponse:
    return JSONResponse(
        {
            "detail": [{"loc": field.split("."), "msg": message} for field, message in errors],
            "reasons": [{"field": field, "message": message} for field, message in errors],
        },
        status_code=422,
    )


def _uuid_or_none(value: Any) -> UUID | None:
    try:
        return UUID(value) if isinstance(value, str) else None
    except ValueError:
        return None


@router.get("/orders/{order_id}")
async def get_order(
    order_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require_role("shop", "ops"))],
) -> dict[str, Any]:
    """An order's status, lines, timeline, promises and SLA stages. A shop's key sees its
    own shop's orders only: another shop's is 404, as if there were none."""
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        order = await repo.fetch_order(conn, order_id)
        rejections = await repo.fetch_rejections(conn, order_id)
        return_decisions = await repo.return_decisions_of(conn, order_id)
        stages = await repo.slas_of(conn, order_id)
        redrives = await repo.redrives_of(conn, order_id)
    now = runtime.clock.now()
    if principal.shop_id is not None:
        if order is not None and order["shop_id"] != principal.shop_id:
            order, rejections = None, []
        rejections = [r for r in rejections if r["shop_id"] == principal.shop_id]
    if order is None:
        if not rejections:
            raise HTTPException(404, f"no order {order_id}")
        return {
            "order_id": order_id,
            "status": "rejected",
            "rejections": rejections,
            "timeline": [{"status": "rejected", "at": r["rejected_at"]} for r in rejections],
        }
    return {
        "order_id": order["order_id"],
        "shop_id": order["shop_id"],
        "status": order["status"],
        "service_level": order["service_level"],
        "currency": order["currency"],
        "placed_at": order["placed_at"],
        "lines": order["lines"],
        "promised": {"dispatch_by": order["dispatch_by"], "deliver_by": order["deliver_by"]},
        "timeline": _timeline_for(principal, order["timeline"]),
        "rejections": rejections,
        "replaces_order_id": order["replaces_order_id"],
        # each stage's window and how it stands now: met, pending, at_risk, breached
        "sla": [
            {
                "stage": stage["stage"],
                "deadline": stage["deadline"],
                "state": state_of(
                    window_start=stage["window_start"],
                    deadline=stage["deadline"],
                    met_at=stage["met_at"],
                    breached_at=stage["breached_at"],
                    closed=stage["closed"],
                    now=now,
                ),
                "met_at": stage["met_at"],
                "at_risk_since": stage["at_risk_at"] or _at_risk_now(stage, now),
                "breached_at": stage["breached_at"],
            }
            for stage in stages
        ],
        # the return-decision SLA, per return
        "return_decisions": return_decisions,
        # stages that were overdue without progress: re-driven once, reported if still stuck
        "redrives": redrives,
    }


@router.get("/sla/summary", dependencies=[Depends(require_role("ops"))])
async def sla_summary(request: Request) -> dict[str, Any]:
    """Orders per status; per SLA stage: met, p50/p95, breached, at risk, open; the orders
    needing attention and the stuck ones; each service's outbox, dead letters, consumer lag
    and carrier circuits."""
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        figures = await sla.figures(conn, now=runtime.clock.now())
    return {**figures, "services": await services_health(runtime)}


class PromiseSettings(BaseModel):
    """A shop's promise: cut-offs in the warehouse's time zone, business days to deliver."""

    time_zone: str = "Europe/Berlin"
    standard_cutoff: time = time(14, 0)
    express_cutoff: time = time(16, 0)
    collection_time: time = time(18, 0)
    standard_business_days: int = Field(default=5, ge=1, le=30)
    express_business_days: int = Field(default=2, ge=1, le=30)

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


@router.put("/shops/{shop_id}/promise", dependencies=[Depends(require_role("admin"))])
async def put_shop_promise(shop_id: str, body: PromiseSettings, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        await repo.save_shop_promise_policy(conn, shop_id, PromisePolicy(**body.model_dump()))
    runtime.extras["shop_promises"].forget(shop_id)
    return {"shop_id": shop_id, **body.model_dump(mode="json")}


@router.get("/shops/{shop_id}/promise", dependencies=[Depends(require_role("admin", "ops"))])
async def get_shop_promise(shop_id: str, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        policy = await repo.shop_promise_policy(conn, shop_id)
    chosen = policy or runtime.extras["promise_policy"]
    return {
        "shop_id": shop_id,
        "custom": policy is not None,
        **PromiseSettings(**vars(chosen)).model_dump(mode="json"),
    }
