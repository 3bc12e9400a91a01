"""/v1 commerce routes: merchants, API keys, buyers, orders, checkout sessions, payments,
shipments and the carriers' signed tracking webhooks (mounted by
``paykeep/api/routes/__init__.py``).

The routes are thin: each one authenticates, checks the body's shape (pydantic, no unknown
field, integers strict — a float amount is refused, never rounded), calls one use case of
:class:`~paykeep.payments.service.PaymentsService` with ``scope = owner_filter(principal)``,
and renders the object with its ``to_api()``. Another merchant's object is ``404
resource_missing`` exactly like an unknown id (the service raises it; the few reads of this
module do the same).

Secrets shown once, never replayed. A POST with an ``Idempotency-Key`` stores its response
so a retry gets the same answer — but a new merchant's API key, a new API key and a checkout
session's URL (whose last segment is the buyer's only credential) must not sit in plain text
in that table for 24 hours. So the stored response carries ``null`` in their place and only
the first response shows them:

- ``POST /v1/merchants`` creates the merchant in its transaction (stored with
  ``api_key: null``), and *after the commit* creates its first key with
  ``runtime.api_keys.create``. A replay returns the merchant without a second key; the
  operator makes another with ``POST /v1/api_keys`` if the first answer was lost (also if
  the process died between the commit and the key: the merchant then has no key yet).
- ``POST /v1/api_keys`` and ``.../revoke``: the key service writes through its own
  connection, which on SQLite cannot start while our transaction holds the write lock. The
  Idempotency-Key is therefore claimed in one transaction and completed in a second
  (``idempotency.claim`` / ``complete``, public for exactly this); a process that dies in
  between leaves the key "in flight" (``409 idempotency_key_in_use``) for 60 s, then a
  retry takes it over.
- ``POST /v1/checkout_sessions``: the session is stored with ``url: null``; a client that
  lost the answer creates a new session (the old one expires unused).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any, Final, Literal, TypeVar

import pydantic
import sqlalchemy as sa
from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.responses import Response

from paykeep.api.auth import CurrentPrincipal, OperatorPrincipal, owner_filter
from paykeep.api.errors import (
    JSON_MEDIA_TYPE,
    MerchantKeyRequired,
    OperatorOnly,
    ParameterInvalid,
    json_bytes,
    translate_validation_error,
)
from paykeep.api.idempotency import (
    IdempotencyMeta,
    IdempotentRequest,
    idempotent_response,
    result_response,
    run_claimed,
    run_idempotent,
)
from paykeep.api.pagination import (
    CURSOR_LENGTH_MAX,
    CURSOR_PATTERN,
    Page,
    PageParams,
    page_response,
)
from paykeep.api.runtime import Runtime, RuntimeDep, runtime_of
from paykeep.clock import NS_PER_S
from paykeep.errors import ResourceMissing
from paykeep.payments.errors import CarrierSignatureInvalid
from paykeep.payments.model import FeePlan, LineItem, OrderState, TimerSettings
from paykeep.payments.records import CheckoutSession, Order, Payment, Shipment
from paykeep.payments.service import NewMerchant, Tx
from paykeep.security.api_keys import ApiKeyNotFound, ApiKeyView

router = APIRouter()

T = TypeVar("T")

# -- limits and constants -------------------------------------------------------------------

#: Carrier webhook signatures: header name, how far ``t`` may be from our clock, how long the
#: header may be and how many ``v1`` signatures it may carry (several while a secret rotates).
SIGNATURE_HEADER: Final = "Paykeep-Signature"
SIGNATURE_TOLERANCE_S: Final = 5 * 60
SIGNATURE_HEADER_LENGTH_MAX: Final = 1_024
SIGNATURES_MAX: Final = 8
#: Unix seconds have at most this many digits for the next few thousand years.
TIMESTAMP_DIGITS_MAX: Final = 12
#: A tracking event may be stamped this far ahead of our clock (the sender's clock drifts), or
#: before the shipment was created (a label printed before it was registered). Further off is
#: refused: a "delivered" stamped in the past would start — and end — the buyer's confirmation
#: window early.
EVENT_CLOCK_SKEW_S: Final = 5 * 60
#: External ids of tracking events (the column is String(64)).
EXTERNAL_ID_LENGTH_MAX: Final = 64
#: Free-text fields are bounded here as a shape check; the service applies the exact bounds.
TEXT_LENGTH_MAX: Final = 500
#: Carrier names as the service registers them (anything else is an unknown carrier).
CARRIER_NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: HMAC'd instead of a real secret when the carrier is unknown, so both cost the same.
_UNKNOWN_CARRIER_SECRET: Final = "csec_unknown-carrier"  # noqa: S105 - never accepted
MERCHANT_KEY_LABEL: Final = "created with the merchant"


# -- dependencies and helpers ---------------------------------------------------------------

ObjectId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=CURSOR_LENGTH_MAX,
        pattern=CURSOR_PATTERN,
        description="The object's id.",
    ),
]
IdFilter = Annotated[
    str | None,
    Query(min_length=1, max_length=CURSOR_LENGTH_MAX, pattern=CURSOR_PATTERN),
]


def _json(
    status: int, document: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    return Response(json_bytes(document), status_code=status, headers=dict(headers or {}),
                    media_type=JSON_MEDIA_TYPE)  # fmt: skip


def _acting_merchant(principal: CurrentPrincipal) -> str:
    if principal.role != "merchant" or principal.merchant_id is None:
        raise MerchantKeyRequired("this route acts for a merchant: use the merchant's API key")
    return principal.merchant_id


def _read(runtime: Runtime, read: Callable[[Tx], T]) -> T:
    with runtime.payments.reading() as tx:
        return read(tx)


def _outside_transaction(
    runtime: Runtime,
    principal: CurrentPrincipal,
    idem: IdempotentRequest,
    effect: Callable[[], tuple[int, Mapping[str, Any], Mapping[str, Any]]],
) -> Response:
    """Idempotency for an effect that commits in its own transaction (the API key service):
    ``effect`` returns ``(status, stored, shown)`` — ``stored`` is what a replay answers (no
    secret), ``shown`` this first answer (``idempotency.run_claimed``)."""

    def as_bytes() -> tuple[int, bytes, bytes]:
        status, stored, shown = effect()
        return status, json_bytes(shown), json_bytes(stored)

    payments = runtime.payments
    return result_response(
        run_claimed(payments.transaction, principal, idem, as_bytes, clock=payments.clock)
    )


def _example(description: str, example: Mapping[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": example}}}


_MERCHANT_EXAMPLE: Final = {
    "id": "mer_0001a2b3c4d5e6f7", "object": "merchant", "legal_name": "Tea Leaf Emporium SARL",
    "country": "FR", "currency": "EUR", "payout_iban": "****2606", "payout_iban_verified": False,
    "fee_plan": {"percent_bp": 290, "fixed_minor": 30, "reserve_percent_bp": 0,
                 "reserve_hold_s": 7776000},
    "escrow_timers": {"unpaid_close_s": 1800, "ship_by_s": 432000,
                      "confirm_after_delivery_s": 604800, "confirm_after_shipping_s": 864000},
    "payment_reference": "PKM7K2M9QX4ZR", "created": 1767225600,
    "api_key": "sk_test_...",
}  # fmt: skip
_ORDER_EXAMPLE: Final = {
    "id": "ord_0001a2b3c4d5e6f8", "object": "order", "merchant": "mer_0001a2b3c4d5e6f7",
    "buyer": "buy_0001a2b3c4d5e6f9", "currency": "EUR", "amount_minor": 2500, "fee_minor": 0,
    "refunded_minor": 0, "released_minor": 0, "state": "created", "funding": None,
    "disputed": False, "timer": {"kind": "close_unpaid", "due": 1767227400},
    "description": None, "merchant_reference": "A-1001",
    "items": [{"description": "Green tea 250 g", "quantity": 2, "unit_amount_minor": 1250,
               "amount_minor": 2500}],
    "paid_at": None, "shipped_at": None, "delivered_at": None,
    "created": 1767225600, "updated": 1767225600,
}  # fmt: skip
_SESSION_EXAMPLE: Final = {
    "id": "cs_0001a2b3c4d5e6fa", "object": "checkout_session", "merchant": "mer_0001a2b3c4d5e6f7",
    "order": "ord_0001a2b3c4d5e6f8", "state": "open", "success_url": "https://shop.example/ok",
    "url": "https://pay.example/checkout/cs_...", "expires": 1767312000, "created": 1767225600,
}  # fmt: skip


# -- request bodies -------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


Text = Annotated[str, Field(max_length=TEXT_LENGTH_MAX)]
IdRef = Annotated[str, Field(min_length=1, max_length=CURSOR_LENGTH_MAX)]
EventKind = Literal["picked_up", "in_transit", "delivered", "returned"]


class FeePlanIn(_Body):
    """Fields left out keep their current (or default) value."""

    percent_bp: StrictInt | None = None
    fixed_minor: StrictInt | None = None
    reserve_percent_bp: StrictInt | None = None
    reserve_hold_s: StrictInt | None = None

    def applied_to(self, plan: FeePlan) -> FeePlan:
        return replace(plan, **self.model_dump(exclude_none=True))


class EscrowTimersIn(_Body):
    """Seconds; fields left out keep their current (or default) value."""

    unpaid_close_s: StrictInt | None = None
    ship_by_s: StrictInt | None = None
    confirm_after_delivery_s: StrictInt | None = None
    confirm_after_shipping_s: StrictInt | None = None

    def applied_to(self, timers: TimerSettings) -> TimerSettings:
        return replace(timers, **self.model_dump(exclude_none=True))


class MerchantCreate(_Body):
    legal_name: Text
    country: Text = Field(description="ISO 3166 alpha-2.")
    currency: Text | None = Field(None, description="ISO 4217; default: the platform's.")
    payout_iban: Text | None = None
    fee_plan: FeePlanIn | None = None
    escrow_timers: EscrowTimersIn | None = None


class MerchantUpdate(_Body):
    escrow_timers: EscrowTimersIn | None = None
    payout_iban: Text | None = Field(None, description="A new IBAN must be verified again.")
    fee_plan: FeePlanIn | None = Field(None, description="Operator only.")


class ApiKeyCreate(_Body):
    merchant: IdRef | None = Field(
        None, description="Required for the operator; a merchant's key creates its own."
    )
    label: Text | None = None


class BuyerCreate(_Body):
    name: Text
    email: Text


class OrderItemIn(_Body):
    description: Text
    quantity: StrictInt
    unit_amount_minor: StrictInt


class OrderCreate(_Body):
    buyer: IdRef
    items: list[OrderItemIn]
    currency: Text | None = Field(None, description="Default: the merchant's currency.")
    description: Text | None = None
    merchant_reference: Text | None = None


class ShipIn(_Body):
    carrier: Text
    tracking_number: Text


class CheckoutSessionCreate(_Body):
    order: IdRef
    success_url: Text | None = None


class ShipmentEventIn(_Body):
    kind: EventKind
    occurred_at: StrictInt | None = Field(None, description="Unix seconds; default: now.")
    external_id: str | None = Field(
        None, min_length=1, max_length=EXTERNAL_ID_LENGTH_MAX,
        description="Your id of this event: the same id again records nothing new.",
    )  # fmt: skip


class CarrierEventIn(_Body):
    tracking_number: Text
    kind: EventKind
    occurred_at: StrictInt | None = None
    event_id: str = Field(min_length=1, max_length=EXTERNAL_ID_LENGTH_MAX)


# -- pure parts -----------------------------------------------------------------------------


def carrier_signature(secret: str, timestamp_s: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``f"{t}.{body}"`` under the carrier's secret."""
    message = str(timestamp_s).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp_s: int, body: bytes) -> str:
    """The ``Paykeep-Signature`` value a carrier sends (for carriers' SDKs and the tests)."""
    return f"t={timestamp_s},v1={carrier_signature(secret, timestamp_s, body)}"


def verify_carrier_signature(header: str | None, body: bytes, secret: str, now_s: int) -> bool:
    """True when ``header`` carries a ``t`` within :data:`SIGNATURE_TOLERANCE_S` of ``now_s``
    and a ``v1`` that is the HMAC of ``t`` and the raw ``body``. Unknown schemes are ignored
    (room for a future ``v2``); anything malformed is False."""
    if header is None or len(header) > SIGNATURE_HEADER_LENGTH_MAX:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if name == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                return False
            if len(value) > TIMESTAMP_DIGITS_MAX:
                return False
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not 1 <= len(candidates) <= SIGNATURES_MAX:
        return False
    if abs(now_s - timestamp) > SIGNATURE_TOLERANCE_S:
        return False
    expected = carrier_signature(secret, timestamp, body).encode()
    valid = False
    for candidate in candidates:  # no early exit: every candidate costs the same
        valid |= hmac.compare_digest(expected, candidate.encode())
    return valid


def event_time_ns(occurred_at_s: int | None, shipment_created_ns: int, now_ns: int) -> int:
    """The tracking event's time: now by default; else within the shipment's life, give or
    take :data:`EVENT_CLOCK_SKEW_S` (see there)."""
    if occurred_at_s is None:
        return now_ns
    skew_ns = EVENT_CLOCK_SKEW_S * NS_PER_S
    occurred_ns = occurred_at_s * NS_PER_S
    if not shipment_created_ns - skew_ns <= occurred_ns <= now_ns + skew_ns:
        raise ParameterInvalid(
            "occurred_at is unix seconds between the shipment's creation and now",
            param="occurred_at",
        )
    return occurred_ns


def page_after(rows: Sequence[T], key: Callable[[T], str], page: PageParams) -> list[T]:
    """A page of an already ordered, bounded list (API keys: their ids are not time-ordered,
    so the list is paged in memory after the cursor, which must be one of its ids)."""
    start = 0
    if page.starting_after is not None:
        for index, row in enumerate(rows):
            if key(row) == page.starting_after:
                start = index + 1
                break
        else:
            raise ParameterInvalid(
                "starting_after is not an id of this list", param="starting_after"
            )
    return list(rows[start : start + page.fetch])


# -- small reads this module needs (the service has no use case for them) -----------------

_ORDER_ITEMS = sa.text(
    "SELECT order_id, description, quantity, unit_amount_minor FROM payments_order_items "
    "WHERE order_id IN :ids ORDER BY order_id, position"
).bindparams(sa.bindparam("ids", expanding=True))


def _with_items(tx: Tx, orders: list[Order]) -> list[Order]:
    """List rows come without their items: one query fetches them for the whole page."""
    if not orders:
        return orders
    items: dict[str, list[LineItem]] = {o.id: [] for o in orders}
    for row in tx.conn.execute(_ORDER_ITEMS, {"ids": list(items)}):
        items[row[0]].append(LineItem(row[1], int(row[2]), int(row[3])))
    return [replace(o, items=tuple(items[o.id])) for o in orders]


def _payment(tx: Tx, scope: str | None, payment_id: str) -> Payment:
    found = tx.repo.payment(payment_id)
    if found is None or (scope is not None and found.merchant_id != scope):
        raise ResourceMissing.of("payment", payment_id)
    return found


def _session(tx: Tx, scope: str | None, session_id: str) -> CheckoutSession:
    found = tx.repo.session(session_id)
    if found is None or (scope is not None and found.merchant_id != scope):
        raise ResourceMissing.of("checkout_session", session_id)
    return found


def _where(scope: str | None, **filters: str | None) -> dict[str, Any]:
    where: dict[str, Any] = {} if scope is None else {"merchant_id": scope}
    where.update({column: value for column, value in filters.items() if value is not None})
    return where


def _shipment_events(
    tx: Tx, shipment: Shipment, limit: int, starting_after: str | None
) -> list[dict[str, Any]]:
    sql = (
        "SELECT id, kind, source, external_id, occurred_at_ns, recorded_at_ns "
        "FROM payments_shipment_events WHERE shipment_id = :s"
        + (" AND id < :after" if starting_after is not None else "")
        + " ORDER BY id DESC LIMIT :limit"
    )
    rows = tx.conn.execute(
        sa.text(sql), {"s": shipment.id, "after": starting_after, "limit": limit}
    ).all()
    return [
        {
            "id": r[0],
            "object": "shipment_event",
            "shipment": shipment.id,
            "kind": r[1],
            "source": r[2],
            "external_id": r[3],
            "occurred_at": int(r[4]) // NS_PER_S,
            "recorded": int(r[5]) // NS_PER_S,
        }
        for r in rows
    ]


def _identity(document: dict[str, Any]) -> dict[str, Any]:
    return document


# -- merchants ------------------------------------------------------------------------------


@router.post(
    "/v1/merchants", tags=["merchants"], status_code=201,
    summary="Onboard a merchant (operator); the answer shows its first API key once.",
    description=(
        "Creates the merchant and, after its transaction commits, its first API key "
        "(`api_key`, shown in this response only). A replay of the same `Idempotency-Key` "
        "returns the merchant with `api_key: null` and creates no second key; create another "
        "with `POST /v1/api_keys` if the first answer was lost."
    ),
    responses={201: _example("The new merchant, with its API key", _MERCHANT_EXAMPLE)},
)  # fmt: skip
def create_merchant(
    body: MerchantCreate, principal: OperatorPrincipal, idem: IdempotencyMeta, runtime: RuntimeDep
) -> Response:
    payments = runtime.payments
    new = NewMerchant(
        legal_name=body.legal_name,
        country=body.country,
        currency=body.currency or runtime.config.currency,
        payout_iban=body.payout_iban,
        fees=body.fee_plan.applied_to(FeePlan()) if body.fee_plan else FeePlan(),
        timers=body.escrow_timers.applied_to(TimerSettings())
        if body.escrow_timers
        else TimerSettings(),
    )

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        return 201, {**payments.create_merchant(tx, new).to_api(), "api_key": None}

    result = run_idempotent(payments.transaction, principal, idem, operation, clock=payments.clock)
    if result.status != 201 or result.replayed:
        return result_response(result)
    document = json.loads(result.body)
    # After the commit: the key service writes through its own connection (see module doc).
    plain, _view = runtime.api_keys.create("merchant", document["id"], label=MERCHANT_KEY_LABEL)
    document["api_key"] = plain
    return _json(201, document)


@router.get("/v1/merchants", tags=["merchants"], summary="List merchants (operator), newest first.")
def list_merchants(principal: OperatorPrincipal, page: Page, runtime: RuntimeDep) -> Response:
    payments = runtime.payments
    rows = _read(runtime, lambda tx: payments.merchants(tx, page.fetch, page.starting_after))
    return page_response(page, rows, lambda m: m.to_api())


@router.get(
    "/v1/merchants/{merchant_id}", tags=["merchants"],
    summary="A merchant (the operator, or that merchant itself).",
)  # fmt: skip
def get_merchant(
    merchant_id: ObjectId, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    payments = runtime.payments
    scope = owner_filter(principal)
    merchant = _read(runtime, lambda tx: payments.merchant(tx, scope, merchant_id))
    return _json(200, merchant.to_api())


@router.post(
    "/v1/merchants/{merchant_id}", tags=["merchants"],
    summary="Update a merchant: escrow timers, payout IBAN; the fee plan (operator only).",
    description=(
        "Only the fields sent change (inside `escrow_timers` and `fee_plan` too). A new "
        "`payout_iban` is unverified until the operator verifies it again. A merchant sending "
        "`fee_plan` gets `403 operator_only`."
    ),
)  # fmt: skip
def update_merchant(
    merchant_id: ObjectId,
    body: MerchantUpdate,
    principal: CurrentPrincipal,
    idem: IdempotencyMeta,
    runtime: RuntimeDep,
) -> Response:
    payments = runtime.payments
    scope = owner_filter(principal)

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        current = payments.merchant(tx, scope, merchant_id)  # 404 first: never reveal more
        if body.fee_plan is not None and scope is not None:
            raise OperatorOnly("only the operator changes a fee plan", param="fee_plan")
        updated = payments.update_merchant(
            tx, scope, merchant_id,
            timers=body.escrow_timers.applied_to(current.timers) if body.escrow_timers else None,
            fees=body.fee_plan.applied_to(current.fees) if body.fee_plan else None,
            payout_iban=body.payout_iban,
        )  # fmt: skip
        return 200, updated.to_api()

    return idempotent_response(payments.transaction, principal, idem, operation)


@router.post(
    "/v1/merchants/{merchant_id}/verify_payout_iban", tags=["merchants"],
    summary="Confirm the merchant's payout IBAN is theirs (operator, after KYB).",
)  # fmt: skip
def verify_payout_iban(
    merchant_id: ObjectId, principal: OperatorPrincipal, idem: IdempotencyMeta, runtime: RuntimeDep
) -> Response:
    payments = runtime.payments
    return idempotent_response(
        payments.transaction, principal, idem,
        lambda tx: (200, payments.verify_payout_iban(tx, merchant_id).to_api()),
    )  # fmt: skip


# -- API keys -------------------------------------------------------------------------------


def _api_key_document(view: ApiKeyView, secret: str | None) -> dict[str, Any]:
    return {**view.as_api(), "secret": secret}


@router.post(
    "/v1/api_keys", tags=["api_keys"], status_code=201,
    summary="Create a merchant API key (operator: for `merchant`; merchant: for itself).",
    description=(
        "`secret` (the key) is in this response only; a replay of the same `Idempotency-Key` "
        "answers the key's description with `secret: null`."
    ),
)  # fmt: skip
def create_api_key(
    body: ApiKeyCreate, principal: CurrentPrincipal, idem: IdempotencyMeta, runtime: RuntimeDep
) -> Response:
    payments = runtime.payments
    scope = owner_filter(principal)

    def effect() -> tuple[int, dict[str, Any], dict[str, Any]]:
        merchant_id = body.merchant if scope is None else (body.merchant or scope)
        if merchant_id is None:
            raise ParameterInvalid("merchant: the merchant the key is for", param="merchant")
        try:
            # Another merchant's id and an unknown id fail here alike (scope check first).
            _read(runtime, lambda tx: payments.merchant(tx, scope, merchant_id))
        except ResourceMissing as missing:
            raise ResourceMissing(missing.message, param="merchant") from None
        plain, view = runtime.api_keys.create("merchant", merchant_id, label=body.label)
        return 201, _api_key_document(view, None), _api_key_document(view, plain)

    return _outside_transaction(runtime, principal, idem, effect)


@router.get(
    "/v1/api_keys", tags=["api_keys"],
    summary="List API keys, newest first, revoked ones too (a merchant: its own).",
    description=(
        "The operator lists the keys of `merchant`, or without it the operator keys. The "
        "cursor `starting_after` must be the id of a key of this list."
    ),
)  # fmt: skip
def list_api_keys(
    principal: CurrentPrincipal,
    page: Page,
    runtime: RuntimeDep,
    merchant: IdFilter = None,
) -> Response:
    scope = owner_filter(principal)
    if scope is not None and merchant is not None and merchant != scope:
        rows: list[ApiKeyView] = []
    else:
        rows = page_after(runtime.api_keys.list(scope or merchant), lambda v: v.id, page)
    return page_response(page, rows, lambda v: v.as_api())


def _api_key(runtime: Runtime, scope: str | None, key_id: str) -> ApiKeyView:
    try:
        return runtime.api_keys.get(key_id, merchant_id=scope)
    except ApiKeyNotFound:
        raise ResourceMissing.of("api_key", key_id) from None


@router.get("/v1/api_keys/{key_id}", tags=["api_keys"], summary="An API key (never its secret).")
def get_api_key(key_id: ObjectId, principal: CurrentPrincipal, runtime: RuntimeDep) -> Response:
    return _json(200, _api_key(runtime, owner_filter(principal), key_id).as_api())


@router.post(
    "/v1/api_keys/{key_id}/revoke", tags=["api_keys"],
    summary="Revoke an API key (idempotent); every process refuses it within 2 s.",
)  # fmt: skip
def revoke_api_key(
    key_id: ObjectId, principal: CurrentPrincipal, idem: IdempotencyMeta, runtime: RuntimeDep
) -> Response:
    scope = owner_filter(principal)

    def effect() -> tuple[int, dict[str, Any], dict[str, Any]]:
        try:
            view = runtime.api_keys.revoke(key_id, merchant_id=scope)
        except ApiKeyNotFound:
            raise ResourceMissing.of("api_key", key_id) from None
        return 200, view.as_api(), view.as_api()

    return _outside_transaction(runtime, principal, idem, effect)


# -- buyers ---------------------------------------------------------------------------------


@router.post(
    "/v1/buyers", tags=["buyers"], status_code=201,
    summary="Create a buyer (owned by the calling merchant; none for the operator).",
    description=(
        "The buyer's name and email are stored encrypted; the answer shows the email masked. "
        "Bank transfers to the platform's account that carry the buyer's `payment_reference` "
        "credit the buyer's wallet in the platform's currency."
    ),
)  # fmt: skip
def create_buyer(
    body: BuyerCreate, principal: CurrentPrincipal, idem: IdempotencyMeta, runtime: RuntimeDep
) -> Response:
    payments = runtime.payments
    scope = owner_filter(principal)
    result = run_idempotent(
        payments.transaction, principal, idem,
        lambda tx: (201, payments.create_buyer(tx, scope, body.name, body.email).to_api()),
        clock=payments.clock,
    )  # fmt: skip
    if result.status == 201:
        # After the commit (it writes in its own transactions). On a replay too: registering
        # is idempotent, and it completes a first attempt that died before this line.
        # The currency is the safeguarding account's: transfers can arrive in it only.
        buyer_id = json.loads(result.body)["id"]
        buyer = _read(runtime, lambda tx: payments.buyer(tx, None, buyer_id))
        payments.register_topup_reference(buyer, runtime.config.currency)
    return result_response(result)


@router.get("/v1/buyers", tags=["buyers"], summary="List buyers, newest first.")
def list_buyers(principal: CurrentPrincipal, page: Page, runtime: RuntimeDep) -> Response:
    payments = runtime.payments
    scope = owner_filter(principal)
    rows = _read(runtime, lambda tx: payments.buyers(tx, scope, page.fetch, page.starting_after))
    return page_response(page, rows, lambda b: b.to_api())


@router.get("/v1/buyers/{buyer_id}", tags=["buyers"], summary="A buyer.")
def get_buyer(buyer_id: ObjectId, principal: CurrentPrincipal, runtime: RuntimeDep) -> Response:
    payments = runtime.payments
    scope = owner_filter(principal)
    return _json(200, _read(runtime, lambda tx: payments.buyer(tx, scope, buyer_id)).to_api())


@router.post(
    "/v1/buyers/{buyer_id}/sessions/end", tags=["buyers"],
    summary="End every sign-in session of a buyer (operator).",
    description=(
        "The buyer must sign in again with a new emailed code before paying from their "
        "wallet, confirming receipt or withdrawing a refund request — e.g. after they "
        "reported their mailbox compromised. `ended` is how many sessions ended (0 when "
        "there were none). Merchants cannot do this: ending sessions again and again would "
        "keep a buyer from confirming receipt."
    ),
)  # fmt: skip
def end_buyer_sessions(
    buyer_id: ObjectId, principal: OperatorPrincipal, idem: IdempotencyMeta, runtime: RuntimeDep
) -> Response:
    payments = runtime.payments

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        ended = payments.end_buyer_sessions(tx, buyer_id)
        return 200, {"object": "buyer_sessions_ended", "buyer": buyer_id, "ended": ended}

    return idempotent_response(payments.transaction, principal, idem, operation)


# -- orders ---------------------------------------------------------------------------------


@router.post(
    "/v1/orders", tags=["orders"], status_code=201,
    summary="Create an order for one of your buyers (merchant).",
    description=(
        "The amount is the sum of the items (integers of minor units). The order waits for "
        "payment (`created`) until its unpaid timer closes it; send the buyer to a checkout "
        "session to pay."
    ),
    responses={201: _example("The new order", _ORDER_EXAMPLE)},
)  # fmt: skip
def create_order(
    body: OrderCreate, principal: CurrentPrincipal, idem: IdempotencyMeta, runtime: RuntimeDep
) -> Response:
    payments = runtime.payments
    merchant_id = _acting_merchant(principal)
    items = [LineItem(i.description, i.quantity, i.unit_amount_minor) for i in body.items]

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        order = payments.create_order(
            tx, merchant_id, body.buyer, items, currency=body.currency,
            description=body.description, merchant_reference=body.merchant_reference,
        )  # fmt: skip
        return 201, order.to_api()

    return idempotent_response(payments.transaction, principal, idem, operation)


@router.get("/v1/orders", tags=["orders"], summary="List orders, newest first.")
def list_orders(
    principal: CurrentPrincipal,
    page: Page,
    runtime: RuntimeDep,
    state: Annotated[OrderState | None, Query(description="Only orders in this state.")] = None,
    buyer: IdFilter = None,
) -> Response:
    payments = runtime.payments
    scope = owner_filter(principal)

    def read(tx: Tx) -> list[Order]:
        rows = payments.orders(
            tx, scope, page.fetch, page.starting_after,
            state=None if state is None else state.value, buyer_id=buyer,
        )  # fmt: skip
        return _with_items(tx, rows)

    return page_response(page, _read(runtime, read), lambda o: o.to_api())


@router.get("/v1/orders/{order_id}", tags=["orders"], summary="An order.")
def get_order(order_id: ObjectId, principal: CurrentPrincipal, runtime: RuntimeDep) -> Response:
    payments = runtime.payments
    scope = owner_filter(principal)
    return _json(200, _read(runtime, lambda tx: payments.order(tx, scope, order_id)).to_api())


@router.post(
    "/v1/orders/{order_id}/ship", tags=["orders"],
    summary="Ship a paid order: the answer is the order with its new `shipment`.",
    description=(
        "The order moves from `awaiting_shipment` to `awaiting_receipt`; its timer becomes "
        "`confirm_after_shipping`, and `confirm_after_delivery` once the shipment is delivered."
    ),
)  # fmt: skip
def ship_order(
    order_id: ObjectId,
    body: ShipIn,
    principal: CurrentPrincipal,
    idem: IdempotencyMeta,
    runtime: RuntimeDep,
) -> Response:
    payments = runtime.payments
    scope = owner_filter(principal)

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        order, shipment = payments.ship(tx, scope, order_id, body.carrier, body.tracking_number)
        return 200, {**order.to_api(), "shipment": shipment.to_api()}

    return idempotent_response(payments.transaction, principal, idem, operation)


@router.post(
    "/v1/orders/{order_id}/confirm", tags=["orders"],
    summary="Confirm receipt and release the money (operator; buyers use their checkout page).",
)  # fmt: skip
def confirm_order(
    order_id: ObjectId, principal: OperatorPrincipal, idem: IdempotencyMeta, runtime: RuntimeDep
) -> Response:
    payments = runtime.payments
    return idempotent_response(
        payments.transaction, principal, idem,
        lambda tx: (200, payments.confirm(tx, order_id).to_api()),
    )  # fmt: skip


# -- checkout sessions ----------------------------------------------------------------------


@router.post(
    "/v1/checkout_sessions", tags=["checkout_sessions"], status_code=201,
    summary="A checkout session for an unpaid order (merchant): send the buyer to its `url`.",
    description=(
        "The `url` holds the session's secret token: it is in this response only (the token "
        "is stored as a hash). A replay of the same `Idempotency-Key` answers `url: null`; "
        "create a new session if the answer was lost."
    ),
    responses={201: _example("The new session", _SESSION_EXAMPLE)},
)  # fmt: skip
def create_checkout_session(
    body: CheckoutSessionCreate,
    principal: CurrentPrincipal,
    idem: IdempotencyMeta,
    runtime: RuntimeDep,
) -> Response:
    payments = runtime.payments
    merchant_id = _acting_merchant(principal)
    url: list[str] = []

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        session, token = payments.create_checkout_session(
            tx, merchant_id, body.order, body.success_url
        )
        url[:] = [f"{runtime.config.public_url}/checkout/{token}"]
        return 201, session.to_api()

    result = run_idempotent(payments.transaction, principal, idem, operation, clock=payments.clock)
    if result.status != 201 or result.replayed:
        return result_response(result)
    return _json(201, {**json.loads(result.body), "url": url[0]})


@router.get(
    "/v1/checkout_sessions", tags=["checkout_sessions"],
    summary="List checkout sessions, newest first (never their URL).",
)  # fmt: skip
def list_checkout_sessions(
    principal: CurrentPrincipal, page: Page, runtime: RuntimeDep, order: IdFilter = None
) -> Response:
    where = _where(owner_filter(principal), order_id=order)
    rows = _read(runtime, lambda tx: tx.repo.sessions(where, page.fetch, page.starting_after))
    return page_response(page, rows, lambda s: s.to_api())


@router.get(
    "/v1/checkout_sessions/{session_id}", tags=["checkout_sessions"],
    summary="A checkout session (never its URL).",
)  # fmt: skip
def get_checkout_session(
    session_id: ObjectId, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    scope = owner_filter(principal)
    return _json(200, _read(runtime, lambda tx: _session(tx, scope, session_id)).to_api())


# -- payments -------------------------------------------------------------------------------


@router.get("/v1/payments", tags=["payments"], summary="List payment attempts, newest first.")
def list_payments(
    principal: CurrentPrincipal, page: Page, runtime: RuntimeDep, order: IdFilter = None
) -> Response:
    where = _where(owner_filter(principal), order_id=order)
    rows = _read(runtime, lambda tx: tx.repo.payments(where, page.fetch, page.starting_after))
    return page_response(page, rows, lambda p: p.to_api())


@router.get("/v1/payments/{payment_id}", tags=["payments"], summary="A payment attempt.")
def get_payment(payment_id: ObjectId, principal: CurrentPrincipal, runtime: RuntimeDep) -> Response:
    scope = owner_filter(principal)
    return _json(200, _read(runtime, lambda tx: _payment(tx, scope, payment_id)).to_api())


# -- shipments ------------------------------------------------------------------------------


@router.get("/v1/shipments", tags=["shipments"], summary="List shipments, newest first.")
def list_shipments(
    principal: CurrentPrincipal, page: Page, runtime: RuntimeDep, order: IdFilter = None
) -> Response:
    where = _where(owner_filter(principal), order_id=order)
    rows = _read(runtime, lambda tx: tx.repo.shipments(where, page.fetch, page.starting_after))
    return page_response(page, rows, lambda s: s.to_api())


@router.get("/v1/shipments/{shipment_id}", tags=["shipments"], summary="A shipment.")
def get_shipment(
    shipment_id: ObjectId, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    payments = runtime.payments
    scope = owner_filter(principal)
    found = _read(runtime, lambda tx: payments.shipment(tx, scope, shipment_id))
    return _json(200, found.to_api())


@router.get(
    "/v1/shipments/{shipment_id}/events", tags=["shipments"],
    summary="A shipment's tracking events (merchant's and carrier's), newest first.",
)  # fmt: skip
def list_shipment_events(
    shipment_id: ObjectId, principal: CurrentPrincipal, page: Page, runtime: RuntimeDep
) -> Response:
    payments = runtime.payments
    scope = owner_filter(principal)

    def read(tx: Tx) -> list[dict[str, Any]]:
        shipment = payments.shipment(tx, scope, shipment_id)
        return _shipment_events(tx, shipment, page.fetch, page.starting_after)

    return page_response(page, _read(runtime, read), _identity)


@router.post(
    "/v1/shipments/{shipment_id}/events", tags=["shipments"],
    summary="Record a tracking event of your shipment (merchant).",
    description=(
        "`delivered` starts the buyer's confirmation window (`confirm_after_delivery`) from "
        "`occurred_at`, which must lie between the shipment's creation and now (5 minutes of "
        "clock skew allowed). The same `external_id` again records nothing new. A shipment's "
        "state only moves forward; an older event is recorded without changing it."
    ),
)  # fmt: skip
def create_shipment_event(
    shipment_id: ObjectId,
    body: ShipmentEventIn,
    principal: CurrentPrincipal,
    idem: IdempotencyMeta,
    runtime: RuntimeDep,
) -> Response:
    payments = runtime.payments
    merchant_id = _acting_merchant(principal)

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        shipment = payments.shipment(tx, merchant_id, shipment_id)
        occurred_ns = event_time_ns(body.occurred_at, shipment.created_at_ns, tx.now_ns)
        shipment = payments.shipment_event(
            tx, shipment, body.kind, source="merchant", external_id=body.external_id,
            occurred_at_ns=occurred_ns,
        )  # fmt: skip
        return 200, shipment.to_api()

    return idempotent_response(payments.transaction, principal, idem, operation)


# -- carrier webhooks -----------------------------------------------------------------------

_CARRIER_DESCRIPTION: Final = f"""\
A carrier posts tracking events of the shipments it carries. Not authenticated with an API
key: each request is signed with the carrier's secret (given once when the carrier is
registered).

Header `{SIGNATURE_HEADER}: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>`
— the HMAC covers the exact bytes of the body, prefixed with the timestamp and a dot. The
signature is checked before the body is parsed: `t` must be within {SIGNATURE_TOLERANCE_S} s of
our clock (a captured request cannot be replayed later), digests are compared in constant
time, and several `v1` values may be sent while a secret rotates (one must match). An unknown
carrier and a bad signature get the same answer: `401 carrier_signature_invalid`.

Body: `{{tracking_number, kind, occurred_at?, event_id}}` with `kind` one of picked_up,
in_transit, delivered, returned. The event applies to this carrier's shipment with that
tracking number; `event_id` makes it idempotent (a replayed event records nothing new).
`delivered` starts the buyer's confirmation window.
"""


def _carrier_event(runtime: Runtime, carrier: str, header: str | None, raw: bytes) -> Response:
    payments = runtime.payments
    secret = None
    if CARRIER_NAME_PATTERN.fullmatch(carrier):
        secret = _read(runtime, lambda tx: payments.carrier_secret(tx, carrier))
    now_s = payments.clock.now_ns() // NS_PER_S
    valid = verify_carrier_signature(header, raw, secret or _UNKNOWN_CARRIER_SECRET, now_s)
    if secret is None or not valid:
        raise CarrierSignatureInvalid("unknown carrier or invalid signature")
    try:
        event = CarrierEventIn.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        raise translate_validation_error(RequestValidationError(exc.errors())) from None
    with payments.transaction() as tx:
        shipment = tx.repo.shipment_by_tracking(carrier, event.tracking_number)
        if shipment is None:
            raise ResourceMissing(
                "no shipment of this carrier has this tracking number", param="tracking_number"
            )
        occurred_ns = event_time_ns(event.occurred_at, shipment.created_at_ns, tx.now_ns)
        shipment = payments.shipment_event(
            tx, shipment, event.kind, source="carrier", external_id=event.event_id,
            occurred_at_ns=occurred_ns,
        )  # fmt: skip
    receipt = {"object": "carrier_event", "event_id": event.event_id,
               "tracking_number": shipment.tracking_number, "state": shipment.state}  # fmt: skip
    return _json(200, receipt)


@router.post(
    "/v1/carriers/{carrier}/events", tags=["carriers"],
    summary="A carrier's signed tracking event (no API key: HMAC signature).",
    description=_CARRIER_DESCRIPTION,
    responses={
        200: _example("Received (also for a replayed event_id)", {
            "object": "carrier_event", "event_id": "evt_123", "tracking_number": "DP123456789",
            "state": "delivered"}),
    },
    openapi_extra={
        "parameters": [{
            "name": SIGNATURE_HEADER, "in": "header", "required": True,
            "schema": {"type": "string"}, "description": "t=<unix>,v1=<hex HMAC-SHA256>",
        }],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": CarrierEventIn.model_json_schema()}},
        },
    },
)  # fmt: skip
async def carrier_event(carrier: str, request: Request) -> Response:
    # async to read the raw body (the signature covers its exact bytes); the database work
    # goes to the thread pool like the plain-def routes.
    raw = await request.body()
    runtime = await runtime_of(request)
    header = request.headers.get(SIGNATURE_HEADER)
    return await run_in_threadpool(_carrier_event, runtime, carrier, header, raw)


__all__ = [
    "CARRIER_NAME_PATTERN",
    "EVENT_CLOCK_SKEW_S",
    "SIGNATURE_HEADER",
    "SIGNATURE_TOLERANCE_S",
    "CarrierEventIn",
    "MerchantKeyRequired",
    "carrier_signature",
    "event_time_ns",
    "page_after",
    "router",
    "signature_header",
    "verify_carrier_signature",
]
