"""The hosted checkout page: the buyer opens the session's URL, pays, and later acts on the order.

Routes (all under ``/checkout/{token}``; the token is the session's secret, the buyer's only
credential, so the page is never cached, never framed and never sends a referrer):

- ``GET  /checkout/{token}``          the order and the ways to pay; once paid, its status and
                                      the buyer's actions (the same page as ``/result``)
- ``POST /checkout/{token}/card``     card form: 303 to the result, or the form again (402 on a
                                      decline) with the decline in words
- ``POST /checkout/{token}/wallet``   pay from the buyer's Paykeep balance
- ``POST /checkout/{token}/bank-transfer``  the buyer will transfer: 303 to the result page,
                                      which shows the IBAN, the reference and what to do
- ``GET  /checkout/{token}/result``   paid / waiting for the transfer / closed / expired, with a
                                      link to the merchant's ``success_url``
- ``POST /checkout/{token}/confirm``  confirm receipt (the money goes to the merchant)
- ``POST /checkout/{token}/refund``   ask for a refund, with a reason (and optionally an amount)
- ``POST /checkout/{token}/refunds/{refund_id}/{escalate|cancel|return}``  the buyer's side of
                                      a refund request (the return takes carrier + tracking)
- ``POST /checkout/{token}/sign-in`` and ``/sign-in/verify``  a code mailed to the buyer, then
                                      the buyer-session cookie

Buyer sign-in. The merchant holds the URL too, so the wallet payment, the confirmation and
withdrawing a refund request need the buyer signed in: the page offers a code by email in
their place, and the code sets the ``paykeep_buyer_session`` cookie (httpOnly,
SameSite=Strict, Path=/checkout, Secure over https). The service checks it on those posts.

Forgery defence. The only cookie is that SameSite=Strict session, which a post from a foreign
page does not carry; the token in the URL names the checkout. What a foreign page could still do
is make the buyer's browser submit a token-only form for a URL it learned. Two checks stop
that, both cheap:

1. ``Sec-Fetch-Site`` (sent by every current browser, not affected by ``Referrer-Policy``) must
   be ``same-origin`` (or ``none``: typed by the user); when a browser does not send it, an
   ``Origin`` that names another origin is refused. (``Origin: null`` is accepted: with
   ``Referrer-Policy: no-referrer`` browsers send exactly that on a same-origin POST.)
2. Each form carries a hidden field ``csrf = HMAC(lookup key, "web.checkout.form|" + token)``
   (``FieldCipher.lookup``: a key every Paykeep process shares, so any process verifies what
   another rendered). Only a page Paykeep rendered for this session has it.

The card number and the security code are read from the form, checked (``vault.model``),
passed to :meth:`PaymentsService.pay_with_card` and dropped: never rendered back (the form is
shown empty after a decline), never logged (:class:`SecretsFilter` also scrubs any digit run
that could be a card number from log records, as a second line of defence).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import re
import secrets
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl

import jinja2
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from paykeep.errors import Conflict, InvalidInput, NotFound, PaykeepError
from paykeep.gateway.vault.model import check_expiry, check_pan
from paykeep.money import Money
from paykeep.payments.buyer_auth import (
    BUYER_CODE_TTL_S,
    BUYER_SESSION_COOKIE,
    BUYER_SESSION_TTL_S,
)
from paykeep.payments.errors import (
    BuyerAuthenticationRequired,
    CheckoutSessionExpired,
    IllegalTransition,
    PaymentDeclined,
    PaymentMethodUnavailable,
    PaymentProcessorUnavailable,
    PaymentsInputInvalid,
)
from paykeep.payments.model import (
    REFUND_TRANSITIONS,
    TERMINAL_REFUND_STATES,
    OrderState,
    RefundAction,
    RefundState,
)
from paykeep.payments.records import CheckoutSession, Order, Payment, Refund, Shipment
from paykeep.payments.service import CheckoutView, PaymentsService

log = logging.getLogger("paykeep.web.checkout")

# -- limits ------------------------------------------------------------------------------------

#: A checkout form has at most this many fields and bytes; anything bigger is not our form.
FORM_FIELDS_MAX: Final = 12
FORM_BYTES_MAX: Final = 8 * 1024
#: A single field (the refund reason is the longest: the service allows 500 characters).
FORM_FIELD_CHARS_MAX: Final = 600
#: Failed card payments on one order before the card form is refused: a hosted card form is
#: what card testers look for (trying stolen numbers until one is approved).
CARD_ATTEMPTS_MAX: Final = 8
#: Refunds and shipments listed on the page (an order has a handful at most).
LISTED_MAX: Final = 20
#: Checkout tokens are ``cs_`` + 43 url-safe characters; the service refuses more than 100.
TOKEN_CHARS_MAX: Final = 100
ID_CHARS_MAX: Final = 40
STYLE_NONCE_BYTES: Final = 16

TEMPLATES_DIR: Final = Path(__file__).parent / "templates"
CSRF_PURPOSE: Final = "web.checkout.form"
CSRF_FIELD: Final = "csrf"

#: ``style-src`` gets a per-response nonce: only our one ``<style>`` element applies, not an
#: injected one, and no ``style=`` attribute (there are none).
CSP_TEMPLATE: Final = (
    "default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
STATIC_HEADERS: Final[Mapping[str, str]] = {
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


# -- errors of this edge -----------------------------------------------------------------------


class CheckoutFormInvalid(InvalidInput):
    """The posted form is not one of ours (too big, not urlencoded) or a field is malformed."""

    code = "checkout_form_invalid"


class CheckoutFormForged(PaykeepError):
    """A form posted from another origin, or without this session's form token."""

    code = "checkout_form_forged"
    type = "permission_error"


class CheckoutCardAttemptsExceeded(Conflict):
    code = "checkout_card_attempts_exceeded"


class CheckoutPaymentInProgress(Conflict):
    """A card payment of this order is still being processed (a double submit)."""

    code = "checkout_payment_in_progress"


# -- pure helpers ------------------------------------------------------------------------------

# ASCII digits only: ``\d`` alone would take "１２/３０" (full-width) and int() would agree.
_EXPIRY = re.compile(r"\s*(\d{1,2})\s*/\s*(\d{2}|\d{4})\s*", re.ASCII)
_CVC = re.compile(r"\d{3,4}", re.ASCII)
_PAN_SEPARATORS = re.compile(r"[ -]")
#: 12 or more digits, possibly grouped by single spaces or dashes: what a card number looks
#: like, also when glued to other digits (a longer run is masked whole: logs lose nothing).
_PAN_LIKE = re.compile(r"\d(?:[ -]?\d){11,}")
#: Checkout tokens and buyer sessions (``bs_``: the hosted page's cookie, the API's header).
_TOKEN_LIKE = re.compile(r"(cs|bs)_[A-Za-z0-9_-]{8,}")


def format_money(amount_minor: int, currency: str) -> str:
    """``1250, "EUR"`` -> ``"12.50 EUR"`` (exponent from ISO 4217; never a float)."""
    return f"{Money(amount_minor, currency).format()} {currency}"


def parse_expiry(text: str) -> tuple[int, int]:
    """``"MM/YY"`` (or ``MM/YYYY``) -> (month, four-digit year), checked by the vault's rule."""
    from paykeep.gateway.vault.errors import VaultExpiryInvalid

    match = _EXPIRY.fullmatch(text) if len(text) <= 16 else None
    if match is None:
        raise VaultExpiryInvalid("the expiry is MM/YY", param="expiry")
    month, year = int(match.group(1)), int(match.group(2))
    if len(match.group(2)) == 2:
        year += 2000
    return check_expiry(month, year)


def normalise_pan(text: str) -> str:
    """The digits of a card number as typed (spaces and dashes between groups are dropped),
    Luhn-checked. The error never quotes the number."""
    return check_pan(_PAN_SEPARATORS.sub("", text) if len(text) <= 40 else text)


def check_cvc(text: str) -> str:
    from paykeep.gateway.cards.errors import CardSecurityCodeInvalid

    cvc = text.strip()
    if not _CVC.fullmatch(cvc):
        raise CardSecurityCodeInvalid("the security code is 3 or 4 digits", param="cvc")
    return cvc


def scrub(text: str) -> str:
    """Mask anything that looks like a card number, a checkout token or a buyer session (for
    log lines)."""
    return _TOKEN_LIKE.sub(r"\1_[redacted]", _PAN_LIKE.sub("[card number redacted]", text))


class SecretsFilter(logging.Filter):
    """A logging filter that scrubs card-number-like digit runs and checkout tokens from the
    formatted message (install it on the handlers of ``uvicorn.access`` and ``paykeep``:
    access log lines carry the checkout URL, whose last segment is the buyer's credential)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # The arguments are scrubbed one by one, not merged into the message: some formatters
        # (uvicorn's access log) read ``record.args`` as a tuple.
        if isinstance(record.msg, str):
            record.msg = scrub(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(scrub(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: scrub(v) if isinstance(v, str) else v for k, v in record.args.items()}
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks carry exception messages: render them now, scrubbed.
            record.exc_text = scrub("".join(traceback.format_exception(*record.exc_info)))
            record.exc_info = None
        return True


def form_token(lookup: Callable[..., str], token: str) -> str:
    """The hidden form field of this session (``FieldCipher.lookup`` is an HMAC-SHA256)."""
    return lookup(token, purpose=CSRF_PURPOSE)


def check_origin(headers: Mapping[str, str], own_origin: str) -> None:
    """Refuse a form posted from another site (see the module docstring)."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        if site not in ("same-origin", "none"):
            raise CheckoutFormForged("the form was posted from another site")
        return
    origin = headers.get("origin")
    if origin is not None and origin != "null" and origin != own_origin:
        raise CheckoutFormForged("the form was posted from another origin")


def check_form_token(given: str | None, expected: str) -> None:
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CheckoutFormForged("the form token is missing or wrong")


def parse_form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body: each field at most once, bounded."""
    if len(body) > FORM_BYTES_MAX:
        raise CheckoutFormInvalid("the form is too large")
    try:
        pairs = parse_qsl(
            body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(body),
            encoding="utf-8", errors="strict", max_num_fields=FORM_FIELDS_MAX,
        )  # fmt: skip
    except (ValueError, UnicodeDecodeError):
        raise CheckoutFormInvalid("the form could not be read") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            raise CheckoutFormInvalid(f"the field {name[:20]!r} is repeated")
        if len(value) > FORM_FIELD_CHARS_MAX:
            raise CheckoutFormInvalid(f"the field {name[:20]!r} is too long")
        fields[name] = value
    return fields


class Outcome(StrEnum):
    """What the result page says, from the order's state and the session's."""

    UNPAID = "unpaid"
    WAITING_FOR_TRANSFER = "waiting_for_transfer"
    EXPIRED = "expired"
    PAID = "paid"
    COMPLETED = "completed"
    REFUNDED = "refunded"
    CLOSED = "closed"


def outcome_of(order: Order, session: CheckoutSession, now_ns: int) -> Outcome:
    state = order.state
    if state is OrderState.CREATED:
        if order.funding == "bank_transfer":
            # The transfer may still arrive after the link expires: the unpaid timer, not the
            # session, decides when the order closes.
            return Outcome.WAITING_FOR_TRANSFER
        if session.state == "expired" or now_ns >= session.expires_at_ns:
            return Outcome.EXPIRED
        return Outcome.UNPAID
    if state in (OrderState.AWAITING_SHIPMENT, OrderState.AWAITING_RECEIPT):
        return Outcome.PAID
    if state is OrderState.COMPLETED:
        return Outcome.COMPLETED
    if state in (OrderState.REFUNDED, OrderState.PARTIALLY_REFUNDED):
        return Outcome.REFUNDED
    return Outcome.CLOSED


#: Headline and explanation of each outcome (a test checks every outcome has words).
OUTCOME_WORDS: Final[Mapping[Outcome, tuple[str, str]]] = {
    Outcome.UNPAID: ("Not paid yet", "This order is waiting for your payment."),
    Outcome.WAITING_FOR_TRANSFER: (
        "Waiting for your bank transfer",
        "Your order is reserved. It is paid as soon as your transfer arrives.",
    ),
    Outcome.EXPIRED: (
        "This checkout link has expired",
        "Nothing was charged. Please ask the shop for a new payment link.",
    ),
    Outcome.PAID: (
        "Payment received",
        "Paykeep holds your payment safely until you receive your order.",
    ),
    Outcome.COMPLETED: ("Order completed", "You received your order and the shop was paid."),
    Outcome.REFUNDED: (
        "Refunded",
        # A card payment's refund goes back to the card; other payments' to the balance.
        "Your money was returned: to your card if you paid by card, otherwise to your "
        "Paykeep balance.",
    ),
    Outcome.CLOSED: (
        "This order is closed",
        "It was not paid in time. Nothing was charged.",
    ),
}

#: Where the order stands, in the buyer's words (every OrderState has an entry).
ORDER_STATE_WORDS: Final[Mapping[OrderState, str]] = {
    OrderState.CREATED: "Waiting for payment",
    OrderState.AWAITING_SHIPMENT: "Paid — waiting for the shop to ship",
    OrderState.AWAITING_RECEIPT: "Shipped — please confirm when you receive it",
    OrderState.COMPLETED: "Completed",
    OrderState.CLOSED: "Closed",
    OrderState.REFUNDED: "Refunded",
    OrderState.PARTIALLY_REFUNDED: "Partly refunded",
}

#: A refund request's state in the buyer's words (every RefundState has an entry).
REFUND_STATE_WORDS: Final[Mapping[RefundState, str]] = {
    RefundState.REQUESTED: "Requested — waiting for the shop's answer",
    RefundState.MERCHANT_AGREED: "Accepted — please send the item back and enter the tracking",
    RefundState.MERCHANT_REFUSED: "Refused by the shop — you can ask Paykeep to decide",
    RefundState.RETURN_SHIPPED: "Return on its way — waiting for the shop to receive it",
    RefundState.RETURN_RECEIVED: "Return received",
    RefundState.DISPUTED: "With Paykeep — we will review it and decide",
    RefundState.COMPLETED: "Refunded",
    RefundState.REJECTED: "Rejected after review",
    RefundState.CANCELLED: "Withdrawn by you",
}


class BuyerAction(StrEnum):
    CONFIRM = "confirm"
    REQUEST_REFUND = "request_refund"
    ESCALATE = "escalate"
    CANCEL_REFUND = "cancel"
    SHIP_RETURN = "return"


#: The buyer's refund actions on the page and the service action each one calls.
REFUND_ACTIONS: Final[Mapping[BuyerAction, RefundAction]] = {
    BuyerAction.ESCALATE: RefundAction.ESCALATE,
    BuyerAction.CANCEL_REFUND: RefundAction.CANCEL,
    BuyerAction.SHIP_RETURN: RefundAction.SHIP_RETURN,
}

#: The page's moves that need a signed-in buyer (the service enforces it; the page only
#: puts the sign-in form in front of them). Paying from the wallet is the third.
BUYER_SIGNED_IN_ACTIONS: Final = frozenset({BuyerAction.CONFIRM, BuyerAction.CANCEL_REFUND})

_HELD: Final = frozenset({OrderState.AWAITING_SHIPMENT, OrderState.AWAITING_RECEIPT})


def order_actions(state: OrderState, open_refund: RefundState | None) -> frozenset[BuyerAction]:
    """What the buyer may do on their order now: confirm receipt when shipped and no claim is
    open; ask for a refund while the money is held and no claim is open."""
    if open_refund is not None or state not in _HELD:
        return frozenset()
    actions = {BuyerAction.REQUEST_REFUND}
    if state is OrderState.AWAITING_RECEIPT:
        actions.add(BuyerAction.CONFIRM)
    return frozenset(actions)


def refund_actions(state: RefundState) -> frozenset[BuyerAction]:
    """The buyer's actions on a refund request: exactly those the refund transition table
    allows from its state (so the page never offers what the service would refuse)."""
    return frozenset(
        page for page, action in REFUND_ACTIONS.items() if (state, action) in REFUND_TRANSITIONS
    )


#: What the page says after an action succeeded (``?done=`` names one; nothing else is shown).
DONE_WORDS: Final[Mapping[str, str]] = {
    "paid": "Thank you, your payment was received.",
    "bank_transfer": "Please make your bank transfer with the details below.",
    "confirmed": "Thank you for confirming. The shop has now been paid.",
    "refund_requested": "Your refund request was sent to the shop.",
    "escalate": "Paykeep will review your request and decide. We will let you know.",
    "cancel": "You withdrew your refund request.",
    "return": "Thank you, the return shipment was recorded.",
    "signed_in": "Thank you, you are signed in. You can continue now.",
    "signed_out": "You are signed out. To act on this order again, we will email you a new code.",
    "withdrawn_to_bank": "We are sending your money back to the bank account it came from. "
    "Transfers usually arrive within one working day.",
    "withdrawn_to_card": "We are refunding your money to the card it came from. Card refunds "
    "usually show on your statement within a few days.",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """An error shown to the buyer: the HTTP status and the words."""

    status: int
    words: str


GENERIC_WORDS: Final = "Something went wrong on our side. Please try again in a few minutes."
NOT_FOUND_WORDS: Final = (
    "We could not find this checkout. Please check the link, or ask the shop for a new one."
)
EXPIRED_WORDS: Final = "This checkout link has expired. Nothing was charged; please ask the " \
    "shop for a new payment link."  # fmt: skip

#: Typed errors by code -> (status, words). Declines carry their own words (``DECLINE_REASONS``).
PROBLEMS_BY_CODE: Final[Mapping[str, Problem]] = {
    "vault_card_number_invalid": Problem(
        422, "The card number is not valid. Please check it and try again."
    ),
    "vault_expiry_invalid": Problem(
        422, "The expiry date is not valid. Please enter it as MM/YY, as printed on the card."
    ),
    "card_security_code_invalid": Problem(
        422, "The security code is the 3 or 4 digits on the back of your card."
    ),
    "insufficient_funds": Problem(402, "Your Paykeep balance does not cover this order."),
    "risk_blocked": Problem(
        402, "We could not accept this payment. Please use another payment method."
    ),
    "payment_method_unavailable": Problem(
        409, "This payment method is not available for this order."
    ),
    "checkout_form_forged": Problem(
        403, "This form did not come from this page. Please reload the page and try again."
    ),
    "checkout_card_attempts_exceeded": Problem(
        429,
        "There were too many card attempts on this order. Please use another payment method "
        "or contact the shop.",
    ),
    "checkout_payment_in_progress": Problem(
        409, "A payment for this order is already being processed. Please wait and reload."
    ),
    "payment_in_progress": Problem(
        409, "A payment for this order is already being processed. Please wait and reload."
    ),
    "buyer_authentication_required": Problem(
        401, "For your safety, please sign in with the code we email you first."
    ),
    "buyer_code_invalid": Problem(
        422, "That code is not right. Please check the email we sent you and try again."
    ),
    "buyer_code_expired": Problem(
        422, "This code has expired. Please ask for a new code and use it within 10 minutes."
    ),
    "buyer_code_attempts_exceeded": Problem(
        429, "That code was entered wrongly too many times. Please ask for a new code."
    ),
    "buyer_code_rate_limited": Problem(
        429,
        "We have already sent you several codes. Please use the newest one, or try again in "
        "an hour.",
    ),
    "mail_unavailable": Problem(
        503, "We could not send the email just now. Please try again in a few minutes."
    ),
    "invalid_amount": Problem(422, "Please enter the amount like 12.50."),
    "amount_precision_exceeded": Problem(422, "Please enter the amount like 12.50."),
}

PROBLEMS_BY_PARAM: Final[Mapping[str, Problem]] = {
    "reason": Problem(422, "Please tell the shop why, in at most 500 characters."),
    "carrier": Problem(422, "Please enter the carrier's name, like dhl or ups."),
    "tracking_number": Problem(422, "The tracking number is 4 to 64 letters, digits or dashes."),
    "amount_minor": Problem(
        422, "The refund amount must be more than zero and at most the order total."
    ),
}

#: The withdrawal form's destinations -> the ``done`` word of the page after it.
WITHDRAW_DESTINATIONS: Final[Mapping[str, str]] = {
    "source_bank_account": "withdrawn_to_bank",
    "source_card": "withdrawn_to_card",
}
WITHDRAW_REQUEST_PREFIX: Final = "p"
_WITHDRAW_REQUEST = re.compile(WITHDRAW_REQUEST_PREFIX + "[0-9a-f]{32}")

#: Errors whose words depend on the buyer withdrawing their balance rather than paying.
WITHDRAW_PROBLEMS: Final[Mapping[str, Problem]] = {
    "insufficient_funds": Problem(409, "Your Paykeep balance is less than this amount."),
    "withdrawal_no_source": Problem(
        409,
        "We can only send money back to where it came from, and none of your money came from "
        "there. Please choose the other option.",
    ),
    "withdrawal_exceeds_source": Problem(
        409, "That is more than came from that bank account. Please enter a smaller amount."
    ),
    "withdrawal_exceeds_card_refundable": Problem(
        409, "That is more than your card payments can take back. Please enter a smaller amount."
    ),
    "risk_blocked": Problem(
        402, "We could not send this money now. Please contact Paykeep's support."
    ),
    "amount_minor": Problem(422, "Please enter an amount more than zero, like 12.50."),
    # The same rendered form sent again with another amount or destination (the buyer changed
    # the form while the first answer was on its way): the first one was sent, not this one.
    "payout_request_id_reused": Problem(
        409,
        "We already sent money back from this form, as you first asked. Your balance below is "
        "up to date; to send more, please enter the amount again.",
    ),
}

#: An illegal transition, by the page action that met it.
CONFLICT_WORDS: Final[Mapping[str, str]] = {
    "pay": "This order can no longer be paid here. Its status is shown below.",
    "confirm": "This order cannot be confirmed now. Its status is shown below.",
    "refund": "A refund cannot be requested for this order now.",
    "refund_action": "This refund request has changed. Its current state is shown below.",
}


def problem_for(exc: PaykeepError, action: str) -> Problem:
    """The status and words for a typed error met while doing ``action`` (pure)."""
    if isinstance(exc, PaymentDeclined):
        return Problem(402, exc.message)
    if isinstance(exc, PaymentProcessorUnavailable):
        return Problem(503, exc.message)
    if isinstance(exc, CheckoutSessionExpired):
        return Problem(410, EXPIRED_WORDS)
    if isinstance(exc, NotFound):
        return Problem(404, NOT_FOUND_WORDS)
    if isinstance(exc, IllegalTransition):
        return Problem(409, CONFLICT_WORDS.get(action, CONFLICT_WORDS["refund_action"]))
    if action == "withdraw":
        withdrawing = WITHDRAW_PROBLEMS.get(exc.code) or WITHDRAW_PROBLEMS.get(exc.param or "")
        if withdrawing is not None:
            return withdrawing
    known = PROBLEMS_BY_CODE.get(exc.code)
    if known is not None:
        return known
    by_param = PROBLEMS_BY_PARAM.get(exc.param or "")
    if isinstance(exc, PaymentsInputInvalid) and by_param is not None:
        return by_param
    if isinstance(exc, CheckoutFormInvalid):
        return Problem(422, "The form could not be read. Please reload the page and try again.")
    if isinstance(exc, InvalidInput):
        return Problem(422, "Some of the details are not valid. Please check them.")
    if isinstance(exc, Conflict):
        return Problem(409, "This could not be done now. The current status is shown below.")
    return Problem(503, GENERIC_WORDS)


# -- rendering ---------------------------------------------------------------------------------


def iban_print_format(iban: str) -> str:
    """An IBAN as people read and type it: groups of four (ISO 13616's paper format), so a
    buyer copying it into their bank's form can check it group by group."""
    compact = "".join(iban.split()).upper()
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["iban"] = iban_print_format
    return env


@dataclass(frozen=True, slots=True)
class PageData:
    """Everything the page shows about one checkout session, read in one go."""

    view: CheckoutView
    refunds: list[Refund]
    shipments: list[Shipment]
    failed_card_payments: int
    processing_payments: int
    now_ns: int
    #: The browser holds a live buyer session of this checkout's buyer (the cookie).
    signed_in: bool = False

    @property
    def order(self) -> Order:
        return self.view.order

    @property
    def open_refund(self) -> Refund | None:
        return next((r for r in self.refunds if r.state not in TERMINAL_REFUND_STATES), None)

    @property
    def payable(self) -> bool:
        """The service would accept a payment now (an expired session refuses them)."""
        return self.order.state is OrderState.CREATED and not self.expired

    @property
    def expired(self) -> bool:
        session = self.view.session
        return session.state == "expired" or (
            session.state == "open" and self.now_ns >= session.expires_at_ns
        )


def load_page(service: PaymentsService, token: str, buyer_session: str | None = None) -> PageData:
    view = service.checkout_view(token)
    signed_in = False
    if buyer_session:
        try:
            service.check_buyer_session(token, buyer_session)
            signed_in = True
        except BuyerAuthenticationRequired:
            pass
    with service.reading() as tx:
        where = {"order_id": view.order.id}
        refunds = tx.repo.refunds(where, LISTED_MAX, None)
        shipments = tx.repo.shipments(where, LISTED_MAX, None)
        payments = tx.repo.payments(where, CARD_ATTEMPTS_MAX + 2, None)
        now_ns = tx.now_ns
    failed = sum(1 for p in payments if p.method == "card" and p.state == "failed")
    processing = sum(1 for p in payments if p.state == "processing")
    return PageData(view, refunds, shipments, failed, processing, now_ns, signed_in)


@dataclass
class Rendered:
    template: str
    status: int = 200
    context: dict[str, Any] = field(default_factory=dict)


def _payment_words(payment: Payment | None) -> str | None:
    if payment is None:
        return None
    if payment.state == "succeeded":
        if payment.method == "card" and payment.card_last4:
            brand = (payment.card_brand or "card").capitalize()
            return f"Paid by {brand} card ending {payment.card_last4}"
        return {"wallet": "Paid from your Paykeep balance",
                "bank_transfer": "Paid by bank transfer"}.get(payment.method, "Paid")  # fmt: skip
    if payment.state == "failed":
        return payment.decline_message or "Your last payment attempt did not go through."
    return "Your payment is being processed."


class CheckoutPages:
    """The handlers (sync: they run in the thread pool, the service does blocking I/O)."""

    def __init__(self, payments_provider: Callable[[], PaymentsService]) -> None:
        self.payments_provider = payments_provider
        self.env = environment()

    # ---- rendering

    def html(self, request: Request, token: str, rendered: Rendered) -> Response:
        nonce = secrets.token_urlsafe(STYLE_NONCE_BYTES)
        context = {"nonce": nonce, "urls": _urls(request, token), **rendered.context}
        body = self.env.get_template(rendered.template).render(context)
        response = HTMLResponse(body, status_code=rendered.status)
        return _secure(response, nonce)

    def error_page(self, request: Request, token: str, problem: Problem, title: str) -> Response:
        return self.html(
            request, token,
            Rendered("error.html", problem.status, {"title": title, "error": problem.words}),
        )  # fmt: skip

    def common(self, service: PaymentsService, token: str, page: PageData) -> dict[str, Any]:
        order = page.order
        return {
            "merchant_name": page.view.merchant_name,
            "order": order,
            "items": [
                {
                    "description": item.description,
                    "quantity": item.quantity,
                    "unit": format_money(item.unit_amount_minor, order.currency),
                    "amount": format_money(item.amount_minor, order.currency),
                }
                for item in order.items
            ],
            "total": format_money(order.amount_minor, order.currency),
            "csrf": form_token(service.cipher.lookup, token),
            "error": None,
            "notice": None,
            "signed_in": page.signed_in,
            "buyer_email": page.view.buyer_email_masked,
            "code_minutes": BUYER_CODE_TTL_S // 60,
            "sign_in_sent": False,
        }

    def pay_page(
        self, service: PaymentsService, token: str, page: PageData, *, status: int = 200,
        error: str | None = None, done: str | None = None, sign_in_sent: bool = False,
    ) -> Rendered:  # fmt: skip
        view = page.view
        context = self.common(service, token, page)
        context.update(
            title=f"Pay {view.merchant_name}",
            payee_line=False,  # the headline already names the merchant
            error=error,
            notice=DONE_WORDS.get(done or ""),
            sign_in_sent=sign_in_sent,
            back="pay",
            card_enabled=service.cards is not None
            and service.vault is not None
            and (service.cards.currency == page.order.currency),
            wallet_covers=view.wallet_available_minor >= page.order.amount_minor,
            wallet_balance=format_money(view.wallet_available_minor, page.order.currency),
            bank_iban=view.bank_iban,
            bank_reference=view.bank_reference,
            waiting_for_transfer=page.order.funding == "bank_transfer",
            last_attempt=_payment_words(view.latest_payment)
            if view.latest_payment is not None and view.latest_payment.state == "failed"
            else None,
        )
        return Rendered("pay.html", status, context)

    def status_page(
        self, service: PaymentsService, token: str, page: PageData, *, status: int = 200,
        error: str | None = None, done: str | None = None, sign_in_sent: bool = False,
    ) -> Rendered:  # fmt: skip
        view, order = page.view, page.order
        outcome = outcome_of(order, view.session, page.now_ns)
        headline, explanation = OUTCOME_WORDS[outcome]
        open_refund = page.open_refund
        actions = order_actions(order.state, None if open_refund is None else open_refund.state)
        context = self.common(service, token, page)
        context.update(
            title=headline,
            headline=headline,
            explanation=explanation,
            outcome=outcome.value,
            error=error,
            notice=DONE_WORDS.get(done or ""),
            sign_in_sent=sign_in_sent,
            back="result",
            order_state=ORDER_STATE_WORDS[order.state],
            payment=_payment_words(view.latest_payment),
            actions=sorted(actions),
            refunds=[
                {
                    "id": r.id,
                    "amount": format_money(r.amount_minor, order.currency),
                    "reason": r.reason,
                    "state": REFUND_STATE_WORDS[r.state],
                    "actions": sorted(refund_actions(r.state)),
                }
                for r in page.refunds
            ],
            # A move that needs the buyer signed in is on offer: the sign-in form goes first.
            needs_sign_in=bool(actions & BUYER_SIGNED_IN_ACTIONS)
            or any(BUYER_SIGNED_IN_ACTIONS & refund_actions(r.state) for r in page.refunds)
            or view.wallet_available_minor > 0,
            # Money left in the buyer's Paykeep balance (a refund of a bank transfer, a card
            # refund that could not reach the card) goes back where it came from, from here.
            wallet_balance=format_money(view.wallet_available_minor, order.currency)
            if view.wallet_available_minor > 0
            else None,
            # One id per rendered form: a double submit is one withdrawal, a new page a new one.
            withdraw_request=WITHDRAW_REQUEST_PREFIX + secrets.token_hex(16),
            shipments=[
                {
                    "direction": "Return" if s.direction == "return" else "Delivery",
                    "carrier": s.carrier,
                    "tracking": s.tracking_number,
                    "state": s.state.replace("_", " "),
                }
                for s in page.shipments
            ],
            refunded=format_money(order.refunded_minor, order.currency)
            if order.refunded_minor
            else None,
            can_pay=page.payable,
            bank_iban=view.bank_iban,
            bank_reference=view.bank_reference,
            success_url=view.session.success_url,
        )
        return Rendered("status.html", status, context)

    # ---- the handlers

    def guarded(
        self, request: Request, token: str, action: str,
        handle: Callable[[PaymentsService], Response],
    ) -> Response:  # fmt: skip
        """Run a handler: typed errors become pages in words, anything else a generic page
        with the traceback in the server log only."""
        try:
            if len(token) > TOKEN_CHARS_MAX:
                return self.error_page(request, "", Problem(404, NOT_FOUND_WORDS), "Not found")
            service = self.payments_provider()
            try:
                return handle(service)
            except PaykeepError as exc:
                return self.problem(request, service, token, action, exc)
        except Exception:
            log.exception("checkout %s failed", action)
            return self.error_page(request, "", Problem(500, GENERIC_WORDS), "Something went wrong")

    def problem(
        self, request: Request, service: PaymentsService, token: str, action: str,
        exc: PaykeepError,
    ) -> Response:  # fmt: skip
        problem = problem_for(exc, action)
        if problem.status >= 500:
            log.warning("checkout %s: %s", action, exc.code)
        if problem.status in (404, 410):
            title = "Checkout not found" if problem.status == 404 else "Link expired"
            return self.error_page(request, token if problem.status == 410 else "", problem, title)
        if problem.status == 403:
            return self.error_page(request, token, problem, "Please reload the page")
        try:
            page = load_page(service, token, request.cookies.get(BUYER_SESSION_COOKIE))
        except NotFound:
            return self.error_page(request, "", Problem(404, NOT_FOUND_WORDS), "Not found")
        # A wrong or late code: the code form again (a new code can be asked for there).
        sent = action == "sign_in_verify"
        if action in ("pay", "sign_in", "sign_in_verify") and page.payable:
            return self.html(
                request, token,
                self.pay_page(service, token, page, status=problem.status, error=problem.words,
                              sign_in_sent=sent),
            )  # fmt: skip
        return self.html(
            request, token,
            self.status_page(service, token, page, status=problem.status, error=problem.words,
                             sign_in_sent=sent),
        )  # fmt: skip

    def show(self, request: Request, token: str, *, result: bool) -> Response:
        def handle(service: PaymentsService) -> Response:
            page = load_page(service, token, request.cookies.get(BUYER_SESSION_COOKIE))
            outcome = outcome_of(page.order, page.view.session, page.now_ns)
            if outcome is Outcome.EXPIRED:
                return self.error_page(request, token, Problem(410, EXPIRED_WORDS), "Link expired")
            done = request.query_params.get("done")
            sent = request.query_params.get("signin") == "sent" and not page.signed_in
            if not result and page.payable:
                return self.html(
                    request, token,
                    self.pay_page(service, token, page, done=done, sign_in_sent=sent),
                )  # fmt: skip
            return self.html(
                request, token,
                self.status_page(service, token, page, done=done, sign_in_sent=sent),
            )  # fmt: skip

        return self.guarded(request, token, "show", handle)

    def post(
        self, request: Request, token: str, form: dict[str, str] | PaykeepError, action: str,
        act: Callable[[PaymentsService, dict[str, str], str | None], str],
    ) -> Response:  # fmt: skip
        """A form post: forgery checks, then ``act`` (returns the ``done`` word) and 303.
        ``act`` gets the buyer session of the cookie (None: not signed in)."""

        def handle(service: PaymentsService) -> Response:
            check_origin(request.headers, _own_origin(request))
            if isinstance(form, PaykeepError):
                raise form
            check_form_token(form.get(CSRF_FIELD), form_token(service.cipher.lookup, token))
            done = act(service, form, request.cookies.get(BUYER_SESSION_COOKIE))
            target = request.url_for("checkout_result", token=token).path
            return _secure(RedirectResponse(f"{target}?done={done}", status_code=303), None)

        return self.guarded(request, token, action, handle)

    def sign_in(
        self, request: Request, token: str, form: dict[str, str] | PaykeepError, *, verify: bool
    ) -> Response:
        """Step 1 (``verify`` False): email a code, 303 back with the code form open. Step 2:
        check the code, set the session cookie (httpOnly, SameSite=Strict, Secure over https;
        path ``/checkout``: the session is the buyer's, for any of their checkouts), 303 back.
        ``back`` (``pay`` or ``result``) picks the page to return to; nothing else of the
        form is echoed."""

        def handle(service: PaymentsService) -> Response:
            check_origin(request.headers, _own_origin(request))
            if isinstance(form, PaykeepError):
                raise form
            check_form_token(form.get(CSRF_FIELD), form_token(service.cipher.lookup, token))
            back = "checkout_page" if form.get("back") == "pay" else "checkout_result"
            target = request.url_for(back, token=token).path
            if not verify:
                service.start_buyer_sign_in(token)
                redirect = RedirectResponse(f"{target}?signin=sent#sign-in", status_code=303)
                return _secure(redirect, None)
            code = "".join(form.get("code", "").split())  # "123 456" as typed from the mail
            _session, secret = service.verify_buyer_code(token, code)
            redirect = RedirectResponse(f"{target}?done=signed_in", status_code=303)
            redirect.set_cookie(
                BUYER_SESSION_COOKIE, secret, max_age=BUYER_SESSION_TTL_S, path="/checkout",
                httponly=True, samesite="strict", secure=request.url.scheme == "https",
            )  # fmt: skip
            return _secure(redirect, None)

        return self.guarded(request, token, "sign_in_verify" if verify else "sign_in", handle)

    def sign_out(
        self, request: Request, token: str, form: dict[str, str] | PaykeepError
    ) -> Response:
        """End the cookie's buyer session and drop the cookie, then 303 back (``back`` as for
        sign-in). A session already ended (or none) just loses its cookie."""

        def handle(service: PaymentsService) -> Response:
            check_origin(request.headers, _own_origin(request))
            if isinstance(form, PaykeepError):
                raise form
            check_form_token(form.get(CSRF_FIELD), form_token(service.cipher.lookup, token))
            # Nothing live to end (already signed out, or expired): the cookie goes all the same.
            with contextlib.suppress(BuyerAuthenticationRequired):
                service.sign_out_buyer(
                    token, request.cookies.get(BUYER_SESSION_COOKIE), everywhere=False
                )
            back = "checkout_page" if form.get("back") == "pay" else "checkout_result"
            target = request.url_for(back, token=token).path
            redirect = RedirectResponse(f"{target}?done=signed_out", status_code=303)
            redirect.delete_cookie(
                BUYER_SESSION_COOKIE, path="/checkout", httponly=True, samesite="strict",
                secure=request.url.scheme == "https",
            )  # fmt: skip
            return _secure(redirect, None)

        return self.guarded(request, token, "sign_out", handle)

    # ---- the actions (service calls)

    @staticmethod
    def pay_card(
        service: PaymentsService, token: str, form: dict[str, str], _buyer_session: str | None
    ) -> str:
        # Checked here, before the service records a payment: a typo must not leave a
        # payment row behind, and the card number must not travel further than needed.
        pan = normalise_pan(form.get("card_number", ""))
        exp_month, exp_year = parse_expiry(form.get("expiry", ""))
        cvc = check_cvc(form.get("cvc", ""))
        page = load_page(service, token)
        if page.failed_card_payments >= CARD_ATTEMPTS_MAX:
            raise CheckoutCardAttemptsExceeded("too many failed card payments on this order")
        if page.processing_payments:
            raise CheckoutPaymentInProgress("a payment of this order is being processed")
        service.pay_with_card(token, pan, exp_month, exp_year, cvc)
        return "paid"

    @staticmethod
    def pay_wallet(
        service: PaymentsService, token: str, _form: dict[str, str], buyer_session: str | None
    ) -> str:
        with service.transaction() as tx:
            service.pay_from_wallet(tx, token, buyer_session)
        return "paid"

    @staticmethod
    def bank_transfer(
        service: PaymentsService, token: str, _form: dict[str, str], _buyer_session: str | None
    ) -> str:
        if service.bank_iban is None:
            raise PaymentMethodUnavailable("bank transfers are not configured", param="method")
        with service.transaction() as tx:
            service.choose_bank_transfer(tx, token)
        return "bank_transfer"

    @staticmethod
    def confirm(
        service: PaymentsService, token: str, _form: dict[str, str], buyer_session: str | None
    ) -> str:
        with service.transaction() as tx:
            session = service.session_for_token(tx, token)
            service.confirm(tx, session.order_id, token=token, buyer_session=buyer_session)
        return "confirmed"

    @staticmethod
    def request_refund(
        service: PaymentsService, token: str, form: dict[str, str], _buyer_session: str | None
    ) -> str:
        reason = form.get("reason", "").strip()
        if not reason:
            raise PaymentsInputInvalid("a reason is required", param="reason")
        amount_text = form.get("amount", "").strip()
        with service.transaction() as tx:
            session = service.session_for_token(tx, token)
            order = service.order(tx, None, session.order_id)
            amount = Money.parse(amount_text, order.currency).amount_minor if amount_text else None
            service.request_refund(tx, token, order.id, amount, reason)
        return "refund_requested"

    @staticmethod
    def withdraw(
        service: PaymentsService, token: str, form: dict[str, str], buyer_session: str | None
    ) -> str:
        """The signed-in buyer sends (part of) their balance back to its source: the bank
        account a transfer came from, or the card a payment came from."""
        request_id = form.get("request", "")
        if not _WITHDRAW_REQUEST.fullmatch(request_id):
            raise CheckoutFormInvalid("the withdrawal form is incomplete; reload the page")
        destination = form.get("destination", "")
        if destination not in WITHDRAW_DESTINATIONS:
            raise PaymentsInputInvalid("choose where the money goes", param="destination")
        amount_text = form.get("amount", "").strip()
        with service.reading() as tx:
            session = service.session_for_token(tx, token)
            order = service.order(tx, None, session.order_id)
            currency = order.currency
            if amount_text:
                amount = Money.parse(amount_text, currency).amount_minor
            else:  # empty: the whole balance
                balances = service.buyer_balances(tx, None, order.buyer_id)
                amount = sum(b.available_minor for b in balances if b.currency == currency)
        service.request_withdrawal(
            token, buyer_session, amount, currency, request_id, destination=destination
        )
        return WITHDRAW_DESTINATIONS[destination]

    @staticmethod
    def refund_action(
        service: PaymentsService, token: str, refund_id: str, page_action: BuyerAction,
        form: dict[str, str], buyer_session: str | None,
    ) -> str:  # fmt: skip
        carrier = tracking = None
        if page_action is BuyerAction.SHIP_RETURN:
            carrier = form.get("carrier", "").strip().lower()
            tracking = form.get("tracking_number", "").strip()
        with service.transaction() as tx:
            service.refund_action(
                tx, refund_id, REFUND_ACTIONS[page_action], token=token,
                buyer_session=buyer_session, carrier=carrier, tracking_number=tracking,
            )  # fmt: skip
        return page_action.value


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _urls(request: Request, token: str) -> dict[str, str]:
    if not token:
        return {}
    names = {
        "page": "checkout_page",
        "result": "checkout_result",
        "card": "checkout_card",
        "wallet": "checkout_wallet",
        "bank_transfer": "checkout_bank_transfer",
        "confirm": "checkout_confirm",
        "refund": "checkout_refund",
        "sign_in": "checkout_sign_in",
        "sign_in_verify": "checkout_sign_in_verify",
        "sign_out": "checkout_sign_out",
        "withdraw": "checkout_withdraw",
    }
    urls = {key: request.url_for(name, token=token).path for key, name in names.items()}
    # Refund actions: the template appends "<refund id>/<action>".
    urls["refunds"] = urls["page"] + "/refunds/"
    return urls


def _secure(response: Response, nonce: str | None) -> Response:
    response.headers["Content-Security-Policy"] = CSP_TEMPLATE.format(
        nonce=nonce or secrets.token_urlsafe(STYLE_NONCE_BYTES)
    )
    for name, value in STATIC_HEADERS.items():
        response.headers[name] = value
    return response


async def _read_form(request: Request) -> dict[str, str] | PaykeepError:
    """The body, bounded while it streams (a huge body is refused before it is all read)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return CheckoutFormInvalid("the form is not urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > FORM_BYTES_MAX:
            return CheckoutFormInvalid("the form is too large")
    try:
        return parse_form(bytes(body))
    except CheckoutFormInvalid as exc:
        return exc


def checkout_router(payments_provider: Callable[[], PaymentsService]) -> APIRouter:
    """The buyer's checkout pages. ``payments_provider`` is called per request (the app builds
    its service at start-up)."""
    pages = CheckoutPages(payments_provider)
    router = APIRouter()

    @router.get("/checkout/{token}", name="checkout_page", include_in_schema=False)
    async def page(request: Request, token: str) -> Response:
        return await run_in_threadpool(pages.show, request, token, result=False)

    @router.get("/checkout/{token}/result", name="checkout_result", include_in_schema=False)
    async def result(request: Request, token: str) -> Response:
        return await run_in_threadpool(pages.show, request, token, result=True)

    def form_route(path: str, name: str, action: str, act: Callable[..., str]) -> None:
        async def endpoint(request: Request, token: str) -> Response:
            form = await _read_form(request)
            return await run_in_threadpool(
                pages.post, request, token, form, action,
                lambda service, fields, buyer: act(service, token, fields, buyer),
            )  # fmt: skip

        router.add_api_route(path, endpoint, methods=["POST"], name=name, include_in_schema=False)

    form_route("/checkout/{token}/card", "checkout_card", "pay", pages.pay_card)
    form_route("/checkout/{token}/wallet", "checkout_wallet", "pay", pages.pay_wallet)
    form_route(
        "/checkout/{token}/bank-transfer", "checkout_bank_transfer", "pay", pages.bank_transfer
    )
    form_route("/checkout/{token}/confirm", "checkout_confirm", "confirm", pages.confirm)
    form_route("/checkout/{token}/refund", "checkout_refund", "refund", pages.request_refund)
    form_route("/checkout/{token}/withdraw", "checkout_withdraw", "withdraw", pages.withdraw)

    def sign_in_route(path: str, name: str, *, verify: bool) -> None:
        async def endpoint(request: Request, token: str) -> Response:
            form = await _read_form(request)
            return await run_in_threadpool(
                lambda: pages.sign_in(request, token, form, verify=verify)
            )

        router.add_api_route(path, endpoint, methods=["POST"], name=name, include_in_schema=False)

    sign_in_route("/checkout/{token}/sign-in", "checkout_sign_in", verify=False)
    sign_in_route("/checkout/{token}/sign-in/verify", "checkout_sign_in_verify", verify=True)

    @router.post("/checkout/{token}/sign-out", name="checkout_sign_out", include_in_schema=False)
    async def sign_out(request: Request, token: str) -> Response:
        form = await _read_form(request)
        return await run_in_threadpool(lambda: pages.sign_out(request, token, form))

    @router.post(
        "/checkout/{token}/refunds/{refund_id}/{kind}",
        name="checkout_refund_action",
        include_in_schema=False,
    )
    async def refund_action(request: Request, token: str, refund_id: str, kind: str) -> Response:
        form = await _read_form(request)
        try:
            page_action = BuyerAction(kind)
        except ValueError:
            page_action = None
        if page_action not in REFUND_ACTIONS or len(refund_id) > ID_CHARS_MAX:
            return pages.error_page(request, "", Problem(404, NOT_FOUND_WORDS), "Not found")
        assert page_action is not None
        return await run_in_threadpool(
            pages.post, request, token, form, "refund_action",
            lambda service, fields, buyer: pages.refund_action(
                service, token, refund_id, page_action, fields, buyer
            ),
        )  # fmt: skip

    return router


__all__ = [
    "CARD_ATTEMPTS_MAX",
    "BuyerAction",
    "CheckoutCardAttemptsExceeded",
    "CheckoutFormForged",
    "CheckoutFormInvalid",
    "CheckoutPaymentInProgress",
    "Outcome",
    "SecretsFilter",
    "check_cvc",
    "check_origin",
    "checkout_router",
    "format_money",
    "normalise_pan",
    "order_actions",
    "outcome_of",
    "parse_expiry",
    "parse_form",
    "problem_for",
    "refund_actions",
    "scrub",
]
