"""How a service that talks to carriers is configured and given its gateway and purchaser."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from shared.carriers.base import CarrierGateway
from shared.carriers.easypost import EasyPostCarrierGateway
from shared.carriers.pacing import PacedGateway
from shared.carriers.purchase import LabelPurchaser
from shared.carriers.resilience import BreakerState, CarrierBreakers, RetryPolicy
from shared.carriers.sandbox import SandboxCarrierGateway
from shared.clock import SystemClock
from shared.metrics import forget, observe
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings


class CarrierClientSettings(ServiceSettings):
    """Settings of a service that buys labels (shipping, returns)."""

    #: who sells the labels: the carrier sandbox, or EasyPost (real carriers)
    carrier_provider: Literal["sandbox", "easypost"] = "sandbox"
    carrier_sandbox_url: str = "http://127.0.0.1:8090"
    carrier_webhook_secret: SecretStr = SecretStr("")
    carrier_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    easypost_api_key: SecretStr = SecretStr("")
    easypost_webhook_secret: SecretStr = SecretStr("")
    easypost_url: str = "https://api.easypost.com"
    #: the sender's full address for real labels, as JSON: {"name", "line1", "city",
    #: "state", "postal_code", "country", "phone"} (rating needs only country and postcode)
    easypost_from_address: dict[str, str] | None = None
    #: carrier calls one label may use before it is handed to ops (``label_failed``)
    label_max_attempts: int = Field(default=20, ge=1, le=1000)
    label_retry_base_seconds: float = Field(default=0.5, gt=0, le=60)
    label_retry_cap_seconds: float = Field(default=60.0, gt=0, le=3600)
    #: failures in a row that open a carrier's circuit, and how long it then stays open
    carrier_breaker_failures: int = Field(default=5, ge=1, le=1000)
    carrier_breaker_open_seconds: float = Field(default=30.0, gt=0, le=3600)
    #: a rate quote is reused this long for the same route and weight band (0: never); see
    #: shared/carriers/pacing.py
    carrier_rate_cache_seconds: float = Field(default=60.0, ge=0, le=3600)
    #: characters of the destination postal code that make the route (the carrier's zone)
    carrier_rate_postal_prefix: int = Field(default=2, ge=1, le=16)
    #: calls at once to one carrier (rates and tracking share one more such limit)
    carrier_max_concurrent: int = Field(default=32, ge=1, le=1000)

    @model_validator(mode="after")
    def _easypost_needs_a_key(self) -> CarrierClientSettings:
        if self.carrier_provider == "easypost" and not self.easypost_api_key.get_secret_value():
            raise ValueError(
                "WAYBILL_CARRIER_PROVIDER=easypost needs WAYBILL_EASYPOST_API_KEY "
                "(a test-mode key EZTK... to try it out)"
            )
        return self

    def webhook_secret(self) -> str:
        """The secret that carrier webhooks to this service are signed with."""
        if self.carrier_provider == "easypost":
            return self.easypost_webhook_secret.get_secret_value()
        return self.carrier_webhook_secret.get_secret_value()


def gateway_for(settings: CarrierClientSettings) -> CarrierGateway:
    """The configured carrier gateway."""
    if settings.carrier_provider == "easypost":
        return EasyPostCarrierGateway(
            settings.easypost_api_key.get_secret_value(),
            webhook_secret=settings.webhook_secret(),
            base_url=settings.easypost_url,
            timeout_seconds=settings.carrier_timeout_seconds,
            from_address=settings.easypost_from_address,
        )
    return SandboxCarrierGateway(
        settings.carrier_sandbox_url,
        webhook_secret=settings.webhook_secret(),
        timeout_seconds=settings.carrier_timeout_seconds,
    )


def attach_carrier_gateway(
    runtime: ServiceRuntime,
    settings: CarrierClientSettings,
    gateway: CarrierGateway | None = None,
) -> CarrierGateway:
    """Give ``runtime`` its carrier gateway (the configured one unless one is passed, with
    reused rate quotes and bounded concurrency) and a label purchaser with one circuit
    breaker per carrier; the gateway is closed at stop."""
    chosen = PacedGateway(
        gateway or gateway_for(settings),
        rate_cache_seconds=settings.carrier_rate_cache_seconds,
        postal_prefix=settings.carrier_rate_postal_prefix,
        max_concurrent=settings.carrier_max_concurrent,
    )
    runtime.extras["carriers"] = chosen
    runtime.extras["carrier_timeout_seconds"] = settings.carrier_timeout_seconds
    # Breakers count real seconds: an injected business clock (SLA tests) must not hold
    # a circuit open or closed.
    breakers = CarrierBreakers(
        SystemClock(),
        failure_threshold=settings.carrier_breaker_failures,
        open_seconds=settings.carrier_breaker_open_seconds,
    )
    runtime.extras["purchaser"] = LabelPurchaser(
        chosen,
        breakers,
        retry=RetryPolicy(
            base_seconds=settings.label_retry_base_seconds,
            cap_seconds=settings.label_retry_cap_seconds,
            max_attempts=settings.label_max_attempts,
        ),
    )
    levels = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}

    def breaker_states() -> list[tuple[float, dict[str, str]]]:
        return [
            (levels[b.state], {"service": runtime.name, "carrier": name})
            for name, b in list(breakers.breakers.items())
        ]

    observe("waybill.carrier.breaker_state", breaker_states)

    async def close() -> None:
        forget(breaker_states)
        await chosen.close()

    runtime.cleanups.append(close)
    return chosen
