"""Picking and packing over HTTP: the JSON API and the warehouse page (server-rendered).

The page and the JSON API call the same use cases (``services.inventory.picking``).
A browser cannot send a bearer token on navigation, so the page also accepts the
warehouse token from an HttpOnly, SameSite=Strict cookie, which ``?token=`` or the
sign-in form sets (then the browser is redirected to the clean URL). Forms post
form-encoded and are answered with a redirect back to the page (Post/Redirect/Get),
carrying the outcome in a short-lived flash cookie.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote, urlencode, urlsplit
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from pydantic import BaseModel, Field, ValidationError

from services.inventory import picking, returns
from services.inventory.storage import picking as store
from services.inventory.storage import repository as inventory_repo
from shared.db import UnitOfWork, unit_of_work
from shared.events import Parcel, ReceivedLine
from shared.events.base import ORDER_ID_PATTERN, Identifier, Sku
from shared.http import authenticate, require_role, runtime_of
from shared.tenancy import Principal

router = APIRouter(tags=["picking"])

TOKEN_COOKIE = "waybill_warehouse"
FLASH_COOKIE = "waybill_flash"
COOKIE_PATH = "/warehouse"
#: a shift: then the handheld asks for the token again
TOKEN_COOKIE_SECONDS = 12 * 3600
MAX_PARCELS = 20

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # not no-referrer: with it, browsers send "Origin: null" on form posts
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

T = TypeVar("T")
_ORDER_ID = re.compile(ORDER_ID_PATTERN)
#: a deadlock or serialization failure passes: the whole unit of work runs again
_ATTEMPTS = 3
_RETRIED_SQLSTATES = frozenset({"40001", "40P01"})

_STATUS_OF: list[tuple[type[picking.PickingRefused], int]] = [
    (picking.NotFound, 404),
    (picking.NotYours, 403),
    (picking.Conflict, 409),
    (picking.Invalid, 422),
]


# -- JSON API ------------------------------------------------------------------------------


class PickedBody(BaseModel):
    quantity: int = Field(ge=1, le=100_000)
    scanned_sku: Sku


class PackBody(BaseModel):
    parcels: list[Parcel] = Field(min_length=1, max_length=50)
    warehouse_id: Identifier | None = None


async def _in_transaction(request: Request, action: Callable[[UnitOfWork], Awaitable[T]]) -> T:
    runtime = runtime_of(request)
    attempt = 1
    while True:
        try:
            async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
                return await action(uow)
        except asyncpg.PostgresError as exc:
            if attempt >= _ATTEMPTS or getattr(exc, "sqlstate", None) not in _RETRIED_SQLSTATES:
                raise
            attempt += 1


def _refusal(exc: picking.PickingRefused, *, field: str | None = None) -> HTTPException:
    status = next(code for kind, code in _STATUS_OF if isinstance(exc, kind))
    detail: Any = str(exc)
    if isinstance(exc, picking.NotAllPicked):
        detail = {"message": str(exc), "missing": exc.missing}
    elif status == 422:
        # the same shape as FastAPI's own field errors
        loc = ["body", field] if field else ["body"]
        detail = [{"loc": loc, "msg": str(exc), "type": type(exc).__name__}]
    return HTTPException(status, detail)


Staff = Annotated[Principal, Depends(require_role("warehouse"))]


def _own_warehouse(principal: Principal, warehouse_id: str | None) -> None:
    if warehouse_id and not principal.works_in(warehouse_id):
        raise HTTPException(403, f"your key is not for warehouse {warehouse_id}")


@router.get("/picklists")
async def get_picklists(
    request: Request,
    principal: Staff,
    warehouse_id: str | None = None,
    status: Literal["open", "done", "all"] = "open",
    limit: int = Query(default=100, ge=1, le=500),
) -> dict[str, Any]:
    """Pick lists (open ones oldest first) with lines in walking order. A staff member's key:
    their warehouses' only (another one asked for: 403)."""
    _own_warehouse(principal, warehouse_id)
    runtime = runtime_of(request)
    wanted: list[str | None] = [warehouse_id or None]
    if not warehouse_id and principal.warehouse_ids is not None:
        wanted = list(sorted(principal.warehouse_ids))
    found: list[dict[str, Any]] = []
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        for wanted_id in wanted:
            found += await picking.list_picklists(
                uow,
                warehouse_id=wanted_id,
                status=None if status == "all" else status,
                limit=limit - len(found),
            )
            if len(found) >= limit:
                break
    return {"picklists": [picking.picklist_json(p) for p in found]}


@router.post("/picklists/{picklist_id}/lines/{line_no}/picked")
async def post_picked(
    picklist_id: UUID, line_no: int, body: PickedBody, request: Request, principal: Staff
) -> dict[str, Any]:
    """A line picked: a wrong SKU or too many are refused (422). A staff member's key: in
    their warehouses only (403), and they are recorded as the picker."""
    now = runtime_of(request).clock.now()
    try:
        result = await _in_transaction(
            request,
            lambda uow: picking.confirm_pick(
                uow,
                picklist_id=picklist_id,
                line_no=line_no,
                scanned_sku=body.scanned_sku,
                quantity=body.quantity,
                now=now,
                warehouses=principal.warehouse_ids,
                by=principal.who(),
            ),
        )
    except picking.PickingRefused as exc:
        field = "quantity" if isinstance(exc, picking.OverPick) else "scanned_sku"
        raise _refusal(exc, field=field) from exc
    return result.as_json()


@router.post("/orders/{order_id}/packed")
async def post_packed(
    order_id: str, body: PackBody, request: Request, principal: Staff
) -> dict[str, Any]:
    """The order packed, once every line of it is picked. A staff member's key: in their
    warehouses only (403), and they are recorded as the packer."""
    _own_warehouse(principal, body.warehouse_id)
    now = runtime_of(request).clock.now()
    try:
        result = await _in_transaction(
            request,
            lambda uow: picking.pack_order(
                uow,
                order_id=order_id,
                parcels=body.parcels,
                warehouse_id=body.warehouse_id,
                now=now,
                warehouses=principal.warehouse_ids,
                by=principal.who(),
            ),
        )
    except picking.PickingRefused as exc:
        raise _refusal(exc, field="warehouse_id") from exc
    return result.as_json()


# -- the page: rendering and sign-in ----------------------------------------------------------


@lru_cache(maxsize=1)
def _templates() -> Environment:
    return Environment(
        loader=PackageLoader("services.inventory", "pages"),
        autoescape=select_autoescape(("html",), default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _prefix(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _page_url(request: Request, warehouse_id: str) -> str:
    return f"{_prefix(request)}/warehouse/{quote(warehouse_id, safe='')}"


def _render(
    request: Request, template: str, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    html = (
        _templates()
        .get_template(template)
        .render(assets=f"{_prefix(request)}/warehouse-assets", **context)
    )
    return HTMLResponse(html, status_code=status_code, headers=_SECURITY_HEADERS)


def _sign_in_page(
    request: Request,
    warehouse_id: str,
    *,
    status_code: int,
    message: str | None,
    principal: Principal | None = None,
) -> HTMLResponse:
    refused = status_code == 403
    if refused and principal is not None and principal.warehouse_ids is not None:
        yours = ", ".join(sorted(principal.warehouse_ids))
        explanation = (
            f"Your key ({principal.staff_name}) is for {yours}, not for {warehouse_id}. "
            "Ask an admin to add you to this warehouse, or sign in with another key."
        )
    elif refused:
        explanation = "This token belongs to another role. The pick lists need a warehouse key."
    else:
        explanation = (
            "Sign in with your staff key, or the warehouse token (printed by `waybill up`)."
        )
    response = _render(
        request,
        "login.html",
        status_code=status_code,
        heading="Not allowed" if refused else "Sign in",
        message=message,
        explanation=explanation,
        login_action=f"{_page_url(request, warehouse_id)}/login",
    )
    if status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="warehouse"'
    return response


def _not_found(request: Request, explanation: str) -> HTMLResponse:
    return _render(
        request,
        "login.html",
        status_code=404,
        heading="Not found",
        message=None,
        explanation=explanation,
        login_action=None,
    )


def _presented_token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(TOKEN_COOKIE) or None


@dataclass(frozen=True)
class _Access:
    """Whether a token or key opens a warehouse's page: 200, 401 (none, unknown, revoked) or
    403 (another role, or a staff member's key for other warehouses)."""

    status: int
    principal: Principal | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 200


async def _check(request: Request, token: str | None, warehouse_id: str) -> _Access:
    if not token:
        return _Access(401)
    principal = await authenticate(request, token)
    if principal is None:
        return _Access(401)
    if principal.role != "warehouse" or not principal.works_in(warehouse_id):
        return _Access(403, principal)
    return _Access(200, principal)


def _refuse(request: Request, warehouse_id: str, access: _Access) -> HTMLResponse:
    if access.status == 403:
        return _sign_in_page(
            request, warehouse_id, status_code=403, message=None, principal=access.principal
        )
    presented = _presented_token(request)
    response = _sign_in_page(
        request,
        warehouse_id,
        status_code=401,
        message="That token is not valid any more: sign in again." if presented else None,
    )
    if request.cookies.get(TOKEN_COOKIE):
        response.delete_cookie(TOKEN_COOKIE, path=COOKIE_PATH)
    return response


def _same_origin(request: Request) -> bool:
    """Form posts only from our own pages (the SameSite cookie already stops most others)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not sent by every browser on same-origin posts
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _signed_in(request: Request, warehouse_id: str, token: str) -> RedirectResponse:
    response = RedirectResponse(_page_url(request, warehouse_id), status_code=303)
    response.set_cookie(
        TOKEN_COOKIE,
        token,
        max_age=TOKEN_COOKIE_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.headers.update(_SECURITY_HEADERS)
    return response


def _back(
    request: Request,
    warehouse_id: str,
    *,
    kind: Literal["ok", "error"],
    text: str,
    focus: str | None = None,
    query: dict[str, Any] | None = None,
    anchor: str | None = None,
) -> RedirectResponse:
    """Post/Redirect/Get: back to the page, the outcome in a flash cookie read once."""
    url = _page_url(request, warehouse_id)
    if query:
        url += "?" + urlencode(query, doseq=True)
    if anchor:
        url += "#" + quote(anchor, safe="")
    response = RedirectResponse(url, status_code=303)
    flash = json.dumps({"kind": kind, "text": text[:500], "focus": focus})
    response.set_cookie(
        FLASH_COOKIE,
        base64.urlsafe_b64encode(flash.encode()).decode(),
        max_age=120,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _read_flash(request: Request) -> dict[str, Any] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        flash = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(flash, dict) or flash.get("kind") not in ("ok", "error"):
        return None
    return {"kind": flash["kind"], "text": str(flash.get("text", "")), "focus": flash.get("focus")}


@lru_cache(maxsize=1)
def _stylesheet() -> str:
    return files("services.inventory").joinpath("pages", "warehouse.css").read_text("utf-8")


@router.get("/warehouse-assets/warehouse.css", include_in_schema=False)
async def stylesheet() -> Response:
    return Response(
        _stylesheet(),
        media_type="text/css",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/warehouse/{warehouse_id}", include_in_schema=False)
async def warehouse_page(warehouse_id: str, request: Request, token: str | None = None) -> Response:
    """The pick-list page; ``?token=`` signs in (cookie) and redirects to the clean URL."""
    if token is not None:
        access = await _check(request, token, warehouse_id)
        if access.allowed:
            return _signed_in(request, warehouse_id, token)
        if access.status == 403:
            return _refuse(request, warehouse_id, access)
        return _sign_in_page(
            request, warehouse_id, status_code=401, message="That token is not valid."
        )
    access = await _check(request, _presented_token(request), warehouse_id)
    if not access.allowed:
        return _refuse(request, warehouse_id, access)
    runtime = runtime_of(request)
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        name = await store.warehouse_name(uow.conn, warehouse_id)
        if name is None:
            return _not_found(request, f"There is no warehouse {warehouse_id!r}.")
        found = await picking.list_picklists(uow, warehouse_id=warehouse_id, status="open")
        expected = await inventory_repo.expected_returns(uow.conn, warehouse_id=warehouse_id)
    flash = _read_flash(request)
    response = _render(
        request,
        "warehouse.html",
        base=_page_url(request, warehouse_id),
        warehouse_id=warehouse_id,
        warehouse_name=name,
        flash=flash,
        picklists=_page_picklists(found, request, focus=(flash or {}).get("focus")),
        max_parcels=MAX_PARCELS,
        returns=expected,
        signed_in_as=_signed_in_as(access.principal),
    )
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path=COOKIE_PATH)
    return response


def _page_picklists(
    found: list[dict[str, Any]], request: Request, *, focus: str | None
) -> list[dict[str, Any]]:
    """What the template shows: lines with the one to focus, and the orders ready to pack.

    The focus goes to the line the picker was on (after an error), else to the next
    unpicked line in walking order; with nothing left to pick, to the first pack form.
    """
    open_lines = [
        f"{p['picklist_id']}:{line['line_no']}"
        for p in found
        for line in p["lines"]
        if line["status"] == "open"
    ]
    target = focus if focus in open_lines else (open_lines[0] if open_lines else None)
    query = request.query_params
    prefill_order = query.get("order_id")
    pack_focus_given = target is not None
    views = []
    for p in found:
        lines = [
            {**line, "focus": f"{p['picklist_id']}:{line['line_no']}" == target}
            for line in p["lines"]
        ]
        ready = []
        for order in p["orders"]:
            if order["status"] != "picked":
                continue
            parcels = [dict(_EMPTY_PARCEL)]
            if order["order_id"] == prefill_order:
                count = _parcel_count(query.get("parcels"))
                parcels = (_prefilled_parcels(query) + [_EMPTY_PARCEL] * count)[:count]
            ready.append(
                {
                    "order_id": order["order_id"],
                    "anchor": order["order_id"],
                    "parcels": parcels,
                    "focus": not pack_focus_given,
                }
            )
            pack_focus_given = True
        views.append(
            {
                **p,
                "short_id": str(p["picklist_id"])[:8],
                "lines": lines,
                "done_lines": sum(1 for line in lines if line["status"] in ("picked", "packed")),
                "ready": ready,
            }
        )
    return views


_PARCEL_FIELDS = ("weight_grams", "length_mm", "width_mm", "height_mm")
_EMPTY_PARCEL: dict[str, str] = dict.fromkeys(_PARCEL_FIELDS, "")


def _parcel_count(raw: str | None) -> int:
    try:
        count = int(raw or "1")
    except ValueError:
        return 1
    return max(1, min(count, MAX_PARCELS))


def _prefilled_parcels(values: Any) -> list[dict[str, str]]:
    columns = {f: [str(v)[:12] for v in values.getlist(f)] for f in _PARCEL_FIELDS}
    rows = max((len(c) for c in columns.values()), default=0)
    return [
        {f: columns[f][i] if i < len(columns[f]) else "" for f in _PARCEL_FIELDS}
        for i in range(min(rows, MAX_PARCELS))
    ]


# -- the page: its forms ----------------------------------------------------------------------


def _signed_in_as(principal: Principal | None) -> str:
    if principal is None or principal.staff_id is None:
        return "the warehouse token"
    return f"{principal.staff_name} ({principal.staff_id})"


async def _form_guard(request: Request, warehouse_id: str) -> _Access | Response:
    """Who posts the form, or the answer that refuses it."""
    if not _same_origin(request):
        return HTMLResponse("Cross-site form posts are refused.", status_code=403)
    access = await _check(request, _presented_token(request), warehouse_id)
    return access if access.allowed else _refuse(request, warehouse_id, access)


@router.post("/warehouse/{warehouse_id}/login", include_in_schema=False)
async def sign_in(warehouse_id: str, request: Request) -> Response:
    if not _same_origin(request):
        return HTMLResponse("Cross-site form posts are refused.", status_code=403)
    form = await request.form()
    token = str(form.get("token") or "").strip()
    access = await _check(request, token, warehouse_id)
    if access.allowed:
        return _signed_in(request, warehouse_id, token)
    if access.status == 403:
        return _refuse(request, warehouse_id, access)
    return _sign_in_page(
        request,
        warehouse_id,
        status_code=401,
        message="That token is not valid." if token else "Enter the warehouse token.",
    )


@router.post("/warehouse/{warehouse_id}/logout", include_in_schema=False)
async def sign_out(warehouse_id: str, request: Request) -> Response:
    if not _same_origin(request):
        return HTMLResponse("Cross-site form posts are refused.", status_code=403)
    response = RedirectResponse(_page_url(request, warehouse_id), status_code=303)
    response.delete_cookie(TOKEN_COOKIE, path=COOKIE_PATH)
    return response


@router.post("/warehouse/{warehouse_id}/scan", include_in_schema=False)
async def scan(warehouse_id: str, request: Request) -> Response:
    access = await _form_guard(request, warehouse_id)
    if not isinstance(access, _Access):
        return access
    who = access.principal.who() if access.principal is not None else None
    form = await request.form()
    raw_picklist, raw_line = str(form.get("picklist_id", "")), str(form.get("line_no", ""))
    focus = f"{raw_picklist}:{raw_line}"
    try:
        picklist_id, line_no = UUID(raw_picklist), int(raw_line)
        quantity = int(str(form.get("quantity", "")).strip() or "0")
    except ValueError:
        return _back(
            request,
            warehouse_id,
            kind="error",
            text="Enter the quantity as a whole number.",
            focus=focus,
        )
    scanned = str(form.get("scanned_sku", ""))
    if not scanned.strip():
        return _back(request, warehouse_id, kind="error", text="Scan or type the SKU.", focus=focus)
    now = runtime_of(request).clock.now()
    try:
        result = await _in_transaction(
            request,
            lambda uow: picking.confirm_pick(
                uow,
                picklist_id=picklist_id,
                line_no=line_no,
                scanned_sku=scanned,
                quantity=quantity,
                now=now,
                warehouse_id=warehouse_id,
                by=who,
            ),
        )
    except picking.PickingRefused as exc:
        return _back(request, warehouse_id, kind="error", text=_sentence(str(exc)), focus=focus)
    text = (
        f"Line {result.line_no}: {result.picked_quantity} of {result.quantity} x {result.sku} "
        "picked."
    )
    if result.repeated:
        text = f"Line {result.line_no} was picked in full already; nothing changed."
    if result.order_picked:
        text += f" Order {result.order_id} is picked in full: pack it."
    return _back(request, warehouse_id, kind="ok", text=text)


@router.post("/warehouse/{warehouse_id}/pack", include_in_schema=False)
async def pack(warehouse_id: str, request: Request) -> Response:
    access = await _form_guard(request, warehouse_id)
    if not isinstance(access, _Access):
        return access
    who = access.principal.who() if access.principal is not None else None
    form = await request.form()
    order_id = str(form.get("order_id", ""))
    if not _ORDER_ID.fullmatch(order_id):  # no order has it (and NUL cannot be looked up)
        text = f"Not packed: there is no order {order_id[:64]!r}."
        return _back(request, warehouse_id, kind="error", text=text)
    rows = _prefilled_parcels(form)
    again = {"order_id": order_id, "parcels": max(len(rows), 1), **_columns(rows)}
    parcels: list[Parcel] = []
    problems: list[str] = []
    for number, row in enumerate(rows, start=1):
        values = {k: v.strip() for k, v in row.items()}
        empty = [_FIELD_NAMES[k] for k, v in values.items() if not v]
        if empty:
            problems.append(f"parcel {number}: enter the {' and '.join(empty)}")
            continue
        try:
            parcels.append(Parcel.model_validate(values))
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                name = _FIELD_NAMES.get(str(err["loc"][0]), str(err["loc"][0]))
                message = str(err["msg"]).removeprefix("Input ")
                problems.append(f"parcel {number}: the {name} {_lower_first(message)}")
    if problems or not parcels:
        text = "Not packed: " + ("; ".join(problems) if problems else "enter at least one parcel")
        return _back(
            request,
            warehouse_id,
            kind="error",
            text=text + ".",
            query=again,
            anchor=f"pack-{order_id}",
        )
    now = runtime_of(request).clock.now()
    try:
        result = await _in_transaction(
            request,
            lambda uow: picking.pack_order(
                uow,
                order_id=order_id,
                parcels=parcels,
                warehouse_id=warehouse_id,
                now=now,
                by=who,
            ),
        )
    except picking.PickingRefused as exc:
        return _back(
            request,
            warehouse_id,
            kind="error",
            text="Not packed: " + _sentence(str(exc)),
            query=again,
            anchor=f"pack-{order_id}",
        )
    count = len(result.parcels)
    return _back(
        request,
        warehouse_id,
        kind="ok",
        text=f"Order {result.order_id} packed in {count} parcel{'s' if count != 1 else ''}.",
    )


@router.post("/warehouse/{warehouse_id}/returns/{return_id}/receive", include_in_schema=False)
async def receive_return(warehouse_id: str, return_id: str, request: Request) -> Response:
    """A return parcel received: sellable and damaged quantities per line."""
    access = await _form_guard(request, warehouse_id)
    if not isinstance(access, _Access):
        return access
    who = access.principal.who() if access.principal is not None else None
    form = await request.form()
    lines: list[ReceivedLine] = []
    problems: list[str] = []
    skus, sellables, damageds = (form.getlist(f) for f in ("sku", "sellable", "damaged"))
    if not len(skus) == len(sellables) == len(damageds):
        problems.append("the form is incomplete: reload the page and enter the receipt again")
    for sku, sellable, damaged in zip(skus, sellables, damageds, strict=False):
        for condition, raw in (("sellable", sellable), ("damaged", damaged)):
            text = str(raw).strip() or "0"
            try:
                quantity = int(text)
            except ValueError:
                quantity = -1
            if quantity < 0:
                problems.append(
                    f"{condition} {sku}: {text[:12]!r} is not a whole number of 0 or more "
                    "(negative quantities are refused)"
                )
            elif quantity:
                try:
                    lines.append(ReceivedLine(sku=str(sku), quantity=quantity, condition=condition))
                except ValidationError:
                    problems.append(f"{condition} {sku}: {quantity} is not a valid quantity")
    if problems:
        text = "Not received: " + "; ".join(problems) + ". Nothing was recorded."
        return _back(request, warehouse_id, kind="error", text=text)
    now = runtime_of(request).clock.now()
    try:
        expected = await _in_transaction(
            request,
            lambda uow: returns.scan_return(
                uow, warehouse_id=warehouse_id, return_id=return_id, lines=lines, now=now, by=who
            ),
        )
    except returns.ReceiptRefused as exc:
        text = "Not received: " + _sentence(str(exc))
        if exc.status != 409:  # received already: the first receipt stands
            text += " Nothing was recorded."
        return _back(request, warehouse_id, kind="error", text=text)
    counted = sum(line.quantity for line in lines)
    return _back(
        request,
        warehouse_id,
        kind="ok",
        text=f"{expected['rma']} received: {counted} item{'s' if counted != 1 else ''}.",
    )


@router.get("/returns/expected")
async def get_expected_returns(
    request: Request,
    principal: Annotated[Principal, Depends(require_role("warehouse", "ops"))],
    warehouse_id: str | None = None,
) -> dict[str, Any]:
    """Returns on their way back (approved, not yet received), oldest first. A staff
    member's key: to their warehouses only."""
    _own_warehouse(principal, warehouse_id)
    runtime = runtime_of(request)
    async with runtime.pool.acquire() as conn:
        found = await inventory_repo.expected_returns(conn, warehouse_id=warehouse_id)
    return {"returns": [r for r in found if principal.works_in(r["warehouse_id"])]}


@router.get("/warehouse/{warehouse_id}/picklists/{picklist_id}/print", include_in_schema=False)
async def print_picklist(warehouse_id: str, picklist_id: UUID, request: Request) -> Response:
    access = await _check(request, _presented_token(request), warehouse_id)
    if not access.allowed:
        return _refuse(request, warehouse_id, access)
    runtime = runtime_of(request)
    async with unit_of_work(runtime.pool, schema=runtime.schema) as uow:
        name = await store.warehouse_name(uow.conn, warehouse_id)
        found = await picking.list_picklists(
            uow, warehouse_id=warehouse_id, status=None, picklist_id=picklist_id, limit=1
        )
    if name is None or not found:
        return _not_found(request, f"There is no pick list {picklist_id} in {warehouse_id!r}.")
    p = found[0]
    return _render(
        request,
        "print.html",
        base=_page_url(request, warehouse_id),
        warehouse_id=warehouse_id,
        warehouse_name=name,
        p={**p, "short_id": str(p["picklist_id"])[:8]},
    )


_FIELD_NAMES = {
    "weight_grams": "weight (g)",
    "length_mm": "length (mm)",
    "width_mm": "width (mm)",
    "height_mm": "height (mm)",
}


def _columns(rows: list[dict[str, str]]) -> dict[str, list[str]]:
    return {f: [row[f] for row in rows] for f in _PARCEL_FIELDS}


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."
