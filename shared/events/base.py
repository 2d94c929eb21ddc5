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


Money = Annotated[
    Decimal,
    BeforeValidator(_money_from_string),
    AfterValidator(_non_negative),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="always"),
]
CurrencyCode = Annotated[str, AfterValidator(_currency)]
CountryCode = Annotated[str, AfterValidator(_country)]
Email = Annotated[str, StringConstraints(max_length=254), AfterValidator(_email)]
OrderId = Annotated[str, StringConstraints(pattern=ORDER_ID_PATTERN)]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Sku = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Quantity = Annotated[int, Field(ge=1, le=999)]
Timestamp = AwareDatetime


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
