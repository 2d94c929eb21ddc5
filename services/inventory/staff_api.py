"""Warehouse staff: personal keys bound to warehouses (the inventory service owns them).

Each staff member has one live key; it opens the pick-list page and the warehouse API of
the warehouses it is bound to, and every pick, pack and return receipt made with it
records who did it. The other services learn the keys from ``staff.key-changed``
(shared/tenancy.py).
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.inventory.storage import repository as repo
from shared import tenancy
from shared.db import unit_of_work
from shared.events.base import Identifier, ShortText
from shared.http import require_role, runtime_of

router = APIRouter(tags=["staff"])

WarehouseId = Annotated[str, Path(min_length=1, max_length=64)]
StaffId = Annotated[str, Path(min_length=1, max_length=64)]


class StaffBody(BaseModel):
    """A new staff member (``name``; ``staff_id`` chosen here if not given), or an existing
    one (``staff_id``) to bind to this warehouse as well."""

    name: ShortText | None = None
    staff_id: Identifier | None = None


def _public(member: dict[str, Any]) -> dict[str, Any]:
    return {
        "staff_id": member["staff_id"],
        "name": member.get("name", member.get("staff_name")),
        "warehouse_ids": sorted(member["warehouse_ids"]),
        "key_id": member["key_id"],
        "created_at": member["created_at"],
        "last_used_at": member.get("last_used_at"),
    }


async def _known_warehouse(request: Request, warehouse_id: str) -> None:
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        if not await repo.warehouse_exists(conn, warehouse_id):
            raise HTTPException(404, f"no warehouse {warehouse_id}")


@router.post("/warehouses/{warehouse_id}/staff", dependencies=[Depends(require_role("admin"))])
async def add_staff(warehouse_id: WarehouseId, body: StaffBody, request: Request) -> JSONResponse:
    """A new staff member of this warehouse: 201 with their key, shown this once. An
    existing one (``staff_id`` with a live key): bound to this warehouse too, 200, no key."""
    await _known_warehouse(request, warehouse_id)
    runtime = runtime_of(request)
    now = runtime.clock.now()
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        member = await tenancy.staff_member(uow.conn, body.staff_id) if body.staff_id else None
        if member is not None:
            bound = sorted({*member["warehouse_ids"], warehouse_id})
            await tenancy.rebind_staff(uow, member["staff_id"], warehouse_ids=bound, now=now)
            answer = _public({**member, "warehouse_ids": bound})
            return JSONResponse(_json(answer), status_code=200)
        if body.name is None:
            detail = [
                {
                    "loc": ["body", "name"],
                    "msg": "a new staff member needs a name",
                    "type": "missing",
                }
            ]
            raise HTTPException(422, detail)
        issued = await tenancy.issue_staff_key(
            uow,
            staff_id=body.staff_id or f"st-{secrets.token_hex(4)}",
            name=body.name,
            warehouse_ids=[warehouse_id],
            now=now,
        )
    answer = {**_public(issued), "key": issued["key"]}
    return JSONResponse(_json(answer), status_code=201, headers={"Cache-Control": "no-store"})


@router.get(
    "/warehouses/{warehouse_id}/staff", dependencies=[Depends(require_role("admin", "ops"))]
)
async def list_staff(warehouse_id: WarehouseId, request: Request) -> dict[str, Any]:
    """The staff members with a live key for this warehouse (never a key)."""
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        found = await tenancy.staff_of_warehouse(conn, warehouse_id)
    return {"warehouse_id": warehouse_id, "staff": [_public(m) for m in found]}


@router.delete(
    "/warehouses/{warehouse_id}/staff/{staff_id}",
    dependencies=[Depends(require_role("admin"))],
)
async def remove_staff(
    warehouse_id: WarehouseId, staff_id: StaffId, request: Request
) -> dict[str, Any]:
    """Unbind the staff member from this warehouse, at once here and within seconds
    everywhere; bound to none any more, their key is revoked."""
    runtime = runtime_of(request)
    now = runtime.clock.now()
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        member = await tenancy.staff_member(uow.conn, staff_id)
        if member is None or warehouse_id not in member["warehouse_ids"]:
            raise HTTPException(404, f"{staff_id} is not staff of {warehouse_id}")
        left = sorted(set(member["warehouse_ids"]) - {warehouse_id})
        changed = await tenancy.rebind_staff(uow, staff_id, warehouse_ids=left, now=now)
    if changed is None:  # revoked meanwhile
        raise HTTPException(404, f"{staff_id} is not staff of {warehouse_id}")
    return changed


@router.post("/staff/{staff_id}/key", dependencies=[Depends(require_role("admin"))])
async def new_staff_key(staff_id: StaffId, request: Request) -> JSONResponse:
    """A lost or leaked key: a new one for the same warehouses, the old one revoked."""
    runtime = runtime_of(request)
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        member = await tenancy.staff_member(uow.conn, staff_id)
        if member is None:
            raise HTTPException(404, f"no staff member {staff_id} with a live key")
        issued = await tenancy.issue_staff_key(
            uow,
            staff_id=staff_id,
            name=member["staff_name"],
            warehouse_ids=list(member["warehouse_ids"]),
            now=runtime.clock.now(),
        )
    answer = {**_public(issued), "key": issued["key"]}
    return JSONResponse(_json(answer), status_code=201, headers={"Cache-Control": "no-store"})


def _json(answer: dict[str, Any]) -> Any:
    return jsonable_encoder(answer)
