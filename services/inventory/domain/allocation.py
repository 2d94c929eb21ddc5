"""Where an order's goods come from: pure rules, no I/O.

Prefer one warehouse that can ship the whole order, the nearest to the destination
(same country first, then the longest shared postal-code prefix); otherwise split
across the fewest warehouses. An order that cannot be filled at all reserves nothing
and is backordered for what is missing: holding part of the stock for an order that
cannot ship would starve orders that can.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

#: above this many warehouses, splits of three or more are found greedily
EXACT_SPLIT_LIMIT = 12


@dataclass(frozen=True)
class Warehouse:
    warehouse_id: str
    country: str
    postal_code: str


@dataclass(frozen=True)
class BinStock:
    warehouse_id: str
    sku: str
    bin: str
    available: int


@dataclass(frozen=True)
class Pick:
    warehouse_id: str
    sku: str
    bin: str
    quantity: int


@dataclass(frozen=True)
class AllocationPlan:
    picks: tuple[Pick, ...]
    missing: Mapping[str, int]

    @property
    def complete(self) -> bool:
        return not self.missing

    def warehouses(self) -> list[str]:
        return sorted({p.warehouse_id for p in self.picks})


def _shared_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def rank_warehouses(
    warehouses: Iterable[Warehouse], *, country: str, postal_code: str
) -> list[Warehouse]:
    """Nearest first: same country, then longest shared postal prefix, then by id."""
    return sorted(
        warehouses,
        key=lambda w: (
            w.country != country,
            -_shared_prefix(w.postal_code, postal_code) if w.country == country else 0,
            w.warehouse_id,
        ),
    )


@lru_cache(maxsize=65_536)
def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort "A-2" before "A-10": digits compare as numbers."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part.lower())
        for part in re.split(r"(\d+)", text)
        if part
    )


def _take(wanted: Mapping[str, int], bins: list[BinStock]) -> tuple[list[Pick], dict[str, int]]:
    """Take ``wanted`` from one warehouse's bins in walking order; return picks and shortfall."""
    by_sku: dict[str, list[BinStock]] = defaultdict(list)
    for b in bins:
        by_sku[b.sku].append(b)
    picks: list[Pick] = []
    short: dict[str, int] = {}
    for sku, quantity in wanted.items():
        remaining = quantity
        for b in sorted(by_sku.get(sku, []), key=lambda b: natural_key(b.bin)):
            if remaining == 0:
                break
            take = min(remaining, b.available)
            if take > 0:
                picks.append(Pick(b.warehouse_id, sku, b.bin, take))
                remaining -= take
        if remaining:
            short[sku] = remaining
    return picks, short


def plan_allocation(
    wanted: Mapping[str, int], stock: Iterable[BinStock], ranked: list[Warehouse]
) -> AllocationPlan:
    """Allocate ``wanted`` (sku -> quantity) from ``stock`` given warehouses nearest first."""
    by_warehouse: dict[str, list[BinStock]] = defaultdict(list)
    for b in stock:
        if b.available > 0:
            by_warehouse[b.warehouse_id].append(b)
    for warehouse in ranked:
        picks, short = _take(wanted, by_warehouse.get(warehouse.warehouse_id, []))
        if not short:
            return AllocationPlan(tuple(picks), {})
    # Split: the fewest warehouses that together have it all, nearest combination first.
    # An exact search over combinations is cheap for real warehouse networks; past
    # EXACT_SPLIT_LIMIT warehouses a greedy cover keeps the cost bounded.
    for size in range(2, len(ranked) + 1):
        if len(ranked) > EXACT_SPLIT_LIMIT and size > 2:
            break
        for combination in combinations(ranked, size):
            split = _take_from(wanted, combination, by_warehouse)
            if split is not None:
                return AllocationPlan(tuple(split), {})
    return _greedy_split(wanted, ranked, by_warehouse)


def _take_from(
    wanted: Mapping[str, int],
    warehouses: Iterable[Warehouse],
    by_warehouse: Mapping[str, list[BinStock]],
) -> list[Pick] | None:
    """All of ``wanted`` from these warehouses, nearest first, each one needed; else None."""
    remaining = dict(wanted)
    picks: list[Pick] = []
    for warehouse in warehouses:
        taken, remaining = _take(remaining, by_warehouse.get(warehouse.warehouse_id, []))
        if not taken:
            return None  # a warehouse that adds nothing: a smaller combination does it
        picks.extend(taken)
        if not remaining:
            return picks
    return None


def _greedy_split(
    wanted: Mapping[str, int],
    ranked: list[Warehouse],
    by_warehouse: Mapping[str, list[BinStock]],
) -> AllocationPlan:
    remaining = dict(wanted)
    picks_all: list[Pick] = []
    candidates = list(ranked)
    while remaining and candidates:
        best = max(
            candidates,
            key=lambda w: sum(
                p.quantity for p in _take(remaining, by_warehouse.get(w.warehouse_id, []))[0]
            ),
        )
        picks, short = _take(remaining, by_warehouse.get(best.warehouse_id, []))
        if not picks:
            break
        picks_all.extend(picks)
        remaining = short
        candidates.remove(best)
    if remaining:
        return AllocationPlan((), remaining)
    return AllocationPlan(tuple(picks_all), {})
