from __future__ import annotations

from pydantic import AliasChoices, Field

from shared.settings import ServiceSettings


class InventorySettings(ServiceSettings):
    http_port: int = Field(default=8082, validation_alias=AliasChoices("WAYBILL_INVENTORY_PORT"))
    autopick: bool = False
