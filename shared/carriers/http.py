"""One HTTP call to a carrier API, its failures mapped to :class:`CarrierError`.

Timeouts, transport errors, 429 and 5xx may succeed later (retryable; 429 carries its
Retry-After); other 4xx will not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from shared.carriers.base import CarrierError


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
    except httpx.TimeoutException as exc:
        raise CarrierError(f"{method} {path} timed out", retryable=True) from exc
    except httpx.TransportError as exc:
        raise CarrierError(f"{method} {path} failed: {exc}", retryable=True) from exc
    if response.status_code == 429:
        raise CarrierError("rate limited", retryable=True, retry_after=retry_after_of(response))
    if response.status_code >= 400:
        raise CarrierError(
            f"{method} {path}: {response.status_code} {error_text(response)}".rstrip(),
            retryable=response.status_code >= 500,
        )
    try:
        body: dict[str, Any] = response.json()
    except ValueError as exc:
        raise CarrierError(f"{method} {path}: unreadable answer", retryable=True) from exc
    return body
