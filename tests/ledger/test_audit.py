"""``paykeep audit verify`` against a tampered database, and the database's own refusals.

Tampering is done as an attacker with database rights would: on PostgreSQL by disabling the
append-only and zero-sum triggers first, on SQLite by dropping its guard triggers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
import sqlalchemy as sa

from paykeep.config import Settings
from paykeep.db import Database
from paykeep.ledger.audit import AuditReport, verify
from paykeep.ledger.model import NewTransfer
from tests.ledger.scenario import Scenario, build
from tests.support import paykeep


def sql(database: Database, *statements: str) -> None:
    with database.engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def unguard(database: Database) -> None:
    """What an attacker with DDL rights does before editing the journal by hand."""
    if database.is_postgres:
        sql(
            database,
            "ALTER TABLE ledger_transfers DISABLE TRIGGER ledger_transfers_no_change",
            "ALTER TABLE ledger_accounts DISABLE TRIGGER ledger_accounts_zero_sum",
            "ALTER TABLE ledger_postings DISABLE TRIGGER ledger_postings_no_change",
        )
    else:
        sql(
            database,
            "DROP TRIGGER IF EXISTS ledger_transfers_no_update",
            "DROP TRIGGER IF EXISTS ledger_transfers_no_delete",
            "DROP TRIGGER IF EXISTS ledger_postings_no_update",
            "DROP TRIGGER IF EXISTS ledger_postings_no_delete",
        )


def cli_verify(settings: Settings) -> tuple[int, dict[str, object]]:
    done = paykeep("audit", "verify", "--json", settings=settings)
    return done.returncode, json.loads(done.stdout)


def kinds(report: AuditReport) -> set[str]:
    return {p.kind for p in report.problems}


def row_problems(report: AuditReport) -> set[tuple[int | None, int | None]]:
    return {(p.seq, p.transfer_id) for p in report.problems if p.transfer_id is not None}


def account_problems(report: AuditReport) -> set[int | None]:
    return {p.account_id for p in report.problems if p.account_id is not None}


@pytest.fixture
def scenario(database: Database) -> Scenario:
    s = build(database)
    batch: Sequence[NewTransfer] = [
        NewTransfer(400 + i, 1 + i % 2, 2 - i % 2, 1 + i, "EUR", 1) for i in range(20)
    ]
    assert {r.result.value for r in s.ledger.create_transfers(batch)} == {"ok"}
    return s


def test_a_clean_ledger_verifies(scenario: Scenario, settings: Settings) -> None:
    report = verify(scenario.ledger.database)
    assert report.ok, report.problems
    head = scenario.ledger.head()
    assert (report.transfers_checked, report.head_seq, report.head_hash) == (
        head.last_seq,
        head.last_seq,
        head.last_hash,
    )
    assert report.accounts_checked == 8
    code, out = cli_verify(settings)
    assert (code, out["ok"], out["problems_total"]) == (0, True, 0)


def test_a_changed_amount_is_reported_at_its_row(scenario: Scenario, settings: Settings) -> None:
    db = scenario.ledger.database
    t = scenario.ledger.transfer(100)
    unguard(db)
    sql(db, "UPDATE ledger_transfers SET amount_minor = amount_minor + 1 WHERE id = 100")
    report = verify(db)
    assert not report.ok
    assert row_problems(report) == {(t.seq, 100)}
    assert "hash_mismatch" in kinds(report)
    # ...and the balances it no longer explains
    assert account_problems(report) == {1, 2}
    code, out = cli_verify(settings)
    assert code == 1 and out["ok"] is False
    problems = out["problems"]
    assert isinstance(problems, list)
    assert {(p["seq"], p["transfer_id"]) for p in problems if p["transfer_id"]} == {(t.seq, 100)}


def test_a_changed_reference_or_metadata_is_reported(scenario: Scenario) -> None:
    db = scenario.ledger.database
    seq = scenario.ledger.transfer(100).seq
    unguard(db)
    sql(db, 'UPDATE ledger_transfers SET metadata = \'{"order":"o-999"}\' WHERE id = 100')
    report = verify(db)
    assert row_problems(report) == {(seq, 100)}
    assert account_problems(report) == set()  # balances are still explained


def test_a_changed_balance_is_reported(scenario: Scenario) -> None:
    db = scenario.ledger.database
    unguard(db)
    sql(db, "UPDATE ledger_accounts SET credits_posted = credits_posted + 7 WHERE id = 3")
    report = verify(db)
    assert account_problems(report) == {3}
    assert "balance_mismatch" in kinds(report)
    assert "zero_sum_broken" in kinds(report)
    assert row_problems(report) == set()


def test_a_balanced_change_of_two_balances_is_reported(scenario: Scenario) -> None:
    # Zero-sum still holds, so only recomputation from the journal can see it.
    db = scenario.ledger.database
    sql(
        db,
        "UPDATE ledger_accounts SET "
        "debits_posted = debits_posted + CASE WHEN id = 1 THEN 7 ELSE 0 END, "
        "credits_posted = credits_posted + CASE WHEN id = 2 THEN 7 ELSE 0 END "
        "WHERE id IN (1, 2)",
    )
    report = verify(db)
    assert account_problems(report) == {1, 2}
    assert "zero_sum_broken" not in kinds(report)


def test_a_deleted_row_is_reported(scenario: Scenario) -> None:
    db = scenario.ledger.database
    t = scenario.ledger.transfer(100)
    unguard(db)
    sql(db, "DELETE FROM ledger_transfers WHERE id = 100")
    report = verify(db)
    assert "journal_gap" in kinds(report)
    gap = [p for p in report.problems if p.kind == "journal_gap"]
    assert [p.seq for p in gap] == [t.seq + 1]
    assert account_problems(report) == {1, 2}


def test_a_deleted_last_row_is_reported(scenario: Scenario) -> None:
    db = scenario.ledger.database
    head = scenario.ledger.head()
    unguard(db)
    sql(db, f"DELETE FROM ledger_transfers WHERE seq = {head.last_seq}")
    report = verify(db)
    assert "head_mismatch" in kinds(report)
    assert not report.ok


def test_a_row_no_engine_could_write_is_a_hash_mismatch(scenario: Scenario) -> None:
    """Values outside what the hash encodes (a negative timeout, an expiry beyond 64 bits) are
    reported at their row like any other change, never a crash of the audit."""
    db = scenario.ledger.database
    t = scenario.ledger.transfer(100)
    unguard(db)
    sql(db, "UPDATE ledger_transfers SET timeout_s = -1 WHERE id = 100")
    report = verify(db)
    assert (t.seq, 100) in row_problems(report) and "hash_mismatch" in kinds(report)


def test_a_tampered_hold_index_is_reported(scenario: Scenario) -> None:
    """Hold 101 has no timeout; giving it one in the sweep's index (or removing 106's) would
    expire or keep a hold behind the journal's back."""
    db = scenario.ledger.database
    sql(db, "DELETE FROM ledger_holds WHERE transfer_id = 101")
    report = verify(db)
    assert ("hold_index_missing", 101) in {(p.kind, p.transfer_id) for p in report.problems}


def test_a_changed_hold_expiry_is_reported(scenario: Scenario) -> None:
    db = scenario.ledger.database
    sql(db, "UPDATE ledger_holds SET expires_at_ns = 1 WHERE transfer_id = 101")
    report = verify(db)
    assert not report.ok, "a hold with no timeout was given one, and audit did not notice"
    assert 101 in {p.transfer_id for p in report.problems}


def test_an_early_expiry_is_reported(scenario: Scenario) -> None:
    """With the index tampered, the ledger's own sweep may void hold 101, whose journal row
    says it never expires. If it does, the journal now holds an expiry that never was due, and
    audit must say so."""
    db = scenario.ledger.database
    sql(db, "UPDATE ledger_holds SET expires_at_ns = 1 WHERE transfer_id = 101")
    scenario.ledger.expire_holds()
    expired_101 = [
        t for t in scenario.ledger.account_transfers(1, limit=1_000).items if t.pending_id == 101
    ]
    if expired_101:
        report = verify(db)
        assert not report.ok, f"hold 101 (no timeout) was expired by {expired_101[0]}"
        assert expired_101[0].id in {p.transfer_id for p in report.problems}


def test_a_changed_head_timestamp_is_reported(scenario: Scenario) -> None:
    db = scenario.ledger.database
    sql(db, "UPDATE ledger_journal_head SET last_timestamp_ns = last_timestamp_ns + 10")
    report = verify(db)
    assert not report.ok, "the head's timestamp no longer matches the last journal row"
    assert "head_mismatch" in kinds(report)


# ---------------------------------------------------------------------------------------------
# The database refuses by itself
# ---------------------------------------------------------------------------------------------


def refused(database: Database, statement: str, *words: str) -> None:
    with pytest.raises(sa.exc.DBAPIError) as raised:
        sql(database, statement)
    message = str(raised.value.orig).lower()
    assert any(w in message for w in words), message


def test_the_database_refuses_tampering(scenario: Scenario) -> None:
    db = scenario.ledger.database
    assert verify(db).ok
    head = scenario.ledger.head()
    refused(db, "UPDATE ledger_transfers SET amount_minor = 1 WHERE id = 100", "append-only")
    refused(db, "DELETE FROM ledger_transfers WHERE id = 100", "append-only")
    refused(db, "UPDATE ledger_accounts SET currency = 'JPY' WHERE id = 1", "immutable")
    refused(db, "UPDATE ledger_accounts SET flags = 0 WHERE id = 3", "immutable")
    # a balanced change that breaks account 7's limit (debits must not exceed credits)
    refused(
        db,
        "UPDATE ledger_accounts SET "
        "debits_posted = debits_posted + CASE WHEN id = 7 THEN 10 ELSE 0 END, "
        "credits_posted = credits_posted + CASE WHEN id = 1 THEN 10 ELSE 0 END "
        "WHERE id IN (1, 7)",
        "check",
        "debits_must_not_exceed_credits",
    )
    refused(db, "UPDATE ledger_accounts SET debits_pending = -1 WHERE id = 5", "check", "negative")
    if db.is_postgres:
        # only PostgreSQL has statement-level triggers for double entry
        refused(
            db,
            "UPDATE ledger_accounts SET credits_posted = credits_posted + 1 WHERE id = 2",
            "double entry",
        )
        refused(
            db,
            "INSERT INTO ledger_accounts (id, currency, code, flags, debits_pending, "
            "debits_posted, credits_pending, credits_posted, timestamp_ns) "
            "VALUES (77, 'EUR', 1, 0, 0, 0, 0, 5, 1)",
            "zero",
        )
    assert verify(db).ok
    assert scenario.ledger.head() == head


def _indexed_scenario(database: Database) -> Scenario:
    """The scenario written by a ledger that indexes every row at once (tail of one row)."""
    from paykeep.clock import FakeClock
    from paykeep.ledger.service import Ledger

    s = build(database)
    ledger = Ledger(database, clock=FakeClock(s.clock.now_ns()), postings_tail_max=1)
    ledger.create_transfers([NewTransfer(900, 1, 2, 1, "EUR", 1)])
    ledger.index_postings()  # SQLite indexes in the background: wait for it
    assert ledger.postings_lag_rows() == 0
    assert ledger.head().last_seq > 0
    return s


def postings_sql(database: Database, *statements: str) -> None:
    """Edit the postings index by hand: the table on PostgreSQL, the index file on SQLite."""
    if database.is_postgres:
        sql(database, *statements)
        return
    import sqlite3

    from paykeep.ledger.postings import sidecar_path

    assert database.sqlite_path is not None
    conn = sqlite3.connect(sidecar_path(database.sqlite_path))
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def test_the_postings_index_is_audited(database: Database) -> None:
    s = _indexed_scenario(database)
    assert verify(database).ok
    # A posting naming an account that is not a party to its row, then a lost posting.
    postings_sql(database, "INSERT INTO ledger_postings (account_id, seq) VALUES (5, 1)")
    report = verify(database)
    assert "posting_mismatch" in kinds(report)
    assert any(p.seq == 1 and p.account_id == 5 for p in report.problems)
    assert not report.postings_index_rebuilt  # a wrong posting is reported, not papered over
    unguard(database)
    postings_sql(database, "DELETE FROM ledger_postings WHERE account_id = 5 AND seq = 1")
    assert verify(database).ok
    postings_sql(database, "DELETE FROM ledger_postings WHERE seq = 2 AND account_id = 1")
    report = verify(database)
    assert "postings_missing" in kinds(report)
    assert any(p.seq == s.ledger.head().last_seq for p in report.problems)
    assert s.ledger.head().last_seq >= 2


# PostgreSQL only: SQLite's index is a derived file beside the database, which audit checks
# and a mismatch rebuilds (tests/ledger/test_postings_sidecar.py).
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_the_database_refuses_to_change_a_posting(database: Database) -> None:
    _indexed_scenario(database)
    refused(database, "DELETE FROM ledger_postings WHERE seq = 1", "append-only")
    refused(database, "UPDATE ledger_postings SET account_id = 3 WHERE seq = 1", "append-only")
