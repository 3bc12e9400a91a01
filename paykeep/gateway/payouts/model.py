"""The pure core of payouts: requests, their validation, the two state machines, identifiers.

No I/O, no clock, no SQL. Amounts are ``int`` minor units; ids and times are handed in.

A payout request moves money at once in the ledger (``merchant:<id>:available`` ->
``clearing:payout``), then waits to be batched into a pain.001 file. A batch goes
``open -> generated -> submitted -> accepted | rejected``, and ``accepted -> settled`` once the
bank statement has confirmed every line. A payout follows its batch:
``requested -> batched -> accepted -> settled``, or ``batched -> returned`` when the bank
rejects the file (the money goes back from ``clearing:payout`` to the merchant), or
``settled -> returned`` when the payee's bank sends it back after it settled (a credit on our
statement carrying its end-to-end id: the money goes back to the account it was drawn from,
less the fee the payee's bank kept, which is charged there explicitly).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException
from text_unidecode import unidecode  # type: ignore[import-untyped,unused-ignore]

from paykeep import limits
from paykeep.gateway.payouts.errors import (
    PayoutAmountInvalid,
    PayoutBicInvalid,
    PayoutCurrencyUnsupported,
    PayoutIbanInvalid,
    PayoutIllegalTransition,
    PayoutInputInvalid,
)
from paykeep.ids import derived_id as derived_id  # re-exported: payouts name their steps
from paykeep.money import currency_exponent, is_currency

#: The chart-of-accounts name of payout money in transit (DESIGN.md).
CLEARING_ACCOUNT: Final = "clearing:payout"
#: Ledger account code of an asset (as in the ledger demo's chart) for the clearing account.
ASSET_ACCOUNT_CODE: Final = 1
#: Ledger transfer codes: the request (merchant -> clearing), the return after a rejection
#: or after the payee's bank sent it back (clearing -> merchant), and the settlement leg the
#: statement posts (clearing -> bank).
REQUEST_TRANSFER_CODE: Final = 40
RETURN_TRANSFER_CODE: Final = 41
SETTLEMENT_TRANSFER_CODE: Final = 42
#: A settled payout the payee's bank sent back: its statement credit enters clearing:payout
#: (bank -> clearing), and the fee the payee's bank kept is charged to the account the payout
#: was drawn from (that account -> clearing). Codes 43/44 are the statements context's.
SENT_BACK_TRANSFER_CODE: Final = 45
RETURN_FEE_TRANSFER_CODE: Final = 46
#: pain.001 versions we write; .03 is the default.
SCHEMAS: Final = ("pain.001.001.03", "pain.001.001.09")
DEFAULT_SCHEMA: Final = "pain.001.001.03"

#: Purposes of the sealed columns (``FieldCipher.seal``; row id: the payout / batch id) and of
#: the keyed fingerprint (``FieldCipher.lookup``). Migrations 0011 and 0013 (the remittance)
#: spell the same strings.
CREDITOR_NAME_PURPOSE: Final = "payout.creditor_name"
CREDITOR_IBAN_PURPOSE: Final = "payout.creditor_iban"
REMITTANCE_PURPOSE: Final = "payout.remittance"
BATCH_FILE_PURPOSE: Final = "payout_batch.file"
REQUEST_FINGERPRINT_PURPOSE: Final = "payout.request"

_ID_TEXT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
_BANK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class PayoutState(StrEnum):
    REQUESTED = "requested"
    BATCHED = "batched"
    ACCEPTED = "accepted"
    SETTLED = "settled"
    RETURNED = "returned"


class BatchState(StrEnum):
    OPEN = "open"
    GENERATED = "generated"
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    SETTLED = "settled"


class BatchAction(StrEnum):
    GENERATE = "generate"
    SUBMIT = "submit"
    ACCEPT = "accept"
    REJECT = "reject"
    SETTLE = "settle"


class PayoutAction(StrEnum):
    BATCH = "batch"
    ACCEPT = "accept"
    #: The bank rejected the file: the money never left.
    RETURN = "return"
    SETTLE = "settle"
    #: The payee's bank sent a settled payout back (an R-transaction on our statement).
    SEND_BACK = "send_back"


class ReturnKind(StrEnum):
    """How a ``returned`` payout's money came back to the account it was drawn from."""

    #: Our bank rejected the payment file (pain.002 ``RJCT``): nothing left the bank.
    REJECTED = "rejected"
    #: The payee's bank sent it back after it settled (an account closed, a wrong IBAN found
    #: later): a credit on our statement carrying the payout's end-to-end id.
    SENT_BACK = "sent_back"


BATCH_TRANSITIONS: Final[dict[tuple[BatchState, BatchAction], BatchState]] = {
    (BatchState.OPEN, BatchAction.GENERATE): BatchState.GENERATED,
    (BatchState.GENERATED, BatchAction.SUBMIT): BatchState.SUBMITTED,
    (BatchState.SUBMITTED, BatchAction.ACCEPT): BatchState.ACCEPTED,
    (BatchState.SUBMITTED, BatchAction.REJECT): BatchState.REJECTED,
    (BatchState.ACCEPTED, BatchAction.SETTLE): BatchState.SETTLED,
}

PAYOUT_TRANSITIONS: Final[dict[tuple[PayoutState, PayoutAction], PayoutState]] = {
    (PayoutState.REQUESTED, PayoutAction.BATCH): PayoutState.BATCHED,
    (PayoutState.BATCHED, PayoutAction.ACCEPT): PayoutState.ACCEPTED,
    (PayoutState.BATCHED, PayoutAction.RETURN): PayoutState.RETURNED,
    (PayoutState.ACCEPTED, PayoutAction.SETTLE): PayoutState.SETTLED,
    (PayoutState.SETTLED, PayoutAction.SEND_BACK): PayoutState.RETURNED,
}


def batch_transition(state: BatchState, action: BatchAction) -> BatchState:
    """The one way a batch changes state; anything not in the table is refused."""
    nxt = BATCH_TRANSITIONS.get((state, action))
    if nxt is None:
        raise PayoutIllegalTransition(f"a batch cannot {action.value} when {state.value}")
    return nxt


def payout_transition(state: PayoutState, action: PayoutAction) -> PayoutState:
    nxt = PAYOUT_TRANSITIONS.get((state, action))
    if nxt is None:
        raise PayoutIllegalTransition(f"a payout cannot {action.value} when {state.value}")
    return nxt


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PayoutRequest:
    """What the payments context asks for. ``request_id`` is the idempotency key."""

    request_id: str
    merchant_ref: str
    amount_minor: int
    currency: str
    debit_account_name: str
    creditor_name: str
    creditor_iban: str
    creditor_bic: str | None = None
    remittance: str | None = None

    def fingerprint(self) -> str:
        """Digest of everything but the request id: a replay must carry the same. Unkeyed, so
        never stored as is (an IBAN is guessable from it): the service stores its keyed
        ``FieldCipher.lookup`` (purpose :data:`REQUEST_FINGERPRINT_PURPOSE`)."""
        body = {
            "merchant_ref": self.merchant_ref,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "debit_account_name": self.debit_account_name,
            "creditor_name": self.creditor_name,
            "creditor_iban": self.creditor_iban,
            "creditor_bic": self.creditor_bic,
            "remittance": self.remittance,
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Payout:
    """A payout as stored. The creditor's name and IBAN are personal data, and so may be the
    remittance text (free text an operator types, or a returned transfer's bank reference: it
    can name a person or their invoice): all three are sealed at rest and opened only to write
    the pain.001 file (``PayoutService.batch``), so a payout carries none of them — just the
    IBAN's last four for display. ``fingerprint`` is the keyed digest of the request."""

    payout_id: int
    request_id: str
    fingerprint: str
    merchant_ref: str
    debit_account_name: str
    amount_minor: int
    currency: str
    creditor_iban_last4: str
    creditor_bic: str | None
    end_to_end_id: str
    state: PayoutState
    batch_id: int | None
    request_transfer_id: int
    return_transfer_id: int | None
    expected: bool
    created_at_ns: int
    updated_at_ns: int
    #: Once ``returned``: how (:class:`ReturnKind`), the bank's reason code (an ISO 20022
    #: code such as ``AC04``; ``None`` when the bank gave none, e.g. an MT940 statement), its
    #: meaning in words, and what the payee's bank kept (0 but for a payout sent back short).
    return_kind: ReturnKind | None = None
    return_reason_code: str | None = None
    return_reason: str | None = None
    return_fee_minor: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "payout_id": self.payout_id,
            "request_id": self.request_id,
            "merchant_ref": self.merchant_ref,
            "debit_account_name": self.debit_account_name,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "creditor_iban": f"****{self.creditor_iban_last4}",
            "creditor_bic": self.creditor_bic,
            "end_to_end_id": self.end_to_end_id,
            "state": self.state.value,
            "batch_id": self.batch_id,
            "request_transfer_id": self.request_transfer_id,
            "return_transfer_id": self.return_transfer_id,
            "return": None
            if self.return_kind is None
            else {
                "kind": self.return_kind.value,
                "reason_code": self.return_reason_code,
                "reason": self.return_reason,
                "fee_minor": self.return_fee_minor,
            },
            "created_at_ns": self.created_at_ns,
            "updated_at_ns": self.updated_at_ns,
        }


@dataclass(frozen=True, slots=True)
class Debtor:
    """Our account the payouts leave from (the safeguarding account) and its bank's name,
    which names the ledger account ``bank:safeguarding:<bank>``."""

    name: str
    iban: str
    bank: str
    bic: str | None = None

    @property
    def ledger_account(self) -> str:
        return f"bank:safeguarding:{self.bank}"


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: int
    message_id: str
    schema: str
    currency: str
    debtor: Debtor
    state: BatchState
    payout_count: int
    control_sum_minor: int
    execution_date: str
    file_sha256: str | None
    destination: str | None
    bank_status: str | None
    bank_reason: str | None
    created_at_ns: int
    updated_at_ns: int

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "message_id": self.message_id,
            "schema": self.schema,
            "currency": self.currency,
            "debtor_name": self.debtor.name,
            "debtor_iban": self.debtor.iban,
            "bank": self.debtor.bank,
            "state": self.state.value,
            "payout_count": self.payout_count,
            "control_sum_minor": self.control_sum_minor,
            "execution_date": self.execution_date,
            "file_sha256": self.file_sha256,
            "destination": self.destination,
            "bank_status": self.bank_status,
            "bank_reason": self.bank_reason,
            "created_at_ns": self.created_at_ns,
            "updated_at_ns": self.updated_at_ns,
        }


# ---------------------------------------------------------------------------------------------
# Identifiers
# ---------------------------------------------------------------------------------------------

_BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def base36(value: int) -> str:
    assert value >= 0
    digits = []
    while True:
        value, rest = divmod(value, 36)
        digits.append(_BASE36[rest])
        if value == 0:
            return "".join(reversed(digits))


def end_to_end_id(payout_id: int) -> str:
    """``PO`` + the payout id in base 36: at most 15 characters, so it survives MT940's
    16-character reference field as well as pain.001's Max35Text."""
    return f"PO{base36(payout_id)}"


def message_id(batch_id: int) -> str:
    """``PKPO`` + the batch id in base 36 (batch ids are time-ordered and unique)."""
    return f"PKPO{base36(batch_id)}"


# ---------------------------------------------------------------------------------------------
# Validation (fixed order: shape, then the limits; identity and references are the service's)
# ---------------------------------------------------------------------------------------------


def _text(value: object, name: str, maximum: int, *, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PayoutInputInvalid(f"{name} must be a non-empty string", param=name)
    if len(value) > maximum:
        raise PayoutInputInvalid(f"{name} is longer than {maximum} characters", param=name)
    if not value.isprintable():
        raise PayoutInputInvalid(f"{name} must be printable text", param=name)
    if pattern is not None and not pattern.match(value):
        raise PayoutInputInvalid(f"{name} has characters outside {pattern.pattern}", param=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PayoutInputInvalid(f"{name} is not valid Unicode text", param=name) from None
    return value


def _sepa_text(value: str, name: str) -> str:
    """Text that survives sepaxml's transliteration to the SEPA character set: a name made of
    emoji alone would be written as an empty element, which the XSD refuses."""
    if not str(unidecode(value)).strip():
        raise PayoutInputInvalid(f"{name} has no Latin transliteration", param=name)
    return value


def validate_creditor_name(value: object, name: str) -> str:
    """A creditor's name as a pain.001 file can carry it (Max70Text, printable, with a Latin
    transliteration): what :func:`validate_request` checks, for a name given on its own."""
    return _sepa_text(_text(value, name, limits.PAYOUT_CREDITOR_NAME_LENGTH_MAX), name)


def normalize_iban(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 42:
        raise PayoutIbanInvalid(f"{name} must be an IBAN", param=name)
    try:
        return str(IBAN(value).compact)
    except SchwiftyException as exc:
        # The value is not echoed: a mistyped IBAN is still someone's account number, and
        # error messages are returned and logged.
        raise PayoutIbanInvalid(f"{name} is not a valid IBAN: {exc}", param=name) from None


def normalize_bic(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 8 <= len(value.strip()) <= 11:
        raise PayoutBicInvalid(f"{name} must be a BIC", param=name)
    try:
        return str(BIC(value).compact)
    except SchwiftyException as exc:
        raise PayoutBicInvalid(f"{name} {value!r} is not a valid BIC: {exc}", param=name) from None


def check_currency(currency: object) -> str:
    if not is_currency(currency):
        raise PayoutCurrencyUnsupported(f"unknown currency {currency!r}", param="currency")
    assert isinstance(currency, str)
    # pain.001 amounts are written by sepaxml in cents: only two-decimal currencies.
    if currency_exponent(currency) != 2:
        raise PayoutCurrencyUnsupported(
            f"{currency} payouts are not supported (two-decimal currencies only)",
            param="currency",
        )
    return currency


def validate_request(request: PayoutRequest) -> PayoutRequest:
    """Shape checks, in one fixed order; returns the normalised request.

    The service then checks, in this order: idempotency (the request id), references (the
    account drawn from, its currency), and last the limits (:func:`check_limits`, then the
    ledger's balance check).
    """
    request_id = _text(
        request.request_id, "request_id", limits.PAYOUT_REQUEST_ID_LENGTH_MAX, pattern=_ID_TEXT
    )
    merchant_ref = _text(
        request.merchant_ref, "merchant_ref", limits.PAYOUT_MERCHANT_REF_LENGTH_MAX
    )
    amount = request.amount_minor
    if type(amount) is not int:
        raise PayoutAmountInvalid("amount_minor must be an int of minor units", param="amount")
    currency = check_currency(request.currency)
    account = _text(
        request.debit_account_name, "debit_account_name", limits.ACCOUNT_NAME_LENGTH_MAX
    )
    creditor_name = _sepa_text(
        _text(request.creditor_name, "creditor_name", limits.PAYOUT_CREDITOR_NAME_LENGTH_MAX),
        "creditor_name",
    )
    creditor_iban = normalize_iban(request.creditor_iban, "creditor_iban")
    creditor_bic = normalize_bic(request.creditor_bic, "creditor_bic")
    remittance = request.remittance
    if remittance is not None:
        remittance = _sepa_text(
            _text(remittance, "remittance", limits.PAYOUT_REMITTANCE_LENGTH_MAX), "remittance"
        )
    if amount <= 0:
        raise PayoutAmountInvalid("amount_minor must be positive", param="amount")
    return PayoutRequest(
        request_id=request_id,
        merchant_ref=merchant_ref,
        amount_minor=amount,
        currency=currency,
        debit_account_name=account,
        creditor_name=creditor_name,
        creditor_iban=creditor_iban,
        creditor_bic=creditor_bic,
        remittance=remittance,
    )


def check_limits(request: PayoutRequest) -> None:
    if request.amount_minor > limits.PAYOUT_AMOUNT_MAX_MINOR:
        raise PayoutAmountInvalid(
            f"a payout is at most {limits.PAYOUT_AMOUNT_MAX_MINOR} minor units", param="amount"
        )


def validate_debtor(debtor: Debtor) -> Debtor:
    name = _text(debtor.name, "debtor_name", limits.PAYOUT_CREDITOR_NAME_LENGTH_MAX)
    if not isinstance(debtor.bank, str) or not _BANK_NAME.match(debtor.bank):
        raise PayoutInputInvalid("bank must be a short lower-case name (a-z, 0-9, -)", param="bank")
    return Debtor(
        name=name,
        iban=normalize_iban(debtor.iban, "debtor_iban"),
        bank=debtor.bank,
        bic=normalize_bic(debtor.bic, "debtor_bic"),
    )


def return_request_id(statement_row_id: int, line: int, attempt: int = 1) -> str:
    """The request id of the ``attempt``-th payout that returns a statement line to its sender:
    derived from the line (and so from its break) and the attempt, so one attempt is one
    payout, whoever runs it — and a line is returned by one payout at a time, whichever break
    names it. The first attempt keeps the id it always had; a retry after a failed return is
    ``...:<attempt>``."""
    assert attempt >= 1
    base = f"statement-return:{statement_row_id}:{line}"
    return base if attempt == 1 else f"{base}:{attempt}"


def return_remittance(bank_reference: str | None, break_id: int) -> str:
    """What the sender's bank shows them: which of their transfers came back, and why."""
    text = f"Return of unidentified transfer {bank_reference or f'(break {break_id})'}"
    return text[: limits.PAYOUT_REMITTANCE_LENGTH_MAX]


def default_remittance(request: PayoutRequest) -> str:
    """The remittance text the merchant's bank shows: theirs, else ``Payout <merchant ref>``."""
    text = request.remittance or f"Payout {request.merchant_ref}"
    return text[: limits.PAYOUT_REMITTANCE_LENGTH_MAX]


# ---------------------------------------------------------------------------------------------
# A settled payout sent back by the payee's bank
# ---------------------------------------------------------------------------------------------


def sent_back_fee(
    payout_amount_minor: int,
    payout_currency: str,
    line_amount_minor: int,
    line_currency: str,
    *,
    fee_max_minor: int = limits.PAYOUT_RETURN_FEE_MAX_MINOR,
) -> int | None:
    """The fee the payee's bank kept, if a credit line of ``line_amount_minor`` (positive: money
    in) can be a payout of ``payout_amount_minor`` coming back: ``0`` when it came back whole,
    the shortfall when that is at most ``fee_max_minor`` (SEPA lets the payee's bank deduct
    its charges from a return). ``None`` when it cannot be applied by Paykeep — another
    currency, nothing, more than was paid (never a fee: something else is going on), or short
    by more than a fee — and stays a statement break for a person."""
    if line_currency != payout_currency or line_amount_minor <= 0:
        return None
    fee = payout_amount_minor - line_amount_minor
    if fee < 0 or fee > fee_max_minor:
        return None
    return fee


#: ISO 20022 external return reason codes a payee's bank gives for a credit transfer it sends
#: back (the EPC's SCT R-transaction codes and their neighbours), in words.
RETURN_REASONS: Final[Mapping[str, str]] = {
    "AC01": "the account number is incorrect",
    "AC03": "the creditor account number is invalid",
    "AC04": "the account is closed",
    "AC06": "the account is blocked",
    "AG01": "transactions are forbidden on this account",
    "AG02": "invalid bank operation code",
    "AM05": "duplicate payment",
    "BE01": "the name does not match the account holder",
    "BE04": "the creditor's address is missing",
    "CNOR": "the creditor's bank is not registered",
    "DNOR": "the debtor's bank is not registered",
    "FOCR": "returned after a cancellation request",
    "MD07": "the account holder is deceased",
    "MS02": "refused by the payee",
    "MS03": "no reason given by the bank",
    "RC01": "the bank identifier is incorrect",
    "RR01": "regulatory: the debtor's account or identification is missing",
    "RR02": "regulatory: the debtor's name or address is missing",
    "RR03": "regulatory: the creditor's name or address is missing",
    "RR04": "regulatory reason",
}

#: Reasons that say the payee's account itself cannot take the money — wrong, invalid,
#: closed or blocked, not for payments, not the holder's name, a deceased holder — so paying
#: it again would only come back again: the account needs checking before the next payout.
ACCOUNT_UNUSABLE_REASONS: Final = frozenset(
    {"AC01", "AC03", "AC04", "AC06", "AG01", "BE01", "MD07"}
)


_ANSWER_CODE = re.compile(r"^([A-Za-z0-9]{1,35}):")


def bank_answer_code(reason: str | None) -> str | None:
    """The reason code of a recorded bank answer (``BankAnswer.reason``, ``"AM04: text"``)."""
    found = _ANSWER_CODE.match(reason or "")
    return found.group(1) if found else None


def return_reason_text(code: str | None) -> str:
    """The bank's reason in words, code first: ``AC04: the account is closed``."""
    if code is None:
        return "the statement gave no reason"
    meaning = RETURN_REASONS.get(code)
    return code if meaning is None else f"{code}: {meaning}"


def account_needs_checking(code: str | None) -> bool:
    """Whether a payout sent back for ``code`` says the payee's account must be checked before
    anything is paid to it again: a reason in :data:`ACCOUNT_UNUSABLE_REASONS`, or one we
    cannot read — none on the statement (MT940), ``MS03`` ("not specified"), a code not in
    :data:`RETURN_REASONS` (a bank's own) — since assuming the account is fine risks a second
    return and a second fee. A known reason about the payment rather than the account
    (``AM05`` a duplicate, ``FOCR`` a recall, ``MS02`` the payee refused it, ...) keeps it."""
    return (
        code is None
        or code == "MS03"
        or code in ACCOUNT_UNUSABLE_REASONS
        or code not in RETURN_REASONS
    )
