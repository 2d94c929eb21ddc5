"""The carrier sandbox's HTTP API: carrier endpoints under /v1, controls under /sandbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.clock import Clock, SystemClock
from shared.gc_policy import tune_for_batches
from waybill.carrier_sandbox.carriers import CARRIERS
from waybill.carrier_sandbox.models import (
    BatchShipmentRequest,
    BatchShipmentResponse,
    ErrorBody,
    FaultSettings,
    LabelList,
    RateRequest,
    RateResponse,
    SandboxConfig,
    Shipment,
    ShipmentRequest,
    Stats,
    Tracker,
    TrackingEvent,
    TrackingEventRequest,
    WebhookLog,
)
from waybill.carrier_sandbox.receivers import receivers_router
from waybill.carrier_sandbox.sandbox import (
    IdempotencyConflict,
    InjectedFault,
    LabelAlreadyUsed,
    Sandbox,
)

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
_MAX_IDEMPOTENCY_KEY_LENGTH = 255


class _CountRequests:
    """Counts every request per route ("POST /v1/shipments"), refused ones included."""

    def __init__(self, app: ASGIApp, *, sandbox: Sandbox, api: FastAPI) -> None:
        self.app = app
        self.sandbox = sandbox
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = "unmatched"
            for route in self.api.router.routes:
                match, _ = route.matches(scope)
                if match is Match.FULL:
                    path = getattr(route, "path", path)
                    break
            self.sandbox.requests[f"{scope['method']} {path}"] += 1
        await self.app(scope, receive, send)


def _fault_scope(sandbox: Sandbox, carrier: str | None) -> list[str]:
    """Carriers a request concerns; an unknown object concerns the whole API if all are faulty."""
    if carrier is not None:
        return [carrier]
    return list(CARRIERS) if sandbox.faults.carriers is None else []


async def _hang_if_timed_out(hang_seconds: float) -> None:
    if hang_seconds:
        await asyncio.sleep(hang_seconds)
        raise InjectedFault(504, "carrier timed out (injected)")


def create_app(config: SandboxConfig, *, clock: Clock | None = None) -> FastAPI:
    sandbox = Sandbox(config, clock=clock or SystemClock())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await sandbox.aclose()

    app = FastAPI(
        title="Waybill carrier sandbox",
        description="Stands in for carrier APIs: rates, labels, tracking, webhooks, faults.",
        lifespan=lifespan,
    )
    app.state.sandbox = sandbox
    app.add_middleware(_CountRequests, sandbox=sandbox, api=app)

    @app.exception_handler(InjectedFault)
    async def injected_fault(_: Request, fault: InjectedFault) -> JSONResponse:
        return JSONResponse({"detail": fault.detail}, fault.status_code, headers=fault.headers)

    @app.exception_handler(LabelAlreadyUsed)
    async def label_already_used(_: Request, refused: LabelAlreadyUsed) -> JSONResponse:
        return JSONResponse({"detail": str(refused)}, 409)

    @app.exception_handler(IdempotencyConflict)
    async def idempotency_conflict(_: Request, conflict: IdempotencyConflict) -> JSONResponse:
        return JSONResponse({"detail": str(conflict)}, 422)

    app.include_router(receivers_router())

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # --- the carrier API -------------------------------------------------------

    @app.post("/v1/rates", tags=["carrier"])
    async def rates(request: RateRequest) -> RateResponse:
        wanted = request.carriers if request.carriers is not None else list(CARRIERS)
        decision = await sandbox.apply_faults(wanted, partial=True)
        quotes = sandbox.rate(request, excluded=decision.excluded)
        await _hang_if_timed_out(decision.hang_seconds)
        return RateResponse.model_validate(
            {
                "rates": [
                    {
                        "carrier": quote.carrier,
                        "service": quote.service,
                        "price": quote.price,
                        "currency": quote.currency,
                        "transit_days": quote.transit_days,
                    }
                    for quote in quotes
                ],
                "unavailable": sandbox.unavailable(decision.excluded),
            }
        )

    @app.post(
        "/v1/shipments",
        tags=["carrier"],
        status_code=201,
        responses={
            200: {"model": Shipment, "description": "replay of an earlier request with this key"},
            400: {"model": ErrorBody, "description": "no Idempotency-Key header"},
            422: {"description": "invalid body, or the key was used with another body"},
        },
    )
    async def buy_label(
        request: ShipmentRequest,
        response: Response,
        idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_KEY_HEADER)] = None,
    ) -> Shipment:
        key = (idempotency_key or "").strip()
        if not key or len(key) > _MAX_IDEMPOTENCY_KEY_LENGTH:
            raise HTTPException(
                400,
                f"the {IDEMPOTENCY_KEY_HEADER} header is required "
                f"(1 to {_MAX_IDEMPOTENCY_KEY_LENGTH} characters)",
            )
        sandbox.label_requests += 1
        decision = await sandbox.apply_faults([request.carrier], key=key)
        shipment, created = sandbox.buy_label(key, request)
        if not created:
            response.status_code = 200
            response.headers["Idempotent-Replayed"] = "true"
        # A timeout strikes after the label is bought: the answer is lost, not the label.
        await _hang_if_timed_out(decision.hang_seconds)
        return shipment

    @app.post("/v1/shipments/batch", tags=["carrier"])
    async def buy_labels(batch: BatchShipmentRequest) -> BatchShipmentResponse:
        """Buy up to 100 labels in one request (an aggregator's bulk purchase). Each item
        carries the idempotency key its single purchase would send as a header and is
        answered as that purchase would be (``status`` 201, 200 for a replay, 429 with
        ``retry_after_seconds``, 500, 503, 422). A timeout delays the whole answer after
        the labels are bought."""
        results, hang = await sandbox.buy_batch(batch.shipments)
        await _hang_if_timed_out(hang)
        return BatchShipmentResponse(results=results)

    @app.post(
        "/v1/shipments/{shipment_id}/cancel",
        tags=["carrier"],
        responses={
            404: {"model": ErrorBody},
            409: {"model": ErrorBody, "description": "the parcel was scanned: too late"},
        },
    )
    async def cancel_label(shipment_id: str) -> Shipment:
        """Void an unused label; cancelling a cancelled label again answers the same."""
        decision = await sandbox.apply_faults(
            _fault_scope(sandbox, sandbox.carrier_of_shipment(shipment_id))
        )
        cancelled = sandbox.cancel_label(shipment_id)
        if cancelled is None:
            raise HTTPException(404, "no such shipment")
        await _hang_if_timed_out(decision.hang_seconds)
        return cancelled

    @app.get(
        "/v1/labels/{shipment_id}.pdf",
        tags=["carrier"],
        response_class=Response,
        responses={200: {"content": {"application/pdf": {}}}, 404: {"model": ErrorBody}},
    )
    async def label(shipment_id: str) -> Response:
        decision = await sandbox.apply_faults(
            _fault_scope(sandbox, sandbox.carrier_of_shipment(shipment_id))
        )
        document = sandbox.label_pdf(shipment_id)
        if document is None:
            raise HTTPException(404, "no such shipment")
        await _hang_if_timed_out(decision.hang_seconds)
        return Response(
            document,
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{shipment_id}.pdf"'},
        )

    @app.get(
        "/v1/trackers/{tracking_number}",
        tags=["carrier"],
        responses={404: {"model": ErrorBody}},
    )
    async def tracker(tracking_number: str) -> Tracker:
        decision = await sandbox.apply_faults(
            _fault_scope(sandbox, sandbox.carrier_of_tracker(tracking_number))
        )
        found = sandbox.tracker(tracking_number)
        if found is None:
            raise HTTPException(404, "no such tracking number")
        await _hang_if_timed_out(decision.hang_seconds)
        return found

    # --- sandbox controls (never faulty) ---------------------------------------

    @app.post(
        "/sandbox/trackers/{tracking_number}/events",
        tags=["sandbox"],
        status_code=202,
        responses={404: {"model": ErrorBody}},
    )
    async def add_tracking_event(
        tracking_number: str, request: TrackingEventRequest
    ) -> TrackingEvent:
        if sandbox.carrier_of_tracker(tracking_number) is None:
            raise HTTPException(404, "no such tracking number")
        return sandbox.record_event(
            tracking_number,
            request.status,
            at=request.at,
            description=request.description,
            push=request.push,
        )

    @app.get("/sandbox/faults", tags=["sandbox"])
    async def get_faults() -> FaultSettings:
        return sandbox.faults

    @app.post("/sandbox/faults", tags=["sandbox"])
    async def set_faults(faults: FaultSettings) -> FaultSettings:
        return sandbox.set_faults(faults)

    @app.delete("/sandbox/faults", tags=["sandbox"])
    async def clear_faults() -> FaultSettings:
        return sandbox.clear_faults()

    @app.get("/sandbox/webhooks", tags=["sandbox"])
    async def webhooks() -> WebhookLog:
        return WebhookLog(attempts=list(sandbox.webhook_attempts))

    @app.get("/sandbox/labels", tags=["sandbox"])
    async def labels(
        reference: str | None = None,
        carrier: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1_000_000)] = 1000,
    ) -> LabelList:
        """Labels bought so far (newest last): who bought what, with which key."""
        return LabelList(labels=sandbox.labels(reference=reference, carrier=carrier, limit=limit))

    @app.get("/sandbox/stats", tags=["sandbox"])
    async def stats() -> Stats:
        return sandbox.stats()

    return app


def run_sandbox(config: SandboxConfig, *, host: str = "127.0.0.1", port: int = 8090) -> None:
    """Serve the sandbox until interrupted (Ctrl-C stops it cleanly)."""
    app = create_app(config)
    tune_for_batches()  # a bulk purchase is a batch of a hundred labels
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            # a line per request costs the sandbox more than answering it
            access_log=False,
            lifespan="on",
            # Requests hanging in an injected timeout must not hold up shutdown for long.
            timeout_graceful_shutdown=3,
        )
    )
    server.run()
