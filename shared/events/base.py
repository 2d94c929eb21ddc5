"""The event envelope and the field types every event shares.

Every event is a JSON object with ``event_id`` (UUID) and ``occurred_at``
(RFC 3339 with an offset). Money travels as a decimal string, never a float.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar
from uuid import UUID, uuid4

import pycountry
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)

ORDER_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"

_CURRENCIES = frozenset(c.alpha_3 for c in pycountry.currencies)
_COUNTRIES = frozenset(c.alpha_2 for c in pycountry.countries)
_MONEY = re.compile(r"^-?\d{1,12}(\.\d{1,4})?$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


def utc_now() -> datetime:
    return datetime.now(UTC)


def _money_from_string(value: Any) -> Any:
    # A float would already have lost cents; only a decimal string is accepted.
    if isinstance(value, Decimal):
        return value
    if not isinstance(value, str):
        raise ValueError('must be a decimal string such as "19.99", not a number')
    if not _MONEY.match(value):
        raise ValueError('must be a decimal string such as "19.99"')
    try:
        return Decimal(value)
    except InvalidOperation as exc:  # pragma: no cover - the pattern already guards this
        raise ValueError("must be a decimal string") from exc


def _non_negative(value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _currency(value: str) -> str:
    if value not in _CURRENCIES:
        raise ValueError("must be an ISO 4217 currency code such as EUR")
    return value


def _country(value: str) -> str:
    if value not in _COUNTRIES:
        raise ValueError("must be an ISO 3166-1 alpha-2 country code such as DE")
    return value


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError("must be an e-mail address")
    return value


#: the span a timestamp may fall in: far wider than any real event, and far enough inside
#: what datetime holds (the years 1 to 9999) for the arithmetic done on it (promises,
#: windows, deadlines) and for its conversion to UTC
EARLIEST = datetime(1000, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _within_reach(value: datetime) -> datetime:
    if not EARLIEST <= value <= LATEST:
        raise ValueError("must lie between the years 1000 and 9000")
    return value


def storable_text(value: str) -> str:
    # PostgreSQL's text and jsonb cannot hold U+0000: refused here, with the field's name (a
    # rejection, a 422), not by the database in the handler's transaction (retried, then
    # dead-lettered; over HTTP a 500)
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (U+0000)")
    return value


Money = Annotated[
    Decimal,
    BeforeValidator(_money_from_string),
    AfterValidator(_non_negative),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="always"),
]
CurrencyCode = Annotated[str, AfterValidator(_currency)]
CountryCode = Annotated[str, AfterValidator(_country)]
#: text that can be stored: every free-text field of an event (no NUL); where a field is
#: optional and bounded, the bound goes before the check, inside one Annotated (pydantic's
#: usual "String should have at most ..." message)
Text = Annotated[str, AfterValidator(storable_text)]
Email = Annotated[
    str, StringConstraints(max_length=254), AfterValidator(storable_text), AfterValidator(_email)
]
OrderId = Annotated[str, StringConstraints(pattern=ORDER_ID_PATTERN)]
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(storable_text)
]
Sku = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(storable_text)]
ShortText = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(storable_text)
]
PostalCode = Annotated[
    str, StringConstraints(min_length=1, max_length=16), AfterValidator(storable_text)
]
Quantity = Annotated[int, Field(ge=1, le=999)]
Timestamp = Annotated[AwareDatetime, AfterValidator(_within_reach)]


class Model(BaseModel):
    """Base of every value object that travels in an event."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=False)


class Event(Model):
    """The envelope every event carries.

    ``TOPIC`` names the Kafka topic the event travels on; the record key is the
    ``order_id`` wherever the event has one (``partition_key``).
    """

    TOPIC: ClassVar[str] = ""

    event_id: UUID = Field(default_factory=uuid4)
    occurred_at: Timestamp = Field(default_factory=utc_now)

    def partition_key(self) -> str | None:
        order_id = getattr(self, "order_id", None)
        return order_id if isinstance(order_id, str) else None

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class StaffRef(Model):
    """Who in a warehouse did something (a staff member's key, docs/tenancy.md)."""

    staff_id: Identifier
    name: ShortText


#: the fields of events that name staff: for ops, left out of what shops see
STAFF_FIELDS = frozenset({"packed_by", "picked_by", "received_by"})
