"""The carrier sandbox as a real HTTP server, with a real HTTP receiver for its webhooks."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from shared.carriers.base import CarrierError, LabelRequest, Place
from shared.carriers.sandbox import SandboxCarrierGateway
from shared.signing import SIGNATURE_HEADER, WebhookSignatureError, verify_webhook
from tests.support import serving, wait_for
from waybill.carrier_sandbox import SandboxConfig, create_app
from waybill.carrier_sandbox.code128 import (
    code128b_bits,
    code128b_checksum,
    code128b_symbols,
    code128b_widths,
)
from waybill.carrier_sandbox.sandbox import Sandbox

SECRET = "test-webhook-secret"
T = TypeVar("T")

# --- harness: real servers on free ports, conditions waited for with deadlines ------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Stands in for shipping's webhook endpoint; answers `fail_with` to the first requests."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    fail_with: list[int] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/webhooks/carriers/{carrier}")
        async def webhook(carrier: str, request: Request) -> Response:
            self.requests.append(
                Received(request.url.path, dict(request.headers), await request.body())
            )
            status = self.fail_with.pop(0) if self.fail_with else 204
            return Response(status_code=status)

        return app


@dataclass
class Sandboxed:
    client: httpx.AsyncClient
    base_url: str
    app: FastAPI
    receiver: Receiver

    @property
    def sandbox(self) -> Sandbox:
        sandbox: Sandbox = self.app.state.sandbox
        return sandbox


@asynccontextmanager
async def sandbox_server(**config: Any) -> AsyncIterator[Sandboxed]:
    receiver = Receiver()
    async with serving(lambda _: receiver.app()) as (receiver_url, _):
        receiver.url = receiver_url
        settings: dict[str, Any] = {
            "webhook_url_template": f"{receiver_url}/webhooks/carriers/{{carrier}}",
            "webhook_secret": SECRET,
            "seed": 7,
            "webhook_retry_base_seconds": 0.05,
        }
        settings.update(config)

        def make(base_url: str) -> FastAPI:
            return create_app(SandboxConfig(public_url=base_url, **settings))

        async with (
            serving(make) as (base_url, app),
            httpx.AsyncClient(base_url=base_url, timeout=10) as client,
        ):
            yield Sandboxed(client, base_url, app, receiver)


@pytest.fixture
async def sbx() -> AsyncIterator[Sandboxed]:
    async with sandbox_server() as running:
        yield running


# --- request bodies ----------------------------------------------------------------------

AMSTERDAM = {"country": "NL", "postal_code": "1011 AB"}


def parcel(weight_grams: int = 1200) -> dict[str, int]:
    return {"weight_grams": weight_grams, "length_mm": 300, "width_mm": 200, "height_mm": 100}


def rate_request(to: dict[str, str], weight_grams: int = 1200) -> dict[str, Any]:
    return {"ship_from": AMSTERDAM, "ship_to": to, "parcels": [parcel(weight_grams)]}


def shipment_request(
    carrier: str = "parcelfast", service: str = "standard", **changes: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "carrier": carrier,
        "service": service,
        "ship_from": AMSTERDAM,
        "ship_to": {
            "name": "Ada Lovelace",
            "line1": "Grote Markt 1",
            "city": "Groningen",
            "postal_code": "9711 LV",
            "country": "NL",
        },
        "parcels": [parcel()],
        "reference": "order-1",
    }
    body.update(changes)
    return body


async def buy(sbx: Sandboxed, key: str = "key-1", **changes: Any) -> dict[str, Any]:
    response = await sbx.client.post(
        "/v1/shipments", json=shipment_request(**changes), headers={"Idempotency-Key": key}
    )
    assert response.status_code == 201, response.text
    shipment: dict[str, Any] = response.json()
    return shipment


def priced(rates: list[dict[str, Any]]) -> dict[tuple[str, str], Decimal]:
    return {(rate["carrier"], rate["service"]): Decimal(rate["price"]) for rate in rates}


# --- rates -------------------------------------------------------------------------------


async def test_rates_depend_on_distance_and_weight_and_are_deterministic(sbx: Sandboxed) -> None:
    destinations = [
        {"country": "NL", "postal_code": "1012 JS"},  # same two-digit prefix: local
        {"country": "NL", "postal_code": "1500 AA"},  # same first digit: regional
        {"country": "NL", "postal_code": "9711 LV"},  # elsewhere in the country
        {"country": "DE", "postal_code": "10115"},  # another EU country
        {"country": "US", "postal_code": "10001"},  # outside the EU
    ]
    answers = []
    for destination in destinations:
        response = await sbx.client.post("/v1/rates", json=rate_request(destination))
        assert response.status_code == 200, response.text
        answers.append(response.json()["rates"])

    first = answers[0]
    assert {rate["carrier"] for rate in first} == {"parcelfast", "swiftpost", "ecoship"}
    for rate in first:
        assert re.fullmatch(r"\d+\.\d{2}", rate["price"]), rate
        assert rate["currency"] == "EUR"
        assert isinstance(rate["transit_days"], int) and rate["transit_days"] >= 1

    prices = [priced(rates) for rates in answers]
    days = [{(r["carrier"], r["service"]): r["transit_days"] for r in rates} for rates in answers]
    for service in prices[0]:
        by_distance = [price[service] for price in prices]
        assert by_distance == sorted(by_distance) and by_distance[0] < by_distance[-1], service
        transit = [day[service] for day in days]
        assert transit == sorted(transit) and transit[0] < transit[-1], service

    # Transit depends on the service too: express beats economy on the same route.
    assert days[-1][("swiftpost", "express")] < days[-1][("swiftpost", "economy")]

    light = await sbx.client.post("/v1/rates", json=rate_request(destinations[2], 500))
    heavy = await sbx.client.post("/v1/rates", json=rate_request(destinations[2], 9_000))
    light_prices, heavy_prices = priced(light.json()["rates"]), priced(heavy.json()["rates"])
    assert all(heavy_prices[service] > light_prices[service] for service in light_prices)

    again = await sbx.client.post("/v1/rates", json=rate_request(destinations[3]))
    assert again.json()["rates"] == answers[3]
    # Determinism holds across instances, with or without a seed.
    async with sandbox_server(seed=None) as other:
        elsewhere = await other.client.post("/v1/rates", json=rate_request(destinations[3]))
        assert elsewhere.json()["rates"] == answers[3]


async def test_rates_only_for_requested_carriers_and_bad_bodies_are_422(sbx: Sandboxed) -> None:
    only = await sbx.client.post(
        "/v1/rates", json={**rate_request(AMSTERDAM), "carriers": ["ecoship"]}
    )
    assert {rate["carrier"] for rate in only.json()["rates"]} == {"ecoship"}

    bad = await sbx.client.post(
        "/v1/rates",
        json={"ship_from": AMSTERDAM, "ship_to": {"country": "Netherlands"}, "parcels": []},
    )
    assert bad.status_code == 422
    locations = {tuple(error["loc"]) for error in bad.json()["detail"]}
    assert ("body", "ship_to", "country") in locations
    assert ("body", "ship_to", "postal_code") in locations
    assert ("body", "parcels") in locations


# --- labels and idempotency --------------------------------------------------------------


async def test_same_idempotency_key_returns_the_same_shipment_and_buys_one_label(
    sbx: Sandboxed,
) -> None:
    first = await sbx.client.post(
        "/v1/shipments", json=shipment_request(), headers={"Idempotency-Key": "order-1-label"}
    )
    second = await sbx.client.post(
        "/v1/shipments", json=shipment_request(), headers={"Idempotency-Key": "order-1-label"}
    )
    assert first.status_code == 201, first.text
    assert second.status_code == 200, second.text
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true"

    shipment = first.json()
    assert shipment["carrier"] == "parcelfast" and shipment["service"] == "standard"
    assert shipment["tracking_number"].startswith("PF")
    assert shipment["label_url"] == f"{sbx.base_url}/v1/labels/{shipment['shipment_id']}.pdf"
    assert re.fullmatch(r"\d+\.\d{2}", shipment["price"]) and shipment["currency"] == "EUR"
    # The price is what /v1/rates quoted for that service and route.
    quotes = await sbx.client.post(
        "/v1/rates", json=rate_request({"country": "NL", "postal_code": "9711 LV"})
    )
    assert priced(quotes.json()["rates"])[("parcelfast", "standard")] == Decimal(shipment["price"])

    reused = await sbx.client.post(
        "/v1/shipments",
        json=shipment_request(parcels=[parcel(2500)]),
        headers={"Idempotency-Key": "order-1-label"},
    )
    assert reused.status_code == 422
    assert "different request body" in reused.json()["detail"]

    stats = (await sbx.client.get("/sandbox/stats")).json()
    assert stats["labels_by_carrier"] == {"parcelfast": 1, "swiftpost": 0, "ecoship": 0}
    assert stats["requests"]["POST /v1/shipments"] == 3


async def test_concurrent_requests_with_one_key_buy_one_label(sbx: Sandboxed) -> None:
    responses = await asyncio.gather(
        *(
            sbx.client.post(
                "/v1/shipments",
                json=shipment_request("swiftpost", "economy"),
                headers={"Idempotency-Key": "same"},
            )
            for _ in range(8)
        )
    )
    assert sorted(response.status_code for response in responses) == [200] * 7 + [201]
    assert len({response.json()["shipment_id"] for response in responses}) == 1
    stats = (await sbx.client.get("/sandbox/stats")).json()
    assert stats["labels_by_carrier"]["swiftpost"] == 1


async def test_label_purchase_without_key_is_400_and_bad_bodies_are_422(sbx: Sandboxed) -> None:
    missing = await sbx.client.post("/v1/shipments", json=shipment_request())
    assert missing.status_code == 400
    assert "Idempotency-Key" in missing.json()["detail"]

    bad = await sbx.client.post(
        "/v1/shipments",
        json=shipment_request(parcels=[{**parcel(), "weight_grams": -5}], ship_to={"city": "X"}),
        headers={"Idempotency-Key": "k"},
    )
    assert bad.status_code == 422
    locations = {tuple(error["loc"]) for error in bad.json()["detail"]}
    assert ("body", "parcels", 0, "weight_grams") in locations
    assert ("body", "ship_to", "name") in locations

    unknown_carrier = await sbx.client.post(
        "/v1/shipments", json=shipment_request("owlmail"), headers={"Idempotency-Key": "k2"}
    )
    assert unknown_carrier.status_code == 422
    assert [error["loc"] for error in unknown_carrier.json()["detail"]] == [["body", "carrier"]]

    unknown_service = await sbx.client.post(
        "/v1/shipments",
        json=shipment_request("ecoship", "express"),
        headers={"Idempotency-Key": "k3"},
    )
    assert unknown_service.status_code == 422
    assert [error["loc"] for error in unknown_service.json()["detail"]] == [["body", "service"]]

    stats = (await sbx.client.get("/sandbox/stats")).json()
    assert sum(stats["labels_by_carrier"].values()) == 0
    assert stats["requests"]["POST /v1/shipments"] == 4


# --- the label PDF -----------------------------------------------------------------------


def xref_offsets(pdf: bytes) -> list[int]:
    """Offsets of objects 1..n from the cross-reference table that `startxref` points at."""
    tail = pdf[pdf.rindex(b"startxref") :].split()
    assert tail[0] == b"startxref" and tail[2] == b"%%EOF"
    xref_at = int(tail[1])
    assert pdf[xref_at:].startswith(b"xref")
    lines = pdf[xref_at:].split(b"\n")
    first, count = (int(part) for part in lines[1].split())
    assert first == 0
    table = pdf[xref_at + len(lines[0]) + len(lines[1]) + 2 :]
    entries = [table[i * 20 : (i + 1) * 20] for i in range(count)]
    assert entries[0] == b"0000000000 65535 f \n"
    offsets = []
    for entry in entries[1:]:
        assert len(entry) == 20 and entry.endswith(b" n \n"), entry
        offsets.append(int(entry[:10]))
    return offsets


# --- bulk purchase ---------------------------------------------------------------------


def batch(*items: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {"shipments": [{**body, "idempotency_key": key} for key, body in items]}


async def test_a_bulk_purchase_buys_each_label_once_by_its_own_key(sbx: Sandboxed) -> None:
    single = await buy(sbx, key="alone", reference="order-1")
    response = await sbx.client.post(
        "/v1/shipments/batch",
        json=batch(
            ("alone", shipment_request(reference="order-1")),  # bought alone already
            ("new-1", shipment_request(reference="order-2")),
            ("new-2", shipment_request("swiftpost", "express", reference="order-3")),
            ("alone", shipment_request(reference="order-1", parcels=[parcel(9000)])),
        ),
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["idempotency_key"] for r in results] == ["alone", "new-1", "new-2", "alone"]
    assert [r["status"] for r in results] == [200, 201, 201, 422]
    assert results[0]["shipment"] == single  # the replay of the single purchase
    assert results[2]["shipment"]["tracking_number"].startswith("SP")
    assert "different request body" in results[3]["detail"]
    again = await sbx.client.post(
        "/v1/shipments/batch", json=batch(("new-1", shipment_request(reference="order-2")))
    )
    assert again.json()["results"][0]["shipment"] == results[1]["shipment"]
    stats = (await sbx.client.get("/sandbox/stats")).json()
    assert stats["labels_by_carrier"] == {"parcelfast": 2, "swiftpost": 1, "ecoship": 0}
    assert stats["label_requests"] == 6  # one alone, four and one in bulk


async def test_a_bulk_purchase_draws_faults_per_label(sbx: Sandboxed) -> None:
    await sbx.client.post(
        "/sandbox/faults",
        json={"rate_limit_rate": 1, "retry_after_seconds": 3, "carriers": ["swiftpost"]},
    )
    response = await sbx.client.post(
        "/v1/shipments/batch",
        json=batch(
            ("ok", shipment_request()),
            ("limited", shipment_request("swiftpost", "economy")),
        ),
    )
    ok, limited = response.json()["results"]
    assert ok["status"] == 201 and ok["shipment"] is not None
    assert limited["status"] == 429 and limited["shipment"] is None
    assert limited["retry_after_seconds"] == 3
    await sbx.client.post("/sandbox/faults", json={"outage": True})
    down = await sbx.client.post("/v1/shipments/batch", json=batch(("x", shipment_request())))
    assert down.json()["results"][0]["status"] == 503
    stats = (await sbx.client.get("/sandbox/stats")).json()
    assert (stats["rate_limited"], stats["outages"]) == (1, 1)
    assert stats["labels_by_carrier"]["parcelfast"] == 1


async def test_a_bulk_purchase_that_times_out_has_bought_its_labels(sbx: Sandboxed) -> None:
    await sbx.client.post("/sandbox/faults", json={"timeout_rate": 1, "timeout_seconds": 1.0})
    items = batch(("slow-1", shipment_request()), ("slow-2", shipment_request(reference="o-2")))
    with pytest.raises(httpx.ReadTimeout):
        await sbx.client.post("/v1/shipments/batch", json=items, timeout=0.3)
    await sbx.client.delete("/sandbox/faults")
    retry = (await sbx.client.post("/v1/shipments/batch", json=items)).json()["results"]
    assert [r["status"] for r in retry] == [200, 200]  # bought by the lost request
    assert (await sbx.client.get("/sandbox/stats")).json()["labels_by_carrier"]["parcelfast"] == 2


async def test_a_bulk_purchase_refuses_an_invalid_item_as_a_whole(sbx: Sandboxed) -> None:
    bad = await sbx.client.post(
        "/v1/shipments/batch",
        json=batch(("a", shipment_request()), ("b", shipment_request("nobody", "x"))),
    )
    assert bad.status_code == 422
    assert any(e["loc"][:3] == ["body", "shipments", 1] for e in bad.json()["detail"])
    too_many = batch(*((f"k{i}", shipment_request()) for i in range(101)))
    assert (await sbx.client.post("/v1/shipments/batch", json=too_many)).status_code == 422
    stats = (await sbx.client.get("/sandbox/stats")).json()
    assert sum(stats["labels_by_carrier"].values()) == 0


async def test_label_is_a_valid_pdf_with_a_code128_barcode(sbx: Sandboxed) -> None:
    shipment = await buy(sbx)
    response = await sbx.client.get(shipment["label_url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    pdf = response.content
    assert pdf.startswith(b"%PDF-1.4")
    assert pdf.endswith(b"%%EOF")

    offsets = xref_offsets(pdf)
    assert len(offsets) >= 6
    for number, offset in enumerate(offsets, start=1):
        assert pdf[offset:].startswith(f"{number} 0 obj".encode()), (number, offset)

    stream = re.search(rb"<< /Length (\d+) >>\nstream\n", pdf)
    assert stream is not None
    content = pdf[stream.end() : stream.end() + int(stream.group(1))]
    assert pdf[stream.end() + int(stream.group(1)) :].startswith(b"\nendstream")

    tracking_number = shipment["tracking_number"]
    for text in ("PARCELFAST", "Service: standard", "NL 9711 LV", tracking_number):
        assert f"({text}) Tj".encode() in content, text

    # One filled rectangle per bar: three per symbol, four in the stop pattern.
    bars = re.findall(rb"([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+) re f\n", content)
    symbols = code128b_symbols(tracking_number)
    assert len(bars) == 3 * (len(symbols) - 1) + 4
    # Their widths, in modules, are the barcode's bar widths.
    module = min(float(bar[2]) for bar in bars)
    printed = [round(float(bar[2]) / module) for bar in bars]
    assert printed == code128b_widths(tracking_number)[::2]

    missing = await sbx.client.get("/v1/labels/00000000-0000-4000-8000-000000000000.pdf")
    assert missing.status_code == 404
    assert (await sbx.client.get("/v1/labels/not-a-uuid.pdf")).status_code == 404


def test_code128_check_character() -> None:
    # Subset B values are ASCII - 32: P=48, J=42, 1=17, 2=18, 3=19, C=35. The sum is the
    # start value 104 plus each value times its position:
    # 104 + 48*1 + 42*2 + 42*3 + 17*4 + 18*5 + 19*6 + 35*7 = 879, and 879 mod 103 = 55.
    # (With start A, 103, the sum is 878 and the check value 54: the published example.)
    assert code128b_checksum("PJJ123C") == 55
    # Published subset-B example: "abcdef" -> 1435 + 104 = 1539, 1539 mod 103 = 97.
    assert code128b_checksum("abcdef") == 97
    assert code128b_symbols("PJJ123C") == [104, 48, 42, 42, 17, 18, 19, 35, 55, 106]


def test_code128_modules_match_the_published_patterns() -> None:
    # "H" in subset B: start B, H (40), check (104 + 40) mod 103 = 41 ("I"), stop.
    start_b, h, i, stop = "11010010000", "11000101000", "11000100010", "1100011101011"
    assert code128b_bits("H") == start_b + h + i + stop
    for text in ("PF0000000001", "swift post", "~}|"):
        widths = code128b_widths(text)
        assert sum(widths) == 11 * (len(text) + 3) + 2
        assert all(1 <= width <= 4 for width in widths)


# --- tracking and webhooks ---------------------------------------------------------------


async def test_tracker_starts_pre_transit_and_keeps_history(sbx: Sandboxed) -> None:
    assert (await sbx.client.get("/v1/trackers/PF0000000000")).status_code == 404
    shipment = await buy(sbx)
    number = shipment["tracking_number"]

    tracker = (await sbx.client.get(f"/v1/trackers/{number}")).json()
    assert tracker["carrier"] == "parcelfast" and tracker["tracking_number"] == number
    assert tracker["status"] == "pre_transit"
    assert [event["status"] for event in tracker["events"]] == ["pre_transit"]

    for status, at in [
        ("picked_up", "2031-01-01T09:00:00+01:00"),
        ("delivered", "2031-01-02T15:00:00Z"),
        ("in_transit", "2031-01-01T20:00:00Z"),  # arrives late, happened before delivery
    ]:
        added = await sbx.client.post(
            f"/sandbox/trackers/{number}/events", json={"status": status, "at": at, "push": False}
        )
        assert added.status_code == 202, added.text
        assert added.json()["status"] == status

    tracker = (await sbx.client.get(f"/v1/trackers/{number}")).json()
    history = [event["status"] for event in tracker["events"]]
    assert history == ["pre_transit", "picked_up", "in_transit", "delivered"]
    assert tracker["status"] == "delivered"
    assert all(event["description"] for event in tracker["events"])

    unknown = await sbx.client.post(
        "/sandbox/trackers/PF0000000000/events", json={"status": "delivered"}
    )
    assert unknown.status_code == 404
    bad = await sbx.client.post(f"/sandbox/trackers/{number}/events", json={"status": "lost"})
    assert bad.status_code == 422
    naive = await sbx.client.post(
        f"/sandbox/trackers/{number}/events",
        json={"status": "delivered", "at": "2031-01-02T15:00:00"},
    )
    assert naive.status_code == 422  # RFC 3339 needs an offset
    assert sbx.receiver.requests == []  # push: false sends nothing


async def test_control_event_pushes_a_signed_webhook(sbx: Sandboxed) -> None:
    shipment = await buy(sbx, carrier="ecoship", service="economy")
    number = shipment["tracking_number"]
    assert sbx.receiver.requests == []  # a new label pushes nothing by itself

    added = await sbx.client.post(
        f"/sandbox/trackers/{number}/events",
        json={"status": "out_for_delivery", "description": "With the courier"},
    )
    assert added.status_code == 202
    event = added.json()

    async def pushed() -> list[Received]:
        return sbx.receiver.requests

    (received,) = await wait_for(pushed, timeout=5.0, what="the webhook")
    assert received.path == "/webhooks/carriers/ecoship"
    assert received.headers["content-type"] == "application/json"
    assert received.json() == {
        "event_id": event["event_id"],
        "carrier": "ecoship",
        "tracking_number": number,
        "status": "out_for_delivery",
        "occurred_at": event["at"],
        "description": "With the courier",
    }

    header = received.headers[SIGNATURE_HEADER.lower()]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    verify_webhook(SECRET, header, received.body, now=time.time())
    with pytest.raises(WebhookSignatureError):
        verify_webhook("another-secret", header, received.body, now=time.time())
    with pytest.raises(WebhookSignatureError):
        verify_webhook(SECRET, header, received.body, now=time.time() + 301)
    with pytest.raises(WebhookSignatureError):
        verify_webhook(
            SECRET, header, received.body.replace(b"ecoship", b"ecoshiq"), now=time.time()
        )

    async def logged() -> list[dict[str, Any]]:
        attempts: list[dict[str, Any]] = (await sbx.client.get("/sandbox/webhooks")).json()[
            "attempts"
        ]
        return attempts

    (attempt,) = await wait_for(logged, timeout=5.0, what="the logged attempt")
    assert attempt["event_id"] == event["event_id"]
    assert attempt["http_status"] == 204 and attempt["delivered"] is True
    assert attempt["attempt"] == 1 and attempt["tracking_status"] == "out_for_delivery"


async def test_failed_webhook_pushes_are_retried(sbx: Sandboxed) -> None:
    number = (await buy(sbx))["tracking_number"]
    sbx.receiver.fail_with = [503, 500]
    started = time.monotonic()
    added = await sbx.client.post(
        f"/sandbox/trackers/{number}/events", json={"status": "picked_up"}
    )
    assert added.status_code == 202
    assert time.monotonic() - started < 1  # retries happen after the answer, not before

    async def delivered() -> list[dict[str, Any]]:
        attempts: list[dict[str, Any]] = (await sbx.client.get("/sandbox/webhooks")).json()[
            "attempts"
        ]
        return attempts if any(attempt["delivered"] for attempt in attempts) else []

    attempts = await wait_for(delivered, timeout=5.0, what="a delivered webhook")
    assert [attempt["http_status"] for attempt in attempts] == [503, 500, 204]
    assert [attempt["attempt"] for attempt in attempts] == [1, 2, 3]
    stats = (await sbx.client.get("/sandbox/stats")).json()
    assert (stats["webhooks_attempted"], stats["webhooks_delivered"]) == (3, 1)
    bodies = {received.body for received in sbx.receiver.requests}
    assert len(bodies) == 1  # the same event each time
    for received in sbx.receiver.requests:
        verify_webhook(
            SECRET, received.headers[SIGNATURE_HEADER.lower()], received.body, now=time.time()
        )

    # A refusal that retrying cannot fix (a bad signature, say) is not retried.
    sbx.receiver.fail_with = [401]
    await sbx.client.post(f"/sandbox/trackers/{number}/events", json={"status": "in_transit"})

    async def refused() -> list[dict[str, Any]]:
        attempts: list[dict[str, Any]] = (await sbx.client.get("/sandbox/webhooks")).json()[
            "attempts"
        ]
        return [attempt for attempt in attempts if attempt["tracking_status"] == "in_transit"]

    (only,) = await wait_for(refused, timeout=5.0, what="the refused webhook")
    assert only["http_status"] == 401 and only["delivered"] is False
    assert sbx.sandbox.background_tasks == 0


async def test_unreachable_webhook_target_is_recorded_and_retried() -> None:
    async with sandbox_server(
        webhook_url_template="http://127.0.0.1:9/webhooks/{carrier}", webhook_max_attempts=3
    ) as sbx:
        number = (await buy(sbx))["tracking_number"]
        await sbx.client.post(f"/sandbox/trackers/{number}/events", json={"status": "picked_up"})

        async def attempts() -> list[dict[str, Any]]:
            logged: list[dict[str, Any]] = (await sbx.client.get("/sandbox/webhooks")).json()[
                "attempts"
            ]
            return logged if len(logged) == 3 else []

        logged = await wait_for(attempts, timeout=5.0, what="three failed attempts")
        assert all(attempt["http_status"] is None and attempt["error"] for attempt in logged)
        assert not any(attempt["delivered"] for attempt in logged)


# --- faults ------------------------------------------------------------------------------


async def test_injected_faults(sbx: Sandboxed) -> None:
    rates_body = rate_request({"country": "DE", "postal_code": "10115"})
    number = (await buy(sbx))["tracking_number"]

    assert (await sbx.client.post("/sandbox/faults", json={"outage": True})).status_code == 200
    assert (await sbx.client.get("/sandbox/faults")).json()["outage"] is True
    assert (await sbx.client.post("/v1/rates", json=rates_body)).status_code == 503
    assert (await sbx.client.get(f"/v1/trackers/{number}")).status_code == 503
    outage_label = await sbx.client.post(
        "/v1/shipments", json=shipment_request(), headers={"Idempotency-Key": "during-outage"}
    )
    assert outage_label.status_code == 503
    # Faults never touch the controls or the health check.
    assert (await sbx.client.get("/healthz")).json() == {"status": "ok"}
    assert (await sbx.client.get("/sandbox/stats")).status_code == 200

    await sbx.client.post("/sandbox/faults", json={"rate_limit_rate": 1, "retry_after_seconds": 7})
    limited = await sbx.client.post("/v1/rates", json=rates_body)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"

    await sbx.client.post("/sandbox/faults", json={"error_rate": 1})
    assert (await sbx.client.post("/v1/rates", json=rates_body)).status_code == 500

    assert (await sbx.client.delete("/sandbox/faults")).status_code == 200
    assert (await sbx.client.get("/sandbox/faults")).json()["error_rate"] == 0
    assert (await sbx.client.post("/v1/rates", json=rates_body)).status_code == 200
    retried = await sbx.client.post(
        "/v1/shipments", json=shipment_request(), headers={"Idempotency-Key": "during-outage"}
    )
    assert retried.status_code == 201  # the failed attempt bought nothing

    stats = (await sbx.client.get("/sandbox/stats")).json()
    assert stats["outages"] == 3
    assert stats["rate_limited"] == 1
    assert stats["errors"] == 1
    assert stats["timeouts"] == 0
    assert stats["labels_by_carrier"]["parcelfast"] == 2

    invalid = await sbx.client.post("/sandbox/faults", json={"error_rate": 2, "carriers": ["x"]})
    assert invalid.status_code == 422
    assert {tuple(e["loc"]) for e in invalid.json()["detail"]} == {
        ("body", "error_rate"),
        ("body", "carriers"),
    }


async def test_faults_limited_to_one_carrier(sbx: Sandboxed) -> None:
    await sbx.client.post("/sandbox/faults", json={"outage": True, "carriers": ["swiftpost"]})
    rates = (await sbx.client.post("/v1/rates", json=rate_request(AMSTERDAM))).json()
    assert {rate["carrier"] for rate in rates["rates"]} == {"parcelfast", "ecoship"}
    assert [entry["carrier"] for entry in rates["unavailable"]] == ["swiftpost"]
    only_swiftpost = await sbx.client.post(
        "/v1/rates", json={**rate_request(AMSTERDAM), "carriers": ["swiftpost"]}
    )
    assert only_swiftpost.status_code == 503

    down = await sbx.client.post(
        "/v1/shipments",
        json=shipment_request("swiftpost", "express"),
        headers={"Idempotency-Key": "a"},
    )
    assert down.status_code == 503
    up = await sbx.client.post(
        "/v1/shipments", json=shipment_request(), headers={"Idempotency-Key": "b"}
    )
    assert up.status_code == 201


async def test_timeout_loses_the_answer_not_the_label(sbx: Sandboxed) -> None:
    await sbx.client.post("/sandbox/faults", json={"timeout_rate": 1, "timeout_seconds": 1.0})
    with pytest.raises(httpx.ReadTimeout):
        await sbx.client.post(
            "/v1/shipments",
            json=shipment_request(),
            headers={"Idempotency-Key": "slow"},
            timeout=0.3,
        )
    await sbx.client.delete("/sandbox/faults")
    retry = await sbx.client.post(
        "/v1/shipments", json=shipment_request(), headers={"Idempotency-Key": "slow"}
    )
    assert retry.status_code == 200  # bought by the request that timed out
    stats = (await sbx.client.get("/sandbox/stats")).json()
    assert stats["timeouts"] == 1
    assert stats["labels_by_carrier"]["parcelfast"] == 1


async def test_latency_is_added() -> None:
    async with sandbox_server() as sbx:
        await sbx.client.post("/sandbox/faults", json={"latency_ms": 300})
        started = time.monotonic()
        response = await sbx.client.post("/v1/rates", json=rate_request(AMSTERDAM))
        assert response.status_code == 200
        assert time.monotonic() - started >= 0.3


async def test_a_seed_makes_identifiers_and_fault_draws_repeatable() -> None:
    async def session() -> tuple[dict[str, Any], list[int]]:
        async with sandbox_server(seed=42) as sbx:
            shipment = await buy(sbx)
            await sbx.client.post("/sandbox/faults", json={"error_rate": 0.5})
            statuses = [
                (await sbx.client.post("/v1/rates", json=rate_request(AMSTERDAM))).status_code
                for _ in range(16)
            ]
            return shipment, statuses

    first_shipment, first_statuses = await session()
    second_shipment, second_statuses = await session()
    assert first_shipment["shipment_id"] == second_shipment["shipment_id"]
    assert first_shipment["tracking_number"] == second_shipment["tracking_number"]
    assert first_statuses == second_statuses
    assert set(first_statuses) == {200, 500}


# --- auto advance and shutdown -----------------------------------------------------------


async def test_auto_advance_delivers_the_parcel() -> None:
    async with sandbox_server(auto_advance=True, auto_advance_step_seconds=0.05) as sbx:
        number = (await buy(sbx))["tracking_number"]

        async def delivered() -> dict[str, Any] | None:
            tracker: dict[str, Any] = (await sbx.client.get(f"/v1/trackers/{number}")).json()
            return tracker if tracker["status"] == "delivered" else None

        tracker = await wait_for(delivered, timeout=5.0, what="delivery")
        assert [event["status"] for event in tracker["events"]] == [
            "pre_transit",
            "picked_up",
            "in_transit",
            "out_for_delivery",
            "delivered",
        ]

        async def all_pushed() -> list[Received]:
            return sbx.receiver.requests if len(sbx.receiver.requests) == 4 else []

        pushed = await wait_for(all_pushed, timeout=5.0, what="four webhooks")
        assert sorted(request.json()["status"] for request in pushed) == sorted(
            ["picked_up", "in_transit", "out_for_delivery", "delivered"]
        )


async def test_shutdown_cancels_background_work() -> None:
    started = time.monotonic()
    async with sandbox_server(auto_advance=True, auto_advance_step_seconds=3600) as sbx:
        await buy(sbx)
        sandbox = sbx.sandbox
        assert sandbox.background_tasks == 1
    assert sandbox.background_tasks == 0
    assert time.monotonic() - started < 10


# --- the gateway's reading of a bulk answer ------------------------------------------------


async def test_a_bulk_item_answered_as_a_success_without_its_label_may_have_been_sold() -> None:
    # A carrier (or a proxy in front of it) that says "created" but loses the body: the
    # label may exist, so the purchase must keep its carrier, service and key (pinned).
    app = FastAPI()

    @app.post("/v1/shipments/batch")
    async def batch_answer(request: Request) -> dict[str, Any]:
        items = (await request.json())["shipments"]
        assert [i["idempotency_key"] for i in items] == ["k-lost", "k-refused"]
        return {"results": [{"status": 201}, {"status": 422, "detail": "bad postal code"}]}

    async with serving(lambda _: app) as (base_url, _):
        gateway = SandboxCarrierGateway(base_url, webhook_secret=SECRET, timeout_seconds=5)
        try:
            request = LabelRequest(
                "parcelfast", "standard", Place("DE", "10115"), {"country": "DE"}, [], "o-1"
            )
            lost, refused = await gateway.buy_labels([(request, "k-lost"), (request, "k-refused")])
        finally:
            await gateway.close()
    assert isinstance(lost, CarrierError)
    assert lost.retryable and lost.maybe_processed
    assert isinstance(refused, CarrierError)
    assert not refused.retryable and not refused.maybe_processed and refused.status == 422
