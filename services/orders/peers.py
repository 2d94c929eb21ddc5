"""The plumbing of all four services, for the ops dashboard, ``GET /sla/summary`` and
``waybill sla``: orders' own, and each other service's ``GET /ops/health`` (ops token),
fetched when asked. A service that does not answer is shown as unreachable, never hidden.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from shared.ops_health import messaging_health, process_health
from shared.runtime import ServiceRuntime

PEERS = ("inventory", "shipping", "returns")

#: a dashboard must not hang on a service that does not answer
FETCH_TIMEOUT_SECONDS = 2.0


async def services_health(runtime: ServiceRuntime) -> list[dict[str, Any]]:
    async with runtime.pool.acquire() as conn:
        own = await messaging_health(conn, fresh_seconds=3 * runtime.settings.broker_check_seconds)
    urls: dict[str, str | None] = runtime.extras.get("peer_urls", {})
    token = runtime.settings.tokens().get("ops", "")
    async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS) as http:
        peers = await asyncio.gather(*(_fetch(http, name, urls.get(name), token) for name in PEERS))
    mine = {"carriers": None, "process": process_health(runtime.settings)}
    return [{"service": "orders", "reachable": True, **own, **mine}, *peers]


async def _fetch(http: httpx.AsyncClient, name: str, url: str | None, token: str) -> dict[str, Any]:
    if not url:
        return {"service": name, "reachable": False, "error": "not configured"}
    try:
        response = await http.get(
            f"{url.rstrip('/')}/ops/health", headers={"Authorization": f"Bearer {token}"}
        )
    except httpx.HTTPError as exc:
        return {"service": name, "reachable": False, "error": type(exc).__name__}
    if response.status_code != 200:
        return {"service": name, "reachable": False, "error": f"HTTP {response.status_code}"}
    body: dict[str, Any] = response.json()
    return {**body, "service": name, "reachable": True}
