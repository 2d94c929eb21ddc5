"""An order's status: which events move it, and that it never moves backwards."""

from __future__ import annotations

from typing import Literal

OrderStatus = Literal[
    "received",
    "accepted",
    "rejected",
    "backordered",
    "reserved",
    "picking",
    "packed",
    "label_created",
    "shipped",
    "delivered",
    "cancelled",
    "return_requested",
    "returned",
    "exchanged",
]

_RANK: dict[str, int] = {
    "received": 0,
    "rejected": 1,
    "accepted": 1,
    "backordered": 2,
    "reserved": 3,
    "picking": 4,
    "packed": 5,
    "label_created": 6,
    "shipped": 7,
    "delivered": 8,
    "return_requested": 9,
    "returned": 10,
    "exchanged": 11,
}

#: Statuses after which nothing but history changes.
TERMINAL: frozenset[str] = frozenset({"rejected", "cancelled"})


def advance(current: str, observed: str) -> str:
    """The status after observing ``observed``: forward only; cancelled and rejected stay.

    Events of one order arrive on several topics, so a later stage can be seen before
    an earlier one; the earlier one then only adds to the timeline.
    """
    if current in TERMINAL:
        return current
    if observed == "cancelled":
        return observed
    if observed not in _RANK:
        return current  # an event that only adds to the history (an exception, a refund)
    if observed == "backordered" and current == "reserved":
        return current
    return observed if _RANK[observed] > _RANK[current] else current


#: statuses at which the parcel is (or was) in a carrier's hands
HANDED_OVER: frozenset[str] = frozenset(
    {"shipped", "delivered", "return_requested", "returned", "exchanged"}
)


CancellationRefusal = Literal["already_shipped", "unknown_order", "already_cancelled"]


def cancellation_refusal(status: str | None) -> CancellationRefusal | None:
    """Why an order can no longer be cancelled, or None when it can."""
    if status is None or status == "rejected":
        return "unknown_order"
    if status == "cancelled":
        return "already_cancelled"
    if status in HANDED_OVER:
        return "already_shipped"
    return None
