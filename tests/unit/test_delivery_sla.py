from datetime import UTC, datetime, timedelta

from services.shipping.domain.sla import delivery_breached_at

BY = datetime(2026, 11, 30, 22, 59, 59, tzinfo=UTC)


def test_on_time_delivery_keeps_the_promise() -> None:
    assert delivery_breached_at(deliver_by=BY, delivered_at=BY, now=BY + timedelta(days=9)) is None


def test_late_delivery_breaches_at_the_delivery() -> None:
    late = BY + timedelta(seconds=1)
    assert delivery_breached_at(deliver_by=BY, delivered_at=late, now=late) == late


def test_nothing_delivered_breaches_once_the_deadline_passed() -> None:
    assert delivery_breached_at(deliver_by=BY, delivered_at=None, now=BY) is None
    after = BY + timedelta(minutes=1)
    assert delivery_breached_at(deliver_by=BY, delivered_at=None, now=after) == after
