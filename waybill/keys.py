"""``waybill keys``: issue, list and revoke a shop's API keys through the orders service."""

from __future__ import annotations

import json
from typing import Any

import httpx


class KeysError(Exception):
    """The orders service refused (the message says why) or could not be reached."""


def _call(method: str, url: str, token: str) -> dict[str, Any]:
    try:
        response = httpx.request(
            method, url, headers={"Authorization": f"Bearer {token}"}, timeout=10.0
        )
    except httpx.HTTPError as exc:
        raise KeysError(f"cannot reach the orders service at {url}: {exc}") from exc
    if response.status_code in (401, 403):
        raise KeysError(f"refused ({response.status_code}): pass the admin token (--token)")
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise KeysError(f"{response.status_code}: {detail}")
    answer: dict[str, Any] = response.json()
    return answer


def create(base: str, token: str, shop_id: str) -> dict[str, Any]:
    return _call("POST", f"{base.rstrip('/')}/shops/{shop_id}/keys", token)


def list_keys(base: str, token: str, shop_id: str) -> dict[str, Any]:
    return _call("GET", f"{base.rstrip('/')}/shops/{shop_id}/keys", token)


def revoke(base: str, token: str, shop_id: str, key_id: str) -> dict[str, Any]:
    return _call("DELETE", f"{base.rstrip('/')}/shops/{shop_id}/keys/{key_id}", token)


def render(command: str, answer: dict[str, Any], *, as_json: bool) -> str:
    if as_json:
        return json.dumps(answer, indent=2)
    key_id, shop_id = answer.get("key_id"), answer["shop_id"]
    if command == "create":
        return (
            f"key {key_id} for shop {shop_id} (created {answer['created_at']})\n"
            f"{answer['key']}\n"
            "This is the only time the key is shown: give it to the shop now."
        )
    if command == "revoke":
        return f"key {key_id} of shop {shop_id} revoked at {answer['revoked_at']}"
    rows = [("key_id", "created_at", "last_used_at", "revoked_at")] + [
        (k["key_id"], k["created_at"], k["last_used_at"] or "-", k["revoked_at"] or "-")
        for k in answer["keys"]
    ]
    if len(rows) == 1:
        return f"shop {answer['shop_id']} has no keys"
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
