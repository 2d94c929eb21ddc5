"""HTTP routes of the returns service."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from services.returns.storage import repository as repo
from shared.http import require_role, runtime_of

router = APIRouter(tags=["returns"])


@router.get("/returns/{return_id}", dependencies=[Depends(require_role("shop", "ops"))])
async def get_return(return_id: str, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        ret = await repo.find_return(conn, return_id)
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
    )
    return {k: ret[k] for k in public}
