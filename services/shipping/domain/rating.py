"""Rate shopping against the delivery promise: pure rules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from shared.carriers import Rate


def add_business_days(start: datetime, days: int) -> datetime:
    current = start
    added = 0
    while added < days:
        current += timedelta(days=1)
        if current.weekday() < 5:
            added += 1
    return current


def estimated_delivery(rate: Rate, ship_at: datetime) -> datetime:
    """End of the day the carrier's transit days (business days) bring the parcel."""
    day = add_business_days(ship_at, rate.transit_days)
    return datetime.combine(day.date(), time(20, 0), tzinfo=ship_at.tzinfo)


@dataclass(frozen=True)
class RateChoice:
    rate: Rate
    estimated_delivery: datetime
    at_risk: bool


def choose_rate(
    rates: Sequence[Rate], *, ship_at: datetime, deliver_by: datetime | None
) -> RateChoice | None:
    """The cheapest service that meets ``deliver_by``; else the fastest, at risk."""
    if not rates:
        return None
    quoted = [(r, estimated_delivery(r, ship_at)) for r in rates]
    if deliver_by is not None:
        meeting = [(r, eta) for r, eta in quoted if eta <= deliver_by]
        if meeting:
            rate, eta = min(meeting, key=lambda q: (q[0].price, q[1], q[0].carrier, q[0].service))
            return RateChoice(rate, eta, at_risk=False)
        rate, eta = min(quoted, key=lambda q: (q[1], q[0].price, q[0].carrier, q[0].service))
        return RateChoice(rate, eta, at_risk=True)
    rate, eta = min(quoted, key=lambda q: (q[0].price, q[1], q[0].carrier, q[0].service))
    return RateChoice(rate, eta, at_risk=False)
