"""One order, one trace: spans of all four services share the trace id of the order's
placement, through Kafka headers and the label purchase worker, and carry no personal data."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import topics
from shared.telemetry import SERVICE_ATTRIBUTE, configure_tracing
from tests.conftest import MakeSystem
from tests.factories import order_placed
from tests.integration.test_reservation import setup_stock
from tests.support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    configure_tracing("tests", otlp_endpoint=None)  # no-op if a service configured it
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # it stays registered: from now on it keeps nothing


async def test_a_placed_order_is_one_trace_across_the_four_services_without_personal_data(
    make_system: MakeSystem, event_log_factory, publisher_factory, spans: InMemorySpanExporter
) -> None:
    system = await make_system(autopick=True)
    await setup_stock(system, [("BER-1", "DE", "10115")], [("BER-1", "TRACE", 3)])
    log = await event_log_factory(system.config.kafka, [topics.SHIPMENTS_LABEL_CREATED])
    shop = await publisher_factory(system.config.kafka)
    order = order_placed(lines=[("TRACE", 1)])
    personal = {
        "Grace Quietwater",
        "grace.quietwater@example.org",
        "Zeppelinstrasse 77",
        "Kleinstadtingen",
    }
    order["customer"] = {"name": "Grace Quietwater", "email": "grace.quietwater@example.org"}
    order["ship_to"].update(
        name="Grace Quietwater", line1="Zeppelinstrasse 77", city="Kleinstadtingen"
    )
    oid = order["order_id"]
    await shop.send(topics.ORDERS_PLACED, order, key=oid)
    await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=oid)

    def of_order() -> list[ReadableSpan]:
        return [
            s
            for s in spans.get_finished_spans()
            if (s.attributes or {}).get("waybill.order_id") == oid
        ]

    def four_services() -> list[ReadableSpan] | None:
        found = of_order()
        services = {(s.attributes or {}).get(SERVICE_ATTRIBUTE) for s in found}
        labelled = any(s.name == "buy label" for s in found)
        return (
            found
            if {"orders", "inventory", "shipping", "returns"} <= services and labelled
            else None
        )

    found = await wait_for(four_services, what="spans of all four services for the order")
    assert len({s.context.trace_id for s in found}) == 1, "one trace per order"
    trace_id = found[0].context.trace_id
    in_trace = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
    names = {s.name for s in in_trace}
    assert f"{topics.ORDERS_PLACED} process" in names
    assert f"{topics.ORDERS_PACKED} process" in names and "buy label" in names
    # the placement's span is the root; every other span has a parent in the trace
    roots = [s for s in in_trace if s.parent is None]
    assert [s.name for s in roots] == [f"{topics.ORDERS_PLACED} process"]
    for s in in_trace:
        for value in (s.attributes or {}).values():
            assert not any(p.lower() in str(value).lower() for p in personal), (s.name, value)
