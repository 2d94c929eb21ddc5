"""The return decision: approved if and only if requested inside the window after delivery.

Pure rules, no I/O. ``requested_at`` and the carrier's ``delivered_at`` decide; the
clock only guards against requests dated in the future.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

RejectionReason = Literal[
    "window_expired", "not_delivered", "unknown_order", "quantity_exceeds_delivered", "invalid"
]

#: how far in the future a requested_at may lie (clocks disagree a little)
ALLOWED_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class Delivery:
    shipment_id: str
    delivered_at: datetime
    lines: Mapping[str, int]  # sku -> quantity this shipment held


@dataclass(frozen=True)
class Decision:
    approved: bool
    reason: RejectionReason | None = None
    #: the delivery whose window applied to each sku
    deliveries: Mapping[str, Delivery] | None = None


def return_window_closes_at(delivered_at: datetime, window_days: int) -> datetime:
    return delivered_at + timedelta(days=window_days)


def decide_return(
    *,
    requested_at: datetime,
    lines: Mapping[str, int],
    order_known: bool,
    deliveries: Sequence[Delivery],
    already_returned: Mapping[str, int],
    window_days: int,
    now: datetime,
) -> Decision:
    """One decision, one reason; the reasons are checked from the most basic one on."""
    if requested_at > now + ALLOWED_SKEW:
        return Decision(False, "invalid")
    if not order_known:
        return Decision(False, "unknown_order")
    applied: dict[str, Delivery] = {}
    for sku, quantity in lines.items():
        # only deliveries recorded by the time of the request count for it
        holding = [
            d for d in deliveries if d.lines.get(sku, 0) > 0 and d.delivered_at <= requested_at
        ]
        if not holding:
            return Decision(False, "not_delivered")
        delivered = sum(d.lines[sku] for d in holding)
        if already_returned.get(sku, 0) + quantity > delivered:
            return Decision(False, "quantity_exceeds_delivered")
        # the latest delivery of the sku is the one whose window is still the longest
        applied[sku] = max(holding, key=lambda d: d.delivered_at)
    for delivery in applied.values():
        if requested_at > return_window_closes_at(delivery.delivered_at, window_days):
            return Decision(False, "window_expired")
    return Decision(True, deliveries=applied)
