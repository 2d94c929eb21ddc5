"""Which overdue orders are re-driven, and with which events. Pure rules, no I/O.

The re-drive (services/orders/redrive.py) is the last resort for an event the broker lost:
it is for an order that waits on an event, not for one that waits on the world. The
order's status (the furthest event orders has seen) and the overdue stage say what the
order waits for:

- a known reason, which no event can end: stock (``backordered``) or the carrier (a label
  bought and no first scan yet, ``label_created``; handed over and not delivered yet,
  ``shipped``). Such an order is a breach like any other, and is not re-driven;
- an answer from another service, which a lost event can hold back. The re-drive then
  publishes again the events the rest of the stage depends on from that status on: the
  one the next service needs to act, its answer to orders, and the ones after it up to the
  event that meets the stage (a re-drive is once per order and stage, and one loss often
  takes several consecutive events with it). Never the order's earlier history, nor the
  events of other stages.

A topic a service has no rows of for the order costs nothing: every service copies only
its own published events of these topics (shared/messaging/redrive.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import get_args

from services.orders.domain.status import OrderStatus
from shared import topics

#: every status an order can have (and ``unknown``: a return for an order orders never saw)
STATUSES: frozenset[str] = frozenset(get_args(OrderStatus)) | {"unknown"}

#: waiting for the carrier: a label bought and no first scan yet, or handed over and not
#: delivered yet. The carrier, not a lost event, is what the order waits on.
WITH_THE_CARRIER: frozenset[str] = frozenset({"label_created", "shipped"})

#: per stage, the statuses at which an overdue order is not re-driven
NOT_REDRIVEN: Mapping[str, frozenset[str]] = {
    # met by orders itself when it accepts the order: nothing another service sends holds it
    "accept": STATUSES,
    # waiting for stock (inventory reserves it as stock arrives), or for the carrier
    "dispatch": frozenset({"backordered"}) | WITH_THE_CARRIER,
    "delivery": frozenset({"backordered"}) | WITH_THE_CARRIER,
    # a return waits on returns' decision whatever the order's status
    "return_decision": frozenset(),
}

# The order flow up to the carrier, step by step: what each step's producer needs, its
# answer, and what comes after it up to the carrier's first scan.
_TO_RESERVATION = (
    topics.ORDERS_ACCEPTED,  # orders -> inventory (reserves), shipping, returns (keep it)
    topics.STOCK_RESERVED,  # inventory -> orders: the answer
    topics.STOCK_BACKORDERED,  # (or this one)
)
_TO_LABEL = (
    topics.ORDERS_ACCEPTED,  # orders -> shipping: it buys a label only for an order it knows
    topics.ORDERS_PACKED,  # inventory -> shipping: what to buy the label for
    topics.SHIPMENTS_LABEL_CREATED,  # shipping -> orders: the answer
)
_TO_CARRIER: dict[str, tuple[str, ...]] = {
    "received": _TO_RESERVATION + _TO_LABEL[1:],
    "accepted": _TO_RESERVATION + _TO_LABEL[1:],
    # waiting for pick lists, picking and packing (the pick lists themselves are keyed by
    # warehouse, not by order: the packing is what shipping needs)
    "reserved": _TO_LABEL,
    "picking": _TO_LABEL,
    "packed": _TO_LABEL,
}
#: statuses that show the order went past the carrier's first scan (or its delivery) while
#: orders did not see that event itself
_PAST_DELIVERY = ("delivered", "return_requested", "returned", "exchanged")

#: everything a stage can need; also what a status these rules do not know is re-driven with
STAGE_TOPICS: Mapping[str, tuple[str, ...]] = {
    "dispatch": _TO_CARRIER["accepted"] + (topics.SHIPMENTS_SHIPPED,),
    "delivery": _TO_CARRIER["accepted"] + (topics.SHIPMENTS_SHIPPED, topics.SHIPMENTS_DELIVERED),
    "return_decision": (
        topics.ORDERS_ACCEPTED,  # orders -> returns: the order and its lines
        topics.SHIPMENTS_DELIVERED,  # shipping -> returns: the window counts from it
        topics.RETURNS_APPROVED,  # returns -> orders: the decision
        topics.RETURNS_REJECTED,
    ),
}


def is_redriven(stage: str, status: str) -> bool:
    """Whether an order overdue at ``stage`` in ``status`` may be waiting on a lost event."""
    return status not in NOT_REDRIVEN.get(stage, frozenset())


def not_redriven_keys() -> list[str]:
    """The (stage, status) pairs that are not re-driven, as ``stage/status`` (for SQL)."""
    return sorted(f"{stage}/{status}" for stage, of in NOT_REDRIVEN.items() for status in of)


def redrive_topics(stage: str, status: str) -> tuple[str, ...] | None:
    """The topics whose events a re-drive of ``stage`` publishes again for an order in
    ``status``; None for a stage these rules do not know (then: every topic, the re-drive
    as it was before it was narrowed)."""
    if stage == "dispatch":
        if status in _TO_CARRIER:
            return _TO_CARRIER[status] + (topics.SHIPMENTS_SHIPPED,)
        if status in _PAST_DELIVERY:
            return (topics.SHIPMENTS_SHIPPED,)  # delivered, returned: the first scan got lost
    elif stage == "delivery":
        if status in _TO_CARRIER:
            return _TO_CARRIER[status] + (topics.SHIPMENTS_SHIPPED, topics.SHIPMENTS_DELIVERED)
        if status in _PAST_DELIVERY:
            return (topics.SHIPMENTS_DELIVERED,)  # a return came, the delivery got lost
    return STAGE_TOPICS.get(stage)
