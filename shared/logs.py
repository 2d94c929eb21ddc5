"""Logging for every process: plain lines for people, or one JSON object per line
(``WAYBILL_LOG_FORMAT=json``) for a log stack, joined to traces by ``trace_id``/``span_id``
and to orders by ``order_id``.

What goes into a line is what the code logs: the log messages name orders, topics and
services, never customers (names, e-mails, addresses); tests/integration/test_json_logs.py
greps a whole run's logs for the test customer to keep it so.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: attributes a LogRecord always has: everything else came in ``extra=``
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, service, logger, message, and where
    known trace_id, span_id (of the current span) and order_id (given with ``extra=``, or
    the current span's ``waybill.order_id``)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span = trace.get_current_span()
        context = span.get_span_context()
        given = getattr(record, "trace_id", None)
        if given:  # given: a record of a batch, whose span is not the current one
            line["trace_id"] = given
            line["span_id"] = getattr(record, "span_id", None)
        elif context.is_valid:
            line["trace_id"] = format(context.trace_id, "032x")
            line["span_id"] = format(context.span_id, "016x")
        attributes = getattr(span, "attributes", None) or {}
        order_id = getattr(record, "order_id", None) or attributes.get("waybill.order_id")
        if order_id:
            line["order_id"] = str(order_id)
        for key, value in vars(record).items():
            if value is None or key in _STANDARD or key in line or key.startswith("_"):
                continue
            line[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


#: the name of the root handler :func:`configure_logging` installs
HANDLER_NAME = "waybill"


class StandardErrorHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes, as logging's last-resort
    handler does, not to the stream it was at set-up: code that swaps standard error (a
    test's capture, a daemon's redirect) closes the old one, and a handler bound to it
    would fail on every record after."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure_logging(level: str, *, service: str, json_lines: bool) -> None:
    """Root logging to standard error, plain or JSON; the chatty client libraries quieter."""
    handler = StandardErrorHandler()
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(JsonFormatter(service) if json_lines else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for noisy in ("aiokafka", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
