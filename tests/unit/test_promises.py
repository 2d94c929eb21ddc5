from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from services.orders.domain.promises import PromisePolicy, promise_for

BERLIN = ZoneInfo("Europe/Berlin")
POLICY = PromisePolicy()


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


def test_standard_order_before_cutoff_dispatches_the_same_day() -> None:
    promise = promise_for(local(2026, 11, 23, 13, 59), "standard", POLICY)  # a Monday
    assert promise.dispatch_by == local(2026, 11, 23, 18, 0)
    assert promise.deliver_by == datetime.combine(
        local(2026, 11, 30).date(), time(23, 59, 59), BERLIN
    )


def test_standard_order_at_cutoff_dispatches_the_next_business_day() -> None:
    promise = promise_for(local(2026, 11, 27, 14, 0), "standard", POLICY)  # Friday 14:00
    assert promise.dispatch_by == local(2026, 11, 30, 18, 0)  # Monday


def test_express_has_a_later_cutoff_and_two_business_days() -> None:
    promise = promise_for(local(2026, 11, 26, 15, 30), "express", POLICY)  # Thursday
    assert promise.dispatch_by == local(2026, 11, 26, 18, 0)
    assert promise.deliver_by.date() == local(2026, 11, 30).date()  # Fri, (weekend), Mon


def test_weekend_orders_dispatch_on_monday() -> None:
    promise = promise_for(local(2026, 11, 28, 9, 0), "standard", POLICY)  # Saturday
    assert promise.dispatch_by == local(2026, 11, 30, 18, 0)


def test_placed_at_in_another_zone_is_judged_in_the_warehouse_zone() -> None:
    # 12:30 UTC is 13:30 in Berlin in winter: before the cut-off
    promise = promise_for(datetime(2026, 11, 23, 12, 30, tzinfo=UTC), "standard", POLICY)
    assert promise.dispatch_by == local(2026, 11, 23, 18, 0)
