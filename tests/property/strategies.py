"""Hypothesis strategies for fuzzed input: record values, keys and headers of every topic a
service consumes, from arbitrary bytes to valid events with one field broken.

Valid payloads are drawn from each event model's own JSON schema (what the AsyncAPI
document publishes), with the few rules the schema cannot say (currency and country codes,
e-mail addresses, decimal strings) filled in by field name, and ids drawn now and then from
``KNOWN`` so that handlers meet orders, warehouses and SKUs that exist.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from shared.events import Event
from shared.events.base import ORDER_ID_PATTERN

#: ids the property tests' services know (see conftest.py): drawn now and then, so that a
#: generated event finds an order, a warehouse, a SKU to act on
KNOWN: dict[str, list[str]] = {
    "order_id": ["fz:known-1", "fz:known-2"],
    "warehouse_id": ["FZ-1"],
    "sku": ["FZ-SKU-1", "FZ-SKU-2"],
}

Json = Any

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)

#: any JSON document (small)
json_values: st.SearchStrategy[Json] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

_offsets = st.integers(min_value=-(18 * 60) + 1, max_value=18 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)

#: RFC 3339 timestamps with an offset, from the year 1 to 9999
timestamps = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_offsets
).map(datetime.isoformat)

#: around now, where real events live
recent_timestamps = st.integers(min_value=-40 * 86400, max_value=86400).map(
    lambda seconds: (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
)

decimal_strings = st.decimals(
    min_value=Decimal(0), max_value=Decimal("99999.99"), places=2, allow_nan=False
).map(lambda d: format(d, "f"))


def _known_or(field: str, other: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(KNOWN[field]) | other


#: the rules the JSON schema cannot carry, by field name
FIELD_VALUES: dict[str, st.SearchStrategy[Json]] = {
    "currency": st.sampled_from(["EUR", "USD", "GBP", "JPY", "CHF"]),
    "country": st.sampled_from(["DE", "FR", "NL", "US", "GB"]),
    "email": st.emails().filter(lambda e: len(e) <= 254),
    "unit_price": decimal_strings,
    "amount": decimal_strings,
    "order_id": _known_or("order_id", st.from_regex(ORDER_ID_PATTERN, fullmatch=True)),
    "warehouse_id": _known_or("warehouse_id", st.text(min_size=1, max_size=64)),
    "sku": _known_or("sku", st.text(min_size=1, max_size=64)),
}


def from_schema(
    schema: dict[str, Any], defs: dict[str, Any], *, field: str | None = None
) -> st.SearchStrategy[Json]:
    """Values that a pydantic JSON schema (the subset pydantic writes) allows."""
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, field=field)
    if field in FIELD_VALUES:
        if "anyOf" in schema and {"type": "null"} in schema["anyOf"]:
            return st.none() | FIELD_VALUES[field]
        return FIELD_VALUES[field]
    if "anyOf" in schema:
        return st.one_of([from_schema(s, defs, field=field) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "string":
        if schema.get("format") == "uuid":
            return st.uuids().map(str)
        if schema.get("format") == "date-time":
            return recent_timestamps | timestamps
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength"))
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        least = schema.get("minItems", 0)
        return st.lists(
            from_schema(schema.get("items", {}), defs),
            min_size=least,
            max_size=min(schema.get("maxItems", 4), max(least, 4)),
        )
    if kind == "object" and "properties" in schema:
        required = set(schema.get("required", ()))
        props = {
            name: from_schema(sub, defs, field=name) for name, sub in schema["properties"].items()
        }
        return st.fixed_dictionaries(
            {k: v for k, v in props.items() if k in required},
            optional={k: v for k, v in props.items() if k not in required},
        )
    return json_values


def payloads(model: type[Event]) -> st.SearchStrategy[dict[str, Any]]:
    """Payloads of ``model``'s topic as its schema describes them (mostly valid events)."""
    schema = model.model_json_schema()
    strategy: st.SearchStrategy[dict[str, Any]] = from_schema(schema, schema.get("$defs", {}))
    return strategy


# -- mutations ---------------------------------------------------------------------------------

Path = tuple[str | int, ...]


def paths_of(value: Json, prefix: Path = ()) -> list[Path]:
    """Every place in a JSON document (not the root)."""
    found: list[Path] = []
    if isinstance(value, dict):
        for key, child in value.items():
            found.append((*prefix, key))
            found += paths_of(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.append((*prefix, index))
            found += paths_of(child, (*prefix, index))
    return found


def _parent(document: Json, path: Path) -> Any:
    for step in path[:-1]:
        document = document[step]
    return document


#: values at the edges of what fields take: out of range, wrong type, unstorable text
edge_values: st.SearchStrategy[Json] = st.sampled_from(
    [
        None,
        True,
        0,
        -1,
        1000,
        1_000_001,
        10**20,
        -(10**20),
        1e308,
        0.5,
        "",
        " ",
        "x" * 65,
        "x" * 10_000,
        "\x00",
        "nul\x00inside",
        "\ud800",  # a lone surrogate: json.dumps writes it as an escape
        "😀",
        "2026-11-22T10:00:00",  # no offset
        "9999-12-31T23:59:59+00:00",
        "0001-01-01T00:00:00+14:00",
        "0001-01-01T00:00:00-14:00",
        "not-a-uuid",
        "00000000-0000-0000-0000-000000000000",
        "19.999999",
        "-1.00",
        "1e3",
        "NaN",
        [],
        {},
        [None],
    ]
)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A payload with 1-3 of: a field dropped, a value replaced (wrong type, out of range,
    unstorable text), an unknown field added."""
    document: dict[str, Any] = json.loads(json.dumps(draw(base)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        places = paths_of(document)
        action = draw(st.sampled_from(["drop", "replace", "edge", "add"]))
        if action == "add" or not places:
            target = document
            if places:
                chosen = draw(st.sampled_from(places))
                inner = _parent(document, chosen)[chosen[-1]]
                target = inner if isinstance(inner, dict) else document
            target[draw(st.text(max_size=10))] = draw(json_values)
            continue
        path = draw(st.sampled_from(places))
        parent = _parent(document, path)
        if action == "drop":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(json_values)
        else:
            parent[path[-1]] = draw(edge_values)
    return document


def encode(document: Json) -> bytes:
    """JSON as a producer writes it (escapes for what is not ASCII)."""
    return json.dumps(document).encode()


#: bytes that break JSON readers in ways a random draw rarely finds
nasty_values: st.SearchStrategy[bytes] = st.sampled_from(
    [
        b"",
        b"null",
        b"[]",
        b'"a string"',
        b"\xff\xfe{}",
        b"\xef\xbb\xbf{}",  # a byte order mark
        b'{"event_id": "\xff"}',
        b"[" * 100_000 + b"]" * 100_000,  # deeper than any parser recurses
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
        b'{"quantity": ' + b"9" * 5_000 + b"}",  # more digits than int() converts
        b'{"quantity": 1e999}',
        b'{"quantity": NaN}',
        b'{"order_id": "\\u0000"}',
        b'{"order_id": "\\ud800"}',
    ]
)


def record_values(model: type[Event]) -> st.SearchStrategy[bytes]:
    """What can arrive on ``model``'s topic: any bytes, any JSON, the model's fields with any
    values, valid events, and valid events with fields broken."""
    base = payloads(model)
    fields = list(model.model_fields)
    loose_objects = st.dictionaries(st.sampled_from(fields), json_values)
    truncated = st.tuples(base.map(encode), st.integers(min_value=0)).map(
        lambda pair: pair[0][: pair[1] % max(len(pair[0]), 1)]
    )
    return st.one_of(
        st.binary(max_size=64),
        nasty_values,
        truncated,
        json_values.map(encode),
        loose_objects.map(encode),
        base.map(encode),
        base.map(encode),
        mutated(base).map(encode),
        mutated(base).map(encode),
        mutated(base).map(encode),
    )


record_keys: st.SearchStrategy[bytes | None] = st.one_of(
    st.none(),
    st.from_regex(ORDER_ID_PATTERN, fullmatch=True).map(str.encode),
    st.binary(max_size=16),
)

_header_names = st.sampled_from(["traceparent", "tracestate", "baggage", "waybill-redrive"]) | (
    st.text(max_size=12)
)
_header_values = st.one_of(
    st.binary(max_size=40),
    st.just(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    st.just(b"00-00000000000000000000000000000000-0000000000000000-01"),
    st.text(max_size=40).map(str.encode),
)

record_headers: st.SearchStrategy[list[tuple[str, bytes]]] = st.lists(
    st.tuples(_header_names, _header_values), max_size=3
)
