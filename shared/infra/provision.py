"""One PostgreSQL role and schema per service (DESIGN.md, "Own your data").

The role owns its schema and nothing else is granted to it: it cannot create objects
in another service's schema, nor in ``public``. The ``public`` schema itself is left
as it is, since other tools may use it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import secrets
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

log = logging.getLogger("waybill.infra")

_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_ROLE_PREFIX = "waybill_"
# PostgreSQL truncates identifiers to 63 bytes; the role name must survive whole.
_MAX_SERVICE_NAME = 63 - len(_ROLE_PREFIX)
# "waybill\0" as a bigint: one lock key for every provisioning call in a database.
_PROVISION_LOCK = int.from_bytes(b"waybill\0", "big")
_ATTEMPTS = 5


def service_schema(service: str) -> str:
    """The schema that holds ``service``'s tables: the service name itself, validated."""
    if not _SERVICE_NAME.fullmatch(service) or len(service) > _MAX_SERVICE_NAME:
        raise ValueError(
            f"invalid service name {service!r}: expected lower-case letters, digits and "
            f"underscores, starting with a letter, at most {_MAX_SERVICE_NAME} characters"
        )
    return service


def service_role(service: str) -> str:
    """The login role of ``service``: ``waybill_<service>``."""
    return _ROLE_PREFIX + service_schema(service)


async def provision_service_database(
    admin_dsn: str, service: str, *, password: str | None = None
) -> str:
    """Create (or bring up to date) ``service``'s role and schema; return its DSN.

    Idempotent and safe to call concurrently, for the same or different services. Every
    call sets the role's password: ``password`` when given, otherwise a fresh random one,
    which lives only in the returned DSN.
    """
    schema = service_schema(service)
    role = service_role(service)
    if password == "":
        raise ValueError("the password must not be empty")
    secret = password if password is not None else secrets.token_urlsafe(24)
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            await _provision(admin_dsn, role=role, schema=schema, password=secret)
            break
        except asyncpg.PostgresError as exc:
            if attempt == _ATTEMPTS or not _lost_catalog_race(exc):
                raise
            # The advisory lock serialises callers within one database only; roles are
            # cluster-wide, so callers in two databases can still collide. Try again.
            log.debug("provisioning %s collided with a concurrent call (%s); retrying", role, exc)
            await asyncio.sleep(0.05 * attempt)
    log.info("provisioned role %s with schema %s", role, schema)
    return _with_credentials(admin_dsn, user=role, password=secret)


async def _provision(admin_dsn: str, *, role: str, schema: str, password: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PROVISION_LOCK)
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            database: str = await conn.fetchval("SELECT current_database()")
            verifier = _password_verifier(password)
            if exists:
                await _execute(conn, "ALTER ROLE %I WITH LOGIN PASSWORD %L", role, verifier)
            else:
                await _execute(
                    conn,
                    "CREATE ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L",
                    role,
                    verifier,
                )
            await _execute(conn, "CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I", schema, role)
            # The schema may predate the role, or have been handed to someone else since.
            await _execute(conn, "ALTER SCHEMA %I OWNER TO %I", schema, role)
            await _execute(conn, "REVOKE CREATE ON SCHEMA public FROM %I", role)
            await _execute(conn, "GRANT CONNECT ON DATABASE %I TO %I", database, role)
    finally:
        await conn.close()


def _password_verifier(password: str, *, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier of ``password`` (RFC 5802/7677), as PostgreSQL stores it.

    Hashing here keeps the clear password out of the server's statement log. Only
    printable ASCII, which SASLprep leaves unchanged, is hashed here; anything else is
    sent as it is for the server to normalise and hash.
    """
    if not all(" " <= char <= "~" for char in password):
        return password
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def _execute(conn: asyncpg.Connection, template: str, *values: str) -> None:
    """Run a utility statement: these take no bind parameters, so the server quotes them."""
    placeholders = "".join(f", ${n}::text" for n in range(2, len(values) + 2))
    sql: str = await conn.fetchval(f"SELECT format($1::text{placeholders})", template, *values)
    await conn.execute(sql)


def _lost_catalog_race(exc: asyncpg.PostgresError) -> bool:
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in {"42710", "23505"}:  # duplicate_object, unique_violation on pg_authid
        return True
    return sqlstate == "XX000" and "concurrently" in str(exc)  # "tuple concurrently updated"


def _with_credentials(dsn: str, *, user: str, password: str) -> str:
    """``dsn`` with its user and password replaced, keeping host, port, database, options."""
    parts = urlsplit(dsn)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ValueError("expected a postgresql:// URL for the admin DSN")
    host = parts.netloc.rpartition("@")[2]
    query = urlencode(
        [
            (key, value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
            if key not in {"user", "password", "passfile"}
        ]
    )
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))
