"""Valid example payloads of the inbound events; tests change what they are about."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from shared.events import (
    OrderAccepted,
    OrderPacked,
    Origin,
    Parcel,
    Promise,
    ShipmentDelivered,
    ShipmentLine,
)


def new_id(prefix: str = "shop1:") -> str:
    return f"{prefix}{uuid4().hex[:12]}"


def order_placed(
    *,
    order_id: str | None = None,
    lines: list[tuple[str, int]] | None = None,
    country: str = "DE",
    postal_code: str = "10117",
    service_level: str = "standard",
    placed_at: datetime | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "event_id": str(uuid4()),
        "order_id": order_id or new_id(),
        "shop_id": "shop1",
        "placed_at": (placed_at or datetime.now(UTC)).isoformat(),
        "service_level": service_level,
        "currency": "EUR",
        "customer": {"name": "Ada Lovelace", "email": "ada@example.org"},
        "ship_to": {
            "name": "Ada Lovelace",
            "line1": "Unter den Linden 1",
            "city": "Berlin",
            "postal_code": postal_code,
            "country": country,
        },
        "lines": [
            {"sku": sku, "quantity": quantity, "unit_price": "19.99"}
            for sku, quantity in (lines or [("SKU-1", 1)])
        ],
    }
    payload.update(overrides)
    return payload


def return_requested(
    *, order_id: str, lines: list[tuple[str, int]], requested_at: datetime, **overrides: Any
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "event_id": str(uuid4()),
        "return_id": new_id("ret-"),
        "order_id": order_id,
        "requested_at": requested_at.isoformat(),
        "lines": [{"sku": s, "quantity": q} for s, q in lines],
    }
    payload.update(overrides)
    return payload


def order_accepted(
    *,
    order_id: str | None = None,
    deliver_by: datetime | None = None,
    country: str = "DE",
    postal_code: str = "10117",
    lines: list[tuple[str, int]] | None = None,
    unit_price: str = "19.99",
) -> dict[str, Any]:
    """What orders publishes for an accepted order (tests that feed one service alone)."""
    placed = order_placed(order_id=order_id, country=country, postal_code=postal_code, lines=lines)
    for line in placed["lines"]:
        line["unit_price"] = unit_price
    now = datetime.now(UTC)
    return OrderAccepted(
        order_id=placed["order_id"],
        shop_id=placed["shop_id"],
        service_level=placed["service_level"],
        placed_at=now,
        currency=placed["currency"],
        lines=placed["lines"],
        ship_to=placed["ship_to"],
        promised=Promise(
            dispatch_by=now + timedelta(days=1),
            deliver_by=deliver_by or now + timedelta(days=14),
        ),
    ).model_dump(mode="json")


def order_packed(
    order_id: str, *, warehouse_id: str = "BER-1", weight_grams: int = 900
) -> dict[str, Any]:
    """What inventory publishes when an order's parcels are packed."""
    return OrderPacked(
        order_id=order_id,
        warehouse_id=warehouse_id,
        parcels=[Parcel(weight_grams=weight_grams, length_mm=300, width_mm=200, height_mm=100)],
        lines=[ShipmentLine(sku="SKU-1", quantity=1)],
        ship_from=Origin(country="DE", postal_code="10115"),
    ).model_dump(mode="json")


def shipment_delivered(
    order_id: str,
    *,
    delivered_at: datetime,
    lines: list[tuple[str, int]],
    warehouse_id: str = "BER-1",
    carrier: str = "swiftpost",
) -> dict[str, Any]:
    """What shipping publishes when the carrier delivered a shipment."""
    return ShipmentDelivered(
        order_id=order_id,
        shipment_id=uuid4(),
        delivered_at=delivered_at,
        source="webhook",
        carrier=carrier,
        warehouse_id=warehouse_id,
        ship_from=Origin(country="DE", postal_code="10115"),
        lines=[ShipmentLine(sku=sku, quantity=quantity) for sku, quantity in lines],
    ).model_dump(mode="json")
