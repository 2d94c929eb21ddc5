"""Carrier gateways: how shipping and returns talk to carriers (and to the sandbox)."""

from shared.carriers.base import (
    CarrierError,
    CarrierGateway,
    Label,
    LabelRequest,
    Place,
    Quotes,
    Rate,
    RateRequest,
    TrackingEvent,
)
from shared.carriers.sandbox import SandboxCarrierGateway

__all__ = [
    "CarrierError",
    "CarrierGateway",
    "Label",
    "LabelRequest",
    "Place",
    "Quotes",
    "Rate",
    "RateRequest",
    "SandboxCarrierGateway",
    "TrackingEvent",
]
