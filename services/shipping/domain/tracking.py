"""A shipment's tracking status only moves forward."""

from __future__ import annotations

_RANK: dict[str, int] = {
    "unknown": 0,
    "pre_transit": 1,
    "picked_up": 2,
    "in_transit": 3,
    "delivery_failed": 4,
    "out_for_delivery": 5,
    "available_for_pickup": 6,
    "return_to_sender": 7,
    "delivered": 8,
    "cancelled": 8,
}

#: statuses that show the carrier has the parcel in hand: the first one is "shipped"
IN_CARRIER_HANDS = frozenset(
    {
        "picked_up",
        "in_transit",
        "out_for_delivery",
        "delivery_failed",
        "available_for_pickup",
        "delivered",
        "return_to_sender",
    }
)

#: statuses that need someone's attention
EXCEPTIONS = frozenset({"delivery_failed", "return_to_sender", "cancelled"})

#: nothing moves a shipment out of these
FINAL = frozenset({"delivered", "cancelled"})


def is_known(status: str) -> bool:
    return status in _RANK


def advance(current: str, observed: str) -> str:
    """The status after ``observed``: a late event only adds to the history."""
    if current in FINAL:
        return current
    if observed == "out_for_delivery" and current == "delivery_failed":
        return observed  # a new delivery attempt after a failed one
    return observed if _RANK.get(observed, 0) > _RANK.get(current, 0) else current
