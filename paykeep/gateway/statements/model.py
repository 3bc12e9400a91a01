"""The pure core of statement import: parsed statements, the balance check, expected movements
and the matcher that turns statement lines into ledger legs or reconciliation breaks.

No I/O, no clock, no SQL. Amounts are signed ``int`` minor units: a credit to our account
(CRDT, money in) is positive, a debit (DBIT, money out) negative.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Final, Literal

from paykeep import limits
from paykeep.gateway.statements.errors import (
    BreakAlreadyResolved,
    ExpectationInvalid,
    StatementCurrencyInvalid,
    StatementUnbalanced,
)
from paykeep.money import Money, is_currency

#: Purposes of a stored line's sealed columns (``FieldCipher.seal``, row id
#: :func:`entry_row_id`): the counterparty (the payer of a transfer in — often a buyer) and
#: the free remittance text. Migration 0011 spells the same strings.
COUNTERPARTY_NAME_PURPOSE: Final = "statement.counterparty_name"
COUNTERPARTY_IBAN_PURPOSE: Final = "statement.counterparty_iban"
REMITTANCE_PURPOSE: Final = "statement.remittance_info"
#: Purpose of the keyed statement fingerprint (``FieldCipher.lookup`` of
#: :meth:`ParsedStatement.fingerprint`, which covers the counterparties).
CONTENT_PURPOSE: Final = "statement.content"


def entry_row_id(statement_row_id: int, line: int) -> str:
    """The row id a stored line's fields are sealed under: a ciphertext copied to another line
    fails to open."""
    return f"{statement_row_id}:{line}"


class EntryStatus(StrEnum):
    BOOKED = "booked"
    PENDING = "pending"
    INFO = "info"


class BalanceBasis(StrEnum):
    """Which lines the bank's closing booked balance includes.

    ``booking``: every booked line (the ISO 20022 definition). ``value_date``: only booked
    lines whose value date is on or before the closing balance's date — some banks (the Swiss
    PostFinance sample) compute CLBD that way and report later-valued lines in a forward
    balance. Both are checked; the one that balances is recorded, so nothing is hidden.
    """

    BOOKING = "booking"
    VALUE_DATE = "value_date"


@dataclass(frozen=True, slots=True)
class Entry:
    """One statement line."""

    amount_minor: int
    currency: str
    booking_date: date | None
    value_date: date | None
    status: EntryStatus
    bank_reference: str | None = None
    end_to_end_id: str | None = None
    #: The remittance / creditor reference used for matching.
    reference: str | None = None
    remittance_info: str | None = None
    counterparty_name: str | None = None
    counterparty_iban: str | None = None
    uetr: str | None = None
    #: Why a payment came back, when the line is a return (camt ``RtrInf/Rsn``: an ISO 20022
    #: external return reason code such as ``AC04``, or the bank's proprietary one). MT940
    #: has no field for it.
    return_reason: str | None = None

    @property
    def direction(self) -> Direction:
        return "credit" if self.amount_minor >= 0 else "debit"


@dataclass(frozen=True, slots=True)
class ParsedStatement:
    """One statement, report or notification as the bank sent it.

    ``opening_booked_minor`` / ``closing_booked_minor`` are ``None`` when the file has no such
    balance (camt.052/054, MT942): absence is stated, never filled in.
    """

    account: str
    currency: str
    statement_id: str
    sequence: str | None
    created_at: datetime | None
    opening_booked_minor: int | None
    closing_booked_minor: int | None
    entries: tuple[Entry, ...]
    #: ``camt.053.001.02``, ``mt940``, ``mt942``...
    format: str = ""
    opening_available_minor: int | None = None
    closing_available_minor: int | None = None
    closing_date: date | None = None
    #: Which lines the closing booked balance covers (``None`` when it cannot be checked).
    balance_basis: BalanceBasis | None = None
    #: Things the parser noticed and did not use, as values (e.g. a foreign-currency balance).
    notes: tuple[str, ...] = field(default=())
    #: Why the statement's balances cannot be trusted, when it was imported anyway under
    #: ``accept_unbalanced``: recorded as a statement-level break, and nothing of it posts.
    untrusted: str | None = None
    #: The gap, closing booked minus (opening booked + booked lines), when one is known.
    imbalance_minor: int | None = None

    @property
    def booked_sum_minor(self) -> int:
        return sum(e.amount_minor for e in self.entries if e.status is EntryStatus.BOOKED)

    @property
    def kind(self) -> str:
        """The message family: ``camt.052`` / ``camt.053`` / ``camt.054`` / ``mt940`` /
        ``mt942``. A statement's identity is (account, kind, id): a camt.052 report and a
        camt.054 notification may reuse an id without being the same document."""
        return (
            ".".join(self.format.split(".")[:2])
            if self.format.startswith("camt.")
            else (self.format)
        )

    @property
    def of_record(self) -> bool:
        """End-of-day statements (camt.053, MT940) are the bank's books: only their booked
        lines move money. Intraday reports and notifications (camt.052, camt.054, MT942)
        describe the same bookings again; posting them too would credit a wallet twice."""
        return self.kind in ("camt.053", "mt940")

    @property
    def label(self) -> str:
        seq = f" #{self.sequence}" if self.sequence else ""
        return f"{self.account} {self.statement_id}{seq}"

    def fingerprint(self) -> str:
        """SHA-256 over everything imported: two imports of the same statement have the same
        fingerprint, a different statement under the same id a different one. Unkeyed and
        over the counterparties, so never stored as is: the service stores its keyed
        ``FieldCipher.lookup`` (purpose :data:`CONTENT_PURPOSE`)."""
        parts: list[str] = [
            self.account, self.currency, self.statement_id, self.sequence or "",
            _opt(self.opening_booked_minor), _opt(self.closing_booked_minor),
            str(len(self.entries)),
        ]  # fmt: skip
        for e in self.entries:
            parts.extend(
                (
                    str(e.amount_minor), e.currency, _opt(e.booking_date), _opt(e.value_date),
                    e.status.value, e.bank_reference or "", e.end_to_end_id or "",
                    e.reference or "", e.remittance_info or "", e.counterparty_name or "",
                    e.counterparty_iban or "", e.uetr or "",
                )
            )  # fmt: skip
            if e.return_reason is not None:
                # Only when present: statements imported before it was read keep their
                # fingerprints (a re-import of one is still `already_imported`).
                parts.append(f"return_reason:{e.return_reason}")
        digest = hashlib.sha256()
        for part in parts:
            encoded = part.encode("utf-8", "surrogatepass")
            digest.update(f"{len(encoded)}:".encode())
            digest.update(encoded)
        return digest.hexdigest()


def _opt(value: object) -> str:
    return "" if value is None else str(value)


def balance_difference(statement: ParsedStatement) -> tuple[int | None, BalanceBasis | None]:
    """(closing - opening - booked lines, basis) — difference 0 means balanced.

    ``(None, None)`` when a booked balance is absent: nothing to check.
    """
    opening, closing = statement.opening_booked_minor, statement.closing_booked_minor
    if opening is None or closing is None:
        return None, None
    difference = closing - opening - statement.booked_sum_minor
    if difference == 0:
        return 0, BalanceBasis.BOOKING
    if statement.closing_date is not None:
        by_value = sum(
            e.amount_minor
            for e in statement.entries
            if e.status is EntryStatus.BOOKED
            and (e.value_date is None or e.value_date <= statement.closing_date)
        )
        if closing - opening - by_value == 0:
            return 0, BalanceBasis.VALUE_DATE
    return difference, None


def check_balanced(statement: ParsedStatement) -> ParsedStatement:
    """The statement with its ``balance_basis`` set, or :class:`StatementUnbalanced`."""
    difference, basis = balance_difference(statement)
    if difference is None:
        return statement
    if difference != 0:
        shown = Money(difference, statement.currency).format()
        raise StatementUnbalanced(
            f"statement {statement.label}: "
            f"opening {_fmt(statement.opening_booked_minor, statement)}"
            f" + booked lines {Money(statement.booked_sum_minor, statement.currency).format()}"
            f" != closing {_fmt(statement.closing_booked_minor, statement)}"
            f" (difference {shown} {statement.currency})",
            statement_id=statement.statement_id,
            difference_minor=difference,
        )
    if basis is statement.balance_basis:
        return statement
    from dataclasses import replace

    return replace(statement, balance_basis=basis)


def _fmt(value: int | None, statement: ParsedStatement) -> str:
    return "-" if value is None else Money(value, statement.currency).format()


# ---------------------------------------------------------------------------------------------
# Expected movements and matching
# ---------------------------------------------------------------------------------------------

Direction = Literal["credit", "debit"]
DIRECTIONS: Final = ("credit", "debit")


@dataclass(frozen=True, slots=True)
class Leg:
    """One ledger transfer to make when the line matches, of the line's (absolute) amount."""

    debit_account_name: str
    credit_account_name: str
    code: int


@dataclass(frozen=True, slots=True)
class ExpectedMovement:
    """A movement another context expects to see on a bank statement.

    ``amount_minor`` is positive, or ``None`` for any amount (a buyer's standing top-up
    reference). A one-shot expectation is consumed by its match; a ``standing`` one stays.
    """

    reference: str
    iban: str
    direction: Direction
    amount_minor: int | None
    currency: str
    standing: bool = False
    legs: tuple[Leg, ...] = ()


def normalize_reference(reference: str) -> str:
    """Matching key of a reference: upper case, without spaces (``rf18 5390 0754`` and
    ``RF1853900754`` are the same creditor reference)."""
    return "".join(reference.split()).upper()


def normalize_iban(iban: str) -> str:
    return "".join(iban.split()).upper()


def validate_expectation(expected: ExpectedMovement) -> ExpectedMovement:
    """Shape checks (in a fixed order); returns the expectation with normalised keys."""
    if not isinstance(expected.reference, str) or not expected.reference.strip():
        raise ExpectationInvalid("reference must be a non-empty string", param="reference")
    reference = normalize_reference(expected.reference)
    if len(reference) > limits.STATEMENT_REFERENCE_LENGTH_MAX or not reference.isprintable():
        raise ExpectationInvalid(
            f"reference must be printable and at most {limits.STATEMENT_REFERENCE_LENGTH_MAX}"
            " characters",
            param="reference",
        )
    if not isinstance(expected.iban, str) or not expected.iban.strip():
        raise ExpectationInvalid("iban must be a non-empty string", param="iban")
    if expected.direction not in DIRECTIONS:
        raise ExpectationInvalid("direction must be 'credit' or 'debit'", param="direction")
    amount = expected.amount_minor
    if amount is not None and (
        type(amount) is not int or not 0 < amount <= limits.AMOUNT_MAX_MINOR
    ):
        raise ExpectationInvalid(
            f"amount_minor must be None or an int in 1..{limits.AMOUNT_MAX_MINOR}",
            param="amount_minor",
        )
    if not is_currency(expected.currency):
        raise ExpectationInvalid(f"unknown currency {expected.currency!r}", param="currency")
    if type(expected.standing) is not bool:
        raise ExpectationInvalid("standing must be a bool", param="standing")
    if not expected.legs or len(expected.legs) > limits.STATEMENT_EXPECTATION_LEGS_MAX:
        raise ExpectationInvalid(
            f"an expectation needs 1..{limits.STATEMENT_EXPECTATION_LEGS_MAX} legs", param="legs"
        )
    for leg in expected.legs:
        if not isinstance(leg, Leg):
            raise ExpectationInvalid("legs must be Leg values", param="legs")
        for name in (leg.debit_account_name, leg.credit_account_name):
            if not isinstance(name, str) or not name or len(name) > limits.ACCOUNT_NAME_LENGTH_MAX:
                raise ExpectationInvalid(f"bad ledger account name {name!r}", param="legs")
        if leg.debit_account_name == leg.credit_account_name:
            raise ExpectationInvalid("a leg must move money between two accounts", param="legs")
        if type(leg.code) is not int or not 0 < leg.code <= limits.CODE_MAX:
            raise ExpectationInvalid(f"leg code must be 1..{limits.CODE_MAX}", param="legs")
    return ExpectedMovement(
        reference=reference,
        iban=normalize_iban(expected.iban),
        direction=expected.direction,
        amount_minor=amount,
        currency=expected.currency,
        standing=expected.standing,
        legs=tuple(expected.legs),
    )


@dataclass(frozen=True, slots=True)
class StoredExpectation:
    id: int
    movement: ExpectedMovement
    consumed: bool


class BreakReason(StrEnum):
    """Why a statement line did not reconcile. A closed set; values are stable."""

    ACCOUNT_NOT_REGISTERED = "account_not_registered"
    NO_REFERENCE = "no_reference"
    UNKNOWN_REFERENCE = "unknown_reference"
    AMBIGUOUS_REFERENCE = "ambiguous_reference"
    CURRENCY_MISMATCH = "currency_mismatch"
    WRONG_DIRECTION = "wrong_direction"
    AMOUNT_MISMATCH = "amount_mismatch"
    DUPLICATE = "duplicate"
    LEDGER_REJECTED = "ledger_rejected"
    #: The statement itself does not add up (line 0: the whole statement; amount: the gap).
    STATEMENT_UNBALANCED = "statement_unbalanced"


@dataclass(frozen=True, slots=True)
class LineMatch:
    entry_index: int
    expectation_id: int
    legs: tuple[Leg, ...]


@dataclass(frozen=True, slots=True)
class LineBreak:
    entry_index: int
    reason: BreakReason
    detail: str
    expectation_id: int | None = None


@dataclass(frozen=True, slots=True)
class Reconciliation:
    matches: tuple[LineMatch, ...]
    breaks: tuple[LineBreak, ...]
    #: One-shot expectations this statement consumes.
    consumed: frozenset[int]


#: Separators of the words of a free-text remittance ("Order 42 / PK-7F3A, thanks").
_REMITTANCE_SEPARATORS: Final = re.compile(r"[\s/,;:()\[\]]+")


def candidate_references(entry: Entry) -> list[str]:
    """The line's references that may name an expectation, most specific first: the
    end-to-end id, the structured reference, then each word of the free-text remittance
    (payers type our reference among other words). Only an exact, whole-word equality with a
    registered reference can match, and ``reconcile`` breaks a line whose words name two
    different expectations: a word is evidence, never a guess."""
    out: list[str] = []
    values: list[str] = [v for v in (entry.end_to_end_id, entry.reference) if v]
    if entry.remittance_info:
        words = _REMITTANCE_SEPARATORS.split(entry.remittance_info)
        values += [
            w
            for w in words
            if limits.STATEMENT_REMITTANCE_WORD_MIN <= len(w) <= limits.SEPA_REFERENCE_LENGTH_MAX
        ][: limits.STATEMENT_REMITTANCE_WORDS_MAX]
    for value in values:
        key = normalize_reference(value)
        if key and key not in out:
            out.append(key)
    return out


def reconcile(
    statement: ParsedStatement,
    *,
    registered: bool,
    expectations: Mapping[str, StoredExpectation],
) -> Reconciliation:
    """Match each booked line of ``statement`` against ``expectations`` (normalised reference
    -> expectation of this statement's account). Pending and information lines are recorded
    but neither matched nor broken: they are not money yet.

    A line matches only when exactly one expectation carries one of its references and the
    currency, direction and (when fixed) amount agree; everything else is a break with its
    reason. One-shot expectations are consumed in line order, so a second line for the same
    one is a ``duplicate``.
    """
    matches: list[LineMatch] = []
    breaks: list[LineBreak] = []
    consumed: set[int] = set()
    if statement.untrusted is not None:
        # A statement whose balances do not hold is evidence of nothing: record, post nothing.
        detail = f"{statement.untrusted}; no line of this statement was matched"
        return Reconciliation(
            (), (LineBreak(-1, BreakReason.STATEMENT_UNBALANCED, detail),), frozenset()
        )
    if not statement.of_record:
        # Recorded for information; the statement of record (camt.053 / MT940) will carry
        # the same bookings and is the one that moves money.
        return Reconciliation((), (), frozenset())
    for index, entry in enumerate(statement.entries):
        if entry.status is not EntryStatus.BOOKED:
            continue
        if not registered:
            breaks.append(
                LineBreak(index, BreakReason.ACCOUNT_NOT_REGISTERED,
                          f"account {statement.account} is not a registered bank account")
            )  # fmt: skip
            continue
        refs = candidate_references(entry)
        if not refs:
            breaks.append(LineBreak(index, BreakReason.NO_REFERENCE, "line carries no reference"))
            continue
        found: dict[int, StoredExpectation] = {}
        for ref in refs:
            hit = expectations.get(ref)
            if hit is not None:
                found[hit.id] = hit
        if not found:
            breaks.append(
                LineBreak(index, BreakReason.UNKNOWN_REFERENCE, f"no expectation for {refs}")
            )
            continue
        if len(found) > 1:
            ids = sorted(found)
            breaks.append(
                LineBreak(index, BreakReason.AMBIGUOUS_REFERENCE,
                          f"references name expectations {ids}")
            )  # fmt: skip
            continue
        (hit,) = found.values()
        m = hit.movement
        if not m.standing and (hit.consumed or hit.id in consumed):
            reason, detail = BreakReason.DUPLICATE, f"{m.reference} was already matched"
        elif entry.currency != m.currency:
            reason, detail = BreakReason.CURRENCY_MISMATCH, f"expected {m.currency}"
        elif entry.direction != m.direction:
            reason, detail = BreakReason.WRONG_DIRECTION, f"expected a {m.direction}"
        elif m.amount_minor is not None and abs(entry.amount_minor) != m.amount_minor:
            reason = BreakReason.AMOUNT_MISMATCH
            detail = f"expected {Money(m.amount_minor, m.currency).format()}"
        elif entry.amount_minor == 0:
            reason, detail = BreakReason.AMOUNT_MISMATCH, "a zero line moves no money"
        else:
            matches.append(LineMatch(index, hit.id, m.legs))
            if not m.standing:
                consumed.add(hit.id)
            continue
        breaks.append(LineBreak(index, reason, f"{m.reference}: {detail}", hit.id))
    return Reconciliation(tuple(matches), tuple(breaks), frozenset(consumed))


def transfer_id(account: str, statement_id: str, entry_index: int, leg_index: int) -> int:
    """The ledger transfer id of one leg of one matched line: derived from the statement's
    identity, so a re-import or a retry after a crash names the same transfers and the
    ledger's idempotency answers ``exists`` instead of posting twice."""
    digest = hashlib.sha256(
        f"paykeep.statements|{len(account)}:{account}|{len(statement_id)}:{statement_id}"
        f"|{entry_index}|{leg_index}".encode()
    ).digest()
    value = int.from_bytes(digest[:8], "big") & limits.ID_MAX
    return value or 1


# ---------------------------------------------------------------------------------------------
# Return to sender: unidentified money goes back where it came from
# ---------------------------------------------------------------------------------------------

#: Where a line returned to its sender is parked between the statement and the return payout:
#: money nobody at Paykeep can name an owner for is still a customer's (its sender's), so it is
#: a liability (counted in safeguarding), and it can never go negative.
SUSPENSE_ACCOUNT: Final = "suspense:unidentified"
#: Ledger account code of a liability (the chart's codes: 1 asset, 2 liability, 4 revenue).
SUSPENSE_ACCOUNT_CODE: Final = 2
#: Ledger transfer code of ``bank:safeguarding:<bank> -> suspense:unidentified``.
SUSPENSE_TRANSFER_CODE: Final = 43
#: Ledger transfer code of the way back, ``suspense:unidentified -> bank:safeguarding:<bank>``:
#: a line whose return failed is matched or explained instead, and leaves suspense first.
SUSPENSE_RELEASE_TRANSFER_CODE: Final = 44
#: Who the trail names for what Paykeep did by itself (the bank's answer, a bounced return).
SYSTEM_ACTOR: Final = "paykeep"


class BreakState(StrEnum):
    """Where a break is. ``open`` and ``return_failed`` wait for a person (both are listed by
    ``statements breaks``); the others are resolutions. ``returned`` means a return payout is
    on its way or was paid; if the bank rejects it or the payee's bank sends it back, the
    break becomes ``return_failed`` with the money back in ``suspense:unidentified``.
    ``bounced`` is a credit line Paykeep recognised as one of its return payouts coming back:
    its money joined the break it belongs to."""

    OPEN = "open"
    RETURN_FAILED = "return_failed"
    EXPLAINED = "explained"
    MATCHED = "matched"
    RETURNED = "returned"
    BOUNCED = "bounced"


class BreakAction(StrEnum):
    EXPLAIN = "explain"
    MATCH = "match"
    RETURN = "return"
    FAIL_RETURN = "fail_return"
    BOUNCE = "bounce"


BREAK_TRANSITIONS: Final[dict[tuple[BreakState, BreakAction], BreakState]] = {
    (BreakState.OPEN, BreakAction.EXPLAIN): BreakState.EXPLAINED,
    (BreakState.OPEN, BreakAction.MATCH): BreakState.MATCHED,
    (BreakState.OPEN, BreakAction.RETURN): BreakState.RETURNED,
    (BreakState.OPEN, BreakAction.BOUNCE): BreakState.BOUNCED,
    (BreakState.RETURNED, BreakAction.FAIL_RETURN): BreakState.RETURN_FAILED,
    (BreakState.RETURN_FAILED, BreakAction.RETURN): BreakState.RETURNED,
    (BreakState.RETURN_FAILED, BreakAction.EXPLAIN): BreakState.EXPLAINED,
    (BreakState.RETURN_FAILED, BreakAction.MATCH): BreakState.MATCHED,
}

#: States that wait for a person: not resolved (``resolved_at_ns`` is NULL).
UNRESOLVED_STATES: Final = frozenset({BreakState.OPEN, BreakState.RETURN_FAILED})


def break_transition(state: BreakState, action: BreakAction) -> BreakState:
    """The one way a break changes state; anything not in the table is
    :class:`BreakAlreadyResolved` (every refused action starts from a resolution)."""
    nxt = BREAK_TRANSITIONS.get((state, action))
    if nxt is None:
        raise BreakAlreadyResolved(f"a {state.value} break cannot {action.value.replace('_', ' ')}")
    return nxt


#: Breaks whose line may be returned to its sender (see README "Return to sender"): the
#: unidentified kinds (no, unknown or ambiguous reference) and the identified-but-unusable
#: credits (a wrong amount, a one-shot reference paid twice). Not ``wrong_direction`` (a credit
#: that carries one of our payout references is most likely the bank bouncing our own payout:
#: sending it back would ping-pong it), nor ``currency_mismatch`` (it cannot arise on a
#: registered account: a line is in the account's currency and so is every expectation of it
#: — it signals a registry problem to investigate), nor ``account_not_registered`` (no ledger
#: account to post from), ``ledger_rejected`` (the line is matched; its legs are what failed),
#: or ``statement_unbalanced`` (nothing of an untrusted statement moves money).
RETURNABLE_REASONS: Final = frozenset(
    {
        BreakReason.NO_REFERENCE.value,
        BreakReason.UNKNOWN_REFERENCE.value,
        BreakReason.AMBIGUOUS_REFERENCE.value,
        BreakReason.AMOUNT_MISMATCH.value,
        BreakReason.DUPLICATE.value,
    }
)


def suspense_transfer_id(account: str, statement_id: str, line: int) -> int:
    """The ledger transfer id that parks a returned line in suspense: derived from the line's
    identity like an import's legs (so a retry gets ``exists``), under its own domain tag so it
    can never equal one of the line's import legs."""
    digest = hashlib.sha256(
        f"paykeep.statements.return|{len(account)}:{account}"
        f"|{len(statement_id)}:{statement_id}|{line}".encode()
    ).digest()
    value = int.from_bytes(digest[:8], "big") & limits.ID_MAX
    return value or 1


def suspense_release_transfer_id(account: str, statement_id: str, line: int) -> int:
    """The ledger transfer id that takes a parked line back out of suspense (its return failed
    and it is matched or explained instead): derived from the line, like the parking, under
    its own domain tag. A line is parked once and released at most once."""
    digest = hashlib.sha256(
        f"paykeep.statements.release|{len(account)}:{account}"
        f"|{len(statement_id)}:{statement_id}|{line}".encode()
    ).digest()
    value = int.from_bytes(digest[:8], "big") & limits.ID_MAX
    return value or 1


def check_entry_currency(statement_currency: str, entries: Iterable[Entry], label: str) -> None:
    for i, entry in enumerate(entries):
        if entry.currency != statement_currency:
            raise StatementCurrencyInvalid(
                f"statement {label}: line {i + 1} is in {entry.currency}, "
                f"the statement in {statement_currency}"
            )
