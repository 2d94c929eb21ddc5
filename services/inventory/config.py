from __future__ import annotations

from pydantic import AliasChoices, Field

from shared.settings import ServiceSettings


class InventorySettings(ServiceSettings):
    http_port: int = Field(default=8082, validation_alias=AliasChoices("WAYBILL_INVENTORY_PORT"))
    autopick: bool = False
    #: a wave goes to the floor as one pick list once this many orders wait in a warehouse
    wave_max_orders: int = Field(default=20, ge=1, le=500)
    #: ... or once its oldest order has waited this long
    wave_max_age_seconds: float = Field(default=60.0, gt=0, le=86_400)
    #: how often the wave builder looks at the clock (a reservation also wakes it)
    wave_check_seconds: float = Field(default=1.0, gt=0, le=300)
