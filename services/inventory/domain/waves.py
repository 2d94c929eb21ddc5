"""Waves and walking order: pure rules, no I/O.

Reservations wait in a per-warehouse queue until they are released to the floor as one
pick list (a wave): as soon as enough orders wait to fill a wave, or when the oldest
waiting order has waited long enough. A pick list is walked bin by bin: zone, then
aisle, then shelf, parsed from bin names such as ``A-03-2``; bins named otherwise
(``RECEIVING``) come after the parsed ones, in natural order.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from services.inventory.domain.allocation import natural_key

WaveReason = Literal["size", "age"]

_BIN_PARTS = re.compile(r"[\s\-./_:]+")

#: the sort key of a bin: (0, zone, aisle, shelf, rest) when parsed, else (1, natural key)
BinKey = tuple[object, ...]


@dataclass(frozen=True)
class WavePolicy:
    """When waiting orders go to the floor: a full wave, or the oldest waited long enough."""

    max_orders: int
    max_age: timedelta

    def __post_init__(self) -> None:
        if self.max_orders < 1:
            raise ValueError("a wave holds at least one order")
        if self.max_age <= timedelta(0):
            raise ValueError("the longest wait must be positive")


@dataclass(frozen=True)
class WaitingOrder:
    """An order's reservation in one warehouse, waiting for a pick list since ``queued_at``."""

    order_id: str
    warehouse_id: str
    queued_at: datetime


@dataclass(frozen=True)
class Wave:
    warehouse_id: str
    order_ids: tuple[str, ...]
    reason: WaveReason


@dataclass(frozen=True)
class PickLine:
    """One line of a pick list: take ``quantity`` of ``sku`` from ``bin`` for ``order_id``."""

    order_id: str
    sku: str
    bin: str
    quantity: int


def plan_waves(waiting: Iterable[WaitingOrder], *, policy: WavePolicy, now: datetime) -> list[Wave]:
    """The waves due at ``now``, per warehouse, first come first served.

    Every full wave of ``policy.max_orders`` goes out at once; what is left (fewer
    orders) goes out together when its oldest order has waited ``policy.max_age``.
    """
    by_warehouse: dict[str, list[WaitingOrder]] = defaultdict(list)
    for order in waiting:
        by_warehouse[order.warehouse_id].append(order)
    waves: list[Wave] = []
    for warehouse_id in sorted(by_warehouse):
        queue = sorted(by_warehouse[warehouse_id], key=lambda o: (o.queued_at, o.order_id))
        while len(queue) >= policy.max_orders:
            wave, queue = queue[: policy.max_orders], queue[policy.max_orders :]
            waves.append(Wave(warehouse_id, tuple(o.order_id for o in wave), "size"))
        if queue and now - queue[0].queued_at >= policy.max_age:
            waves.append(Wave(warehouse_id, tuple(o.order_id for o in queue), "age"))
    return waves


def next_wave_due(waiting: Iterable[WaitingOrder], *, policy: WavePolicy) -> datetime | None:
    """When the oldest waiting order of any warehouse reaches ``policy.max_age``."""
    oldest = min((o.queued_at for o in waiting), default=None)
    return None if oldest is None else oldest + policy.max_age


def bin_key(bin: str) -> BinKey:
    """Walking position of a bin: zone, aisle, shelf from ``A-03-2``; else natural order."""
    parts = [p for p in _BIN_PARTS.split(bin.strip()) if p]
    if len(parts) >= 3 and parts[0].isalnum() and parts[1].isdigit() and parts[2].isdigit():
        zone, aisle, shelf, rest = parts[0], int(parts[1]), int(parts[2]), parts[3:]
        return (0, natural_key(zone), aisle, shelf, natural_key("-".join(rest)))
    return (1, natural_key(bin))


def walking_order(lines: Iterable[PickLine]) -> list[PickLine]:
    """Lines in the order a picker walks: by bin, then SKU, then order."""
    return sorted(lines, key=lambda line: (bin_key(line.bin), line.sku, line.order_id))


def lines_of_wave(wave: Wave, queued: Sequence[PickLine]) -> list[PickLine]:
    """The wave's queued lines in walking order (lines of other orders are left out)."""
    members = set(wave.order_ids)
    return walking_order(line for line in queued if line.order_id in members)
