"""banksim's bank accounts: IBAN accounts, pain.001 execution, incoming transfers, statements.

State lives in its own SQLite file (``bank.sqlite3`` in the data directory, stdlib
``sqlite3``) and survives restarts. Each account has its own business date: entries are booked
on it, and ``close-day`` closes it — it writes the end-of-day statement (opening booked balance
= the previous statement's closing balance, closing = opening + the day's entries) and moves
the account to the next business day (weekends skipped).

HTTP (mounted under ``/bank`` by the banksim app; :func:`create_router`):

- ``POST /accounts`` open an account ``{"iban", "currency", "name", "opening_balance_minor",
  "business_date"?, "bic"?}`` (a replay of the same account is answered with it, 200);
- ``GET /accounts/{iban}``; ``GET /accounts/{iban}/statements``;
- ``POST /payment-files`` a pain.001.001.03/.09 body: parsed hardened, XSD-validated, refused
  as a duplicate by message id, executed all-or-nothing; the answer is a pain.002-like JSON
  (group status ACCP/RJCT with an ISO reason code, one status per transaction);
  ``GET /payment-files/{message_id}`` the stored answer;
- ``POST /accounts/{iban}/incoming`` a customer's transfer in ``{"amount_minor",
  "remittance", "debtor_name", "debtor_iban", "end_to_end_id"?, "after_cutoff"?}``: booked
  today, valued the next business day when it arrived after the cut-off;
- ``POST /accounts/{iban}/close-day``; ``GET /statements/{id}?format=camt053|mt940&version=02|08``;
- ``GET|POST /faults``: ``unknown_reference_line`` (close-day adds a credit line whose reference
  nobody expects), ``reject_payment_files`` (every payment file is rejected, reason AG01),
  ``return_after_settlement`` (the payee's bank sends every credit transfer of a file executed
  while it is on back, a business day later, with an ISO reason and perhaps less a fee).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import fastapi
import pydantic
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from schwifty import IBAN
from schwifty.exceptions import SchwiftyException
from starlette.concurrency import run_in_threadpool

from paykeep import limits
from paykeep.banksim.bank_pain import PaymentFile, PaymentFileInvalid, parse_payment_file
from paykeep.banksim.bank_statements import Statement, StatementEntry, camt053, mt940
from paykeep.clock import Clock, SystemClock, ns_to_datetime
from paykeep.money import UnknownCurrency, currency_exponent

DB_FILE_NAME = "bank.sqlite3"
FAULTS = ("unknown_reference_line", "reject_payment_files", "return_after_settlement")
#: What ``return_after_settlement: true`` means: the account is closed, nothing is kept.
DEFAULT_RETURN: dict[str, Any] = {"reason": "AC04", "fee_minor": 0}

T = TypeVar("T")


class BankError(Exception):
    """An answer other than success: an HTTP status, a stable code and a reason."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def response(self) -> JSONResponse:
        body = {"error": self.code, "message": self.message, **self.extra}
        return JSONResponse(body, status_code=self.status)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS bank_accounts (
    iban TEXT PRIMARY KEY,
    currency TEXT NOT NULL,
    name TEXT NOT NULL,
    bic TEXT,
    opening_balance_minor INTEGER NOT NULL,
    balance_minor INTEGER NOT NULL,
    statement_balance_minor INTEGER NOT NULL,
    business_date TEXT NOT NULL,
    statements INTEGER NOT NULL DEFAULT 0,
    opened_at_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bank_entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    iban TEXT NOT NULL REFERENCES bank_accounts(iban),
    amount_minor INTEGER NOT NULL CHECK (amount_minor <> 0),
    booking_date TEXT NOT NULL,
    value_date TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('payout', 'incoming', 'fault')),
    end_to_end_id TEXT,
    remittance TEXT,
    counterparty_name TEXT,
    counterparty_iban TEXT,
    message_id TEXT,
    payment_info_id TEXT,
    statement_id TEXT REFERENCES bank_statements(id)
);
CREATE INDEX IF NOT EXISTS ix_bank_entries_open ON bank_entries (iban, statement_id);
CREATE TABLE IF NOT EXISTS bank_payment_files (
    message_id TEXT PRIMARY KEY,
    schema TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ACCP', 'RJCT')),
    answer TEXT NOT NULL,
    received_at_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bank_statements (
    id TEXT PRIMARY KEY,
    iban TEXT NOT NULL REFERENCES bank_accounts(iban),
    sequence INTEGER NOT NULL,
    date TEXT NOT NULL,
    opening_booked_minor INTEGER NOT NULL,
    closing_booked_minor INTEGER NOT NULL,
    created_at_ns INTEGER NOT NULL,
    UNIQUE (iban, sequence)
);
CREATE TABLE IF NOT EXISTS bank_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- A credit transfer the payee's bank will send back (the return_after_settlement fault): its
-- own table, so data directories kept from before need no ALTER of bank_entries.
CREATE TABLE IF NOT EXISTS bank_returns (
    payout_entry_id INTEGER PRIMARY KEY REFERENCES bank_entries(id),
    reason TEXT NOT NULL,
    fee_minor INTEGER NOT NULL CHECK (fee_minor >= 0),
    return_entry_id INTEGER UNIQUE REFERENCES bank_entries(id)
);
"""


def next_business_day(day: dt.date) -> dt.date:
    """The next Monday-to-Friday date after ``day`` (no holiday calendar)."""
    day += dt.timedelta(days=1)
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


def _business_day_on_or_after(day: dt.date) -> dt.date:
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


def _iban(value: str, what: str) -> str:
    try:
        return str(IBAN(value).compact)
    except SchwiftyException as exc:
        raise BankError(400, "iban_invalid", f"{what}: {exc}") from None


class BankStore:
    """The bank's books in one SQLite file. Thread-safe: one connection, one lock."""

    def __init__(self, data_dir: Path, clock: Clock | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            data_dir / DB_FILE_NAME, check_same_thread=False, isolation_level=None, timeout=30
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    # ------------------------------------------------------------------ faults

    def faults(self) -> dict[str, Any]:
        with self._tx() as cur:
            return self._faults(cur)

    def _faults(self, cur: sqlite3.Cursor) -> dict[str, Any]:
        """Each fault by name: ``False`` when off; ``True`` (on) for the two switches, and for
        ``return_after_settlement`` its terms ``{"reason", "fee_minor"}``."""
        row = cur.execute("SELECT value FROM bank_meta WHERE key = 'faults'").fetchone()
        stored = json.loads(row[0]) if row else {}
        faults: dict[str, Any] = {}
        for name in FAULTS:
            value = stored.get(name, False)
            faults[name] = value if isinstance(value, dict) else bool(value)
        return faults

    def set_faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Turn faults on or off; ``return_after_settlement`` takes ``True`` (reason AC04, no
        fee), its terms, or ``False``."""
        changes = dict(changes)
        returns = changes.get("return_after_settlement")
        if returns is True:
            changes["return_after_settlement"] = dict(DEFAULT_RETURN)
        elif isinstance(returns, dict):
            changes["return_after_settlement"] = {**DEFAULT_RETURN, **returns}
        with self._tx() as cur:
            faults = self._faults(cur)
            faults.update(changes)
            cur.execute(
                "INSERT INTO bank_meta (key, value) VALUES ('faults', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (json.dumps(faults, sort_keys=True),),
            )
            return faults

    # ------------------------------------------------------------------ accounts

    def open_account(
        self,
        iban: str,
        currency: str,
        name: str,
        opening_balance_minor: int,
        business_date: dt.date | None,
        bic: str | None,
    ) -> tuple[dict[str, Any], bool]:
        """Open an account; returns (account, created). A replay of the same account is fine."""
        iban = _iban(iban, "account")
        try:
            currency_exponent(currency)
        except UnknownCurrency as exc:
            raise BankError(400, "currency_invalid", exc.message) from None
        today = ns_to_datetime(self.clock.now_ns()).date()
        day = _business_day_on_or_after(business_date or today)
        with self._tx() as cur:
            existing = self._account(cur, iban)
            if existing is not None:
                same = (
                    existing["currency"] == currency
                    and existing["name"] == name
                    and existing["opening_balance_minor"] == opening_balance_minor
                )
                if not same:
                    raise BankError(409, "account_exists", f"{iban} exists with other details")
                return existing, False
            (count,) = cur.execute("SELECT COUNT(*) FROM bank_accounts").fetchone()
            if count >= limits.BANK_ACCOUNTS_MAX:
                raise BankError(409, "too_many_accounts", f"at most {limits.BANK_ACCOUNTS_MAX}")
            cur.execute(
                "INSERT INTO bank_accounts (iban, currency, name, bic, opening_balance_minor, "
                "balance_minor, statement_balance_minor, business_date, opened_at_ns) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (iban, currency, name, bic, opening_balance_minor, opening_balance_minor,
                 opening_balance_minor, day.isoformat(), self.clock.now_ns()),
            )  # fmt: skip
            created = self._account(cur, iban)
            assert created is not None
            return created, True

    def account(self, iban: str) -> dict[str, Any]:
        with self._tx() as cur:
            found = self._account(cur, _iban(iban, "account"))
        if found is None:
            raise BankError(404, "account_not_found", f"no account {iban}")
        return found

    def _account(self, cur: sqlite3.Cursor, iban: str) -> dict[str, Any] | None:
        row = cur.execute(
            "SELECT iban, currency, name, bic, balance_minor, statement_balance_minor, "
            "business_date, statements, opening_balance_minor FROM bank_accounts WHERE iban = ?",
            (iban,),
        ).fetchone()
        if row is None:
            return None
        ids = [
            r[0]
            for r in cur.execute(
                "SELECT id FROM bank_statements WHERE iban = ? ORDER BY sequence", (iban,)
            )
        ]
        return {
            "iban": row[0],
            "currency": row[1],
            "name": row[2],
            "bic": row[3],
            "balance_minor": row[4],
            "last_statement_closing_minor": row[5],
            "business_date": row[6],
            "statements": ids,
            "opening_balance_minor": row[8],
        }

    def _require(self, cur: sqlite3.Cursor, iban: str) -> dict[str, Any]:
        found = self._account(cur, iban)
        if found is None:
            raise BankError(404, "account_not_found", f"no account {iban}")
        return found

    def _book(
        self,
        cur: sqlite3.Cursor,
        account: dict[str, Any],
        amount_minor: int,
        kind: str,
        *,
        value_date: dt.date | None = None,
        end_to_end_id: str | None = None,
        remittance: str | None = None,
        counterparty_name: str | None = None,
        counterparty_iban: str | None = None,
        message_id: str | None = None,
        payment_info_id: str | None = None,
    ) -> dict[str, Any]:
        booking = dt.date.fromisoformat(account["business_date"])
        value = value_date or booking
        cur.execute(
            "INSERT INTO bank_entries (iban, amount_minor, booking_date, value_date, kind, "
            "end_to_end_id, remittance, counterparty_name, counterparty_iban, message_id, "
            "payment_info_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (account["iban"], amount_minor, booking.isoformat(), value.isoformat(), kind,
             end_to_end_id, remittance, counterparty_name, counterparty_iban, message_id,
             payment_info_id),
        )  # fmt: skip
        entry_id = cur.lastrowid
        cur.execute(
            "UPDATE bank_accounts SET balance_minor = balance_minor + ? WHERE iban = ?",
            (amount_minor, account["iban"]),
        )
        account["balance_minor"] += amount_minor
        return {
            "entry_id": entry_id,
            "iban": account["iban"],
            "amount_minor": amount_minor,
            "currency": account["currency"],
            "booking_date": booking.isoformat(),
            "value_date": value.isoformat(),
            "end_to_end_id": end_to_end_id,
            "remittance": remittance,
        }

    def incoming(
        self,
        iban: str,
        amount_minor: int,
        remittance: str,
        debtor_name: str,
        debtor_iban: str,
        end_to_end_id: str | None,
        after_cutoff: bool,
    ) -> dict[str, Any]:
        """A customer's transfer into ``iban``: booked today, valued next business day if late."""
        iban = _iban(iban, "account")
        debtor = _iban(debtor_iban, "debtor")
        with self._tx() as cur:
            account = self._require(cur, iban)
            booking = dt.date.fromisoformat(account["business_date"])
            value = next_business_day(booking) if after_cutoff else booking
            return self._book(
                cur,
                account,
                amount_minor,
                "incoming",
                value_date=value,
                end_to_end_id=end_to_end_id,
                remittance=remittance,
                counterparty_name=debtor_name,
                counterparty_iban=debtor,
            )

    def acquirer_debit(
        self, iban: str, amount_minor: int, reference: str, creditor_name: str, creditor_iban: str
    ) -> dict[str, Any]:
        """The card acquirer collects what refunds left it owed (a settlement whose refunds
        outweigh its captures): one debit on ``iban``, refused without the funds."""
        iban = _iban(iban, "account")
        creditor = _iban(creditor_iban, "creditor")
        with self._tx() as cur:
            account = self._require(cur, iban)
            if account["balance_minor"] < amount_minor:
                raise BankError(409, "insufficient_funds", f"{iban} cannot cover the debit")
            return self._book(
                cur,
                account,
                -amount_minor,
                # An outgoing entry like a payout's: the kinds are a closed set that data
                # directories kept across restarts already constrain.
                "payout",
                end_to_end_id=reference,
                remittance=reference,
                counterparty_name=creditor_name,
                counterparty_iban=creditor,
            )

    # ------------------------------------------------------------------ payment files

    def payment_file_status(self, message_id: str) -> dict[str, Any]:
        with self._tx() as cur:
            row = cur.execute(
                "SELECT answer FROM bank_payment_files WHERE message_id = ?", (message_id,)
            ).fetchone()
        if row is None:
            raise BankError(404, "payment_file_not_found", f"no payment file {message_id!r}")
        answer: dict[str, Any] = json.loads(row[0])
        return answer

    def execute(self, payment_file: PaymentFile) -> dict[str, Any]:
        """Execute every credit transfer of the file, or none: the pain.002-like answer."""
        with self._tx() as cur:
            row = cur.execute(
                "SELECT answer FROM bank_payment_files WHERE message_id = ?",
                (payment_file.message_id,),
            ).fetchone()
            if row is not None:
                raise BankError(
                    409,
                    "duplicate_message_id",
                    f"message id {payment_file.message_id!r} was already received",
                    reason="AM05",
                    original=json.loads(row[0]),
                )
            cur.execute("SAVEPOINT payment_file")
            try:
                answer = self._execute(cur, payment_file)
            except PaymentFileInvalid as exc:
                answer = _answer(payment_file, "RJCT", exc.reason, exc.text)
            # A rejected file books nothing: undo whatever _execute booked before it refused.
            if answer["group_status"] == "RJCT":
                cur.execute("ROLLBACK TO payment_file")
            cur.execute("RELEASE payment_file")
            cur.execute(
                "INSERT INTO bank_payment_files (message_id, schema, status, answer, "
                "received_at_ns) VALUES (?, ?, ?, ?, ?)",
                (payment_file.message_id, payment_file.schema, answer["group_status"],
                 json.dumps(answer, sort_keys=True), self.clock.now_ns()),
            )  # fmt: skip
            return answer

    def _execute(self, cur: sqlite3.Cursor, payment_file: PaymentFile) -> dict[str, Any]:
        faults = self._faults(cur)
        if faults["reject_payment_files"]:
            return _answer(payment_file, "RJCT", "AG01", "fault injected: transaction forbidden")
        # Our bank executes the file either way; the payee's bank sends the money back later.
        sent_back: dict[str, Any] | None = faults["return_after_settlement"] or None
        accounts: dict[str, dict[str, Any]] = {}
        for block in payment_file.blocks:
            account = accounts.get(block.debtor_iban) or self._account(cur, block.debtor_iban)
            if account is None:
                raise PaymentFileInvalid("AC01", f"no account {block.debtor_iban} at this bank")
            accounts[block.debtor_iban] = account
            for transfer in block.transfers:
                if transfer.currency != account["currency"]:
                    raise PaymentFileInvalid(
                        "AM03",
                        f"{transfer.end_to_end_id}: {transfer.currency} from a "
                        f"{account['currency']} account",
                    )
                if account["balance_minor"] < transfer.amount_minor:
                    raise PaymentFileInvalid(
                        "AM04", f"insufficient funds on {block.debtor_iban} for the file"
                    )
                booked = self._book(
                    cur,
                    account,
                    -transfer.amount_minor,
                    "payout",
                    end_to_end_id=transfer.end_to_end_id,
                    remittance=transfer.remittance,
                    counterparty_name=transfer.creditor_name,
                    counterparty_iban=transfer.creditor_iban,
                    message_id=payment_file.message_id,
                    payment_info_id=block.payment_info_id,
                )
                if sent_back is not None:
                    cur.execute(
                        "INSERT INTO bank_returns (payout_entry_id, reason, fee_minor) "
                        "VALUES (?, ?, ?)",
                        (booked["entry_id"], sent_back["reason"], sent_back["fee_minor"]),
                    )
        return _answer(payment_file, "ACCP", None, None)

    def _book_returns(self, cur: sqlite3.Cursor, account: dict[str, Any]) -> None:
        """The payee's bank sends back the credit transfers marked by ``return_after_settlement``
        once they are on a statement (so the return is on a later one: after settlement): one
        incoming entry each, with the original end-to-end id and remittance, the payee as its
        debtor, the amount less the fee the payee's bank kept (a fee of the whole amount
        returns nothing). Booked on the business date being closed."""
        due = cur.execute(
            "SELECT r.payout_entry_id, r.fee_minor, e.amount_minor, e.end_to_end_id, "
            "e.remittance, e.counterparty_name, e.counterparty_iban FROM bank_returns r "
            "JOIN bank_entries e ON e.id = r.payout_entry_id "
            "WHERE e.iban = ? AND e.statement_id IS NOT NULL AND r.return_entry_id IS NULL "
            "ORDER BY r.payout_entry_id",
            (account["iban"],),
        ).fetchall()
        for entry_id, fee, amount, e2e, remittance, name, iban in due:
            back = -amount - fee
            if back <= 0:
                # The payee's bank kept everything: nothing comes back (return_entry_id stays
                # NULL but the payout is never looked at again: mark it with itself).
                cur.execute(
                    "UPDATE bank_returns SET return_entry_id = payout_entry_id "
                    "WHERE payout_entry_id = ?",
                    (entry_id,),
                )
                continue
            booked = self._book(
                cur, account, back, "incoming", end_to_end_id=e2e, remittance=remittance,
                counterparty_name=name, counterparty_iban=iban,
            )  # fmt: skip
            cur.execute(
                "UPDATE bank_returns SET return_entry_id = ? WHERE payout_entry_id = ?",
                (booked["entry_id"], entry_id),
            )

    # ------------------------------------------------------------------ statements

    def close_day(self, iban: str) -> dict[str, Any]:
        """Write the statement of the account's business day and open the next business day."""
        iban = _iban(iban, "account")
        with self._tx() as cur:
            account = self._require(cur, iban)
            day = dt.date.fromisoformat(account["business_date"])
            self._book_returns(cur, account)
            if self._faults(cur)["unknown_reference_line"]:
                (n,) = cur.execute("SELECT COUNT(*) FROM bank_entries").fetchone()
                self._book(
                    cur,
                    account,
                    1 + (n * 37) % 997,
                    "fault",
                    end_to_end_id="NOTPROVIDED",
                    remittance=f"UNKNOWN-{n + 1:06d}",
                    counterparty_name="Unexpected Sender",
                    counterparty_iban="DE02120300000000202051",
                )
            (open_count,) = cur.execute(
                "SELECT COUNT(*) FROM bank_entries WHERE iban = ? AND statement_id IS NULL",
                (iban,),
            ).fetchone()
            if open_count > limits.BANK_STATEMENT_ENTRIES_MAX:
                raise BankError(
                    409, "statement_too_large", f"{open_count} entries in one statement"
                )
            (total,) = cur.execute(
                "SELECT COALESCE(SUM(amount_minor), 0) FROM bank_entries "
                "WHERE iban = ? AND statement_id IS NULL",
                (iban,),
            ).fetchone()
            opening = account["last_statement_closing_minor"]
            closing = opening + total
            # The books and the statement chain must agree: nothing is booked off-statement.
            assert closing == account["balance_minor"], (closing, account["balance_minor"])
            (last,) = cur.execute("SELECT COUNT(*) FROM bank_statements").fetchone()
            sequence = len(account["statements"]) + 1
            # At most 16 characters: the id is also MT940's :20: transaction reference.
            statement_id = f"S{day:%y%m%d}{last + 1:06d}"
            now = self.clock.now_ns()
            cur.execute(
                "INSERT INTO bank_statements (id, iban, sequence, date, opening_booked_minor, "
                "closing_booked_minor, created_at_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (statement_id, iban, sequence, day.isoformat(), opening, closing, now),
            )
            cur.execute(
                "UPDATE bank_entries SET statement_id = ? WHERE iban = ? AND statement_id IS NULL",
                (statement_id, iban),
            )
            cur.execute(
                "UPDATE bank_accounts SET statement_balance_minor = ?, business_date = ?, "
                "statements = statements + 1 WHERE iban = ?",
                (closing, next_business_day(day).isoformat(), iban),
            )
            return {
                "statement_id": statement_id,
                "iban": iban,
                "currency": account["currency"],
                "sequence": sequence,
                "date": day.isoformat(),
                "opening_booked_minor": opening,
                "closing_booked_minor": closing,
                "entries": open_count,
                "next_business_date": next_business_day(day).isoformat(),
            }

    def statement(self, statement_id: str) -> Statement:
        with self._tx() as cur:
            row = cur.execute(
                "SELECT s.id, s.sequence, s.iban, a.bic, a.name, a.currency, s.date, "
                "s.opening_booked_minor, s.closing_booked_minor, s.created_at_ns "
                "FROM bank_statements s JOIN bank_accounts a ON a.iban = s.iban WHERE s.id = ?",
                (statement_id,),
            ).fetchone()
            if row is None:
                raise BankError(404, "statement_not_found", f"no statement {statement_id!r}")
            entries = tuple(
                StatementEntry(
                    entry_id=e[0],
                    amount_minor=e[1],
                    booking_date=dt.date.fromisoformat(e[2]),
                    value_date=dt.date.fromisoformat(e[3]),
                    end_to_end_id=e[4],
                    remittance=e[5],
                    counterparty_name=e[6],
                    counterparty_iban=e[7],
                    message_id=e[8],
                    payment_info_id=e[9],
                    return_reason=e[10],
                    original_amount_minor=None if e[11] is None else -int(e[11]),
                )
                for e in cur.execute(
                    "SELECT e.id, e.amount_minor, e.booking_date, e.value_date, "
                    "e.end_to_end_id, e.remittance, e.counterparty_name, e.counterparty_iban, "
                    "e.message_id, e.payment_info_id, r.reason, o.amount_minor "
                    "FROM bank_entries e "
                    "LEFT JOIN bank_returns r ON r.return_entry_id = e.id "
                    "AND r.return_entry_id <> r.payout_entry_id "
                    "LEFT JOIN bank_entries o ON o.id = r.payout_entry_id "
                    "WHERE e.statement_id = ? ORDER BY e.id",
                    (statement_id,),
                )
            )
        return Statement(
            statement_id=row[0],
            sequence=row[1],
            iban=row[2],
            bic=row[3],
            account_name=row[4],
            currency=row[5],
            date=dt.date.fromisoformat(row[6]),
            opening_booked_minor=row[7],
            closing_booked_minor=row[8],
            created_at=ns_to_datetime(row[9]).replace(microsecond=0, tzinfo=None),
            entries=entries,
        )


def _answer(
    payment_file: PaymentFile, status: str, reason: str | None, text: str | None
) -> dict[str, Any]:
    """A pain.002-like status report: group status and one status per transaction."""
    transfers = payment_file.transfers
    return {
        "message_id": payment_file.message_id,
        "schema": payment_file.schema,
        "group_status": status,
        "reason": None if reason is None else {"code": reason, "text": text},
        "number_of_transactions": payment_file.number_of_transactions,
        "control_sum_minor": sum(t.amount_minor for t in transfers),
        "transactions": [
            {
                "end_to_end_id": t.end_to_end_id,
                "amount_minor": t.amount_minor,
                "currency": t.currency,
                "status": "ACSC" if status == "ACCP" else "RJCT",
            }
            for t in transfers
        ],
    }


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------

Text = Annotated[str, Field(min_length=1, max_length=limits.BANK_TEXT_LENGTH_MAX)]
Minor = Annotated[int, Field(ge=0, le=limits.BANK_AMOUNT_MAX_MINOR)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class OpenAccount(_Body):
    iban: Annotated[str, Field(min_length=5, max_length=42)]
    currency: Annotated[str, Field(min_length=3, max_length=3)]
    name: Text
    opening_balance_minor: Minor = 0
    business_date: Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")] | None = None
    bic: Annotated[str, Field(pattern=r"^[A-Z0-9]{8}([A-Z0-9]{3})?$")] | None = None


class Incoming(_Body):
    amount_minor: Annotated[int, Field(gt=0, le=limits.BANK_AMOUNT_MAX_MINOR)]
    remittance: Text
    debtor_name: Text
    debtor_iban: Annotated[str, Field(min_length=5, max_length=42)]
    end_to_end_id: Annotated[str, Field(min_length=1, max_length=35)] | None = None
    after_cutoff: bool = False


class ReturnAfterSettlement(_Body):
    """The payee's bank's terms: an ISO 20022 return reason (AC04 account closed, AC01 wrong
    account number, MD07 holder deceased, ...) and the fee it keeps out of the amount."""

    reason: Annotated[str, Field(pattern=r"^[A-Z0-9]{4}$")] = "AC04"
    fee_minor: Minor = 0


class Faults(_Body):
    unknown_reference_line: bool | None = None
    reject_payment_files: bool | None = None
    #: ``true`` (AC04, no fee), the terms, or ``false`` to stop.
    return_after_settlement: bool | ReturnAfterSettlement | None = None


B = TypeVar("B", bound=BaseModel)


async def _read_body(request: fastapi.Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes without reading further."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BankError(413, "body_too_large", f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BankError(413, "body_too_large", f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: fastapi.Request, model: type[B]) -> B:
    body = await _read_body(request, limits.BANK_JSON_BYTES_MAX)
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BankError(400, "request_invalid", f"{where}: {first['msg']}") from None


async def _call(fn: Callable[[], T]) -> T:
    return await run_in_threadpool(fn)


def _date(text: str | None) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise BankError(400, "request_invalid", f"not a date: {text!r}") from None


def bank_faults_from_json(document: Any) -> dict[str, Any]:
    """The ``"bank"`` part of the ``--faults`` file, e.g. ``{"unknown_reference_line": true}``
    or ``{"return_after_settlement": {"reason": "AC01", "fee_minor": 250}}``; ``ValueError``
    names what is wrong."""
    try:
        faults = Faults.model_validate(document)
    except pydantic.ValidationError as exc:
        raise ValueError(f"bank faults: {exc.errors()[0]['msg']}") from None
    return {k: v for k, v in faults.model_dump().items() if v is not None}


def create_router(
    data_dir: Path,
    clock: Clock | None = None,
    faults: dict[str, Any] | None = None,
    store: BankStore | None = None,
) -> fastapi.APIRouter:
    """The bank's HTTP API; the banksim app mounts it under ``/bank``. ``faults`` (from the
    ``--faults`` file) are set at start, as ``POST /bank/faults`` would."""
    store = store or BankStore(data_dir, clock)
    if faults:
        store.set_faults(faults)
    router = fastapi.APIRouter()

    async def guarded(work: Callable[[], Any], status: int = 200) -> Response:
        try:
            result = await _call(work)
        except BankError as exc:
            return exc.response()
        if isinstance(result, Response):
            return result
        return JSONResponse(result, status_code=status)

    @router.post("/accounts")
    async def open_account(request: fastapi.Request) -> Response:
        try:
            body = await _json_body(request, OpenAccount)
            opening_day = _date(body.business_date)
        except BankError as exc:
            return exc.response()

        def work() -> Response:
            account, created = store.open_account(
                body.iban,
                body.currency,
                body.name,
                body.opening_balance_minor,
                opening_day,
                body.bic,
            )
            return JSONResponse(account, status_code=201 if created else 200)

        return await guarded(work)

    @router.get("/accounts/{iban}")
    async def get_account(iban: str) -> Response:
        return await guarded(lambda: store.account(iban))

    @router.get("/accounts/{iban}/statements")
    async def list_statements(iban: str) -> Response:
        return await guarded(lambda: {"statements": store.account(iban)["statements"]})

    @router.post("/accounts/{iban}/incoming")
    async def incoming(iban: str, request: fastapi.Request) -> Response:
        try:
            body = await _json_body(request, Incoming)
        except BankError as exc:
            return exc.response()
        return await guarded(
            lambda: store.incoming(
                iban,
                body.amount_minor,
                body.remittance,
                body.debtor_name,
                body.debtor_iban,
                body.end_to_end_id,
                body.after_cutoff,
            ),
            201,
        )

    @router.post("/accounts/{iban}/close-day")
    async def close_day(iban: str) -> Response:
        return await guarded(lambda: store.close_day(iban), 201)

    @router.get("/statements/{statement_id}")
    async def get_statement(
        statement_id: str,
        format: Literal["camt053", "mt940"] = "camt053",
        version: Literal["02", "08"] = "02",
    ) -> Response:
        def work() -> Response:
            statement = store.statement(statement_id)
            if format == "mt940":
                return Response(mt940(statement), media_type="text/plain; charset=us-ascii")
            return Response(camt053(statement, version), media_type="application/xml")

        return await guarded(work)

    @router.post("/payment-files")
    async def payment_file(request: fastapi.Request) -> Response:
        try:
            data = await _read_body(request, limits.BANK_REQUEST_BYTES_MAX)
        except BankError as exc:
            return exc.response()

        def work() -> Response:
            try:
                parsed = parse_payment_file(data)
            except PaymentFileInvalid as exc:
                return JSONResponse(
                    {"error": "payment_file_invalid", "group_status": "RJCT",
                     "reason": {"code": exc.reason, "text": exc.text}},
                    status_code=400,
                )  # fmt: skip
            return JSONResponse(store.execute(parsed))

        return await guarded(work)

    @router.get("/payment-files/{message_id}")
    async def payment_file_status(message_id: str) -> Response:
        return await guarded(lambda: store.payment_file_status(message_id))

    @router.get("/faults")
    async def get_faults() -> Response:
        return await guarded(store.faults)

    @router.post("/faults")
    async def set_faults(request: fastapi.Request) -> Response:
        try:
            body = await _json_body(request, Faults)
        except BankError as exc:
            return exc.response()
        changes = {k: v for k, v in body.model_dump().items() if v is not None}
        return await guarded(lambda: store.set_faults(changes))

    return router
