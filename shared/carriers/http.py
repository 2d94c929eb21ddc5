"""One HTTP call to a carrier API, its failures mapped to :class:`CarrierError`.

Timeouts, transport errors, 429 and 5xx may succeed later (retryable; 429 carries its
Retry-After); other 4xx will not.

Whether the carrier may have acted on the request anyway (``maybe_processed``) decides if a
label purchase may move to another carrier. Not processed: the connection was never made
(connect errors and connect timeouts, which include waiting for a pooled connection), 429
and 503 (RFC 9110: the server did not handle the request), other 4xx (refused). Maybe
processed: the request was sent and the answer lost (read timeouts, a dropped connection),
other 5xx, an unreadable 2xx.

The client is aiohttp: measured here against the carrier sandbox, a request costs it about
0.45 ms of CPU where httpx took 2.5 ms, and a label purchase is a request per order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from shared import telemetry
from shared.carriers.base import CarrierError

#: connections kept open to a carrier API: more than the purchaser ever has in flight
#: (shared/carriers/pacing.py), so that no request waits for one or pays for a new one
MAX_CONNECTIONS = 128
#: an idle connection is closed after this long: before the server would close it (common
#: web servers, uvicorn among them, close idle ones after 5 s), so that a request is never
#: written to a connection the server has just closed (seen: "connection reset by peer")
KEEPALIVE_SECONDS = 4.0


def carrier_session(
    base_url: str,
    *,
    timeout_seconds: float,
    headers: Mapping[str, str] | None = None,
) -> aiohttp.ClientSession:
    """A session for one carrier API: keep-alive connections, one timeout for the whole
    call and for getting a connection. Its requests are spans of the current trace when
    spans are recorded (when none are, tracing each request would only cost CPU)."""
    trace_configs = []
    if telemetry.spans_recorded():
        from opentelemetry.instrumentation.aiohttp_client import create_trace_config

        trace_configs.append(create_trace_config())
    return aiohttp.ClientSession(
        base_url=base_url.rstrip("/") + "/",
        timeout=aiohttp.ClientTimeout(total=timeout_seconds, connect=timeout_seconds),
        connector=aiohttp.TCPConnector(
            limit=MAX_CONNECTIONS,
            limit_per_host=MAX_CONNECTIONS,
            keepalive_timeout=KEEPALIVE_SECONDS,
        ),
        headers=dict(headers or {}),
        raise_for_status=False,
        trace_configs=trace_configs,
    )


@dataclass(frozen=True)
class CarrierAnswer:
    """A carrier's HTTP answer, read in full."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def retry_after_of(answer: CarrierAnswer) -> float | None:
    value = answer.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: the caller's own backoff applies


def _plain_text(answer: CarrierAnswer) -> str:
    return answer.text[:300]


async def call_carrier(
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    *,
    error_text: Callable[[CarrierAnswer], str] = _plain_text,
    **kwargs: Any,
) -> dict[str, Any]:
    # relative to the session's base URL (a path of the API, never another host)
    url = path.lstrip("/")
    try:
        async with session.request(method, url, **kwargs) as response:
            answer = CarrierAnswer(response.status, response.headers, await response.read())
    except aiohttp.ConnectionTimeoutError as exc:
        raise CarrierError(f"{method} {path} not sent: connect timed out", retryable=True) from exc
    except aiohttp.ClientConnectorError as exc:
        raise CarrierError(f"{method} {path} not sent: {exc}", retryable=True) from exc
    except TimeoutError as exc:
        raise CarrierError(
            f"{method} {path} timed out", retryable=True, maybe_processed=True
        ) from exc
    except aiohttp.ClientError as exc:
        raise CarrierError(
            f"{method} {path} failed: {exc!r}", retryable=True, maybe_processed=True
        ) from exc
    if answer.status >= 400:
        raise error_for_status(
            f"{method} {path}", answer.status, error_text(answer), retry_after_of(answer)
        )
    try:
        body: dict[str, Any] = answer.json()
    except ValueError as exc:
        raise CarrierError(
            f"{method} {path}: unreadable answer",
            retryable=True,
            maybe_processed=True,
            status=answer.status,
        ) from exc
    return body


def error_for_status(what: str, status: int, text: str, retry_after: float | None) -> CarrierError:
    """A carrier's refusal (an HTTP status of 400 or more) as a :class:`CarrierError`."""
    if status == 429:
        return CarrierError("rate limited", retryable=True, retry_after=retry_after, status=429)
    return CarrierError(
        f"{what}: {status} {text}".rstrip(),
        retryable=status >= 500,
        retry_after=retry_after if status == 503 else None,
        maybe_processed=status >= 500 and status != 503,
        status=status,
    )
