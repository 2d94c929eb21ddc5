"""Valid example payloads of the inbound events; tests change what they are about."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import uuid4


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
