"""Kafka messaging: consumer runtime, broker factory, outbox relay."""

from shared.messaging.broker import create_broker, pace_fetches, subscribe
from shared.messaging.consumer import (
    EventConsumer,
    InvalidEvent,
    PermanentFailure,
    Route,
    field_errors_of,
)
from shared.messaging.epoch import BrokerEpoch
from shared.messaging.fetch import FetchPacer
from shared.messaging.kafka import client_options, create_producer, ensure_topics, track_topics
from shared.messaging.relay import OutboxRelay

__all__ = [
    "BrokerEpoch",
    "EventConsumer",
    "FetchPacer",
    "InvalidEvent",
    "OutboxRelay",
    "PermanentFailure",
    "Route",
    "client_options",
    "create_broker",
    "create_producer",
    "ensure_topics",
    "field_errors_of",
    "pace_fetches",
    "subscribe",
    "track_topics",
]
