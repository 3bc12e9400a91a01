"""``Idempotency-Key``: a retried POST gets the first answer, and its effect happens once.

The record of a key is written **in the database transaction of the operation's effect**: the
effect and "this key was answered with this response" commit together or not at all, so no
crash can leave an effect without its record (a retry would repeat it) or a record without
its effect (a retry would be told something happened that did not).

Records belong to a *scope*: the merchant for merchant keys (all keys of one merchant share
them) and the API key for operator keys. Merchant ids and key ids have distinct prefixes
(``key_`` for keys), so the two kinds of scope cannot collide. A record lives
:data:`IDEMPOTENCY_TTL_S` (24 h); :func:`purge_expired` deletes old ones in bounded batches.

For a request with a key, in one transaction:

1. claim the key: insert an in-flight record (``INSERT ... ON CONFLICT DO NOTHING``). If a
   record exists: a different request fingerprint -> ``409 idempotency_key_reused``; a stored
   response -> replay it (``Idempotent-Replayed: true``); in flight for less than
   :data:`IDEMPOTENCY_IN_FLIGHT_TIMEOUT_S` -> ``409 idempotency_key_in_use``; older, or
   expired -> take it over.
2. run the operation; store its status and body; commit.

On PostgreSQL a concurrent request with the same key waits on the first one's uncommitted
insert and then sees its committed record (a replay); on SQLite writers are serialized. Either
way the effect happens once. If the operation raises a typed 4xx error, its effect rolls back
and the error response is stored in a second, small transaction so that a retry gets the same
error; 5xx and untyped errors are not stored (a retry may succeed).

An in-flight record is only ever visible to others when an operation claims a key in one
transaction and completes it in another (a network call in between): :func:`claim` and
:func:`complete` are public for that case.

A route, with ``transaction`` a callable returning the context manager of the effect's
transaction (``Database.write`` or the payments service's ``transaction``)::

    @app.post("/v1/things")
    def create_thing(body: ThingIn, principal: CurrentPrincipal, idem: IdempotencyMeta):
        return idempotent_response(
            payments.transaction, principal, idem, lambda tx: (201, make_thing(tx, body))
        )
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Annotated, Any, Final, NamedTuple, TypeVar, cast

import sqlalchemy as sa
from fastapi import Depends, Request
from sqlalchemy.engine import Connection
from starlette.responses import Response

from paykeep.api.errors import (
    JSON_MEDIA_TYPE,
    IdempotencyKeyInUse,
    IdempotencyKeyInvalid,
    IdempotencyKeyReused,
    error_body,
    error_headers,
    json_bytes,
    request_id_of,
    status_for,
)
from paykeep.clock import NS_PER_S, Clock, SystemClock
from paykeep.db import Database, driver
from paykeep.errors import PaykeepError
from paykeep.security.api_keys import Principal

IDEMPOTENCY_KEY_HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
#: Key length (printable ASCII only), as the ``key`` column allows.
IDEMPOTENCY_KEY_LENGTH_MAX: Final = 255
#: How long a key's answer is kept and replayed.
IDEMPOTENCY_TTL_S: Final = 24 * 3600
#: An in-flight record younger than this belongs to a request still running (409 in use);
#: older, its request is presumed dead and a retry takes the key over.
IDEMPOTENCY_IN_FLIGHT_TIMEOUT_S: Final = 60
#: Records deleted per purge call (one short transaction; call again while it returns this).
IDEMPOTENCY_PURGE_BATCH: Final = 1_000
#: The ``path`` column's width; the fingerprint covers the full path whatever its length.
_PATH_COLUMN_MAX: Final = 255
#: Insert-or-inspect rounds before giving up (a record purged between the two statements).
_CLAIM_ATTEMPTS: Final = 3

T = TypeVar("T")
Body = Mapping[str, Any] | bytes
Operation = Callable[[T], tuple[int, Body]]


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """What identifies a request for idempotency: its key (None: none sent) and fingerprint."""

    key: str | None
    method: str
    path: str
    #: SHA-256 (hex) of method, path and canonical body; "" when no key was sent (not needed).
    request_sha256: str
    request_id: str | None = None


class IdempotentResult(NamedTuple):
    status: int
    body: bytes
    replayed: bool


# -- the pure parts -------------------------------------------------------------------------


def validate_key(value: str | None) -> str | None:
    """The key if it is 1-255 printable ASCII characters; None if absent; else 400."""
    if value is None:
        return None
    if not 1 <= len(value) <= IDEMPOTENCY_KEY_LENGTH_MAX or not all(
        " " <= ch <= "~" for ch in value
    ):
        raise IdempotencyKeyInvalid(
            f"{IDEMPOTENCY_KEY_HEADER} must be 1-{IDEMPOTENCY_KEY_LENGTH_MAX} printable "
            "ASCII characters",
            param=IDEMPOTENCY_KEY_HEADER,
        )
    return value


def canonical_body(body: bytes) -> bytes:
    """JSON bodies re-encoded with sorted keys and no whitespace (so a retry that re-orders
    keys or re-indents is the same request); anything else byte for byte."""
    if not body.strip():
        return b""
    try:
        document = json.loads(body)
    except ValueError:  # includes UnicodeDecodeError
        return body
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(method.upper().encode())
    digest.update(b"\n")
    digest.update(path.encode())
    digest.update(b"\n")
    digest.update(canonical_body(body))
    return digest.hexdigest()


def scope_of(principal: Principal) -> str:
    """Whose records these are: the merchant (shared by its keys) or the operator key."""
    if principal.role == "merchant":
        assert principal.merchant_id is not None
        return principal.merchant_id
    return principal.key_id


def connection_of(tx: object) -> Connection:
    """The SQLAlchemy connection of a transaction object (itself, or its ``conn``)."""
    if isinstance(tx, Connection):
        return tx
    conn = getattr(tx, "conn", None)
    if isinstance(conn, Connection):
        return conn
    raise TypeError(f"{type(tx).__name__} is neither a Connection nor has a .conn Connection")


def _as_bytes(body: Body) -> bytes:
    return body if isinstance(body, bytes) else json_bytes(body)


# -- the FastAPI dependency -----------------------------------------------------------------


async def idempotent_request(request: Request) -> IdempotentRequest:
    """Read and check ``Idempotency-Key``; fingerprint the request only when a key was sent."""
    key = validate_key(request.headers.get(IDEMPOTENCY_KEY_HEADER))
    scope = request.scope
    if key is None:
        return IdempotentRequest(None, scope["method"], scope["path"], "", request_id_of(request))
    path = scope["path"]
    query = scope.get("query_string", b"")
    if query:
        path = f"{path}?{query.decode('latin-1')}"
    # FastAPI has already read the body for a route with a body parameter: this is cached.
    fingerprint = request_fingerprint(scope["method"], path, await request.body())
    return IdempotentRequest(key, scope["method"], path, fingerprint, request_id_of(request))


IdempotencyMeta = Annotated[IdempotentRequest, Depends(idempotent_request)]


# -- storage --------------------------------------------------------------------------------

# claim() and complete() run in every money-moving request, on the single writer: on the
# driver's connection (paykeep.db.driver), rows read by position.
_INSERT_IN_FLIGHT = (
    "INSERT INTO payments_idempotency_keys (principal, key, method, path, request_sha256, "
    "status_code, response_body, created_at_ns, expires_at_ns) "
    "VALUES (:principal, :key, :method, :path, :request_sha256, NULL, NULL, :now, :expires) "
    "ON CONFLICT (principal, key) DO NOTHING"
)
_SELECT = (
    "SELECT request_sha256, status_code, response_body, created_at_ns, expires_at_ns "
    "FROM payments_idempotency_keys WHERE principal = :principal AND key = :key"
)
_SELECT_FOR_UPDATE = _SELECT + " FOR UPDATE"
_TAKE_OVER = (
    "UPDATE payments_idempotency_keys SET method = :method, path = :path, "
    "request_sha256 = :request_sha256, status_code = NULL, response_body = NULL, "
    "created_at_ns = :now, expires_at_ns = :expires WHERE principal = :principal AND key = :key"
)
_COMPLETE = (
    "UPDATE payments_idempotency_keys SET status_code = :status, response_body = :body "
    "WHERE principal = :principal AND key = :key"
)
_RELEASE = (
    "DELETE FROM payments_idempotency_keys WHERE principal = :principal AND key = :key "
    "AND request_sha256 = :request_sha256 AND status_code IS NULL"
)
_PURGE = sa.text(
    "DELETE FROM payments_idempotency_keys WHERE (principal, key) IN ("
    "SELECT principal, key FROM payments_idempotency_keys WHERE expires_at_ns <= :now "
    "ORDER BY expires_at_ns LIMIT :batch)"
)


def claim(
    conn: Connection, scope: str, request: IdempotentRequest, now_ns: int
) -> IdempotentResult | None:
    """Claim ``request.key`` for ``scope`` inside the caller's transaction.

    None: claimed (an in-flight record is written; call :func:`complete` in the same or a
    later transaction). A result: the stored answer to replay. Raises
    :class:`IdempotencyKeyReused` or :class:`IdempotencyKeyInUse`.
    """
    assert request.key is not None and request.request_sha256, "claim needs a key"
    params = {
        "principal": scope,
        "key": request.key,
        "method": request.method[:8],
        "path": request.path[:_PATH_COLUMN_MAX],
        "request_sha256": request.request_sha256,
        "now": now_ns,
        "expires": now_ns + IDEMPOTENCY_TTL_S * NS_PER_S,
    }
    postgres = driver.is_postgres(conn)
    select = _SELECT_FOR_UPDATE if postgres else _SELECT
    for _ in range(_CLAIM_ATTEMPTS):
        if driver.execute(conn, _INSERT_IN_FLIGHT, params, postgres=postgres).rowcount == 1:
            return None
        found = driver.execute(
            conn, select, {"principal": scope, "key": request.key}, postgres=postgres
        ).fetchone()
        if found is None:
            continue  # purged between the insert and the select: insert again
        request_sha256, status_code, response_body, created_at_ns, expires_at_ns = found
        if expires_at_ns <= now_ns:
            driver.execute(conn, _TAKE_OVER, params, postgres=postgres)
            return None
        if request_sha256 != request.request_sha256:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with a different request (method, path or body)",
                param=IDEMPOTENCY_KEY_HEADER,
            )
        if status_code is not None:
            return IdempotentResult(int(status_code), bytes(response_body), True)
        if now_ns - created_at_ns < IDEMPOTENCY_IN_FLIGHT_TIMEOUT_S * NS_PER_S:
            raise IdempotencyKeyInUse(
                "a request with this Idempotency-Key is still in progress; retry shortly",
                param=IDEMPOTENCY_KEY_HEADER,
            )
        # its request died without an answer
        driver.execute(conn, _TAKE_OVER, params, postgres=postgres)
        return None
    raise IdempotencyKeyInUse(
        "this Idempotency-Key is contended; retry shortly", param=IDEMPOTENCY_KEY_HEADER
    )


def complete(conn: Connection, scope: str, key: str, status: int, body: bytes) -> None:
    """Store the answer to a claimed key (in the transaction of the effect)."""
    updated = driver.execute(
        conn,
        _COMPLETE,
        {"principal": scope, "key": key, "status": status, "body": body},
    ).rowcount
    assert updated == 1, "complete() without a claim in this or an earlier transaction"


def release(conn: Connection, scope: str, request: IdempotentRequest) -> None:
    """Give up an unanswered claim (the operation did not happen): a retry runs afresh."""
    driver.execute(
        conn,
        _RELEASE,
        {"principal": scope, "key": request.key, "request_sha256": request.request_sha256},
    )


def purge_expired(
    database: Database, *, clock: Clock | None = None, batch: int = IDEMPOTENCY_PURGE_BATCH
) -> int:
    """Delete up to ``batch`` expired records (oldest first); returns how many went."""
    if not 1 <= batch <= IDEMPOTENCY_PURGE_BATCH:
        raise ValueError(f"batch must be within 1..{IDEMPOTENCY_PURGE_BATCH}")
    now_ns = (clock or _SYSTEM_CLOCK).now_ns()
    with database.write() as conn:
        return int(conn.execute(_PURGE, {"now": now_ns, "batch": batch}).rowcount)


# -- running an operation -------------------------------------------------------------------

_SYSTEM_CLOCK: Final = SystemClock()


R = TypeVar("R")


def _runner(
    transaction: Callable[[], AbstractContextManager[T]],
) -> Callable[[Callable[[T], R]], R]:
    """How to run a unit of work in ``transaction``'s transaction. A factory that offers
    ``group_run`` (the payments service's: concurrent callers share one SQLite COMMIT, see
    ``paykeep.db.group``) is used through it; any other as a plain ``with`` block."""
    grouped = getattr(transaction, "group_run", None)
    if grouped is not None:
        return cast(Callable[[Callable[[T], R]], R], grouped)

    def run(unit: Callable[[T], R]) -> R:
        with transaction() as tx:
            return unit(tx)

    return run


def run_idempotent(
    transaction: Callable[[], AbstractContextManager[T]],
    principal: Principal,
    request: IdempotentRequest,
    operation: Callable[[T], tuple[int, Body]],
    *,
    clock: Clock | None = None,
) -> IdempotentResult:
    """Run ``operation`` in ``transaction()`` at most once per idempotency key (see module doc).

    ``operation`` gets what the transaction's context manager yields (a ``Connection``, or an
    object with ``.conn``) and returns ``(status, body)``, body a JSON-able mapping or bytes.
    Without a key the operation simply runs in its transaction and errors propagate.
    """
    run = _runner(transaction)
    if request.key is None:

        def plain(tx: T) -> IdempotentResult:
            status, body = operation(tx)
            return IdempotentResult(status, _as_bytes(body), False)

        return run(plain)
    key = request.key
    now_ns = (clock or _SYSTEM_CLOCK).now_ns()
    scope = scope_of(principal)

    def keyed(tx: T) -> IdempotentResult:
        conn = connection_of(tx)
        replay = claim(conn, scope, request, now_ns)
        if replay is not None:
            return replay
        status, body = operation(tx)
        body_bytes = _as_bytes(body)
        complete(conn, scope, key, status, body_bytes)
        return IdempotentResult(status, body_bytes, False)

    try:
        return run(keyed)
    except (IdempotencyKeyReused, IdempotencyKeyInUse):
        raise  # about the key itself: never stored
    except PaykeepError as error:
        status = status_for(error)
        if not 400 <= status < 500:
            raise  # a server-side failure: the retry deserves a fresh attempt
        body_bytes = error_body(error, request.request_id)
        return _store_error(run, scope, request, status, body_bytes, now_ns)


def _store_error(
    run: Callable[[Callable[[T], IdempotentResult | None]], IdempotentResult | None],
    scope: str,
    request: IdempotentRequest,
    status: int,
    body: bytes,
    now_ns: int,
) -> IdempotentResult:
    key = request.key
    assert key is not None

    def store(tx: T) -> IdempotentResult | None:
        conn = connection_of(tx)
        replay = claim(conn, scope, request, now_ns)
        if replay is not None:
            # A concurrent request with this key finished first: its answer is the key's.
            return replay
        complete(conn, scope, key, status, body)
        return None

    try:
        replayed = run(store)
    except IdempotencyKeyInUse:
        replayed = None  # another request holds the key now; this answer goes unstored
    return replayed if replayed is not None else IdempotentResult(status, body, False)


#: An effect that commits in transactions of its own: ``(status, body answered now, body a
#: replay answers)`` — the two differ when the first answer shows a secret once.
ClaimedEffect = Callable[[], tuple[int, bytes, bytes]]


def run_claimed(
    transaction: Callable[[], AbstractContextManager[T]],
    principal: Principal,
    request: IdempotentRequest,
    effect: ClaimedEffect,
    *,
    clock: Clock | None = None,
) -> IdempotentResult:
    """At most once per key, for an effect that cannot run inside the key's transaction (a
    network call, another service's own writes): claim the key in one transaction, run the
    effect, store its answer in another. A typed 4xx error is stored as the key's answer; a
    typed 5xx releases the claim (nothing happened: the retry runs afresh); any other failure
    leaves the claim in flight — whether the effect happened is unknown, and the in-flight
    timeout hands the key to a retry once recovery has settled it."""
    if request.key is None:
        status, shown, _stored = effect()
        return IdempotentResult(status, shown, False)
    key = request.key
    run = _runner(transaction)
    scope = scope_of(principal)
    now_ns = (clock or _SYSTEM_CLOCK).now_ns()
    replay = run(lambda tx: claim(connection_of(tx), scope, request, now_ns))
    if replay is not None:
        return replay
    try:
        status, shown, stored = effect()
    except PaykeepError as error:
        status = status_for(error)
        if status >= 500:
            run(lambda tx: release(connection_of(tx), scope, request))
            raise
        stored = shown = error_body(error, request.request_id)
    run(lambda tx: complete(connection_of(tx), scope, key, status, stored))
    return IdempotentResult(status, shown, False)


def result_response(result: IdempotentResult) -> Response:
    """An :class:`IdempotentResult` as the route's JSON response (``Idempotent-Replayed:
    true`` on a replay)."""
    headers: dict[str, str] = {}
    if result.replayed:
        headers[REPLAYED_HEADER] = "true"
    if result.status >= 400:
        headers.update(error_headers(result.status))
    return Response(
        result.body, status_code=result.status, headers=headers, media_type=JSON_MEDIA_TYPE
    )


def idempotent_response(
    transaction: Callable[[], AbstractContextManager[T]],
    principal: Principal,
    request: IdempotentRequest,
    operation: Callable[[T], tuple[int, Body]],
    *,
    clock: Clock | None = None,
) -> Response:
    """:func:`run_idempotent` as the route's response (JSON; ``Idempotent-Replayed: true``
    on a replay)."""
    return result_response(run_idempotent(transaction, principal, request, operation, clock=clock))
