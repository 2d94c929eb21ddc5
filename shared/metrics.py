"""Metrics (DESIGN.md, Observability): OpenTelemetry instruments, read by a Prometheus
scrape of ``GET /metrics`` on every service and exported by OTLP/HTTP when
``WAYBILL_OTLP_ENDPOINT`` is set.

Each instrument carries the ``service`` attribute, since tests run several services in one
process (a deployed process is one service). No attribute names a person.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

log = logging.getLogger("waybill.metrics")

meter = metrics.get_meter("waybill")

events_handled = meter.create_counter(
    "waybill.events.handled", description="records handled by a service's consumer"
)
dead_lettered = meter.create_counter(
    "waybill.dead_letters", description="records written to a dead-letter topic"
)
sla_breaches = meter.create_counter(
    "waybill.sla.breaches", description="sla.breached events published, by stage"
)
stage_latency = meter.create_histogram(
    "waybill.stage.latency",
    unit="s",
    description="time from a stage's window start (placed_at, the request) to it being met",
    # stages take from under a second (accept) to days (delivery)
    explicit_bucket_boundaries_advisory=[
        0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600,
        86400, 2 * 86400, 3 * 86400, 5 * 86400, 7 * 86400, 14 * 86400,
    ],
)  # fmt: skip
redrives = meter.create_counter(
    "waybill.orders.redriven", description="stuck orders whose events were published again"
)
stuck_orders = meter.create_counter(
    "waybill.orders.stuck", description="orders that did not move after their re-drive"
)
broker_losses = meter.create_counter(
    "waybill.broker.losses",
    description="times a service found the broker's data lost (a new broker epoch)",
)
carrier_calls = meter.create_counter(
    "waybill.carrier.calls", description="carrier API calls by carrier, operation and outcome"
)

#: observed values that live in memory or are refreshed by a worker: name -> callback
_gauges: dict[str, list[Callable[[], Iterable[tuple[float, dict[str, str]]]]]] = {}


def gauge(name: str, description: str, unit: str = "1") -> None:
    """Declare an observable gauge whose values come from callbacks added with ``observe``."""
    if name in _gauges:
        return
    _gauges[name] = []

    def read(_: CallbackOptions) -> Iterable[Observation]:
        for source in list(_gauges[name]):
            for value, attributes in source():
                yield Observation(value, attributes)

    meter.create_observable_gauge(name, callbacks=[read], description=description, unit=unit)


def observe(name: str, source: Callable[[], Iterable[tuple[float, dict[str, str]]]]) -> None:
    """Add a source of values (value, attributes) to the gauge ``name``."""
    _gauges[name].append(source)


def forget(source: Callable[[], Iterable[tuple[float, dict[str, str]]]]) -> None:
    for sources in _gauges.values():
        if source in sources:
            sources.remove(source)


gauge("waybill.outbox.backlog", "outbox rows not yet published")
gauge("waybill.outbox.oldest_age", "age of the oldest unpublished outbox row", unit="s")
gauge(
    "waybill.consumer.lag",
    "records on a partition not yet fetched by the service's consumer group (high watermark "
    "of the last fetch minus the position)",
)
gauge("waybill.carrier.breaker_state", "circuit per carrier: 0 closed, 1 half open, 2 open")
gauge(
    "waybill.process.restarts",
    "how often `waybill up` started this service again after it ended unexpectedly",
)
gauge("waybill.sla.at_risk", "open SLA stages past 80 % of their window, by stage")
webhook_deliveries = meter.create_counter(
    "waybill.webhook.deliveries",
    description="attempts to deliver an event to a shop's webhook, by shop and outcome "
    "(delivered, retry, dead)",
)


def configure_metrics(service: str, *, otlp_endpoint: str | None) -> MeterProvider | None:
    """Install this process's meter provider, once: a Prometheus reader (``/metrics``) and,
    with ``otlp_endpoint``, an OTLP/HTTP exporter."""
    current = metrics.get_meter_provider()
    if isinstance(current, MeterProvider):
        return current
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    readers: list[MetricReader] = [PrometheusMetricReader()]
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/metrics")
        readers.append(PeriodicExportingMetricReader(exporter, export_interval_millis=15_000))
    provider = MeterProvider(
        resource=Resource.create({"service.name": f"waybill-{service}"}), metric_readers=readers
    )
    metrics.set_meter_provider(provider)
    return provider


def prometheus_text() -> tuple[bytes, str]:
    """The scrape: every instrument of this process in Prometheus' text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
