"""What the fuzzing found, spelled out: each input is answered as the contract says (a
rejection, a dead letter with its reason, a 4xx), where it was a stuck partition or a 500.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import httpx
import pytest

from shared.signing import SIGNATURE_HEADER, sign_webhook
from shared.topics import dead_letter_topic
from tests.factories import order_placed
from tests.property.conftest import Answer, ConsumingService
from tests.property.strategies import KNOWN
from tests.support import bearer
from waybill.system import LocalSystem

pytestmark = pytest.mark.integration


async def consume(
    service: ConsumingService,
    topic: str,
    value: bytes,
    *,
    key: bytes | None = b"k",
    headers: list[tuple[str, bytes]] | None = None,
) -> tuple[int, list[Answer]]:
    """Hand one record to the service's consumer; its offset and what it emitted."""
    record = service.record(topic, value, key=key, headers=headers or [])
    position = await service.outbox_position()
    await service.consumer.process([record])  # returns: nothing escapes
    return record.offset, await service.answers_since(position)


async def dead_letter(service: ConsumingService, topic: str, offset: int) -> dict[str, Any]:
    row = await service.pool.fetchrow(
        """
        SELECT key, headers, error, error_type, attempts FROM dead_letters
        WHERE consumer_group = $1 AND topic = $2 AND "offset" = $3
        """,
        service.consumer.group_id,
        topic,
        offset,
    )
    assert row is not None, f"record {offset} on {topic} was not dead-lettered"
    return dict(row)


# -- records the consumer could not get past (a batch raised, the partition stuck) -------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-deeper-than-the-parser-recurses"),
        pytest.param(b'{"order_id": ' + b"9" * 5_000 + b"}", id="more-digits-than-int-converts"),
    ],
)
async def test_json_that_python_cannot_read_is_dead_lettered_as_not_json(
    consuming_services: dict[str, ConsumingService], value: bytes
) -> None:
    orders = consuming_services["orders"]
    offset, answers = await consume(orders, "orders.placed", value)
    letter = await dead_letter(orders, "orders.placed", offset)
    assert letter["error"].startswith("not JSON") and letter["attempts"] == 1
    assert [a.topic for a in answers] == [dead_letter_topic("orders.placed")]


async def test_a_bad_record_whose_key_holds_nul_is_dead_lettered(
    consuming_services: dict[str, ConsumingService],
) -> None:
    orders = consuming_services["orders"]
    offset, _ = await consume(orders, "orders.placed", b"not json", key=b"shop1:\x00x")
    assert (await dead_letter(orders, "orders.placed", offset))["key"] == "shop1:\ufffdx"


async def test_a_bad_record_with_nul_in_a_header_name_is_dead_lettered(
    consuming_services: dict[str, ConsumingService],
) -> None:
    orders = consuming_services["orders"]
    offset, _ = await consume(orders, "orders.placed", b"", headers=[("a\x00b", b"\x00")])
    letter = await dead_letter(orders, "orders.placed", offset)
    assert letter["headers"] == [["a\ufffdb", "AA=="]]  # the value, base64, kept as it came


# -- valid-looking events their handlers failed on (retried, then dead-lettered) ----------------


async def test_an_order_with_nul_in_its_text_is_rejected_naming_the_field(
    consuming_services: dict[str, ConsumingService],
) -> None:
    order = order_placed(order_id=f"fz:nul-{uuid4().hex[:8]}")
    order["ship_to"]["name"] = "Ada\x00Lovelace"
    _, answers = await consume(
        consuming_services["orders"], "orders.placed", json.dumps(order).encode()
    )
    [rejected] = [a for a in answers if a.topic == "orders.rejected"]
    assert rejected.payload["reason"] == "invalid"
    assert [r["field"] for r in rejected.payload["reasons"]] == ["ship_to.name"]


async def test_a_cancellation_with_nul_in_its_reason_is_refused_as_invalid(
    consuming_services: dict[str, ConsumingService],
) -> None:
    request = {
        "event_id": str(uuid4()),
        "order_id": KNOWN["order_id"][1],
        "requested_at": datetime.now(UTC).isoformat(),
        "reason": "changed\x00mind",
    }
    _, answers = await consume(
        consuming_services["orders"], "orders.cancellation-requested", json.dumps(request).encode()
    )
    assert [(a.topic, a.payload["reason"]) for a in answers] == [
        ("orders.cancellation-rejected", "invalid")
    ]


async def test_an_exchange_whose_replacement_is_no_order_id_is_dead_lettered_at_once(
    consuming_services: dict[str, ConsumingService],
) -> None:
    orders = consuming_services["orders"]
    exchange = {
        "return_id": "ret-1",
        "order_id": KNOWN["order_id"][0],
        "replacement_order_id": "not an order id",
        "lines": [{"sku": KNOWN["sku"][0], "quantity": 1}],
    }
    offset, _ = await consume(orders, "returns.exchange-requested", json.dumps(exchange).encode())
    letter = await dead_letter(orders, "returns.exchange-requested", offset)
    assert letter["error_type"] == "ValidationError" and letter["attempts"] == 1
    assert letter["error"].startswith("replacement_order_id: ")


@pytest.mark.parametrize("return_id", ["\x00", "r\x00t", "r" * 65])
async def test_a_return_request_whose_id_cannot_be_stored_is_dead_lettered_at_once(
    consuming_services: dict[str, ConsumingService], return_id: str
) -> None:
    """No ``returns.rejected`` can name it (jsonb holds no NUL): a dead letter, not 5 tries."""
    returns = consuming_services["returns"]
    request = {
        "event_id": str(uuid4()),
        "return_id": return_id,
        "order_id": KNOWN["order_id"][0],
        "requested_at": datetime.now(UTC).isoformat(),
        "lines": [{"sku": KNOWN["sku"][0], "quantity": 1}],
    }
    offset, answers = await consume(returns, "returns.requested", json.dumps(request).encode())
    letter = await dead_letter(returns, "returns.requested", offset)
    assert letter["error_type"] == "ValidationError" and letter["attempts"] == 1
    assert letter["error"].startswith("return_id: ")
    assert not [a for a in answers if a.topic == "returns.rejected"]


@pytest.mark.parametrize(
    ("placed_at", "outcome"),
    [
        ("0001-01-01T00:00:00+14:00", "orders.rejected"),  # before the year 1 in UTC
        ("9999-12-31T23:59:59-14:00", "orders.rejected"),  # no room left for the promise
        ("0999-12-31T23:59:59+00:00", "orders.rejected"),
        ("1000-01-01T00:00:00+00:00", "orders.accepted"),  # late, but an order
        ("8999-12-31T23:59:59+00:00", "orders.accepted"),
    ],
)
async def test_an_order_placed_at_the_edges_of_time_is_accepted_or_rejected(
    consuming_services: dict[str, ConsumingService], placed_at: str, outcome: str
) -> None:
    orders = consuming_services["orders"]
    order = order_placed(order_id=f"fz:time-{uuid4().hex[:8]}")
    order["placed_at"] = placed_at
    offset, answers = await consume(orders, "orders.placed", json.dumps(order).encode())
    assert not await orders.dead_letters("orders.placed", [offset])
    [answer] = [a for a in answers if a.topic in ("orders.accepted", "orders.rejected")]
    assert answer.topic == outcome
    if outcome == "orders.rejected":
        assert [r["field"] for r in answer.payload["reasons"]] == ["placed_at"]


# -- HTTP requests answered with a 500 ------------------------------------------------------------

NUL_URLS = [
    ("orders", "GET", "/orders/a%00b", "shop"),
    ("orders", "GET", "/shops/a%00b/promise", "admin"),
    ("inventory", "GET", "/stock/a%00b", "warehouse"),
    ("inventory", "GET", "/picklists?warehouse_id=a%00b", "warehouse"),
    ("inventory", "GET", "/returns/expected?warehouse_id=a%00b", "warehouse"),
    ("inventory", "GET", "/warehouse/a%00b", "warehouse"),
    ("shipping", "GET", "/shipments/a%00b", "shop"),
    ("shipping", "POST", "/shipments/a%00b/labels/retry", "ops"),
    ("returns", "GET", "/returns/a%00b", "shop"),
    ("returns", "POST", "/returns/a%00b/label/retry", "ops"),
]


@pytest.mark.parametrize(("service", "method", "path", "role"), NUL_URLS)
async def test_nul_in_a_url_is_refused_with_422(
    running_system: LocalSystem, service: str, method: str, path: str, role: str
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.request(
            method,
            running_system.urls[service] + path,
            headers=bearer(running_system.config.tokens[role]),  # type: ignore[index]
        )
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["detail"]
    assert error["loc"] in (["path"], ["query"]) and "NUL" in error["msg"]


async def http_call(
    system: LocalSystem, service: str, method: str, path: str, role: str, **kwargs: Any
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.request(
            method,
            system.urls[service] + path,
            headers=bearer(system.config.tokens[role]),  # type: ignore[index]
            **kwargs,
        )


async def test_an_order_nested_deeper_than_the_parser_recurses_is_refused_with_422(
    running_system: LocalSystem,
) -> None:
    answer = await http_call(
        running_system, "orders", "POST", "/orders", "shop", content=b"[" * 100_000
    )
    assert answer.status_code == 422
    assert answer.json()["reasons"][0]["message"].startswith("not JSON")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"warehouse_id": "NOWHERE", "sku": "S", "quantity": 1}, "warehouse_id"),
        ({"warehouse_id": "FZ-1", "sku": "S", "quantity": 1, "bin": "A\x00"}, "bin"),
        ({"warehouse_id": "FZ-1", "sku": "S\x00", "quantity": 1}, "sku"),
    ],
)
async def test_a_stock_receipt_that_cannot_be_taken_is_422_with_the_field(
    running_system: LocalSystem, body: dict[str, Any], field: str
) -> None:
    answer = await http_call(
        running_system, "inventory", "POST", "/stock/receipts", "warehouse", json=body
    )
    assert answer.status_code == 422
    assert [e["loc"][-1] for e in answer.json()["detail"]] == [field]


async def test_a_warehouse_with_nul_in_its_postal_code_is_422(running_system: LocalSystem) -> None:
    answer = await http_call(
        running_system,
        "inventory",
        "PUT",
        "/warehouses/FZ-2",
        "admin",
        json={"name": "Two", "country": "DE", "postal_code": "101\x0015"},
    )
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "postal_code"]


async def test_a_pick_of_a_line_beyond_the_databases_integers_is_404(
    running_system: LocalSystem,
) -> None:
    answer = await http_call(
        running_system,
        "inventory",
        "POST",
        f"/picklists/{uuid4()}/lines/{2**31}/picked",
        "warehouse",
        json={"quantity": 1, "scanned_sku": "S"},
    )
    assert answer.status_code == 404


@pytest.mark.parametrize(
    ("form", "action"),
    [
        ({"picklist_id": str(uuid4()), "line_no": str(2**31), "quantity": "1"}, "scan"),
        ({"picklist_id": str(uuid4()), "line_no": "1", "scanned_sku": "S\x00"}, "scan"),
        (
            {"order_id": "fz:\x00", "weight_grams": "900"}
            | {"length_mm": "300", "width_mm": "200", "height_mm": "100"},
            "pack",
        ),
        ({"sku": "S\x00", "sellable": "1", "damaged": "0"}, "returns/ret-1/receive"),
    ],
)
async def test_a_warehouse_page_form_with_what_cannot_be_stored_is_answered_on_the_page(
    running_system: LocalSystem, form: dict[str, str], action: str
) -> None:
    form.setdefault("scanned_sku", "S")
    form.setdefault("quantity", "1")
    answer = await http_call(
        running_system, "inventory", "POST", f"/warehouse/FZ-1/{action}", "warehouse", data=form
    )
    assert answer.status_code == 303  # back to the page, the outcome in its flash cookie


def signed(system: LocalSystem, push: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(push).encode()
    signature = sign_webhook(system.config.webhook_secret, body, timestamp=int(time.time()))
    return {"content": body, "headers": {SIGNATURE_HEADER: signature}}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"description": []}, "description"),
        ({"tracking_number": 12345}, "tracking_number"),
        ({"status": {"code": "delivered"}}, "status"),
        ({"occurred_at": "2026-11-22T10:00:00"}, "at"),  # no offset
        ({"description": "left at\x00door"}, "description"),
    ],
)
async def test_a_signed_webhook_that_is_no_tracking_event_is_422(
    running_system: LocalSystem, change: dict[str, Any], field: str
) -> None:
    push = {
        "tracking_number": "1Z-FUZZ",
        "status": "in_transit",
        "occurred_at": datetime.now(UTC).isoformat(),
        "event_id": str(uuid4()),
    } | change
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(
            f"{running_system.urls['shipping']}/webhooks/carriers/sandbox",
            **signed(running_system, push),
        )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body", field]


async def test_a_signed_webhook_that_is_not_json_is_422(running_system: LocalSystem) -> None:
    body = b"{not json"
    signature = sign_webhook(running_system.config.webhook_secret, body, timestamp=int(time.time()))
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(
            f"{running_system.urls['shipping']}/webhooks/carriers/sandbox",
            content=body,
            headers={SIGNATURE_HEADER: signature},
        )
    assert answer.status_code == 422
