"""``waybill dlq list`` and ``waybill dlq replay``: the dead-letter topics, read and re-driven.

A dead-lettered record's event_id is never claimed in the consumer's inbox, so a
replayed record is handled like a new one; replaying the same dead letter twice is
absorbed by the inbox once the first replay succeeded.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import RenderableType
from rich.text import Text

from shared.events import DeadLetter
from shared.messaging.consumer import REPLAYED_FROM
from shared.messaging.kafka import client_options
from shared.settings import KafkaSettings
from shared.topics import dead_letter_topic, is_dead_letter_topic
from waybill.terminal import ViewTable, show

_QUIET_POLLS = 2
#: how much of a record's error a row of ``dlq list`` shows (``--json`` has all of it)
ERROR_SHOWN = 80

#: a record of a dead-letter topic: that topic, partition, offset, the dead letter (None
#: if it cannot be read) and its bytes
DeadLetterRecord = tuple[str, int, int, DeadLetter | None, bytes]


async def read_dead_letters(
    kafka: KafkaSettings, *, topic: str | None = None
) -> list[DeadLetterRecord]:
    """Every record of the dead-letter topics (or of one topic's), oldest first per partition."""
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **client_options(kafka))
    await consumer.start()
    try:
        names = await consumer.topics()
        wanted = (
            {kafka.topic_prefix + dead_letter_topic(topic)}
            if topic
            else {
                n
                for n in names
                if n.startswith(kafka.topic_prefix)
                and is_dead_letter_topic(n.removeprefix(kafka.topic_prefix))
            }
        )
        partitions = [
            TopicPartition(name, p)
            for name in sorted(wanted & set(names))
            for p in sorted(consumer.partitions_for_topic(name) or [])
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[DeadLetterRecord] = []
        quiet = 0
        while quiet < _QUIET_POLLS:
            batch = await consumer.getmany(timeout_ms=1000)
            if not batch:
                quiet += 1
                continue
            quiet = 0
            for tp, records in batch.items():
                for r in records:
                    try:
                        letter: DeadLetter | None = DeadLetter.model_validate_json(r.value or b"")
                    except ValueError:
                        letter = None
                    found.append((tp.topic, tp.partition, r.offset, letter, r.value or b""))
        return found
    finally:
        await consumer.stop()


def _event_id_of(letter: DeadLetter) -> str | None:
    try:
        payload: Any = json.loads(letter.original_value())
    except ValueError:
        return None
    value = payload.get("event_id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None


async def list_dead_letters(
    *, topic: str | None, as_json: bool, kafka: KafkaSettings | None = None
) -> int:
    kafka = kafka or KafkaSettings()
    letters = await read_dead_letters(kafka, topic=topic)
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "dlq": t,
                        "partition": p,
                        "offset": o,
                        **(d.model_dump(mode="json") if d else {}),
                    }
                    for t, p, o, d, _ in letters
                ],
                indent=2,
            )
        )
        return 0
    show(render_dead_letters(letters))
    return 0


def render_dead_letters(letters: list[DeadLetterRecord]) -> RenderableType:
    """A row per dead letter: its original topic, the consumer group that gave up on it,
    how often it was tried, its event_id and the start of the error."""
    if not letters:
        return Text("no dead letters")
    table = ViewTable("topic", "group")
    table.add_column("tries", justify="right")
    table.add_column("event_id")
    table.add_column("error", style="red")
    for dlq, _, _, letter, raw in letters:
        if letter is None:
            table.add_row(dlq, "-", "-", "-", f"(unreadable dead letter, {len(raw)} bytes)")
            continue
        table.add_row(
            letter.original_topic,
            letter.consumer_group,
            str(letter.attempts),
            _event_id_of(letter) or "-",
            # one line per row, whatever the error said over several
            " ".join(letter.error.split())[:ERROR_SHOWN],
        )
    return table


async def replay_dead_letters(
    *, topic: str, event_id: str | None, kafka: KafkaSettings | None = None
) -> int:
    kafka = kafka or KafkaSettings()
    letters = [
        letter
        for _, _, _, letter, _ in await read_dead_letters(kafka, topic=topic)
        if letter is not None and (event_id is None or _event_id_of(letter) == event_id)
    ]
    if not letters:
        print("nothing to replay", file=sys.stderr)
        return 1
    producer = AIOKafkaProducer(acks="all", **client_options(kafka))
    await producer.start()
    try:
        for letter in letters:
            headers = [(h.key, base64.b64decode(h.value_base64)) for h in letter.headers]
            headers.append((REPLAYED_FROM, f"{letter.partition}:{letter.offset}".encode()))
            await producer.send_and_wait(
                kafka.topic_prefix + letter.original_topic,
                letter.original_value(),
                key=letter.key.encode() if letter.key is not None else None,
                headers=headers,
            )
    finally:
        await producer.stop()
    print(f"replayed {len(letters)} record(s) to {topic}")
    return 0
