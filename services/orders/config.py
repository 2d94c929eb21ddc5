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
    #: webhooks to shops (docs/tenancy.md): one attempt's limit, how long a delivery is
    #: retried before it is dead, the backoff between attempts, requests at once in all and
    #: per shop, and how often due deliveries are looked for
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    webhook_retry_seconds: float = Field(default=24 * 3600.0, gt=0, le=30 * 86400)
    webhook_backoff_base_seconds: float = Field(default=5.0, gt=0, le=3600)
    webhook_backoff_max_seconds: float = Field(default=3600.0, gt=0, le=86400)
    webhook_concurrency: int = Field(default=32, ge=1, le=1000)
    webhook_per_shop: int = Field(default=4, ge=1, le=100)
    webhook_poll_seconds: float = Field(default=0.5, gt=0, le=60)
