"""The FastStream broker of a service and the batch subscriber that feeds the consumer.

Acknowledgement is manual: the offset is committed only after
:meth:`EventConsumer.process` returned, i.e. after the database transaction
committed. If processing raises, the consumer seeks back to the batch's first
records so nothing is skipped, and the records are delivered again.
"""

from __future__ import annotations

import logging

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from shared.messaging.consumer import EventConsumer
from shared.messaging.kafka import faststream_security
from shared.settings import KafkaSettings


def create_broker(settings: KafkaSettings, *, client_id: str) -> KafkaBroker:
    return KafkaBroker(
        settings.bootstrap,
        security=faststream_security(settings),
        client_id=client_id,
        # Topics are created up front with their partition count (ensure_topics).
        allow_auto_create_topics=False,
        logger=logging.getLogger(f"waybill.{client_id}.broker"),
        log_level=logging.DEBUG,
        graceful_timeout=15.0,
    )


def subscribe(
    broker: KafkaBroker,
    consumer: EventConsumer,
    *,
    max_records: int = 500,
    batch_timeout_ms: int = 20,
    session_timeout_ms: int = 10_000,
    heartbeat_interval_ms: int = 3_000,
) -> None:
    """Feed ``consumer`` with batches of its topics' records from ``broker``."""

    async def on_batch(msg: KafkaMessage) -> None:
        try:
            await consumer.process(msg.raw_message)
        except BaseException:
            await msg.nack()  # seek back: the batch is delivered again, never skipped
            raise
        await msg.ack()

    async def no_body(_: object) -> None:
        # The runtime reads the raw records (EventConsumer.decode); FastStream's own
        # decoding would parse every record's JSON once more for nothing.
        return None

    on_batch.__name__ = f"{consumer.group_id.replace('-', '_')}_batch"
    broker.subscriber(
        *consumer.subscribed_topics(),
        # environments that share a cluster share neither topics nor consumer groups
        group_id=consumer.topic_prefix + consumer.group_id,
        batch=True,
        max_records=max_records,
        batch_timeout_ms=batch_timeout_ms,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_interval_ms,
        title=f"{consumer.group_id}:batch",
        decoder=no_body,
    )(on_batch)
