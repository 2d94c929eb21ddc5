"""Composition root of the orders service."""

from __future__ import annotations

from datetime import timedelta
from importlib.resources import files

from fastapi import FastAPI

from services.orders.api import router
from services.orders.config import OrdersSettings
from services.orders.consumers import build_consumer
from services.orders.domain.promises import PromisePolicy
from services.orders.ops_page import router as ops_router
from services.orders.shop_promises import ShopPromises
from services.orders.workers import watch_slas
from shared import topics
from shared.clock import Clock, SystemClock
from shared.db import MigrationSource
from shared.http import create_service_app
from shared.runtime import ServiceDefinition, ServiceRuntime
from shared.settings import KafkaSettings

NAME = "orders"
SETTINGS = OrdersSettings


def build_runtime(
    settings: OrdersSettings | None = None,
    kafka: KafkaSettings | None = None,
    *,
    clock: Clock | None = None,
) -> ServiceRuntime:
    settings = settings or OrdersSettings()
    clock = clock or SystemClock()
    policy = PromisePolicy(time_zone=settings.promise_time_zone)
    promises = ShopPromises(policy)
    consumer = build_consumer(
        schema=NAME,
        promises=promises,
        clock=clock,
        return_decision_within=timedelta(seconds=settings.return_decision_seconds),
        max_attempts=settings.consumer_max_attempts,
        retry_base_seconds=settings.consumer_retry_base_seconds,
    )
    definition = ServiceDefinition(
        name=NAME,
        migrations=MigrationSource(NAME, files("services.orders.storage").joinpath("migrations")),
        consumer=consumer,
        produces=[
            topics.ORDERS_ACCEPTED,
            topics.ORDERS_REJECTED,
            topics.ORDERS_CANCELLED,
            topics.ORDERS_CANCELLATION_REJECTED,
            topics.SLA_BREACHED,
            topics.ORDERS_REDRIVE_REQUESTED,
        ],
        workers=[watch_slas],
    )
    runtime = ServiceRuntime(
        definition, settings=settings, kafka=kafka or KafkaSettings(), clock=clock
    )
    runtime.extras["promise_policy"] = policy
    runtime.extras["shop_promises"] = promises
    runtime.extras["sla_check_seconds"] = settings.sla_check_seconds
    runtime.extras["peer_urls"] = {
        "inventory": settings.inventory_url,
        "shipping": settings.shipping_url,
        "returns": settings.returns_url,
    }
    runtime.extras["redrive_wait"] = timedelta(seconds=settings.redrive_wait_seconds)
    return runtime


def create_app(runtime: ServiceRuntime | None = None) -> FastAPI:
    return create_service_app(runtime or build_runtime(), routers=[router, ops_router])
