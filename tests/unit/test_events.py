"""The contract's rules on event fields, as the models enforce them."""

import pytest
from pydantic import ValidationError

from shared.events import EVENTS_BY_TOPIC, OrderPlaced, RedriveRequested, ReturnRequested
from tests.factories import order_placed


def errors(payload: dict) -> set[str]:
    with pytest.raises(ValidationError) as info:
        OrderPlaced.model_validate(payload)
    return {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}


def test_a_valid_order_round_trips_with_money_as_a_string() -> None:
    order = OrderPlaced.model_validate(order_placed())
    assert '"unit_price":"19.99"' in order.to_bytes().decode()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event_id": None}, "event_id"),
        ({"order_id": "has space"}, "order_id"),
        ({"order_id": "x" * 65}, "order_id"),
        ({"placed_at": "2026-11-22T10:00:00"}, "placed_at"),
        ({"currency": "ZZZ"}, "currency"),
        ({"service_level": "overnight"}, "service_level"),
        ({"lines": []}, "lines"),
    ],
)
def test_each_invalid_field_is_named(change: dict, field: str) -> None:
    assert field in errors(order_placed() | change)


def test_line_rules() -> None:
    payload = order_placed()
    payload["lines"] = [
        {"sku": "", "quantity": 1, "unit_price": "1.00"},
        {"sku": "A", "quantity": 1000, "unit_price": "1.00"},
        {"sku": "B", "quantity": 1, "unit_price": 1.5},
        {"sku": "C", "quantity": 1, "unit_price": "-1.00"},
    ]
    assert {
        "lines.0.sku",
        "lines.1.quantity",
        "lines.2.unit_price",
        "lines.3.unit_price",
    } <= errors(payload)
    payload = order_placed()
    payload["lines"] = [{"sku": "A", "quantity": 1, "unit_price": "1.00"}] * 101
    assert "lines" in errors(payload)


def test_address_and_customer_rules() -> None:
    payload = order_placed()
    payload["ship_to"]["country"] = "Germany"
    payload["customer"]["email"] = "not-an-email"
    assert {"ship_to.country", "customer.email"} <= errors(payload)


def test_return_reason_is_never_required_and_exchange_for_needs_exchange() -> None:
    base = {
        "event_id": "7b0b8a7e-2b51-4a0c-9d89-0c6c4e3f7a11",
        "return_id": "r1",
        "order_id": "o1",
        "requested_at": "2026-11-22T10:00:00+00:00",
        "lines": [{"sku": "A", "quantity": 1}],
    }
    assert ReturnRequested.model_validate(base).reason is None
    with pytest.raises(ValidationError):
        ReturnRequested.model_validate(base | {"exchange_for": [{"sku": "B", "quantity": 1}]})


def test_every_contract_topic_has_a_model() -> None:
    contract_topics = {
        "orders.placed",
        "orders.cancellation-requested",
        "returns.requested",
        "inventory.stock-received",
        "orders.accepted",
        "orders.rejected",
        "orders.cancelled",
        "orders.cancellation-rejected",
        "stock.reserved",
        "stock.backordered",
        "stock.released",
        "picklists.created",
        "orders.packed",
        "shipments.label-created",
        "shipments.shipped",
        "shipments.delivered",
        "shipments.exception",
        "sla.breached",
        "returns.approved",
        "returns.rejected",
        "returns.received",
        "stock.restocked",
        "refunds.requested",
    }
    # internal helper events between services (docs/architecture.md), not in the contract
    internal = {
        "warehouse.return-scanned",
        "returns.exchange-requested",
        "orders.redrive-requested",
        "shops.key-changed",  # docs/tenancy.md
        "staff.key-changed",
    }
    assert set(EVENTS_BY_TOPIC) == contract_topics | internal


def test_a_redrive_request_without_topics_still_parses_and_means_every_topic() -> None:
    # a request from an orders that did not narrow its re-drives yet
    old = {
        "event_id": "0b1e7c9a-6c1f-4d2a-9a43-0c6e5b2f7d11",
        "occurred_at": "2026-11-20T10:00:00+00:00",
        "order_id": "shop1:1",
        "stage": "dispatch",
        "status": "accepted",
        "requested_at": "2026-11-20T10:00:00+00:00",
    }
    assert RedriveRequested.model_validate(old).topics is None
    narrowed = RedriveRequested.model_validate(old | {"topics": ["orders.accepted"]})
    assert narrowed.topics == ["orders.accepted"]
    for bad in (["orders accepted"], ["a\x00b"], [""], ["t"] * 101):
        with pytest.raises(ValidationError):
            RedriveRequested.model_validate(old | {"topics": bad})
