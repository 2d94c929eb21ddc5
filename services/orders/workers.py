"""Background loops of the orders service."""

from __future__ import annotations

import asyncio

from services.orders import handlers, sla
from services.orders.storage import repository as repo
from shared.db import unit_of_work
from shared.runtime import ServiceRuntime


async def watch_slas(runtime: ServiceRuntime) -> None:
    """Judge every open deadline against the clock: own stages (accept, dispatch) breach
    once when overdue, stages past 80 % of their window become at risk, and return
    requests nobody decided by their deadline breach the return-decision SLA (once)."""
    interval: float = runtime.extras["sla_check_seconds"]
    while True:
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
        runtime.extras["sla_checks"] = runtime.extras.get("sla_checks", 0) + 1
        await asyncio.sleep(interval)
