"""Background loops of the orders service."""

from __future__ import annotations

import asyncio

from services.orders import handlers
from services.orders.storage import repository as repo
from shared.db import unit_of_work
from shared.runtime import ServiceRuntime


async def watch_return_decisions(runtime: ServiceRuntime) -> None:
    """Breach the return-decision SLA of requests nobody decided by their deadline (once)."""
    interval: float = runtime.extras["sla_check_seconds"]
    while True:
        now = runtime.clock.now()
        async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
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
