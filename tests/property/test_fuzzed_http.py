"""Fuzzed HTTP requests against every service of the running system: never a 5xx, and a bad
request is refused with a 4xx.

Every operation in each service's OpenAPI document gets requests that schemathesis generates
from the document: positive ones (what the document allows), negative ones (what it does
not) and positive ones naming things that exist (the seeded warehouse, SKUs and orders),
each with the bearer token of the role the operation needs. Checked on every response: no
server error; invalid data refused (``negative_data_rejection``); the documented responses
conform to their schema and media type. Status codes the documents leave out (401, 403,
404, 409) are not checked against them: FastAPI documents only 200 and 422.

Two kinds of bodies are not in the documents and are fuzzed with hypothesis directly: the
carrier webhook (signed with the shared secret, so the body is what gets read) and the
warehouse page's form posts.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import BaseSchema, Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
)

from shared.settings import KafkaSettings, Role
from shared.signing import SIGNATURE_HEADER, sign_webhook
from tests.property.strategies import KNOWN, edge_values, json_values, paths_of, timestamps
from tests.support import bearer, wait_for
from waybill.system import SERVICES, LocalSystem, SystemConfig

pytestmark = pytest.mark.integration

EXAMPLES = 25

#: the role each documented operation needs (None: no token); a new operation fails
#: test_every_documented_operation_is_fuzzed_with_its_role until it is added here
ROLES: dict[tuple[str, str, str], Role | None] = {
    ("orders", "GET", "/healthz"): None,
    ("orders", "GET", "/readyz"): None,
    ("orders", "GET", "/ops/health"): "ops",
    ("orders", "POST", "/orders"): "shop",
    ("orders", "GET", "/orders/{order_id}"): "shop",
    ("orders", "GET", "/sla/summary"): "ops",
    ("orders", "PUT", "/shops/{shop_id}/promise"): "admin",
    ("orders", "GET", "/shops/{shop_id}/promise"): "admin",
    ("orders", "POST", "/shops/{shop_id}/keys"): "admin",
    ("orders", "GET", "/shops/{shop_id}/keys"): "admin",
    ("orders", "DELETE", "/shops/{shop_id}/keys/{key_id}"): "admin",
    ("orders", "PUT", "/shops/{shop_id}/webhook"): "admin",
    ("orders", "GET", "/shops/{shop_id}/webhook"): "admin",
    ("orders", "DELETE", "/shops/{shop_id}/webhook"): "admin",
    ("orders", "GET", "/shops/{shop_id}/webhook/deliveries"): "admin",
    ("orders", "POST", "/shops/{shop_id}/webhook/deliveries/{delivery_id}/retry"): "admin",
    ("inventory", "GET", "/healthz"): None,
    ("inventory", "GET", "/readyz"): None,
    ("inventory", "GET", "/ops/health"): "ops",
    ("inventory", "PUT", "/warehouses/{warehouse_id}"): "admin",
    ("inventory", "POST", "/stock/receipts"): "warehouse",
    ("inventory", "GET", "/stock/{sku}"): "warehouse",
    ("inventory", "GET", "/picklists"): "warehouse",
    ("inventory", "POST", "/picklists/{picklist_id}/lines/{line_no}/picked"): "warehouse",
    ("inventory", "POST", "/orders/{order_id}/packed"): "warehouse",
    ("inventory", "GET", "/returns/expected"): "warehouse",
    ("inventory", "POST", "/warehouses/{warehouse_id}/staff"): "admin",
    ("inventory", "GET", "/warehouses/{warehouse_id}/staff"): "admin",
    ("inventory", "DELETE", "/warehouses/{warehouse_id}/staff/{staff_id}"): "admin",
    ("inventory", "POST", "/staff/{staff_id}/key"): "admin",
    ("shipping", "GET", "/healthz"): None,
    ("shipping", "GET", "/readyz"): None,
    ("shipping", "GET", "/ops/health"): "ops",
    ("shipping", "POST", "/webhooks/carriers/{carrier}"): None,
    ("shipping", "GET", "/shipments/{order_id}"): "shop",
    ("shipping", "POST", "/shipments/{order_id}/labels/retry"): "ops",
    ("shipping", "GET", "/carriers"): "ops",
    ("returns", "GET", "/healthz"): None,
    ("returns", "GET", "/readyz"): None,
    ("returns", "GET", "/ops/health"): "ops",
    ("returns", "GET", "/returns/{return_id}"): "shop",
    ("returns", "POST", "/returns/{return_id}/received"): "warehouse",
    ("returns", "POST", "/returns/{return_id}/label/retry"): "ops",
}

CHECKS = [
    not_a_server_error,
    negative_data_rejection,
    response_schema_conformance,
    content_type_conformance,
]


def documented_operations() -> list[tuple[str, str, str]]:
    """(service, method, path) of every operation in the services' OpenAPI documents, read
    from the apps their composition roots build (nothing is started)."""
    system = LocalSystem(
        SystemConfig(
            kafka=KafkaSettings(), database_urls=dict.fromkeys(SERVICES, "postgresql://unused")
        ),
        with_sandbox=False,
    )
    found = []
    for name in SERVICES:
        main = importlib.import_module(f"services.{name}.main")
        document = main.create_app(system.build_runtime(name)).openapi()
        for path, operations in document["paths"].items():
            found += [(name, method.upper(), path) for method in operations]
    return found


OPERATIONS = documented_operations()


def test_every_documented_operation_is_fuzzed_with_its_role() -> None:
    assert sorted(OPERATIONS) == sorted(ROLES)


@pytest.fixture(scope="module")
async def schemas(running_system: LocalSystem) -> AsyncIterator[dict[str, BaseSchema]]:
    """Each service's OpenAPI document as the running service serves it."""
    loaded: dict[str, BaseSchema] = {}
    async with httpx.AsyncClient(timeout=30) as http:
        for name in SERVICES:
            answer = await http.get(f"{running_system.urls[name]}/openapi.json")
            answer.raise_for_status()
            loaded[name] = schemathesis.openapi.from_dict(answer.json())
    yield loaded


#: per operation: where its path names something that exists, the known values to name
_KNOWN_PATH_VALUES = {
    "order_id": KNOWN["order_id"],
    "warehouse_id": KNOWN["warehouse_id"],
    "sku": KNOWN["sku"],
}


def with_nul(case: Case[Any], data: st.DataObject) -> Case[Any]:
    """The case with NUL in one of its strings (a path or query parameter, a string in the
    body): schemathesis never generates it, and PostgreSQL cannot store it."""
    # path parameters are kept percent-encoded, the rest as they are sent
    places: list[tuple[Any, Any, str]] = [
        (container, key, nul)
        for container, nul in ((case.path_parameters, "%00"), (case.query, "\x00"))
        if isinstance(container, dict)
        for key, value in container.items()
        if isinstance(value, str)
    ]
    body: Any = case.body
    if isinstance(body, dict | list):
        for place in paths_of(body):
            parent: Any = body
            for step in place[:-1]:
                parent = parent[step]
            if isinstance(parent[place[-1]], str):
                places.append((parent, place[-1], "\x00"))
    if places:
        container, key, nul = data.draw(st.sampled_from(places), label="NUL goes into")
        container[key] = container[key] + nul
    return case


def requests_for(schema: BaseSchema, method: str, path: str) -> st.SearchStrategy[Case[Any]]:
    operation = schema[path][method]
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    names = [n for n in _KNOWN_PATH_VALUES if "{" + n + "}" in path]
    if names:
        strategies += [
            operation.as_strategy(GenerationMode.POSITIVE, path_parameters={n: value})
            for n in names
            for value in _KNOWN_PATH_VALUES[n]
        ]
    return st.one_of(strategies)


async def send(
    http: httpx.AsyncClient, case: Case[Any], base_url: str, token: str | None
) -> httpx.Response:
    """The request schemathesis would make, sent with httpx in this event loop (the services
    run in it too)."""
    prepared = case.as_transport_kwargs(base_url=base_url)
    headers = {str(k): str(v) for k, v in dict(prepared.get("headers") or {}).items()}
    if prepared.get("cookies"):
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in prepared["cookies"].items())
    if token is not None:
        headers.update(bearer(token))
    body: dict[str, Any] = {}
    if "json" in prepared:
        body["json"] = prepared["json"]
    elif isinstance(prepared.get("data"), bytes | str):
        body["content"] = prepared["data"]
    elif prepared.get("data") is not None or prepared.get("files"):
        body["data"] = prepared.get("data")
        body["files"] = prepared.get("files")
    return await http.request(
        prepared["method"],
        prepared["url"],
        params=prepared.get("params"),
        headers=headers,
        **body,
    )


@pytest.mark.parametrize(
    ("service", "method", "path"), OPERATIONS, ids=[f"{s}:{m} {p}" for s, m, p in OPERATIONS]
)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
@given(data=st.data())
async def test_no_documented_operation_fails_on_fuzzed_requests(
    running_system: LocalSystem,
    schemas: dict[str, BaseSchema],
    service: str,
    method: str,
    path: str,
    data: st.DataObject,
) -> None:
    case = data.draw(requests_for(schemas[service], method, path), label="request")
    if data.draw(st.integers(min_value=0, max_value=3), label="plant NUL") == 0:
        case = with_nul(case, data)
    role = ROLES[(service, method, path)]
    token = running_system.config.tokens[role] if role is not None else None
    async with httpx.AsyncClient(timeout=30) as http:
        response = await send(http, case, running_system.urls[service], token)
    case.validate_response(response, checks=CHECKS)


# -- the carrier webhook: signed bodies of every shape ------------------------------------------

_statuses = st.sampled_from(
    ["pre_transit", "picked_up", "in_transit", "out_for_delivery", "delivered", "unknown"]
)


@st.composite
def tracking_pushes(draw: st.DrawFn, tracking_numbers: list[str]) -> bytes:
    """What a carrier pushes, from well-formed to any bytes at all."""
    shape = draw(st.sampled_from(["event", "broken event", "json", "bytes"]))
    if shape == "bytes":
        return draw(st.binary(max_size=64))
    if shape == "json":
        return json.dumps(draw(json_values)).encode()
    event: dict[str, Any] = {
        "tracking_number": draw(st.sampled_from(tracking_numbers) | st.text(max_size=20)),
        "status": draw(_statuses | st.text(max_size=12)),
        "occurred_at": draw(timestamps),
        "event_id": draw(st.none() | st.uuids().map(str)),
        "description": draw(st.none() | st.text(max_size=30)),
    }
    if shape == "broken event":
        for field in draw(st.lists(st.sampled_from(sorted(event)), min_size=1, max_size=3)):
            action = draw(st.sampled_from(["drop", "value", "edge"]))
            if action == "drop":
                event.pop(field, None)
            else:
                event[field] = draw(json_values if action == "value" else edge_values)
    return json.dumps(event).encode()


async def tracking_number_of(system: LocalSystem, order_id: str) -> str:
    """The tracking number of the order's first label (bought by the running system)."""

    async def probe() -> str | None:
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.get(
                f"{system.urls['shipping']}/shipments/{order_id}",
                headers=bearer(system.config.tokens["ops"]),
            )
        if answer.status_code != 200:
            return None
        numbers = [s["tracking_number"] for s in answer.json()["shipments"]]
        return next((n for n in numbers if n), None)

    found: str = await wait_for(probe, timeout=60, what=f"a label for {order_id}")
    return found


@pytest.fixture(scope="module")
async def tracking_numbers(running_system: LocalSystem) -> list[str]:
    return [await tracking_number_of(running_system, KNOWN["order_id"][0]), "1Z-UNKNOWN"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
async def test_signed_carrier_webhooks_of_any_body_never_fail_the_server(
    running_system: LocalSystem, tracking_numbers: list[str], data: st.DataObject
) -> None:
    body = data.draw(tracking_pushes(tracking_numbers), label="body")
    signature = sign_webhook(running_system.config.webhook_secret, body, timestamp=int(time.time()))
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(
            f"{running_system.urls['shipping']}/webhooks/carriers/sandbox",
            content=body,
            headers={SIGNATURE_HEADER: signature, "Content-Type": "application/json"},
        )
    # applied or a repeat (202), not provably the carrier's (401), an unknown parcel (404),
    # a signed body that is not a tracking event (422)
    assert answer.status_code in (202, 401, 404, 422), (answer.status_code, answer.text)


# -- the warehouse page's forms -----------------------------------------------------------------

_texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", " ", "\x00", "a\x00b", "1e3", "0x10", "-0", "😀" * 3]),
)
_numbers = st.one_of(
    st.integers(min_value=-5, max_value=100_000).map(str),
    st.sampled_from([str(2**31), str(2**63), "9" * 30]),  # beyond the database's integers
    _texts,
)
_PARCEL = ["weight_grams", "length_mm", "width_mm", "height_mm"]

#: each form's own fields (plausible or not), so that the fuzzing gets past its first check
FORMS: dict[str, dict[str, st.SearchStrategy[str]]] = {
    "login": {"token": _texts},
    "logout": {},
    "scan": {
        "picklist_id": st.uuids().map(str) | _texts,
        "line_no": _numbers,
        "quantity": _numbers,
        "scanned_sku": st.sampled_from(KNOWN["sku"]) | _texts,
    },
    "pack": {"order_id": st.sampled_from(KNOWN["order_id"]) | _texts}
    | {field: _numbers for field in _PARCEL},
    "returns/{return_id}/receive": {
        "sku": st.sampled_from(KNOWN["sku"]) | _texts,
        "sellable": _numbers,
        "damaged": _numbers,
    },
}


@st.composite
def form_posts(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    """A form action and its fields: each field once or several times (the pack and receive
    forms repeat theirs per parcel and per line), some left out, some unknown ones added."""
    action = draw(st.sampled_from(sorted(FORMS)))
    fields: list[tuple[str, str]] = []
    for name, values in FORMS[action].items():
        for value in draw(st.lists(values, max_size=3)):
            fields.append((name, value))
    fields += draw(st.lists(st.tuples(st.text(max_size=8), _texts), max_size=2))
    return action, fields


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    post=form_posts(),
    warehouse_id=st.sampled_from(KNOWN["warehouse_id"]) | st.text(min_size=1, max_size=12),
    return_id=st.text(min_size=1, max_size=12),
    raw=st.none() | st.binary(max_size=64),
)
async def test_warehouse_page_forms_of_any_content_never_fail_the_server(
    running_system: LocalSystem,
    post: tuple[str, list[tuple[str, str]]],
    warehouse_id: str,
    return_id: str,
    raw: bytes | None,
) -> None:
    action, fields = post
    action = action.replace("{return_id}", quote(return_id, safe=""))
    url = f"{running_system.urls['inventory']}/warehouse/{quote(warehouse_id, safe='')}/{action}"
    headers = bearer(running_system.config.tokens["warehouse"])
    async with httpx.AsyncClient(timeout=30) as http:
        if raw is None:
            answer = await http.post(url, data=_as_form(fields), headers=headers)
        else:  # not form-encoded at all, whatever the header says
            answer = await http.post(
                url,
                content=raw,
                headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
            )
    # Post/Redirect/Get (303) with the outcome in a cookie, or refused before the form is read
    assert answer.status_code < 500, (answer.status_code, answer.text[:500])


def _as_form(fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    form: dict[str, list[str]] = {}
    for name, value in fields:
        form.setdefault(name, []).append(value)
    return form
