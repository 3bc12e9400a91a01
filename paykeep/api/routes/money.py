"""/v1 routes where money moves or is shown: the buyer's checkout API, refunds, disputes,
payouts, buyers' withdrawals, balances, the ledger (read-only), events and webhook endpoints.

**The buyer has no API key.** The checkout token of the session URL (``cs_...``) names the
checkout in ``/v1/checkout/{token}/...``: an unknown token is ``404 resource_missing``, and
the token reaches only its own order. The merchant that created the session holds the token
too, so it is not proof that the *buyer* acts: paying from the buyer's wallet, ``confirm``,
``refunds/{id}/cancel`` and ``withdrawals`` also need ``Paykeep-Buyer-Session: bs_...``, a
live session of the order's buyer, obtained with ``sign_in`` (a 6-digit code mailed to the
buyer) and ``sign_in/verify``. Without one (or with an expired one, or another buyer's) they
answer ``401 buyer_authentication_required`` and change nothing. The route checks it before the
``Idempotency-Key`` is claimed — a 401 is never stored, so the buyer's retry with the header
and the same key runs — and the use case checks it again inside its transaction
(:meth:`PaymentsService.pay_from_wallet` and friends), so no other entry point bypasses it.
``sign_in`` and ``sign_in/verify`` go through :func:`_run_once` (the mail is sent, and a wrong
code's attempt committed, outside the key's transaction); a replayed ``verify`` answers
``buyer_session: null`` (a credential is never in a replayable body).

Idempotency records of these routes are scoped by the checkout session
(:func:`_buyer_principal`) and store a path naming the session id, never the token; their
fingerprint is keyed (HMAC under the field-encryption key, :func:`_buyer_request`), because the
card route's body holds a card number and a plain hash of it could be reversed.

**Two kinds of POST.** A use case that takes the caller's transaction (refunds, disputes,
confirm, wallet payment...) runs in ``idempotent_response``: its effect and the
``Idempotency-Key`` record commit together. Five use cases commit their own transactions
because a network call or another service sits in the middle: the card payment (the card
network), payouts and buyers' withdrawals (the payout gateway), webhook endpoints and event
replays (the webhook service's database writes). They go through :func:`_run_once`: the key
is claimed in one transaction (an in-flight record), the use case runs, and its answer is
stored in a second one. What that gives, and what it cannot:

- a retry after the answer was stored replays it (``Idempotent-Replayed: true``), a retry
  with another body is ``409 idempotency_key_reused``, a retry while the first request still
  runs is ``409 idempotency_key_in_use`` — so one key never charges a card twice;
- a typed 4xx (a decline included) is stored and replayed; a typed 5xx (the card network was
  unreachable and the payment was reversed) releases the key so that the retry runs afresh;
- a crash between the use case and the second transaction leaves the record in flight; after
  ``IDEMPOTENCY_IN_FLIGHT_TIMEOUT_S`` (60 s) a retry takes the key over and runs the use case
  again. For cards that is safe: ``recover_card_payments`` (every escrow pass, for payments
  older than 30 s) has by then finished the first payment, so a paid order refuses the retry
  (``409 illegal_transition``); the order state is what makes card retries safe, with or
  without a key. Payouts and withdrawals are idempotent in the domain (``request_id`` = the
  key). An endpoint creation or replay may happen twice in that one case.

Card numbers and security codes are never logged, stored (the vault tokenizes the number) or
echoed: the request model holds them as ``SecretStr`` and no response carries more than the
brand and last four digits. Declines answer ``402`` with ``{"error": {"type": "card_error",
"code": "card_declined", "decline_code", "message"}}`` in words for the buyer.

Ownership: merchants see their own objects; another merchant's object answers exactly like an
unknown id. Ledger transfers are visible to a merchant when they touch one of its accounts
(``merchant:<id>:...``).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Annotated, Any, Final, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Body, Header, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictBool, StrictInt
from starlette.responses import Response

from paykeep.api.auth import CurrentPrincipal, OperatorPrincipal, check_owner, missing, owner_filter
from paykeep.api.errors import (
    JSON_MEDIA_TYPE,
    MerchantKeyRequired,
    error_document,
    error_headers,
    json_bytes,
)
from paykeep.api.idempotency import (
    REPLAYED_HEADER,
    ClaimedEffect,
    IdempotencyMeta,
    IdempotentRequest,
    idempotent_response,
    result_response,
    run_claimed,
)
from paykeep.api.pagination import CURSOR_PATTERN, Page, PageParams, page_response
from paykeep.api.runtime import Runtime, RuntimeDep
from paykeep.clock import NS_PER_S
from paykeep.errors import PaykeepError
from paykeep.gateway.cards.errors import CardSecurityCodeInvalid
from paykeep.gateway.vault.model import check_expiry, check_pan
from paykeep.ledger.errors import AccountNotFound, InvalidCursor, TransferNotFound
from paykeep.ledger.model import Transfer, TransferFlags
from paykeep.limits import ID_MAX
from paykeep.payments.buyer_auth import (
    BUYER_CODE_DIGITS,
    BUYER_SESSION_CHARS_MAX,
    BUYER_SESSION_HEADER,
)
from paykeep.payments.errors import PaymentDeclined
from paykeep.payments.model import BASIS_POINTS, RefundAction
from paykeep.payments.records import CheckoutSession, Order, Payment
from paykeep.payments.service import (
    BUYER_SIGNED_IN_REFUND_ACTIONS,
    REASON_MAX,
    CheckoutView,
    Tx,
)
from paykeep.payments.withdrawals import WITHDRAWAL_AMOUNT_MAX_MINOR
from paykeep.security.api_keys import Principal
from paykeep.workers.webhook_model import ENDPOINTS_PER_MERCHANT_MAX, PAGE_SIZE_MAX

router = APIRouter()

#: Refund requests shown on the buyer's checkout view (newest first).
CHECKOUT_REFUNDS_SHOWN_MAX: Final = 20
CARD_NUMBER_LENGTH_MIN: Final = 12
CARD_NUMBER_LENGTH_MAX: Final = 19
CVC_PATTERN: Final = r"^[0-9]{3,4}$"
CARRIER_LENGTH_MAX: Final = 64
TRACKING_LENGTH_MAX: Final = 64
#: A ledger transfer id in a path or cursor: a positive 63-bit integer in decimal.
LEDGER_TRANSFER_ID_PATTERN: Final = r"^[1-9][0-9]{0,18}$"
LEDGER_ACCOUNT_NAME_LENGTH_MAX: Final = 128
EVENT_TYPE_LENGTH_MAX: Final = 64
EVENT_TYPE_PATTERN: Final = r"^[a-z_]+(\.[a-z_]+)*$"
WEBHOOK_URL_LENGTH_MAX: Final = 500
#: ``request_id`` of a payout without an Idempotency-Key: a fresh random id of this many bytes.
PAYOUT_REQUEST_ID_RANDOM_BYTES: Final = 16
#: The purpose label of the keyed fingerprint of buyer requests (see the module doc).
_BUYER_FINGERPRINT_PURPOSE: Final = "idempotency.checkout"
ID_MAX_LENGTH: Final = 40

IdPath = Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=CURSOR_PATTERN)]
TokenPath = Annotated[
    str,
    Path(
        description="The checkout token: the last segment of the checkout session's URL. "
        "Any unknown or malformed token is `404 resource_missing`.",
    ),
]

#: The buyer's proof of presence on the three moves a merchant holding the token must not make.
BuyerSessionHeader = Annotated[
    str | None,
    Header(
        alias=BUYER_SESSION_HEADER,
        max_length=BUYER_SESSION_CHARS_MAX,
        description="A live buyer session of this checkout's buyer (`bs_...`, from "
        "`POST /v1/checkout/{token}/sign_in/verify`). Missing, unknown, expired or another "
        "buyer's: `401 buyer_authentication_required`.",
    ),
]
_SIGNED_IN_NOTE: Final = (
    " **Needs the buyer signed in**: header `Paykeep-Buyer-Session: bs_...` naming a live "
    "session of this checkout's buyer (`POST /v1/checkout/{token}/sign_in`, then "
    "`.../sign_in/verify` with the code emailed to the buyer). The checkout token alone is "
    "not enough — the merchant holds it too. Without a session (or with an expired one, or "
    "another buyer's): `401 buyer_authentication_required` and nothing changes."
)


# -- errors of this module (``merchant_key_required`` is commerce's) --------------------------


class WebhookMerchantRequired(PaykeepError):
    """The operator lists one merchant's webhook endpoints at a time (``merchant=``)."""

    code = "webhook_merchant_required"
    type = "invalid_request"


def _merchant_of(principal: Principal) -> str:
    if principal.role != "merchant" or principal.merchant_id is None:
        raise MerchantKeyRequired("this route needs a merchant API key")
    return principal.merchant_id


# -- request bodies -------------------------------------------------------------------------


class CardIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: SecretStr = Field(
        min_length=CARD_NUMBER_LENGTH_MIN,
        max_length=CARD_NUMBER_LENGTH_MAX,
        description="The card number (digits only). Never stored, logged or returned.",
    )
    exp_month: StrictInt = Field(ge=1, le=12)
    exp_year: StrictInt = Field(ge=2000, le=2099, description="Four digits.")
    cvc: SecretStr = Field(
        min_length=3, max_length=4, description="Used for the authorisation only, never stored."
    )


class PayByCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["card"]
    card: CardIn


class PayFromWallet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["wallet"]


class PayByBankTransfer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["bank_transfer"]


PayIn = Annotated[PayByCard | PayFromWallet | PayByBankTransfer, Field(discriminator="method")]


class SignOutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    everywhere: StrictBool = Field(
        False,
        description="End every session of this buyer, not only the one in the header "
        "(e.g. after the code mail was seen by someone else).",
    )


class VerifyCodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(
        min_length=BUYER_CODE_DIGITS,
        max_length=BUYER_CODE_DIGITS,
        pattern=rf"^[0-9]{{{BUYER_CODE_DIGITS}}}$",
        description="The 6-digit code emailed to the buyer.",
    )


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_minor: StrictInt | None = Field(
        default=None, ge=1, description="Minor units; omitted: the whole order."
    )
    reason: str | None = Field(default=None, max_length=REASON_MAX)


class ShipReturnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    carrier: str = Field(min_length=1, max_length=CARRIER_LENGTH_MAX)
    tracking_number: str = Field(min_length=1, max_length=TRACKING_LENGTH_MAX)


class AgreeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    return_required: StrictBool = Field(
        default=False,
        description="True: the buyer ships the goods back first; the money moves when the "
        "merchant receives them. False: the money moves now.",
    )


class DecideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    buyer_share_bp: StrictInt = Field(
        ge=0, le=BASIS_POINTS, description="The buyer's share in basis points (0-10000)."
    )
    note: str | None = Field(default=None, max_length=REASON_MAX)


class PayoutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_minor: StrictInt = Field(ge=1)


class WithdrawalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_minor: StrictInt = Field(
        ge=1, le=WITHDRAWAL_AMOUNT_MAX_MINOR, description="Minor units of the wallet's currency."
    )
    currency: str = Field(
        min_length=3, max_length=3, pattern=r"^[A-Z]{3}$", description="The wallet's currency."
    )
    destination: Literal["source_bank_account", "source_card"] = Field(
        default="source_bank_account",
        description="Where the money goes back to: the bank account it came from "
        "(`source_bank_account`, the default) or the cards that paid in (`source_card`: refunds "
        "to this buyer's card payments in the currency, newest first, each at most what that "
        "payment has left to refund). The same word as the answer's `destination.type`.",
    )
    source_topup: str | None = Field(
        default=None,
        max_length=ID_MAX_LENGTH,
        pattern=CURSOR_PATTERN,
        description="`source_bank_account` only: the top-up (`top_...`, one of this buyer's, "
        "credited) whose sending bank account receives the money. Omitted: the newest "
        "credited top-up whose sending IBAN the bank statement named.",
    )


class WebhookEndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=WEBHOOK_URL_LENGTH_MAX)
    event_types: list[str] | None = Field(
        default=None, description="Omitted or ['*']: every event type."
    )


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str | None = Field(
        default=None,
        max_length=ID_MAX_LENGTH,
        description="One endpoint; omitted: every enabled endpoint subscribed to the type.",
    )


# -- responses ------------------------------------------------------------------------------


def _json(status: int, body: bytes, *, replayed: bool = False) -> Response:
    headers: dict[str, str] = {REPLAYED_HEADER: "true"} if replayed else {}
    if status >= 400:
        headers.update(error_headers(status))
    return Response(body, status_code=status, headers=headers, media_type=JSON_MEDIA_TYPE)


def _ok(document: Any) -> Response:
    return Response(json_bytes(document), media_type=JSON_MEDIA_TYPE)


def card_error_body(error: PaymentDeclined, request_id: str | None) -> bytes:
    """The decline in the one error shape, plus ``decline_code`` (Stripe's ``card_error``)."""
    document = error_document(
        type_=error.type,
        code=error.code,
        message=error.message,
        param=error.param,
        request_id=request_id,
    )
    document["error"]["decline_code"] = error.decline_code
    return json_bytes(document)


#: HTTP status of a decline: "request failed" (valid, understood, refused by the card's bank).
CARD_DECLINED_STATUS: Final = 402


def _list(params: PageParams, data: Sequence[Any], has_more: bool) -> Response:
    return _ok({"object": "list", "data": list(data), "has_more": has_more, "url": params.url})


_ERROR_REF: Final = {"$ref": "#/components/schemas/Error"}


def _error_example(status: int, code: str, message: str, **extra: str) -> dict[int | str, Any]:
    error = {"type": "…", "code": code, "message": message, "param": None, "request_id": "req_…"}
    error.update(extra)
    return {
        status: {
            "description": message,
            "content": {"application/json": {"schema": _ERROR_REF, "example": {"error": error}}},
        }
    }


_NOT_FOUND: Final = _error_example(404, "resource_missing", "No such object (or not yours).")
_BUYER_AUTH_REQUIRED: Final = _error_example(
    401,
    "buyer_authentication_required",
    "This action needs the buyer to sign in with the code sent to their email.",
)


# -- running once ----------------------------------------------------------------------------

#: An effect that commits its own transactions: ``(status, body returned, body stored)``.
Effect = ClaimedEffect


def _run_once(
    runtime: Runtime, principal: Principal, idem: IdempotentRequest, effect: Effect
) -> Response:
    """``effect`` at most once per Idempotency-Key, when it cannot run inside the key's
    transaction (``idempotency.run_claimed``)."""
    payments = runtime.payments
    return result_response(
        run_claimed(payments.transaction, principal, idem, effect, clock=payments.clock)
    )


def _once_in_tx(
    runtime: Runtime,
    principal: Principal,
    idem: IdempotentRequest,
    operation: Callable[[Tx], tuple[int, dict[str, Any]]],
) -> Response:
    payments = runtime.payments
    return idempotent_response(
        payments.transaction, principal, idem, operation, clock=payments.clock
    )


# -- the buyer's checkout --------------------------------------------------------------------


def _buyer_principal(session: CheckoutSession) -> Principal:
    """The principal the buyer's idempotency records belong to: the checkout session.

    ``scope_of`` reads a merchant principal's ``merchant_id``; a session id (``cs_``) can
    collide with no merchant id (``mer_``) nor key id (``key_``). This principal never
    reaches an authorisation check: if it did, it would be a merchant that owns nothing.
    """
    return Principal(key_id=session.id, role="merchant", merchant_id=session.id)


def _buyer_request(
    runtime: Runtime, idem: IdempotentRequest, session: CheckoutSession, action: str
) -> IdempotentRequest:
    """The request as its idempotency record stores it: the session id in place of the token
    (a credential) and a keyed fingerprint (the card route's body holds the card number)."""
    if idem.key is None:
        return idem
    return replace(
        idem,
        path=f"/v1/checkout/{session.id}/{action}",
        request_sha256=runtime.cipher.lookup(
            idem.request_sha256, purpose=_BUYER_FINGERPRINT_PURPOSE
        ),
    )


def _session(runtime: Runtime, token: str) -> CheckoutSession:
    payments = runtime.payments
    with payments.reading() as tx:
        return payments.session_for_token(tx, token)


def _signed_in_session(runtime: Runtime, token: str, buyer_session: str | None) -> CheckoutSession:
    """The checkout of ``token``, its buyer signed in (``buyer_session``) — in one read
    transaction. Checked before the idempotency machinery: a 401 is never stored as a key's
    answer (the buyer retrying with the header and the same key must not be told 401 again).
    The use case checks again inside its transaction."""
    return runtime.payments.check_buyer_session(token, buyer_session)


def _bank_transfer(view_order: Order, reference: str, iban: str | None) -> dict[str, Any]:
    return {
        "iban": iban,
        "reference": reference,
        "amount_minor": view_order.amount_minor,
        "currency": view_order.currency,
    }


def checkout_document(view: CheckoutView, refunds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    order = view.order
    return {
        "object": "checkout",
        "session": view.session.to_api(),
        "merchant": {"id": order.merchant_id, "name": view.merchant_name},
        "order": order.to_api(),
        "bank_transfer": _bank_transfer(order, view.bank_reference, view.bank_iban),
        "wallet": {
            "available_minor": view.wallet_available_minor,
            "currency": order.currency,
            "covers_order": view.wallet_available_minor >= order.amount_minor,
        },
        "latest_payment": None if view.latest_payment is None else view.latest_payment.to_api(),
        "refunds": list(refunds),
    }


@router.get(
    "/v1/checkout/{token}",
    tags=["checkout"],
    summary="The buyer's view of a checkout: the order, the merchant, how to pay.",
    description="No API key: the checkout token is the credential. Shows the order, the "
    "merchant's name, the bank-transfer instructions (IBAN and the buyer's reference), the "
    "buyer's wallet balance, the latest payment attempt and the order's refund requests.",
    responses=_NOT_FOUND,
)
def get_checkout(token: TokenPath, runtime: RuntimeDep) -> Response:
    payments = runtime.payments
    view = payments.checkout_view(token)
    with payments.reading() as tx:
        refunds = tx.repo.refunds({"order_id": view.order.id}, CHECKOUT_REFUNDS_SHOWN_MAX, None)
    return _ok(checkout_document(view, [r.to_api() for r in refunds]))


@router.post(
    "/v1/checkout/{token}/sign_in",
    tags=["checkout"],
    status_code=202,
    summary="Send the buyer a one-time code by email (buyer sign-in, step 1).",
    description="No API key: the checkout token names the checkout. A 6-digit code goes to "
    "the email address of the checkout's buyer (the answer shows it masked); it is good for "
    "10 minutes and for one sign-in, and each new code replaces the previous one. At most 5 "
    "codes per buyer an hour (`429 buyer_code_rate_limited`). `503 mail_unavailable` when "
    "the mail could not be sent. With an `Idempotency-Key`, a retry replays the answer "
    "without sending another code.",
    responses={
        **_error_example(429, "buyer_code_rate_limited", "Too many codes; try again later."),
        **_error_example(503, "mail_unavailable", "The mail could not be sent."),
        **_NOT_FOUND,
    },
)
def sign_in(token: TokenPath, runtime: RuntimeDep, idem: IdempotencyMeta) -> Response:
    session = _session(runtime, token)

    def effect() -> tuple[int, bytes, bytes]:
        sent = runtime.payments.start_buyer_sign_in(token)
        body = json_bytes(
            {
                "object": "buyer_sign_in",
                "email": sent.email_masked,
                "expires_at": sent.expires_at_ns // NS_PER_S,
            }
        )
        return 202, body, body

    request = _buyer_request(runtime, idem, session, "sign_in")
    return _run_once(runtime, _buyer_principal(session), request, effect)


@router.post(
    "/v1/checkout/{token}/sign_in/verify",
    tags=["checkout"],
    summary="Exchange the emailed code for a buyer session (buyer sign-in, step 2).",
    description="No API key. `code`: the 6 digits of the newest code sent for this "
    "checkout. The answer's `buyer_session` (`bs_...`, shown once: a replay of the same "
    "`Idempotency-Key` answers `null`) goes in the `Paykeep-Buyer-Session` header of the "
    "moves that need the buyer: paying from the wallet, confirming receipt, withdrawing a "
    "refund request. It lasts 12 hours and works on every checkout of the same buyer. A wrong "
    "code is `400 buyer_code_invalid` (also for a code already used); the fifth wrong one "
    "kills the code (`400 buyer_code_attempts_exceeded`); a late one is "
    "`400 buyer_code_expired`.",
    responses={
        **_error_example(400, "buyer_code_invalid", "This is not the code we sent."),
        **_NOT_FOUND,
    },
)
def verify_sign_in(
    token: TokenPath, body: VerifyCodeIn, runtime: RuntimeDep, idem: IdempotencyMeta
) -> Response:
    session = _session(runtime, token)

    def effect() -> tuple[int, bytes, bytes]:
        buyer_session, secret = runtime.payments.verify_buyer_code(token, body.code)
        document = {
            "object": "buyer_session",
            "buyer": buyer_session.buyer_id,
            "expires_at": buyer_session.expires_at_ns // NS_PER_S,
        }
        shown = json_bytes({**document, "buyer_session": secret})
        # The session token is a credential: never in a replayable body.
        return 200, shown, json_bytes({**document, "buyer_session": None})

    request = _buyer_request(runtime, idem, session, "sign_in/verify")
    return _run_once(runtime, _buyer_principal(session), request, effect)


@router.post(
    "/v1/checkout/{token}/sign_out",
    tags=["checkout"],
    summary="End the buyer's session (or, with `everywhere`, all of the buyer's sessions).",
    description="No API key. The session in the `Paykeep-Buyer-Session` header must be a live "
    "one of this checkout's buyer; afterwards it (or every session of the buyer) no longer "
    "works. Otherwise `401 buyer_authentication_required` and nothing changes.",
    responses={**_BUYER_AUTH_REQUIRED, **_NOT_FOUND},
)
def sign_out(
    token: TokenPath,
    runtime: RuntimeDep,
    idem: IdempotencyMeta,
    body: Annotated[SignOutIn | None, Body()] = None,
    buyer_session: BuyerSessionHeader = None,
) -> Response:
    session = _signed_in_session(runtime, token, buyer_session)
    everywhere = body.everywhere if body is not None else False

    def effect() -> tuple[int, bytes, bytes]:
        ended = runtime.payments.sign_out_buyer(token, buyer_session, everywhere=everywhere)
        document = json_bytes({"object": "buyer_sign_out", "sessions_ended": ended})
        return 200, document, document

    request = _buyer_request(runtime, idem, session, "sign_out")
    return _run_once(runtime, _buyer_principal(session), request, effect)


def _pay_result(
    method: str, order: Order, payment: Payment | None, bank: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "object": "checkout_payment",
        "method": method,
        "order": order.to_api(),
        "payment": None if payment is None else payment.to_api(),
        "bank_transfer": bank,
    }


@router.post(
    "/v1/checkout/{token}/pay",
    tags=["checkout"],
    summary="The buyer pays: by card, from their wallet, or chooses a bank transfer.",
    description="No API key: the checkout token is the credential. `card`: a sale through "
    "the card network credits the buyer's wallet and the order's amount is held in escrow "
    "(`awaiting_shipment`). `wallet`: held from the wallet's balance. `bank_transfer`: the "
    "order waits for a transfer carrying the buyer's reference (`bank_transfer` in the "
    "answer). A paid order refuses a second payment (409 `illegal_transition`). A decline is "
    "402 with `error.type` = `card_error`, `error.decline_code` and a message for the buyer. "
    "`Idempotency-Key` is honoured (see the module documentation for the guarantees). "
    "`wallet` only:" + _SIGNED_IN_NOTE,
    responses={
        **_BUYER_AUTH_REQUIRED,
        **_error_example(
            402,
            "card_declined",
            "The card has insufficient funds for this payment.",
            type="card_error",
            decline_code="insufficient_funds",
        ),
        **_NOT_FOUND,
    },
)
def pay(
    token: TokenPath,
    body: Annotated[PayIn, Body()],
    runtime: RuntimeDep,
    idem: IdempotencyMeta,
    buyer_session: BuyerSessionHeader = None,
) -> Response:
    payments = runtime.payments
    if isinstance(body, PayFromWallet):
        session = _signed_in_session(runtime, token, buyer_session)
    else:
        session = _session(runtime, token)
    principal = _buyer_principal(session)
    request = _buyer_request(runtime, idem, session, "pay")
    if isinstance(body, PayByCard):
        return _pay_by_card(runtime, principal, request, token, body.card)
    if isinstance(body, PayFromWallet):

        def wallet(tx: Tx) -> tuple[int, dict[str, Any]]:
            order = payments.pay_from_wallet(tx, token, buyer_session)
            latest = tx.repo.payments({"order_id": order.id}, 1, None)
            return 200, _pay_result("wallet", order, latest[0] if latest else None)

        return _once_in_tx(runtime, principal, request, wallet)

    def bank_transfer(tx: Tx) -> tuple[int, dict[str, Any]]:
        order = payments.choose_bank_transfer(tx, token)
        row = tx.repo.buyer_row(order.buyer_id)
        assert row is not None, "an order's buyer exists"
        bank = _bank_transfer(order, str(row[3]), payments.bank_iban)
        return 200, _pay_result("bank_transfer", order, None, bank)

    return _once_in_tx(runtime, principal, request, bank_transfer)


def _pay_by_card(
    runtime: Runtime, principal: Principal, idem: IdempotentRequest, token: str, card: CardIn
) -> Response:
    pan = card.number.get_secret_value()
    cvc = card.cvc.get_secret_value()
    # Checked here, before the service writes a payment: its own checks come after the
    # payment row exists, and a refused number would leave it "processing" until recovery.
    try:
        check_pan(pan)
    except PaykeepError as error:
        raise type(error)(error.message, param="card.number") from None
    check_expiry(card.exp_month, card.exp_year)
    if not cvc.isascii() or not cvc.isdigit():
        raise _cvc_invalid()

    def effect() -> tuple[int, bytes, bytes]:
        try:
            order, payment = runtime.payments.pay_with_card(
                token, pan, card.exp_month, card.exp_year, cvc
            )
        except PaymentDeclined as declined:
            body = card_error_body(declined, idem.request_id)
            return CARD_DECLINED_STATUS, body, body
        body = json_bytes(_pay_result("card", order, payment))
        return 200, body, body

    return _run_once(runtime, principal, idem, effect)


def _cvc_invalid() -> PaykeepError:
    return CardSecurityCodeInvalid("the security code is 3 or 4 digits", param="card.cvc")


@router.post(
    "/v1/checkout/{token}/confirm",
    tags=["checkout"],
    summary="The buyer confirms receipt: the held money is released to the merchant.",
    description="No API key: the checkout token names the checkout. The order must be "
    "`awaiting_receipt` with no open refund request; it becomes `completed`." + _SIGNED_IN_NOTE,
    responses={**_BUYER_AUTH_REQUIRED, **_NOT_FOUND},
)
def confirm(
    token: TokenPath,
    runtime: RuntimeDep,
    idem: IdempotencyMeta,
    buyer_session: BuyerSessionHeader = None,
) -> Response:
    payments = runtime.payments
    session = _signed_in_session(runtime, token, buyer_session)

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        order = payments.confirm(tx, session.order_id, token=token, buyer_session=buyer_session)
        return 200, order.to_api()

    return _once_in_tx(
        runtime, _buyer_principal(session), _buyer_request(runtime, idem, session, "confirm"),
        operation,
    )  # fmt: skip


@router.post(
    "/v1/checkout/{token}/refunds",
    tags=["checkout"],
    status_code=201,
    summary="The buyer asks for a refund of their order (all or part).",
    description="No API key: the checkout token is the credential. The order must be paid "
    "and not finished; its timer pauses until the request ends. The merchant agrees (with or "
    "without a return), refuses, or the buyer escalates it to a dispute.",
    responses=_NOT_FOUND,
)
def request_refund(
    token: TokenPath, body: RefundIn, runtime: RuntimeDep, idem: IdempotencyMeta
) -> Response:
    payments = runtime.payments
    session = _session(runtime, token)

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        refund = payments.request_refund(
            tx, token, session.order_id, body.amount_minor, body.reason
        )
        return 201, refund.to_api()

    return _once_in_tx(
        runtime, _buyer_principal(session), _buyer_request(runtime, idem, session, "refunds"),
        operation,
    )  # fmt: skip


def _buyer_refund_action(
    runtime: Runtime,
    idem: IdempotentRequest,
    token: str,
    refund_id: str,
    action: RefundAction,
    shipment: ShipReturnIn | None = None,
    buyer_session: str | None = None,
) -> Response:
    payments = runtime.payments
    if action in BUYER_SIGNED_IN_REFUND_ACTIONS:
        session = _signed_in_session(runtime, token, buyer_session)
    else:
        session = _session(runtime, token)

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        refund = payments.refund_action(
            tx, refund_id, action, token=token, buyer_session=buyer_session,
            carrier=None if shipment is None else shipment.carrier,
            tracking_number=None if shipment is None else shipment.tracking_number,
        )  # fmt: skip
        return 200, refund.to_api()

    request = _buyer_request(runtime, idem, session, f"refunds/{refund_id}/{action.value}")
    return _once_in_tx(runtime, _buyer_principal(session), request, operation)


@router.post(
    "/v1/checkout/{token}/refunds/{refund_id}/escalate",
    tags=["checkout"],
    summary="The buyer escalates a refused (or unanswered) refund request to a dispute.",
    description="No API key: the checkout token is the credential. The platform decides the "
    "dispute (`POST /v1/disputes/{id}/decide`).",
    responses=_NOT_FOUND,
)
def escalate_refund(
    token: TokenPath, refund_id: IdPath, runtime: RuntimeDep, idem: IdempotencyMeta
) -> Response:
    return _buyer_refund_action(runtime, idem, token, refund_id, RefundAction.ESCALATE)


@router.post(
    "/v1/checkout/{token}/refunds/{refund_id}/cancel",
    tags=["checkout"],
    summary="The buyer withdraws their refund request; the order's timer restarts.",
    description="No API key: the checkout token names the checkout." + _SIGNED_IN_NOTE,
    responses={**_BUYER_AUTH_REQUIRED, **_NOT_FOUND},
)
def cancel_refund(
    token: TokenPath,
    refund_id: IdPath,
    runtime: RuntimeDep,
    idem: IdempotencyMeta,
    buyer_session: BuyerSessionHeader = None,
) -> Response:
    return _buyer_refund_action(
        runtime, idem, token, refund_id, RefundAction.CANCEL, buyer_session=buyer_session
    )


@router.post(
    "/v1/checkout/{token}/refunds/{refund_id}/ship_return",
    tags=["checkout"],
    summary="The buyer ships the goods back (carrier and tracking number).",
    description="No API key: the checkout token is the credential. Allowed once the "
    "merchant agreed with a return; the merchant then confirms receipt of the return.",
    responses=_NOT_FOUND,
)
def ship_return(
    token: TokenPath,
    refund_id: IdPath,
    body: ShipReturnIn,
    runtime: RuntimeDep,
    idem: IdempotencyMeta,
) -> Response:
    return _buyer_refund_action(
        runtime, idem, token, refund_id, RefundAction.SHIP_RETURN, shipment=body
    )


# -- refunds (merchant, operator) ------------------------------------------------------------


@router.post(
    "/v1/orders/{order_id}/refunds",
    tags=["refunds"],
    status_code=201,
    summary="Refund an order at once (all, or part: the rest is released to the merchant).",
    responses=_NOT_FOUND,
)
def refund_order(
    order_id: IdPath,
    body: RefundIn,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    idem: IdempotencyMeta,
) -> Response:
    payments = runtime.payments

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        _order, refund = payments.refund(
            tx, owner_filter(principal), order_id, body.amount_minor, body.reason
        )
        return 201, refund.to_api()

    return _once_in_tx(runtime, principal, idem, operation)


def _merchant_refund_action(
    runtime: Runtime,
    principal: Principal,
    idem: IdempotentRequest,
    refund_id: str,
    action: RefundAction,
) -> Response:
    payments = runtime.payments

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        refund = payments.refund_action(tx, refund_id, action, scope=owner_filter(principal))
        return 200, refund.to_api()

    return _once_in_tx(runtime, principal, idem, operation)


@router.post(
    "/v1/refunds/{refund_id}/agree",
    tags=["refunds"],
    summary="Agree to a buyer's refund request, with or without a return of the goods.",
    responses=_NOT_FOUND,
)
def agree_refund(
    refund_id: IdPath,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    idem: IdempotencyMeta,
    body: AgreeIn | None = None,
) -> Response:
    action = (
        RefundAction.AGREE_WITH_RETURN
        if body is not None and body.return_required
        else RefundAction.AGREE
    )
    return _merchant_refund_action(runtime, principal, idem, refund_id, action)


@router.post(
    "/v1/refunds/{refund_id}/refuse",
    tags=["refunds"],
    summary="Refuse a buyer's refund request (the buyer may escalate it to a dispute).",
    responses=_NOT_FOUND,
)
def refuse_refund(
    refund_id: IdPath, principal: CurrentPrincipal, runtime: RuntimeDep, idem: IdempotencyMeta
) -> Response:
    return _merchant_refund_action(runtime, principal, idem, refund_id, RefundAction.REFUSE)


@router.post(
    "/v1/refunds/{refund_id}/receive_return",
    tags=["refunds"],
    summary="Confirm the returned goods arrived: the refund is paid to the buyer.",
    responses=_NOT_FOUND,
)
def receive_return(
    refund_id: IdPath, principal: CurrentPrincipal, runtime: RuntimeDep, idem: IdempotencyMeta
) -> Response:
    return _merchant_refund_action(runtime, principal, idem, refund_id, RefundAction.RECEIVE_RETURN)


@router.get("/v1/refunds", tags=["refunds"], summary="Refunds, newest first.")
def list_refunds(
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    page: Page,
    order: Annotated[
        str | None,
        Query(max_length=ID_MAX_LENGTH, pattern=CURSOR_PATTERN, description="An order id."),
    ] = None,
) -> Response:
    where: dict[str, Any] = {}
    scope = owner_filter(principal)
    if scope is not None:
        where["merchant_id"] = scope
    if order is not None:
        where["order_id"] = order
    with runtime.payments.reading() as tx:
        rows = tx.repo.refunds(where, page.fetch, page.starting_after)
    return page_response(page, rows, lambda r: r.to_api())


@router.get(
    "/v1/refunds/{refund_id}", tags=["refunds"], summary="One refund.", responses=_NOT_FOUND
)
def get_refund(refund_id: IdPath, principal: CurrentPrincipal, runtime: RuntimeDep) -> Response:
    payments = runtime.payments
    with payments.reading() as tx:
        refund = payments.refund_record(tx, owner_filter(principal), refund_id)
    return _ok(refund.to_api())


# -- card refunds ----------------------------------------------------------------------------


@router.get(
    "/v1/card_refunds",
    tags=["refunds"],
    summary="Refunds to the card, newest first.",
    description="Money of a card-paid order that a refund (or the unshipped-order timer) "
    "returned, on its way back to the card that paid, and the card refunds of buyers' "
    "withdrawals to the card (`withdrawal`): `pending`, `succeeded` or `failed` (the money "
    "then stays in the buyer's wallet; the operator may send an order's again, the buyer "
    "withdraws again).",
)
def list_card_refunds(
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    page: Page,
    order: Annotated[
        str | None,
        Query(max_length=ID_MAX_LENGTH, pattern=CURSOR_PATTERN, description="An order id."),
    ] = None,
    state: Annotated[Literal["pending", "succeeded", "failed"] | None, Query()] = None,
    withdrawal: Annotated[
        str | None,
        Query(max_length=ID_MAX_LENGTH, pattern=CURSOR_PATTERN, description="A withdrawal id."),
    ] = None,
) -> Response:
    payments = runtime.payments
    with payments.reading() as tx:
        rows = payments.card_refunds(
            tx, owner_filter(principal), page.fetch, page.starting_after,
            order_id=order, state=state, withdrawal_id=withdrawal,
        )  # fmt: skip
    return page_response(page, rows, lambda r: r.to_api())


@router.get(
    "/v1/card_refunds/{card_refund_id}",
    tags=["refunds"],
    summary="One refund to the card.",
    responses=_NOT_FOUND,
)
def get_card_refund(
    card_refund_id: IdPath, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    payments = runtime.payments
    with payments.reading() as tx:
        found = payments.card_refund(tx, owner_filter(principal), card_refund_id)
    return _ok(found.to_api())


@router.post(
    "/v1/card_refunds/{card_refund_id}/retry",
    tags=["refunds"],
    summary="Send a failed refund to the card again (operator).",
    description="The money, back in the buyer's wallet since the failure, is reserved again "
    "and a new round of attempts starts on the next worker pass. `insufficient_funds` (409) "
    "if the buyer has spent it meanwhile; `illegal_transition` unless the card refund "
    "`failed` (or if it paid out a buyer's withdrawal: the buyer withdraws again); "
    "`card_refund_retries_exhausted` after the limit of retries.",
    responses=_NOT_FOUND,
)
def retry_card_refund(
    card_refund_id: IdPath,
    principal: OperatorPrincipal,
    runtime: RuntimeDep,
    idem: IdempotencyMeta,
) -> Response:
    payments = runtime.payments

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        return 200, payments.retry_card_refund(tx, card_refund_id, principal.key_id).to_api()

    return _once_in_tx(runtime, principal, idem, operation)


# -- disputes ----------------------------------------------------------------------------------


@router.get("/v1/disputes", tags=["disputes"], summary="Disputes, newest first.")
def list_disputes(
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    page: Page,
    state: Annotated[Literal["open", "decided"] | None, Query()] = None,
) -> Response:
    where: dict[str, Any] = {}
    scope = owner_filter(principal)
    if scope is not None:
        where["merchant_id"] = scope
    if state is not None:
        where["state"] = state
    with runtime.payments.reading() as tx:
        rows = tx.repo.disputes(where, page.fetch, page.starting_after)
    return page_response(page, rows, lambda d: d.to_api())


@router.get(
    "/v1/disputes/{dispute_id}", tags=["disputes"], summary="One dispute.", responses=_NOT_FOUND
)
def get_dispute(dispute_id: IdPath, principal: CurrentPrincipal, runtime: RuntimeDep) -> Response:
    payments = runtime.payments
    with payments.reading() as tx:
        dispute = payments.dispute(tx, owner_filter(principal), dispute_id)
    return _ok(dispute.to_api())


@router.post(
    "/v1/disputes/{dispute_id}/decide",
    tags=["disputes"],
    summary="Decide a dispute (operator): the buyer's share of the held amount, exactly.",
    description="The held amount is split with the largest-remainder rule: "
    "`buyer_share_minor + merchant_share_minor` is exactly the order's amount. A share of 0 "
    "for the buyer rejects the refund; the order ends either way.",
    responses=_NOT_FOUND,
)
def decide_dispute(
    dispute_id: IdPath,
    body: DecideIn,
    principal: OperatorPrincipal,
    runtime: RuntimeDep,
    idem: IdempotencyMeta,
) -> Response:
    payments = runtime.payments

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        dispute = payments.decide_dispute(
            tx, dispute_id, body.buyer_share_bp, principal.key_id, body.note
        )
        return 200, dispute.to_api()

    return _once_in_tx(runtime, principal, idem, operation)


# -- top-ups ---------------------------------------------------------------------------------


@router.get(
    "/v1/topups", tags=["top-ups"], summary="Bank transfers credited or held, newest first."
)
def list_topups(
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    page: Page,
    buyer: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    with runtime.payments.reading() as tx:
        rows = runtime.payments.topups(
            tx, owner_filter(principal), page.fetch, page.starting_after, buyer_id=buyer
        )
    return page_response(page, rows, lambda t: t.to_api())


@router.post(
    "/v1/topups/{topup_id}/release",
    tags=["top-ups"],
    summary="Release a top-up held by the risk controls (operator): credit the wallet.",
    responses=_NOT_FOUND,
)
def release_topup(
    topup_id: IdPath, principal: OperatorPrincipal, runtime: RuntimeDep, idem: IdempotencyMeta
) -> Response:
    payments = runtime.payments

    def operation(tx: Tx) -> tuple[int, dict[str, Any]]:
        return 200, payments.release_topup(tx, topup_id, principal.key_id).to_api()

    return _once_in_tx(runtime, principal, idem, operation)


# -- payouts ---------------------------------------------------------------------------------


def payout_request_id(key: str | None) -> str:
    """The payout's ``request_id`` (its idempotency in the payout gateway): derived from the
    Idempotency-Key when there is one (hashed: keys are any 255 printable characters, request
    ids a short restricted alphabet), else fresh."""
    if key is None:
        return "r" + secrets.token_hex(PAYOUT_REQUEST_ID_RANDOM_BYTES)
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:32]


@router.post(
    "/v1/payouts",
    tags=["payouts"],
    status_code=201,
    summary="Withdraw from the available balance to the merchant's verified IBAN.",
    description="Merchant keys only. The amount leaves `available` now and is paid in the "
    "next payout batch; `state` follows the bank (`requested`, `batched`, `accepted`, "
    "`settled`, or `returned`: the bank rejected the file, or the payee's bank sent a settled "
    "payout back — an account closed, a wrong IBAN — and the money is back in `available`, "
    "less any fee the payee's bank kept; `return` says which (`kind` `rejected` | "
    "`sent_back`), the bank's `reason_code` and `reason`, `fee_minor` and `returned_minor`, "
    "with the `payout.returned` event). A payout sent back because the account is closed, "
    "invalid or not the merchant's (or for no reason the statement gave) unverifies the payout "
    "IBAN: payouts are refused (`409 payout_not_allowed`) until the operator verifies it "
    "again. The Idempotency-Key is the payout's request id in the payout gateway: a retry "
    "returns the same payout.",
)
def create_payout(
    body: PayoutIn, principal: CurrentPrincipal, runtime: RuntimeDep, idem: IdempotencyMeta
) -> Response:
    merchant_id = _merchant_of(principal)
    request_id = payout_request_id(idem.key)

    def effect() -> tuple[int, bytes, bytes]:
        payout = runtime.payments.request_payout(
            merchant_id, merchant_id, body.amount_minor, request_id
        )
        out = json_bytes(payout.to_api())
        return 201, out, out

    return _run_once(runtime, principal, idem, effect)


@router.get("/v1/payouts", tags=["payouts"], summary="Payouts, newest first.")
def list_payouts(principal: CurrentPrincipal, runtime: RuntimeDep, page: Page) -> Response:
    where: dict[str, Any] = {}
    scope = owner_filter(principal)
    if scope is not None:
        where["merchant_id"] = scope
    with runtime.payments.reading() as tx:
        rows = tx.repo.payouts(where, page.fetch, page.starting_after)
    return page_response(page, rows, lambda p: p.to_api())


@router.get(
    "/v1/payouts/{payout_id}", tags=["payouts"], summary="One payout.", responses=_NOT_FOUND
)
def get_payout(payout_id: IdPath, principal: CurrentPrincipal, runtime: RuntimeDep) -> Response:
    with runtime.payments.reading() as tx:
        payout = tx.repo.payout(payout_id)
    if payout is None:
        raise missing("payout", payout_id)
    check_owner(principal, payout.merchant_id, "payout", payout_id)
    return _ok(payout.to_api())


# -- buyer withdrawals -----------------------------------------------------------------------


@router.post(
    "/v1/checkout/{token}/withdrawals",
    tags=["checkout", "withdrawals"],
    status_code=201,
    summary="The buyer takes wallet money back to the bank account or the cards it came from.",
    description="No API key: the checkout token names the buyer (any checkout of theirs). "
    "**To the bank** (`destination: source_bank_account`, the default): the money goes only "
    "to the sending IBAN of one of the buyer's credited bank top-ups (`source_topup`, default "
    "the newest), and per IBAN the withdrawals not returned never exceed what that IBAN sent "
    "in (`409 withdrawal_exceeds_source`); no such top-up: `409 withdrawal_no_source`. The "
    "amount leaves the wallet now and is paid in the next payout batch; `state` follows the "
    "bank (`requested`, `batched`, `accepted`, `settled`, or `returned` — the bank rejected "
    "it, or the buyer's bank sent it back after it settled; then the money is back in the "
    "wallet, less any fee the buyer's bank kept, and `return` says how and why). Only the "
    "IBAN's last four are shown. "
    "**To the card** (`destination: source_card`): refunds to the buyer's captured card "
    "payments in the currency, newest first, each at most what that payment has left to "
    "refund (captured less its refunds that have not failed); more than they can take "
    "together: `409 withdrawal_exceeds_card_refundable`; no card payment: "
    "`409 withdrawal_no_source`. The whole amount is reserved in the wallet at once, as "
    "card refunds (`destination.card_refunds`, also in `GET /v1/card_refunds`) that the "
    "workers send; `state` is `pending` until each has an outcome, then `settled`, "
    "`partially_settled` or `failed` — a failed card refund's money is back in the wallet "
    "(`destination.returned_to_wallet_minor`). "
    "Either way: beyond the wallet's balance, `409 insufficient_funds`; decided by the risk "
    "controls first (`403 risk_blocked`); a refusal changes nothing. The Idempotency-Key is "
    "the withdrawal's request id: a retry returns the same withdrawal." + _SIGNED_IN_NOTE,
    responses={
        **_BUYER_AUTH_REQUIRED,
        **_error_example(409, "withdrawal_exceeds_source",
                         "More than this account sent in is being withdrawn to it."),
        **_NOT_FOUND,
    },
)  # fmt: skip
def create_withdrawal(
    token: TokenPath,
    body: WithdrawalIn,
    runtime: RuntimeDep,
    idem: IdempotencyMeta,
    buyer_session: BuyerSessionHeader = None,
) -> Response:
    session = _signed_in_session(runtime, token, buyer_session)
    request_id = payout_request_id(idem.key)

    def effect() -> tuple[int, bytes, bytes]:
        withdrawal = runtime.payments.request_withdrawal(
            token, buyer_session, body.amount_minor, body.currency, request_id,
            source_topup=body.source_topup, destination=body.destination,
        )  # fmt: skip
        out = json_bytes(withdrawal.to_api())
        return 201, out, out

    request = _buyer_request(runtime, idem, session, "withdrawals")
    return _run_once(runtime, _buyer_principal(session), request, effect)


@router.get("/v1/withdrawals", tags=["withdrawals"], summary="Buyers' withdrawals, newest first.")
def list_withdrawals(
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    page: Page,
    buyer: Annotated[str | None, Query(max_length=ID_MAX_LENGTH)] = None,
) -> Response:
    with runtime.payments.reading() as tx:
        rows = runtime.payments.withdrawals(
            tx, owner_filter(principal), page.fetch, page.starting_after, buyer_id=buyer
        )
    return page_response(page, rows, lambda w: w.to_api())


@router.get(
    "/v1/withdrawals/{withdrawal_id}",
    tags=["withdrawals"],
    summary="One buyer withdrawal (the operator, or the buyer's merchant).",
    responses=_NOT_FOUND,
)
def get_withdrawal(
    withdrawal_id: IdPath, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    with runtime.payments.reading() as tx:
        found = tx.repo.withdrawal(withdrawal_id)
    if found is None:
        raise missing("withdrawal", withdrawal_id)
    check_owner(principal, found.merchant_id, "withdrawal", withdrawal_id)
    return _ok(found.to_api())


# -- balances --------------------------------------------------------------------------------


def _merchant_balance(runtime: Runtime, principal: Principal, merchant_id: str) -> Response:
    payments = runtime.payments
    with payments.reading() as tx:
        (balances,) = payments.merchant_balances(tx, owner_filter(principal), merchant_id)
    return _ok(balances.to_api(merchant_id))


_BALANCE_DESCRIPTION: Final = (
    "`available_minor`: may be paid out; `pending_minor`: held in escrow for the merchant "
    "(paid orders not yet released); `reserve_minor`: the rolling reserve, released to "
    "`available` when its hold period ends."
)


@router.get(
    "/v1/balance",
    tags=["balances"],
    summary="The calling merchant's balance.",
    description=_BALANCE_DESCRIPTION,
)
def get_balance(principal: CurrentPrincipal, runtime: RuntimeDep) -> Response:
    return _merchant_balance(runtime, principal, _merchant_of(principal))


@router.get(
    "/v1/merchants/{merchant_id}/balance",
    tags=["balances"],
    summary="A merchant's balance (the operator, or that merchant).",
    description=_BALANCE_DESCRIPTION,
    responses=_NOT_FOUND,
)
def get_merchant_balance(
    merchant_id: IdPath, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    return _merchant_balance(runtime, principal, merchant_id)


@router.get(
    "/v1/buyers/{buyer_id}/balance",
    tags=["balances"],
    summary="A buyer's wallet balances, one per currency.",
    description="`available_minor`: spendable; `pending_minor`: held for paid orders.",
    responses=_NOT_FOUND,
)
def get_buyer_balance(
    buyer_id: IdPath, request: Request, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    payments = runtime.payments
    with payments.reading() as tx:
        balances = payments.buyer_balances(tx, owner_filter(principal), buyer_id)
    return _ok(
        {
            "object": "list",
            "data": [b.to_api(buyer_id) for b in balances],
            "has_more": False,
            "url": request.url.path,
        }
    )


# -- the ledger (read-only) --------------------------------------------------------------------

_FLAG_NAMES: Final = (
    (TransferFlags.LINKED, "linked"),
    (TransferFlags.PENDING, "pending"),
    (TransferFlags.POST_PENDING, "post_pending"),
    (TransferFlags.VOID_PENDING, "void_pending"),
    (TransferFlags.EXPIRY, "expiry"),
)


def transfer_document(transfer: Transfer, names: dict[int, str | None]) -> dict[str, Any]:
    """A journal row as the API shows it. Ids are decimal strings: they are 63-bit integers,
    beyond what a JSON number keeps exactly in most clients. Metadata is not shown (it is
    other contexts' bookkeeping)."""
    return {
        "id": str(transfer.id),
        "object": "ledger_transfer",
        "debit_account": names.get(transfer.debit_account_id),
        "credit_account": names.get(transfer.credit_account_id),
        "amount_minor": transfer.amount_minor,
        "currency": transfer.currency,
        "code": transfer.code,
        "flags": [name for flag, name in _FLAG_NAMES if transfer.flags & flag],
        "pending_id": str(transfer.pending_id) if transfer.pending_id else None,
        "reference": transfer.reference,
        "created": transfer.timestamp_ns // 1_000_000_000,
    }


def _account_names(runtime: Runtime, transfers: Sequence[Transfer]) -> dict[int, str | None]:
    ids = {t.debit_account_id for t in transfers} | {t.credit_account_id for t in transfers}
    accounts = runtime.ledger.lookup_accounts(sorted(ids))
    return {account_id: account.name for account_id, account in accounts.items()}


def merchant_sees_account(merchant_id: str | None, name: str | None) -> bool:
    """The operator (None) sees every account; a merchant its own ``merchant:<id>:...``."""
    return merchant_id is None or (name is not None and name.startswith(f"merchant:{merchant_id}:"))


@router.get(
    "/v1/ledger/transfers",
    tags=["ledger"],
    summary="The ledger transfers of one account, newest first (read-only).",
    description="`account` is a chart name such as `merchant:<id>:available:EUR`. A merchant "
    "reads only its own accounts; any other name is answered like an unknown one. The "
    "cursor `starting_after` is a transfer id of this account.",
)
def list_ledger_transfers(
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    account: Annotated[str, Query(min_length=1, max_length=LEDGER_ACCOUNT_NAME_LENGTH_MAX)],
    page: Page,
) -> Response:
    scope = owner_filter(principal)
    unknown = AccountNotFound(f"no account named {account!r}", param="account")
    if not merchant_sees_account(scope, account):
        raise unknown
    cursor = _transfer_id(page.starting_after, "starting_after")
    try:
        found = runtime.ledger.account_by_name(account)
    except AccountNotFound:
        raise unknown from None
    result = runtime.ledger.account_transfers(found.id, limit=page.fetch, starting_after=cursor)
    names = _account_names(runtime, result.items)
    return page_response(page, result.items, lambda t: transfer_document(t, names))


def _transfer_id(value: str | None, param: str) -> int | None:
    if value is None:
        return None
    if not re.fullmatch(LEDGER_TRANSFER_ID_PATTERN, value) or int(value) > ID_MAX:
        raise InvalidCursor(f"{param} is a ledger transfer id (decimal digits)", param=param)
    return int(value)


@router.get(
    "/v1/ledger/transfers/{transfer_id}",
    tags=["ledger"],
    summary="One ledger transfer (read-only).",
    responses=_error_example(404, "transfer_not_found", "No such transfer (or not yours)."),
)
def get_ledger_transfer(
    transfer_id: Annotated[str, Path(pattern=LEDGER_TRANSFER_ID_PATTERN)],
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
) -> Response:
    unknown = TransferNotFound(f"no transfer {transfer_id}", param="id")
    number = int(transfer_id)
    if number > ID_MAX:
        raise unknown
    try:
        transfer = runtime.ledger.transfer(number)
    except TransferNotFound:
        raise unknown from None
    names = _account_names(runtime, [transfer])
    scope = owner_filter(principal)
    if not any(
        merchant_sees_account(scope, names.get(a))
        for a in (transfer.debit_account_id, transfer.credit_account_id)
    ):
        raise unknown
    return _ok(transfer_document(transfer, names))


# -- events ----------------------------------------------------------------------------------


def _events_query(
    merchant_id: str | None, type_: str | None, object_id: str | None, after: str | None
) -> tuple[sa.TextClause, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if merchant_id is not None:
        clauses.append("merchant_id = :merchant")
        params["merchant"] = merchant_id
    if type_ is not None:
        clauses.append("type = :type")
        params["type"] = type_
    if object_id is not None:
        clauses.append("object_id = :object")
        params["object"] = object_id
    if after is not None:
        # Event ids are random: the cursor is the event's position in the outbox. An unknown
        # cursor compares with NULL and ends the list (a bound, never a lookup that answers).
        clauses.append("seq < (SELECT seq FROM payments_events WHERE id = :after)")
        params["after"] = after
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return (
        sa.text(f"SELECT payload FROM payments_events{where} ORDER BY seq DESC LIMIT :fetch"),
        params,
    )


def _visible_event(runtime: Runtime, principal: Principal, event_id: str) -> str:
    """The event's JSON as stored, or 404 — another merchant's event answers like none."""
    with runtime.payments.reading() as tx:
        row = tx.repo.event(event_id)
    if row is None:
        raise missing("event", event_id)
    check_owner(principal, row[1], "event", event_id)
    return str(row[4])


@router.get(
    "/v1/events",
    tags=["events"],
    summary="Events (every state change), newest first.",
    description="A merchant sees its own events, the operator every event. Each event is "
    "the body its webhook deliveries carry: `{id, type, created, data: {object}}`.",
)
def list_events(
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    page: Page,
    event_type: Annotated[
        str | None,
        Query(
            alias="type",
            max_length=EVENT_TYPE_LENGTH_MAX,
            pattern=EVENT_TYPE_PATTERN,
            description="An event type, e.g. `order.completed`.",
        ),
    ] = None,
    object_id: Annotated[
        str | None,
        Query(
            alias="object",
            max_length=ID_MAX_LENGTH,
            pattern=CURSOR_PATTERN,
            description="The id of the object the events are about.",
        ),
    ] = None,
) -> Response:
    statement, params = _events_query(
        owner_filter(principal), event_type, object_id, page.starting_after
    )
    params["fetch"] = page.fetch
    with runtime.payments.reading() as tx:
        payloads = [str(r[0]) for r in tx.conn.execute(statement, params).all()]
    return page_response(page, payloads, json.loads)


@router.get("/v1/events/{event_id}", tags=["events"], summary="One event.", responses=_NOT_FOUND)
def get_event(event_id: IdPath, principal: CurrentPrincipal, runtime: RuntimeDep) -> Response:
    return Response(
        _visible_event(runtime, principal, event_id).encode(), media_type=JSON_MEDIA_TYPE
    )


@router.post(
    "/v1/events/{event_id}/replay",
    tags=["events"],
    summary="Deliver an event again to the merchant's webhook endpoints.",
    description="New deliveries of the event: to `endpoint`, or to every enabled endpoint "
    "subscribed to its type. Receivers deduplicate on `webhook-id` (the event id).",
    responses=_NOT_FOUND,
)
def replay_event(
    event_id: IdPath,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    idem: IdempotencyMeta,
    request: Request,
    body: ReplayIn | None = None,
) -> Response:
    _visible_event(runtime, principal, event_id)
    endpoint = None if body is None else body.endpoint
    url = request.url.path

    def effect() -> tuple[int, bytes, bytes]:
        deliveries = runtime.webhooks.replay(owner_filter(principal), event_id, endpoint)
        out = json_bytes(
            {
                "object": "list",
                "data": [d.to_json() for d in deliveries],
                "has_more": False,
                "url": url,
            }
        )
        return 200, out, out

    return _run_once(runtime, principal, idem, effect)


# -- webhook endpoints -----------------------------------------------------------------------


def _with_secret(document: dict[str, Any], secret: str | None) -> dict[str, Any]:
    return {**document, "secret": secret}


_SHOWN_ONCE_NOTE: Final = (
    "The signing secret (`whsec_...`) is in this response only; an idempotent replay of it "
    "answers `secret: null` (secrets are stored sealed, never in the idempotency record)."
)


@router.post(
    "/v1/webhook_endpoints",
    tags=["webhooks"],
    status_code=201,
    summary="Register a webhook endpoint; its signing secret is shown once.",
    description="Merchant keys only. Deliveries are signed the Standard Webhooks way "
    "(`webhook-id`, `webhook-timestamp`, `webhook-signature`). " + _SHOWN_ONCE_NOTE,
)
def create_webhook_endpoint(
    body: WebhookEndpointIn, principal: CurrentPrincipal, runtime: RuntimeDep,
    idem: IdempotencyMeta,
) -> Response:  # fmt: skip
    merchant_id = _merchant_of(principal)

    def effect() -> tuple[int, bytes, bytes]:
        endpoint, secret = runtime.webhooks.create_endpoint(merchant_id, body.url, body.event_types)
        document = endpoint.to_json()
        return (
            201,
            json_bytes(_with_secret(document, secret)),
            json_bytes(_with_secret(document, None)),
        )

    return _run_once(runtime, principal, idem, effect)


def _endpoint_owner(principal: Principal, merchant: str | None) -> str:
    scope = owner_filter(principal)
    if scope is not None:
        return scope
    if merchant is None:
        raise WebhookMerchantRequired(
            "the operator lists one merchant's endpoints: pass merchant=<id>", param="merchant"
        )
    return merchant


@router.get(
    "/v1/webhook_endpoints",
    tags=["webhooks"],
    summary="Webhook endpoints, newest first.",
    description=f"A merchant's own (the operator passes `merchant`). At most {PAGE_SIZE_MAX} "
    f"endpoints are listed (a merchant has at most {ENDPOINTS_PER_MERCHANT_MAX} enabled).",
)
def list_webhook_endpoints(
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    page: Page,
    merchant: Annotated[str | None, Query(max_length=ID_MAX_LENGTH, pattern=CURSOR_PATTERN)] = None,
) -> Response:
    owner = _endpoint_owner(principal, merchant)
    endpoints = runtime.webhooks.list_endpoints(owner)
    if page.starting_after is not None:
        after = page.starting_after
        endpoints = [e for e in endpoints if e.id < after]
    return page_response(page, endpoints[: page.fetch], lambda e: e.to_json())


@router.get(
    "/v1/webhook_endpoints/{endpoint_id}",
    tags=["webhooks"],
    summary="One webhook endpoint (never its secret).",
    responses=_error_example(404, "webhook_endpoint_not_found", "No such endpoint."),
)
def get_webhook_endpoint(
    endpoint_id: IdPath, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    return _ok(runtime.webhooks.get_endpoint(owner_filter(principal), endpoint_id).to_json())


@router.post(
    "/v1/webhook_endpoints/{endpoint_id}/disable",
    tags=["webhooks"],
    summary="Stop delivering to an endpoint; its pending deliveries are dropped.",
    responses=_error_example(404, "webhook_endpoint_not_found", "No such endpoint."),
)
def disable_webhook_endpoint(
    endpoint_id: IdPath, principal: CurrentPrincipal, runtime: RuntimeDep, idem: IdempotencyMeta
) -> Response:
    def effect() -> tuple[int, bytes, bytes]:
        view = runtime.webhooks.disable_endpoint(owner_filter(principal), endpoint_id)
        out = json_bytes(view.to_json())
        return 200, out, out

    return _run_once(runtime, principal, idem, effect)


@router.post(
    "/v1/webhook_endpoints/{endpoint_id}/rotate_secret",
    tags=["webhooks"],
    summary="A new signing secret, shown once; the previous one signs too for 24 hours.",
    description=_SHOWN_ONCE_NOTE,
    responses=_error_example(404, "webhook_endpoint_not_found", "No such endpoint."),
)
def rotate_webhook_secret(
    endpoint_id: IdPath, principal: CurrentPrincipal, runtime: RuntimeDep, idem: IdempotencyMeta
) -> Response:
    scope = owner_filter(principal)

    def effect() -> tuple[int, bytes, bytes]:
        secret = runtime.webhooks.rotate_secret(scope, endpoint_id)
        document = runtime.webhooks.get_endpoint(scope, endpoint_id).to_json()
        return (
            200,
            json_bytes(_with_secret(document, secret)),
            json_bytes(_with_secret(document, None)),
        )

    return _run_once(runtime, principal, idem, effect)


@router.get(
    "/v1/webhook_deliveries",
    tags=["webhooks"],
    summary="The webhook delivery log, newest first.",
)
def list_webhook_deliveries(
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    page: Page,
    event: Annotated[str | None, Query(max_length=ID_MAX_LENGTH, pattern=CURSOR_PATTERN)] = None,
    state: Annotated[str | None, Query(max_length=16)] = None,
) -> Response:
    found = runtime.webhooks.deliveries(
        owner_filter(principal), event, state, min(page.limit, PAGE_SIZE_MAX), page.starting_after
    )
    return _list(page, [d.to_json() for d in found.data], found.has_more)
