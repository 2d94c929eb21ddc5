"""Shop webhook receivers in the sandbox: a real HTTP endpoint a shop would run, for the
demo and the tests. Each receiver checks ``Waybill-Signature`` under its secret, keeps what
arrived, and can be told to fail its first N requests or answer slowly."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from shared.signing import WebhookSignatureError, verify_webhook


class ReceiverSettings(BaseModel):
    secret: str = Field(min_length=1, max_length=200)
    #: answer this many requests with ``fail_status`` before the first 2xx
    fail_first: int = Field(default=0, ge=0, le=1000)
    fail_status: int = Field(default=503, ge=400, le=599)
    #: wait this long before every answer (a slow shop)
    delay_ms: int = Field(default=0, ge=0, le=120_000)


@dataclass
class Receiver:
    settings: ReceiverSettings
    requests: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)


def receivers_router() -> APIRouter:
    router = APIRouter(tags=["sandbox"])
    receivers: dict[str, Receiver] = {}

    @router.put("/sandbox/receivers/{name}")
    async def configure(name: str, settings: ReceiverSettings) -> dict[str, Any]:
        """Create or reset the receiver ``name`` (what it received is forgotten)."""
        receivers[name] = Receiver(settings)
        return {"name": name, "url_path": f"/sandbox/receivers/{name}"}

    @router.post("/sandbox/receivers/{name}")
    async def receive(name: str, request: Request) -> dict[str, Any]:
        """The endpoint a shop's webhook points at."""
        receiver = receivers.get(name)
        if receiver is None:
            raise HTTPException(404, f"no receiver {name}")
        body = await request.body()
        receiver.requests += 1
        if receiver.settings.delay_ms:
            await asyncio.sleep(receiver.settings.delay_ms / 1000)
        try:
            verify_webhook(
                receiver.settings.secret,
                request.headers.get("waybill-signature"),
                body,
                now=time.time(),
            )
        except WebhookSignatureError as exc:
            receiver.refused.append({"reason": exc.reason, "at": time.time()})
            raise HTTPException(401, f"bad signature: {exc.reason}") from exc
        if receiver.requests <= receiver.settings.fail_first:
            raise HTTPException(receiver.settings.fail_status, "failing on purpose")
        envelope = json.loads(body)
        receiver.received.append(
            {
                "event_id": request.headers.get("waybill-event-id"),
                "attempt": int(request.headers.get("waybill-delivery-attempt", "0")),
                "topic": envelope.get("topic"),
                "order_id": envelope.get("order_id"),
                "shop_id": envelope.get("shop_id"),
                "event": envelope.get("event"),
                "at": time.time(),
            }
        )
        return {"received": True}

    @router.get("/sandbox/receivers/{name}")
    async def report(name: str) -> dict[str, Any]:
        """What the receiver took (signature verified), refused, and how often it was asked."""
        receiver = receivers.get(name)
        if receiver is None:
            raise HTTPException(404, f"no receiver {name}")
        return {
            "name": name,
            "requests": receiver.requests,
            "received": receiver.received,
            "refused": receiver.refused,
        }

    return router
