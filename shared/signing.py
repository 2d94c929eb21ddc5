"""Carrier webhook signatures: `X-Waybill-Signature: t=<unix>,v1=<hex>`.

The signature is HMAC-SHA256 of `"<t>." + raw body` under the shared secret. The
timestamp is part of the signed text, so a captured request cannot be replayed
after the tolerance has passed. Several `v1=` values may be present (a sender
rotating its secret signs with the old and the new one); one match is enough.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Waybill-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookSignatureError(Exception):
    """The webhook is not provably from the carrier (or is too old): answer 401."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WebhookPayloadError(WebhookSignatureError):
    """Signed by the carrier, but the body is not a tracking event: answer 422 (a bad body),
    not 401. A WebhookSignatureError still, for callers that only tell accepted from not."""


def _digest(secret: str, body: bytes, timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign_webhook(secret: str, body: bytes, *, timestamp: int) -> str:
    """The header value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, body, timestamp)}"


def _parse_header(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise WebhookSignatureError("malformed signature header")
        key, value = key.strip(), value.strip()
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                raise WebhookSignatureError("malformed signature header")
            timestamp = int(value)
        elif key == "v1":
            signatures.append(value.lower())
        # Other schemes (v0, future v2) are ignored, as senders may add them.
    if timestamp is None:
        raise WebhookSignatureError("malformed signature header: no timestamp")
    if not signatures:
        raise WebhookSignatureError("malformed signature header: no v1 signature")
    return timestamp, signatures


def verify_webhook(
    secret: str,
    header: str | None,
    body: bytes,
    *,
    now: float,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Raise WebhookSignatureError unless `header` signs `body` recently enough.

    `now` is unix seconds; the timestamp may be off by at most `tolerance_seconds`
    either way (clock skew between carrier and us goes both directions).
    """
    if header is None or not header.strip():
        raise WebhookSignatureError("missing signature header")
    timestamp, signatures = _parse_header(header)
    if abs(now - timestamp) > tolerance_seconds:
        raise WebhookSignatureError("timestamp outside the tolerance")
    expected = _digest(secret, body, timestamp).encode()
    # Compare against every candidate without stopping early: constant time per value.
    matched = False
    for candidate in signatures:
        if hmac.compare_digest(expected, candidate.encode()):
            matched = True
    if not matched:
        raise WebhookSignatureError("signature mismatch")
