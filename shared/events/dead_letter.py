"""The record written to ``<topic>.dlq`` when a consumer gives up on a record."""

from __future__ import annotations

import base64

from pydantic import Field

from shared.events.base import Event, Model, Timestamp


class DeadLetterHeader(Model):
    key: str
    value_base64: str


class DeadLetter(Event):
    """The original bytes and headers, why they failed, and how often they were tried."""

    original_topic: str
    partition: int
    offset: int
    key: str | None
    value_base64: str
    headers: list[DeadLetterHeader] = Field(default_factory=list)
    error: str
    error_type: str
    attempts: int
    consumer_group: str
    failed_at: Timestamp

    def original_value(self) -> bytes:
        return base64.b64decode(self.value_base64)

    def partition_key(self) -> str | None:
        return self.key
