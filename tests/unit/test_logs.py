"""The JSON log line: one object, the trace of the current span or the one given, the
order, the extras; and the handler that writes the lines."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from shared.logs import HANDLER_NAME, JsonFormatter, configure_logging


def _line(record: logging.LogRecord) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(JsonFormatter("shipping").format(record))
    return parsed


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "waybill.test", "levelname": "INFO", "msg": message})
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_a_line_outside_any_span_has_no_trace() -> None:
    line = _line(_record("hello %s", args=None))
    assert line["service"] == "shipping" and line["level"] == "info"
    assert line["message"] == "hello %s" and "trace_id" not in line


def test_a_line_inside_a_span_carries_its_trace_and_order() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work", attributes={"waybill.order_id": "o-1"}) as span:
        line = _line(_record("inside"))
    context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert line["order_id"] == "o-1"


def test_given_ids_and_extras_win_and_none_is_left_out() -> None:
    line = _line(
        _record("batch", trace_id="ab" * 16, span_id="cd" * 8, order_id="o-2", n=3, nothing=None)
    )
    assert (line["trace_id"], line["span_id"], line["order_id"]) == ("ab" * 16, "cd" * 8, "o-2")
    assert line["n"] == 3 and "nothing" not in line


def test_the_handler_follows_standard_error_when_it_is_swapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr("sys.stderr", first)
        configure_logging("info", service="orders", json_lines=True)
        logging.getLogger("waybill.test").info("before the swap")
        monkeypatch.setattr("sys.stderr", second)
        first.close()  # as a test's capture is closed when the test ends
        logging.getLogger("waybill.test").info("after the swap")
        (mine,) = [h for h in root.handlers if h.get_name() == HANDLER_NAME]
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert json.loads(second.getvalue())["message"] == "after the swap"
    assert isinstance(mine, logging.StreamHandler)
