from datetime import UTC, datetime, timedelta

import pytest

from services.returns.domain.window import Delivery, decide_return

DELIVERED = datetime(2026, 11, 10, 15, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def decide(requested_at: datetime, *, window_days: int = 7, **kwargs: object):
    options = {
        "lines": {"A": 1},
        "order_known": True,
        "deliveries": [Delivery("s1", DELIVERED, {"A": 2})],
        "already_returned": {},
        "now": NOW,
    } | kwargs
    return decide_return(requested_at=requested_at, window_days=window_days, **options)  # type: ignore[arg-type]


def test_exactly_at_the_window_edge_is_approved() -> None:
    assert decide(DELIVERED + timedelta(days=7)).approved


def test_one_second_after_the_edge_is_window_expired() -> None:
    decision = decide(DELIVERED + timedelta(days=7, seconds=1))
    assert (decision.approved, decision.reason) == (False, "window_expired")


def test_a_longer_window_moves_the_edge() -> None:
    assert decide(DELIVERED + timedelta(days=14), window_days=14).approved
    assert (
        decide(DELIVERED + timedelta(days=14, seconds=1), window_days=14).reason == "window_expired"
    )


def test_requested_before_the_delivery_is_not_delivered() -> None:
    assert decide(DELIVERED - timedelta(seconds=1)).reason == "not_delivered"


@pytest.mark.parametrize("ahead", [timedelta(minutes=5, seconds=1), timedelta(days=1)])
def test_a_request_from_the_future_is_invalid(ahead: timedelta) -> None:
    assert decide(NOW + ahead).reason == "invalid"


def test_five_minutes_of_clock_skew_are_allowed() -> None:
    late = decide(NOW + timedelta(minutes=5))
    assert late.reason == "window_expired"  # judged on its merits, not refused as invalid


def test_unknown_order_and_over_quantity() -> None:
    inside = DELIVERED + timedelta(days=1)
    assert decide(inside, order_known=False).reason == "unknown_order"
    assert decide(inside, lines={"A": 3}).reason == "quantity_exceeds_delivered"
    assert decide(inside, lines={"A": 1}, already_returned={"A": 2}).reason == (
        "quantity_exceeds_delivered"
    )


def test_each_line_counts_from_its_own_shipment() -> None:
    early = Delivery("s1", DELIVERED, {"A": 1})
    later = Delivery("s2", DELIVERED + timedelta(days=3), {"B": 1})
    at = DELIVERED + timedelta(days=8)  # outside A's window, inside B's
    assert decide(at, lines={"B": 1}, deliveries=[early, later]).approved
    assert decide(at, lines={"A": 1}, deliveries=[early, later]).reason == "window_expired"
