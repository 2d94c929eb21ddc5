"""Kafka messaging: consumer runtime, broker factory, outbox relay."""

from shared.messaging.broker import create_broker, subscribe
from shared.messaging.consumer import (
    EventConsumer,
    InvalidEvent,
    PermanentFailure,
    Route,
    field_errors_of,
)
from shared.messaging.kafka import client_options, create_producer, ensure_topics
from shared.messaging.relay import OutboxRelay

__all__ = [
    "EventConsumer",
    "InvalidEvent",
    "OutboxRelay",
    "PermanentFailure",
    "Route",
    "client_options",
    "create_broker",
    "create_producer",
    "ensure_topics",
    "field_errors_of",
    "subscribe",
]
