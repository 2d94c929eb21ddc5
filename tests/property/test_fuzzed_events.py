"""Fuzzed records on every topic each service consumes: nothing escapes the consumer, and
every record is accounted for.

For each (service, topic) the records are arbitrary bytes, arbitrary JSON, the event's
fields with arbitrary values, valid events, and valid events with fields dropped, of the
wrong type or out of range, with arbitrary keys and headers, in batches of one to four. They
go through the service's real consumer (:meth:`EventConsumer.process`, as the broker
subscription calls it) against its real database. Afterwards each record is one of:

- handled: a valid event, claimed in the inbox under its event_id (its transaction
  committed); an inbound request is answered as the contract says (accepted or rejected,
  cancelled or refused);
- answered: an invalid record of a topic whose contract has a rejection for it
  (``orders.rejected``, ``orders.cancellation-rejected``, ``returns.rejected``) that names
  what it is about, with reason ``invalid`` (and for orders, the field errors);
- dead-lettered: a row in ``dead_letters`` with its error, and the ``<topic>.dlq`` event in
  the outbox; a valid event only when its handler refused it on purpose
  (``PermanentFailure``: an unknown warehouse, an exchange for an unknown order);
- a repeat of an event_id already handled (the inbox absorbs it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.events import EVENTS_BY_TOPIC, Event
from shared.events.base import ORDER_ID_PATTERN
from shared.settings import KafkaSettings
from shared.topics import dead_letter_topic
from tests.property.conftest import Answer, ConsumingService
from tests.property.strategies import record_headers, record_keys, record_values
from waybill.system import SERVICES, LocalSystem, SystemConfig

pytestmark = pytest.mark.integration

#: the topics of the contract's inbound events get more examples than internal ones
INBOUND = {
    "orders.placed",
    "orders.cancellation-requested",
    "returns.requested",
    "inventory.stock-received",
}
INBOUND_EXAMPLES = 40
INTERNAL_EXAMPLES = 12


def consumed_routes() -> list[tuple[str, str]]:
    """(service, topic) for every topic each service's composition root subscribes to."""
    system = LocalSystem(
        SystemConfig(
            kafka=KafkaSettings(), database_urls=dict.fromkeys(SERVICES, "postgresql://unused")
        ),
        with_sandbox=False,
    )
    return [
        (name, topic) for name in SERVICES for topic in system.build_runtime(name).consumer.topics
    ]


ROUTES = consumed_routes()

Kind = Literal["undecodable", "invalid", "valid"]


@dataclass(frozen=True)
class Verdict:
    """What the contract makes of a record's value, judged apart from the consumer."""

    kind: Kind
    payload: dict[str, Any] | None = None
    event: Event | None = None

    def event_id(self) -> str | None:
        raw = self.payload.get("event_id") if self.payload is not None else None
        if not isinstance(raw, str):
            return None
        try:
            return str(UUID(raw))
        except ValueError:
            return None


def judge(model: type[Event], value: bytes | None) -> Verdict:
    try:
        payload = json.loads(value or b"")
    except (ValueError, RecursionError):  # not UTF-8, not JSON, numbers no int() takes
        return Verdict("undecodable")
    if not isinstance(payload, dict):
        return Verdict("undecodable")
    try:
        return Verdict("valid", payload, model.model_validate_json(value or b""))
    except ValidationError:
        pass
    try:
        return Verdict("valid", payload, model.model_validate(payload))
    except ValidationError:
        return Verdict("invalid", payload)


def usable_order_id(payload: dict[str, Any]) -> str | None:
    value = payload.get("order_id")
    return value if isinstance(value, str) and re.fullmatch(ORDER_ID_PATTERN, value) else None


def usable_id(payload: dict[str, Any], name: str) -> str | None:
    value = payload.get(name)
    # an Identifier: 1 to 64 characters, no NUL (which no rejection naming it could store)
    usable = isinstance(value, str) and 0 < len(value) <= 64 and "\x00" not in value
    return value if usable else None


async def existing_return(service: ConsumingService, return_id: str | None) -> bool:
    if return_id is None or service.name != "returns":
        return False
    found: bool = await service.pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM returns WHERE return_id = $1)", return_id
    )
    return found


async def existing_order(service: ConsumingService, order_id: str | None) -> bool:
    if order_id is None or service.name != "orders":
        return False
    found: bool = await service.pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM orders WHERE order_id = $1)", order_id
    )
    return found


def answered(answers: Sequence[Answer], topic: str, **match: Any) -> list[Answer]:
    return [
        a
        for a in answers
        if a.topic == topic and all(a.payload.get(k) == v for k, v in match.items())
    ]


def check_invalid_answer(
    service: str, topic: str, payload: dict[str, Any], answers: Sequence[Answer], known: bool
) -> None:
    """An invalid record that was not dead-lettered: the contract's rejection for it."""
    where = f"{service} on {topic}: invalid {payload!r:.300}"
    if (service, topic) == ("orders", "orders.placed"):
        order_id = usable_order_id(payload)
        assert order_id is not None, f"{where}: no usable order_id, so it must be dead-lettered"
        rejected = answered(answers, "orders.rejected", order_id=order_id, reason="invalid")
        assert rejected, f"{where}: neither rejected nor dead-lettered"
        reasons = rejected[-1].payload["reasons"]
        assert reasons and all(r["field"] and r["message"] for r in reasons), reasons
    elif (service, topic) == ("orders", "orders.cancellation-requested"):
        order_id = usable_order_id(payload)
        assert order_id is not None, f"{where}: no usable order_id, so it must be dead-lettered"
        assert answered(
            answers, "orders.cancellation-rejected", order_id=order_id, reason="invalid"
        ), f"{where}: neither refused nor dead-lettered"
    elif (service, topic) == ("returns", "returns.requested"):
        return_id, order_id = usable_id(payload, "return_id"), usable_id(payload, "order_id")
        assert return_id is not None and order_id is not None, (
            f"{where}: no usable return_id and order_id, so it must be dead-lettered"
        )
        assert known or answered(
            answers, "returns.rejected", return_id=return_id, reason="invalid"
        ), f"{where}: neither rejected nor dead-lettered"
    elif (service, topic) == ("orders", "returns.requested"):
        pass  # returns owns this inbound topic and answers it; orders only follows along
    else:
        pytest.fail(f"{where}: not dead-lettered (the topic has no rejection)")


def check_valid_outcome(
    service: str, topic: str, event: Event, answers: Sequence[Answer], known: bool
) -> None:
    """What the contract promises for a valid inbound request."""
    order_id = event.partition_key()
    if (service, topic) == ("orders", "orders.placed"):
        assert known or [
            a
            for a in answers
            if a.topic in ("orders.accepted", "orders.rejected") and a.key == order_id
        ], f"order {order_id} was neither accepted nor rejected"
    elif (service, topic) == ("orders", "orders.cancellation-requested"):
        assert [
            a
            for a in answers
            if a.topic in ("orders.cancelled", "orders.cancellation-rejected") and a.key == order_id
        ], f"cancellation of {order_id} was neither done nor refused"


async def process_and_account(
    service: ConsumingService,
    topic: str,
    values: list[bytes],
    keys: list[bytes | None],
    headers: list[list[tuple[str, bytes]]],
) -> None:
    model = EVENTS_BY_TOPIC[topic]
    records = [
        service.record(topic, value, key=key, headers=h)
        for value, key, h in zip(values, keys, headers, strict=True)
    ]
    verdicts = [judge(model, r.value) for r in records]
    for verdict in verdicts:
        event(verdict.kind)  # the mix, in --hypothesis-show-statistics
    # what was there before: repeats of an event_id, returns and orders seen already
    seen: set[str] = set()
    repeats: set[int] = set()
    known_before: dict[int, bool] = {}
    for r, verdict in zip(records, verdicts, strict=True):
        event_id = verdict.event_id()
        if event_id is not None and (event_id in seen or await service.claimed(topic, event_id)):
            repeats.add(r.offset)
        if event_id is not None:
            seen.add(event_id)
        payload = verdict.payload or {}
        known_before[r.offset] = await existing_return(
            service, usable_id(payload, "return_id")
        ) or await existing_order(service, usable_order_id(payload))
    position = await service.outbox_position()

    await service.consumer.process(records)  # nothing may escape

    answers = await service.answers_since(position)
    dead = await service.dead_letters(topic, [r.offset for r in records])
    dlq = {a.payload["offset"]: a for a in answers if a.topic == dead_letter_topic(topic)}
    for r, verdict in zip(records, verdicts, strict=True):
        where = f"{service.name} on {topic} at offset {r.offset}: {r.value!r:.200}"
        letter = dead.get(r.offset)
        if letter is not None:
            assert letter.error.strip() and letter.error_type, f"{where}: a dead letter, no reason"
            assert r.offset in dlq, f"{where}: dead-lettered, but no {dead_letter_topic(topic)}"
            assert dlq[r.offset].payload["error"] == letter.error
            assert verdict.kind != "valid" or letter.error_type == "PermanentFailure", (
                f"{where}: a valid event failed in its handler: {letter.error}"
            )
            continue
        if r.offset in repeats:
            continue  # an event_id handled before: the inbox absorbs the repeat
        assert verdict.kind != "undecodable", f"{where}: lost (not JSON, not dead-lettered)"
        assert verdict.payload is not None
        if verdict.kind == "invalid":
            check_invalid_answer(
                service.name, topic, verdict.payload, answers, known_before[r.offset]
            )
            continue
        assert verdict.event is not None
        # an internal event without an event_id of its own is given a fresh one on decoding
        # (only the inbound models require one): then its claim cannot be looked up
        event_id = verdict.event_id()
        assert event_id is None or await service.claimed(topic, event_id), (
            f"{where}: a valid event neither handled nor dead-lettered"
        )
        check_valid_outcome(service.name, topic, verdict.event, answers, known_before[r.offset])


async def fuzz_route(
    services: dict[str, ConsumingService], service_name: str, topic: str, data: st.DataObject
) -> None:
    count = data.draw(st.integers(min_value=1, max_value=4), label="records")
    values = data.draw(
        st.lists(record_values(EVENTS_BY_TOPIC[topic]), min_size=count, max_size=count),
        label="values",
    )
    keys = data.draw(st.lists(record_keys, min_size=count, max_size=count), label="keys")
    headers = data.draw(st.lists(record_headers, min_size=count, max_size=count), label="headers")
    await process_and_account(services[service_name], topic, values, keys, headers)


INBOUND_ROUTES = [route for route in ROUTES if route[1] in INBOUND]
INTERNAL_ROUTES = [route for route in ROUTES if route[1] not in INBOUND]
FUZZ_SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.mark.parametrize(
    ("service_name", "topic"), INBOUND_ROUTES, ids=[f"{s}:{t}" for s, t in INBOUND_ROUTES]
)
@settings(FUZZ_SETTINGS, max_examples=INBOUND_EXAMPLES)
@given(data=st.data())
async def test_fuzzed_inbound_records_are_handled_answered_or_dead_lettered(
    consuming_services: dict[str, ConsumingService],
    service_name: str,
    topic: str,
    data: st.DataObject,
) -> None:
    await fuzz_route(consuming_services, service_name, topic, data)


@pytest.mark.parametrize(
    ("service_name", "topic"), INTERNAL_ROUTES, ids=[f"{s}:{t}" for s, t in INTERNAL_ROUTES]
)
@settings(FUZZ_SETTINGS, max_examples=INTERNAL_EXAMPLES)
@given(data=st.data())
async def test_fuzzed_records_between_services_are_handled_or_dead_lettered(
    consuming_services: dict[str, ConsumingService],
    service_name: str,
    topic: str,
    data: st.DataObject,
) -> None:
    await fuzz_route(consuming_services, service_name, topic, data)
