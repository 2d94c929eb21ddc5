"""The ops dashboard (``GET /ops``): SLA figures per stage, the orders that need attention,
stage latency over time, orders per status; server-rendered, refreshing by itself.

A browser cannot send a bearer token on navigation, so ``?token=`` (or the sign-in form)
puts the ops token into an HttpOnly cookie scoped to ``/ops`` and redirects to the clean
URL; a bearer header works too. No JavaScript: the chart is an SVG drawn here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from services.orders import sla
from services.orders.domain.sla import STAGE_NAMES, duration, state_of
from services.orders.peers import services_health
from services.orders.storage import repository as repo
from shared.http import role_of_token, runtime_of

router = APIRouter(include_in_schema=False)

COOKIE = "waybill_ops"
COOKIE_PATH = "/ops"
REFRESH_SECONDS = 15
CHART_HOURS = 24
STAGE_COLOURS = {
    "accept": "#2b6cb0",
    "dispatch": "#c05621",
    "delivery": "#2f855a",
    "return_decision": "#6b46c1",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@lru_cache(maxsize=1)
def _templates() -> Environment:
    environment = Environment(
        loader=PackageLoader("services.orders", "pages"),
        autoescape=select_autoescape(("html",), default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["duration"] = duration
    environment.globals["stage_name"] = lambda stage: STAGE_NAMES.get(stage, stage)
    return environment


def _render(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _templates().get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=_HEADERS)


def _role(request: Request, token: str | None) -> str | None:
    if not token:
        return None
    return role_of_token(runtime_of(request).settings.tokens(), token.strip())


def _presented(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:]
    return request.cookies.get(COOKIE)


def _refused(request: Request) -> HTMLResponse | None:
    """None for the ops role; else the sign-in page (401) or a refusal (403)."""
    role = _role(request, _presented(request))
    if role == "ops":
        return None
    if role is None:
        return _render("signin.html", status_code=401, message=None)
    return _render("signin.html", status_code=403, message="That token is not an ops token.")


@router.get("/ops-assets/ops.css")
async def stylesheet() -> Response:
    css = files("services.orders").joinpath("pages", "ops.css").read_text()
    return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


@router.get("/ops")
async def dashboard(request: Request, token: str | None = None) -> Response:
    if token is not None:
        role = _role(request, token)
        if role != "ops":
            message = "That token is not valid." if role is None else "Not an ops token."
            return _render("signin.html", status_code=401 if role is None else 403, message=message)
        response = RedirectResponse("/ops", status_code=303)
        response.set_cookie(
            COOKIE,
            token.strip(),
            max_age=12 * 3600,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response
    refused = _refused(request)
    if refused is not None:
        return refused
    runtime = runtime_of(request)
    now = runtime.clock.now()
    services = await services_health(runtime)
    async with runtime.pool.acquire() as conn:
        shown = await sla.figures(conn, now=now)
        series = await repo.stage_latency_by_hour(
            conn, since=now - timedelta(hours=CHART_HOURS), until=now + timedelta(seconds=1)
        )
    return _render(
        "ops.html",
        now=now,
        refresh=REFRESH_SECONDS,
        counts=sorted(shown["orders_by_status"].items(), key=lambda kv: -kv[1]),
        total=shown["orders_total"],
        stages=shown["stages"],
        attention=shown["needs_attention"],
        chart=latency_chart(series, now=now),
        stuck=shown["stuck"],
        services=services,
        carriers=[
            {"service": svc["service"], **circuit}
            for svc in services
            if svc["reachable"]
            for circuit in svc.get("carriers") or []
        ],
    )


@router.get("/ops/orders/{order_id}")
async def order_timeline(order_id: str, request: Request) -> Response:
    refused = _refused(request)
    if refused is not None:
        return refused
    runtime = runtime_of(request)
    now = runtime.clock.now()
    async with runtime.pool.acquire() as conn:
        order = await repo.fetch_order(conn, order_id)
        stages = await repo.slas_of(conn, order_id)
        returns = await repo.return_decisions_of(conn, order_id)
    if order is None:
        return _render("order.html", status_code=404, order=None, order_id=order_id, stages=[])
    stages = [{**stage, "return_id": None} for stage in stages] + [
        {
            "stage": "return_decision",
            "return_id": r["return_id"],
            "window_start": r["requested_at"],
            "deadline": r["deadline"],
            "met_at": r["decided_at"],
            "breached_at": r["breached_at"],
            "closed": False,
        }
        for r in returns
    ]
    for stage in stages:
        stage["state"] = state_of(
            window_start=stage["window_start"],
            deadline=stage["deadline"],
            met_at=stage["met_at"],
            breached_at=stage["breached_at"],
            closed=stage["closed"],
            now=now,
        )
    return _render("order.html", order=order, order_id=order_id, stages=stages)


def latency_chart(
    series: list[dict[str, Any]], *, now: datetime, width: int = 720, height: int = 220
) -> dict[str, Any]:
    """An SVG line per stage: p50 minutes to meet it, per hour of the last CHART_HOURS."""
    left, right, top, bottom = 48, 28, 12, 28
    start = (now - timedelta(hours=CHART_HOURS)).replace(minute=0, second=0, microsecond=0)
    span = (now - start).total_seconds() or 1.0
    peak = max((point["p50_seconds"] or 0.0) for point in series) if series else 0.0
    peak = max(peak, 1.0)

    def x(at: datetime) -> float:
        return left + (width - left - right) * max(0.0, (at - start).total_seconds()) / span

    def y(seconds: float) -> float:
        return top + (height - top - bottom) * (1 - seconds / peak)

    lines = []
    for stage, colour in STAGE_COLOURS.items():
        points = [
            (x(p["hour"] + timedelta(minutes=30)), y(p["p50_seconds"] or 0.0))
            for p in series
            if p["stage"] == stage
        ]
        if points:
            lines.append(
                {
                    "stage": stage,
                    "colour": colour,
                    "points": " ".join(f"{px:.1f},{py:.1f}" for px, py in points),
                    "dots": points,
                }
            )
    ticks = [
        {
            "x": x(start + timedelta(hours=h)),
            "label": (start + timedelta(hours=h)).strftime("%H:00"),
        }
        for h in range(0, CHART_HOURS + 1, 6)
    ]
    return {
        "width": width,
        "height": height,
        "left": left,
        "bottom": height - bottom,
        "right": width - right,
        "top": top,
        "peak": duration(peak),
        "lines": lines,
        "ticks": ticks,
    }
