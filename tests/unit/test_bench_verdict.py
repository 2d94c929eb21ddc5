"""The benchmark's verdict: a run whose orders were not each labelled exactly once, or whose
stock did not move by exactly the units ordered, is not a result."""

from __future__ import annotations

from collections import Counter

from waybill.bench import Tally, verdict

ORDERS = ["o-1", "o-2", "o-3"]


def stock(on_hand: int, reserved: int = 0) -> dict[str, dict[str, int]]:
    return {"SKU": {"received": 10, "ordered": 6, "on_hand": on_hand, "reserved": reserved}}


def test_a_clean_run_has_no_problems() -> None:
    checks = verdict(
        ORDERS,
        labelled=set(ORDERS),
        labels_at_carrier=Counter(ORDERS),
        stock=stock(4),
        dead_letters={"orders": 0},
    )
    assert checks["problems"] == []
    assert checks["units_shipped"] == checks["units_ordered"] == 6
    assert checks["labels_at_carrier"] == 3


def test_a_second_label_at_the_carrier_fails_the_run() -> None:
    checks = verdict(
        ORDERS,
        labelled=set(ORDERS),
        labels_at_carrier=Counter([*ORDERS, "o-2"]),
        stock=stock(4),
        dead_letters={},
    )
    assert checks["problems"] == ["1 orders have more than one label at the carrier"]


def test_lost_orders_labels_for_strangers_and_stock_drift_are_each_named() -> None:
    checks = verdict(
        ORDERS,
        labelled={"o-1"},
        labels_at_carrier=Counter(["o-1", "o-2", "elsewhere"]),
        stock=stock(3, reserved=1),
        dead_letters={"inventory": 2},
        undecided=["o-3"],
    )
    problems = checks["problems"]
    assert "2 orders have no shipments.label-created" in problems
    assert "1 orders have no label at the carrier" in problems
    assert "1 labels at the carrier for orders never placed" in problems
    assert any(p.startswith("stock of SKU moved wrongly") and "expected 4" in p for p in problems)
    assert "dead letters: {'inventory': 2}" in problems
    assert "1 orders have no return decision" in problems


def test_a_tally_counts_each_wanted_key_once_whichever_topic_carried_it() -> None:
    approved: list[str] = ["stranger", "o-1"]
    rejected: list[str] = []
    tally = Tally([approved, rejected], ORDERS)
    assert tally.done() == 1 and not tally.complete()
    rejected.append("o-1")  # seen again on another topic: still one order
    approved.append("o-2")
    assert tally.done() == 2
    rejected.append("o-3")
    assert tally.complete() and tally.total == 3
