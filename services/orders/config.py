from __future__ import annotations

from pydantic import AliasChoices, Field

from shared.settings import ServiceSettings


class OrdersSettings(ServiceSettings):
    http_port: int = Field(default=8081, validation_alias=AliasChoices("WAYBILL_ORDERS_PORT"))
    promise_time_zone: str = "Europe/Berlin"
