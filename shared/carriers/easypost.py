"""The gateway to EasyPost (REST API v2): many real carriers behind one account.

Written from the publicly documented v2 shapes without network access; every assumption
is marked ``ASSUMPTION`` here and listed in docs/carriers-easypost.md. Check them against
EasyPost's current reference (and a test-mode API key) before using a production key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import unicodedata
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp

from shared.carriers.base import (
    CarrierError,
    Label,
    LabelRequest,
    Place,
    Quotes,
    Rate,
    RateRequest,
    TrackingEvent,
)
from shared.carriers.http import CarrierAnswer, call_carrier, carrier_session
from shared.signing import WebhookPayloadError, WebhookSignatureError

SIGNATURE_HEADER = "X-Hmac-Signature"
SIGNATURE_PREFIX = "hmac-sha256-hex="

GRAMS_PER_OUNCE = Decimal("28.349523125")
MM_PER_INCH = Decimal("25.4")

# ASSUMPTION: EasyPost may answer ``delivery_days: null`` (no estimate for that service).
# Rate needs an int; a pessimistic guess keeps SLA-based rate choice from over-promising.
UNKNOWN_TRANSIT_DAYS = 7

# EasyPost tracker / tracking_detail statuses -> the project's TrackingStatus vocabulary.
# EasyPost has no "picked_up" status (pickup shows as in_transit, with a status_detail),
# so that project status is never produced by this adapter.
STATUS_MAP: dict[str, str] = {
    "pre_transit": "pre_transit",
    "in_transit": "in_transit",
    "out_for_delivery": "out_for_delivery",
    "delivered": "delivered",
    "available_for_pickup": "available_for_pickup",
    "return_to_sender": "return_to_sender",
    "failure": "delivery_failed",
    "cancelled": "cancelled",
    "error": "unknown",
    "unknown": "unknown",
}


def map_status(easypost_status: str | None) -> str:
    """The project status for an EasyPost status; anything unlisted is ``unknown``."""
    return STATUS_MAP.get((easypost_status or "").lower(), "unknown")


def _parse_time(value: str) -> datetime:
    # ASSUMPTION: EasyPost datetimes are ISO 8601, usually with "Z"; naive ones are UTC.
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _money(value: Any) -> Decimal:
    # EasyPost sends amounts as decimal strings ("7.58"); str() keeps floats exact-ish too.
    try:
        return Decimal(str(value))
    except InvalidOperation as exc:
        raise CarrierError(f"unreadable amount {value!r}", retryable=False) from exc


def _address(place: Place | dict[str, Any]) -> dict[str, Any]:
    """Waybill's address fields -> EasyPost Address fields."""
    if isinstance(place, Place):
        return {"country": place.country, "zip": place.postal_code}
    mapping = {
        "name": "name",
        "company": "company",
        "line1": "street1",
        "line2": "street2",
        "city": "city",
        "state": "state",
        "region": "state",
        "postal_code": "zip",
        "country": "country",
        "phone": "phone",
        "email": "email",
    }
    address: dict[str, Any] = {}
    for ours, theirs in mapping.items():
        if place.get(ours) not in (None, ""):
            address[theirs] = place[ours]
    return address


def _parcel(parcels: list[dict[str, int]]) -> dict[str, float]:
    """One Waybill parcel (grams, millimetres) -> an EasyPost Parcel (ounces, inches)."""
    # ASSUMPTION: an EasyPost Shipment carries exactly one parcel; several parcels need an
    # EasyPost Order, which this adapter does not implement.
    if len(parcels) != 1:
        raise CarrierError(
            f"EasyPost shipments carry one parcel, got {len(parcels)}", retryable=False
        )
    (parcel,) = parcels
    out = {"weight": float(round(Decimal(parcel["weight_grams"]) / GRAMS_PER_OUNCE, 1))}
    for ours, theirs in (("length_mm", "length"), ("width_mm", "width"), ("height_mm", "height")):
        if ours in parcel:
            out[theirs] = float(round(Decimal(parcel[ours]) / MM_PER_INCH, 1))
    return out


class EasyPostCarrierGateway:
    """CarrierGateway against ``https://api.easypost.com/v2`` (HTTP Basic: key, no password)."""

    def __init__(
        self,
        api_key: str,
        *,
        webhook_secret: str,
        base_url: str = "https://api.easypost.com",
        timeout_seconds: float = 10.0,
        from_address: dict[str, Any] | None = None,
    ) -> None:
        self._base_url = base_url
        self._timeout = timeout_seconds
        credentials = base64.b64encode(f"{api_key}:".encode()).decode()
        self._headers = {"Authorization": f"Basic {credentials}"}
        self._session: aiohttp.ClientSession | None = None
        # EasyPost normalises the webhook secret with NFKD before using it as the HMAC key.
        self._secret_key = unicodedata.normalize("NFKD", webhook_secret).encode("utf-8")
        # ASSUMPTION: LabelRequest.ship_from is only country + postal code, which is enough
        # to rate but not to buy a real label; the full sender address comes from here.
        self._from_address = dict(from_address) if from_address else None
        # idempotency key -> EasyPost shipment id, so a retry in this process reuses the
        # shipment (and finds a label it already bought) instead of creating another.
        self._shipments_by_key: dict[str, str] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- HTTP --------------------------------------------------------------------------

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if self._session is None:  # made in the event loop that uses it
            self._session = carrier_session(
                self._base_url, timeout_seconds=self._timeout, headers=self._headers
            )
        return await call_carrier(self._session, method, path, error_text=_error_text, **kwargs)

    def _shipment_body(
        self, ship_from: Place, ship_to: Place | dict[str, Any], parcels: list[dict[str, int]]
    ) -> dict[str, Any]:
        from_address = self._from_address or _address(ship_from)
        return {
            "from_address": from_address,
            "to_address": _address(ship_to),
            "parcel": _parcel(parcels),
        }

    # --- rates -------------------------------------------------------------------------

    async def rates(self, request: RateRequest) -> Quotes:
        # ASSUMPTION: creating a Shipment is how EasyPost rates; it returns ``rates`` inline
        # (unpurchased shipments cost nothing), and carriers that failed to quote as
        # ``messages`` ({carrier, type: "rate_error", message}).
        shipment = await self._call(
            "POST",
            "/v2/shipments",
            json={
                "shipment": self._shipment_body(request.ship_from, request.ship_to, request.parcels)
            },
        )
        wanted = set(request.carriers) if request.carriers is not None else None
        rates = [_rate(r) for r in shipment.get("rates") or []]
        unavailable = {
            str(m["carrier"]): str(m.get("message") or m.get("type") or "no rate")
            for m in shipment.get("messages") or []
            if isinstance(m, dict) and m.get("carrier")
        }
        if wanted is not None:
            rates = [r for r in rates if r.carrier in wanted]
            unavailable = {c: why for c, why in unavailable.items() if c in wanted}
        return Quotes(rates, unavailable)

    async def cancel_label(self, carrier: str, carrier_shipment_id: str) -> None:
        """Ask EasyPost for a refund of the unused label (it voids it with the carrier)."""
        del carrier
        # ASSUMPTION: POST /v2/shipments/{id}/refund answers the Shipment with
        # ``refund_status`` "submitted", "refunded" or "rejected".
        shipment = await self._call("POST", f"/v2/shipments/{carrier_shipment_id}/refund")
        if shipment.get("refund_status") == "rejected":
            raise CarrierError(
                f"EasyPost rejected the refund of {carrier_shipment_id}", retryable=False
            )

    # --- labels ------------------------------------------------------------------------

    async def buy_label(self, request: LabelRequest, *, idempotency_key: str) -> Label:
        """Buy the label for ``request``'s carrier and service, once per idempotency key.

        EasyPost rate ids belong to one shipment, and Rate carries no shipment id, so the
        shipment is created again here and the rate matching carrier + service is bought.
        The key goes to EasyPost as ``Idempotency-Key`` on the buy (and ``<key>/create`` on
        the create; ASSUMPTION: what EasyPost does with it must be checked by the operator).
        Within this process a retry with the same key reuses the shipment and returns its
        label if already bought.
        """
        headers = {"Idempotency-Key": idempotency_key}
        shipment_id = self._shipments_by_key.get(idempotency_key)
        shipment: dict[str, Any]
        if shipment_id is not None:
            shipment = await self._call("GET", f"/v2/shipments/{shipment_id}")
            if _is_bought(shipment):
                return _label(shipment)
        else:
            body = self._shipment_body(request.ship_from, request.ship_to, request.parcels)
            body["reference"] = request.reference
            # A key derived from the caller's, so a replayed create (if EasyPost honours
            # the header there) finds the same shipment without reusing the buy's key.
            shipment = await self._call(
                "POST",
                "/v2/shipments",
                headers={"Idempotency-Key": f"{idempotency_key}/create"},
                json={"shipment": body},
            )
            shipment_id = str(shipment["id"])
            self._shipments_by_key[idempotency_key] = shipment_id
            if _is_bought(shipment):  # an idempotent replay of an earlier purchase
                return _label(shipment)
        rate_id = _find_rate_id(shipment, request.carrier, request.service)
        bought = await self._call(
            "POST",
            f"/v2/shipments/{shipment_id}/buy",
            headers=headers,
            json={"rate": {"id": rate_id}},
        )
        return _label(bought)

    # --- tracking ----------------------------------------------------------------------

    async def track(self, tracking_number: str) -> list[TrackingEvent]:
        # ASSUMPTION: list trackers filtered by ``tracking_code``; EasyPost creates a tracker
        # for every label it sells, so one exists for labels bought through this adapter.
        body = await self._call(
            "GET", "/v2/trackers", params={"tracking_code": tracking_number, "page_size": 5}
        )
        trackers = [t for t in body.get("trackers") or [] if t.get("tracking_code")]
        if not trackers:
            raise CarrierError(f"no EasyPost tracker for {tracking_number}", retryable=False)
        tracker = max(trackers, key=lambda t: str(t.get("updated_at") or t.get("created_at")))
        return _events(tracker)

    # --- webhooks ----------------------------------------------------------------------

    def parse_webhook(self, headers: dict[str, str], body: bytes, *, now: float) -> TrackingEvent:
        """Verify ``X-Hmac-Signature`` over the raw body; return the tracker's newest event.

        EasyPost's signature carries no timestamp, so ``now`` is unused: a replayed request
        is caught by the tracking-event dedupe, not here.
        """
        del now
        header = next(
            (v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), None
        )
        if header is None or not header.strip():
            raise WebhookSignatureError("missing signature header")
        expected = SIGNATURE_PREFIX + hmac.new(self._secret_key, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), header.strip().encode()):
            raise WebhookSignatureError("signature mismatch")
        try:
            payload = json.loads(body)
            if payload.get("object") != "Event":
                raise ValueError(f"not an Event: {payload.get('object')!r}")
            tracker = payload["result"]
            if tracker.get("object") != "Tracker":
                raise ValueError(f"not a tracker event: {payload.get('description')!r}")
            events = _events(tracker)
            if events:
                newest = max(events, key=lambda e: e.at)
            else:  # a tracker with no scans yet: its own status and time
                newest = TrackingEvent(
                    tracking_number=tracker["tracking_code"],
                    status=map_status(tracker.get("status")),
                    at=_parse_time(tracker.get("updated_at") or tracker["created_at"]),
                    raw=tracker,
                )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise WebhookPayloadError(f"signed but unreadable body: {exc}") from exc
        raw = {**newest.raw, "easypost_event_id": payload.get("id")}
        return TrackingEvent(
            tracking_number=newest.tracking_number,
            status=newest.status,
            at=newest.at,
            # event_id stays None: EasyPost's Event id differs from anything a poll sees, so
            # the shipping service's fallback key (tracking number/status/time) is what
            # makes a polled copy and a pushed copy of one scan count once.
            event_id=None,
            description=newest.description,
            raw=raw,
        )


# --- mapping helpers ---------------------------------------------------------------------


def _error_text(answer: CarrierAnswer) -> str:
    # EasyPost errors: {"error": {"code": "...", "message": "...", "errors": [...]}}
    try:
        error = answer.json().get("error") or {}
        return f"{error.get('code', '')} {error.get('message', '')}".strip()[:300]
    except (ValueError, AttributeError):
        return answer.text[:300]


def _rate(r: dict[str, Any]) -> Rate:
    days = r.get("delivery_days")
    if days is None:
        days = r.get("est_delivery_days")
    return Rate(
        carrier=str(r["carrier"]),
        service=str(r["service"]),
        price=_money(r["rate"]),
        currency=str(r["currency"]),
        transit_days=int(days) if days is not None else UNKNOWN_TRANSIT_DAYS,
    )


def _find_rate_id(shipment: dict[str, Any], carrier: str, service: str) -> str:
    for r in shipment.get("rates") or []:
        if r.get("carrier") == carrier and r.get("service") == service:
            return str(r["id"])
    raise CarrierError(f"EasyPost offers no rate for {carrier} {service}", retryable=False)


def _is_bought(shipment: dict[str, Any]) -> bool:
    return bool(shipment.get("tracking_code")) and bool(shipment.get("postage_label"))


def _label(shipment: dict[str, Any]) -> Label:
    selected = shipment.get("selected_rate") or {}
    tracker = shipment.get("tracker") or {}
    return Label(
        carrier=str(selected.get("carrier", "")),
        service=str(selected.get("service", "")),
        carrier_shipment_id=str(shipment["id"]),
        tracking_number=str(shipment["tracking_code"]),
        label_url=str(shipment["postage_label"]["label_url"]),
        estimated_delivery=_estimated_delivery(shipment, selected, tracker),
        price=_money(selected["rate"]),
        currency=str(selected["currency"]),
    )


def _estimated_delivery(
    shipment: dict[str, Any], selected: dict[str, Any], tracker: dict[str, Any]
) -> datetime:
    # ASSUMPTION: prefer the rate's delivery_date, then the tracker's est_delivery_date,
    # then the shipment's created_at (else now) + delivery_days (or UNKNOWN_TRANSIT_DAYS);
    # a bought label is never refused for lack of an estimate.
    for value in (selected.get("delivery_date"), tracker.get("est_delivery_date")):
        if value:
            return _parse_time(str(value))
    days = selected.get("delivery_days") or selected.get("est_delivery_days")
    created = shipment.get("created_at")
    start = _parse_time(str(created)) if created else datetime.now(UTC)
    return start + timedelta(days=int(days) if days else UNKNOWN_TRANSIT_DAYS)


def _events(tracker: dict[str, Any]) -> list[TrackingEvent]:
    code = str(tracker["tracking_code"])
    return [
        TrackingEvent(
            tracking_number=code,
            status=map_status(detail.get("status")),
            at=_parse_time(detail["datetime"]),
            event_id=None,  # tracking_details carry no id (see parse_webhook)
            description=detail.get("message"),
            raw=detail,
        )
        for detail in tracker.get("tracking_details") or []
    ]
