"""One HTTP call to a carrier API, its failures mapped to :class:`CarrierError`.

Timeouts, transport errors, 429 and 5xx may succeed later (retryable; 429 carries its
Retry-After); other 4xx will not.

Whether the carrier may have acted on the request anyway (``maybe_processed``) decides if a
label purchase may move to another carrier. Not processed: the connection was never made
(connect errors and timeouts, pool timeouts), 429 and 503 (RFC 9110: the server did not
handle the request), other 4xx (refused). Maybe processed: the request was sent and the
answer lost (read or write timeouts, a dropped connection), other 5xx, an unreadable 2xx.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from shared.carriers.base import CarrierError

#: failures before a single byte of the request reached the carrier
_NEVER_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)


def retry_after_of(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: the caller's own backoff applies


def _plain_text(response: httpx.Response) -> str:
    return response.text[:300]


async def call_carrier(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    error_text: Callable[[httpx.Response], str] = _plain_text,
    **kwargs: Any,
) -> dict[str, Any]:
    try:
        response = await client.request(method, path, **kwargs)
    except _NEVER_SENT as exc:
        raise CarrierError(f"{method} {path} not sent: {exc!r}", retryable=True) from exc
    except httpx.TimeoutException as exc:
        raise CarrierError(
            f"{method} {path} timed out", retryable=True, maybe_processed=True
        ) from exc
    except httpx.TransportError as exc:
        raise CarrierError(
            f"{method} {path} failed: {exc!r}", retryable=True, maybe_processed=True
        ) from exc
    status = response.status_code
    if status == 429:
        raise CarrierError(
            "rate limited", retryable=True, retry_after=retry_after_of(response), status=429
        )
    if status >= 400:
        raise CarrierError(
            f"{method} {path}: {status} {error_text(response)}".rstrip(),
            retryable=status >= 500,
            retry_after=retry_after_of(response) if status == 503 else None,
            maybe_processed=status >= 500 and status != 503,
            status=status,
        )
    try:
        body: dict[str, Any] = response.json()
    except ValueError as exc:
        raise CarrierError(
            f"{method} {path}: unreadable answer",
            retryable=True,
            maybe_processed=True,
            status=status,
        ) from exc
    return body
