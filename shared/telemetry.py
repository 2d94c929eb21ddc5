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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind

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
    provider = TracerProvider(resource=Resource.create({"service.name": f"waybill-{service}"}))
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
    return provider


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
) -> Iterator[Span]:
    """A span of ``service``, current inside the block; exceptions are recorded on it."""
    attrs = {SERVICE_ATTRIBUTE: service, **(attributes or {})}
    clean = {k: v for k, v in attrs.items() if v is not None}
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=clean) as s:
        yield s
