"""Waves and walking order: pure rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.inventory.domain.waves import (
    PickLine,
    WaitingOrder,
    Wave,
    WavePolicy,
    bin_key,
    lines_of_wave,
    next_wave_due,
    plan_waves,
    walking_order,
)

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POLICY = WavePolicy(max_orders=3, max_age=timedelta(seconds=60))


def waiting(order_id: str, seconds: float, warehouse_id: str = "BER-1") -> WaitingOrder:
    return WaitingOrder(order_id, warehouse_id, T0 + timedelta(seconds=seconds))


def test_no_wave_while_the_wave_is_not_full_and_nobody_waited_long() -> None:
    queue = [waiting("o1", 0), waiting("o2", 10)]
    assert plan_waves(queue, policy=POLICY, now=T0 + timedelta(seconds=59)) == []


def test_a_full_wave_goes_out_at_once_oldest_orders_first() -> None:
    queue = [waiting("o4", 3), waiting("o2", 1), waiting("o1", 0), waiting("o3", 2)]
    waves = plan_waves(queue, policy=POLICY, now=T0 + timedelta(seconds=5))
    assert waves == [Wave("BER-1", ("o1", "o2", "o3"), "size")]


def test_several_full_waves_and_an_old_remainder() -> None:
    queue = [waiting(f"o{i}", i) for i in range(7)]
    assert len(plan_waves(queue, policy=POLICY, now=T0 + timedelta(seconds=65))) == 2
    waves = plan_waves(queue, policy=POLICY, now=T0 + timedelta(seconds=66))
    assert waves == [
        Wave("BER-1", ("o0", "o1", "o2"), "size"),
        Wave("BER-1", ("o3", "o4", "o5"), "size"),
        Wave("BER-1", ("o6",), "age"),
    ]


def test_the_oldest_order_releases_everything_waiting_with_it() -> None:
    queue = [waiting("old", 0), waiting("new", 50)]
    assert plan_waves(queue, policy=POLICY, now=T0 + timedelta(seconds=60)) == [
        Wave("BER-1", ("old", "new"), "age")
    ]
    # one second earlier nobody has waited a minute yet
    assert plan_waves(queue, policy=POLICY, now=T0 + timedelta(seconds=59.9)) == []


def test_warehouses_have_their_own_waves() -> None:
    queue = [
        waiting("b1", 0, "BER-1"),
        waiting("b2", 1, "BER-1"),
        waiting("b3", 2, "BER-1"),
        waiting("m1", 0, "MUC-1"),
        waiting("m2", 1, "MUC-1"),
    ]
    waves = plan_waves(queue, policy=POLICY, now=T0 + timedelta(seconds=10))
    assert waves == [Wave("BER-1", ("b1", "b2", "b3"), "size")]


def test_next_wave_due_is_when_the_oldest_reaches_the_age_limit() -> None:
    assert next_wave_due([], policy=POLICY) is None
    assert next_wave_due([waiting("a", 30), waiting("b", 5)], policy=POLICY) == T0 + timedelta(
        seconds=65
    )


@pytest.mark.parametrize(("max_orders", "max_age"), [(0, timedelta(seconds=1)), (1, timedelta(0))])
def test_a_policy_must_be_able_to_release_something(max_orders: int, max_age: timedelta) -> None:
    with pytest.raises(ValueError):
        WavePolicy(max_orders=max_orders, max_age=max_age)


def test_bins_are_walked_by_zone_aisle_and_shelf_as_numbers() -> None:
    bins = ["B-01-1", "A-10-1", "A-03-2", "A-3-10", "A-03-1", "a-02-5"]
    assert sorted(bins, key=bin_key) == ["a-02-5", "A-03-1", "A-03-2", "A-3-10", "A-10-1", "B-01-1"]


def test_bins_named_otherwise_come_after_in_natural_order() -> None:
    bins = ["RECEIVING", "DOCK-10", "A-01-1", "DOCK-9", "Z2-01-1"]
    assert sorted(bins, key=bin_key) == ["A-01-1", "Z2-01-1", "DOCK-9", "DOCK-10", "RECEIVING"]


def test_other_separators_and_a_bin_position_are_understood() -> None:
    assert sorted(["A.03.2", "A 03 1", "A-03-1-B", "A-03-1-A"], key=bin_key) == [
        "A 03 1",
        "A-03-1-A",
        "A-03-1-B",
        "A.03.2",
    ]


def test_walking_order_sorts_by_bin_then_sku_then_order() -> None:
    lines = [
        PickLine("o2", "MUG", "A-10-1", 1),
        PickLine("o1", "CUP", "A-02-1", 2),
        PickLine("o3", "MUG", "A-02-1", 1),
        PickLine("o1", "MUG", "A-02-1", 1),
        PickLine("o1", "TEA", "RECEIVING", 4),
    ]
    assert [(x.bin, x.sku, x.order_id) for x in walking_order(lines)] == [
        ("A-02-1", "CUP", "o1"),
        ("A-02-1", "MUG", "o1"),
        ("A-02-1", "MUG", "o3"),
        ("A-10-1", "MUG", "o2"),
        ("RECEIVING", "TEA", "o1"),
    ]


def test_a_wave_takes_only_its_own_orders_lines() -> None:
    queued = [
        PickLine("o1", "MUG", "B-01-1", 1),
        PickLine("o2", "CUP", "A-01-1", 1),
        PickLine("o9", "TEA", "A-01-1", 1),
    ]
    wave = Wave("BER-1", ("o1", "o2"), "size")
    assert [x.order_id for x in lines_of_wave(wave, queued)] == ["o2", "o1"]
