"""`waybill sla`: the SLA report in the terminal, read from the orders service."""

from __future__ import annotations

import os
from typing import Any

import httpx

from services.orders.domain.sla import STAGE_NAMES, duration


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


def render(summary: dict[str, Any]) -> str:
    """A table per stage: count, p50, p95, breached, at risk (and still open)."""
    header = ("stage", "count", "p50", "p95", "breached", "at risk", "open")
    rows = [
        (
            STAGE_NAMES.get(stage["stage"], stage["stage"]),
            str(stage["met"]),
            duration(stage["p50_seconds"]),
            duration(stage["p95_seconds"]),
            str(stage["breached"]),
            str(stage["at_risk"]),
            str(stage["open"]),
        )
        for stage in summary["stages"]
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        )

    out = [f"SLA report as of {summary['as_of']}  ({summary['orders_total']} orders)", ""]
    out += [line(header), line(tuple("-" * w for w in widths))]
    out += [line(row) for row in rows] or ["(no orders yet)"]
    out.append("")
    out.append("count: stages met; p50/p95: time from the window's start to the stage met")
    attention = summary.get("needs_attention") or []
    if attention:
        out += ["", "Needs attention:"]
        out += [
            f"  {a['order_id']}  {STAGE_NAMES.get(a['stage'], a['stage'])}  {a['state']}"
            f"  (deadline {a['deadline']}, order {a['status']})"
            for a in attention
        ]
    stuck = summary.get("stuck") or []
    if stuck:
        out += ["", "Stuck (overdue without progress; re-driven once):"]
        out += [
            f"  {s['order_id']}  {STAGE_NAMES.get(s['stage'], s['stage'])}  "
            f"{'STUCK' if s['state'] == 'stuck' else 're-driven, waiting'}"
            f"  (order {s['status']}, re-driven {s['redriven_at']})"
            for s in stuck
        ]
    services = summary.get("services") or []
    if services:
        out += ["", "Services:"]
        for svc in services:
            if not svc.get("reachable"):
                out.append(f"  {svc['service']:<10} unreachable ({svc.get('error')})")
                continue
            process = svc.get("process") or {}
            restarts = process.get("restarts") or 0
            restarted = (
                f"  restarts {restarts} (last: {process.get('last_exit')},"
                f" started again {process.get('restarted_at')})"
                if restarts
                else ""
            )
            out.append(
                f"  {svc['service']:<10} outbox {svc['outbox_backlog']}"
                f"  dead letters {svc['dead_letters']}  consumer lag {svc['consumer_lag']}"
                + restarted
            )
            circuits = [f"{c['carrier']} {c['circuit']}" for c in svc.get("carriers") or []]
            if circuits:
                out.append(f"  {'':<10} carriers: {', '.join(circuits)}")
    return "\n".join(out)
