"""Use cases: register bank accounts, register expected movements, import statement files.

An import runs in three steps, each safe to repeat:

1. **Record** (one transaction, imports serialised): the statements, their lines, the
   matches with their deterministic ledger transfer ids, the breaks, and the one-shot
   expectations they consume. A refused file (bad format, unbalanced, conflict) writes nothing.
2. **Post**: each matched line's legs go to the ledger as one linked chain. Transfer ids derive
   from (account, statement id, line, leg), so a repeat answers ``exists``, never posts twice.
3. **Settle** (one transaction): record each chain's ledger result; a refused chain becomes a
   ``ledger_rejected`` break; the statement becomes ``posted``.

A crash between 1 and 3 leaves the statement ``posting``; every later import (or
:meth:`StatementService.recover`) finishes it before doing anything else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy.engine import Connection

from paykeep import limits
from paykeep.clock import Clock, SystemClock
from paykeep.db import Database
from paykeep.db.quarantine import Quarantine
from paykeep.errors import Conflict, InvalidInput
from paykeep.gateway.statements.errors import (
    BankAccountConflict,
    BankAccountInvalid,
    BankAccountNotFound,
    BreakNotFound,
    BreakNotReturnable,
    BreakResolutionInvalid,
    BreakReturnPending,
    ExpectationConflict,
    LedgerAccountNotFound,
    StatementAccountCurrencyMismatch,
    StatementConflict,
)
from paykeep.gateway.statements.model import (
    CONTENT_PURPOSE,
    COUNTERPARTY_IBAN_PURPOSE,
    COUNTERPARTY_NAME_PURPOSE,
    REMITTANCE_PURPOSE,
    RETURNABLE_REASONS,
    SUSPENSE_ACCOUNT,
    SUSPENSE_ACCOUNT_CODE,
    SUSPENSE_RELEASE_TRANSFER_CODE,
    SUSPENSE_TRANSFER_CODE,
    SYSTEM_ACTOR,
    BreakAction,
    BreakState,
    EntryStatus,
    ExpectedMovement,
    ParsedStatement,
    break_transition,
    candidate_references,
    entry_row_id,
    normalize_iban,
    normalize_reference,
    reconcile,
    suspense_release_transfer_id,
    suspense_transfer_id,
    transfer_id,
    validate_expectation,
)
from paykeep.gateway.statements.parser import parse
from paykeep.gateway.statements.repository import (
    BankAccount,
    BounceCandidate,
    StatementRepository,
    StoredBreak,
    StoredMatch,
)
from paykeep.ids import derived_id
from paykeep.ledger.errors import AccountNotFound, transfer_error
from paykeep.ledger.model import (
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    NewAccount,
    NewTransfer,
    TransferFlags,
)
from paykeep.ledger.service import Ledger
from paykeep.money import is_currency
from paykeep.security.fields import FieldCipher

__all__ = [
    "BankAccount",
    "BounceCandidate",
    "ImportReport",
    "ReturnableLine",
    "StatementOutcome",
    "StatementService",
]

_LINKED = int(TransferFlags.LINKED)

log = logging.getLogger("paykeep.gateway.statements")

#: The worker passes' names among the workers' items (``paykeep.db.quarantine``): the bank's
#: statements to import (items: the statement ids) and the statements an interrupted import
#: left ``posting`` (items: their row ids).
IMPORT_ITEMS: Final = "gateway.statements.import"
RECOVER_ITEMS: Final = "gateway.statements.recover"
#: A bank file refused whole — bad format, unbalanced, in conflict with an imported statement
#: (the typed errors of ``errors.py``): the import pass's own outcome, never an item failure.
FILE_REFUSALS: Final = (InvalidInput, Conflict)


@dataclass(frozen=True, slots=True)
class StatementOutcome:
    account: str
    currency: str
    statement_id: str
    opening_booked_minor: int | None
    closing_booked_minor: int | None
    entries: int
    matched: int
    breaks: list[dict[str, Any]]
    #: ``imported`` or ``already_imported`` (a repeat changes nothing).
    status: str
    balance_basis: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "currency": self.currency,
            "statement_id": self.statement_id,
            "status": self.status,
            "opening_booked_minor": self.opening_booked_minor,
            "closing_booked_minor": self.closing_booked_minor,
            "balance_basis": self.balance_basis,
            "entries": self.entries,
            "matched": self.matched,
            "breaks": self.breaks,
        }


@dataclass(frozen=True, slots=True)
class ImportReport:
    statements: list[StatementOutcome] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"statements": [s.to_json() for s in self.statements]}


#: Breaks an operator may resolve by naming the expectation: the line's reference was
#: missing, unknown or named several. Every other reason says the line is not what an
#: expectation describes, and a hand match must not overrule that.
_MATCHABLE_BY_HAND: Final = frozenset({"no_reference", "unknown_reference", "ambiguous_reference"})


def _resolution_text(value: object, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BreakResolutionInvalid(f"{name} must be 1..{limit} characters", param=name)
    if not value.isprintable():
        raise BreakResolutionInvalid(f"{name} must be printable text", param=name)
    return value.strip()


def break_json(b: StoredBreak) -> dict[str, Any]:
    return {
        "id": b.id,
        "state": b.state.value,
        "account": b.account,
        "statement_id": b.statement_id,
        "line": b.line,
        "reason": b.reason,
        "detail": b.detail,
        "amount_minor": b.amount_minor,
        "currency": b.currency,
        "reference": b.reference,
        "expectation_id": b.expectation_id,
        "resolution": b.resolution,
        "resolved_by": b.resolved_by,
        "resolution_note": b.resolution_note,
        "return_attempts": b.return_attempts,
        "return_attempts_max": limits.STATEMENT_RETURN_ATTEMPTS_MAX,
        "return_payout_id": b.return_payout_id,
        "return_failure": b.return_failure,
    }


@dataclass(frozen=True, slots=True)
class ReturnableLine:
    """An open break's incoming line that may go back to its sender, with the sender opened
    from its sealed copy: what a return payout needs, read and checked, nothing written.

    ``bank_reference`` is the line's reference the payer's bank will show them back: the
    bank's own (``AcctSvcrRef``), else the payer's end-to-end id or creditor reference."""

    break_: StoredBreak
    ledger_account_name: str
    amount_minor: int
    currency: str
    counterparty_name: str
    counterparty_iban: str
    bank_reference: str | None
    suspense_transfer_id: int

    @property
    def break_id(self) -> int:
        return self.break_.id


class StatementService:
    """``cipher`` seals each stored line's counterparty name and IBAN and its remittance text
    (the payer of a transfer in is a person: often a buyer). Matching reads the parsed lines in
    memory at import time, so nothing here opens them but :meth:`line_remittance`, for an
    operator resolving a break by hand."""

    def __init__(
        self,
        database: Database,
        ledger: Ledger | None = None,
        clock: Clock | None = None,
        *,
        cipher: FieldCipher,
        quarantine: Quarantine | None = None,
    ) -> None:
        self.database = database
        self.cipher = cipher
        self.clock = clock or SystemClock()
        self.ledger = ledger or Ledger(database, self.clock)
        #: Statements whose import or posting failed unexpectedly: backed off, then parked.
        self.quarantine = quarantine or Quarantine(database, self.clock)
        # Ledger account name -> (id, currency). Accounts are immutable once created, so a
        # found name never changes meaning; names not found are not cached.
        self._accounts: dict[str, tuple[int, str]] = {}

    # ------------------------------------------------------------------ registry

    def add_account(self, iban: str, currency: str, ledger_account_name: str) -> BankAccount:
        """Register one of the platform's bank accounts; idempotent for identical terms."""
        from schwifty import IBAN
        from schwifty.exceptions import SchwiftyException

        try:
            normalized = str(IBAN(iban).compact)
        except (SchwiftyException, ValueError) as exc:
            raise BankAccountInvalid(f"not a valid IBAN {iban!r}: {exc}", param="iban") from None
        if not is_currency(currency):
            raise BankAccountInvalid(f"unknown currency {currency!r}", param="currency")
        self._ledger_account(ledger_account_name, currency)
        account = BankAccount(normalized, currency, ledger_account_name)
        with self.database.write() as conn:
            repo = StatementRepository(conn)
            existing = repo.bank_account(normalized)
            if existing is not None:
                if existing != account:
                    raise BankAccountConflict(
                        f"{normalized} is registered as {existing.currency} "
                        f"{existing.ledger_account_name}"
                    )
                return existing
            repo.insert_bank_account(account, self.clock.now_ns())
        return account

    def accounts(self) -> list[BankAccount]:
        with self.database.read() as conn:
            return StatementRepository(conn).bank_accounts()

    # ------------------------------------------------------------------ expectations

    def expect(self, movement: ExpectedMovement) -> int:
        """Register a movement to look for on statements; returns its id.

        Idempotent: the same terms again return the same id; other terms under the same
        account and reference are an :class:`ExpectationConflict`.
        """
        m = validate_expectation(movement)
        for leg in m.legs:
            self._ledger_account(leg.debit_account_name, m.currency)
            self._ledger_account(leg.credit_account_name, m.currency)
        with self.database.write() as conn:
            repo = StatementRepository(conn)
            account = repo.bank_account(m.iban)
            if account is None:
                raise BankAccountNotFound(f"{m.iban} is not a registered bank account")
            if account.currency != m.currency:
                raise ExpectationConflict(
                    f"{m.iban} is a {account.currency} account, not {m.currency}"
                )
            existing = repo.expectation_by_reference(m.iban, m.reference)
            if existing is not None:
                if existing.movement != m:
                    raise ExpectationConflict(
                        f"{m.reference} on {m.iban} is already expected with other terms"
                    )
                return existing.id
            return repo.insert_expectation(m, self.clock.now_ns())

    def _ledger_account(self, name: str, currency: str) -> int:
        known = self._accounts.get(name)
        if known is None:
            try:
                account = self.ledger.account_by_name(name)
            except AccountNotFound:
                raise LedgerAccountNotFound(f"no ledger account named {name!r}") from None
            known = self._accounts[name] = (account.id, account.currency)
        if known[1] != currency:
            raise LedgerAccountNotFound(f"ledger account {name!r} is {known[1]}")
        return known[0]

    # ------------------------------------------------------------------ import

    def import_file(
        self, data: bytes, *, filename: str | None = None, accept_unbalanced: bool = False
    ) -> ImportReport:
        """Parse, check, record, post and settle every statement in ``data``.

        Any typed error from parsing or checking, or a :class:`StatementConflict`, leaves
        the database exactly as it was. ``accept_unbalanced`` (an operator's choice for a
        bank file known to be wrong) records a statement that does not add up with a
        ``statement_unbalanced`` break and posts none of its lines.
        """
        statements = parse(data, filename=filename, accept_unbalanced=accept_unbalanced)
        return self.import_statements(statements)

    def import_new(
        self,
        statement_ids: Sequence[str],
        fetch: Callable[[str], bytes],
        *,
        filename: Callable[[str], str] = lambda statement_id: f"{statement_id}.xml",
    ) -> dict[str, int]:
        """The worker's import pass: each of the bank's ``statement_ids`` not imported yet is
        fetched (``fetch(id)``: the file's bytes) and imported (:meth:`import_file`), one file
        at a time, so one bad file stalls no other:

        - a file refused whole (``FILE_REFUSALS``: a format the parser refuses, a statement
          that does not add up, a conflict with an imported statement) is this pass's outcome:
          nothing written, ``refused`` in the counts, and the file is set aside at once
          (parked with its code, one warning): the same bytes would be refused again, so it
          is not fetched again until an operator releases it (``paykeep worker-items
          release``) or imports a corrected file (or one with ``--accept-unbalanced``), which
          also drops the record;
        - a file whose import fails unexpectedly (a row the database refuses) rolled back, is
          recorded, backed off and then parked (``IMPORT_ITEMS``, ``paykeep worker-items``);
        - ``fetch`` failing (the bank unreachable) or the database unavailable stops the pass.

        Returns the counts: ``imported``, ``refused``, ``isolated``."""
        items = self.quarantine.open(IMPORT_ITEMS)
        with self.database.read() as conn:
            seen = StatementRepository(conn).imported_statement_ids(statement_ids)
        counts: dict[str, int] = {}
        for statement_id in statement_ids:
            if statement_id in seen:
                if items.knows(statement_id):  # set aside, since imported by an operator
                    items.handled_elsewhere(statement_id)
                continue
            if statement_id in items.blocked:
                continue
            data = fetch(statement_id)  # outside the isolation: the bank is not the item
            try:
                with items.isolated(statement_id, expected=FILE_REFUSALS):
                    self.import_file(data, filename=filename(statement_id))
                    counts["imported"] = counts.get("imported", 0) + 1
            except FILE_REFUSALS as refused:
                counts["refused"] = counts.get("refused", 0) + 1
                if refused.transient:  # a lost race: read afresh next time
                    log.info("bank statement %s changed meanwhile (%s)", statement_id,
                             refused.code)  # fmt: skip
                else:  # logged with its code
                    items.park(statement_id, refused)
        if items.failed:
            counts["isolated"] = len(items.failed)
        return counts

    def import_statements(self, statements: Sequence[ParsedStatement]) -> ImportReport:
        self.recover()
        recorded = self._record(statements)
        for row_id, _ in recorded:
            if row_id is not None:
                self._post_and_settle(row_id)
        outcomes = []
        with self.database.read() as conn:
            repo = StatementRepository(conn)
            for _, (statement, status) in recorded:
                stored = repo.statement(statement.account, statement.kind, statement.statement_id)
                assert stored is not None
                breaks = repo.breaks(
                    row_id=stored.row_id, open_only=False, limit=max(1, stored.entry_count)
                )
                outcomes.append(
                    StatementOutcome(
                        account=statement.account,
                        currency=statement.currency,
                        statement_id=statement.statement_id,
                        opening_booked_minor=statement.opening_booked_minor,
                        closing_booked_minor=statement.closing_booked_minor,
                        entries=len(statement.entries),
                        matched=repo.count_matched(stored.row_id),
                        breaks=[break_json(b) for b in breaks],
                        status=status,
                        balance_basis=(
                            None if statement.balance_basis is None
                            else statement.balance_basis.value
                        ),
                    )
                )  # fmt: skip
        return ImportReport(outcomes)

    def _record(
        self, statements: Sequence[ParsedStatement]
    ) -> list[tuple[int | None, tuple[ParsedStatement, str]]]:
        out: list[tuple[int | None, tuple[ParsedStatement, str]]] = []
        now = self.clock.now_ns()
        with self.database.write() as conn:
            repo = StatementRepository(conn)
            repo.lock_imports()
            seen: dict[tuple[str, str, str], str] = {}
            for statement in statements:
                key = (statement.account, statement.kind, statement.statement_id)
                # Keyed: the plain digest covers the counterparties' names and IBANs.
                fingerprint = self.cipher.lookup(statement.fingerprint(), purpose=CONTENT_PURPOSE)
                stored = repo.statement(*key)
                previous = seen.get(key) or (None if stored is None else stored.fingerprint)
                if previous is not None:
                    if previous != fingerprint:
                        raise StatementConflict(
                            f"statement {statement.label} was already imported with other "
                            "content; nothing was imported"
                        )
                    out.append((None, (statement, "already_imported")))
                    continue
                seen[key] = fingerprint
                row_id = self._record_one(repo, statement, fingerprint, now)
                out.append((row_id, (statement, "imported")))
        return out

    def _record_one(
        self, repo: StatementRepository, s: ParsedStatement, fingerprint: str, now: int
    ) -> int:
        account = repo.bank_account(normalize_iban(s.account))
        if account is not None and account.currency != s.currency:
            raise StatementAccountCurrencyMismatch(
                f"statement {s.label} is in {s.currency}; {account.iban} is a "
                f"{account.currency} account"
            )
        expectations = {}
        if account is not None:
            refs = {
                r
                for e in s.entries
                if e.status is EntryStatus.BOOKED
                for r in candidate_references(e)
            }
            expectations = repo.expectations_for(account.iban, refs)
        rec = reconcile(s, registered=account is not None, expectations=expectations)
        row_id = repo.insert_statement(
            s,
            fingerprint=fingerprint,
            registered=account is not None,
            posting=bool(rec.matches),
            now_ns=now,
        )
        repo.insert_entries(row_id, s.entries, self.cipher)
        repo.insert_matches(
            row_id,
            [
                (
                    m.entry_index + 1,
                    m.expectation_id,
                    [
                        transfer_id(s.account, s.statement_id, m.entry_index + 1, leg)
                        for leg in range(len(m.legs))
                    ],
                )
                for m in rec.matches
            ],
        )
        repo.insert_breaks(row_id, s, rec.breaks, now)
        lines = {m.expectation_id: m.entry_index + 1 for m in rec.matches}
        repo.consume(rec.consumed, row_id, lines)
        return row_id

    def recover(self) -> int:
        """Finish every statement left ``posting`` by an interrupted import; returns how many
        were finished. Every import runs it first: one statement whose posting fails
        unexpectedly is backed off, then parked (``RECOVER_ITEMS``), instead of failing every
        later import."""
        items = self.quarantine.open(RECOVER_ITEMS)
        with self.database.read() as conn:
            pending = StatementRepository(conn).posting_statements()
        done = 0
        for row_id in pending:
            if str(row_id) in items.blocked:
                continue
            with items.isolated(str(row_id)):
                self._post_and_settle(row_id)
                done += 1
        return done

    def _post_and_settle(self, row_id: int) -> None:
        with self.database.read() as conn:
            repo = StatementRepository(conn)
            statement = repo.statement_by_row(row_id)
            if statement.state != "posting":
                return
            matches = [m for m in repo.matches(row_id) if m.ledger_result is None]
        results: dict[int, str] = {}
        chains: list[tuple[StoredMatch, list[NewTransfer]]] = []
        for match in matches:
            try:
                transfers = self._chain(statement.statement_id, row_id, match)
            except LedgerAccountNotFound as exc:
                results[match.line] = f"ledger_account_missing: {exc.message}"[:64]
                continue
            chains.append((match, transfers))
        batch: list[tuple[StoredMatch, list[NewTransfer]]] = []
        size = 0
        for chain in chains:
            if size + len(chain[1]) > limits.BATCH_SIZE_MAX:
                results.update(self._submit(batch))
                batch, size = [], 0
            batch.append(chain)
            size += len(chain[1])
        if batch:
            results.update(self._submit(batch))
        rejected = [(m, results[m.line]) for m in matches if results[m.line] != "ok"]
        with self.database.write() as conn:
            repo = StatementRepository(conn)
            current = repo.statement_by_row(row_id)
            if current.state != "posting":
                return  # another process settled it meanwhile
            repo.set_ledger_results(row_id, results)
            repo.insert_ledger_breaks(row_id, rejected, self.clock.now_ns())
            repo.mark_posted(row_id)

    def _chain(self, statement_id: str, row_id: int, match: StoredMatch) -> list[NewTransfer]:
        amount = abs(match.amount_minor)
        transfers = []
        for index, leg in enumerate(match.legs):
            last = index == len(match.legs) - 1
            transfers.append(
                NewTransfer(
                    id=match.transfer_ids[index],
                    debit_account_id=self._ledger_account(leg.debit_account_name, match.currency),
                    credit_account_id=self._ledger_account(leg.credit_account_name, match.currency),
                    amount_minor=amount,
                    currency=match.currency,
                    code=leg.code,
                    flags=0 if last else _LINKED,
                    metadata={"statement": statement_id[:128], "line": match.line},
                )
            )
        return transfers

    def _submit(self, batch: list[tuple[StoredMatch, list[NewTransfer]]]) -> dict[int, str]:
        flat = [t for _, chain in batch for t in chain]
        results = self.ledger.create_transfers(flat)
        out: dict[int, str] = {}
        offset = 0
        for match, chain in batch:
            codes = [r.result for r in results[offset : offset + len(chain)]]
            offset += len(chain)
            ok = (CreateTransferResult.OK, CreateTransferResult.EXISTS)
            if all(c in ok for c in codes):
                out[match.line] = "ok"
            else:
                cause = next(
                    (c for c in codes if c not in ok and c
                     is not CreateTransferResult.LINKED_EVENT_FAILED),
                    CreateTransferResult.LINKED_EVENT_FAILED,
                )  # fmt: skip
                out[match.line] = cause.value
        return out

    # ------------------------------------------------------------------ breaks

    def resolve_break(
        self,
        break_id: int,
        *,
        actor: str,
        note: str,
        match_reference: str | None = None,
    ) -> StoredBreak:
        """Close a break that waits for a person (``open``, or ``return_failed``), once, with
        who and why. With ``match_reference`` the operator names the expectation the line
        really was (a payer's typo, a reference left out): the line is matched to it exactly as
        an import would — same checks of account, direction, currency and amount, same
        deterministic ledger ids — and its legs are posted. Without it the break is
        ``explained``: a note, and the line stays outside the ledger.

        A ``return_failed`` break's line sits in ``suspense:unidentified`` (its return came
        back). It leaves suspense in the resolution's own transaction (``suspense:unidentified
        -> bank:safeguarding:<bank>``, code 44, :func:`model.suspense_release_transfer_id`):
        an explained line is then outside the ledger like any explained line, and a matched
        one is posted from the bank like any match; suspense never keeps it."""
        actor = _resolution_text(actor, "actor", limits.STATEMENT_ACTOR_LENGTH_MAX)
        note = _resolution_text(note, "note", limits.STATEMENT_RESOLUTION_NOTE_LENGTH_MAX)
        if type(break_id) is not int or break_id <= 0:
            raise BreakNotFound(f"no break {break_id!r}", param="break_id")
        with self.database.read() as conn:
            seen = StatementRepository(conn).break_by_id(break_id)
        if (
            seen is not None
            and seen.state is BreakState.OPEN
            and seen.line > 0
            and self._in_suspense(seen)
        ):
            # A return began (its ledger leg is written) and did not finish (a return made
            # before migration 0015, which was not one transaction): explaining the break would
            # strand the money in suspense, matching it would post the line twice.
            raise BreakReturnPending(
                f"break {break_id}'s line is in {SUSPENSE_ACCOUNT} on its way back to its "
                "sender; run `statements return` again to finish it"
            )
        action = BreakAction.EXPLAIN if match_reference is None else BreakAction.MATCH
        posting_row: int | None = None
        now = self.clock.now_ns()
        with self.database.write() as conn:
            repo = StatementRepository(conn)
            repo.lock_imports()
            b = _find_break(repo, break_id, for_update=True)
            to_state = break_transition(b.state, action)
            detail = note
            if match_reference is not None:
                self._match_by_hand(repo, b, match_reference)
                posting_row = b.statement_row_id
                detail += f" [matched to {normalize_reference(match_reference)}]"
            if b.state is BreakState.RETURN_FAILED:
                released = self._release_within(conn, repo, b)
                detail += f" [left {SUSPENSE_ACCOUNT}: ledger transfer {released}]"
            changed = repo.set_break_state(
                break_id, from_state=b.state, to_state=to_state, now_ns=now, actor=actor, note=note
            )
            assert changed, f"break {break_id} changed under its lock"
            repo.add_break_event(
                break_id, at_ns=now, from_state=b.state, to_state=to_state, actor=actor,
                detail=detail,
            )  # fmt: skip
        if posting_row is not None:
            self._post_and_settle(posting_row)
        return self.get_break(break_id)

    def _release_within(self, conn: Connection, repo: StatementRepository, b: StoredBreak) -> int:
        """Take a parked line back out of suspense, in the caller's transaction."""
        account = repo.bank_account(normalize_iban(b.account))
        assert account is not None, "a parked line's account is registered"
        transfer = NewTransfer(
            id=suspense_release_transfer_id(b.account, b.statement_id, b.line),
            debit_account_id=self._ledger_account(SUSPENSE_ACCOUNT, b.currency),
            credit_account_id=self._ledger_account(account.ledger_account_name, b.currency),
            amount_minor=b.amount_minor,
            currency=b.currency,
            code=SUSPENSE_RELEASE_TRANSFER_CODE,
            metadata={"statement": b.statement_id[:128], "line": b.line, "break": b.id},
        )
        (result,) = self.ledger.create_transfers_within(conn, [transfer])
        if not result.applied_or_exists:
            raise transfer_error(result.result, transfer.id)
        return transfer.id

    def _match_by_hand(self, repo: StatementRepository, b: StoredBreak, reference: str) -> None:
        if b.reason not in _MATCHABLE_BY_HAND:
            raise BreakResolutionInvalid(
                f"a {b.reason} break is not about a missing or unclear reference; explain it "
                "with a note instead",
                param="match_reference",
            )
        account = repo.bank_account(normalize_iban(b.account))
        if account is None:
            raise BreakResolutionInvalid(f"{b.account} is not a registered bank account")
        key = normalize_reference(reference) if isinstance(reference, str) else ""
        hit = repo.expectation_by_reference(account.iban, key) if key else None
        if hit is None:
            raise BreakResolutionInvalid(
                f"nothing is expected on {account.iban} under {reference!r}",
                param="match_reference",
            )
        m = hit.movement
        direction = "credit" if b.amount_minor > 0 else "debit"
        problem = (
            "it was already matched" if not m.standing and hit.consumed
            else f"it expects {m.currency}" if m.currency != b.currency
            else f"it expects a {m.direction}" if m.direction != direction
            else f"it expects {m.amount_minor} minor units"
            if m.amount_minor is not None and m.amount_minor != abs(b.amount_minor)
            else None
        )  # fmt: skip
        if problem is not None:
            raise BreakResolutionInvalid(
                f"line {b.line} cannot be {m.reference}: {problem}", param="match_reference"
            )
        ids = [transfer_id(b.account, b.statement_id, b.line, leg) for leg in range(len(m.legs))]
        repo.insert_matches(b.statement_row_id, [(b.line, hit.id, ids)])
        if not m.standing:
            repo.consume([hit.id], b.statement_row_id, {hit.id: b.line})
        repo.set_posting(b.statement_row_id)

    # ------------------------------------------------------------------ return to sender

    def break_for_return(self, break_id: int, *, actor: str, note: str) -> StoredBreak:
        """The first checks of a return, in their fixed order — shape (actor, note, id), then
        identity (the break exists) — writing nothing. The break comes back in whatever state
        it is: which states may be returned is payouts' ``return_break``'s to say, as it
        knows whether a return payout is still on its way."""
        _resolution_text(actor, "actor", limits.STATEMENT_ACTOR_LENGTH_MAX)
        _resolution_text(note, "note", limits.STATEMENT_RESOLUTION_NOTE_LENGTH_MAX)
        if type(break_id) is not int or break_id <= 0:
            raise BreakNotFound(f"no break {break_id!r}", param="break_id")
        with self.database.read() as conn:
            return _find_break(StatementRepository(conn), break_id)

    def returnable_line(self, b: StoredBreak) -> ReturnableLine:
        """Check that the line of ``b`` (a break waiting for a person) may go back to its
        sender and open the sender's name and IBAN: a returnable reason, a line not matched, a
        booked credit of a registered account that does not carry one of our own payouts'
        references, a sealed counterparty IBAN and name. Writes nothing."""
        with self.database.read() as conn:
            repo = StatementRepository(conn)
            line = repo.line(b.statement_row_id, b.line) if b.line > 0 else None
            matched = b.line > 0 and repo.line_matched(b.statement_row_id, b.line)
            account = repo.bank_account(normalize_iban(b.account))
            ours = (
                b.expectation_id is not None
                and repo.expectation_direction(b.expectation_id) == "debit"
            )

        def refuse(why: str) -> BreakNotReturnable:
            return BreakNotReturnable(f"break {b.id} cannot be returned: {why}")

        if b.reason not in RETURNABLE_REASONS:
            raise refuse(f"a {b.reason} break is not unidentified money to send back")
        if line is None or matched:
            # A matched line's money is in the ledger already; returning it would count twice.
            raise refuse("its line was matched to an expectation")
        if line.status != EntryStatus.BOOKED.value or line.amount_minor <= 0:
            raise refuse("only a booked incoming (credit) line can go back to its sender")
        if ours:
            # A credit carrying the reference of one of our own payments (a `duplicate` of a
            # payout already confirmed) is that payment coming back from the payee's bank:
            # sending it "back" would send it to the account that just refused it.
            raise refuse(
                f"it carries {b.reference or 'the reference'} of one of our own payouts: it is "
                "most likely that payout coming back"
            )
        if account is None:
            raise refuse(f"{b.account} is not a registered bank account")
        if line.counterparty_iban_enc is None:
            raise refuse("the bank did not say which account it came from (no counterparty IBAN)")
        if line.counterparty_name_enc is None:
            # A credit transfer names its creditor; paying an IBAN under a made-up name is
            # how returns get rejected or land with the wrong person.
            raise refuse("the bank did not say who sent it (no counterparty name)")
        row_id = entry_row_id(b.statement_row_id, b.line)
        return ReturnableLine(
            break_=b,
            ledger_account_name=account.ledger_account_name,
            amount_minor=line.amount_minor,
            currency=line.currency,
            counterparty_name=self.cipher.open(
                line.counterparty_name_enc, purpose=COUNTERPARTY_NAME_PURPOSE, row_id=row_id
            ),
            counterparty_iban=self.cipher.open(
                line.counterparty_iban_enc, purpose=COUNTERPARTY_IBAN_PURPOSE, row_id=row_id
            ),
            bank_reference=line.bank_reference or line.end_to_end_id or line.reference,
            suspense_transfer_id=suspense_transfer_id(b.account, b.statement_id, b.line),
        )

    def suspense_account(self, currency: str) -> int | None:
        """The id of ``suspense:unidentified``, ``None`` while it does not exist; one in
        another currency is :class:`LedgerAccountNotFound` (like ``clearing:payout``, it is a
        single account). Reads only."""
        try:
            account = self.ledger.account_by_name(SUSPENSE_ACCOUNT)
        except AccountNotFound:
            return None
        if account.currency != currency:
            raise LedgerAccountNotFound(
                f"ledger account {SUSPENSE_ACCOUNT!r} is {account.currency}"
            )
        return account.id

    def ensure_suspense_account(self, currency: str) -> int:
        """``suspense:unidentified``, created on first use (a liability that can never go
        negative, under a derived id: two processes creating it at once create the same
        account). Its own transaction: an account is nobody's money until a transfer moves
        some."""
        found = self.suspense_account(currency)
        if found is not None:
            return found
        (created,) = self.ledger.create_accounts(
            [
                NewAccount(
                    id=derived_id("account", SUSPENSE_ACCOUNT),
                    currency=currency,
                    code=SUSPENSE_ACCOUNT_CODE,
                    flags=int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                    name=SUSPENSE_ACCOUNT,
                )
            ]
        )
        ok = (CreateAccountResult.OK, CreateAccountResult.EXISTS)
        assert created.result in ok, created.result
        found = self.suspense_account(currency)
        assert found is not None
        return found

    def park_transfer(self, line: ReturnableLine) -> NewTransfer:
        """The ledger transfer that brings a line being returned into the ledger:
        ``bank:safeguarding:<bank> -> suspense:unidentified`` for its amount, under
        :func:`model.suspense_transfer_id` (derived from the line, so a line is parked once:
        a later attempt of its return gets ``exists``). Needs the suspense account
        (:meth:`ensure_suspense_account`); the caller posts it in its transaction."""
        b = line.break_
        return NewTransfer(
            id=line.suspense_transfer_id,
            debit_account_id=self._ledger_account(line.ledger_account_name, line.currency),
            credit_account_id=self._ledger_account(SUSPENSE_ACCOUNT, line.currency),
            amount_minor=line.amount_minor,
            currency=line.currency,
            code=SUSPENSE_TRANSFER_CODE,
            metadata={"statement": b.statement_id[:128], "line": b.line, "break": b.id},
        )

    def lock_break_within(self, conn: Connection, break_id: int) -> StoredBreak:
        """The break, read and locked in the caller's write transaction: the return that
        changes it decides on the state it reads here (a concurrent return or resolution
        waits, then finds the break changed)."""
        return _find_break(StatementRepository(conn), break_id, for_update=True)

    def mark_returned_within(
        self,
        conn: Connection,
        b: StoredBreak,
        *,
        actor: str,
        note: str,
        payout_id: int,
        attempt: int,
        detail: str,
    ) -> None:
        """Resolve ``b`` (read by :meth:`lock_break_within` in ``conn``) as ``returned`` by
        return payout ``payout_id``, its ``attempt``-th, in the transaction that made the
        payout; the trail gets ``detail`` (no personal data: an IBAN's last four at most)."""
        actor = _resolution_text(actor, "actor", limits.STATEMENT_ACTOR_LENGTH_MAX)
        note = _resolution_text(note, "note", limits.STATEMENT_RESOLUTION_NOTE_LENGTH_MAX)
        to_state = break_transition(b.state, BreakAction.RETURN)
        now = self.clock.now_ns()
        repo = StatementRepository(conn)
        changed = repo.set_break_state(
            b.id,
            from_state=b.state,
            to_state=to_state,
            now_ns=now,
            actor=actor,
            # The payout id is kept with the resolution too, for a reader of the note alone.
            note=f"{note} [return payout {payout_id}]",
            return_attempts=attempt,
            return_payout_id=payout_id,
            return_failure=None,
        )
        assert changed, f"break {b.id} changed under its lock"
        repo.add_break_event(
            b.id, at_ns=now, from_state=b.state, to_state=to_state, actor=actor,
            detail=f"{note} [{detail}]",
        )  # fmt: skip

    def match_sent_back_within(
        self,
        conn: Connection,
        b: StoredBreak,
        *,
        transfer_ids: Sequence[int],
        note: str,
        detail: str,
    ) -> None:
        """Resolve ``b`` — open, read by :meth:`lock_break_within` in ``conn`` — as ``matched``
        by Paykeep: its line is one of our payouts that the payee's bank sent back, and the
        caller (payouts, which owns the transaction) has just posted its ledger transfers
        ``transfer_ids`` in ``conn``. The line gets its match row, posted (``ok``) from the
        start, under the payout's own expectation (the reference it carries); the break gets
        ``note`` and a trail entry. A line already matched, or a break not open, is a
        programmer's error here: the caller checked both under the lock."""
        assert b.expectation_id is not None and b.line > 0, b
        repo = StatementRepository(conn)
        assert not repo.line_matched(b.statement_row_id, b.line), b
        to_state = break_transition(b.state, BreakAction.MATCH)
        now = self.clock.now_ns()
        repo.insert_posted_match(b.statement_row_id, b.line, b.expectation_id, transfer_ids)
        changed = repo.set_break_state(
            b.id, from_state=b.state, to_state=to_state, now_ns=now, actor=SYSTEM_ACTOR,
            note=note[: limits.STATEMENT_RESOLUTION_NOTE_LENGTH_MAX],
        )  # fmt: skip
        assert changed, f"break {b.id} changed under its lock"
        ids = ", ".join(str(t) for t in transfer_ids)
        repo.add_break_event(
            b.id, at_ns=now, from_state=b.state, to_state=to_state, actor=SYSTEM_ACTOR,
            detail=f"{detail} [ledger transfers {ids}]",
        )  # fmt: skip

    def bounce_candidates(
        self, limit: int = limits.STATEMENT_BOUNCE_SCAN_MAX
    ) -> list[BounceCandidate]:
        """Open breaks on incoming lines that carry the reference of one of our own payouts:
        payouts looks among them for its return payouts coming back. Reads only."""
        limit = max(1, min(limit, limits.STATEMENT_BOUNCE_SCAN_MAX))
        with self.database.read() as conn:
            return StatementRepository(conn).bounce_candidates(limit)

    def reclaim_bounced_return(self, candidate: BounceCandidate, *, payout_id: int) -> bool:
        """``candidate``'s line is return payout ``payout_id`` sent back by the payee's bank
        (payouts checked the reference, the amount and that it is a return): in one
        transaction the line enters the ledger into suspense (``bank:safeguarding:<bank> ->
        suspense:unidentified``, its own :func:`model.suspense_transfer_id`), its break is
        resolved ``bounced``, and the break that payout returned becomes ``return_failed``,
        its money back in suspense, to be returned again or resolved. ``False`` (nothing
        written) when either break changed meanwhile."""
        bounce = candidate.break_
        self.ensure_suspense_account(bounce.currency)
        now = self.clock.now_ns()
        with self.database.write() as conn:
            repo = StatementRepository(conn)
            original = repo.break_by_return_payout(payout_id, for_update=True)
            current = repo.break_by_id(bounce.id, for_update=True)
            if (
                original is None
                or original.state is not BreakState.RETURNED
                or current is None
                or current.state is not BreakState.OPEN
            ):
                return False
            parked = NewTransfer(
                id=suspense_transfer_id(bounce.account, bounce.statement_id, bounce.line),
                debit_account_id=self._ledger_account(
                    candidate.ledger_account_name, bounce.currency
                ),
                credit_account_id=self._ledger_account(SUSPENSE_ACCOUNT, bounce.currency),
                amount_minor=bounce.amount_minor,
                currency=bounce.currency,
                code=SUSPENSE_TRANSFER_CODE,
                metadata={
                    "statement": bounce.statement_id[:128], "line": bounce.line,
                    "break": bounce.id, "bounce_of": original.id,
                },
            )  # fmt: skip
            (result,) = self.ledger.create_transfers_within(conn, [parked])
            if not result.applied_or_exists:
                raise transfer_error(result.result, parked.id)
            came_back = (
                f"return payout {payout_id} of break #{original.id} came back from the payee's "
                f"bank; its money is in {SUSPENSE_ACCOUNT} for break #{original.id}"
            )
            bounced = break_transition(current.state, BreakAction.BOUNCE)
            assert repo.set_break_state(
                current.id, from_state=current.state, to_state=bounced, now_ns=now,
                actor=SYSTEM_ACTOR, note=came_back,
            )  # fmt: skip
            repo.add_break_event(
                current.id, at_ns=now, from_state=current.state, to_state=bounced,
                actor=SYSTEM_ACTOR, detail=f"{came_back} [ledger transfer {parked.id}]",
            )  # fmt: skip
            failure = (
                f"the payee's bank sent return payout {payout_id} back (statement "
                f"{bounce.statement_id} line {bounce.line}, break #{bounce.id})"
            )
            _fail_return(repo, original, payout_id=payout_id, failure=failure, now_ns=now)
        return True

    def _in_suspense(self, b: StoredBreak) -> bool:
        """Whether a return has parked this break's line in suspense (the ledger is the
        record: its transfer id derives from the line)."""
        wanted = suspense_transfer_id(b.account, b.statement_id, b.line)
        return wanted in self.ledger.lookup_transfers([wanted])

    # ------------------------------------------------------------------ queries

    def posted_references(self, iban: str, references: Sequence[str]) -> set[str]:
        """Which of these expectations (by reference, on ``iban``) a statement has confirmed:
        their line matched and their ledger legs are posted. How other contexts (payouts)
        learn that the bank really moved the money."""
        wanted = sorted({normalize_reference(r) for r in references if r})
        if not wanted:
            return set()
        with self.database.read() as conn:
            return StatementRepository(conn).posted_references(normalize_iban(iban), wanted)

    def get_break(self, break_id: int) -> StoredBreak:
        if type(break_id) is not int or break_id <= 0:
            raise BreakNotFound(f"no break {break_id!r}", param="break_id")
        with self.database.read() as conn:
            return _find_break(StatementRepository(conn), break_id)

    def break_trail(self, break_id: int) -> tuple[StoredBreak, list[dict[str, Any]]]:
        """The break and every change of its state, oldest first: when, from what to what,
        who (an operator, or ``paykeep`` for the bank's answers) and why."""
        if type(break_id) is not int or break_id <= 0:
            raise BreakNotFound(f"no break {break_id!r}", param="break_id")
        with self.database.read() as conn:
            repo = StatementRepository(conn)
            return _find_break(repo, break_id), repo.break_events(break_id)

    def open_breaks(self, limit: int = limits.STATEMENT_BREAKS_PAGE_MAX) -> list[StoredBreak]:
        limit = max(1, min(limit, limits.STATEMENT_BREAKS_PAGE_MAX))
        with self.database.read() as conn:
            return StatementRepository(conn).breaks(open_only=True, limit=limit)

    def breaks(
        self, limit: int = limits.STATEMENT_BREAKS_PAGE_MAX, *, include_resolved: bool = False
    ) -> list[StoredBreak]:
        """Breaks oldest first: those waiting for a person (``open``, ``return_failed``), or
        with ``include_resolved`` every break with its resolution (``explained``, ``matched``,
        ``returned``, ``bounced``)."""
        limit = max(1, min(limit, limits.STATEMENT_BREAKS_PAGE_MAX))
        with self.database.read() as conn:
            return StatementRepository(conn).breaks(open_only=not include_resolved, limit=limit)

    def line_remittance(self, statement_row_id: int, line: int) -> str | None:
        """What the payer wrote on a stored line (opened): an operator matching a break by
        hand needs it; nothing else reads it back."""
        with self.database.read() as conn:
            sealed = StatementRepository(conn).sealed_remittance(statement_row_id, line)
        if sealed is None:
            return None
        return self.cipher.open(
            sealed, purpose=REMITTANCE_PURPOSE, row_id=entry_row_id(statement_row_id, line)
        )

    def row_counts(self) -> dict[str, int]:
        with self.database.read() as conn:
            return StatementRepository(conn).count_rows()


def _find_break(
    repo: StatementRepository, break_id: int, *, for_update: bool = False
) -> StoredBreak:
    """The break, or ``statement_break_not_found``."""
    found = repo.break_by_id(break_id, for_update=for_update)
    if found is None:
        raise BreakNotFound(f"no break {break_id}", param="break_id")
    return found


def _fail_return(
    repo: StatementRepository, b: StoredBreak, *, payout_id: int, failure: str, now_ns: int
) -> None:
    to_state = break_transition(b.state, BreakAction.FAIL_RETURN)
    failure = failure[: limits.STATEMENT_RESOLUTION_NOTE_LENGTH_MAX]
    changed = repo.set_break_state(
        b.id, from_state=b.state, to_state=to_state, now_ns=now_ns, actor=SYSTEM_ACTOR,
        note=None, return_failure=failure,
    )  # fmt: skip
    assert changed, f"break {b.id} changed under its lock"
    left = limits.STATEMENT_RETURN_ATTEMPTS_MAX - b.return_attempts
    repo.add_break_event(
        b.id, at_ns=now_ns, from_state=b.state, to_state=to_state, actor=SYSTEM_ACTOR,
        detail=f"return payout {payout_id} failed: {failure}; its money is back in "
        f"{SUSPENSE_ACCOUNT} ({b.return_attempts} of "
        f"{limits.STATEMENT_RETURN_ATTEMPTS_MAX} attempts made, {max(left, 0)} left)",
    )  # fmt: skip


def fail_return_within(
    conn: Connection, *, payout_id: int, failure: str, now_ns: int
) -> StoredBreak | None:
    """Return payout ``payout_id`` failed for good (the bank rejected its file): in the
    caller's transaction — the one that moves its money back to ``suspense:unidentified`` and
    marks it ``returned`` — the break it was returning becomes ``return_failed`` with
    ``failure``, waiting for a person again. ``None`` when the payout is not a break's latest
    return (a merchant's payout: nothing to do). Payouts calls it; it needs no service (no
    cipher, no ledger), so a payout service without the statements service still records it."""
    repo = StatementRepository(conn)
    b = repo.break_by_return_payout(payout_id, for_update=True)
    if b is None or b.state is not BreakState.RETURNED:
        return None
    _fail_return(repo, b, payout_id=payout_id, failure=failure, now_ns=now_ns)
    return repo.break_by_id(b.id)
