"""Webhook signatures: what verifies, and every way a header can fail to."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from shared.signing import (
    SIGNATURE_HEADER,
    WebhookSignatureError,
    sign_webhook,
    verify_webhook,
)

SECRET = "whsec_test"
BODY = b'{"event_id":"e1","status":"delivered"}'
T = 1_700_000_000


def test_header_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign_webhook(SECRET, BODY, timestamp=T) == f"t=1700000000,v1={expected}"
    assert SIGNATURE_HEADER == "X-Waybill-Signature"


def test_a_fresh_signature_verifies() -> None:
    header = sign_webhook(SECRET, BODY, timestamp=T)
    verify_webhook(SECRET, header, BODY, now=T)
    verify_webhook(SECRET, header, BODY, now=T + 300)  # the edge of the tolerance
    verify_webhook(SECRET, header, BODY, now=T - 300)  # sender's clock a little ahead
    verify_webhook(SECRET, header.replace(",", " , "), BODY, now=T)  # spaces are tolerated


def test_any_of_several_v1_signatures_may_match() -> None:
    good = sign_webhook(SECRET, BODY, timestamp=T).split(",v1=")[1]
    old = sign_webhook("rotated-out", BODY, timestamp=T).split(",v1=")[1]
    verify_webhook(SECRET, f"t={T},v1={old},v1={good}", BODY, now=T)
    verify_webhook(SECRET, f"t={T},v0=legacy,v1={good.upper()}", BODY, now=T)


def reason(header: str | None, body: bytes = BODY, *, now: float = T, secret: str = SECRET) -> str:
    with pytest.raises(WebhookSignatureError) as caught:
        verify_webhook(secret, header, body, now=now)
    return caught.value.reason


def test_wrong_secret_or_changed_body_is_a_mismatch() -> None:
    header = sign_webhook(SECRET, BODY, timestamp=T)
    assert reason(header, secret="another") == "signature mismatch"
    assert reason(header, BODY + b" ") == "signature mismatch"
    # The timestamp is signed too: moving it breaks the signature.
    moved = header.replace(f"t={T}", f"t={T + 1}")
    assert reason(moved) == "signature mismatch"


def test_old_or_future_timestamps_are_refused() -> None:
    header = sign_webhook(SECRET, BODY, timestamp=T)
    assert "tolerance" in reason(header, now=T + 301)
    assert "tolerance" in reason(header, now=T - 301)
    with pytest.raises(WebhookSignatureError):
        verify_webhook(SECRET, header, BODY, now=T + 61, tolerance_seconds=60)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        None,
    ],
)
def test_missing_header(header: str | None) -> None:
    assert reason(header) == "missing signature header"


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "v1=abc",  # no timestamp
        f"t={T}",  # no signature
        f"t=soon,v1={'0' * 64}",
        f"t=-5,v1={'0' * 64}",
        f"t={T},t={T},v1={'0' * 64}",
        f"t={T},,v1={'0' * 64}",
        f"t=١٢٣,v1={'0' * 64}",  # non-ASCII digits
    ],
)
def test_malformed_header(header: str) -> None:
    assert reason(header).startswith("malformed signature header")


def test_error_carries_its_reason() -> None:
    error = WebhookSignatureError("signature mismatch")
    assert error.reason == "signature mismatch"
    assert str(error) == "signature mismatch"
