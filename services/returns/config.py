from __future__ import annotations

from pydantic import AliasChoices, Field

from shared.carriers.wiring import CarrierClientSettings


class ReturnsSettings(CarrierClientSettings):
    http_port: int = Field(default=8084, validation_alias=AliasChoices("WAYBILL_RETURNS_PORT"))
    return_window_days: int = Field(default=7, ge=1, le=365)
    #: a request naming an order or delivery not heard of yet waits this long for that news
    #: before it is rejected (unknown_order, not_delivered): other topics can lag behind
    return_decision_grace_seconds: float = Field(default=20.0, ge=0, le=50)
