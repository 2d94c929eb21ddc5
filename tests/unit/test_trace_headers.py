"""The span of a record that nobody records, read straight from its Kafka headers, is in
the same trace as the general path (context_from, then start_span) would put it."""

from __future__ import annotations

import pytest

from shared import telemetry

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(autouse=True)
def nobody_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "spans_recorded", lambda: False)


def general_path(headers: list[tuple[str, bytes]]) -> telemetry.Span:
    decoded = [(k, v.decode()) for k, v in headers]
    return telemetry.start_span("t", service="s", parent=telemetry.context_from(decoded))


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", PARENT.encode())],
        [("content-type", b"application/json"), ("traceparent", PARENT.encode())],
        [("traceparent", PARENT.replace("-01", "-00").encode())],
        [("traceparent", PARENT.encode()), ("tracestate", b"vendor=abc,other=1")],
    ],
)
def test_a_child_in_the_parents_trace_with_its_flags_and_state(
    headers: list[tuple[str, bytes]],
) -> None:
    fast = telemetry.unrecorded_child(headers)
    assert fast is not None and not fast.is_recording()
    child, reference = fast.get_span_context(), general_path(headers).get_span_context()
    assert child.trace_id == reference.trace_id == int(PARENT.split("-")[1], 16)
    assert child.span_id not in (0, int(PARENT.split("-")[2], 16))
    assert child.trace_flags == reference.trace_flags
    assert child.trace_state == reference.trace_state
    assert not child.is_remote


@pytest.mark.parametrize(
    "headers", [[], [("traceparent", b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01")]]
)
def test_no_usable_parent_starts_a_new_trace(headers: list[tuple[str, bytes]]) -> None:
    first, second = telemetry.unrecorded_child(headers), telemetry.unrecorded_child(headers)
    assert first is not None and second is not None
    assert first.get_span_context().is_valid
    assert first.get_span_context().trace_id != second.get_span_context().trace_id


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", PARENT.encode()), ("baggage", b"shop=s1")],
        [("traceparent", b"01-not-a-w3c-parent")],
    ],
)
def test_headers_for_the_propagators_take_the_general_path(
    headers: list[tuple[str, bytes]],
) -> None:
    assert telemetry.unrecorded_child(headers) is None


def test_recorded_spans_take_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "spans_recorded", lambda: True)
    assert telemetry.unrecorded_child([("traceparent", PARENT.encode())]) is None
