"""Broker data loss, noticed in seconds: the broker epoch.

A broker that loses its data (the memory-only embedded broker restarted; a cluster rebuilt
or its topics deleted and created again) loses the events that were in flight in it: the
relays had published them, and no consumer had read them yet. Nothing in Kafka's protocol
says "this is not the log you wrote to": the topics come back empty and the offsets start
at 0 again.

So the broker carries a marker: the first record of the one-partition topic
``waybill.broker-epoch``. Whoever finds the topic empty (or missing) writes a candidate, a
fresh random id; the record that lands at offset 0 is the epoch, and every later
candidate is ignored. The epoch lives exactly as long as the broker's data, so a different
epoch means the data is gone.

Every service reads the epoch every ``broker_epoch_check_seconds`` (shared/runtime.py).
When it changes:

- the service keeps the new one in its database (table ``broker_epoch``); the instance
  whose update changed it moves its outbox relay's watermark back to the start of the
  retention window (``broker_loss_republish_seconds``): the relay publishes every event of
  that window again, in order, keeping each event's id and trace headers;
- every instance has its consumers join their groups again as new members, so that they
  are assigned the partitions the new topics have (shared/messaging/groups.py), and moves
  them back to the beginning of the (new, short) topics, so that nothing published after
  the loss and before its consumer noticed is skipped.

Consumers' inboxes absorb every event they had handled; the ones the broker lost are
handled now. A service that was down while the broker lost its data finds another epoch
in its database when it starts, and republishes the same way.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared.db.uow import Connection
from shared.messaging.kafka import client_options, ensure_topics
from shared.settings import KafkaSettings

log = logging.getLogger("waybill.epoch")

EPOCH_TOPIC = "waybill.broker-epoch"
#: the marker must never expire (a real cluster's default retention is 7 days)
EPOCH_TOPIC_CONFIG = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


class BrokerEpoch:
    """Reads the broker's epoch, and writes a candidate when there is none."""

    def __init__(self, kafka: KafkaSettings, producer: AIOKafkaProducer, *, client_id: str) -> None:
        self.kafka = kafka
        self.producer = producer
        self.client_id = client_id
        self.topic = kafka.topic_prefix + EPOCH_TOPIC
        self._partition = TopicPartition(self.topic, 0)
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            client_id=f"{self.client_id}-epoch",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            **client_options(self.kafka),
        )
        await consumer.start()
        consumer.assign([self._partition])
        self._consumer = consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def read(self, *, timeout_ms: int = 1000) -> str | None:
        """The epoch (offset 0 of the marker topic), or None when the broker has none yet
        or did not answer in time."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("start the BrokerEpoch first")
        consumer.seek(self._partition, 0)
        batch = await consumer.getmany(self._partition, timeout_ms=timeout_ms, max_records=1)
        for record in batch.get(self._partition, []):
            if record.offset == 0:
                return epoch_of(record.value or b"")
        return None

    async def current(self, topics: list[str]) -> str | None:
        """The epoch; when there is none, create the marker topic and ``topics`` (a broker
        without an epoch lost them too, or never had them) and write a candidate."""
        epoch = await self.read()
        if epoch is not None:
            return epoch
        await ensure_topics(self.kafka, topics)
        await ensure_topics(self.kafka, [EPOCH_TOPIC], partitions=1, config=EPOCH_TOPIC_CONFIG)
        candidate = {
            "epoch": str(uuid.uuid4()),
            "written_by": self.client_id,
            "written_at": datetime.now(UTC).isoformat(),
        }
        await self.producer.send_and_wait(self.topic, json.dumps(candidate).encode(), partition=0)
        return await self.read()


def epoch_of(value: bytes) -> str:
    """The epoch a marker record carries (its raw text if it is not Waybill's JSON)."""
    try:
        decoded = json.loads(value)
    except ValueError:
        return value.decode(errors="replace")
    epoch = decoded.get("epoch") if isinstance(decoded, dict) else None
    if isinstance(epoch, str):
        return epoch
    return value.decode(errors="replace")


async def record_epoch(conn: Connection, epoch: str, *, window_seconds: float) -> int | None:
    """Keep ``epoch`` as the one this service saw last. If another was kept before, the
    broker lost its data: move the relay's watermark back to the first outbox row of the
    last ``window_seconds``, so the relay publishes them again. Returns how many rows
    will be published again, or None when the epoch was not a change (or another instance
    of the service took it first)."""
    async with conn.transaction():
        changed = await conn.fetchrow(
            """
            INSERT INTO broker_epoch AS b (epoch) VALUES ($1)
            ON CONFLICT (singleton) DO UPDATE
               SET epoch = EXCLUDED.epoch, seen_at = now(),
                   losses = b.losses + 1, last_loss_at = now()
             WHERE b.epoch <> EXCLUDED.epoch
            RETURNING xmax = 0 AS first_sight
            """,
            epoch,
        )
        if changed is None or changed["first_sight"]:
            return None
        through = await conn.fetchval("SELECT published_through FROM outbox_relay FOR UPDATE")
        # the newest row older than the window; everything after it is published again
        start = await conn.fetchval(
            """
            SELECT coalesce(
                (SELECT id FROM outbox
                 WHERE created_at < now() - make_interval(secs => $1)
                 ORDER BY id DESC LIMIT 1),
                0)
            """,
            window_seconds,
        )
        if start >= through:
            return 0
        republished = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE id > $1 AND id <= $2", start, through
        )
        # the relay moves the watermark only from where it read it (shared/messaging/relay.py):
        # a round in flight now does not undo this
        await conn.execute(
            "UPDATE outbox_relay SET published_through = $1, updated_at = now()", start
        )
        await conn.execute("UPDATE broker_epoch SET republished = republished + $1", republished)
        return int(republished)


async def epoch_health(conn: Connection) -> dict[str, object] | None:
    """What ``GET /ops/health`` shows of the broker epoch: the one seen, and the losses."""
    row = await conn.fetchrow(
        "SELECT epoch, seen_at, losses, last_loss_at, republished FROM broker_epoch"
    )
    if row is None:
        return None
    return {
        "epoch": row["epoch"],
        "seen_at": row["seen_at"].isoformat(timespec="seconds"),
        "losses": row["losses"],
        "last_loss_at": row["last_loss_at"].isoformat(timespec="seconds")
        if row["last_loss_at"]
        else None,
        "republished": row["republished"],
    }
