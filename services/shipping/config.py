from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr

from shared.settings import ServiceSettings


class ShippingSettings(ServiceSettings):
    http_port: int = Field(default=8083, validation_alias=AliasChoices("WAYBILL_SHIPPING_PORT"))
    carrier_sandbox_url: str = "http://127.0.0.1:8090"
    carrier_webhook_secret: SecretStr = SecretStr("")
    carrier_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
