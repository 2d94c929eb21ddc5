import pytest
from pydantic import ValidationError

from services.shipping.config import ShippingSettings


def test_shipping_refuses_to_start_without_a_webhook_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WAYBILL_CARRIER_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ValidationError, match="WAYBILL_CARRIER_WEBHOOK_SECRET must be set"):
        ShippingSettings()
    with pytest.raises(ValidationError):
        ShippingSettings(carrier_webhook_secret="short")
    assert ShippingSettings(carrier_webhook_secret="s" * 16).carrier_webhook_secret
