from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, field_validator

from shared.carriers.wiring import CarrierClientSettings

MIN_WEBHOOK_SECRET_LENGTH = 16


class ShippingSettings(CarrierClientSettings):
    http_port: int = Field(default=8083, validation_alias=AliasChoices("WAYBILL_SHIPPING_PORT"))
    #: how often undelivered orders are checked against their delivery promise
    sla_check_seconds: float = Field(default=30.0, gt=0, le=3600)
    #: a shipment without tracking news this long is polled (carriers without webhooks)
    poll_after_seconds: float = Field(default=3600.0, ge=0, le=7 * 86400)
    poll_interval_seconds: float = Field(default=60.0, gt=0, le=3600)

    @field_validator("carrier_webhook_secret")
    @classmethod
    def _webhooks_need_a_secret(cls, value: SecretStr) -> SecretStr:
        # Without a secret anyone could forge tracking updates: refuse to start.
        if len(value.get_secret_value()) < MIN_WEBHOOK_SECRET_LENGTH:
            raise ValueError(
                f"WAYBILL_CARRIER_WEBHOOK_SECRET must be set, at least "
                f"{MIN_WEBHOOK_SECRET_LENGTH} characters (carrier webhooks are verified with it)"
            )
        return value
