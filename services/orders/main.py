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
from services.orders.shops_api import router as shops_router
from services.orders.webhooks import (
    Subscriptions,
    WebhookSettings,
    deliver_webhooks,
    observer,
)
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
            topics.SHOPS_KEY_CHANGED,
        ],
        workers=[watch_slas, deliver_webhooks],
    )
    subscriptions = Subscriptions()
    consumer.observe(observer(subscriptions))
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
    runtime.extras["webhook_subscriptions"] = subscriptions
    runtime.extras["webhook_settings"] = WebhookSettings(
        timeout_seconds=settings.webhook_timeout_seconds,
        retry_seconds=settings.webhook_retry_seconds,
        backoff_base_seconds=settings.webhook_backoff_base_seconds,
        backoff_max_seconds=settings.webhook_backoff_max_seconds,
        concurrency=settings.webhook_concurrency,
        per_shop=settings.webhook_per_shop,
        poll_seconds=settings.webhook_poll_seconds,
    )
    return runtime


def create_app(runtime: ServiceRuntime | None = None) -> FastAPI:
    routers = [router, shops_router, ops_router]
    return create_service_app(runtime or build_runtime(), routers=routers)
