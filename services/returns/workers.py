"""Background loops of the returns service: buying return labels."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from datetime import timedelta
from typing import Any

from services.returns import handlers
from services.returns.storage import repository as repo
from shared.carriers import LabelRequest, Place, Quotes, RateRequest
from shared.carriers.purchase import Choice, LabelPurchaser, Pick, PurchaseState
from shared.db import unit_of_work
from shared.db.notify import ChannelListener
from shared.events import ReturnLabel
from shared.runtime import ServiceRuntime

log = logging.getLogger("waybill.returns.labels")

#: where returns go when the delivery did not say which warehouse sent them
DEFAULT_RETURNS_DESK = Place(country="DE", postal_code="10115")
#: a return parcel, when nobody measured it: one box of the size most returns fit
RETURN_PARCEL = {"weight_grams": 1000, "length_mm": 400, "width_mm": 300, "height_mm": 200}


async def buy_return_labels(runtime: ServiceRuntime) -> None:
    purchaser: LabelPurchaser = runtime.extras["purchaser"]
    lease = timedelta(seconds=runtime.extras["carrier_timeout_seconds"] * 4 + 10)
    async with ChannelListener(runtime.dsn, repo.LABELS_CHANNEL) as listener:
        while True:
            async with runtime.pool.acquire() as conn:
                due = await repo.lease_due_labels(conn, limit=16, lease=lease)
            if not due:
                await listener.wait(seconds=0.5)
                continue
            await asyncio.gather(*(_purchase(runtime, purchaser, r) for r in due))


def _origin(ret: dict[str, Any]) -> Place:
    customer = ret["customer_address"]
    return Place(country=customer["country"], postal_code=customer["postal_code"])


def _desk(ret: dict[str, Any]) -> Place:
    return Place(**ret["return_to"]) if ret["return_to"] else DEFAULT_RETURNS_DESK


def pick_return_rate(quotes: Quotes, delivered_by: str | None) -> Pick | None:
    """The carrier that delivered takes it back when it quotes (its cheapest service);
    otherwise the cheapest of the others."""
    own = [r for r in quotes.rates if r.carrier == delivered_by] or quotes.rates
    if not own:
        return None
    rate = min(own, key=lambda r: (r.price, r.transit_days, r.carrier, r.service))
    return Pick(rate.carrier, rate.service)


def _label_request(ret: dict[str, Any], choice: Choice) -> LabelRequest:
    desk = _desk(ret)
    return LabelRequest(
        carrier=choice.carrier,
        service=choice.service,
        ship_from=_origin(ret),
        ship_to={
            "name": f"Returns {ret['warehouse_id'] or 'desk'}",
            "line1": f"Returns, {ret['rma']}",
            "city": "Returns desk",
            "postal_code": desk.postal_code,
            "country": desk.country,
        },
        parcels=[RETURN_PARCEL],
        reference=ret["rma"],
    )


async def _purchase(
    runtime: ServiceRuntime, purchaser: LabelPurchaser, ret: dict[str, Any]
) -> None:
    choice = None
    if ret["label_carrier"] is not None:
        choice = Choice(ret["label_carrier"], ret["label_service"], ret["idempotency_key"])
    state = PurchaseState(
        key_prefix=f"waybill-return-{ret['return_id']}",
        choice=choice,
        pinned=ret["carrier_pinned"],
        attempts=ret["attempts"],
    )

    async def quote(carriers: Collection[str] | None) -> Quotes:
        return await purchaser.gateway.rates(
            RateRequest(
                ship_from=_origin(ret),
                ship_to=_desk(ret),
                parcels=[RETURN_PARCEL],
                carriers=tuple(sorted(carriers)) if carriers is not None else None,
            )
        )

    async def save_choice(chosen: Choice) -> None:
        async with runtime.pool.acquire() as conn:
            await repo.choose_label(
                conn,
                ret["return_id"],
                carrier=chosen.carrier,
                service=chosen.service,
                idempotency_key=chosen.idempotency_key,
            )

    attempt = await purchaser.attempt(
        state,
        quote=quote,
        choose=lambda quotes: pick_return_rate(quotes, ret["carrier"]),
        label_request=lambda chosen: _label_request(ret, chosen),
        save_choice=save_choice,
    )
    done = attempt.state
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        if attempt.label is not None:
            label = ReturnLabel(
                carrier=attempt.label.carrier,
                tracking_number=attempt.label.tracking_number,
                label_url=attempt.label.label_url,
            )
            await handlers.approve_with_label(uow, ret, label, attempts=done.attempts)
        elif attempt.exhausted:
            if await repo.PURCHASES.give_up(uow.conn, ret["return_id"], done, attempt.error or ""):
                log.error(
                    "return label for %s failed %d times; waiting for ops: %s",
                    ret["return_id"],
                    done.attempts,
                    attempt.error,
                )
        else:
            log.warning(
                "return label for %s not bought (%s); next try in %.1f s",
                ret["return_id"],
                attempt.error,
                attempt.retry_in or 0,
            )
            await repo.PURCHASES.save_attempt(uow.conn, ret["return_id"], attempt)


async def decide_overdue_requests(runtime: ServiceRuntime) -> None:
    """Reject, for good, pending requests whose order or delivery never showed up in time."""
    window_days: int = runtime.extras["return_window_days"]
    while True:
        async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
            for ret in await repo.lease_overdue_pending(uow.conn, limit=100):
                await handlers.decide(
                    uow, ret, window_days=window_days, now=runtime.clock.now(), final=True
                )
        await asyncio.sleep(0.5)
