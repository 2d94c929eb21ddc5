from __future__ import annotations

from pydantic import AliasChoices, Field, model_validator

from shared.carriers.wiring import CarrierClientSettings

MIN_WEBHOOK_SECRET_LENGTH = 16


class ShippingSettings(CarrierClientSettings):
    http_port: int = Field(default=8083, validation_alias=AliasChoices("WAYBILL_SHIPPING_PORT"))
    #: how often undelivered orders are checked against their delivery promise
    sla_check_seconds: float = Field(default=30.0, gt=0, le=3600)
    #: a shipment without tracking news this long is polled (carriers without webhooks)
    poll_after_seconds: float = Field(default=3600.0, ge=0, le=7 * 86400)
    poll_interval_seconds: float = Field(default=60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _webhooks_need_a_secret(self) -> ShippingSettings:
        # Without a secret anyone could forge tracking updates: refuse to start.
        if len(self.webhook_secret()) < MIN_WEBHOOK_SECRET_LENGTH:
            variable = (
                "WAYBILL_EASYPOST_WEBHOOK_SECRET"
                if self.carrier_provider == "easypost"
                else "WAYBILL_CARRIER_WEBHOOK_SECRET"
            )
            raise ValueError(
                f"{variable} must be set, at least {MIN_WEBHOOK_SECRET_LENGTH} characters "
                "(carrier webhooks are verified with it)"
            )
        return self
