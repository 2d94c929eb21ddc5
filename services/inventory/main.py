"""Composition root of the inventory service."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI

from services.inventory.api import router
from services.inventory.config import InventorySettings
from services.inventory.consumers import build_consumer
from services.inventory.picking import WaveBuilderStats, build_waves
from services.inventory.staff_api import router as staff_router
from services.inventory.warehouse_api import router as warehouse_router
from shared import topics
from shared.clock import Clock, SystemClock
from shared.db import MigrationSource
from shared.http import create_service_app
from shared.runtime import ServiceDefinition, ServiceRuntime
from shared.settings import KafkaSettings

NAME = "inventory"
SETTINGS = InventorySettings


def build_runtime(
    settings: InventorySettings | None = None,
    kafka: KafkaSettings | None = None,
    *,
    clock: Clock | None = None,
) -> ServiceRuntime:
    settings = settings or InventorySettings()
    clock = clock or SystemClock()
    consumer = build_consumer(
        schema=NAME,
        autopick=settings.autopick,
        clock=clock,
        max_attempts=settings.consumer_max_attempts,
        retry_base_seconds=settings.consumer_retry_base_seconds,
    )
    definition = ServiceDefinition(
        name=NAME,
        migrations=MigrationSource(
            NAME, files("services.inventory.storage").joinpath("migrations")
        ),
        consumer=consumer,
        produces=[
            topics.STOCK_RESERVED,
            topics.STOCK_BACKORDERED,
            topics.STOCK_RELEASED,
            topics.STOCK_RESTOCKED,
            topics.PICKLISTS_CREATED,
            topics.ORDERS_PACKED,
            topics.WAREHOUSE_RETURN_SCANNED,
            topics.STAFF_KEY_CHANGED,
        ],
        workers=[build_waves],
    )
    runtime = ServiceRuntime(
        definition, settings=settings, kafka=kafka or KafkaSettings(), clock=clock
    )
    runtime.extras["autopick"] = settings.autopick
    runtime.extras["waves"] = WaveBuilderStats()
    return runtime


def create_app(runtime: ServiceRuntime | None = None) -> FastAPI:
    routers = [router, warehouse_router, staff_router]
    return create_service_app(runtime or build_runtime(), routers=routers)
