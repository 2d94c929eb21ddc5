"""The EasyPost adapter against a local HTTP server serving EasyPost v2 shapes.

The server is a stand-in written from EasyPost's documented shapes (no network here): it
checks HTTP Basic auth and the Idempotency-Key, and can answer with an injected fault.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.shipping.config import ShippingSettings
from shared import topics
from shared.carriers.base import CarrierError, LabelRequest, Place, RateRequest
from shared.carriers.easypost import EasyPostCarrierGateway
from shared.carriers.sandbox import SandboxCarrierGateway
from shared.carriers.wiring import gateway_for
from shared.signing import WebhookSignatureError
from tests.conftest import MakeSystem
from tests.factories import order_accepted, order_packed
from tests.support import serving
from waybill.system import bind_socket

API_KEY = "EZTK_test_key"
# Precomposed "é": EasyPost normalises the secret with NFKD, so the key bytes differ.
WEBHOOK_SECRET = "s\u00e9cret-webhook"

# --- harness: a real server on a free port (the pattern of test_carrier_sandbox) ----------


@dataclass
class FakeEasyPost:
    """Shipments, rates, purchases and trackers in EasyPost v2 shapes."""

    base_url: str = ""
    shipments: dict[str, dict[str, Any]] = field(default_factory=dict)
    purchases_by_key: dict[str, dict[str, Any]] = field(default_factory=dict)
    trackers: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    fault: Callable[[], JSONResponse] | None = None
    hang: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    labels_bought: int = 0

    def app(self) -> FastAPI:
        app = FastAPI()
        expected_auth = "Basic " + base64.b64encode(f"{API_KEY}:".encode()).decode()

        @app.middleware("http")
        async def guard(request: Request, call_next: Any) -> Any:
            body = await request.body()
            self.requests.append(
                (
                    request.method,
                    request.url.path,
                    dict(request.headers),
                    json.loads(body) if body else None,
                )
            )
            if request.headers.get("authorization") != expected_auth:
                return JSONResponse(
                    {"error": {"code": "APIKEY.REQUIRED", "message": "bad key"}}, 401
                )
            if self.hang:
                await self.release.wait()
            if self.fault is not None:
                return self.fault()
            return await call_next(request)

        @app.post("/v2/shipments")
        async def create(request: Request) -> JSONResponse:
            shipment_in = (await request.json())["shipment"]
            number = len(self.shipments) + 1
            shipment_id = f"shp_{number}"
            shipment = {
                "object": "Shipment",
                "id": shipment_id,
                "created_at": "2030-01-01T10:00:00Z",
                "reference": shipment_in.get("reference"),
                "from_address": shipment_in["from_address"],
                "to_address": shipment_in["to_address"],
                "parcel": {"object": "Parcel", **shipment_in["parcel"]},
                "rates": [
                    {
                        "object": "Rate",
                        "id": f"rate_{number}_a",
                        "shipment_id": shipment_id,
                        "carrier": "USPS",
                        "service": "Priority",
                        "rate": "7.58",
                        "currency": "USD",
                        "delivery_days": 2,
                        "delivery_date": None,
                    },
                    {
                        "object": "Rate",
                        "id": f"rate_{number}_b",
                        "shipment_id": shipment_id,
                        "carrier": "UPS",
                        "service": "Ground",
                        "rate": "11.20",
                        "currency": "USD",
                        "delivery_days": None,
                        "est_delivery_days": 5,
                        "delivery_date": "2030-01-08T18:00:00Z",
                    },
                ],
                "messages": [
                    {
                        "carrier": "FedEx",
                        "carrier_account_id": "ca_fedex",
                        "type": "rate_error",
                        "message": "service unavailable",
                    }
                ],
                "selected_rate": None,
                "postage_label": None,
                "tracking_code": None,
                "tracker": None,
            }
            self.shipments[shipment_id] = shipment
            return JSONResponse(shipment, 201)

        @app.get("/v2/shipments/{shipment_id}")
        async def retrieve(shipment_id: str) -> JSONResponse:
            return JSONResponse(self.shipments[shipment_id])

        @app.post("/v2/shipments/{shipment_id}/buy")
        async def buy(shipment_id: str, request: Request) -> JSONResponse:
            key = request.headers.get("idempotency-key")
            if not key:
                return JSONResponse({"error": {"code": "KEY", "message": "no key"}}, 400)
            if key in self.purchases_by_key:  # a replay: the first purchase, not a new one
                return JSONResponse(self.purchases_by_key[key])
            shipment = self.shipments[shipment_id]
            rate_id = (await request.json())["rate"]["id"]
            (rate,) = [r for r in shipment["rates"] if r["id"] == rate_id]
            self.labels_bought += 1
            code = f"9400TEST{self.labels_bought:04d}"
            shipment.update(
                selected_rate=rate,
                tracking_code=code,
                postage_label={
                    "object": "PostageLabel",
                    "label_url": f"{self.base_url}/files/{shipment_id}.png",
                },
                tracker={"object": "Tracker", "id": f"trk_{code}", "est_delivery_date": None},
            )
            self.purchases_by_key[key] = shipment
            return JSONResponse(shipment)

        @app.post("/v2/shipments/{shipment_id}/refund")
        async def refund(shipment_id: str) -> JSONResponse:
            shipment = self.shipments[shipment_id]
            scanned = (shipment.get("tracker") or {}).get("status") not in (None, "pre_transit")
            shipment["refund_status"] = "rejected" if scanned else "submitted"
            return JSONResponse(shipment)

        @app.get("/v2/trackers")
        async def trackers(tracking_code: str) -> JSONResponse:
            found = [self.trackers[tracking_code]] if tracking_code in self.trackers else []
            return JSONResponse({"trackers": found, "has_more": False})

        return app


@dataclass
class Running:
    fake: FakeEasyPost
    gateway: EasyPostCarrierGateway
    base_url: str


@pytest.fixture
async def ep() -> AsyncIterator[Running]:
    fake = FakeEasyPost()
    async with serving(lambda _: fake.app()) as (base_url, _):
        fake.base_url = base_url
        gateway = EasyPostCarrierGateway(
            API_KEY, webhook_secret=WEBHOOK_SECRET, base_url=base_url, timeout_seconds=0.5
        )
        try:
            yield Running(fake, gateway, base_url)
        finally:
            fake.release.set()  # let a held request finish before the server stops
            await gateway.close()


PARCEL = {"weight_grams": 1134, "length_mm": 254, "width_mm": 203, "height_mm": 102}
RATE_REQUEST = RateRequest(
    ship_from=Place(country="US", postal_code="94105"),
    ship_to=Place(country="US", postal_code="10001"),
    parcels=[PARCEL],
)


def label_request(carrier: str = "USPS", service: str = "Priority") -> LabelRequest:
    return LabelRequest(
        carrier=carrier,
        service=service,
        ship_from=Place(country="US", postal_code="94105"),
        ship_to={
            "name": "Ada Lovelace",
            "line1": "1 Main St",
            "city": "New York",
            "state": "NY",
            "postal_code": "10001",
            "country": "US",
        },
        parcels=[PARCEL],
        reference="order-1",
    )


def error(status: int, headers: dict[str, str] | None = None) -> Callable[[], JSONResponse]:
    return lambda: JSONResponse(
        {"error": {"code": f"E{status}", "message": "injected", "errors": []}},
        status,
        headers=headers,
    )


# --- rates -------------------------------------------------------------------------------


async def test_rates_map_money_as_decimal_and_transit_days(ep: Running) -> None:
    quotes = await ep.gateway.rates(RATE_REQUEST)
    rates = quotes.rates
    assert quotes.unavailable == {"FedEx": "service unavailable"}
    assert [(r.carrier, r.service) for r in rates] == [("USPS", "Priority"), ("UPS", "Ground")]
    usps, ups = rates
    assert usps.price == Decimal("7.58") and isinstance(usps.price, Decimal)
    assert usps.currency == "USD" and usps.transit_days == 2
    assert ups.price == Decimal("11.20") and ups.transit_days == 5  # est_delivery_days

    method, path, _, body = ep.fake.requests[-1]
    assert (method, path) == ("POST", "/v2/shipments")
    shipment = body["shipment"]
    assert shipment["from_address"] == {"country": "US", "zip": "94105"}
    assert shipment["to_address"] == {"country": "US", "zip": "10001"}
    # grams -> ounces, millimetres -> inches
    assert shipment["parcel"] == {"weight": 40.0, "length": 10.0, "width": 8.0, "height": 4.0}


async def test_rates_of_chosen_carriers_only(ep: Running) -> None:
    quotes = await ep.gateway.rates(
        RateRequest(RATE_REQUEST.ship_from, RATE_REQUEST.ship_to, [PARCEL], carriers=("UPS",))
    )
    assert [r.carrier for r in quotes.rates] == ["UPS"]
    assert quotes.unavailable == {}


async def test_wrong_api_key_is_not_retryable(ep: Running) -> None:
    other = EasyPostCarrierGateway("wrong", webhook_secret="x", base_url=ep.base_url)
    try:
        with pytest.raises(CarrierError) as caught:
            await other.rates(RATE_REQUEST)
        assert caught.value.retryable is False and "401" in str(caught.value)
    finally:
        await other.close()


# --- labels ------------------------------------------------------------------------------


async def test_buy_label_forwards_the_key_and_maps_the_label(ep: Running) -> None:
    label = await ep.gateway.buy_label(label_request(), idempotency_key="order-1-label")
    assert label.carrier == "USPS" and label.service == "Priority"
    assert label.carrier_shipment_id == "shp_1"
    assert label.tracking_number == "9400TEST0001"
    assert label.label_url == f"{ep.base_url}/files/shp_1.png"
    assert label.price == Decimal("7.58") and label.currency == "USD"
    # no delivery_date: the shipment's created_at + delivery_days
    assert label.estimated_delivery == datetime(2030, 1, 3, 10, tzinfo=UTC)

    buys = [r for r in ep.fake.requests if r[1].endswith("/buy")]
    ((_, path, headers, body),) = buys
    assert path == "/v2/shipments/shp_1/buy"
    assert headers["idempotency-key"] == "order-1-label"
    assert body == {"rate": {"id": "rate_1_a"}}
    create = ep.fake.requests[0]
    assert create[3]["shipment"]["to_address"]["street1"] == "1 Main St"
    assert create[3]["shipment"]["reference"] == "order-1"

    # The same key again from this gateway: the shipment is looked up, nothing is bought.
    again = await ep.gateway.buy_label(label_request(), idempotency_key="order-1-label")
    assert again == label
    assert ep.fake.labels_bought == 1

    # The same key from a fresh gateway (a restarted process): the server replays it.
    fresh = EasyPostCarrierGateway(API_KEY, webhook_secret=WEBHOOK_SECRET, base_url=ep.base_url)
    try:
        replayed = await fresh.buy_label(label_request(), idempotency_key="order-1-label")
    finally:
        await fresh.close()
    assert replayed == label
    assert ep.fake.labels_bought == 1
    assert [r[2]["idempotency-key"] for r in ep.fake.requests if r[1].endswith("/buy")] == [
        "order-1-label",
        "order-1-label",
    ]


async def test_cancel_label_asks_for_a_refund(ep: Running) -> None:
    label = await ep.gateway.buy_label(label_request(), idempotency_key="k-void")
    await ep.gateway.cancel_label(label.carrier, label.carrier_shipment_id)
    method, path, _, _ = ep.fake.requests[-1]
    assert (method, path) == ("POST", f"/v2/shipments/{label.carrier_shipment_id}/refund")
    assert ep.fake.shipments[label.carrier_shipment_id]["refund_status"] == "submitted"

    ep.fake.shipments[label.carrier_shipment_id]["tracker"]["status"] = "in_transit"
    with pytest.raises(CarrierError) as caught:
        await ep.gateway.cancel_label(label.carrier, label.carrier_shipment_id)
    assert caught.value.retryable is False and "rejected" in str(caught.value)


async def test_delivery_date_and_unknown_service(ep: Running) -> None:
    ups = await ep.gateway.buy_label(label_request("UPS", "Ground"), idempotency_key="k-ups")
    assert ups.estimated_delivery == datetime(2030, 1, 8, 18, tzinfo=UTC)
    with pytest.raises(CarrierError) as caught:
        await ep.gateway.buy_label(label_request("FedEx", "Overnight"), idempotency_key="k-x")
    assert caught.value.retryable is False


# --- errors ------------------------------------------------------------------------------


async def test_429_is_retryable_with_retry_after(ep: Running) -> None:
    ep.fake.fault = error(429, {"Retry-After": "7"})
    with pytest.raises(CarrierError) as caught:
        await ep.gateway.rates(RATE_REQUEST)
    assert caught.value.retryable is True and caught.value.retry_after == 7.0
    assert caught.value.maybe_processed is False  # refused: safe to go elsewhere


async def test_500_is_retryable(ep: Running) -> None:
    ep.fake.fault = error(500)
    with pytest.raises(CarrierError) as caught:
        await ep.gateway.buy_label(label_request(), idempotency_key="k")
    assert caught.value.retryable is True and caught.value.retry_after is None
    assert caught.value.maybe_processed is True  # it may have bought the label


async def test_503_was_not_processed(ep: Running) -> None:
    ep.fake.fault = error(503, {"Retry-After": "3"})
    with pytest.raises(CarrierError) as caught:
        await ep.gateway.buy_label(label_request(), idempotency_key="k")
    assert caught.value.retryable is True and caught.value.maybe_processed is False
    assert caught.value.retry_after == 3.0


async def test_422_is_not_retryable(ep: Running) -> None:
    ep.fake.fault = error(422)
    with pytest.raises(CarrierError) as caught:
        await ep.gateway.rates(RATE_REQUEST)
    assert caught.value.retryable is False
    assert "E422" in str(caught.value)


async def test_timeout_is_retryable(ep: Running) -> None:
    ep.fake.hang = True  # held until the fixture's teardown sets `release`
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CarrierError) as caught:
        await ep.gateway.rates(RATE_REQUEST)
    assert caught.value.retryable is True and "timed out" in str(caught.value)
    assert caught.value.maybe_processed is True
    assert loop.time() - started < 5


async def test_refused_connection_was_not_processed() -> None:
    sock = bind_socket("127.0.0.1", 0)  # bound, never listening: connections are refused
    port = sock.getsockname()[1]
    gateway = EasyPostCarrierGateway(
        API_KEY, webhook_secret=WEBHOOK_SECRET, base_url=f"http://127.0.0.1:{port}"
    )
    try:
        with pytest.raises(CarrierError) as caught:
            await gateway.rates(RATE_REQUEST)
    finally:
        await gateway.close()
        sock.close()
    assert caught.value.retryable is True and caught.value.maybe_processed is False


async def test_more_than_one_parcel_is_refused(ep: Running) -> None:
    request = RateRequest(RATE_REQUEST.ship_from, RATE_REQUEST.ship_to, [PARCEL, PARCEL])
    with pytest.raises(CarrierError) as caught:
        await ep.gateway.rates(request)
    assert caught.value.retryable is False
    assert ep.fake.requests == []


# --- tracking ----------------------------------------------------------------------------


def tracker(code: str, details: list[tuple[str, str, str]]) -> dict[str, Any]:
    return {
        "object": "Tracker",
        "id": f"trk_{code}",
        "tracking_code": code,
        "status": details[-1][0] if details else "pre_transit",
        "carrier": "USPS",
        "created_at": "2030-01-01T08:00:00Z",
        "updated_at": details[-1][1] if details else "2030-01-01T08:00:00Z",
        "tracking_details": [
            {
                "object": "TrackingDetail",
                "status": status,
                "status_detail": "status_update",
                "datetime": at,
                "message": message,
                "source": "USPS",
            }
            for status, at, message in details
        ],
    }


SCANS = [
    ("pre_transit", "2030-01-01T08:00:00Z", "Label created"),
    ("in_transit", "2030-01-02T09:30:00Z", "Accepted at facility"),
    ("out_for_delivery", "2030-01-03T07:00:00Z", "Out for delivery"),
    ("failure", "2030-01-03T15:00:00Z", "Delivery attempt failed"),
    ("return_to_sender", "2030-01-04T10:00:00Z", "Returning"),
    ("error", "2030-01-04T11:00:00Z", "Carrier error"),
    ("some_new_status", "2030-01-04T12:00:00Z", "?"),
]


async def test_track_maps_details_and_statuses(ep: Running) -> None:
    ep.fake.trackers["9400A"] = tracker("9400A", SCANS)
    events = await ep.gateway.track("9400A")
    assert [e.status for e in events] == [
        "pre_transit",
        "in_transit",
        "out_for_delivery",
        "delivery_failed",
        "return_to_sender",
        "unknown",
        "unknown",
    ]
    assert events[1].at == datetime(2030, 1, 2, 9, 30, tzinfo=UTC)
    assert events[1].description == "Accepted at facility"
    assert all(e.tracking_number == "9400A" for e in events)
    method, path, _, _ = ep.fake.requests[-1]
    assert (method, path) == ("GET", "/v2/trackers")

    with pytest.raises(CarrierError) as caught:
        await ep.gateway.track("NOPE")
    assert caught.value.retryable is False


# --- webhooks ----------------------------------------------------------------------------


def event_body(details: list[tuple[str, str, str]]) -> bytes:
    return json.dumps(
        {
            "object": "Event",
            "id": "evt_123",
            "description": "tracker.updated",
            "mode": "test",
            "created_at": "2030-01-03T07:00:05Z",
            "result": tracker("9400B", details),
        }
    ).encode()


def sign(secret: str, body: bytes) -> str:
    key = unicodedata.normalize("NFKD", secret).encode("utf-8")
    return "hmac-sha256-hex=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def test_webhook_with_a_good_signature_gives_the_newest_detail() -> None:
    gateway = EasyPostCarrierGateway(API_KEY, webhook_secret=WEBHOOK_SECRET)
    body = event_body([SCANS[2], SCANS[0], SCANS[1]])  # out of order on purpose
    event = gateway.parse_webhook({"x-hmac-signature": sign(WEBHOOK_SECRET, body)}, body, now=0)
    assert event.tracking_number == "9400B"
    assert event.status == "out_for_delivery"
    assert event.at == datetime(2030, 1, 3, 7, tzinfo=UTC)
    assert event.description == "Out for delivery"
    assert event.raw["easypost_event_id"] == "evt_123"
    # Header names are case-insensitive.
    same = gateway.parse_webhook({"X-Hmac-Signature": sign(WEBHOOK_SECRET, body)}, body, now=0)
    assert same == event


def test_webhook_signature_uses_the_nfkd_normalised_secret() -> None:
    gateway = EasyPostCarrierGateway(API_KEY, webhook_secret=WEBHOOK_SECRET)
    body = event_body([SCANS[0]])
    raw_key = WEBHOOK_SECRET.encode("utf-8")  # not normalised: a different key
    unnormalised = "hmac-sha256-hex=" + hmac.new(raw_key, body, hashlib.sha256).hexdigest()
    assert unnormalised != sign(WEBHOOK_SECRET, body)
    with pytest.raises(WebhookSignatureError):
        gateway.parse_webhook({"x-hmac-signature": unnormalised}, body, now=0)


@pytest.mark.parametrize("case", ["tampered", "wrong_secret", "missing", "empty", "bare_hex"])
def test_webhook_refused(case: str) -> None:
    gateway = EasyPostCarrierGateway(API_KEY, webhook_secret=WEBHOOK_SECRET)
    body = event_body([SCANS[0], SCANS[1]])
    headers = {"x-hmac-signature": sign(WEBHOOK_SECRET, body)}
    if case == "tampered":
        body = body.replace(b"9400B", b"9400C")
    elif case == "wrong_secret":
        headers = {"x-hmac-signature": sign("another-secret", body)}
    elif case == "missing":
        headers = {}
    elif case == "empty":
        headers = {"x-hmac-signature": ""}
    elif case == "bare_hex":
        headers = {"x-hmac-signature": headers["x-hmac-signature"].split("=", 1)[1]}
    with pytest.raises(WebhookSignatureError):
        gateway.parse_webhook(headers, body, now=0)


def test_signed_but_unreadable_webhook_is_refused() -> None:
    gateway = EasyPostCarrierGateway(API_KEY, webhook_secret=WEBHOOK_SECRET)
    body = b'{"object": "Event", "result": {"object": "Batch"}}'
    with pytest.raises(WebhookSignatureError):
        gateway.parse_webhook({"x-hmac-signature": sign(WEBHOOK_SECRET, body)}, body, now=0)


# --- the provider chosen by configuration ------------------------------------------------


async def test_shipping_configured_for_easypost_buys_and_tracks_through_it(
    ep: Running, make_system: MakeSystem, event_log_factory, publisher_factory
) -> None:
    secret = "easypost-webhook-secret-0123"
    system = await make_system(
        services=["shipping"],
        with_sandbox=False,
        service_overrides={
            "carrier_provider": "easypost",
            "easypost_api_key": API_KEY,
            "easypost_url": ep.base_url,
            "easypost_webhook_secret": secret,
        },
    )
    log = await event_log_factory(
        system.config.kafka, [topics.SHIPMENTS_LABEL_CREATED, topics.SHIPMENTS_SHIPPED]
    )
    shop = await publisher_factory(system.config.kafka)
    order = order_accepted(country="US", postal_code="10001")
    oid = order["order_id"]
    await shop.send(topics.ORDERS_ACCEPTED, order, key=oid)
    await shop.send(topics.ORDERS_PACKED, order_packed(oid), key=oid)

    label = (await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=oid))[0]
    assert (label["carrier"], label["service"]) == ("USPS", "Priority")  # the cheapest
    assert ep.fake.labels_bought == 1
    (buy,) = [r for r in ep.fake.requests if r[1].endswith("/buy")]
    assert buy[2]["idempotency-key"].startswith("waybill-")

    tn = label["tracking_number"]
    body = json.dumps(
        {
            "object": "Event",
            "id": "evt_1",
            "description": "tracker.updated",
            "result": {**tracker(tn, SCANS[:2]), "tracking_code": tn},
        }
    ).encode()
    url = f"{system.urls['shipping']}/webhooks/carriers/easypost"
    async with httpx.AsyncClient(timeout=10) as http:
        forged = await http.post(url, content=body, headers={"X-Hmac-Signature": sign("x", body)})
        assert forged.status_code == 401
        r = await http.post(url, content=body, headers={"X-Hmac-Signature": sign(secret, body)})
        assert r.status_code == 202, r.text
    shipped = (await log.wait(topics.SHIPMENTS_SHIPPED, order_id=oid))[0]
    assert shipped["tracking_number"] == tn and shipped["carrier"] == "USPS"


def test_the_easypost_provider_needs_a_key_and_a_webhook_secret() -> None:
    with pytest.raises(ValidationError, match="WAYBILL_EASYPOST_API_KEY"):
        ShippingSettings(carrier_provider="easypost", carrier_webhook_secret="s" * 32)
    with pytest.raises(ValidationError, match="WAYBILL_EASYPOST_WEBHOOK_SECRET"):
        ShippingSettings(carrier_provider="easypost", easypost_api_key="EZTK")
    settings = ShippingSettings(
        carrier_provider="easypost", easypost_api_key="EZTK", easypost_webhook_secret="e" * 16
    )
    assert isinstance(gateway_for(settings), EasyPostCarrierGateway)
    assert isinstance(
        gateway_for(ShippingSettings(carrier_webhook_secret="s" * 16)), SandboxCarrierGateway
    )
