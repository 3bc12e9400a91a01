"""``paykeep audit verify``: re-derive the whole ledger from its journal and compare.

Independent of the engine: it replays every transfer in journal order with its own
arithmetic, recomputes the hash chain, and checks the stored accounts, holds and head against
the result. Every mismatch is collected as a value (reconciliation never stops at the first);
each names the exact journal row or account.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from paykeep.db import Database
from paykeep.ledger.model import GENESIS_HASH, AccountFlags, TransferFlags, row_digest

_PENDING = int(TransferFlags.PENDING)
_POST = int(TransferFlags.POST_PENDING)
_VOID = int(TransferFlags.VOID_PENDING)
_EXPIRY = int(TransferFlags.EXPIRY)
_DMNEC = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CMNED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
#: Problems listed in full; beyond this only counted (a wrecked database must not OOM us).
PROBLEMS_LISTED_MAX = 1_000
_FETCH_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class AuditProblem:
    kind: str
    message: str
    seq: int | None = None
    transfer_id: int | None = None
    account_id: int | None = None


@dataclass(slots=True)
class AuditReport:
    transfers_checked: int = 0
    accounts_checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    problems: list[AuditProblem] = field(default_factory=list)
    problems_total: int = 0
    #: SQLite: the postings index file was missing, unreadable or built from another journal
    #: (derived data: rebuilt from the journal, not a problem; see ``_check_sqlite_postings``).
    postings_index_rebuilt: bool = False

    @property
    def ok(self) -> bool:
        return self.problems_total == 0

    def add(self, problem: AuditProblem) -> None:
        self.problems_total += 1
        if len(self.problems) < PROBLEMS_LISTED_MAX:
            self.problems.append(problem)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "transfers_checked": self.transfers_checked,
            "accounts_checked": self.accounts_checked,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "problems_total": self.problems_total,
            "postings_index_rebuilt": self.postings_index_rebuilt,
            "problems": [asdict(p) for p in self.problems],
        }


def _stream(raw: Any, is_postgres: bool, sql: str) -> Iterator[tuple[Any, ...]]:
    # A server-side cursor on PostgreSQL so a journal of any size streams in bounded memory.
    cur = raw.cursor(name="paykeep_audit") if is_postgres else raw.cursor()
    try:
        cur.execute(sql)
        while True:
            rows = cur.fetchmany(_FETCH_ROWS)
            if not rows:
                return
            yield from rows
    finally:
        cur.close()


def verify(database: Database) -> AuditReport:
    report = AuditReport()
    with database.read() as conn:
        raw = Database.driver_connection(conn)
        cur = raw.cursor()
        cur.execute(
            "SELECT last_seq, last_timestamp_ns, last_hash, indexed_seq FROM ledger_journal_head"
        )
        head_seq, head_ts, head_hash, indexed_seq = cur.fetchone()
        report.head_seq, report.head_hash = head_seq, head_hash
        cur.execute(
            "SELECT id, currency, flags, debits_pending, debits_posted, credits_pending, "
            "credits_posted FROM ledger_accounts"
        )
        stored_accounts = {r[0]: r for r in cur.fetchall()}
        cur.execute("SELECT transfer_id, expires_at_ns FROM ledger_holds")
        stored_holds = {r[0]: r[1] or 0 for r in cur.fetchall()}

        # account id -> [dp, dpo, cp, cpo], recomputed from the journal alone
        balances: dict[int, list[int]] = {aid: [0, 0, 0, 0] for aid in stored_accounts}
        pendings: dict[int, tuple[int, int, int, int]] = {}  # id -> (debit, credit, amount, exp)
        resolved: dict[int, int] = {}  # pending id -> seq of its resolution
        expected_seq = 0
        prev_hash = GENESIS_HASH
        prev_ts = 0
        last_hash = GENESIS_HASH
        rows_indexed = 0  # journal rows at or below the head's indexed_seq
        rows = _stream(
            raw,
            database.is_postgres,
            "SELECT seq, id, debit_account_id, credit_account_id, amount_minor, currency, code, "
            "flags, pending_id, timeout_s, expires_at_ns, reference, metadata, timestamp_ns, hash "
            "FROM ledger_transfers ORDER BY seq",
        )
        for row in rows:
            (seq, tid, debit, credit, amount, currency, code, flags, pending_id, timeout_s,
             expires, reference, metadata, ts, digest) = row  # fmt: skip
            report.transfers_checked += 1
            rows_indexed += seq <= indexed_seq
            expected_seq += 1
            if seq != expected_seq:
                report.add(
                    AuditProblem(
                        "journal_gap",
                        f"journal rows {expected_seq}..{seq - 1} are missing (deleted?)",
                        seq=seq,
                        transfer_id=tid,
                    )
                )
                expected_seq = seq
            try:
                recomputed = row_digest(
                    prev_hash, seq, tid, debit, credit, amount, currency, code, flags,
                    pending_id or 0, timeout_s, expires or 0, reference, metadata, ts,
                )  # fmt: skip
            except ValueError:
                recomputed = ""  # a row no engine could have written: it cannot match
            if recomputed != digest:
                report.add(
                    AuditProblem(
                        "hash_mismatch",
                        f"transfer seq {seq} (id {tid}) does not match its hash: the row was "
                        "changed after it was written",
                        seq=seq,
                        transfer_id=tid,
                    )
                )
            prev_hash = digest
            last_hash = digest
            if ts <= prev_ts:
                report.add(
                    AuditProblem(
                        "timestamp_order",
                        f"transfer seq {seq} (id {tid}) is not later than the row before it",
                        seq=seq,
                        transfer_id=tid,
                    )
                )
            prev_ts = ts
            d = balances.get(debit)
            c = balances.get(credit)
            if d is None or c is None:
                report.add(
                    AuditProblem(
                        "unknown_account",
                        f"transfer seq {seq} (id {tid}) names an account that does not exist",
                        seq=seq,
                        transfer_id=tid,
                    )
                )
                continue
            if stored_accounts[debit][1] != currency or stored_accounts[credit][1] != currency:
                report.add(
                    AuditProblem(
                        "currency_mismatch",
                        f"transfer seq {seq} (id {tid}) moves {currency} between accounts "
                        "of another currency",
                        seq=seq,
                        transfer_id=tid,
                    )
                )
            if amount <= 0:
                report.add(
                    AuditProblem(
                        "amount_not_positive", f"transfer seq {seq} has amount {amount}", seq=seq
                    )
                )
            held = released = posted = 0
            if flags & _PENDING:
                held = amount
                pendings[tid] = (debit, credit, amount, expires or 0)
            elif flags & (_POST | _VOID):
                pending = pendings.get(pending_id)
                if pending is None:
                    report.add(
                        AuditProblem(
                            "dangling_resolution",
                            f"transfer seq {seq} (id {tid}) resolves {pending_id}, which is not "
                            "an earlier pending transfer",
                            seq=seq,
                            transfer_id=tid,
                        )
                    )
                    continue
                if pending_id in resolved:
                    report.add(
                        AuditProblem(
                            "hold_resolved_twice",
                            f"pending transfer {pending_id} resolved again at seq {seq}",
                            seq=seq,
                            transfer_id=tid,
                        )
                    )
                resolved[pending_id] = seq
                if flags & _EXPIRY and not (pending[3] and pending[3] <= ts):
                    report.add(
                        AuditProblem(
                            "early_expiry",
                            f"transfer seq {seq} (id {tid}) expires pending {pending_id}, which "
                            + (
                                f"was not due until {pending[3]}"
                                if pending[3]
                                else "has no timeout"
                            ),
                            seq=seq,
                            transfer_id=tid,
                        )
                    )
                if (pending[0], pending[1]) != (debit, credit) or amount > pending[2]:
                    report.add(
                        AuditProblem(
                            "resolution_mismatch",
                            f"transfer seq {seq} (id {tid}) does not match pending {pending_id}",
                            seq=seq,
                            transfer_id=tid,
                        )
                    )
                released = pending[2]
                posted = amount if flags & _POST else 0
            else:
                posted = amount
            d[0] += held - released
            d[1] += posted
            c[2] += held - released
            c[3] += posted
        if database.is_postgres:
            _check_postings(report, cur, "ledger_postings", indexed_seq, rows_indexed)
    if database.is_sqlite:
        _check_sqlite_postings(report, database)

    if expected_seq != head_seq or last_hash != head_hash or prev_ts != head_ts:
        report.add(
            AuditProblem(
                "head_mismatch",
                f"journal ends at seq {expected_seq} ({last_hash[:12]}…, timestamp {prev_ts}) "
                f"but the head says {head_seq} ({head_hash[:12]}…, timestamp {head_ts})",
                seq=head_seq,
            )
        )
    _check_accounts(report, stored_accounts, balances)
    _check_holds(report, pendings, resolved, stored_holds)
    return report


def _check_accounts(
    report: AuditReport,
    stored_accounts: dict[int, tuple[Any, ...]],
    balances: dict[int, list[int]],
) -> None:
    totals: dict[str, list[int]] = {}
    for aid, (_, currency, flags, dp, dpo, cp, cpo) in sorted(stored_accounts.items()):
        report.accounts_checked += 1
        recomputed = balances[aid]
        if [dp, dpo, cp, cpo] != recomputed:
            report.add(
                AuditProblem(
                    "balance_mismatch",
                    f"account {aid} stores (dp, dpo, cp, cpo) = {(dp, dpo, cp, cpo)} but its "
                    f"journal adds up to {tuple(recomputed)}",
                    account_id=aid,
                )
            )
        if min(dp, dpo, cp, cpo) < 0:
            report.add(AuditProblem("negative_balance", f"account {aid}", account_id=aid))
        if flags & _DMNEC and dp + dpo > cpo:
            report.add(
                AuditProblem(
                    "limit_broken", f"account {aid}: debits exceed credits", account_id=aid
                )
            )
        if flags & _CMNED and cp + cpo > dpo:
            report.add(
                AuditProblem(
                    "limit_broken", f"account {aid}: credits exceed debits", account_id=aid
                )
            )
        t = totals.setdefault(currency, [0, 0, 0, 0])
        for i, value in enumerate((dp, dpo, cp, cpo)):
            t[i] += value
    for currency, (dp, dpo, cp, cpo) in sorted(totals.items()):
        if dp != cp or dpo != cpo:
            report.add(
                AuditProblem(
                    "zero_sum_broken",
                    f"{currency}: debits (pending {dp}, posted {dpo}) differ from credits "
                    f"(pending {cp}, posted {cpo})",
                )
            )


def _check_sqlite_postings(report: AuditReport, database: Database) -> None:
    """The SQLite index file against the journal, in one snapshot of both.

    The file is derived data outside the hash chain. One whose progress row does not match the
    journal (a restored or copied main database), or that SQLite cannot read, or that is
    missing, is rebuilt and reported as such -- never trusted, and not tamper evidence: the
    journal's hash chain is. A posting changed in a file whose progress row matches is reported
    with its exact row, as for PostgreSQL (queries would otherwise answer wrongly)."""
    from paykeep.ledger.postings import postings_index

    index = postings_index(database)
    report.postings_index_rebuilt = index.validate()
    if report.postings_index_rebuilt:
        index.catch_up()
    with index.read() as cur:
        cur.execute("SELECT indexed_seq FROM px.postings_progress")
        (indexed_seq,) = cur.fetchone()
        cur.execute("SELECT COUNT(*) FROM main.ledger_transfers WHERE seq <= ?", (indexed_seq,))
        (rows_indexed,) = cur.fetchone()
        _check_postings(report, cur, "px.ledger_postings", indexed_seq, rows_indexed)


def _check_postings(
    report: AuditReport, cur: Any, table: str, indexed_seq: int, rows_indexed: int
) -> None:
    """``table`` must hold exactly (debit, seq) and (credit, seq) of every journal row up to
    ``indexed_seq``: every posting names its row's debit or credit account, the primary
    key forbids duplicates, and there are two per row -- so the set is exactly right."""
    cur.execute(
        f"SELECT x.account_id, x.seq FROM {table} x "
        "LEFT JOIN ledger_transfers t ON t.seq = x.seq "
        f"WHERE t.seq IS NULL OR x.seq > {int(indexed_seq)} "
        "OR (x.account_id <> t.debit_account_id AND x.account_id <> t.credit_account_id) "
        f"ORDER BY x.seq LIMIT {PROBLEMS_LISTED_MAX}"
    )
    for account_id, seq in cur.fetchall():
        report.add(
            AuditProblem(
                "posting_mismatch",
                f"ledger_postings lists account {account_id} at seq {seq}, which is not a "
                "party to that journal row (or the row is beyond the indexed part)",
                seq=seq,
                account_id=account_id,
            )
        )
    cur.execute(f"SELECT COUNT(*) FROM {table}")
    (count,) = cur.fetchone()
    if count != 2 * rows_indexed:
        report.add(
            AuditProblem(
                "postings_missing" if count < 2 * rows_indexed else "posting_mismatch",
                f"ledger_postings has {count} rows; the {rows_indexed} journal rows up to seq "
                f"{indexed_seq} need {2 * rows_indexed}",
                seq=indexed_seq,
            )
        )


def _check_holds(
    report: AuditReport,
    pendings: dict[int, tuple[int, int, int, int]],
    resolved: dict[int, int],
    stored_holds: dict[int, int],
) -> None:
    open_holds = {pid: p[3] for pid, p in pendings.items() if pid not in resolved}
    for pid in sorted(open_holds.keys() - stored_holds.keys()):
        report.add(
            AuditProblem(
                "hold_index_missing",
                f"open hold {pid} is missing from ledger_holds",
                transfer_id=pid,
            )
        )
    for pid in sorted(open_holds.keys() & stored_holds.keys()):
        if open_holds[pid] != stored_holds[pid]:
            report.add(
                AuditProblem(
                    "hold_index_expiry_mismatch",
                    f"ledger_holds says hold {pid} expires at {stored_holds[pid] or 'never'}, "
                    f"its journal row at {open_holds[pid] or 'never'}",
                    transfer_id=pid,
                )
            )
    for pid in sorted(stored_holds.keys() - open_holds.keys()):
        report.add(
            AuditProblem(
                "hold_index_stale",
                f"ledger_holds lists {pid}, which is not an open hold",
                transfer_id=pid,
            )
        )
