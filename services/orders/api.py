"""HTTP routes of the orders service."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from services.orders import handlers
from services.orders.domain.promises import PromisePolicy
from services.orders.storage import repository as repo
from shared.db import unit_of_work
from shared.events import OrderPlaced
from shared.http import require_role, runtime_of

router = APIRouter(tags=["orders"])

#: the inbox name HTTP intake shares with the Kafka intake, so one event_id counts once
HTTP_INTAKE_INBOX = "waybill-orders/orders.placed"


@router.post("/orders", status_code=202, dependencies=[Depends(require_role("shop"))])
async def submit_order(order: OrderPlaced, request: Request) -> JSONResponse:
    """HTTP intake: the same body, the same handler and the same outcome as ``orders.placed``."""
    runtime = runtime_of(request)
    policy: PromisePolicy = runtime.extras["promise_policy"]
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        if not await uow.claim(HTTP_INTAKE_INBOX, [order.event_id]):
            outcome = "duplicate"
        else:
            outcome = await handlers.place_order(order, uow, policy=policy)
    status = {"accepted": "accepted", "duplicate": "accepted", "conflict": "rejected"}[outcome]
    return JSONResponse(
        {"order_id": order.order_id, "outcome": outcome, "status": status}, status_code=202
    )


@router.get("/orders/{order_id}", dependencies=[Depends(require_role("shop", "ops"))])
async def get_order(order_id: str, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        order = await repo.fetch_order(conn, order_id)
        rejections = await repo.fetch_rejections(conn, order_id)
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
        "timeline": order["timeline"],
        "rejections": rejections,
    }


@router.get("/sla/summary", dependencies=[Depends(require_role("ops"))])
async def sla_summary(request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        counts = await repo.count_by_status(conn)
    return {"orders_by_status": counts, "orders_total": sum(counts.values())}
