"""The gateway to the carrier sandbox (``waybill carrier-sandbox``): several carriers, one API."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import aiohttp

from shared.carriers.base import (
    CarrierError,
    Label,
    LabelRequest,
    Quotes,
    Rate,
    RateRequest,
    TrackingEvent,
)
from shared.carriers.http import call_carrier, carrier_session, error_for_status
from shared.signing import SIGNATURE_HEADER, WebhookPayloadError, verify_webhook


class SandboxCarrierGateway:
    def __init__(self, base_url: str, *, webhook_secret: str, timeout_seconds: float = 5.0) -> None:
        self._base_url = base_url
        self._timeout = timeout_seconds
        self._session: aiohttp.ClientSession | None = None
        self._secret = webhook_secret

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if self._session is None:  # made in the event loop that uses it
            self._session = carrier_session(self._base_url, timeout_seconds=self._timeout)
        return await call_carrier(self._session, method, path, **kwargs)

    async def rates(self, request: RateRequest) -> Quotes:
        query: dict[str, object] = {
            "ship_from": vars(request.ship_from),
            "ship_to": vars(request.ship_to),
            "parcels": request.parcels,
        }
        if request.carriers is not None:
            query["carriers"] = list(request.carriers)
        body = await self._call("POST", "/v1/rates", json=query)
        rates = [
            Rate(
                carrier=r["carrier"],
                service=r["service"],
                price=Decimal(r["price"]),
                currency=r["currency"],
                transit_days=int(r["transit_days"]),
            )
            for r in body["rates"]
        ]
        unavailable = {u["carrier"]: u["reason"] for u in body.get("unavailable") or []}
        return Quotes(rates, unavailable)

    async def buy_labels(
        self, purchases: Sequence[tuple[LabelRequest, str]]
    ) -> list[Label | CarrierError]:
        """Several labels in one request (``POST /v1/shipments/batch``), each with its own
        idempotency key and its own outcome. A failure of the request itself raises, and
        then concerns every label of it."""
        body = await self._call(
            "POST",
            "/v1/shipments/batch",
            json={
                "shipments": [
                    {**self._shipment_body(request), "idempotency_key": key}
                    for request, key in purchases
                ]
            },
        )
        outcomes: list[Label | CarrierError] = []
        for result in body["results"]:
            if result["status"] < 400 and result.get("shipment"):
                outcomes.append(self._label(result["shipment"]))
            elif result["status"] < 400:
                # a success without the label: the carrier may have sold it, so the purchase
                # keeps this choice and its key (a retry is answered with the label sold)
                outcomes.append(
                    CarrierError(
                        f"POST /v1/shipments/batch item: {result['status']} without a shipment",
                        retryable=True,
                        maybe_processed=True,
                        status=int(result["status"]),
                    )
                )
            else:
                outcomes.append(
                    error_for_status(
                        "POST /v1/shipments/batch item",
                        int(result["status"]),
                        result.get("detail") or "",
                        result.get("retry_after_seconds"),
                    )
                )
        if len(outcomes) != len(purchases):
            raise CarrierError(
                f"{len(outcomes)} results for {len(purchases)} labels",
                retryable=True,
                maybe_processed=True,
            )
        return outcomes

    @staticmethod
    def _shipment_body(request: LabelRequest) -> dict[str, Any]:
        return {
            "carrier": request.carrier,
            "service": request.service,
            "ship_from": vars(request.ship_from),
            "ship_to": request.ship_to,
            "parcels": request.parcels,
            "reference": request.reference,
        }

    @staticmethod
    def _label(body: dict[str, Any]) -> Label:
        return Label(
            carrier=body["carrier"],
            service=body["service"],
            carrier_shipment_id=body["shipment_id"],
            tracking_number=body["tracking_number"],
            label_url=body["label_url"],
            estimated_delivery=datetime.fromisoformat(body["estimated_delivery"]),
            price=Decimal(str(body["price"])),
            currency=body["currency"],
        )

    async def buy_label(self, request: LabelRequest, *, idempotency_key: str) -> Label:
        body = await self._call(
            "POST",
            "/v1/shipments",
            headers={"Idempotency-Key": idempotency_key},
            json=self._shipment_body(request),
        )
        return self._label(body)

    async def cancel_label(self, carrier: str, carrier_shipment_id: str) -> None:
        del carrier  # one API for every sandbox carrier
        await self._call("POST", f"/v1/shipments/{carrier_shipment_id}/cancel")

    async def track(self, tracking_number: str) -> list[TrackingEvent]:
        body = await self._call("GET", f"/v1/trackers/{tracking_number}")
        return [
            TrackingEvent(
                tracking_number=tracking_number,
                status=e["status"],
                at=datetime.fromisoformat(e["at"]),
                # the id its webhook carries too: a polled copy of a pushed event counts once
                event_id=e.get("event_id"),
                description=e.get("description"),
                raw=e,
            )
            for e in body["events"]
        ]

    def parse_webhook(self, headers: dict[str, str], body: bytes, *, now: float) -> TrackingEvent:
        verify_webhook(self._secret, headers.get(SIGNATURE_HEADER.lower()), body, now=now)
        try:
            payload = json.loads(body)
            return TrackingEvent(
                tracking_number=payload["tracking_number"],
                status=payload["status"],
                at=datetime.fromisoformat(payload["occurred_at"]),
                event_id=payload.get("event_id"),
                description=payload.get("description"),
                raw=payload,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise WebhookPayloadError(f"signed but unreadable body: {exc}") from exc
