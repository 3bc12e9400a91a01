"""Persistence of statements, expectations, matches and breaks (plain parameterised SQL that
both SQLite and PostgreSQL run). Transactions are opened by the service, never here.

A line's counterparty name and IBAN and its remittance text are written sealed (migration
0011): :meth:`StatementRepository.insert_entries` seals them with the cipher it is handed."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from paykeep.gateway.statements.model import (
    COUNTERPARTY_IBAN_PURPOSE,
    COUNTERPARTY_NAME_PURPOSE,
    REMITTANCE_PURPOSE,
    UNRESOLVED_STATES,
    BreakState,
    Entry,
    ExpectedMovement,
    Leg,
    LineBreak,
    ParsedStatement,
    StoredExpectation,
    entry_row_id,
)
from paykeep.security.fields import FieldCipher

#: PostgreSQL advisory lock that serialises statement imports (SQLite's BEGIN IMMEDIATE
#: already does).
_PG_IMPORT_LOCK_KEY = 0x53544D54  # "STMT"


@dataclass(frozen=True, slots=True)
class BankAccount:
    iban: str
    currency: str
    ledger_account_name: str


@dataclass(frozen=True, slots=True)
class StoredStatement:
    row_id: int
    account: str
    statement_id: str
    currency: str
    opening_booked_minor: int | None
    closing_booked_minor: int | None
    entry_count: int
    fingerprint: str
    state: str


@dataclass(frozen=True, slots=True)
class StoredMatch:
    line: int
    expectation_id: int
    transfer_ids: tuple[int, ...]
    ledger_result: str | None
    amount_minor: int
    currency: str
    legs: tuple[Leg, ...]


@dataclass(frozen=True, slots=True)
class StoredBreak:
    id: int
    statement_row_id: int
    account: str
    statement_id: str
    line: int
    reason: str
    detail: str
    expectation_id: int | None
    amount_minor: int
    currency: str
    reference: str | None
    #: ``explained``, ``matched``, ``returned`` or ``bounced`` once resolved; ``None`` while
    #: the break waits for a person (``open``, ``return_failed``).
    resolution: str | None = None
    resolved_by: str | None = None
    resolution_note: str | None = None
    state: BreakState = BreakState.OPEN
    #: Return payouts made for this break, the latest one, and why the latest failed.
    return_attempts: int = 0
    return_payout_id: int | None = None
    return_failure: str | None = None

    @property
    def resolved(self) -> bool:
        return self.state not in UNRESOLVED_STATES


@dataclass(frozen=True, slots=True)
class StoredLine:
    """What returning a line to its sender reads of it: its money, its references in clear,
    and the counterparty still sealed (the service opens it)."""

    amount_minor: int
    currency: str
    status: str
    bank_reference: str | None
    end_to_end_id: str | None
    reference: str | None
    counterparty_name_enc: bytes | None
    counterparty_iban_enc: bytes | None


@dataclass(frozen=True, slots=True)
class BounceCandidate:
    """An open break on an incoming line that carries the reference of one of our own
    outgoing payments (a debit expectation): most likely that payment coming back.
    ``return_reason`` is the line's (camt ``RtrInf/Rsn``), when the statement said why."""

    break_: StoredBreak
    reference: str
    ledger_account_name: str
    return_reason: str | None = None


_BREAK_COLUMNS = (
    "b.id, b.statement_row_id, s.account, s.statement_id, b.line, b.reason, b.detail, "
    "b.expectation_id, b.amount_minor, b.currency, b.reference, b.resolution, b.resolved_by, "
    "b.resolution_note, b.state, b.return_attempts, b.return_payout_id, b.return_failure"
)
_BREAK_FIELDS = 18


def _stored_break(row: Sequence[Any]) -> StoredBreak:
    fields = list(row[:_BREAK_FIELDS])
    fields[14] = BreakState(fields[14])
    fields[15] = int(fields[15])
    return StoredBreak(*fields)


def legs_to_json(legs: Sequence[Leg]) -> str:
    return json.dumps(
        [[leg.debit_account_name, leg.credit_account_name, leg.code] for leg in legs],
        separators=(",", ":"),
    )


def legs_from_json(text: str) -> tuple[Leg, ...]:
    return tuple(Leg(str(d), str(c), int(code)) for d, c, code in json.loads(text))


class StatementRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def _all(self, sql: str, **params: Any) -> list[Any]:
        return list(self.conn.execute(sa.text(sql), params).fetchall())

    def lock_imports(self) -> None:
        if self.conn.dialect.name == "postgresql":
            self.conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_PG_IMPORT_LOCK_KEY})"))

    # ------------------------------------------------------------------ bank accounts

    def bank_account(self, iban: str) -> BankAccount | None:
        rows = self._all(
            "SELECT iban, currency, ledger_account_name FROM stmt_bank_accounts WHERE iban = :i",
            i=iban,
        )
        return BankAccount(*rows[0]) if rows else None

    def bank_accounts(self) -> list[BankAccount]:
        rows = self._all(
            "SELECT iban, currency, ledger_account_name FROM stmt_bank_accounts ORDER BY iban"
        )
        return [BankAccount(*r) for r in rows]

    def insert_bank_account(self, account: BankAccount, now_ns: int) -> None:
        self.conn.execute(
            sa.text(
                "INSERT INTO stmt_bank_accounts (iban, currency, ledger_account_name, "
                "created_at_ns) VALUES (:i, :c, :l, :t)"
            ),
            {"i": account.iban, "c": account.currency, "l": account.ledger_account_name,
             "t": now_ns},
        )  # fmt: skip

    # ------------------------------------------------------------------ expectations

    def posted_references(self, iban: str, references: list[str]) -> set[str]:
        """Of ``references`` (expectations on ``iban``), those whose statement line matched and
        whose ledger legs were posted."""
        found: set[str] = set()
        for start in range(0, len(references), 500):
            chunk = references[start : start + 500]
            marks = ", ".join(f":r{i}" for i in range(len(chunk)))
            params: dict[str, Any] = {f"r{i}": r for i, r in enumerate(chunk)}
            params["iban"] = iban
            rows = self.conn.execute(
                sa.text(
                    "SELECT x.reference FROM stmt_expectations x "
                    "JOIN stmt_matches m ON m.expectation_id = x.id "
                    f"WHERE x.iban = :iban AND x.reference IN ({marks}) "
                    "AND m.ledger_result = 'ok'"
                ),
                params,
            )
            found.update(str(r[0]) for r in rows)
        return found

    def expectation_by_reference(self, iban: str, reference: str) -> StoredExpectation | None:
        found = self.expectations_for(iban, [reference])
        return found.get(reference)

    def expectations_for(
        self, iban: str, references: Iterable[str]
    ) -> dict[str, StoredExpectation]:
        wanted = sorted(set(references))
        out: dict[str, StoredExpectation] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join(f":r{i}" for i in range(len(chunk)))
            params: dict[str, Any] = {f"r{i}": r for i, r in enumerate(chunk)}
            params["iban"] = iban
            rows = self._all(
                "SELECT id, iban, reference, direction, amount_minor, currency, standing, legs, "
                "consumed_statement_row_id FROM stmt_expectations "
                f"WHERE iban = :iban AND reference IN ({marks})",
                **params,
            )
            for r in rows:
                movement = ExpectedMovement(
                    reference=r[2],
                    iban=r[1],
                    direction=r[3],
                    amount_minor=r[4],
                    currency=r[5],
                    standing=bool(r[6]),
                    legs=legs_from_json(r[7]),
                )
                out[r[2]] = StoredExpectation(r[0], movement, r[8] is not None)
        return out

    def insert_expectation(self, m: ExpectedMovement, now_ns: int) -> int:
        row = self.conn.execute(
            sa.text(
                "INSERT INTO stmt_expectations (iban, reference, direction, amount_minor, "
                "currency, standing, legs, created_at_ns) VALUES (:i, :r, :d, :a, :c, :s, :l, :t) "
                "RETURNING id"
            ),
            {"i": m.iban, "r": m.reference, "d": m.direction, "a": m.amount_minor,
             "c": m.currency, "s": m.standing, "l": legs_to_json(m.legs), "t": now_ns},
        ).fetchone()  # fmt: skip
        assert row is not None
        return int(row[0])

    def consume(self, expectation_ids: Iterable[int], row_id: int, lines: dict[int, int]) -> None:
        for expectation_id in sorted(expectation_ids):
            result = self.conn.execute(
                sa.text(
                    "UPDATE stmt_expectations SET consumed_statement_row_id = :s, "
                    "consumed_line = :l WHERE id = :i AND consumed_statement_row_id IS NULL"
                ),
                {"s": row_id, "l": lines[expectation_id], "i": expectation_id},
            )
            # Imports are serialised, so nothing else can have consumed it since we read it.
            assert result.rowcount == 1, f"expectation {expectation_id} consumed concurrently"

    # ------------------------------------------------------------------ statements

    def statement(self, account: str, kind: str, statement_id: str) -> StoredStatement | None:
        rows = self._all(
            "SELECT id, account, statement_id, currency, opening_booked_minor, "
            "closing_booked_minor, entry_count, fingerprint, state FROM stmt_statements "
            "WHERE account = :a AND kind = :k AND statement_id = :s",
            a=account,
            k=kind,
            s=statement_id,
        )
        return StoredStatement(*rows[0]) if rows else None

    def statement_by_row(self, row_id: int) -> StoredStatement:
        rows = self._all(
            "SELECT id, account, statement_id, currency, opening_booked_minor, "
            "closing_booked_minor, entry_count, fingerprint, state FROM stmt_statements "
            "WHERE id = :i",
            i=row_id,
        )
        return StoredStatement(*rows[0])

    def imported_statement_ids(self, statement_ids: Sequence[str]) -> set[str]:
        """Which of ``statement_ids`` (statements' own ids, any account or kind) are
        imported already."""
        if not statement_ids:
            return set()
        query = sa.text(
            "SELECT statement_id FROM stmt_statements WHERE statement_id IN :ids"
        ).bindparams(sa.bindparam("ids", expanding=True))
        return {str(r[0]) for r in self.conn.execute(query, {"ids": list(statement_ids)})}

    def posting_statements(self) -> list[int]:
        rows = self._all("SELECT id FROM stmt_statements WHERE state = 'posting' ORDER BY id")
        return [int(r[0]) for r in rows]

    def insert_statement(
        self,
        s: ParsedStatement,
        *,
        fingerprint: str,
        registered: bool,
        posting: bool,
        now_ns: int,
    ) -> int:
        """``fingerprint`` is the keyed one (``StatementService``), never ``s.fingerprint()``."""
        row = self.conn.execute(
            sa.text(
                "INSERT INTO stmt_statements (account, kind, statement_id, sequence, format, "
                "currency, created_at, opening_booked_minor, closing_booked_minor, balance_basis, "
                "entry_count, fingerprint, registered, imported_at_ns, state) VALUES "
                "(:a, :k, :s, :q, :f, :c, :ca, :o, :cl, :b, :n, :fp, :rg, :t, :st) RETURNING id"
            ),
            {
                "a": s.account, "k": s.kind, "s": s.statement_id, "q": s.sequence,
                "f": s.format,
                "c": s.currency,
                "ca": None if s.created_at is None else s.created_at.isoformat(),
                "o": s.opening_booked_minor, "cl": s.closing_booked_minor,
                "b": None if s.balance_basis is None else s.balance_basis.value,
                "n": len(s.entries), "fp": fingerprint, "rg": registered, "t": now_ns,
                "st": "posting" if posting else "posted",
            },
        ).fetchone()  # fmt: skip
        assert row is not None
        return int(row[0])

    def insert_entries(self, row_id: int, entries: Sequence[Entry], cipher: FieldCipher) -> None:
        if not entries:
            return

        def seal(value: str | None, purpose: str, line: int) -> bytes | None:
            if value is None:
                return None
            return cipher.seal(value, purpose=purpose, row_id=entry_row_id(row_id, line))

        self.conn.execute(
            sa.text(
                "INSERT INTO stmt_entries (statement_row_id, line, amount_minor, currency, "
                "status, booking_date, value_date, bank_reference, end_to_end_id, reference, "
                "remittance_info_enc, counterparty_name_enc, counterparty_iban_enc, "
                "counterparty_iban_last4, uetr, return_reason) VALUES "
                "(:s, :l, :a, :c, :st, :bd, :vd, :br, :e2e, :r, :ri, :cn, :ci, :c4, :u, :rr)"
            ),
            [
                {
                    "s": row_id, "l": line, "a": e.amount_minor, "c": e.currency,
                    "st": e.status.value,
                    "bd": None if e.booking_date is None else e.booking_date.isoformat(),
                    "vd": None if e.value_date is None else e.value_date.isoformat(),
                    "br": e.bank_reference, "e2e": e.end_to_end_id, "r": e.reference,
                    "ri": seal(e.remittance_info, REMITTANCE_PURPOSE, line),
                    "cn": seal(e.counterparty_name, COUNTERPARTY_NAME_PURPOSE, line),
                    "ci": seal(e.counterparty_iban, COUNTERPARTY_IBAN_PURPOSE, line),
                    "c4": e.counterparty_iban[-4:] if e.counterparty_iban else None,
                    "u": e.uetr, "rr": e.return_reason,
                }
                for line, e in enumerate(entries, 1)
            ],
        )  # fmt: skip

    def sealed_remittance(self, row_id: int, line: int) -> bytes | None:
        rows = self._all(
            "SELECT remittance_info_enc FROM stmt_entries "
            "WHERE statement_row_id = :s AND line = :l",
            s=row_id,
            l=line,
        )
        return None if not rows or rows[0][0] is None else bytes(rows[0][0])

    def line(self, row_id: int, line: int) -> StoredLine | None:
        rows = self._all(
            "SELECT amount_minor, currency, status, bank_reference, end_to_end_id, reference, "
            "counterparty_name_enc, counterparty_iban_enc FROM stmt_entries "
            "WHERE statement_row_id = :s AND line = :l",
            s=row_id,
            l=line,
        )
        if not rows:
            return None
        r = rows[0]
        return StoredLine(
            int(r[0]), r[1], r[2], r[3], r[4], r[5],
            None if r[6] is None else bytes(r[6]), None if r[7] is None else bytes(r[7]),
        )  # fmt: skip

    def line_matched(self, row_id: int, line: int) -> bool:
        """Whether the line has a match row: its money entered the ledger through its legs."""
        rows = self._all(
            "SELECT 1 FROM stmt_matches WHERE statement_row_id = :s AND line = :l", s=row_id, l=line
        )
        return bool(rows)

    def insert_matches(self, row_id: int, rows: Sequence[tuple[int, int, Sequence[int]]]) -> None:
        if not rows:
            return
        self.conn.execute(
            sa.text(
                "INSERT INTO stmt_matches (statement_row_id, line, expectation_id, transfer_ids) "
                "VALUES (:s, :l, :e, :t)"
            ),
            [
                {"s": row_id, "l": line, "e": expectation_id, "t": json.dumps(list(ids))}
                for line, expectation_id, ids in rows
            ],
        )

    def insert_breaks(
        self, row_id: int, statement: ParsedStatement, breaks: Sequence[LineBreak], now_ns: int
    ) -> None:
        if not breaks:
            return
        self.conn.execute(
            sa.text(
                "INSERT INTO stmt_breaks (statement_row_id, line, reason, detail, expectation_id, "
                "amount_minor, currency, reference, created_at_ns) VALUES "
                "(:s, :l, :r, :d, :e, :a, :c, :ref, :t)"
            ),
            [_break_row(row_id, statement, b, now_ns) for b in breaks],
        )  # fmt: skip

    def insert_posted_match(
        self, row_id: int, line: int, expectation_id: int, transfer_ids: Sequence[int]
    ) -> None:
        """A line matched and posted in one go, by whoever posted its ledger transfers in the
        same transaction (a payout the payee's bank sent back): ``ledger_result`` is ``ok``
        from the start, so an import's posting step never looks at it."""
        self.conn.execute(
            sa.text(
                "INSERT INTO stmt_matches (statement_row_id, line, expectation_id, transfer_ids, "
                "ledger_result) VALUES (:s, :l, :e, :t, 'ok')"
            ),
            {"s": row_id, "l": line, "e": expectation_id, "t": json.dumps(list(transfer_ids))},
        )

    def matches(self, row_id: int) -> list[StoredMatch]:
        rows = self._all(
            "SELECT m.line, m.expectation_id, m.transfer_ids, m.ledger_result, e.amount_minor, "
            "e.currency, x.legs FROM stmt_matches m "
            "JOIN stmt_entries e ON e.statement_row_id = m.statement_row_id AND e.line = m.line "
            "JOIN stmt_expectations x ON x.id = m.expectation_id "
            "WHERE m.statement_row_id = :s ORDER BY m.line",
            s=row_id,
        )
        return [
            StoredMatch(r[0], r[1], tuple(json.loads(r[2])), r[3], r[4], r[5], legs_from_json(r[6]))
            for r in rows
        ]

    def set_ledger_results(self, row_id: int, results: dict[int, str]) -> None:
        for line, result in sorted(results.items()):
            self.conn.execute(
                sa.text(
                    "UPDATE stmt_matches SET ledger_result = :r "
                    "WHERE statement_row_id = :s AND line = :l AND ledger_result IS NULL"
                ),
                {"r": result, "s": row_id, "l": line},
            )

    def insert_ledger_breaks(
        self, row_id: int, rejected: Sequence[tuple[StoredMatch, str]], now_ns: int
    ) -> None:
        for match, code in rejected:
            self.conn.execute(
                sa.text(
                    "INSERT INTO stmt_breaks (statement_row_id, line, reason, detail, "
                    "expectation_id, amount_minor, currency, reference, created_at_ns) "
                    "VALUES (:s, :l, 'ledger_rejected', :d, :e, :a, :c, NULL, :t)"
                ),
                {"s": row_id, "l": match.line, "d": f"the ledger refused the legs: {code}",
                 "e": match.expectation_id, "a": match.amount_minor, "c": match.currency,
                 "t": now_ns},
            )  # fmt: skip

    def mark_posted(self, row_id: int) -> None:
        self.conn.execute(
            sa.text("UPDATE stmt_statements SET state = 'posted' WHERE id = :i"), {"i": row_id}
        )

    def count_matched(self, row_id: int) -> int:
        rows = self._all(
            "SELECT COUNT(*) FROM stmt_matches WHERE statement_row_id = :s "
            "AND ledger_result = 'ok'",
            s=row_id,
        )
        return int(rows[0][0])

    def breaks(
        self, *, row_id: int | None = None, open_only: bool = True, limit: int = 1000
    ) -> list[StoredBreak]:
        where = ["1 = 1"]
        params: dict[str, Any] = {"lim": limit}
        if row_id is not None:
            where.append("b.statement_row_id = :s")
            params["s"] = row_id
        if open_only:
            where.append("b.resolved_at_ns IS NULL")
        rows = self._all(
            f"SELECT {_BREAK_COLUMNS} "
            "FROM stmt_breaks b JOIN stmt_statements s ON s.id = b.statement_row_id "
            f"WHERE {' AND '.join(where)} ORDER BY b.id LIMIT :lim",
            **params,
        )
        return [_stored_break(r) for r in rows]

    def break_by_id(self, break_id: int, *, for_update: bool = False) -> StoredBreak | None:
        """The break; with ``for_update`` its row is locked until the transaction ends
        (PostgreSQL; a SQLite writer holds the database lock already), so whoever changes a
        break first reads the state it changes."""
        lock = " FOR UPDATE OF b" if for_update and self.conn.dialect.name == "postgresql" else ""
        rows = self._all(
            f"SELECT {_BREAK_COLUMNS} FROM stmt_breaks b "
            f"JOIN stmt_statements s ON s.id = b.statement_row_id WHERE b.id = :i{lock}",
            i=break_id,
        )
        return _stored_break(rows[0]) if rows else None

    def break_by_return_payout(
        self, payout_id: int, *, for_update: bool = False
    ) -> StoredBreak | None:
        """The break whose latest return payout is ``payout_id``."""
        lock = " FOR UPDATE OF b" if for_update and self.conn.dialect.name == "postgresql" else ""
        rows = self._all(
            f"SELECT {_BREAK_COLUMNS} FROM stmt_breaks b "
            "JOIN stmt_statements s ON s.id = b.statement_row_id "
            f"WHERE b.return_payout_id = :p{lock}",
            p=payout_id,
        )
        return _stored_break(rows[0]) if rows else None

    def set_break_state(
        self,
        break_id: int,
        *,
        from_state: BreakState,
        to_state: BreakState,
        now_ns: int,
        actor: str,
        note: str | None,
        **values: Any,
    ) -> bool:
        """Move a break from ``from_state`` to ``to_state`` (only if it is still there: the
        caller read it locked, so ``False`` is a programmer's error there, a lost race
        elsewhere). A resolution stamps when, by whom and why; a state that waits for a person
        again (``return_failed``) clears them. ``values`` sets the return columns."""
        resolved = to_state not in UNRESOLVED_STATES
        params: dict[str, Any] = {
            "i": break_id,
            "f": from_state.value,
            "s": to_state.value,
            "t": now_ns if resolved else None,
            "r": to_state.value if resolved else None,
            "a": actor if resolved else None,
            "n": note if resolved else None,
        }
        extra = ""
        for column in sorted(values):
            assert column in ("return_attempts", "return_payout_id", "return_failure"), column
            extra += f", {column} = :v_{column}"
            params[f"v_{column}"] = values[column]
        result = self.conn.execute(
            sa.text(
                "UPDATE stmt_breaks SET state = :s, resolved_at_ns = :t, resolution = :r, "
                f"resolved_by = :a, resolution_note = :n{extra} WHERE id = :i AND state = :f"
            ),
            params,
        )
        return bool(result.rowcount == 1)

    def add_break_event(
        self,
        break_id: int,
        *,
        at_ns: int,
        from_state: BreakState | None,
        to_state: BreakState,
        actor: str,
        detail: str,
    ) -> None:
        self.conn.execute(
            sa.text(
                "INSERT INTO stmt_break_events (break_id, at_ns, from_state, to_state, actor, "
                "detail) VALUES (:b, :t, :f, :s, :a, :d)"
            ),
            {"b": break_id, "t": at_ns, "f": None if from_state is None else from_state.value,
             "s": to_state.value, "a": actor, "d": detail},
        )  # fmt: skip

    def break_events(self, break_id: int) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT at_ns, from_state, to_state, actor, detail FROM stmt_break_events "
            "WHERE break_id = :b ORDER BY id",
            b=break_id,
        )
        return [
            {"at_ns": r[0], "from_state": r[1], "to_state": r[2], "actor": r[3], "detail": r[4]}
            for r in rows
        ]

    def bounce_candidates(self, limit: int) -> list[BounceCandidate]:
        """Open breaks on incoming booked lines of registered accounts whose reference named
        a debit expectation (one of our payouts), oldest first."""
        rows = self._all(
            f"SELECT {_BREAK_COLUMNS}, x.reference, a.ledger_account_name, e.return_reason "
            "FROM stmt_breaks b "
            "JOIN stmt_statements s ON s.id = b.statement_row_id "
            "JOIN stmt_expectations x ON x.id = b.expectation_id "
            "JOIN stmt_bank_accounts a ON a.iban = x.iban "
            "LEFT JOIN stmt_entries e ON e.statement_row_id = b.statement_row_id "
            "AND e.line = b.line "
            "WHERE b.state = 'open' AND b.amount_minor > 0 AND b.line > 0 "
            "AND x.direction = 'debit' ORDER BY b.id LIMIT :lim",
            lim=limit,
        )
        return [
            BounceCandidate(
                _stored_break(r),
                reference=str(r[_BREAK_FIELDS]),
                ledger_account_name=str(r[_BREAK_FIELDS + 1]),
                return_reason=r[_BREAK_FIELDS + 2],
            )
            for r in rows
        ]

    def expectation_direction(self, expectation_id: int) -> str | None:
        rows = self._all("SELECT direction FROM stmt_expectations WHERE id = :i", i=expectation_id)
        return str(rows[0][0]) if rows else None

    def set_posting(self, row_id: int) -> None:
        self.conn.execute(
            sa.text("UPDATE stmt_statements SET state = 'posting' WHERE id = :i"), {"i": row_id}
        )

    def count_rows(self) -> dict[str, int]:
        """Rows per table (tests use it to prove a refused import changed nothing)."""
        out = {}
        for table in (
            "stmt_statements", "stmt_entries", "stmt_matches", "stmt_breaks",
            "stmt_expectations", "stmt_break_events",
        ):  # fmt: skip
            out[table] = int(self._all(f"SELECT COUNT(*) FROM {table}")[0][0])
        consumed = self._all(
            "SELECT COUNT(*) FROM stmt_expectations WHERE consumed_statement_row_id IS NOT NULL"
        )
        out["consumed_expectations"] = int(consumed[0][0])
        return out


def _break_row(
    row_id: int, statement: ParsedStatement, b: LineBreak, now_ns: int
) -> dict[str, Any]:
    if b.entry_index < 0:  # the statement as a whole: line 0, the amount is the gap
        amount, currency, reference = statement.imbalance_minor or 0, statement.currency, None
    else:
        entry = statement.entries[b.entry_index]
        amount, currency, reference = entry.amount_minor, entry.currency, _reference_of(entry)
    return {
        "s": row_id, "l": b.entry_index + 1, "r": b.reason.value, "d": b.detail[:2000],
        "e": b.expectation_id, "a": amount, "c": currency, "ref": reference, "t": now_ns,
    }  # fmt: skip


def _reference_of(entry: Entry) -> str | None:
    return entry.end_to_end_id or entry.reference
