"""Composition root of the returns service."""

from __future__ import annotations

from datetime import timedelta
from importlib.resources import files

from fastapi import FastAPI

from services.returns.api import router
from services.returns.config import ReturnsSettings
from services.returns.consumers import build_consumer
from services.returns.workers import buy_return_labels, decide_overdue_requests
from shared import topics
from shared.carriers import CarrierGateway
from shared.carriers.wiring import attach_carrier_gateway
from shared.clock import Clock, SystemClock
from shared.db import MigrationSource
from shared.http import create_service_app
from shared.runtime import ServiceDefinition, ServiceRuntime
from shared.settings import KafkaSettings

NAME = "returns"
SETTINGS = ReturnsSettings


def build_runtime(
    settings: ReturnsSettings | None = None,
    kafka: KafkaSettings | None = None,
    *,
    clock: Clock | None = None,
    carriers: CarrierGateway | None = None,
) -> ServiceRuntime:
    settings = settings or ReturnsSettings()
    clock = clock or SystemClock()
    consumer = build_consumer(
        schema=NAME,
        window_days=settings.return_window_days,
        clock=clock,
        grace=timedelta(seconds=settings.return_decision_grace_seconds),
        max_attempts=settings.consumer_max_attempts,
        retry_base_seconds=settings.consumer_retry_base_seconds,
    )
    definition = ServiceDefinition(
        name=NAME,
        migrations=MigrationSource(NAME, files("services.returns.storage").joinpath("migrations")),
        consumer=consumer,
        produces=[
            topics.RETURNS_APPROVED,
            topics.RETURNS_REJECTED,
            topics.RETURNS_RECEIVED,
            topics.REFUNDS_REQUESTED,
            topics.RETURNS_EXCHANGE_REQUESTED,
        ],
        workers=[buy_return_labels, decide_overdue_requests],
    )
    runtime = ServiceRuntime(
        definition, settings=settings, kafka=kafka or KafkaSettings(), clock=clock
    )
    attach_carrier_gateway(runtime, settings, carriers)
    runtime.extras["return_window_days"] = settings.return_window_days
    return runtime


def create_app(runtime: ServiceRuntime | None = None) -> FastAPI:
    return create_service_app(runtime or build_runtime(), routers=[router])
