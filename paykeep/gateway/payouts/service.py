"""Payout use cases: request, batch into pain.001, submit, record the bank's answer, settle.

Transaction boundaries live here (``Database.write()``). Where money moves together with our
rows — a request's transfer and its payout row, a rejected payout's return and its state (and
its statement break's), a return to sender, a settled payout the payee's bank sent back (its
statement line and break too) — the ledger posts inside the same transaction
(``Ledger.create_transfers_within``): all of it or nothing. Whoever owns payouts (payments:
merchants' payouts, buyers' withdrawals) hears of each return inside that transaction
(:meth:`PayoutService.on_returned`), so its own record and events commit with it. Ledger
transfer ids are still derived from what they answer to (``paykeep.ids.derived_id``), so a
retry gets ``exists`` and never moves money twice, and :meth:`PayoutService.resume` finishes
whatever a crash left undone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from paykeep import limits
from paykeep.clock import Clock, SystemClock, ns_to_datetime
from paykeep.db import Database
from paykeep.db.quarantine import Quarantine
from paykeep.errors import InvalidInput, PaykeepError
from paykeep.gateway.payouts import pain001
from paykeep.gateway.payouts.errors import (
    PayoutAccountNotFound,
    PayoutBankUnavailable,
    PayoutBatchNotFound,
    PayoutCurrencyUnsupported,
    PayoutInputInvalid,
    PayoutInsufficientFunds,
    PayoutNotFound,
    PayoutNothingToBatch,
    PayoutRequestIdReused,
)
from paykeep.gateway.payouts.model import (
    ASSET_ACCOUNT_CODE,
    BATCH_FILE_PURPOSE,
    CLEARING_ACCOUNT,
    CREDITOR_IBAN_PURPOSE,
    CREDITOR_NAME_PURPOSE,
    DEFAULT_SCHEMA,
    REMITTANCE_PURPOSE,
    REQUEST_FINGERPRINT_PURPOSE,
    REQUEST_TRANSFER_CODE,
    RETURN_FEE_TRANSFER_CODE,
    RETURN_TRANSFER_CODE,
    SCHEMAS,
    SENT_BACK_TRANSFER_CODE,
    SETTLEMENT_TRANSFER_CODE,
    Batch,
    BatchAction,
    BatchState,
    Debtor,
    Payout,
    PayoutAction,
    PayoutRequest,
    PayoutState,
    ReturnKind,
    bank_answer_code,
    batch_transition,
    check_currency,
    check_limits,
    default_remittance,
    derived_id,
    end_to_end_id,
    message_id,
    normalize_iban,
    payout_transition,
    return_reason_text,
    return_remittance,
    return_request_id,
    sent_back_fee,
    validate_creditor_name,
    validate_debtor,
    validate_request,
)
from paykeep.gateway.payouts.repository import PayoutRepository
from paykeep.gateway.statements.model import normalize_reference
from paykeep.ids import IdGenerator
from paykeep.ledger.errors import AccountNotFound, transfer_error
from paykeep.ledger.model import (
    Account,
    CreateTransferResult,
    NewAccount,
    NewTransfer,
    TransferFlags,
)
from paykeep.ledger.service import Ledger
from paykeep.security.fields import FieldCipher

if TYPE_CHECKING:
    from paykeep.gateway.statements.repository import BounceCandidate, StoredBreak
    from paykeep.gateway.statements.service import ReturnableLine, StatementService

log = logging.getLogger("paykeep.gateway.payouts")

_EXISTS = CreateTransferResult.EXISTS
_REUSED = frozenset(
    r for r in CreateTransferResult if r.value.startswith("exists_with_different")
) | {CreateTransferResult.REFERENCE_ALREADY_USED}
_SHORT_OF_FUNDS = frozenset({CreateTransferResult.EXCEEDS_CREDITS})


@dataclass(frozen=True, slots=True)
class BankAnswer:
    """The bank's verdict on a payment file: ``ACCP`` or ``RJCT`` with an ISO reason code."""

    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class BatchFile:
    batch: Batch
    events: list[dict[str, Any]]
    payouts: list[Payout]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.batch.to_json(),
            "trail": self.events,
            "payouts": [p.to_json() for p in self.payouts],
        }


@dataclass(frozen=True, slots=True)
class _NewPayout:
    """A request turned into its payout row, its ledger transfer and its sealed creditor:
    everything :meth:`PayoutService._insert_within` writes."""

    payout: Payout
    transfer: NewTransfer
    creditor_name_enc: bytes
    creditor_iban_enc: bytes
    remittance_enc: bytes


@dataclass(frozen=True, slots=True)
class ReturnedBreak:
    """A break resolved by sending its line back: the resolved break, the payout carrying the
    money back (its ``attempt``-th), and the ledger transfer that parked the line in
    ``suspense:unidentified``."""

    break_: StoredBreak
    payout: Payout
    suspense_transfer_id: int
    attempt: int = 1

    def to_json(self) -> dict[str, Any]:
        from paykeep.gateway.statements.service import break_json

        return {
            "break": break_json(self.break_),
            "payout": self.payout.to_json(),
            "suspense_transfer_id": self.suspense_transfer_id,
            "attempt": self.attempt,
            "attempts_max": limits.STATEMENT_RETURN_ATTEMPTS_MAX,
        }


@dataclass(frozen=True, slots=True)
class ReturnedPayout:
    """A payout whose money just came back to the account it was drawn from, as the
    transaction that moved it recorded it: the payout (now ``returned``, with its
    ``return_kind``, reason and fee), what came back (``returned_minor``: the payout's amount
    less ``fee_minor``, what the payee's bank kept) and, for a payout sent back after
    settlement, the statement line that brought it (``statement_id``, ``line``, its break)."""

    payout: Payout
    returned_minor: int
    fee_minor: int
    statement_id: str | None = None
    line: int | None = None
    break_id: int | None = None

    @property
    def kind(self) -> ReturnKind:
        assert self.payout.return_kind is not None
        return self.payout.return_kind


#: Told of every returned payout, inside the transaction that returns it (its connection, the
#: return): the owner's records and events commit with the money or not at all. A typed
#: error it raises rolls the return back.
ReturnListener = Callable[[Connection, ReturnedPayout], None]


class _BreakChanged(Exception):
    """Raised inside a return's transaction (rolling it back) when the locked break is not in
    the state the checks saw: a concurrent return or resolution won."""

    def __init__(self, break_: StoredBreak) -> None:
        super().__init__(f"break {break_.id} changed")
        self.break_ = break_


def _corrected(value: str | None, param: str, check: Callable[[object, str], str]) -> str | None:
    """An operator's corrected return destination, checked for shape. Its refusal is the
    break's (``statement_break_resolution_invalid``) and never echoes the value: an IBAN or a
    name is someone's personal data, and errors are returned and logged."""
    from paykeep.gateway.statements.errors import BreakResolutionInvalid

    if value is None:
        return None
    try:
        return check(value, param)
    except InvalidInput as exc:
        raise BreakResolutionInvalid(exc.message, param=param) from None


#: The worker passes' names among the workers' items (``paykeep.db.quarantine``); the items
#: are payout ids.
RESUME_ITEMS = "gateway.payouts.resume"
SETTLE_ITEMS = "gateway.payouts.settle"
SENT_BACK_ITEMS = "gateway.payouts.return_sent_back"
BOUNCED_RETURN_ITEMS = "gateway.payouts.reclaim_bounced_returns"


def _unique_violation(exc: BaseException) -> bool:
    cause = getattr(exc, "orig", None)
    return isinstance(cause, sqlite3.IntegrityError | psycopg.errors.UniqueViolation)


class PayoutService:
    """Merchants' withdrawals. ``statements`` (the statement import service) is told what to
    expect on the bank statement once the bank has accepted a file; without it the payouts stop
    at ``accepted`` until :meth:`resume` runs with one.

    ``cipher`` seals what identifies a person before it is written: the creditor's name and
    IBAN and the remittance text (row id: the payout id) and the batch's copy of its file (row
    id: the batch id); it opens them only to build the file and to hand the file to the bank."""

    def __init__(
        self,
        database: Database,
        ledger: Ledger | None = None,
        *,
        cipher: FieldCipher,
        clock: Clock | None = None,
        statements: StatementService | None = None,
        quarantine: Quarantine | None = None,
    ) -> None:
        self.database = database
        self.cipher = cipher
        self.clock = clock or SystemClock()
        self.ledger = ledger or Ledger(database, self.clock)
        self.ids = IdGenerator(self.clock)
        self.statements = statements
        #: The passes' payouts that failed unexpectedly: backed off, then parked.
        self.quarantine = quarantine or Quarantine(database, self.clock)
        self._return_listeners: list[ReturnListener] = []

    def on_returned(self, listener: ReturnListener) -> None:
        """Tell ``listener`` of every payout returned from now on — rejected by the bank or
        sent back by the payee's bank after it settled — inside the transaction that returns
        it. The payments context registers here for its merchants' payouts and buyers'
        withdrawals (a payout it does not own is its to ignore). Registering the same listener
        twice tells it once."""
        if listener not in self._return_listeners:
            self._return_listeners.append(listener)

    def _tell_returned(self, conn: Connection, returned: ReturnedPayout) -> None:
        for listener in self._return_listeners:
            listener(conn, returned)

    # ------------------------------------------------------------------ request

    def request(
        self,
        merchant_ref: str,
        amount_minor: int,
        currency: str,
        debit_account_name: str,
        creditor_name: str,
        creditor_iban: str,
        *,
        request_id: str,
        creditor_bic: str | None = None,
        remittance: str | None = None,
    ) -> Payout:
        """Move ``amount_minor`` from ``debit_account_name`` to ``clearing:payout`` now and
        queue the payout for the next batch. A replay of ``request_id`` returns the original
        payout; the same id with other details is :class:`PayoutRequestIdReused`."""
        return self.submit_request(
            PayoutRequest(
                request_id=request_id,
                merchant_ref=merchant_ref,
                amount_minor=amount_minor,
                currency=currency,
                debit_account_name=debit_account_name,
                creditor_name=creditor_name,
                creditor_iban=creditor_iban,
                creditor_bic=creditor_bic,
                remittance=remittance,
            )
        )

    def submit_request(self, request: PayoutRequest) -> Payout:
        req = validate_request(request)  # 1. shape
        # Keyed: the plain digest covers the IBAN and would let anyone holding the table test
        # candidate IBANs against it.
        fingerprint = self.cipher.lookup(req.fingerprint(), purpose=REQUEST_FINGERPRINT_PURPOSE)
        with self.database.read() as conn:  # 2. idempotency
            existing = PayoutRepository(conn).payout_by_request(req.request_id)
        if existing is not None:
            return self._replay(existing, fingerprint)
        new = self._new_payout(req, fingerprint)  # 3. references, 4. limits
        try:
            # The money leaves the debit account and the payout that owes it to the creditor
            # are one transaction: money never sits in clearing:payout without a payout to
            # send it (a crash between two transactions left it there until a retry).
            with self.database.write() as conn:
                self._insert_within(conn, new)
        except sa.exc.IntegrityError as exc:
            if not _unique_violation(exc):
                raise
            # A concurrent replay of the same request won (its transfer and row committed
            # together; ours rolled back): the first row stands.
            with self.database.read() as conn:
                winner = PayoutRepository(conn).payout_by_request(req.request_id)
            if winner is None:
                raise
            return self._replay(winner, fingerprint)
        return new.payout

    def _new_payout(self, req: PayoutRequest, fingerprint: str) -> _NewPayout:
        """A validated request's payout, its ledger transfer and its sealed creditor, checked
        against the references (the account drawn from, its currency) and the limits; nothing
        written."""
        account = self._account(req.debit_account_name)
        if account.currency != req.currency:
            raise PayoutCurrencyUnsupported(
                f"{req.debit_account_name} holds {account.currency}, not {req.currency}",
                param="currency",
            )
        clearing = self._clearing(req.currency)
        check_limits(req)  # the balance check is the ledger's, when the transfer is posted
        transfer_id = derived_id("payout-request", req.request_id)
        transfer = NewTransfer(
            id=transfer_id,
            debit_account_id=account.id,
            credit_account_id=clearing.id,
            amount_minor=req.amount_minor,
            currency=req.currency,
            code=REQUEST_TRANSFER_CODE,
            reference=f"payout:{req.request_id}",
            metadata={"payout_request": req.request_id, "merchant": req.merchant_ref},
        )
        now = self.clock.now_ns()
        payout_id = self.ids.next_id()
        payout = Payout(
            payout_id=payout_id,
            request_id=req.request_id,
            fingerprint=fingerprint,
            merchant_ref=req.merchant_ref,
            debit_account_name=req.debit_account_name,
            amount_minor=req.amount_minor,
            currency=req.currency,
            creditor_iban_last4=req.creditor_iban[-4:],
            creditor_bic=req.creditor_bic,
            end_to_end_id=end_to_end_id(payout_id),
            state=PayoutState.REQUESTED,
            batch_id=None,
            request_transfer_id=transfer_id,
            return_transfer_id=None,
            expected=False,
            created_at_ns=now,
            updated_at_ns=now,
        )
        row_id = str(payout_id)
        return _NewPayout(
            payout=payout,
            transfer=transfer,
            creditor_name_enc=self.cipher.seal(
                req.creditor_name, purpose=CREDITOR_NAME_PURPOSE, row_id=row_id
            ),
            creditor_iban_enc=self.cipher.seal(
                req.creditor_iban, purpose=CREDITOR_IBAN_PURPOSE, row_id=row_id
            ),
            # Free text: an operator's words or a returned transfer's reference may name a
            # person.
            remittance_enc=self.cipher.seal(
                default_remittance(req), purpose=REMITTANCE_PURPOSE, row_id=row_id
            ),
        )

    def _insert_within(
        self, conn: Connection, new: _NewPayout, *, before: Sequence[NewTransfer] = ()
    ) -> None:
        """Post ``before`` (already-derived transfers the payout's money comes through, e.g. a
        returned line entering suspense: ``exists`` is fine) and the payout's own transfer,
        then write the payout row, all in the caller's transaction."""
        req = new.payout
        results = self.ledger.create_transfers_within(conn, [*before, new.transfer])
        for transfer, result in zip(before, results, strict=False):
            if not result.applied_or_exists:
                raise transfer_error(result.result, transfer.id)
        result = results[-1]
        if result.result in _REUSED:
            raise PayoutRequestIdReused(
                f"request id {req.request_id!r} was used for another payout", param="request_id"
            )
        if result.result in _SHORT_OF_FUNDS:
            raise PayoutInsufficientFunds(
                f"{req.debit_account_name} does not hold {req.amount_minor} {req.currency}",
                param="amount",
            )
        if not result.applied_or_exists:
            raise transfer_error(result.result, new.transfer.id)
        PayoutRepository(conn).insert_payout(
            new.payout,
            creditor_name_enc=new.creditor_name_enc,
            creditor_iban_enc=new.creditor_iban_enc,
            remittance_enc=new.remittance_enc,
        )

    def _replay(self, existing: Payout, fingerprint: str) -> Payout:
        if existing.fingerprint != fingerprint:
            raise PayoutRequestIdReused(
                f"request id {existing.request_id!r} was used for another payout",
                param="request_id",
            )
        return existing

    def _account(self, name: str) -> Account:
        try:
            return self.ledger.account_by_name(name)
        except AccountNotFound:
            raise PayoutAccountNotFound(
                f"no ledger account named {name!r}", param="debit_account_name"
            ) from None

    def _clearing(self, currency: str) -> Account:
        try:
            clearing = self.ledger.account_by_name(CLEARING_ACCOUNT)
        except AccountNotFound:
            # A derived id: two processes creating it at once create the same account.
            self.ledger.create_accounts(
                [
                    NewAccount(
                        id=derived_id("account", CLEARING_ACCOUNT),
                        currency=currency,
                        code=ASSET_ACCOUNT_CODE,
                        name=CLEARING_ACCOUNT,
                    )
                ]
            )
            clearing = self.ledger.account_by_name(CLEARING_ACCOUNT)
        if clearing.currency != currency:
            raise PayoutCurrencyUnsupported(
                f"{CLEARING_ACCOUNT} is a {clearing.currency} account", param="currency"
            )
        return clearing

    # ------------------------------------------------------------------ return to sender

    def return_break(
        self,
        break_id: int,
        *,
        actor: str,
        note: str,
        creditor_iban: str | None = None,
        creditor_name: str | None = None,
    ) -> ReturnedBreak:
        """Send an incoming transfer nobody can apply (a statement break waiting for a person)
        back to whoever sent it, and resolve the break as ``returned``.

        One transaction, with the break locked: the line enters the ledger
        (``bank:safeguarding:<bank> -> suspense:unidentified``, transfer id derived from the
        line: ``exists`` once it is there), a payout from ``suspense:unidentified`` to the
        sender is made (its transfer to ``clearing:payout`` and its row), and the break
        becomes ``returned`` with the payout and the attempt number — all of it or nothing. A
        concurrent return or resolution of the same break waits for the lock and then finds
        it changed (``statement_break_return_in_flight``, ``..._already_resolved``): a break is
        never returned twice at once.

        If the bank rejects the payout, or the payee's bank sends it back, the money comes
        back to ``suspense:unidentified`` and the break becomes ``return_failed``; this method
        then sends it again (a new payout: attempt n has request id
        ``statement-return:<statement row>:<line>:<n>``), at most
        ``STATEMENT_RETURN_ATTEMPTS_MAX`` attempts in all. A retry goes where the failed
        attempt went unless ``creditor_iban`` / ``creditor_name`` correct it (a retry only:
        a first return goes to the account the money came from); both are sealed in the
        payout like any creditor and never written elsewhere.

        Checks, in this order, before anything is written: shape (the corrected destination,
        actor, note, id) -> identity (the break) -> state (waiting for a person; a returned
        break is ``..._return_in_flight`` until its payout settles, then
        ``..._already_returned``) -> limits (attempts) -> the line (returnable, see
        :meth:`StatementService.returnable_line`) -> the payout's own checks (IBAN, name,
        currency, amount limit: ``statement_break_not_returnable``). The payout then runs like
        any other: batched into pain.001, expected on acceptance, settled by the statement.
        """
        from paykeep.gateway.statements.errors import (
            BreakNotReturnable,
            BreakResolutionInvalid,
            BreakReturnAttemptsExhausted,
            LedgerAccountNotFound,
        )
        from paykeep.gateway.statements.model import BreakState

        statements = self._statements_for_returns()
        iban = _corrected(creditor_iban, "iban", normalize_iban)  # 1. shape
        name = _corrected(creditor_name, "name", validate_creditor_name)
        b = statements.break_for_return(break_id, actor=actor, note=note)  # 2. identity
        self._refuse_unless_returnable(b)  # 3. state
        corrected = iban is not None or name is not None
        if corrected and b.state is BreakState.OPEN:
            raise BreakResolutionInvalid(
                "a first return goes to the account the money came from; a destination can be "
                "corrected only when a return failed",
                param="iban" if iban is not None else "name",
            )
        attempt = b.return_attempts + 1  # 4. limits
        if attempt > limits.STATEMENT_RETURN_ATTEMPTS_MAX:
            raise BreakReturnAttemptsExhausted(
                f"break {b.id} was sent back {b.return_attempts} times and every attempt failed "
                f"(the last: {b.return_failure}); match it or explain it",
                param="break_id",
            )
        line = statements.returnable_line(b)
        previous = self._creditor(b.return_payout_id) if b.return_payout_id else None
        request = self._return_request(
            line,
            attempt,
            creditor_name=name or (previous[0] if previous else line.counterparty_name),
            creditor_iban=iban or (previous[1] if previous else line.counterparty_iban),
        )
        try:
            req = validate_request(request)
            check_limits(req)
            self._clearing_currency(req.currency)
            statements.suspense_account(req.currency)
        except (InvalidInput, LedgerAccountNotFound) as exc:
            # The payout's own checks (IBAN, name, currency, amount limit), run before anything
            # is written; their messages never echo the sender's IBAN.
            raise BreakNotReturnable(
                f"break {b.id} cannot be returned: {exc.message}", param="break_id"
            ) from None
        # The accounts the transaction posts to exist first (each created once, derived id).
        statements.ensure_suspense_account(req.currency)
        self._clearing(req.currency)
        fingerprint = self.cipher.lookup(req.fingerprint(), purpose=REQUEST_FINGERPRINT_PURPOSE)
        new = self._new_payout(req, fingerprint)
        park = statements.park_transfer(line)
        detail = (
            f"attempt {attempt} of {limits.STATEMENT_RETURN_ATTEMPTS_MAX}: return payout "
            f"{new.payout.payout_id} to ****{req.creditor_iban[-4:]}"
            + (" (destination corrected)" if corrected else "")
        )
        try:
            with self.database.write() as conn:
                current = statements.lock_break_within(conn, b.id)
                if (current.state, current.return_attempts) != (b.state, b.return_attempts):
                    raise _BreakChanged(current)  # a concurrent return or resolution won
                self._insert_within(conn, new, before=[park])
                statements.mark_returned_within(
                    conn, current, actor=actor, note=note, payout_id=new.payout.payout_id,
                    attempt=attempt, detail=detail,
                )  # fmt: skip
        except sa.exc.IntegrityError as exc:
            if not _unique_violation(exc):
                raise
            # Only a payout with this attempt's request id can collide, and one is made only
            # under the break's lock with the break moving on: the break has changed.
            self._refuse_unless_returnable(statements.get_break(b.id))
            raise
        except _BreakChanged as changed:
            raise self._changed_error(changed.break_) from None
        return ReturnedBreak(statements.get_break(b.id), new.payout, park.id, attempt)

    def _refuse_unless_returnable(self, b: StoredBreak) -> None:
        """The state check of a return, with the error that says what to do instead."""
        from paykeep.gateway.statements.errors import (
            BreakAlreadyResolved,
            BreakAlreadyReturned,
            BreakReturnInFlight,
        )
        from paykeep.gateway.statements.model import UNRESOLVED_STATES, BreakState

        if b.state is BreakState.RETURNED:
            payout = self.get(b.return_payout_id) if b.return_payout_id is not None else None
            if payout is not None and payout.state is PayoutState.SETTLED:
                raise BreakAlreadyReturned(
                    f"break {b.id} was returned: payout {payout.payout_id} left the bank "
                    "(its statement line is matched)",
                    param="break_id",
                )
            shown = "unknown" if payout is None else f"{payout.payout_id} ({payout.state.value})"
            raise BreakReturnInFlight(
                f"break {b.id}'s return payout {shown} is on its way; if the bank rejects it "
                "or sends it back, the break becomes return_failed and may be returned again",
                param="break_id",
            )
        if b.state not in UNRESOLVED_STATES:
            raise BreakAlreadyResolved(
                f"break {b.id} is already resolved ({b.state.value})", param="break_id"
            )

    def _changed_error(self, b: StoredBreak) -> PaykeepError:
        from paykeep.gateway.statements.errors import BreakReturnInFlight

        try:
            self._refuse_unless_returnable(b)
        except PaykeepError as exc:
            return exc
        # Still waiting for a person, with another attempt count: a return came and failed in
        # between. Nothing was written; the operator looks again.
        return BreakReturnInFlight(
            f"break {b.id} changed while it was being returned; look at it again",
            param="break_id",
        )

    def _creditor(self, payout_id: int) -> tuple[str, str]:
        """``(name, IBAN)`` of a payout, opened: a retry goes where the failed attempt went."""
        with self.database.read() as conn:
            sealed = PayoutRepository(conn).sealed_lines([payout_id])
        line = sealed[payout_id]
        row_id = str(payout_id)
        return (
            self.cipher.open(line.creditor_name_enc, purpose=CREDITOR_NAME_PURPOSE, row_id=row_id),
            self.cipher.open(line.creditor_iban_enc, purpose=CREDITOR_IBAN_PURPOSE, row_id=row_id),
        )

    def creditor_iban_within(self, conn: Connection, payout_id: int) -> str:
        """The IBAN ``payout_id`` was paid to, opened, read in the caller's transaction: the
        payments context compares it with a merchant's payout IBAN when a payout comes back
        (is the account it doubts still the merchant's?). Never logged or returned by an API."""
        sealed = PayoutRepository(conn).sealed_lines([payout_id])
        if payout_id not in sealed:
            raise PayoutNotFound(f"no payout {payout_id}", param="payout_id")
        return self.cipher.open(
            sealed[payout_id].creditor_iban_enc,
            purpose=CREDITOR_IBAN_PURPOSE,
            row_id=str(payout_id),
        )

    def _statements_for_returns(self) -> StatementService:
        if self.statements is None:
            # Without it the return's outgoing line could never be expected or settled.
            raise PayoutInputInvalid("returning a statement break needs the statements service")
        return self.statements

    def _return_request(
        self, line: ReturnableLine, attempt: int, *, creditor_name: str, creditor_iban: str
    ) -> PayoutRequest:
        from paykeep.gateway.statements.model import SUSPENSE_ACCOUNT

        b = line.break_
        return PayoutRequest(
            request_id=return_request_id(b.statement_row_id, b.line, attempt),
            merchant_ref=f"statement-break:{b.id}",
            amount_minor=line.amount_minor,
            currency=line.currency,
            debit_account_name=SUSPENSE_ACCOUNT,
            # The sender's own account, as their bank reported it (or as an operator corrected
            # it after a failed attempt).
            creditor_name=creditor_name[: limits.PAYOUT_CREDITOR_NAME_LENGTH_MAX],
            creditor_iban=creditor_iban,
            remittance=return_remittance(line.bank_reference, b.id),
        )

    def _clearing_currency(self, currency: str) -> None:
        """Refuse a currency ``clearing:payout`` does not hold, without creating it."""
        try:
            clearing = self.ledger.account_by_name(CLEARING_ACCOUNT)
        except AccountNotFound:
            return
        if clearing.currency != currency:
            raise PayoutCurrencyUnsupported(
                f"{CLEARING_ACCOUNT} is a {clearing.currency} account", param="currency"
            )

    # ------------------------------------------------------------------ batch

    def batch(
        self,
        currency: str,
        debtor: Debtor,
        *,
        schema: str = DEFAULT_SCHEMA,
        limit: int = limits.PAYOUT_BATCH_SIZE_MAX,
    ) -> Batch:
        """Put the oldest requested payouts (at most ``limit``) into one pain.001 file.

        The file is generated and validated against the XSD in the same transaction that
        marks the payouts batched: an invalid file raises :class:`PayoutFileInvalid` and
        changes nothing. The message id derives from a fresh time-ordered batch id and is
        unique in the database, so it is never reused, even after a crash.
        """
        check_currency(currency)
        debtor = validate_debtor(debtor)
        if schema not in SCHEMAS:
            raise PayoutInputInvalid(f"schema must be one of {SCHEMAS}", param="schema")
        if type(limit) is not int or not 0 < limit <= limits.PAYOUT_BATCH_SIZE_MAX:
            raise PayoutInputInvalid(
                f"limit must be 1..{limits.PAYOUT_BATCH_SIZE_MAX}", param="limit"
            )
        bank_account = self._account(debtor.ledger_account)
        if bank_account.currency != currency:
            raise PayoutCurrencyUnsupported(
                f"{debtor.ledger_account} is a {bank_account.currency} account", param="currency"
            )
        if self.statements is not None:
            try:
                self.statements.add_account(debtor.iban, currency, debtor.ledger_account)
            except sa.exc.IntegrityError as exc:
                if not _unique_violation(exc):
                    raise
                # A concurrent batcher registered it first; the second call finds it.
                self.statements.add_account(debtor.iban, currency, debtor.ledger_account)
        now = self.clock.now_ns()
        created = ns_to_datetime(now)
        batch_id = self.ids.next_id()
        msg_id = message_id(batch_id)
        with self.database.write() as conn:
            repo = PayoutRepository(conn)
            pending = repo.requested(currency, limit)
            if not pending:
                raise PayoutNothingToBatch(f"no requested {currency} payout is waiting")
            batch = Batch(
                batch_id=batch_id,
                message_id=msg_id,
                schema=schema,
                currency=currency,
                debtor=debtor,
                state=BatchState.OPEN,
                payout_count=len(pending),
                control_sum_minor=sum(p.amount_minor for p in pending),
                execution_date=created.date().isoformat(),
                file_sha256=None,
                destination=None,
                bank_status=None,
                bank_reason=None,
                created_at_ns=now,
                updated_at_ns=now,
            )
            repo.insert_batch(batch, None)
            repo.add_event(batch_id, now, None, BatchState.OPEN, f"{len(pending)} payouts")
            for payout in pending:
                batched = payout_transition(payout.state, PayoutAction.BATCH)
                repo.update_payout(
                    payout.payout_id, state=batched.value, batch_id=batch_id, updated_at_ns=now
                )
            document = pain001.build(
                schema=schema,
                message_id=msg_id,
                created_at=created.replace(tzinfo=None, microsecond=0),
                execution_date=created.date(),
                debtor=debtor,
                currency=currency,
                lines=self._file_lines(repo, pending),
            )
            digest = hashlib.sha256(document).hexdigest()
            state = batch_transition(batch.state, BatchAction.GENERATE)
            repo.update_batch(
                batch_id,
                state=state.value,
                # The file lists every creditor's name and IBAN: its copy is sealed too. The
                # digest stays in clear (it names the file sent, reveals nothing of it).
                file_xml_enc=self.cipher.seal(
                    document.decode("utf-8"), purpose=BATCH_FILE_PURPOSE, row_id=str(batch_id)
                ),
                file_sha256=digest,
                updated_at_ns=now,
            )
            repo.add_event(batch_id, now, batch.state, state, f"{schema} sha256 {digest}")
            found = repo.batch(batch_id)
        assert found is not None
        return found

    def _file_lines(
        self, repo: PayoutRepository, pending: Sequence[Payout]
    ) -> list[pain001.FileLine]:
        """The file's lines, in ``pending``'s order, with each creditor's name and IBAN and the
        remittance text opened: the one place they are needed in clear."""
        sealed = repo.sealed_lines([p.payout_id for p in pending])
        lines = []
        for p in pending:
            found, row_id = sealed[p.payout_id], str(p.payout_id)
            lines.append(
                pain001.FileLine(
                    end_to_end_id=p.end_to_end_id,
                    amount_minor=p.amount_minor,
                    creditor_name=self.cipher.open(
                        found.creditor_name_enc, purpose=CREDITOR_NAME_PURPOSE, row_id=row_id
                    ),
                    creditor_iban=self.cipher.open(
                        found.creditor_iban_enc, purpose=CREDITOR_IBAN_PURPOSE, row_id=row_id
                    ),
                    creditor_bic=p.creditor_bic,
                    remittance=self.cipher.open(
                        found.remittance_enc, purpose=REMITTANCE_PURPOSE, row_id=row_id
                    ),
                )
            )
        return lines

    def file(self, batch_id: int) -> bytes:
        """The batch's pain.001 document, byte for byte as it was (or will be) sent: opened
        from its sealed copy (UTF-8, as it was built)."""
        with self.database.read() as conn:
            repo = PayoutRepository(conn)
            if repo.batch(batch_id) is None:
                raise PayoutBatchNotFound(f"no payout batch {batch_id}", param="batch_id")
            sealed = repo.sealed_batch_file(batch_id)
        if sealed is None:
            raise PayoutBatchNotFound(f"payout batch {batch_id} has no file yet")
        text = self.cipher.open(sealed, purpose=BATCH_FILE_PURPOSE, row_id=str(batch_id))
        return text.encode("utf-8")

    # ------------------------------------------------------------------ submit

    def submit(
        self,
        batch_id: int,
        bank_url: str,
        *,
        timeout_s: float = limits.PAYOUT_SUBMIT_TIMEOUT_S,
    ) -> Batch:
        """POST the batch's file to the bank (``{bank_url}/bank/payment-files``) and record its
        answer. A batch whose earlier submission got no answer may be submitted again: the bank
        refuses the second copy as a duplicate message id and we take its original answer."""
        batch = self._generated(batch_id)
        document = self.file(batch_id)
        answer = post_payment_file(bank_url, document, timeout_s=timeout_s)
        return self.record_bank_answer(batch.batch_id, answer, destination=bank_url)

    def write_to(self, batch_id: int, directory: Path) -> Batch:
        """Hand the file over by writing ``<message id>.xml`` into ``directory`` (atomically:
        a temporary file renamed into place); the batch becomes ``submitted`` and waits for
        :meth:`record_bank_answer`."""
        batch = self._generated(batch_id)
        document = self.file(batch_id)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{batch.message_id}.xml"
        partial = directory / f".{batch.message_id}.xml.partial"
        with partial.open("wb") as handle:
            handle.write(document)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(target)
        now = self.clock.now_ns()
        with self.database.write() as conn:
            repo = PayoutRepository(conn)
            current = self._load_batch(repo, batch_id)
            state = batch_transition(current.state, BatchAction.SUBMIT)
            repo.update_batch(batch_id, state=state.value, destination=str(target),
                              updated_at_ns=now)  # fmt: skip
            repo.add_event(batch_id, now, current.state, state, f"written to {target}")
            found = repo.batch(batch_id)
        assert found is not None
        return found

    def _generated(self, batch_id: int) -> Batch:
        with self.database.read() as conn:
            batch = self._load_batch(PayoutRepository(conn), batch_id, for_update=False)
        batch_transition(batch.state, BatchAction.SUBMIT)  # refuses anything not `generated`
        return batch

    def _load_batch(
        self, repo: PayoutRepository, batch_id: int, *, for_update: bool = True
    ) -> Batch:
        batch = repo.batch(batch_id, for_update=for_update)
        if batch is None:
            raise PayoutBatchNotFound(f"no payout batch {batch_id}", param="batch_id")
        return batch

    def record_bank_answer(
        self, batch_id: int, answer: BankAnswer, *, destination: str | None = None
    ) -> Batch:
        """Record the bank's verdict: ``ACCP`` accepts every payout of the batch, ``RJCT``
        rejects the batch and returns every payout's money to its merchant account."""
        if answer.status not in ("ACCP", "RJCT"):
            raise PayoutInputInvalid(f"bank status must be ACCP or RJCT, not {answer.status!r}")
        now = self.clock.now_ns()
        with self.database.write() as conn:
            repo = PayoutRepository(conn)
            batch = self._load_batch(repo, batch_id)
            state = batch.state
            if state is BatchState.GENERATED:
                state = batch_transition(state, BatchAction.SUBMIT)
                repo.add_event(batch_id, now, batch.state, state, f"sent to {destination}")
            action = BatchAction.ACCEPT if answer.status == "ACCP" else BatchAction.REJECT
            final = batch_transition(state, action)
            repo.add_event(
                batch_id, now, state, final, f"bank answered {answer.status} {answer.reason or ''}"
            )
            values: dict[str, Any] = {
                "state": final.value,
                "bank_status": answer.status,
                "bank_reason": answer.reason,
                "updated_at_ns": now,
            }
            if destination is not None:
                values["destination"] = destination
            repo.update_batch(batch_id, **values)
            if final is BatchState.ACCEPTED:
                for payout in repo.batch_payouts(batch_id):
                    nxt = payout_transition(payout.state, PayoutAction.ACCEPT)
                    repo.update_payout(payout.payout_id, state=nxt.value, updated_at_ns=now)
            found = repo.batch(batch_id)
        assert found is not None
        self.resume()
        return found

    # ------------------------------------------------------------------ follow-up work

    def resume(self) -> int:
        """Finish what a crash or a missing statements service left undone: return the money
        of rejected batches' payouts, register accepted payouts with the statements service.
        Safe to run any time, from several processes; returns how many payouts moved on. One
        payout that fails unexpectedly is backed off, then parked (``RESUME_ITEMS``); the
        others go on."""
        items = self.quarantine.open(RESUME_ITEMS)
        batch_max = limits.PAYOUT_BATCH_SIZE_MAX
        with self.database.read() as conn:
            repo = PayoutRepository(conn)
            work = items.due(
                repo.payouts_needing_work(batch_max + items.fetch), batch_max,
                key=lambda p: str(p.payout_id),
            )  # fmt: skip
            batches = {
                b: repo.batch(b) for b in {p.batch_id for p in work if p.batch_id is not None}
            }
        done = 0
        for payout in work:
            with items.isolated(str(payout.payout_id)):
                assert payout.batch_id is not None
                batch = batches.get(payout.batch_id)
                assert batch is not None
                if payout.state is PayoutState.BATCHED and batch.state is BatchState.REJECTED:
                    self._return(payout, batch)
                    done += 1
                elif payout.state is PayoutState.ACCEPTED and self.statements is not None:
                    self._expect(payout, batch)
                    done += 1
        return done

    def _return(self, payout: Payout, batch: Batch) -> None:
        """The bank rejected ``payout``'s file: in one transaction its money goes back to the
        account it was drawn from (``clearing:payout -> <debit account>``, code 41, id derived
        from the payout), it becomes ``returned``, and — for a statement return, drawn from
        ``suspense:unidentified`` — the break it was returning becomes ``return_failed`` with
        the bank's reason. A crash leaves all of it undone for the next :meth:`resume`; a
        concurrent resume waits for the payout's lock and finds it returned."""
        from paykeep.gateway.statements.model import SUSPENSE_ACCOUNT
        from paykeep.gateway.statements.service import fail_return_within

        transfer_id = derived_id("payout-return", str(payout.payout_id))
        account = self._account(payout.debit_account_name)
        clearing = self._clearing(payout.currency)
        transfer = NewTransfer(
            id=transfer_id,
            debit_account_id=clearing.id,
            credit_account_id=account.id,
            amount_minor=payout.amount_minor,
            currency=payout.currency,
            code=RETURN_TRANSFER_CODE,
            reference=f"payout-return:{payout.request_id}",
            metadata={"payout": payout.payout_id},
        )
        now = self.clock.now_ns()
        with self.database.write() as conn:
            repo = PayoutRepository(conn)
            current = repo.payout(payout.payout_id, for_update=True)
            assert current is not None
            if current.state is PayoutState.RETURNED:
                return  # another process finished it
            nxt = payout_transition(current.state, PayoutAction.RETURN)
            (result,) = self.ledger.create_transfers_within(conn, [transfer])
            if not result.applied_or_exists:
                raise transfer_error(result.result, transfer_id)
            repo.update_payout(
                payout.payout_id,
                state=nxt.value,
                return_transfer_id=transfer_id,
                return_kind=ReturnKind.REJECTED.value,
                return_reason_code=bank_answer_code(batch.bank_reason),
                return_reason=batch.bank_reason or "the bank gave no reason",
                return_fee_minor=0,
                updated_at_ns=now,
            )
            returned = repo.payout(payout.payout_id)
            assert returned is not None
            self._tell_returned(conn, ReturnedPayout(returned, payout.amount_minor, 0))
            if current.debit_account_name == SUSPENSE_ACCOUNT:
                fail_return_within(
                    conn,
                    payout_id=payout.payout_id,
                    failure=f"the bank rejected payment file {batch.message_id}: "
                    f"{batch.bank_reason or 'no reason given'}",
                    now_ns=now,
                )

    def _expect(self, payout: Payout, batch: Batch) -> None:
        """Tell the statements service to look for this payout's debit line; the line's match
        posts ``clearing:payout -> bank:safeguarding:<bank>`` in the ledger."""
        from paykeep.gateway.statements.model import ExpectedMovement, Leg

        assert self.statements is not None
        self.statements.expect(
            ExpectedMovement(
                reference=payout.end_to_end_id,
                iban=batch.debtor.iban,
                direction="debit",
                amount_minor=payout.amount_minor,
                currency=payout.currency,
                standing=False,
                legs=(
                    Leg(CLEARING_ACCOUNT, batch.debtor.ledger_account, SETTLEMENT_TRANSFER_CODE),
                ),
            )
        )
        with self.database.write() as conn:
            PayoutRepository(conn).update_payout(
                payout.payout_id, expected=True, updated_at_ns=self.clock.now_ns()
            )

    def settle(self) -> int:
        """Mark settled every accepted payout whose statement line has been matched and posted
        to the ledger, and every batch all of whose payouts are settled; then take back the
        return payouts the payee's bank sent back (:meth:`reclaim_bounced_returns`). Returns
        how many payouts were settled."""
        self.resume()
        if self.statements is None:
            return 0  # only the statements service knows what the bank confirmed
        settled = self._settle_confirmed()
        self.reclaim_bounced_returns()
        self.return_sent_back_payouts()
        return settled

    def return_sent_back_payouts(self) -> int:
        """A settled payout the payee's bank sends back (an account closed, a wrong IBAN found
        later: an R-transaction) arrives on our statement as a credit carrying the payout's
        end-to-end id, and reconciles as a break (``duplicate`` once the payout's own debit
        line matched, ``wrong_direction`` if it came first). For each such open break whose
        payout — a merchant's payout or a buyer's withdrawal, not a return to sender (those are
        :meth:`reclaim_bounced_returns`') — is ``settled``, in the same currency, and whose
        credit is the payout's amount or short by at most ``PAYOUT_RETURN_FEE_MAX_MINOR`` (the
        payee's bank's fee: :func:`model.sent_back_fee`), one transaction each
        (:meth:`_apply_sent_back`): the money goes back to the account the payout was drawn
        from, the fee is charged there, the payout is ``returned`` with the bank's reason, the
        line is matched and its break resolved, and the owners are told. Anything else — more
        than was paid, short by more than a fee, a payout not yet settled (it is looked at
        again on the next pass) or already returned — stays a break for a person. Returns how
        many were applied; safe to run again and from several processes."""
        from paykeep.gateway.statements.model import SUSPENSE_ACCOUNT, BreakReason

        if self.statements is None:
            return 0
        candidates = self.statements.bounce_candidates()
        if not candidates:
            return 0
        with self.database.read() as conn:
            repo = PayoutRepository(conn)
            found = {c.reference: repo.payout_by_end_to_end_id(c.reference) for c in candidates}
        ours = (BreakReason.DUPLICATE.value, BreakReason.WRONG_DIRECTION.value)
        items = self.quarantine.open(SENT_BACK_ITEMS)
        applied = 0
        for candidate in candidates:
            payout = found.get(candidate.reference)
            b = candidate.break_
            if (
                payout is None
                or payout.debit_account_name == SUSPENSE_ACCOUNT
                or payout.state is not PayoutState.SETTLED
                or b.reason not in ours
                or str(payout.payout_id) in items.blocked
            ):
                continue
            fee = sent_back_fee(payout.amount_minor, payout.currency, b.amount_minor, b.currency)
            if fee is None:
                continue
            with items.isolated(str(payout.payout_id)):
                try:
                    if self._apply_sent_back(candidate, payout, fee):
                        applied += 1
                except PaykeepError as error:
                    # Nothing of it was written (one transaction); the break stays open for a
                    # person, and the next pass tries again. The other candidates go on.
                    log.warning(
                        "payout %s sent back (break %s) not applied: %s %s",
                        payout.payout_id, b.id, error.code, error.message,
                    )  # fmt: skip
        return applied

    def _apply_sent_back(self, candidate: BounceCandidate, payout: Payout, fee: int) -> bool:
        """Apply one payout sent back, in one transaction with the payout's row and then its
        break locked (the order every return takes):

        - ledger, one linked chain: the statement's credit enters ``clearing:payout`` from the
          bank account (code 45, the id an import would give the line's first leg); the
          payout's whole amount goes back to the account it was drawn from (code 41, the one
          return id a payout has: the ledger itself refuses a second return); the fee the
          payee's bank kept goes from that account to ``clearing:payout`` (code 46), so the
          clearing account is back at zero and the fee is its own transfer;
        - the payout ``settled -> returned`` (``sent_back``, the statement's reason, the fee);
        - the statement line matched under the payout's expectation, its break ``matched`` by
          ``paykeep`` with a trail entry;
        - the owners told (:meth:`on_returned`): their records and events.

        ``False`` (nothing written) when the payout or the break changed meanwhile."""
        statements = self.statements
        assert statements is not None
        from paykeep.gateway.statements.model import BreakState, transfer_id

        b = candidate.break_
        bank = self._account(candidate.ledger_account_name)
        drawn_from = self._account(payout.debit_account_name)
        clearing = self._clearing(payout.currency)
        linked = int(TransferFlags.LINKED)
        where = {"statement": b.statement_id[:128], "line": b.line, "payout": payout.payout_id}
        chain = [
            NewTransfer(
                id=transfer_id(b.account, b.statement_id, b.line, 0),
                debit_account_id=bank.id,
                credit_account_id=clearing.id,
                amount_minor=b.amount_minor,
                currency=b.currency,
                code=SENT_BACK_TRANSFER_CODE,
                flags=linked,
                metadata=where,
            ),
            NewTransfer(
                id=derived_id("payout-return", str(payout.payout_id)),
                debit_account_id=clearing.id,
                credit_account_id=drawn_from.id,
                amount_minor=payout.amount_minor,
                currency=payout.currency,
                code=RETURN_TRANSFER_CODE,
                flags=linked if fee else 0,
                reference=f"payout-return:{payout.request_id}",
                metadata=where,
            ),
        ]
        if fee:
            chain.append(
                NewTransfer(
                    id=derived_id("payout-return-fee", str(payout.payout_id)),
                    debit_account_id=drawn_from.id,
                    credit_account_id=clearing.id,
                    amount_minor=fee,
                    currency=payout.currency,
                    code=RETURN_FEE_TRANSFER_CODE,
                    reference=f"payout-return-fee:{payout.request_id}",
                    metadata=where,
                )
            )
        code = candidate.return_reason
        reason = return_reason_text(code)
        shown_fee = f", the payee's bank kept {fee}" if fee else ""
        now = self.clock.now_ns()
        with self.database.write() as conn:
            repo = PayoutRepository(conn)
            current = repo.payout(payout.payout_id, for_update=True)
            if current is None or current.state is not PayoutState.SETTLED:
                return False  # another process applied it, or it changed
            locked = statements.lock_break_within(conn, b.id)
            if locked.state is not BreakState.OPEN:
                return False  # a person resolved the break meanwhile
            nxt = payout_transition(current.state, PayoutAction.SEND_BACK)
            results = self.ledger.create_transfers_within(conn, chain)
            for transfer, result in zip(chain, results, strict=True):
                if not result.applied_or_exists:
                    raise transfer_error(result.result, transfer.id)
            repo.update_payout(
                payout.payout_id,
                state=nxt.value,
                return_transfer_id=chain[1].id,
                return_kind=ReturnKind.SENT_BACK.value,
                return_reason_code=code,
                return_reason=reason,
                return_fee_minor=fee,
                updated_at_ns=now,
            )
            what = (
                f"payout {payout.payout_id} ({payout.end_to_end_id}) sent back by the payee's "
                f"bank ({reason}{shown_fee}): {payout.amount_minor - fee} of "
                f"{payout.amount_minor} {payout.currency} back to {payout.debit_account_name}"
            )
            statements.match_sent_back_within(
                conn, locked, transfer_ids=[t.id for t in chain], note=what, detail=what
            )
            returned = repo.payout(payout.payout_id)
            assert returned is not None
            self._tell_returned(
                conn,
                ReturnedPayout(
                    returned, payout.amount_minor - fee, fee, b.statement_id, b.line, b.id
                ),
            )
        return True

    def reclaim_bounced_returns(self) -> int:
        """A return payout the payee's bank sends back (an R-transaction: the account is
        closed, the name does not match) arrives on our statement as a credit carrying the
        payout's end-to-end id, and reconciles as a break (``duplicate`` once the payout's own
        debit line matched, ``wrong_direction`` before). For each such break whose amount and
        currency are the payout's, the statements service brings the line into
        ``suspense:unidentified`` and reopens the break the payout was returning as
        ``return_failed`` — one transaction. Another amount (the payee's bank kept a fee) stays
        a break for a person; a merchant's payout or a buyer's withdrawal coming back is
        :meth:`return_sent_back_payouts`'. Returns how many were taken back."""
        from paykeep.gateway.statements.model import SUSPENSE_ACCOUNT

        if self.statements is None:
            return 0
        candidates = self.statements.bounce_candidates()
        if not candidates:
            return 0
        with self.database.read() as conn:
            repo = PayoutRepository(conn)
            found = {c.reference: repo.payout_by_end_to_end_id(c.reference) for c in candidates}
        items = self.quarantine.open(BOUNCED_RETURN_ITEMS)
        reclaimed = 0
        for candidate in candidates:
            payout = found.get(candidate.reference)
            b = candidate.break_
            if (
                payout is None
                or payout.debit_account_name != SUSPENSE_ACCOUNT
                or payout.state not in (PayoutState.ACCEPTED, PayoutState.SETTLED)
                or (payout.amount_minor, payout.currency) != (b.amount_minor, b.currency)
                or str(payout.payout_id) in items.blocked
            ):
                continue
            with items.isolated(str(payout.payout_id)):
                if self.statements.reclaim_bounced_return(candidate, payout_id=payout.payout_id):
                    reclaimed += 1
        return reclaimed

    def _settle_confirmed(self) -> int:
        """Each accepted payout whose statement line was matched and posted becomes
        ``settled`` in a transaction of its own — and its batch too, in that transaction,
        once every payout of it is settled (the batch's row is locked first, so two payouts of
        one batch settled at once see each other). One payout that fails unexpectedly is
        backed off, then parked (``SETTLE_ITEMS``); the others go on."""
        assert self.statements is not None
        items = self.quarantine.open(SETTLE_ITEMS)
        batch_max = limits.PAYOUT_BATCH_SIZE_MAX
        with self.database.read() as conn:
            repo = PayoutRepository(conn)
            waiting = items.due(
                repo.accepted_expected(batch_max + items.fetch), batch_max,
                key=lambda p: str(p.payout_id),
            )  # fmt: skip
            debtors = {b: repo.batch(b) for b in {p.batch_id for p in waiting if p.batch_id}}
        confirmed: list[Payout] = []
        for batch_id, batch in debtors.items():
            assert batch is not None
            mine = [p for p in waiting if p.batch_id == batch_id]
            posted = self.statements.posted_references(
                batch.debtor.iban, [p.end_to_end_id for p in mine]
            )
            confirmed += [p for p in mine if normalize_reference(p.end_to_end_id) in posted]
        settled = 0
        for payout in sorted(confirmed, key=lambda p: p.payout_id):
            with items.isolated(str(payout.payout_id)):
                settled += self._settle_one(payout)
        return settled

    def _settle_one(self, payout: Payout) -> int:
        """``payout`` (its statement line posted) ``settled``, and its batch once all are; 1,
        or 0 if another process settled it meanwhile."""
        assert payout.batch_id is not None
        now = self.clock.now_ns()
        with self.database.write() as conn:
            repo = PayoutRepository(conn)
            batch = self._load_batch(repo, payout.batch_id)
            current = repo.payout(payout.payout_id, for_update=True)
            if current is None or current.state is not PayoutState.ACCEPTED:
                return 0
            nxt = payout_transition(current.state, PayoutAction.SETTLE)
            repo.update_payout(payout.payout_id, state=nxt.value, updated_at_ns=now)
            states = repo.batch_payout_states(batch.batch_id)
            # Every payout settled; one may have been sent back by its payee's bank since
            # (``returned``: in an accepted batch nothing else returns a payout).
            if (
                batch.state is BatchState.ACCEPTED
                and PayoutState.SETTLED in states
                and (states <= {PayoutState.SETTLED, PayoutState.RETURNED})
            ):
                final = batch_transition(batch.state, BatchAction.SETTLE)
                repo.update_batch(batch.batch_id, state=final.value, updated_at_ns=now)
                repo.add_event(batch.batch_id, now, batch.state, final, "statement confirmed all")
        return 1

    # ------------------------------------------------------------------ queries

    def get(self, payout_id: int) -> Payout:
        with self.database.read() as conn:
            found = PayoutRepository(conn).payout(payout_id)
        if found is None:
            raise PayoutNotFound(f"no payout {payout_id}", param="payout_id")
        return found

    def list(
        self,
        state: PayoutState | None = None,
        *,
        after_id: int = 0,
        limit: int = limits.PAGE_SIZE_DEFAULT,
    ) -> Sequence[Payout]:
        if type(limit) is not int or not 0 < limit <= limits.PAGE_SIZE_MAX:
            raise PayoutInputInvalid(f"limit must be 1..{limits.PAGE_SIZE_MAX}", param="limit")
        with self.database.read() as conn:
            return PayoutRepository(conn).page(state, after_id, limit)

    def batches(
        self,
        state: BatchState | None = None,
        *,
        after_id: int = 0,
        limit: int = limits.PAGE_SIZE_DEFAULT,
    ) -> Sequence[Batch]:
        if type(limit) is not int or not 0 < limit <= limits.PAGE_SIZE_MAX:
            raise PayoutInputInvalid(f"limit must be 1..{limits.PAGE_SIZE_MAX}", param="limit")
        with self.database.read() as conn:
            return PayoutRepository(conn).batches_page(state, after_id, limit)

    def batch_file(self, batch_id: int) -> BatchFile:
        with self.database.read() as conn:
            repo = PayoutRepository(conn)
            batch = repo.batch(batch_id)
            if batch is None:
                raise PayoutBatchNotFound(f"no payout batch {batch_id}", param="batch_id")
            return BatchFile(batch, repo.events(batch_id), repo.batch_payouts(batch_id))


# ---------------------------------------------------------------------------------------------
# The bank adapter: HTTP in, our BankAnswer out, only our errors raised.
# ---------------------------------------------------------------------------------------------


def post_payment_file(bank_url: str, document: bytes, *, timeout_s: float) -> BankAnswer:
    """POST a pain.001 file to banksim (or a bank speaking its API) and read its verdict.

    ``200`` carries the verdict; ``409`` a duplicate message id with the original verdict;
    ``400`` a file the bank refused to read (a rejection). Anything else, a timeout or an
    unreadable answer is :class:`PayoutBankUnavailable`: the file may or may not have arrived,
    and a resubmission is safe.
    """
    import json

    import httpx

    if not bank_url.startswith(("http://", "https://")):
        raise PayoutInputInvalid(f"bank URL must be http(s): {bank_url!r}", param="bank_url")
    url = bank_url.rstrip("/") + "/bank/payment-files"
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(timeout_s)) as client,
            client.stream(
                "POST", url, content=document, headers={"Content-Type": "application/xml"}
            ) as response,
        ):
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > limits.PAYOUT_BANK_RESPONSE_BYTES_MAX:
                    raise PayoutBankUnavailable("the bank's answer is too large")
            status = response.status_code
    except httpx.HTTPError as exc:
        raise PayoutBankUnavailable(f"bank at {bank_url} unreachable: {exc}") from None
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise PayoutBankUnavailable(f"bank answered {status} with no JSON") from None
    if not isinstance(answer, dict):
        raise PayoutBankUnavailable(f"bank answered {status} with unexpected JSON")
    if status == 409 and isinstance(answer.get("original"), dict):
        answer = answer["original"]
    elif status not in (200, 400):
        raise PayoutBankUnavailable(f"bank answered HTTP {status}: {answer.get('message')}")
    group_status = answer.get("group_status")
    if group_status not in ("ACCP", "RJCT"):
        raise PayoutBankUnavailable(f"bank answered without a group status ({status})")
    reason = answer.get("reason")
    reason_text = None
    if isinstance(reason, dict):
        reason_text = f"{reason.get('code')}: {reason.get('text')}"[:500]
    return BankAnswer(status=group_status, reason=reason_text)
