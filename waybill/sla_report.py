"""`waybill sla`: the SLA report in the terminal, read from the orders service."""

from __future__ import annotations

import os
from typing import Any

import httpx
from rich.console import Group, RenderableType
from rich.text import Text

from services.orders.domain.sla import STAGE_NAMES, duration
from waybill.terminal import ViewTable


def default_orders_url() -> str:
    port = os.environ.get("WAYBILL_ORDERS_PORT", "8081")
    return os.environ.get("WAYBILL_ORDERS_URL", f"http://127.0.0.1:{port}")


def fetch_summary(url: str, token: str, *, timeout: float = 10.0) -> dict[str, Any]:
    response = httpx.get(
        f"{url.rstrip('/')}/sla/summary",
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )
    if response.status_code in (401, 403):
        raise PermissionError(
            f"{response.status_code}: the orders service wants the ops token "
            "(WAYBILL_TOKEN_OPS, printed by `waybill up`)"
        )
    response.raise_for_status()
    summary: dict[str, Any] = response.json()
    return summary


#: how a count or state looks on a terminal (piped output has no styles)
BREACHED = "bold red"
AT_RISK = "yellow"
FINE = "green"
_CIRCUIT_STYLES = {"closed": FINE, "half_open": AT_RISK, "open": BREACHED}


def render(summary: dict[str, Any]) -> RenderableType:
    """A table per stage: count, p50, p95, breached, at risk (and still open); then the
    orders that need attention, the stuck ones, and every service's plumbing."""
    parts: list[RenderableType] = [
        Text(f"SLA report as of {summary['as_of']}  ({summary['orders_total']} orders)", "bold"),
        Text(),
    ]
    stages = ViewTable()
    stages.add_column("stage")
    for header in ("count", "p50", "p95", "breached", "at risk", "open"):
        stages.add_column(header, justify="right")
    for stage in summary["stages"]:
        stages.add_row(
            STAGE_NAMES.get(stage["stage"], stage["stage"]),
            str(stage["met"]),
            duration(stage["p50_seconds"]),
            duration(stage["p95_seconds"]),
            _count(stage["breached"], BREACHED),
            _count(stage["at_risk"], AT_RISK),
            str(stage["open"]),
        )
    parts.append(stages if summary["stages"] else Text("(no orders yet)"))
    parts += [
        Text(),
        Text("count: stages met; p50/p95: time from the window's start to the stage met", "dim"),
    ]
    attention = summary.get("needs_attention") or []
    if attention:
        table = ViewTable("order", "stage", "state", "deadline", "order status")
        for a in attention:
            table.add_row(
                a["order_id"],
                STAGE_NAMES.get(a["stage"], a["stage"]),
                Text(a["state"], BREACHED if a["state"] == "breached" else AT_RISK),
                str(a["deadline"]),
                a["status"],
            )
        parts += [Text(), Text("Needs attention:", "bold"), table]
    stuck = summary.get("stuck") or []
    if stuck:
        table = ViewTable("order", "stage", "state", "order status", "re-driven at")
        for s in stuck:
            table.add_row(
                s["order_id"],
                STAGE_NAMES.get(s["stage"], s["stage"]),
                Text("STUCK", BREACHED)
                if s["state"] == "stuck"
                else Text("re-driven, waiting", AT_RISK),
                s["status"],
                str(s["redriven_at"]),
            )
        parts += [Text(), Text("Stuck (overdue without progress; re-driven once):", "bold"), table]
    services = summary.get("services") or []
    if services:
        parts += [Text(), Text("Services:", "bold"), _services(services)]
    return Group(*parts)


def _count(n: int, style: str) -> Text:
    """A count, styled when it is not zero."""
    return Text(str(n), style if n else "")


def _services(services: list[dict[str, Any]]) -> ViewTable:
    table = ViewTable("service")
    for header in ("outbox", "dead letters", "consumer lag"):
        table.add_column(header, justify="right")
    table.add_column("carriers")
    table.add_column("process")
    for svc in services:
        if not svc.get("reachable"):
            unreachable = Text(f"unreachable ({svc.get('error')})", BREACHED)
            table.add_row(svc["service"], "-", "-", "-", "-", unreachable)
            continue
        process = svc.get("process") or {}
        restarts = process.get("restarts") or 0
        restarted = (
            Text(
                f"restarts {restarts} (last: {process.get('last_exit')},"
                f" started again {process.get('restarted_at')})",
                AT_RISK,
            )
            if restarts
            else Text("-")
        )
        circuits = Text(", ").join(
            Text(f"{c['carrier']} {c['circuit']}", _CIRCUIT_STYLES.get(c["circuit"], ""))
            for c in svc.get("carriers") or []
        )
        table.add_row(
            svc["service"],
            _count(svc["outbox_backlog"], AT_RISK),
            _count(svc["dead_letters"], BREACHED),
            _count(svc["consumer_lag"], AT_RISK),
            circuits or Text("-"),
            restarted,
        )
    return table
