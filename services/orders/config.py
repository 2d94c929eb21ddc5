from __future__ import annotations

from pydantic import AliasChoices, Field

from shared.settings import ServiceSettings


class OrdersSettings(ServiceSettings):
    http_port: int = Field(default=8081, validation_alias=AliasChoices("WAYBILL_ORDERS_PORT"))
    promise_time_zone: str = "Europe/Berlin"
    #: a return request must be decided (approved or rejected) within this many seconds
    return_decision_seconds: float = Field(default=60.0, gt=0, le=86400)
    #: how often open SLA deadlines are checked against the clock
    sla_check_seconds: float = Field(default=5.0, gt=0, le=3600)
    #: a re-driven order that has not moved after this many seconds is reported as stuck
    redrive_wait_seconds: float = Field(default=120.0, gt=0, le=86400)
    #: where the other services answer (their GET /ops/health feeds the ops dashboard)
    inventory_url: str | None = "http://127.0.0.1:8082"
    shipping_url: str | None = "http://127.0.0.1:8083"
    returns_url: str | None = "http://127.0.0.1:8084"
