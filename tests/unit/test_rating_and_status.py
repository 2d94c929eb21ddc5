from datetime import UTC, datetime
from decimal import Decimal

from services.orders.domain.status import advance as advance_order
from services.shipping.domain.rating import choose_rate
from services.shipping.domain.tracking import advance as advance_tracking
from shared.carriers import Rate

MONDAY = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
RATES = [
    Rate("slow", "economy", Decimal("4.00"), "EUR", 5),
    Rate("mid", "standard", Decimal("6.00"), "EUR", 2),
    Rate("fast", "express", Decimal("12.00"), "EUR", 1),
]


def test_cheapest_service_that_meets_the_promise() -> None:
    choice = choose_rate(
        RATES, ship_at=MONDAY, deliver_by=datetime(2026, 11, 26, 23, 0, tzinfo=UTC)
    )
    assert choice is not None and choice.rate.carrier == "mid" and not choice.at_risk


def test_fastest_and_at_risk_when_nothing_meets_the_promise() -> None:
    choice = choose_rate(
        RATES, ship_at=MONDAY, deliver_by=datetime(2026, 11, 23, 23, 0, tzinfo=UTC)
    )
    assert choice is not None and choice.rate.carrier == "fast" and choice.at_risk


def test_tracking_status_never_moves_backwards() -> None:
    assert advance_tracking("delivered", "in_transit") == "delivered"
    assert advance_tracking("in_transit", "out_for_delivery") == "out_for_delivery"
    assert advance_tracking("delivery_failed", "out_for_delivery") == "out_for_delivery"


def test_order_status_moves_forward_and_cancelled_sticks() -> None:
    assert advance_order("shipped", "reserved") == "shipped"
    assert advance_order("reserved", "backordered") == "reserved"
    assert advance_order("accepted", "cancelled") == "cancelled"
    assert advance_order("cancelled", "delivered") == "cancelled"
    assert advance_order("delivered", "shipment_exception") == "delivered"
