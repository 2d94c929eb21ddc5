"""The consumer runtime: a batch of records, one transaction, inbox, outbox, dead letters.

A batch from the broker is handled in a single database transaction: every record's
``event_id`` is claimed in the inbox with one statement, the new events of each topic go
to its handler, the emitted events land in the outbox, and the transaction commits. Only
then is the offset committed (the caller acknowledges after :meth:`process` returns).

A route's handler takes either one event (``handles``) or every new event of its topic in
the batch at once (``handles_batch``): a hot path touches the database with a constant
number of statements per batch, not per event. The events reach a batch handler in
partition order, so the events of one key (one order) come in the order they were
published; :func:`rounds` splits them so that each round holds one event per key.
Every record still gets its own span, in its own trace; an event emitted with
``cause=`` continues the trace of the event it answers.

When the batch transaction fails, the records are retried one by one, each in its
own transaction, so one poison record cannot hold the others back. A record that
keeps failing gets bounded retries with exponential backoff and then goes to the
topic's ``.dlq`` (through the outbox, with its raw bytes, headers, error and attempt
count). A database outage is not the record's fault: it is retried until the
database answers, and nothing is dead-lettered for it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID, uuid5

import asyncpg
from opentelemetry.trace import Span, SpanKind
from pydantic import ValidationError

from shared import metrics, telemetry
from shared.db.pool import is_transient_error
from shared.db.uow import UnitOfWork, unit_of_work
from shared.events import DeadLetter, DeadLetterHeader, Event, utc_now
from shared.faults import HANDLER_FAILS, InjectedFault, armed_keys
from shared.topics import dead_letter_topic

log = logging.getLogger("waybill.consumer")

E = TypeVar("E", bound=Event)

_FALLBACK_NAMESPACE = UUID("0d9c5f0e-5b0a-4c8e-9a57-52a1f0b2c3d4")
_MAX_DB_RETRY_SECONDS = 30.0


class Record(Protocol):
    """What the runtime needs of a Kafka record (aiokafka's ``ConsumerRecord`` has it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def field_errors_of(error: ValidationError) -> list[tuple[str, str]]:
    """Each validation error as ``(dotted.field.path, message)``."""
    return [
        (".".join(str(p) for p in err["loc"]) or "(record)", err["msg"])
        for err in error.errors(include_url=False)
    ]


@dataclass(frozen=True)
class InvalidEvent:
    """A JSON object that is not a valid event of its topic, and every reason why."""

    topic: str
    payload: dict[str, Any]
    errors: list[tuple[str, str]]

    def field_errors(self) -> list[tuple[str, str]]:
        return list(self.errors)

    def describe(self) -> str:
        return "; ".join(f"{field}: {message}" for field, message in self.errors)


Handler = Callable[[E, UnitOfWork], Awaitable[None]]
BatchHandler = Callable[[Sequence[E], UnitOfWork], Awaitable[None]]
InvalidHandler = Callable[[InvalidEvent, UnitOfWork], Awaitable[bool]]


@dataclass(frozen=True)
class Route(Generic[E]):
    topic: str
    model: type[E]
    handler: Handler[E] | None = None
    on_invalid: InvalidHandler | None = None
    #: larger records are invalid ("(record)": too large) before they are parsed further
    max_bytes: int | None = None
    #: takes every new event of the topic in a batch at once (set-based handlers)
    batch_handler: BatchHandler[E] | None = None
    #: routes with the same name here share their batch handler: it takes the new events
    #: of all their topics in one call, in the order the batch brought them
    together: str | None = None


K = TypeVar("K")


def rounds(events: Sequence[E], key: Callable[[E], K]) -> list[list[E]]:
    """Split ``events`` (in order) into rounds with at most one event per key each: round
    1 holds every key's first event, round 2 every key's second, and so on. Handling the
    rounds one after the other keeps each key's order; almost always there is one round."""
    result: list[list[E]] = []
    seen: dict[K, int] = {}
    for event in events:
        k = key(event)
        n = seen.get(k, 0)
        seen[k] = n + 1
        if n == len(result):
            result.append([])
        result[n].append(event)
    return result


@dataclass
class Delivery:
    """One record after decoding: an event, an invalid payload, or an undecodable one."""

    record: Record
    #: the topic's name inside Waybill, without the deployment's topic prefix
    topic: str
    dedupe_id: UUID
    event: Event | None = None
    invalid: InvalidEvent | None = None
    undecodable: str | None = None


class PermanentFailure(Exception):
    """Raised by a handler for input that no retry can fix: dead-letter it at once."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
    return f"{type(exc).__name__}: {exc}"


def _storable(text: str) -> str:
    """``text`` as PostgreSQL's text and jsonb take it: NUL and lone surrogates replaced (a
    record's key, header names and the error text come from outside; a dead letter that
    cannot be written would fail the batch on every delivery)."""
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _log_handling(deliveries: Sequence[Delivery], spans: Sequence[Span]) -> None:
    """At DEBUG, a line per event handled, with its order and the trace it belongs to (in a
    batch the records' spans are not current: their ids go with the line)."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    for d, span in zip(deliveries, spans, strict=True):
        assert d.event is not None
        context = span.get_span_context()
        log.debug(
            "handling %s event %s",
            d.topic,
            d.event.event_id,
            extra={
                "order_id": d.event.partition_key(),
                "trace_id": format(context.trace_id, "032x") if context.is_valid else None,
                "span_id": format(context.span_id, "016x") if context.is_valid else None,
            },
        )


#: the header ``waybill dlq replay`` adds: where the dead-lettered original was
REPLAYED_FROM = "waybill-replayed-from"


def _replayed_from(d: Delivery) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of the dead-lettered record ``d`` is a replay of."""
    place = None
    for key, value in d.record.headers:
        if key == REPLAYED_FROM:
            place = value  # the last one: a replay of a replay
    if place is None:
        return None
    partition, _, offset = place.decode(errors="replace").partition(":")
    if not (partition.isdigit() and offset.isdigit()):
        return None
    return d.topic, int(partition), int(offset)


class EventConsumer:
    """Routes the records of a consumer group's topics to handlers, exactly once in effect."""

    def __init__(
        self,
        *,
        group_id: str,
        schema: str,
        max_attempts: int = 5,
        retry_base_seconds: float = 0.2,
    ) -> None:
        self.group_id = group_id
        self.schema = schema
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self._routes: dict[str, Route[Any]] = {}
        self._observers: list[BatchHandler[Event]] = []
        self._pool: asyncpg.Pool | None = None
        self.topic_prefix = ""
        #: Called after a batch's transaction committed and before the offset is;
        #: fault-injection point for the at-least-once tests.
        self.after_commit: Callable[[Sequence[Record]], Awaitable[None]] | None = None
        #: counters for metrics and tests: handled, absorbed as duplicates, dead-lettered
        self.dead_lettered = 0
        self.handled = 0
        self.duplicates = 0
        #: batches taken from the broker and the records they held (this instance)
        self.batches = 0
        self.records = 0

    # -- registration -------------------------------------------------------------

    def handles(
        self,
        model: type[E],
        *,
        on_invalid: InvalidHandler | None = None,
        max_bytes: int | None = None,
    ) -> Callable[[Handler[E]], Handler[E]]:
        """Register ``handler`` for ``model.TOPIC``."""

        def register(handler: Handler[E]) -> Handler[E]:
            self.add_route(
                Route(model.TOPIC, model, handler, on_invalid=on_invalid, max_bytes=max_bytes)
            )
            return handler

        return register

    def handles_batch(
        self,
        model: type[E],
        *,
        on_invalid: InvalidHandler | None = None,
        max_bytes: int | None = None,
        together: str | None = None,
    ) -> Callable[[BatchHandler[E]], BatchHandler[E]]:
        """Register ``handler`` for ``model.TOPIC``; it takes all of a batch's new events.
        ``together``: one call for the events of every topic registered under that name
        (with the same handler)."""

        def register(handler: BatchHandler[E]) -> BatchHandler[E]:
            self.add_route(
                Route(
                    model.TOPIC,
                    model,
                    on_invalid=on_invalid,
                    max_bytes=max_bytes,
                    batch_handler=handler,
                    together=together,
                )
            )
            return handler

        return register

    def observe(self, observer: BatchHandler[Event]) -> None:
        """Call ``observer`` with every event a batch handled (not the duplicates, not the
        invalid or dead-lettered ones), in the batch's order, after their handlers and in
        the same transaction: what follows events of many topics at once (the orders
        service's webhooks to shops)."""
        self._observers.append(observer)

    def add_route(self, route: Route[Any]) -> None:
        if route.topic in self._routes:
            raise ValueError(f"{route.topic} already has a handler in {self.group_id}")
        if route.together is not None:
            partners = [r for r in self._routes.values() if r.together == route.together]
            if any(r.batch_handler != route.batch_handler for r in partners):
                raise ValueError(f"routes together as {route.together!r} share one handler")
        self._routes[route.topic] = route

    @property
    def topics(self) -> list[str]:
        return sorted(self._routes)

    def bind(self, pool: asyncpg.Pool, *, topic_prefix: str = "") -> None:
        self._pool = pool
        self.topic_prefix = topic_prefix

    def subscribed_topics(self) -> list[str]:
        """The topic names on the broker (with the deployment's prefix)."""
        return [self.topic_prefix + t for t in self.topics]

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("EventConsumer.bind(pool) was not called")
        return self._pool

    # -- processing ---------------------------------------------------------------

    def inbox_name(self, topic: str) -> str:
        return f"{self.group_id}/{topic}"

    def decode(self, record: Record) -> Delivery:
        topic = record.topic.removeprefix(self.topic_prefix)
        route = self._routes.get(topic)
        if route is not None and (
            route.max_bytes is None or len(record.value or b"") <= route.max_bytes
        ):
            # the common case in one step: JSON parsed and validated by pydantic's core
            with contextlib.suppress(ValidationError):
                event = route.model.model_validate_json(record.value or b"")
                return Delivery(record, topic, event.event_id, event=event)
        # not valid: find out why, to dead-letter or reject it with the reasons; without an
        # event_id of its own it is known by where it was read from
        fallback_id = uuid5(_FALLBACK_NAMESPACE, f"{topic}/{record.partition}/{record.offset}")
        if route is None:
            return Delivery(record, topic, fallback_id, undecodable=f"no handler for {topic}")
        value = record.value or b""
        size = len(value)
        try:
            payload = json.loads(value)
        except (ValueError, RecursionError) as exc:
            # besides bad UTF-8 and bad JSON: an integer of more digits than int() converts
            # (ValueError) and nesting deeper than the parser recurses; raising would send
            # the batch back to the broker again and again, the partition stuck behind it
            return Delivery(record, topic, fallback_id, undecodable=f"not JSON: {exc}")
        if not isinstance(payload, dict):
            return Delivery(record, topic, fallback_id, undecodable="not a JSON object")
        dedupe_id = fallback_id
        raw_id = payload.get("event_id")
        if isinstance(raw_id, str):
            with contextlib.suppress(ValueError):
                dedupe_id = UUID(raw_id)
        if route.max_bytes is not None and size > route.max_bytes:
            too_large = [("(record)", f"{size} bytes is more than the {route.max_bytes} allowed")]
            return Delivery(
                record, topic, dedupe_id, invalid=InvalidEvent(topic, payload, too_large)
            )
        try:
            event = route.model.model_validate(payload)
        except ValidationError as exc:
            invalid = InvalidEvent(topic, payload, field_errors_of(exc))
            return Delivery(record, topic, dedupe_id, invalid=invalid)
        return Delivery(record, topic, event.event_id, event=event)

    async def process(self, records: Sequence[Record]) -> None:
        """Handle a batch; returns once every record is handled or dead-lettered."""
        if not records:
            return
        self.batches += 1
        self.records += len(records)
        deliveries = [self.decode(r) for r in records]
        wait = self.retry_base_seconds
        while True:
            try:
                async with unit_of_work(self.pool, schema=self.schema) as uow:
                    await self._handle_all(deliveries, uow)
                break
            except Exception as exc:
                if not is_transient_error(exc):
                    log.warning(
                        "batch of %d on %s failed (%s); handling its records one by one",
                        len(deliveries),
                        self.group_id,
                        _describe(exc),
                    )
                    for delivery in deliveries:
                        await self._process_alone(delivery)
                    break
                log.warning("database unavailable for %s (%s); retrying", self.group_id, exc)
                await asyncio.sleep(wait)
                wait = min(wait * 2, _MAX_DB_RETRY_SECONDS)
        if self.after_commit is not None:
            await self.after_commit(records)

    async def _handle_all(self, deliveries: list[Delivery], uow: UnitOfWork) -> None:
        await self._settle_replayed(deliveries, uow)
        claimed = await uow.claim_many(
            [(self.inbox_name(d.topic), d.dedupe_id) for d in deliveries if d.undecodable is None]
        )
        # Topics are independent streams (their relative order was never defined); within
        # a topic, or a group of topics handled together, records keep the batch's order.
        units: dict[str, list[Delivery]] = {}
        handled: list[Event] = []  # the valid new events, in the batch's order
        for d in deliveries:
            if d.undecodable is not None:
                await self._dead_letter(uow, d, d.undecodable, "UndecodableRecord", attempts=1)
                continue
            entry = (self.inbox_name(d.topic), d.dedupe_id)
            if entry not in claimed:
                self.duplicates += 1  # a redelivery, a re-published outbox row, a resend
                continue
            claimed.discard(entry)  # a second copy in this same batch is a duplicate too
            route = self._routes[d.topic]
            units.setdefault(route.together or d.topic, []).append(d)
            if d.event is not None:
                handled.append(d.event)
        for unit, fresh in units.items():
            await self._dispatch_unit(unit, fresh, uow)
            self.handled += len(fresh)
            for topic, n in Counter(d.topic for d in fresh).items():
                metrics.events_handled.add(n, {"service": self.schema, "topic": topic})
        for observer in self._observers if handled else ():
            await observer(handled, uow)

    async def _settle_replayed(self, deliveries: list[Delivery], uow: UnitOfWork) -> None:
        """A dead letter replayed (``waybill dlq replay``) is settled with its copy: handled,
        absorbed or dead-lettered again, in this transaction; ops stop counting it."""
        places = [p for d in deliveries if (p := _replayed_from(d)) is not None]
        if not places:
            return
        await uow.conn.execute(
            """
            UPDATE dead_letters SET replayed_at = now()
            WHERE consumer_group = $1 AND replayed_at IS NULL
              AND (topic, partition, "offset") IN
                  (SELECT * FROM unnest($2::text[], $3::int[], $4::bigint[]))
            """,
            self.group_id,
            [p[0] for p in places],
            [p[1] for p in places],
            [p[2] for p in places],
        )

    async def _dispatch_unit(self, unit: str, fresh: list[Delivery], uow: UnitOfWork) -> None:
        valid: list[Delivery] = []
        for d in fresh:
            if d.event is not None:
                valid.append(d)
                continue
            # an invalid record is answered in its place among the valid ones
            await self._dispatch_events(unit, valid, uow)
            valid = []
            route = self._routes[d.topic]
            assert d.invalid is not None
            with telemetry.use_span(self._record_span(d)):
                handled = route.on_invalid is not None and await route.on_invalid(d.invalid, uow)
                if not handled:
                    await self._dead_letter(
                        uow, d, d.invalid.describe(), "ValidationError", attempts=1
                    )
        await self._dispatch_events(unit, valid, uow)

    async def _dispatch_events(
        self, unit: str, deliveries: list[Delivery], uow: UnitOfWork
    ) -> None:
        if not deliveries:
            return
        failing = armed_keys(HANDLER_FAILS, self.schema)  # `waybill chaos poison` only
        for d in deliveries if failing else ():
            assert d.event is not None
            if f"{d.topic} {d.event.partition_key()}" in failing:
                raise InjectedFault(f"fault point {HANDLER_FAILS} fails {d.event.partition_key()}")
        route = self._routes[deliveries[0].topic]
        if route.batch_handler is None:
            assert route.handler is not None
            for d in deliveries:
                span = self._record_span(d)
                _log_handling([d], [span])
                with telemetry.use_span(span):
                    await route.handler(d.event, uow)
            return
        spans = [self._record_span(d) for d in deliveries]
        _log_handling(deliveries, spans)
        events = [d.event for d in deliveries]
        for event, span in zip(events, spans, strict=True):
            assert event is not None
            uow.causes[event.event_id] = telemetry.context_with(span)
        try:
            if len(spans) == 1:
                # one record: its queries and calls are spans of its own trace
                with telemetry.use_span(spans[0], end=False):
                    await route.batch_handler(events, uow)
            else:
                # a statement serves the whole batch: its spans go to the batch's own trace
                with telemetry.batch_span(unit, service=self.schema, spans=spans):
                    await route.batch_handler(events, uow)
        except BaseException as exc:
            for span in spans:
                telemetry.record_failure(span, exc)
            raise
        finally:
            for span in spans:
                span.end()

    def _record_span(self, d: Delivery) -> Span:
        """The span of one handled record, in the trace its headers carry (one trace per
        order); started, not current."""
        unrecorded = telemetry.unrecorded_child(d.record.headers)
        if unrecorded is not None:
            return unrecorded
        headers = [(k, v.decode(errors="replace")) for k, v in d.record.headers]
        return telemetry.start_span(
            f"{d.topic} process",
            service=self.schema,
            parent=telemetry.context_from(headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": d.topic,
                "messaging.consumer.group.name": self.group_id,
                "waybill.order_id": d.event.partition_key() if d.event is not None else None,
                "waybill.event_id": str(d.event.event_id) if d.event is not None else None,
            },
        )

    async def _process_alone(self, d: Delivery) -> None:
        attempts = 0
        wait = self.retry_base_seconds
        while True:
            try:
                async with unit_of_work(self.pool, schema=self.schema) as uow:
                    await self._handle_all([d], uow)
                return
            except Exception as exc:
                if is_transient_error(exc):
                    log.warning("database unavailable for %s (%s); retrying", self.group_id, exc)
                    await asyncio.sleep(min(wait, _MAX_DB_RETRY_SECONDS))
                    wait = min(wait * 2, _MAX_DB_RETRY_SECONDS)
                    continue
                attempts += 1
                permanent = isinstance(exc, PermanentFailure)
                if permanent or attempts >= self.max_attempts:
                    log.error(
                        "dead-lettering %s[%d]@%d after %d attempts: %s",
                        d.topic,
                        d.record.partition,
                        d.record.offset,
                        attempts,
                        _describe(exc),
                    )
                    async with unit_of_work(self.pool, schema=self.schema) as uow:
                        await self._dead_letter(
                            uow, d, _describe(exc), type(exc).__name__, attempts=attempts
                        )
                    return
                # Exponential backoff with full jitter: a failing record never hot-loops.
                delay = random.uniform(0, self.retry_base_seconds * 2 ** (attempts - 1))
                await asyncio.sleep(delay)

    async def _dead_letter(
        self, uow: UnitOfWork, d: Delivery, error: str, error_type: str, *, attempts: int
    ) -> None:
        metrics.dead_lettered.add(1, {"service": self.schema, "topic": d.topic})
        r = d.record
        key = _storable(r.key.decode(errors="replace")) if r.key is not None else None
        value = r.value or b""
        headers = [(_storable(k), base64.b64encode(v).decode()) for k, v in r.headers]
        error = _storable(error)
        inserted = await uow.conn.fetchval(
            """
            INSERT INTO dead_letters (consumer_group, topic, partition, "offset", key, value,
                                      headers, error, error_type, attempts, event_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            ON CONFLICT (consumer_group, topic, partition, "offset", md5(value)) DO NOTHING
            RETURNING id
            """,
            self.group_id,
            d.topic,
            r.partition,
            r.offset,
            key,
            value,
            [list(h) for h in headers],
            error[:4000],
            error_type,
            attempts,
            d.event.event_id if d.event is not None else None,
        )
        if inserted is None:
            return  # dead-lettered already, before a crash kept the offset from committing
        self.dead_lettered += 1
        uow.emit(
            DeadLetter(
                original_topic=d.topic,
                partition=r.partition,
                offset=r.offset,
                key=key,
                value_base64=base64.b64encode(value).decode(),
                headers=[DeadLetterHeader(key=k, value_base64=v) for k, v in headers],
                error=error[:4000],
                error_type=error_type,
                attempts=attempts,
                consumer_group=self.group_id,
                failed_at=utc_now(),
            ),
            topic=dead_letter_topic(d.topic),
        )
