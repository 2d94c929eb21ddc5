"""Which overdue orders are re-driven, and with which events (services/orders/domain/redrive.py)."""

import pytest

from services.orders.domain.redrive import (
    NOT_REDRIVEN,
    STATUSES,
    is_redriven,
    not_redriven_keys,
    redrive_topics,
)
from shared import topics


@pytest.mark.parametrize("stage", ["dispatch", "delivery"])
@pytest.mark.parametrize("status", ["backordered", "label_created", "shipped"])
def test_orders_waiting_for_stock_or_the_carrier_are_not_redriven(stage: str, status: str) -> None:
    assert not is_redriven(stage, status)
    assert f"{stage}/{status}" in not_redriven_keys()


@pytest.mark.parametrize("stage", ["dispatch", "delivery"])
@pytest.mark.parametrize("status", ["accepted", "reserved", "picking", "packed", "delivered"])
def test_orders_waiting_for_another_services_answer_are_redriven(stage: str, status: str) -> None:
    assert is_redriven(stage, status)


def test_accept_is_never_redriven_and_a_return_decision_always_is() -> None:
    assert not any(is_redriven("accept", status) for status in STATUSES)
    assert all(is_redriven("return_decision", status) for status in STATUSES)


def test_waiting_for_the_reservation_needs_the_order_and_inventorys_answer() -> None:
    needed = redrive_topics("dispatch", "accepted")
    assert needed is not None
    assert {topics.ORDERS_ACCEPTED, topics.STOCK_RESERVED, topics.STOCK_BACKORDERED} <= set(needed)
    # and what the rest of the stage depends on, up to the carrier's first scan
    assert set(needed) - {topics.ORDERS_ACCEPTED, topics.STOCK_RESERVED} == {
        topics.STOCK_BACKORDERED,
        topics.ORDERS_PACKED,
        topics.SHIPMENTS_LABEL_CREATED,
        topics.SHIPMENTS_SHIPPED,
    }


@pytest.mark.parametrize("status", ["reserved", "picking", "packed"])
def test_waiting_for_the_label_needs_what_shipping_buys_it_with(status: str) -> None:
    assert redrive_topics("dispatch", status) == (
        topics.ORDERS_ACCEPTED,
        topics.ORDERS_PACKED,
        topics.SHIPMENTS_LABEL_CREATED,
        topics.SHIPMENTS_SHIPPED,
    )
    # the reservation is behind it: orders saw it, and no later step needs it
    assert topics.STOCK_RESERVED not in (redrive_topics("delivery", status) or ())


def test_an_order_seen_past_a_scan_it_never_saw_needs_only_that_scan() -> None:
    assert redrive_topics("dispatch", "delivered") == (topics.SHIPMENTS_SHIPPED,)
    assert redrive_topics("dispatch", "returned") == (topics.SHIPMENTS_SHIPPED,)
    assert redrive_topics("delivery", "return_requested") == (topics.SHIPMENTS_DELIVERED,)


def test_a_return_decision_needs_what_returns_decides_with_and_its_answer() -> None:
    assert set(redrive_topics("return_decision", "delivered") or ()) == {
        topics.ORDERS_ACCEPTED,
        topics.SHIPMENTS_DELIVERED,
        topics.RETURNS_APPROVED,
        topics.RETURNS_REJECTED,
    }


def test_no_stage_re_drives_what_no_step_of_it_waits_for() -> None:
    never = {
        topics.SLA_BREACHED,
        topics.ORDERS_CANCELLED,
        topics.STOCK_RELEASED,
        topics.PICKLISTS_CREATED,  # keyed by warehouse: not an order's to re-drive
        topics.SHIPMENTS_EXCEPTION,
        topics.RETURNS_RECEIVED,
        topics.REFUNDS_REQUESTED,
    }
    for stage in ("dispatch", "delivery", "return_decision"):
        for status in STATUSES - NOT_REDRIVEN[stage]:
            needed = redrive_topics(stage, status)
            assert needed is not None and not never & set(needed), (stage, status)


def test_an_unknown_stage_is_redriven_on_every_topic_as_before() -> None:
    assert redrive_topics("customs", "accepted") is None
