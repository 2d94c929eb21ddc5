"""Background loops of the returns service: buying return labels."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

from services.returns import handlers
from services.returns.storage import repository as repo
from shared.carriers import CarrierError, CarrierGateway, LabelRequest, Place, RateRequest
from shared.carriers.resilience import RetryPolicy
from shared.db import unit_of_work
from shared.db.notify import ChannelListener
from shared.events import ReturnLabel
from shared.runtime import ServiceRuntime

log = logging.getLogger("waybill.returns.labels")

#: how return-label purchases back off between attempts
LABEL_RETRY = RetryPolicy(base_seconds=0.5, cap_seconds=60.0)

#: where returns go when the delivery did not say which warehouse sent them
DEFAULT_RETURNS_DESK = Place(country="DE", postal_code="10115")


async def buy_return_labels(runtime: ServiceRuntime) -> None:
    gateway: CarrierGateway = runtime.extras["carriers"]
    lease = timedelta(seconds=runtime.extras["carrier_timeout_seconds"] * 4 + 10)
    async with ChannelListener(runtime.dsn, repo.LABELS_CHANNEL) as listener:
        while True:
            async with runtime.pool.acquire() as conn:
                due = await repo.lease_due_labels(conn, limit=16, lease=lease)
            if not due:
                await listener.wait(seconds=0.5)
                continue
            await asyncio.gather(*(_purchase(runtime, gateway, r) for r in due))


async def _purchase(runtime: ServiceRuntime, gateway: CarrierGateway, ret: dict[str, Any]) -> None:
    customer = ret["ship_to"]
    origin = Place(country=customer["country"], postal_code=customer["postal_code"])
    desk = DEFAULT_RETURNS_DESK
    parcels = [{"weight_grams": 1000, "length_mm": 400, "width_mm": 300, "height_mm": 200}]
    try:
        quotes = await gateway.rates(RateRequest(ship_from=origin, ship_to=desk, parcels=parcels))
        rates = quotes.rates
        # the carrier that delivered takes it back, when it quotes; the cheapest service
        own = [r for r in rates if r.carrier == ret["carrier"]] or rates
        if not own:
            raise CarrierError("no carrier quoted a return", retryable=True)
        rate = min(own, key=lambda r: (r.price, r.transit_days))
        label = await gateway.buy_label(
            LabelRequest(
                carrier=rate.carrier,
                service=rate.service,
                ship_from=origin,
                ship_to={
                    "name": f"Returns {ret['warehouse_id'] or 'desk'}",
                    "line1": f"Returns, {ret['rma']}",
                    "city": "Returns desk",
                    "postal_code": desk.postal_code,
                    "country": desk.country,
                },
                parcels=parcels,
                reference=ret["rma"],
            ),
            idempotency_key=ret["idempotency_key"],
        )
    except CarrierError as exc:
        delay = LABEL_RETRY.delay(max(1, ret["attempts"]), retry_after=exc.retry_after)
        log.warning(
            "return label for %s failed (%s); retry in %.1f s", ret["return_id"], exc, delay
        )
        async with runtime.pool.acquire() as conn:
            await repo.postpone(
                conn, ret["return_id"], delay=timedelta(seconds=delay), error=str(exc)
            )
        return
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        await handlers.approve_with_label(
            uow,
            ret,
            ReturnLabel(
                carrier=label.carrier,
                tracking_number=label.tracking_number,
                label_url=label.label_url,
            ),
        )
