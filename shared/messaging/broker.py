"""The FastStream broker of a service and the batch subscriber that feeds the consumer.

Acknowledgement is manual: the offset is committed only after
:meth:`EventConsumer.process` returned, i.e. after the database transaction
committed. If processing raises, the consumer seeks back to the batch's first
records so nothing is skipped, and the records are delivered again.
"""

from __future__ import annotations

import asyncio
import logging
from itertools import chain

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage

from shared.messaging.consumer import EventConsumer
from shared.messaging.fetch import FetchPacer
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
    batch_timeout_ms: int = 500,
    linger_ms: int = 0,
    linger_records: int = 100,
    session_timeout_ms: int = 10_000,
    heartbeat_interval_ms: int = 3_000,
    pacer: FetchPacer | None = None,
) -> FetchPacer:
    """Feed ``consumer`` with batches of its topics' records from ``broker``; the pacer's
    :meth:`~FetchPacer.attach` is the caller's, once the broker has started.

    A poll that brings fewer than ``linger_records`` records waits up to ``linger_ms``
    for more, so that a steady trickle is handled in batches (one transaction, one offset
    commit, one relay round for several records) rather than a record at a time.
    """
    pacer = pacer or FetchPacer(min_ms=5, max_ms=500)

    async def on_batch() -> None:
        # the message from FastStream's context, not as a parameter: resolving a parameter
        # runs FastStream's dependency injection in a worker thread, once per batch
        msg: KafkaMessage = broker.context.get_local("message")
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
    subscriber = broker.subscriber(
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
        fetch_max_wait_ms=pacer.max_ms,
        title=f"{consumer.group_id}:batch",
        decoder=no_body,
    )
    subscriber(on_batch)

    async def poll(kafka_consumer: AIOKafkaConsumer) -> tuple[ConsumerRecord, ...]:
        # FastStream's own poll sleeps batch_timeout_ms after an empty one; the poll already
        # waited that long for records (it returns at the first), so the sleep only delayed
        # the records that came during it.
        batches = await kafka_consumer.getmany(timeout_ms=batch_timeout_ms, max_records=max_records)
        records = list(chain.from_iterable(batches.values()))
        if not records:
            return ()
        pacer.records_seen(len(records))
        if linger_ms > 0 and len(records) < linger_records:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + linger_ms / 1000
            while len(records) < linger_records and (left := deadline - loop.time()) > 0:
                more = await kafka_consumer.getmany(
                    timeout_ms=max(1, int(left * 1000)), max_records=max_records - len(records)
                )
                # partition by partition, in order: the batch keeps each partition's order
                fetched = list(chain.from_iterable(more.values()))
                records += fetched
                if fetched:
                    pacer.records_seen(len(fetched))
        return tuple(records)

    subscriber.get_msg = poll  # type: ignore[method-assign,assignment]
    return pacer


def pace_fetches(broker: KafkaBroker, pacer: FetchPacer) -> None:
    """Attach ``pacer`` to the broker's consumers (after start; again after a restart)."""
    for subscriber in broker.subscribers:
        kafka_consumer = getattr(subscriber, "consumer", None)
        if kafka_consumer is not None:
            pacer.attach(kafka_consumer)
