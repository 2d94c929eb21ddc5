"""Tracing: one trace per order across the services (DESIGN.md, Observability).

The W3C trace context travels in Kafka record headers: the outbox stores the context that
was current when an event was emitted (shared/db/uow.py), and the consumer opens each
handled record's span as a child of the context its headers carry. Work that happens
later, outside a handler (buying a label), stores the context with its row and opens its
span under it. Span attributes name the order, the topic and the stage, never a person:
no names, addresses or e-mail addresses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import Link, Span, SpanKind, TraceState
from opentelemetry.util.types import Attributes

log = logging.getLogger("waybill.telemetry")

tracer = trace.get_tracer("waybill")

#: the attribute naming the service a span belongs to (several can share one process)
SERVICE_ATTRIBUTE = "waybill.service"


def configure_tracing(service: str, *, otlp_endpoint: str | None) -> TracerProvider | None:
    """Install this process's tracer provider, once. Spans are exported by OTLP/HTTP when
    ``otlp_endpoint`` is set (and the exporter package is installed); otherwise they are
    still created, so that the context travels on, and dropped."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current  # already configured (several services in one process, tests)
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"waybill-{service}"}),
        sampler=ParentBased(root=_NoLoneClientCalls()),
    )
    if otlp_endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning(
                "WAYBILL_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp-proto-http is "
                "not installed: spans are not exported"
            )
        else:
            exporter = OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")
            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _instrument_clients()
    return provider


class _NoLoneClientCalls(Sampler):
    """For spans that start a trace: database and HTTP client calls are traced inside the
    work they serve (a handled event, a label purchase). On their own (the relay's and the
    watchers' polling queries) each would be a trace of one span: noise, so not sampled."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind == SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "NoLoneClientCalls"


def _instrument_clients() -> None:
    """asyncpg queries and httpx requests become spans of the current trace. Query
    parameters are not captured: they can hold names and addresses."""
    try:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    except ImportError:  # pragma: no cover - both are dependencies of the project
        log.warning("asyncpg and httpx instrumentation are not installed: no client spans")
        return
    asyncpg_instrumentor = AsyncPGInstrumentor(capture_parameters=False)  # type: ignore[no-untyped-call]
    if not asyncpg_instrumentor.is_instrumented_by_opentelemetry:
        asyncpg_instrumentor.instrument()
    httpx_instrumentor = HTTPXClientInstrumentor()
    if not httpx_instrumentor.is_instrumented_by_opentelemetry:
        httpx_instrumentor.instrument()


def context_from(headers: Mapping[str, str] | list[tuple[str, str]] | None) -> Context:
    """The trace context a record's headers (or a stored copy of them) carry."""
    carrier = dict(headers or [])
    return propagate.extract(carrier)


def current_context_headers() -> dict[str, str]:
    """The current trace context as headers, to store with work done later."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def span(
    name: str,
    *,
    service: str,
    parent: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    links: Sequence[Link] = (),
) -> Iterator[Span]:
    """A span of ``service``, current inside the block; exceptions are recorded on it."""
    attrs = {SERVICE_ATTRIBUTE: service, **(attributes or {})}
    clean = {k: v for k, v in attrs.items() if v is not None}
    with tracer.start_as_current_span(
        name, context=parent, kind=kind, attributes=clean, links=links
    ) as s:
        yield s


#: the parent of a span that starts a trace of its own (even inside another span)
NEW_TRACE = Context()


def link_to(headers: Mapping[str, str] | list[tuple[str, str]] | None) -> list[Link]:
    """A link to the span the stored headers name (none if they name none)."""
    context = trace.get_current_span(context_from(headers)).get_span_context()
    return [Link(context)] if context.is_valid else []


async def remember_order_trace(conn: Any, order_id: str) -> None:
    """Keep the current trace context as the order's, the first time this service sees it
    (table ``order_traces`` of every service, shared/db/migrations)."""
    headers = current_context_headers()
    if headers:
        await conn.execute(
            """
            INSERT INTO order_traces (order_id, headers) VALUES ($1, $2)
            ON CONFLICT (order_id) DO NOTHING
            """,
            order_id,
            headers,
        )


async def order_trace(conn: Any, order_id: str) -> dict[str, str]:
    """The order's trace context as this service stored it ({} when it has none)."""
    headers = await conn.fetchval("SELECT headers FROM order_traces WHERE order_id = $1", order_id)
    return dict(headers or {})
