"""Composition root of the shipping service."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI

from services.shipping.api import router
from services.shipping.config import ShippingSettings
from services.shipping.consumers import build_consumer
from services.shipping.workers import (
    buy_labels,
    poll_tracking,
    void_labels,
    watch_delivery_promises,
)
from shared import topics
from shared.carriers import CarrierGateway
from shared.carriers.wiring import attach_carrier_gateway
from shared.clock import Clock
from shared.db import MigrationSource
from shared.http import create_service_app
from shared.runtime import ServiceDefinition, ServiceRuntime
from shared.settings import KafkaSettings

NAME = "shipping"
SETTINGS = ShippingSettings


def build_runtime(
    settings: ShippingSettings | None = None,
    kafka: KafkaSettings | None = None,
    *,
    clock: Clock | None = None,
    carriers: CarrierGateway | None = None,
) -> ServiceRuntime:
    settings = settings or ShippingSettings()
    consumer = build_consumer(
        schema=NAME,
        max_attempts=settings.consumer_max_attempts,
        retry_base_seconds=settings.consumer_retry_base_seconds,
    )
    definition = ServiceDefinition(
        name=NAME,
        migrations=MigrationSource(NAME, files("services.shipping.storage").joinpath("migrations")),
        consumer=consumer,
        produces=[
            topics.SHIPMENTS_LABEL_CREATED,
            topics.SHIPMENTS_SHIPPED,
            topics.SHIPMENTS_DELIVERED,
            topics.SHIPMENTS_EXCEPTION,
            topics.SLA_BREACHED,
        ],
        workers=[buy_labels, void_labels, watch_delivery_promises, poll_tracking],
    )
    runtime = ServiceRuntime(
        definition, settings=settings, kafka=kafka or KafkaSettings(), clock=clock
    )
    attach_carrier_gateway(runtime, settings, carriers)
    runtime.extras["sla_check_seconds"] = settings.sla_check_seconds
    runtime.extras["poll_after_seconds"] = settings.poll_after_seconds
    runtime.extras["poll_interval_seconds"] = settings.poll_interval_seconds
    return runtime


def create_app(runtime: ServiceRuntime | None = None) -> FastAPI:
    return create_service_app(runtime or build_runtime(), routers=[router])
