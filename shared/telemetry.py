"""Tracing: one trace per order across the services (DESIGN.md, Observability).

The W3C trace context travels in Kafka record headers: the outbox stores the context that
was current when an event was emitted (shared/db/uow.py), and the consumer opens each
handled record's span as a child of the context its headers carry. Work that happens
later, outside a handler (buying a label), stores the context with its row and opens its
span under it. Span attributes name the order, the topic and the stage, never a person:
no names, addresses or e-mail addresses.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util.types import Attributes

log = logging.getLogger("waybill.telemetry")

tracer = trace.get_tracer("waybill")
_ids = RandomIdGenerator()

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
        sampler=_Sampler(ParentBased(root=_NoLoneClientCalls())),
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


class _Sampler(Sampler):
    """``inner``, except that client calls are not sampled while no span processor would
    see them (nothing exports): they are leaves, so nothing downstream loses its trace."""

    def __init__(self, inner: Sampler) -> None:
        self._inner = inner

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
        if kind == SpanKind.CLIENT and not spans_recorded():
            return SamplingResult(Decision.DROP)
        return self._inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"Waybill({self._inner.get_description()})"


def spans_recorded() -> bool:
    """Whether a span processor (an exporter, a test's memory) sees the spans of this
    process. Without one a span only needs its ids, to carry the trace on: see
    :func:`start_span`."""
    processor = getattr(trace.get_tracer_provider(), "_active_span_processor", None)
    processors = getattr(processor, "_span_processors", None)
    return processors is None or bool(processors)


def _instrument_clients() -> None:
    """asyncpg queries and httpx requests (the calls between services) become spans of the
    current trace; carrier calls (aiohttp) do too, through their session
    (shared/carriers/http.py). Query parameters are not captured: they can hold names and
    addresses."""
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


_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def context_from(headers: Mapping[str, str] | list[tuple[str, str]] | None) -> Context:
    """The trace context a record's headers (or a stored copy of them) carry."""
    carrier = dict(headers or [])
    if "baggage" in carrier:
        return propagate.extract(carrier)
    # the W3C traceparent alone, parsed directly: the propagators cost a span's worth of CPU
    match = _TRACEPARENT.match(carrier.get("traceparent", "").strip())
    if match is None:
        return propagate.extract(carrier)
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return Context()
    state = carrier.get("tracestate")
    parent = SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=TraceFlags(int(match[3], 16) & 1),
        trace_state=TraceState.from_header([state]) if state else None,
    )
    return trace.set_span_in_context(NonRecordingSpan(parent), Context())


def headers_of(context: Context | None = None) -> dict[str, str]:
    """The trace context ``context`` (default: the current one) as W3C headers."""
    span_context = trace.get_current_span(context).get_span_context()
    if not span_context.is_valid or baggage.get_all(context):
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=context)
        return carrier
    headers = {
        "traceparent": f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}"
    }
    if span_context.trace_state:
        headers["tracestate"] = span_context.trace_state.to_header()
    return headers


def current_context_headers() -> dict[str, str]:
    """The current trace context as headers, to store with work done later."""
    return headers_of()


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
    if not spans_recorded():
        with trace.use_span(_unrecorded(parent), end_on_exit=True) as s:
            yield s
        return
    with tracer.start_as_current_span(
        name, context=parent, kind=kind, attributes=_clean(service, attributes), links=links
    ) as s:
        yield s


def _unrecorded(parent: Context | None) -> Span:
    """A span that nobody records: new ids in the parent's trace (or a new one), so that
    the trace travels on to services that do record, at a fraction of a span's cost."""
    above = trace.get_current_span(parent).get_span_context()
    if above.is_valid:
        return NonRecordingSpan(
            SpanContext(
                above.trace_id,
                _ids.generate_span_id(),
                is_remote=False,
                trace_flags=above.trace_flags,
                trace_state=above.trace_state,
            )
        )
    return NonRecordingSpan(
        SpanContext(
            _ids.generate_trace_id(),
            _ids.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    )


def unrecorded_child(headers: Sequence[tuple[str, bytes]]) -> Span | None:
    """The span of a record nobody records, straight from its raw Kafka headers: new ids
    in the trace its ``traceparent`` names (a third of :func:`context_from` then
    :func:`start_span`, per record of every batch). None when the headers need the
    propagators (baggage, an unusual traceparent) or spans are recorded."""
    if spans_recorded():
        return None
    parent: bytes | None = None
    state: bytes | None = None
    for key, value in headers:
        if key == "traceparent":
            parent = value
        elif key == "tracestate":
            state = value
        elif key == "baggage":
            return None
    if parent is None:
        return _unrecorded(NEW_TRACE)
    match = _TRACEPARENT.match(parent.decode(errors="replace").strip())
    if match is None:
        return None
    trace_id = int(match[1], 16)
    if not trace_id or not int(match[2], 16):
        return _unrecorded(NEW_TRACE)
    return NonRecordingSpan(
        SpanContext(
            trace_id,
            _ids.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(int(match[3], 16) & 1),
            trace_state=TraceState.from_header([state.decode(errors="replace")]) if state else None,
        )
    )


def _clean(service: str, attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    attrs = {SERVICE_ATTRIBUTE: service, **(attributes or {})}
    return {k: v for k, v in attrs.items() if v is not None}


def start_span(
    name: str,
    *,
    service: str,
    parent: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Span:
    """A started span of ``service`` that is not current: the caller ends it. Cheaper than a
    current span when many are open at once (a batch's records)."""
    if not spans_recorded():
        return _unrecorded(parent)
    attrs = _clean(service, attributes)
    return tracer.start_span(name, context=parent, kind=kind, attributes=attrs)


def use_span(span: Span, *, end: bool = True) -> AbstractContextManager[Span]:
    """Make ``span`` current inside the block (and end it after, unless ``end=False``);
    exceptions are recorded on it."""
    return trace.use_span(
        span, end_on_exit=end, record_exception=True, set_status_on_exception=True
    )


def context_with(span: Span) -> Context:
    """A context in which ``span`` is the current span (to emit or store its trace)."""
    return trace.set_span_in_context(span, Context())


def record_failure(span: Span, exc: BaseException) -> None:
    if span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


#: how many of a batch's records its span links to (the SDK keeps 128 links at most)
BATCH_LINKS = 64


@contextmanager
def batch_span(topic: str, *, service: str, spans: Sequence[Span]) -> Iterator[Span]:
    """The span of handling a batch of ``topic``'s records in one transaction: a trace of its
    own (its queries serve every order of the batch), linked to the records' spans."""
    if not spans_recorded():
        with trace.use_span(_unrecorded(NEW_TRACE), end_on_exit=True) as s:
            yield s
        return
    links = [Link(s.get_span_context()) for s in spans[:BATCH_LINKS]]
    with tracer.start_as_current_span(
        f"{topic} batch",
        context=NEW_TRACE,
        kind=SpanKind.INTERNAL,
        attributes=_clean(service, {"messaging.batch.message_count": len(spans)}),
        links=links,
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
    await remember_order_traces(conn, {order_id: current_context_headers()})


async def remember_order_traces(conn: Any, traces: Mapping[str, Mapping[str, str]]) -> None:
    """Keep each order's trace context (as headers), the first time this service sees the
    order; one statement for them all."""
    known = [(order_id, dict(headers)) for order_id, headers in traces.items() if headers]
    if not known:
        return
    await conn.execute(
        """
        INSERT INTO order_traces (order_id, headers)
        SELECT o, h::jsonb FROM unnest($1::text[], $2::text[]) AS t(o, h)
        ON CONFLICT (order_id) DO NOTHING
        """,
        [order_id for order_id, _ in known],
        [json.dumps(headers) for _, headers in known],
    )


async def order_trace(conn: Any, order_id: str) -> dict[str, str]:
    """The order's trace context as this service stored it ({} when it has none)."""
    headers = await conn.fetchval("SELECT headers FROM order_traces WHERE order_id = $1", order_id)
    return dict(headers or {})
