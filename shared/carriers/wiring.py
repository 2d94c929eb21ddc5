"""How a service that talks to carriers is configured and given its gateway."""

from __future__ import annotations

from pydantic import Field, SecretStr

from shared.carriers.base import CarrierGateway
from shared.carriers.sandbox import SandboxCarrierGateway
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings


class CarrierClientSettings(ServiceSettings):
    """Settings of a service that buys labels (shipping, returns)."""

    carrier_sandbox_url: str = "http://127.0.0.1:8090"
    carrier_webhook_secret: SecretStr = SecretStr("")
    carrier_timeout_seconds: float = Field(default=5.0, gt=0, le=120)


def attach_carrier_gateway(
    runtime: ServiceRuntime,
    settings: CarrierClientSettings,
    gateway: CarrierGateway | None = None,
) -> CarrierGateway:
    """Give ``runtime`` its carrier gateway (the sandbox unless one is passed); closed at stop."""
    chosen = gateway or SandboxCarrierGateway(
        settings.carrier_sandbox_url,
        webhook_secret=settings.carrier_webhook_secret.get_secret_value(),
        timeout_seconds=settings.carrier_timeout_seconds,
    )
    runtime.extras["carriers"] = chosen
    runtime.extras["carrier_timeout_seconds"] = settings.carrier_timeout_seconds
    runtime.cleanups.append(chosen.close)
    return chosen
