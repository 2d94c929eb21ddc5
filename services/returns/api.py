"""HTTP routes of the returns service."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from services.returns import handlers
from services.returns.storage import repository as repo
from shared.db import unit_of_work
from shared.db.notify import notify
from shared.events import Model, ReceivedLine
from shared.http import require_role, runtime_of
from shared.tenancy import Principal

router = APIRouter(tags=["returns"])


@router.get("/returns/{return_id}")
async def get_return(
    return_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require_role("shop", "ops"))],
) -> dict[str, Any]:
    """A return's status and decision with its reason. A shop's key sees the returns of its
    own shop's orders only: another shop's is 404, as if there were none."""
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        ret = await repo.find_return(conn, return_id)
        if ret is not None and principal.shop_id is not None:
            owner = await repo.shop_of_order(conn, ret["order_id"])
            ret = ret if owner == principal.shop_id else None
    if ret is None:
        raise HTTPException(404, f"no return {return_id}")
    public = (
        "return_id",
        "order_id",
        "status",
        "reason",
        "requested_at",
        "decided_at",
        "lines",
        "resolution",
        "exchange_for",
        "rma",
        "label",
        "attempts",
        "last_error",
        "received_at",
        "received_lines",
        "refund_amount",
        "replacement_order_id",
    )
    return {k: ret[k] for k in public}


class Receipt(Model):
    lines: list[ReceivedLine] = Field(min_length=1, max_length=100)


@router.post("/returns/{return_id}/received")
async def receive_return(
    return_id: str,
    receipt: Receipt,
    request: Request,
    principal: Annotated[Principal, Depends(require_role("warehouse"))],
) -> Any:
    """What came back, line by line (sellable or damaged): publishes ``returns.received``
    and, for a refund, ``refunds.requested``. The same receipt again is answered the same.
    A staff member's key: only returns to their warehouses (403), and they are recorded as
    the receiver."""
    runtime = runtime_of(request)
    try:
        async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
            return await handlers.receive_return(
                uow,
                return_id,
                receipt.lines,
                now=runtime.clock.now(),
                warehouses=principal.warehouse_ids,
                by=principal.who(),
            )
    except handlers.ReceiptRefused as refused:
        if refused.status == 422:
            return JSONResponse({"detail": refused.detail}, 422)
        raise HTTPException(refused.status, refused.detail) from None


@router.post(
    "/returns/{return_id}/label/retry",
    dependencies=[Depends(require_role("ops"))],
    status_code=202,
)
async def retry_label(return_id: str, request: Request) -> dict[str, Any]:
    """A return label that spent its retry budget (``label_failed``) gets a fresh one."""
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn, conn.transaction():
        retried = await repo.PURCHASES.retry_failed(conn, "return_id", return_id)
        if retried:
            await notify(conn, repo.LABELS_CHANNEL)
    if not retried:
        raise HTTPException(409, f"return {return_id} has no failed label")
    return {"return_id": return_id, "status": "label_pending"}
