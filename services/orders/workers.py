"""Background loops of the orders service."""

from __future__ import annotations

import asyncio

from services.orders import handlers, redrive, sla
from services.orders.storage import repository as repo
from shared import metrics
from shared.db import unit_of_work
from shared.runtime import ServiceRuntime

#: the stages of an order's SLA (the return decision's is per return)
_ORDER_STAGES = ("accept", "dispatch", "delivery")


async def watch_slas(runtime: ServiceRuntime) -> None:
    """Judge every open deadline against the clock: own stages (accept, dispatch) breach
    once when overdue, stages past 80 % of their window become at risk, and return
    requests nobody decided by their deadline breach the return-decision SLA (once); then
    overdue orders are re-driven once and reported if that does not move them."""
    interval: float = runtime.extras["sla_check_seconds"]
    at_risk: dict[str, int] = {}

    def at_risk_now() -> list[tuple[float, dict[str, str]]]:
        return [(float(at_risk.get(stage, 0)), {"stage": stage}) for stage in _ORDER_STAGES]

    metrics.observe("waybill.sla.at_risk", at_risk_now)
    try:
        while True:
            await _check_once(runtime)
            async with runtime.pool.acquire() as conn:
                at_risk.clear()
                at_risk.update(await repo.at_risk_counts(conn))
            runtime.extras["sla_checks"] = runtime.extras.get("sla_checks", 0) + 1
            await asyncio.sleep(interval)
    finally:
        metrics.forget(at_risk_now)


async def _check_once(runtime: ServiceRuntime) -> None:
    """One round: breaches, at-risk marks, overdue return decisions, re-drives."""
    now = runtime.clock.now()
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        await sla.check(uow, now=now)
        for overdue in await repo.overdue_return_decisions(uow.conn, now=now, limit=500):
            await handlers.breach_return_decision(
                uow,
                return_id=overdue["return_id"],
                order_id=overdue["order_id"],
                deadline=overdue["deadline"],
                at=now,
            )
    # in its own transaction: a failed re-drive must not undo the breaches above
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        await redrive.check(uow, now=now, wait=runtime.extras["redrive_wait"])
