from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr

from shared.settings import ServiceSettings


class ReturnsSettings(ServiceSettings):
    http_port: int = Field(default=8084, validation_alias=AliasChoices("WAYBILL_RETURNS_PORT"))
    return_window_days: int = Field(default=7, ge=1, le=365)
    carrier_sandbox_url: str = "http://127.0.0.1:8090"
    carrier_webhook_secret: SecretStr = SecretStr("")
    carrier_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
