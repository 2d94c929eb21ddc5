"""`waybill chaos` offers exactly the scenarios that waybill.chaos runs."""

from __future__ import annotations

from waybill.chaos import SCENARIOS, ChaosResult, render
from waybill.cli import CHAOS_SCENARIOS


def test_the_command_lists_the_scenarios_that_exist() -> None:
    assert CHAOS_SCENARIOS == SCENARIOS


def test_the_verdict_table_fails_a_run_with_a_lost_order_and_says_why() -> None:
    lost = ChaosResult("kill-consumer", 10, 5.0, faults=["x"], restarts=1, passed=False)
    lost.checks = {
        "orders": 10,
        "labelled": 9,
        "lost": 1,
        "doubled": 0,
        "units_ordered": 30,
        "units_shipped": 27,
        "dead_letters": {"orders": 0},
        "problems": ["1 orders have no shipments.label-created"],
    }
    table = render([lost])
    row = table.splitlines()[1].split()
    assert row[:7] == ["kill-consumer", "10", "9", "1", "0", "-3", "0"]
    assert row[-1] == "FAIL"
    assert "problem: 1 orders have no shipments.label-created" in table
