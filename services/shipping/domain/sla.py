"""The delivery promise: when an order counts as delivered late. Pure rules."""

from __future__ import annotations

from datetime import datetime


def delivery_breached_at(
    *, deliver_by: datetime, delivered_at: datetime | None, now: datetime
) -> datetime | None:
    """When the breach was observed, or None while the promise holds.

    Delivered after ``deliver_by``: at the delivery. Not delivered and ``deliver_by``
    has passed: now.
    """
    if delivered_at is not None:
        return delivered_at if delivered_at > deliver_by else None
    return now if now > deliver_by else None
