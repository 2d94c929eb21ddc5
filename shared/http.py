"""HTTP pieces every service shares: bearer-token roles, health and readiness."""

from __future__ import annotations

import hmac
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.metrics import prometheus_text
from shared.ops_health import messaging_health, process_health
from shared.runtime import ServiceRuntime
from shared.settings import Role
from shared.tenancy import Principal, looks_like_key, principal_of_key


def runtime_of(request: Request) -> ServiceRuntime:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime


def new_token(nbytes: int = 24) -> str:
    """A random token of ``nbytes`` bytes in hex. Hex, not URL-safe base64: one of those in 64
    begins with ``-``, which a command line (``waybill sla --token TOKEN``) reads as an option."""
    return secrets.token_hex(nbytes)


def role_of_token(tokens: dict[Role, str], presented: str) -> Role | None:
    for role, token in tokens.items():
        if hmac.compare_digest(token.encode(), presented.encode()):
            return role
    return None


async def authenticate(request: Request, presented: str) -> Principal | None:
    """Who ``presented`` is: a role token (every shop, every warehouse), a live shop or staff
    key (shared/tenancy.py), or nobody."""
    runtime = runtime_of(request)
    role = role_of_token(runtime.settings.tokens(), presented)
    if role is not None:
        return Principal(role)
    if looks_like_key(presented):
        return await principal_of_key(runtime.pool, presented)
    return None


def require_role(*allowed: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: 401 without a valid token or key (a revoked key included), 403 with
    another role's; it answers who the request acts for."""

    async def check(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        principal = await authenticate(request, presented.strip())
        if principal is None:
            raise HTTPException(401, "invalid token or key", headers={"WWW-Authenticate": "Bearer"})
        if principal.role not in allowed:
            raise HTTPException(403, f"this needs the role {' or '.join(allowed)}")
        return principal

    return check


class RateLimiter:
    """A token bucket per key: ``rate`` requests a second, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def wait_needed(self, key: str, now: float | None = None) -> float:
        """0 if a request may go now (and it is counted), else the seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


async def limit_rate(runtime: ServiceRuntime, principal: Principal) -> None:
    """429 with ``Retry-After`` when the principal's key is over its rate (role tokens are
    not limited)."""
    if principal.key_id is None:
        return
    limiter: RateLimiter | None = runtime.extras.get("rate_limiter")
    if limiter is None:
        settings = runtime.settings
        limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
        runtime.extras["rate_limiter"] = limiter
    wait = limiter.wait_needed(principal.key_id)
    if wait > 0:
        raise HTTPException(
            429,
            f"more than {limiter.rate:g} requests a second with this key: retry later",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


class RefuseNulInUrl:
    """ASGI middleware: a path or query string holding NUL (``%00``) is answered 422.

    Every id and SKU in a URL is looked up in PostgreSQL, whose text cannot hold U+0000:
    left to the route, the query fails and the answer is a 500. One check here covers every
    route of every service, the pages included.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        where = _nul_in_url(scope) if scope["type"] == "http" else None
        if where is None:
            await self.app(scope, receive, send)
            return
        error = {"loc": [where], "msg": "must not contain the NUL character (U+0000)"}
        response = JSONResponse({"detail": [{**error, "type": "value_error"}]}, status_code=422)
        await response(scope, receive, send)


def _nul_in_url(scope: Scope) -> str | None:
    """Where the request's URL holds NUL: "path", "query" or None."""
    if "\x00" in scope["path"]:
        return "path"
    query: bytes = scope["query_string"]
    if b"%00" in query or b"\x00" in query:
        return "query"
    return None


def health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        checks = await runtime_of(request).readiness()
        ready = all(checks.values())
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    return router


def create_service_app(
    runtime: ServiceRuntime,
    *,
    routers: Sequence[APIRouter] = (),
    on_started: Callable[[ServiceRuntime], Awaitable[Any]] | None = None,
) -> FastAPI:
    """The FastAPI application of a service; its lifespan runs the service runtime."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        if on_started is not None:
            await on_started(runtime)
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title=f"Waybill {runtime.name}", lifespan=lifespan)
    app.state.runtime = runtime
    app.add_middleware(RefuseNulInUrl)
    app.include_router(health_router())

    @app.get("/metrics", dependencies=[Depends(require_role("ops"))], include_in_schema=False)
    async def metrics_scrape() -> Response:
        """Prometheus scrape (ops token: ``bearer_token`` in the scrape config)."""
        body, content_type = prometheus_text()
        return Response(body, media_type=content_type)

    @app.get("/ops/health", dependencies=[Depends(require_role("ops"))], tags=["ops"])
    async def ops_health(request: Request) -> dict[str, Any]:
        """This service's plumbing: outbox backlog, dead letters not replayed, consumer lag
        per topic, what this instance's consumer handled (records and the batches they came
        in) and, where labels are bought, each carrier's circuit in this process."""
        runtime = runtime_of(request)
        async with runtime.pool.acquire() as conn:
            health = await messaging_health(
                conn, fresh_seconds=3 * runtime.settings.broker_check_seconds
            )
        purchaser = runtime.extras.get("purchaser")
        carriers = purchaser.circuits() if purchaser is not None else None
        consumer = runtime.consumer
        handled = {"batches": consumer.batches, "records": consumer.records}
        return {
            "service": runtime.name,
            **health,
            "consumed": handled,
            "carriers": carriers,
            "process": process_health(runtime.settings),
        }

    for router in routers:
        app.include_router(router)
    return app
