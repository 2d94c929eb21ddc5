"""The benchmark's two references: one hop of a pipeline with no business logic.

``waybill bench`` runs a chain of these hops, each its own process, on the same broker and
database as Waybill (DESIGN.md, Performance). Hop ``i`` consumes ``null.i`` and emits every
new record to ``null.i+1`` through an outbox, so each hop does what every Waybill hop must
do at least: consume, one database transaction with the inbox and the outbox, publish,
mark the outbox rows sent, commit the offset. Nothing else.

- ``batched`` (the ceiling): a batch of records, one transaction (``unnest`` inserts), the
  batch published together, the outbox marked published by a watermark as Waybill's relay
  does, one offset commit per batch.
- ``naive`` (the baseline): the obvious FastStream subscriber, one record, one transaction
  and one awaited publish at a time.

Run as ``python -m waybill.bench_pipeline MODE --hop I ...``; it prints ``ready`` once its
consumer is started and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from uuid import UUID

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.inbox (
    consumer text NOT NULL, event_id uuid NOT NULL, handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id));
CREATE TABLE IF NOT EXISTS {schema}.outbox (
    id bigserial PRIMARY KEY, event_id uuid NOT NULL, topic text NOT NULL, key text,
    payload bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS {schema}.outbox_relay (
    singleton boolean PRIMARY KEY DEFAULT true, published_through bigint NOT NULL);
INSERT INTO {schema}.outbox_relay (published_through) VALUES (0) ON CONFLICT DO NOTHING;
"""

BATCH_MAX = 1000


def topic_of(prefix: str, hop: int) -> str:
    return f"{prefix}null.{hop}"


def event_id_of(value: bytes) -> UUID:
    return UUID(json.loads(value)["event_id"])


async def prepare(dsn: str, hop: int) -> asyncpg.Pool:
    schema = f"hop{hop}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA_SQL.format(schema=schema))
    finally:
        await conn.close()
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=2, server_settings={"search_path": schema}
    )
    return pool


async def run_batched(args: argparse.Namespace, stop: asyncio.Event) -> None:
    pool = await prepare(args.dsn, args.hop)
    source, target = topic_of(args.prefix, args.hop), topic_of(args.prefix, args.hop + 1)
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=args.bootstrap,
        group_id=f"{args.prefix}null-{args.hop}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=args.fetch_wait_ms,
        max_poll_records=BATCH_MAX,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    await consumer.start()
    print("ready", flush=True)
    consumer_name = f"null-{args.hop}"
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=BATCH_MAX)
            records = [r for part in batches.values() for r in part]
            if not records:
                continue
            ids = [event_id_of(r.value) for r in records]
            async with pool.acquire() as conn, conn.transaction():
                fresh = {
                    row["event_id"]
                    for row in await conn.fetch(
                        """
                        INSERT INTO inbox (consumer, event_id) SELECT $1, unnest($2::uuid[])
                        ON CONFLICT DO NOTHING RETURNING event_id
                        """,
                        consumer_name,
                        ids,
                    )
                }
                emitted = [(i, r) for i, r in zip(ids, records, strict=True) if i in fresh]
                outbox_ids = await conn.fetch(
                    """
                    INSERT INTO outbox (event_id, topic, key, payload)
                    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[])
                    RETURNING id
                    """,
                    [i for i, _ in emitted],
                    [target] * len(emitted),
                    [r.key.decode() if r.key else None for _, r in emitted],
                    [r.value for _, r in emitted],
                )
            sent = [await producer.send(target, r.value, key=r.key) for _, r in emitted]
            await asyncio.gather(*sent)
            if outbox_ids:  # published through the batch's last row (Waybill's relay does so)
                await pool.execute(
                    "UPDATE outbox_relay SET published_through = $1",
                    max(row["id"] for row in outbox_ids),
                )
            offsets = {
                TopicPartition(tp.topic, tp.partition): part[-1].offset + 1
                for tp, part in batches.items()
            }
            await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()
        await pool.close()


async def run_naive(args: argparse.Namespace, stop: asyncio.Event) -> None:
    pool = await prepare(args.dsn, args.hop)
    source, target = topic_of(args.prefix, args.hop), topic_of(args.prefix, args.hop + 1)
    # one record at a time is the point; logging every record is not: FastStream's
    # per-message log lines would only make the baseline slower
    broker = KafkaBroker(args.bootstrap, logger=None)
    consumer_name = f"naive-{args.hop}"

    @broker.subscriber(
        source,
        group_id=f"{args.prefix}naive-{args.hop}",
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=args.fetch_wait_ms,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    async def hop(message: KafkaMessage) -> None:
        body = message.body
        event_id = event_id_of(body)
        key: bytes | None = getattr(message.raw_message, "key", None)
        async with pool.acquire() as conn, conn.transaction():
            fresh = await conn.fetchval(
                "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING RETURNING true",
                consumer_name,
                event_id,
            )
            outbox_id = None
            if fresh:
                outbox_id = await conn.fetchval(
                    "INSERT INTO outbox (event_id, topic, key, payload) VALUES ($1, $2, $3, $4) "
                    "RETURNING id",
                    event_id,
                    target,
                    key.decode() if key else None,
                    body,
                )
        if outbox_id is not None:
            await broker.publish(body, target, key=key)
            await pool.execute("UPDATE outbox_relay SET published_through = $1", outbox_id)
        await message.ack()

    await broker.start()
    print("ready", flush=True)
    try:
        await stop.wait()
    finally:
        await broker.stop()
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m waybill.bench_pipeline")
    parser.add_argument("mode", choices=("batched", "naive"))
    parser.add_argument("--hop", type=int, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--prefix", default="bench.")
    parser.add_argument("--fetch-wait-ms", type=int, default=100)
    args = parser.parse_args(argv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = run_batched if args.mode == "batched" else run_naive
        with contextlib.suppress(asyncio.CancelledError):
            await runner(args, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
