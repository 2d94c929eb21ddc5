from __future__ import annotations

from pydantic import AliasChoices, Field

from shared.carriers.wiring import CarrierClientSettings


class ReturnsSettings(CarrierClientSettings):
    http_port: int = Field(default=8084, validation_alias=AliasChoices("WAYBILL_RETURNS_PORT"))
    return_window_days: int = Field(default=7, ge=1, le=365)
