"""The sandbox's in-memory carrier: labels, trackers, webhooks, injected faults, counters."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as time_of_day
from typing import Any
from uuid import UUID

import httpx

from shared.clock import Clock
from shared.events.shipping import TrackingStatus
from shared.signing import SIGNATURE_HEADER, sign_webhook
from waybill.carrier_sandbox.carriers import (
    CARRIERS,
    TARIFFS,
    ParcelSize,
    Quote,
    quote,
    tariff_for,
    zone_between,
)
from waybill.carrier_sandbox.labels import LabelContent, render_label_pdf
from waybill.carrier_sandbox.models import (
    BatchShipmentItem,
    BatchShipmentResult,
    FaultSettings,
    LabelRecord,
    Parcel,
    RateRequest,
    SandboxConfig,
    Shipment,
    ShipmentRequest,
    Stats,
    Tracker,
    TrackingEvent,
    Unavailable,
    WebhookAttempt,
    WebhookPayload,
)

logger = logging.getLogger("waybill.carrier_sandbox")

AUTO_ADVANCE_STEPS: tuple[TrackingStatus, ...] = (
    "picked_up",
    "in_transit",
    "out_for_delivery",
    "delivered",
)
FINAL_STATUSES: frozenset[TrackingStatus] = frozenset(
    {"delivered", "return_to_sender", "cancelled"}
)
DEFAULT_DESCRIPTIONS: dict[TrackingStatus, str] = {
    "pre_transit": "Shipment information received, label created",
    "picked_up": "Parcel picked up by the carrier",
    "in_transit": "Parcel in transit",
    "out_for_delivery": "Out for delivery",
    "delivered": "Delivered",
    "delivery_failed": "Delivery attempt failed",
    "available_for_pickup": "Available for pickup at a service point",
    "return_to_sender": "Returning to sender",
    "cancelled": "Shipment cancelled",
    "unknown": "Status unknown",
}
# Only these answers are worth retrying a webhook for; a 401 or 404 will not change.
_RETRYABLE_WEBHOOK_STATUSES = frozenset({408, 425, 429})
_MAX_RETRY_AFTER_SECONDS = 60.0
_WEBHOOK_LOG_SIZE = 10_000
_DELIVERY_HOUR_UTC = time_of_day(18, 0)


class InjectedFault(Exception):
    """A fault the sandbox was told to simulate, answered instead of the real response."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers or {}


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used with a different request body."""


class LabelAlreadyUsed(Exception):
    """A label the carrier has scanned cannot be voided any more."""


#: a client coming back this much before its Retry-After is still counted as honouring it
#: (the client's and the sandbox's clocks tick separately)
_RETRY_AFTER_TOLERANCE_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What faults do to one request: answer with a failure, or hang before answering."""

    excluded: dict[str, str] = field(default_factory=dict)  # carrier -> reason (rating only)
    hang_seconds: float = 0.0


@dataclass(slots=True)
class _StoredShipment:
    shipment: Shipment
    request: ShipmentRequest
    idempotency_key: str


@dataclass(slots=True)
class _StoredTracker:
    tracking_number: str
    carrier: str
    shipment_id: UUID
    events: list[TrackingEvent] = field(default_factory=list)

    def ordered_events(self) -> list[TrackingEvent]:
        # Stable sort: events with the same time keep the order they arrived in.
        return sorted(self.events, key=lambda event: event.at)

    def status(self) -> TrackingStatus:
        ordered = self.ordered_events()
        return ordered[-1].status if ordered else "unknown"


def _fingerprint(request: ShipmentRequest) -> str:
    # a batch item's key travels in its body: the same purchase alone or in a batch is one
    body = request.model_dump(mode="json", exclude={"idempotency_key"})
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _parcel_sizes(parcels: list[Parcel]) -> list[ParcelSize]:
    return [
        ParcelSize(parcel.weight_grams, parcel.length_mm, parcel.width_mm, parcel.height_mm)
        for parcel in parcels
    ]


class Sandbox:
    """All state of one sandbox instance. Nothing here is persisted: it is a sandbox."""

    def __init__(self, config: SandboxConfig, *, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        seed = config.seed
        # Separate streams, so that injecting faults does not change identifiers.
        self._ids = random.Random(f"{seed}:ids") if seed is not None else random.Random()
        self._fault_dice = random.Random(f"{seed}:faults") if seed is not None else random.Random()
        self._jitter = random.Random(f"{seed}:jitter") if seed is not None else random.Random()
        self.faults = FaultSettings()
        self._shipments: dict[UUID, _StoredShipment] = {}
        self._idempotency: dict[str, tuple[str, UUID]] = {}
        self._trackers: dict[str, _StoredTracker] = {}
        self.labels_by_carrier: Counter[str] = Counter({carrier: 0 for carrier in CARRIERS})
        self.requests: Counter[str] = Counter()
        self.fault_counts: Counter[str] = Counter()
        # The newest attempts only: a long demo run must not grow without bound.
        self.webhook_attempts: deque[WebhookAttempt] = deque(maxlen=_WEBHOOK_LOG_SIZE)
        self.webhook_counts: Counter[str] = Counter()
        # idempotency key -> monotonic time before which a 429 asked it not to come back
        self._retry_not_before: dict[str, float] = {}
        self.retry_after_counts: Counter[str] = Counter()
        self.labels_cancelled = 0
        #: labels asked for, one by one or in batches
        self.label_requests = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    # --- lifecycle -------------------------------------------------------------

    def spawn(self, coroutine: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run `coroutine` in the background; aclose() cancels whatever is still running."""
        if self._closed:
            coroutine.close()
            return
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=task.exception())

    @property
    def background_tasks(self) -> int:
        return len(self._tasks)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.config.webhook_timeout_seconds, follow_redirects=False
            )
        return self._client

    async def aclose(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- faults ----------------------------------------------------------------

    def set_faults(self, faults: FaultSettings) -> FaultSettings:
        self.faults = faults
        return faults

    def clear_faults(self) -> FaultSettings:
        self.faults = FaultSettings()
        return self.faults

    def _draw_failure(self, faults: FaultSettings) -> tuple[str, InjectedFault] | None:
        if faults.outage:
            return "outages", InjectedFault(503, "carrier outage (injected)")
        if faults.rate_limit_rate and self._fault_dice.random() < faults.rate_limit_rate:
            return "rate_limited", InjectedFault(
                429,
                "rate limit exceeded (injected)",
                {"Retry-After": str(faults.retry_after_seconds)},
            )
        if faults.error_rate and self._fault_dice.random() < faults.error_rate:
            return "errors", InjectedFault(500, "internal carrier error (injected)")
        return None

    def _check_retry_after(self, key: str) -> None:
        """Count whether a request that was told to wait (429) waited long enough."""
        not_before = self._retry_not_before.pop(key, None)
        if not_before is None:
            return
        early = time.monotonic() < not_before - _RETRY_AFTER_TOLERANCE_SECONDS
        self.retry_after_counts["violations" if early else "honoured"] += 1
        if early:
            logger.warning("request with Idempotency-Key %s came back before its Retry-After", key)

    async def apply_faults(
        self, carriers: list[str], *, partial: bool = False, key: str | None = None
    ) -> FaultDecision:
        """Decide and apply the injected faults for a request concerning `carriers`.

        Raises InjectedFault when the request is to fail. With `partial` (rating several
        carriers at once) and only some carriers covered, those are left out instead.
        With an idempotency `key`, a 429 is remembered and the request's return checked
        against its Retry-After.
        """
        if key is not None:
            self._check_retry_after(key)
        try:
            return await self._apply_faults(carriers, partial=partial)
        except InjectedFault as fault:
            retry_after = fault.headers.get("Retry-After")
            if key is not None and fault.status_code == 429 and retry_after is not None:
                self._retry_not_before[key] = time.monotonic() + float(retry_after)
            raise

    async def _apply_faults(self, carriers: list[str], *, partial: bool) -> FaultDecision:
        faults = self.faults
        covered = [carrier for carrier in carriers if faults.covers(carrier)]
        if not covered:
            return FaultDecision()
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        excluded: dict[str, str] = {}
        if partial and len(covered) < len(carriers):
            for carrier in covered:
                failure = self._draw_failure(faults)
                if failure is not None:
                    counter, fault = failure
                    self.fault_counts[counter] += 1
                    excluded[carrier] = fault.detail
        else:
            failure = self._draw_failure(faults)
            if failure is not None:
                counter, fault = failure
                self.fault_counts[counter] += 1
                raise fault
        return FaultDecision(excluded=excluded, hang_seconds=self._draw_timeout(faults))

    def _draw_timeout(self, faults: FaultSettings) -> float:
        if faults.timeout_rate and self._fault_dice.random() < faults.timeout_rate:
            self.fault_counts["timeouts"] += 1
            return faults.timeout_seconds
        return 0.0

    async def buy_batch(
        self, items: list[BatchShipmentItem]
    ) -> tuple[list[BatchShipmentResult], float]:
        """Each item as ``POST /v1/shipments`` would answer it, errors and 429s drawn per
        item; and how long the whole answer hangs. A timeout belongs to the request, not to
        an item: it is drawn once, as for a single purchase, and strikes after the labels
        are bought (the answer is lost, not the labels). A 429 in an answer that is lost
        asks nobody to wait."""
        faults = self.faults
        self.label_requests += len(items)
        if faults.latency_ms and any(faults.covers(item.carrier) for item in items):
            await asyncio.sleep(faults.latency_ms / 1000)
        results: list[BatchShipmentResult] = []
        covered = any(faults.covers(item.carrier) for item in items)
        hang = self._draw_timeout(faults) if covered else 0.0
        for item in items:
            key = item.idempotency_key
            self._check_retry_after(key)
            if faults.covers(item.carrier):
                failure = self._draw_failure(faults)
                if failure is not None:
                    counter, fault = failure
                    self.fault_counts[counter] += 1
                    retry_after = fault.headers.get("Retry-After")
                    if fault.status_code == 429 and retry_after is not None and not hang:
                        self._retry_not_before[key] = time.monotonic() + float(retry_after)
                    results.append(
                        BatchShipmentResult(
                            idempotency_key=key,
                            status=fault.status_code,
                            detail=fault.detail,
                            retry_after_seconds=float(retry_after) if retry_after else None,
                        )
                    )
                    continue
            try:
                shipment, created = self.buy_label(key, item)
            except IdempotencyConflict as conflict:
                results.append(
                    BatchShipmentResult(idempotency_key=key, status=422, detail=str(conflict))
                )
                continue
            results.append(
                BatchShipmentResult(
                    idempotency_key=key, status=201 if created else 200, shipment=shipment
                )
            )
        return results, hang

    # --- rating and labels -----------------------------------------------------

    def rate(self, request: RateRequest, *, excluded: dict[str, str]) -> list[Quote]:
        wanted = set(request.carriers) if request.carriers is not None else set(CARRIERS)
        zone = zone_between(
            request.ship_from.country,
            request.ship_from.postal_code,
            request.ship_to.country,
            request.ship_to.postal_code,
        )
        parcels = _parcel_sizes(request.parcels)
        return [
            quote(tariff, zone, parcels)
            for tariff in TARIFFS
            if tariff.carrier in wanted and tariff.carrier not in excluded
        ]

    @staticmethod
    def unavailable(excluded: dict[str, str]) -> list[Unavailable]:
        return [Unavailable(carrier=carrier, reason=reason) for carrier, reason in excluded.items()]

    def _new_uuid(self) -> UUID:
        return UUID(int=self._ids.getrandbits(128), version=4)

    def _new_tracking_number(self, prefix: str) -> str:
        while True:
            candidate = f"{prefix}{self._ids.randrange(10**10):010d}"
            if candidate not in self._trackers:
                return candidate

    def buy_label(self, idempotency_key: str, request: ShipmentRequest) -> tuple[Shipment, bool]:
        """The shipment for this key: (shipment, True) if bought now, (shipment, False) if replayed.

        No await in here: check and insert happen in one step of the event loop, so two
        concurrent requests with the same key cannot both buy a label.
        """
        fingerprint = _fingerprint(request)
        known = self._idempotency.get(idempotency_key)
        if known is not None:
            known_fingerprint, shipment_id = known
            if known_fingerprint != fingerprint:
                raise IdempotencyConflict(
                    "this Idempotency-Key was already used with a different request body"
                )
            return self._shipments[shipment_id].shipment, False

        tariff = tariff_for(request.carrier, request.service)
        if tariff is None:  # the request model already refuses this
            raise ValueError(f"no tariff for {request.carrier}/{request.service}")
        zone = zone_between(
            request.ship_from.country,
            request.ship_from.postal_code,
            request.ship_to.country,
            request.ship_to.postal_code,
        )
        price = quote(tariff, zone, _parcel_sizes(request.parcels))
        now = self.clock.now()
        delivery_day = (now + timedelta(days=price.transit_days)).date()
        shipment_id = self._new_uuid()
        tracking_number = self._new_tracking_number(tariff.tracking_prefix)
        shipment = Shipment(
            shipment_id=shipment_id,
            carrier=tariff.carrier,
            service=tariff.service,
            tracking_number=tracking_number,
            label_url=f"{self.config.public_url}/v1/labels/{shipment_id}.pdf",
            estimated_delivery=datetime.combine(
                delivery_day, _DELIVERY_HOUR_UTC, tzinfo=now.tzinfo
            ),
            price=price.price,
            currency=price.currency,
            reference=request.reference,
            created_at=now,
        )
        self._shipments[shipment_id] = _StoredShipment(
            shipment=shipment, request=request, idempotency_key=idempotency_key
        )
        self._idempotency[idempotency_key] = (fingerprint, shipment_id)
        self._trackers[tracking_number] = _StoredTracker(
            tracking_number=tracking_number, carrier=tariff.carrier, shipment_id=shipment_id
        )
        self.labels_by_carrier[tariff.carrier] += 1
        self.record_event(tracking_number, "pre_transit", at=now, push=False)
        logger.debug(
            "label bought: carrier=%s service=%s tracking_number=%s",
            tariff.carrier,
            tariff.service,
            tracking_number,
        )
        if self.config.auto_advance:
            self.spawn(self._auto_advance(tracking_number), name=f"advance-{tracking_number}")
        return shipment, True

    def shipment(self, shipment_id: str) -> Shipment | None:
        try:
            stored = self._shipments.get(UUID(shipment_id))
        except ValueError:
            return None
        return stored.shipment if stored is not None else None

    def cancel_label(self, shipment_id: str) -> Shipment | None:
        """Void a label nobody has scanned yet (idempotent); None for an unknown shipment."""
        shipment = self.shipment(shipment_id)
        if shipment is None:
            return None
        if shipment.status == "cancelled":
            return shipment
        tracker = self._trackers[shipment.tracking_number]
        if tracker.status() != "pre_transit":
            raise LabelAlreadyUsed(
                f"label {shipment.tracking_number} is {tracker.status()}: too late to void it"
            )
        stored = self._shipments[shipment.shipment_id]
        stored.shipment = shipment.model_copy(
            update={"status": "cancelled", "cancelled_at": self.clock.now()}
        )
        self.labels_cancelled += 1
        self.record_event(shipment.tracking_number, "cancelled", description="Label voided")
        return stored.shipment

    def labels(
        self, *, reference: str | None = None, carrier: str | None = None, limit: int = 1000
    ) -> list[LabelRecord]:
        """Bought labels, newest last, for inspecting what a client did."""
        found = []
        for stored in self._shipments.values():
            shipment = stored.shipment
            if reference is not None and shipment.reference != reference:
                continue
            if carrier is not None and shipment.carrier != carrier:
                continue
            found.append(
                LabelRecord(
                    shipment_id=shipment.shipment_id,
                    carrier=shipment.carrier,
                    service=shipment.service,
                    tracking_number=shipment.tracking_number,
                    reference=shipment.reference,
                    idempotency_key=stored.idempotency_key,
                    status=shipment.status,
                    created_at=shipment.created_at,
                )
            )
        return found[-limit:]

    def carrier_of_shipment(self, shipment_id: str) -> str | None:
        shipment = self.shipment(shipment_id)
        return shipment.carrier if shipment is not None else None

    def label_pdf(self, shipment_id: str) -> bytes | None:
        shipment = self.shipment(shipment_id)
        if shipment is None:
            return None
        destination = self._shipments[shipment.shipment_id].request.ship_to
        return render_label_pdf(
            LabelContent(
                carrier=shipment.carrier,
                service=shipment.service,
                tracking_number=shipment.tracking_number,
                destination_postal_code=destination.postal_code,
                destination_country=destination.country,
                destination_city=destination.city,
                reference=shipment.reference,
                shipment_id=str(shipment.shipment_id),
            )
        )

    # --- tracking --------------------------------------------------------------

    def carrier_of_tracker(self, tracking_number: str) -> str | None:
        tracker = self._trackers.get(tracking_number)
        return tracker.carrier if tracker is not None else None

    def tracker(self, tracking_number: str) -> Tracker | None:
        stored = self._trackers.get(tracking_number)
        if stored is None:
            return None
        return Tracker(
            tracking_number=stored.tracking_number,
            carrier=stored.carrier,
            status=stored.status(),
            events=stored.ordered_events(),
        )

    def record_event(
        self,
        tracking_number: str,
        status: TrackingStatus,
        *,
        at: datetime | None = None,
        description: str | None = None,
        push: bool = True,
    ) -> TrackingEvent:
        """Append a tracking event and (if `push`) send its webhook in the background."""
        stored = self._trackers[tracking_number]
        event = TrackingEvent(
            event_id=self._new_uuid(),
            status=status,
            at=at if at is not None else self.clock.now(),
            description=description or DEFAULT_DESCRIPTIONS[status],
        )
        stored.events.append(event)
        url = self.config.webhook_url(stored.carrier)
        if push and url is not None:
            payload = WebhookPayload(
                event_id=event.event_id,
                carrier=stored.carrier,
                tracking_number=tracking_number,
                status=event.status,
                occurred_at=event.at,
                description=event.description,
            )
            self.spawn(self._push_webhook(url, payload), name=f"webhook-{event.event_id}")
        return event

    async def _auto_advance(self, tracking_number: str) -> None:
        for status in AUTO_ADVANCE_STEPS:
            await asyncio.sleep(self.config.auto_advance_step_seconds)
            stored = self._trackers.get(tracking_number)
            # Someone moved it on by hand (delivered, cancelled): leave it be.
            if stored is None or stored.status() in FINAL_STATUSES:
                return
            self.record_event(tracking_number, status)

    # --- webhooks --------------------------------------------------------------

    def _retry_delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None and response.status_code in (429, 503):
            retry_after = response.headers.get("retry-after", "")
            if retry_after.isdigit():
                return min(float(retry_after), _MAX_RETRY_AFTER_SECONDS)
        base = self.config.webhook_retry_base_seconds * 2.0 ** (attempt - 1)
        return base * (0.5 + self._jitter.random())  # jitter: 50% to 150%

    async def _push_webhook(self, url: str, payload: WebhookPayload) -> None:
        body = payload.model_dump_json().encode()
        for attempt in range(1, self.config.webhook_max_attempts + 1):
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign_webhook(
                    self.config.webhook_secret, body, timestamp=int(time.time())
                ),
            }
            response: httpx.Response | None = None
            error: str | None = None
            try:
                response = await self._http().post(url, content=body, headers=headers)
            except httpx.HTTPError as failure:
                error = f"{type(failure).__name__}: {failure}"
            http_status = response.status_code if response is not None else None
            delivered = http_status is not None and 200 <= http_status < 300
            self.webhook_attempts.append(
                WebhookAttempt(
                    event_id=payload.event_id,
                    carrier=payload.carrier,
                    tracking_number=payload.tracking_number,
                    tracking_status=payload.status,
                    url=url,
                    attempt=attempt,
                    http_status=http_status,
                    error=error,
                    delivered=delivered,
                    at=self.clock.now(),
                )
            )
            self.webhook_counts["attempted"] += 1
            if delivered:
                self.webhook_counts["delivered"] += 1
                return
            retryable = http_status is None or (
                http_status >= 500 or http_status in _RETRYABLE_WEBHOOK_STATUSES
            )
            if not retryable or attempt == self.config.webhook_max_attempts:
                logger.warning(
                    "webhook for %s not delivered after %d attempts (last: %s)",
                    payload.tracking_number,
                    attempt,
                    http_status if http_status is not None else error,
                )
                return
            await asyncio.sleep(self._retry_delay(attempt, response))

    # --- statistics ------------------------------------------------------------

    def stats(self) -> Stats:
        return Stats(
            labels_by_carrier=dict(self.labels_by_carrier),
            requests=dict(self.requests),
            rate_limited=self.fault_counts["rate_limited"],
            errors=self.fault_counts["errors"],
            timeouts=self.fault_counts["timeouts"],
            outages=self.fault_counts["outages"],
            webhooks_attempted=self.webhook_counts["attempted"],
            webhooks_delivered=self.webhook_counts["delivered"],
            labels_cancelled=self.labels_cancelled,
            retry_after_honoured=self.retry_after_counts["honoured"],
            retry_after_violations=self.retry_after_counts["violations"],
            label_requests=self.label_requests,
        )
