from __future__ import annotations

from pydantic import AliasChoices, Field

from shared.carriers.wiring import CarrierClientSettings


class ShippingSettings(CarrierClientSettings):
    http_port: int = Field(default=8083, validation_alias=AliasChoices("WAYBILL_SHIPPING_PORT"))
