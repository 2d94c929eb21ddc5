"""HTTP routes of the inventory service."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from services.inventory import handlers
from services.inventory.storage import repository as repo
from shared.db import unit_of_work
from shared.events import StockReceived
from shared.events.base import CountryCode, Identifier, PostalCode, ShortText, Sku
from shared.events.inventory import BinLabel
from shared.http import require_role, runtime_of
from shared.messaging import PermanentFailure
from shared.tenancy import Principal

router = APIRouter(tags=["inventory"])


class WarehouseBody(BaseModel):
    name: ShortText
    country: CountryCode
    postal_code: PostalCode


class StockReceiptBody(BaseModel):
    event_id: UUID = Field(default_factory=uuid4)
    warehouse_id: Identifier
    sku: Sku
    quantity: int = Field(ge=1, le=1_000_000)
    bin: BinLabel | None = None


@router.put("/warehouses/{warehouse_id}", dependencies=[Depends(require_role("admin"))])
async def put_warehouse(warehouse_id: str, body: WarehouseBody, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        await repo.upsert_warehouse(
            uow.conn,
            warehouse_id=warehouse_id,
            name=body.name,
            country=body.country,
            postal_code=body.postal_code,
        )
    return {"warehouse_id": warehouse_id, **body.model_dump()}


@router.post("/stock/receipts", status_code=202)
async def post_stock_receipt(
    body: StockReceiptBody,
    request: Request,
    principal: Annotated[Principal, Depends(require_role("admin", "warehouse"))],
) -> dict[str, Any]:
    """The same handler as ``inventory.stock-received``; one event_id counts once. A staff
    member's key: into their warehouses only (403)."""
    if not principal.works_in(body.warehouse_id):
        raise HTTPException(403, f"your key is not for warehouse {body.warehouse_id}")
    runtime = runtime_of(request)
    event = StockReceived(**body.model_dump())
    try:
        async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
            if await uow.claim(runtime.consumer.inbox_name(event.TOPIC), [event.event_id]):
                await handlers.receive_stock(
                    event, uow, autopick=runtime.extras["autopick"], now=runtime.clock.now()
                )
    except PermanentFailure as exc:  # an unknown warehouse: a field error like any other
        detail = [{"loc": ["body", "warehouse_id"], "msg": str(exc), "type": "unknown_warehouse"}]
        raise HTTPException(422, detail) from exc
    return {"event_id": str(event.event_id), "status": "received"}


@router.get("/stock/{sku}")
async def get_stock(
    sku: str,
    request: Request,
    principal: Annotated[Principal, Depends(require_role("ops", "warehouse"))],
) -> dict[str, Any]:
    """On hand, reserved and available per warehouse (a staff member's key: theirs)."""
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        bins = await repo.stock_of_sku(conn, sku)
        written_off = await repo.written_off(conn, sku)
    # every warehouse with stock or with damaged returns of the sku written off
    names = dict.fromkeys([*(b["warehouse_id"] for b in bins), *written_off])
    warehouses: dict[str, dict[str, Any]] = {
        name: {
            "warehouse_id": name,
            "on_hand": 0,
            "reserved": 0,
            "available": 0,
            "written_off": written_off.get(name, 0),
            "bins": [],
        }
        for name in names
    }
    for b in bins:
        w = warehouses[b["warehouse_id"]]
        for k in ("on_hand", "reserved", "available"):
            w[k] += b[k]
        w["bins"].append({k: b[k] for k in ("bin", "on_hand", "reserved", "available")})
    shown = [w for w in warehouses.values() if principal.works_in(w["warehouse_id"])]
    return {"sku": sku, "warehouses": shown}
