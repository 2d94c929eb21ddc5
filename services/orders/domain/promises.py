"""Delivery promises: when an order must be handed to the carrier and delivered.

Pure rules, no I/O. Business days are Monday to Friday in the warehouse's time zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from shared.events import Promise


@dataclass(frozen=True)
class PromisePolicy:
    """A shop's promise settings (DESIGN.md, SLAs); the defaults are the house promise."""

    time_zone: str = "Europe/Berlin"
    standard_cutoff: time = time(14, 0)
    express_cutoff: time = time(16, 0)
    #: when the carrier collects: the latest moment a parcel counts as dispatched that day
    collection_time: time = time(18, 0)
    standard_business_days: int = 5
    express_business_days: int = 2


def is_business_day(day: datetime) -> bool:
    return day.weekday() < 5


def next_business_day(day: datetime) -> datetime:
    day += timedelta(days=1)
    while not is_business_day(day):
        day += timedelta(days=1)
    return day


def add_business_days(start: datetime, days: int) -> datetime:
    current = start
    for _ in range(days):
        current = next_business_day(current)
    return current


def promise_for(placed_at: datetime, service_level: str, policy: PromisePolicy) -> Promise:
    """Dispatch by the cut-off rule, deliver within N business days of ``placed_at``."""
    zone = ZoneInfo(policy.time_zone)
    local = placed_at.astimezone(zone)
    cutoff = policy.express_cutoff if service_level == "express" else policy.standard_cutoff
    dispatch_day = local
    if not is_business_day(local) or local.time() >= cutoff:
        dispatch_day = next_business_day(local)
    dispatch_by = datetime.combine(dispatch_day.date(), policy.collection_time, tzinfo=zone)
    days = (
        policy.express_business_days
        if service_level == "express"
        else policy.standard_business_days
    )
    deliver_day = add_business_days(local, days)
    deliver_by = datetime.combine(deliver_day.date(), time(23, 59, 59), tzinfo=zone)
    return Promise(dispatch_by=dispatch_by, deliver_by=deliver_by)
