"""One order, one trace: spans of all four services share the trace id of the order's
placement, through Kafka headers and the label purchase worker, and carry no personal data."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared import topics
from shared.telemetry import SERVICE_ATTRIBUTE, configure_tracing
from tests.conftest import MakeSystem
from tests.factories import order_placed, return_requested
from tests.integration.test_picking import PARCEL
from tests.integration.test_reservation import setup_stock
from tests.support import bearer, wait_for

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
    # database queries and the carrier's HTTP calls are spans of the trace, inside the work
    client = [s for s in in_trace if s.kind == SpanKind.CLIENT]
    queries = [
        s
        for s in client
        if "db.system" in (s.attributes or {}) or "db.system.name" in (s.attributes or {})
    ]
    calls = [
        s
        for s in client
        if "http.request.method" in (s.attributes or {}) or "http.method" in (s.attributes or {})
    ]
    assert queries and calls, sorted({s.name for s in client})
    by_id = {s.context.span_id: s for s in in_trace}
    assert any(by_id[c.parent.span_id].name == "buy label" for c in calls if c.parent)
    # the placement's span is the root; every other span has a parent in the trace
    roots = [s for s in in_trace if s.parent is None]
    assert [s.name for s in roots] == [f"{topics.ORDERS_PLACED} process"]
    for s in in_trace:
        for value in (s.attributes or {}).values():
            assert not any(p.lower() in str(value).lower() for p in personal), (s.name, value)


async def test_a_hand_packed_order_stays_one_trace_and_later_stages_link_to_it(
    make_system: MakeSystem, event_log_factory, publisher_factory, spans: InMemorySpanExporter
) -> None:
    system = await make_system(autopick=False, service_overrides={"wave_max_orders": 1})
    await setup_stock(system, [("BER-1", "DE", "10115")], [("BER-1", "HAND", 3)])
    log = await event_log_factory(
        system.config.kafka,
        [
            topics.PICKLISTS_CREATED,
            topics.SHIPMENTS_LABEL_CREATED,
            topics.SHIPMENTS_DELIVERED,
            topics.RETURNS_APPROVED,
        ],
    )
    shop = await publisher_factory(system.config.kafka)
    order = order_placed(lines=[("HAND", 1)])
    oid = order["order_id"]
    await shop.send(topics.ORDERS_PLACED, order, key=oid)
    (picklist,) = await log.wait(topics.PICKLISTS_CREATED)
    warehouse = bearer(system.config.tokens["warehouse"])
    async with httpx.AsyncClient(timeout=30) as http:
        # picked and packed by hand, on the warehouse's HTTP API: outside any handled event
        for line in picklist["lines"]:
            r = await http.post(
                f"{system.urls['inventory']}/picklists/{picklist['picklist_id']}/lines/1/picked",
                json={"quantity": line["quantity"], "scanned_sku": line["sku"]},
                headers=warehouse,
            )
            assert r.status_code == 200, r.text
        r = await http.post(
            f"{system.urls['inventory']}/orders/{oid}/packed",
            json={"parcels": [PARCEL]},
            headers=warehouse,
        )
        assert r.status_code in (200, 202), r.text
        (label,) = await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=oid)
        delivered_at = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        for status, at in (
            ("picked_up", delivered_at - timedelta(hours=5)),
            ("delivered", delivered_at),
        ):
            r = await http.post(
                f"{system.urls['sandbox']}/sandbox/trackers/{label['tracking_number']}/events",
                json={"status": status, "at": at.isoformat()},
            )
            assert r.status_code == 202, r.text
    await log.wait(topics.SHIPMENTS_DELIVERED, order_id=oid)
    ret = return_requested(order_id=oid, lines=[("HAND", 1)], requested_at=datetime.now(UTC))
    await shop.send(topics.RETURNS_REQUESTED, ret, key=oid)
    await log.wait(topics.RETURNS_APPROVED, return_id=ret["return_id"])

    def named(name: str) -> list[ReadableSpan]:
        return [
            s
            for s in spans.get_finished_spans()
            if s.name == name and (s.attributes or {}).get("waybill.order_id") == oid
        ]

    (placed,) = await wait_for(
        lambda: named(f"{topics.ORDERS_PLACED} process"), what="the placement's span"
    )
    order_trace = placed.context.trace_id
    # packing on the page continued the order's trace, and so did the label bought after it
    (packed,) = await wait_for(lambda: named("pack order"), what="the packing span")
    assert packed.context.trace_id == order_trace
    bought = await wait_for(lambda: named("buy label"), what="the label purchase span")
    assert {s.context.trace_id for s in bought} == {order_trace}
    # the wave that put it on a pick list is a trace of its own, linked to the order's
    waves = [
        s
        for s in spans.get_finished_spans()
        if s.name == "release wave"
        and (s.attributes or {}).get("waybill.picklist_id") == picklist["picklist_id"]
    ]
    assert len(waves) == 1 and waves[0].context.trace_id != order_trace
    assert order_trace in {link.context.trace_id for link in waves[0].links}
    # tracking days later: new traces, each linked to the order's first
    updates = await wait_for(
        lambda: named("tracking update") if len(named("tracking update")) >= 2 else None,
        what="the tracking updates' spans",
    )
    for update in updates:
        assert update.context.trace_id != order_trace
        assert [link.context.trace_id for link in update.links] == [order_trace]
    # the return request: its own trace, linked to the order's
    requested = await wait_for(
        lambda: named(f"{topics.RETURNS_REQUESTED} process"), what="the return request's span"
    )
    assert all(s.context.trace_id != order_trace for s in requested)
    assert any(order_trace in {lk.context.trace_id for lk in s.links} for s in requested)
