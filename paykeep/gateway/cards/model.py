"""The pure core of card acquiring: payment states, their transitions, outcomes, codes.

No I/O and no clock: times come in as arguments.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from paykeep import limits
from paykeep.gateway.cards.errors import (
    CardAmountInvalid,
    CardIllegalTransition,
    CardInputInvalid,
    CardRefundExceedsCapture,
    CardSecurityCodeInvalid,
)


class CardPaymentKind(StrEnum):
    AUTHORISATION = "authorisation"  # 0100, later captured with 0200 (or reversed)
    SALE = "sale"  # one-step 0200


class CardPaymentState(StrEnum):
    #: 0100 persisted before sending; it may be on the wire.
    AUTHORISING = "authorising"
    #: The issuer approved: a hold sits on the card, no money moved in the ledger.
    AUTHORISED = "authorised"
    #: 0200 (capture or sale) persisted before sending; it may be on the wire.
    CAPTURING = "capturing"
    #: The issuer approved the capture or sale; the ledger posting is owed.
    SETTLING = "settling"
    #: The ledger posted clearing:card:<acquirer> -> the credit account. Final.
    CAPTURED = "captured"
    #: The issuer said no (field 39 other than 00/91). Final.
    DECLINED = "declined"
    #: Nothing applied: the network could not be reached, or the issuer answered 91. Final.
    UNAVAILABLE = "unavailable"
    #: Reversals (0400) are owed for every message that may have been applied.
    REVERSING = "reversing"
    #: Every reversal got its 0410. Final.
    REVERSED = "reversed"


S = CardPaymentState
TRANSITIONS: Final[dict[CardPaymentState, frozenset[CardPaymentState]]] = {
    S.AUTHORISING: frozenset({S.AUTHORISED, S.DECLINED, S.UNAVAILABLE, S.REVERSING}),
    # A declined or unavailable capture leaves the authorisation as it was (AUTHORISED).
    S.AUTHORISED: frozenset({S.CAPTURING, S.REVERSING}),
    S.CAPTURING: frozenset({S.SETTLING, S.AUTHORISED, S.DECLINED, S.UNAVAILABLE, S.REVERSING}),
    S.SETTLING: frozenset({S.CAPTURED}),
    S.REVERSING: frozenset({S.REVERSED}),
    S.CAPTURED: frozenset(),
    S.DECLINED: frozenset(),
    S.UNAVAILABLE: frozenset(),
    S.REVERSED: frozenset(),
}
IN_FLIGHT: Final = frozenset({S.AUTHORISING, S.CAPTURING})
FINAL: Final = frozenset(s for s, targets in TRANSITIONS.items() if not targets)


def transition(current: CardPaymentState, target: CardPaymentState) -> CardPaymentState:
    if target not in TRANSITIONS[current]:
        raise CardIllegalTransition(f"a card payment cannot go from {current} to {target}")
    return target


class CardRefundState(StrEnum):
    """A refund: a credit to the card of a captured payment (0200, processing code 200000)."""

    #: 0200/200000 persisted before sending; it may be on the wire.
    REFUNDING = "refunding"
    #: The issuer approved: the card is credited; the ledger posting (debit account ->
    #: clearing:card:<acquirer>) is owed.
    POSTING = "posting"
    #: The ledger posted it. Final.
    REFUNDED = "refunded"
    #: The issuer said no (over-refund 13, unknown original 25, ...). Final.
    DECLINED = "declined"
    #: Nothing applied: the network could not be reached, or the issuer answered 91. Final.
    UNAVAILABLE = "unavailable"
    #: A 0400 is owed for a refund that may have been applied (timeout, crash).
    REVERSING = "reversing"
    #: The issuer confirmed the reversal: the card's credit is taken back. Final.
    REVERSED = "reversed"


R = CardRefundState
REFUND_TRANSITIONS: Final[dict[CardRefundState, frozenset[CardRefundState]]] = {
    R.REFUNDING: frozenset({R.POSTING, R.DECLINED, R.UNAVAILABLE, R.REVERSING}),
    R.POSTING: frozenset({R.REFUNDED}),
    R.REVERSING: frozenset({R.REVERSED}),
    R.REFUNDED: frozenset(),
    R.DECLINED: frozenset(),
    R.UNAVAILABLE: frozenset(),
    R.REVERSED: frozenset(),
}
REFUND_FINAL: Final = frozenset(s for s, targets in REFUND_TRANSITIONS.items() if not targets)
#: Refunds that count against the bound: applied at the issuer, or possibly applied.
REFUND_COUNTED: Final = frozenset({R.REFUNDING, R.POSTING, R.REFUNDED, R.REVERSING})


def refund_transition(current: CardRefundState, target: CardRefundState) -> CardRefundState:
    if target not in REFUND_TRANSITIONS[current]:
        raise CardIllegalTransition(f"a card refund cannot go from {current} to {target}")
    return target


def check_refund_within_capture(
    captured_minor: int, counted: list[tuple[CardRefundState, int]], amount_minor: int
) -> int:
    """The refunds of one payment never total more than it captured. ``counted`` is every
    existing refund of it (state, amount); those that may have been applied count. Returns
    what is left to refund after this one."""
    already = sum(amount for state, amount in counted if state in REFUND_COUNTED)
    left = captured_minor - already
    if amount_minor > left:
        raise CardRefundExceedsCapture(
            f"refund of {amount_minor} exceeds what is left to refund ({left} of "
            f"{captured_minor} captured)",
            param="amount_minor",
        )
    return left - amount_minor


def refund_fingerprint(
    payment_id: str, amount: int, currency: str, debit_account_id: int,
    pending_transfer_id: int | None,
) -> str:  # fmt: skip
    """What a replay of the same refund id must repeat."""
    text = f"refund|{payment_id}|{amount}|{currency}|{debit_account_id}|{pending_transfer_id}"
    return hashlib.sha256(text.encode()).hexdigest()


class CardOutcome(StrEnum):
    """What one call (or its replay) came to: a closed set."""

    APPROVED = "approved"
    DECLINED = "declined"
    #: Sent, no answer in time: reversed (the issuer confirmed with 0410).
    TIMED_OUT_REVERSED = "timed_out_reversed"
    #: A reversal is owed and its 0410 has not come yet (after a timeout, or a requested
    #: reversal); the recovery sweep retries it.
    REVERSAL_PENDING = "reversal_pending"
    #: Nothing applied: network unreachable, or the issuer answered 91.
    UNAVAILABLE = "unavailable"
    #: Reversed because the caller asked (an authorisation released without capture).
    REVERSED = "reversed"


#: Field 39 codes and their meaning. Anything else is a decline with an unknown meaning.
RESPONSE_MEANINGS: Final = {
    "00": "approved",
    "05": "do not honour",
    "13": "invalid amount",
    "14": "invalid card number",
    "25": "unable to locate original transaction",
    "30": "format error",
    "51": "insufficient funds",
    "54": "expired card",
    "91": "issuer unavailable",
}
APPROVED_CODE: Final = "00"
UNAVAILABLE_CODES: Final = frozenset({"91", "96"})


def meaning(code: str | None) -> str | None:
    if code is None:
        return None
    return RESPONSE_MEANINGS.get(code, f"declined (code {code})")


@dataclass(frozen=True, slots=True)
class CardResult:
    """One card payment as the caller sees it. Never carries a card number or security code."""

    payment_id: str
    kind: CardPaymentKind
    state: CardPaymentState
    outcome: CardOutcome
    response_code: str | None
    response_meaning: str | None
    amount_minor: int
    captured_minor: int
    currency: str
    card_token: str
    brand: str
    last4: str
    auth_code: str | None
    rrn: str | None
    ledger_transfer_id: int | None

    @property
    def approved(self) -> bool:
        return self.outcome is CardOutcome.APPROVED

    def to_json(self) -> dict[str, object]:
        return {
            "payment_id": self.payment_id,
            "kind": self.kind.value,
            "state": self.state.value,
            "outcome": self.outcome.value,
            "response_code": self.response_code,
            "response_meaning": self.response_meaning,
            "amount_minor": self.amount_minor,
            "captured_minor": self.captured_minor,
            "currency": self.currency,
            "card_token": self.card_token,
            "brand": self.brand,
            "last4": self.last4,
            "auth_code": self.auth_code,
            "rrn": self.rrn,
            "ledger_transfer_id": self.ledger_transfer_id,
        }


@dataclass(frozen=True, slots=True)
class CardRefundResult:
    """One card refund as the caller sees it."""

    refund_id: str
    payment_id: str
    state: CardRefundState
    outcome: CardOutcome
    response_code: str | None
    response_meaning: str | None
    amount_minor: int
    currency: str
    brand: str
    last4: str
    rrn: str | None
    ledger_transfer_id: int | None

    @property
    def approved(self) -> bool:
        return self.outcome is CardOutcome.APPROVED

    def to_json(self) -> dict[str, object]:
        return {
            "refund_id": self.refund_id,
            "payment_id": self.payment_id,
            "state": self.state.value,
            "outcome": self.outcome.value,
            "response_code": self.response_code,
            "response_meaning": self.response_meaning,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "brand": self.brand,
            "last4": self.last4,
            "rrn": self.rrn,
            "ledger_transfer_id": self.ledger_transfer_id,
        }


# ---------------------------------------------------------------------------------------------
# Validation (shape first: STYLE rule 7)
# ---------------------------------------------------------------------------------------------

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_TERMINAL = re.compile(r"[A-Z0-9]{8}")
_ACCEPTOR = re.compile(r"[A-Z0-9]{15}")


def check_payment_id(payment_id: object, param: str = "payment_id") -> str:
    if (
        not isinstance(payment_id, str)
        or not 0 < len(payment_id) <= limits.CARD_PAYMENT_ID_LENGTH_MAX
        or not _ID.fullmatch(payment_id)
    ):
        raise CardInputInvalid(
            f"{param} must be 1-{limits.CARD_PAYMENT_ID_LENGTH_MAX} characters of "
            "letters, digits, _ . : -",
            param=param,
        )
    return payment_id


def check_acquirer(acquirer: object) -> str:
    if (
        not isinstance(acquirer, str)
        or not 0 < len(acquirer) <= limits.CARD_ACQUIRER_LENGTH_MAX
        or not _ID.fullmatch(acquirer)
    ):
        raise CardInputInvalid("acquirer must be a short name", param="acquirer")
    return acquirer


def check_terminal(terminal_id: object, acceptor_id: object) -> None:
    if not isinstance(terminal_id, str) or not _TERMINAL.fullmatch(terminal_id):
        raise CardInputInvalid("terminal_id is 8 characters A-Z 0-9", param="terminal_id")
    if not isinstance(acceptor_id, str) or not _ACCEPTOR.fullmatch(acceptor_id):
        raise CardInputInvalid("acceptor_id is 15 characters A-Z 0-9", param="acceptor_id")


def check_amount(amount_minor: object, param: str = "amount_minor") -> int:
    if type(amount_minor) is not int or not 0 < amount_minor <= limits.CARD_AMOUNT_MAX_MINOR:
        raise CardAmountInvalid(
            f"{param} must be an int from 1 to {limits.CARD_AMOUNT_MAX_MINOR}", param=param
        )
    return amount_minor


def check_security_code(security_code: object) -> str | None:
    """3 or 4 digits, or None. The message never quotes the value."""
    if security_code is None:
        return None
    if (
        not isinstance(security_code, str)
        or len(security_code) not in (3, 4)
        or not security_code.isascii()
        or not security_code.isdigit()
    ):
        raise CardSecurityCodeInvalid("the security code is 3 or 4 digits", param="security_code")
    return security_code


def request_fingerprint(kind: CardPaymentKind, card_token: str, amount: int, currency: str) -> str:
    """What a replay of the same payment id must repeat (the security code is not part of it)."""
    text = f"{kind.value}|{card_token}|{amount}|{currency}"
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Message numbers
# ---------------------------------------------------------------------------------------------


def transmission_fields(at: datetime) -> dict[str, str]:
    """Fields 7 (MMDDhhmmss, UTC), 12 (hhmmss) and 13 (MMDD) for a message sent ``at``."""
    return {"7": at.strftime("%m%d%H%M%S"), "12": at.strftime("%H%M%S"), "13": at.strftime("%m%d")}


def retrieval_reference(at: datetime, stan: str) -> str:
    """Field 37: YDDD (last digit of the year, day of year), hour, STAN — 12 digits."""
    return f"{at.year % 10}{at.timetuple().tm_yday:03d}{at.hour:02d}{stan}"


# ---------------------------------------------------------------------------------------------
# The message trail and what still needs reversing
# ---------------------------------------------------------------------------------------------


class Direction(StrEnum):
    OUT = "out"  # a request, written before it is sent
    IN = "in"  # its answer
    TIMEOUT = "timeout"  # no answer in time: it may have been applied
    UNSENT = "unsent"  # the link failed before it left: certainly not applied


@dataclass(frozen=True, slots=True)
class CardMessage:
    seq: int
    direction: Direction
    mti: str
    stan: str
    transmitted: str
    rrn: str | None
    amount_minor: int | None
    response_code: str | None
    auth_code: str | None
    reply_to_seq: int | None
    reverses_seq: int | None
    at_ns: int


def reversal_targets(messages: list[CardMessage]) -> list[CardMessage]:
    """Requests (0100/0200) that may have been applied and whose reversal the issuer has not
    confirmed, newest first (a capture is reversed before its authorisation)."""
    replies: dict[int, list[CardMessage]] = {}
    for m in messages:
        if m.reply_to_seq is not None:
            replies.setdefault(m.reply_to_seq, []).append(m)
    confirmed: set[int] = set()
    for m in messages:
        if (
            m.direction is Direction.OUT
            and m.mti == "0400"
            and m.reverses_seq is not None
            and any(
                r.direction is Direction.IN and r.response_code == APPROVED_CODE
                for r in replies.get(m.seq, [])
            )
        ):
            confirmed.add(m.reverses_seq)
    targets = []
    for m in messages:
        if m.direction is not Direction.OUT or m.mti not in ("0100", "0200"):
            continue
        if m.seq in confirmed:
            continue
        answers = replies.get(m.seq, [])
        if any(r.direction is Direction.UNSENT for r in answers):
            continue
        answered = [r for r in answers if r.direction is Direction.IN]
        if answered and all(r.response_code != APPROVED_CODE for r in answered):
            continue  # declined or unavailable: nothing was applied
        targets.append(m)
    return sorted(targets, key=lambda m: m.seq, reverse=True)
