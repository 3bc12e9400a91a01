"""SQLite's per-account index in its own file (``paykeep.ledger.postings``).

Every query must give the answer the journal alone gives, whatever the index's progress; the
indexer must run off the writer's path (a writer never waits for it) and without any caller;
an index file that is missing, unreadable, or built from another journal is rebuilt, never
trusted; the tail stays bounded with no thread running; and dispose leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from paykeep.clock import FakeClock
from paykeep.config import SQLITE_FILE_NAME, Settings
from paykeep.db import Database, open_database
from paykeep.ledger.audit import verify
from paykeep.ledger.model import NewAccount, NewTransfer
from paykeep.ledger.postings import TAIL_HARD_FACTOR, PostingsIndex, postings_index, sidecar_path
from paykeep.ledger.service import Ledger
from tests.ledger.scenario import PENDING, POST, VOID

ACCOUNTS = (1, 2, 3, 4)
THREAD_NAME = "ledger-postings-indexer"


def _open(data_dir: Path) -> Database:
    return open_database(Settings(data_dir=data_dir), migrate=False)


@pytest.fixture
def data_dir(sqlite_template: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    directory.mkdir()
    shutil.copyfile(sqlite_template, directory / SQLITE_FILE_NAME)
    return directory


@pytest.fixture
def db(data_dir: Path) -> Iterator[Database]:
    database = _open(data_dir)
    yield database
    database.dispose()


def _ledger(database: Database, tail: int, clock: FakeClock | None = None) -> Ledger:
    ledger = Ledger(database, clock=clock or FakeClock(), postings_tail_max=tail)
    ledger.create_accounts(
        [NewAccount(a, "EUR", 1) for a in ACCOUNTS if a not in _existing(ledger)]
    )
    return ledger


def _existing(ledger: Ledger) -> set[int]:
    return set(ledger.lookup_accounts(list(ACCOUNTS)))


def _plain(first_id: int, n: int) -> list[NewTransfer]:
    """``n`` plain transfers between the four accounts (debit and credit always differ)."""
    return [
        NewTransfer(
            first_id + i, ACCOUNTS[i % 4], ACCOUNTS[(i + 1 + i // 4 % 3) % 4], 1 + i, "EUR", 1
        )
        for i in range(n)
    ]


def _journal(database: Database) -> list[tuple[int, int, int, int, int, int, int, int]]:
    """(seq, id, debit, credit, amount, flags, pending_id, timestamp_ns), from the main file."""
    with database.read() as conn:
        return [
            tuple(r)  # type: ignore[misc]
            for r in conn.exec_driver_sql(
                "SELECT seq, id, debit_account_id, credit_account_id, amount_minor, flags, "
                "COALESCE(pending_id, 0), timestamp_ns FROM ledger_transfers ORDER BY seq"
            )
        ]


def _expected_page(
    journal: list[tuple[int, ...]], account: int, limit: int, after: int | None
) -> tuple[list[int], bool]:
    mine = [r for r in reversed(journal) if account in (r[2], r[3])]
    if after is not None:
        seqs = [r[0] for r in journal if r[1] == after]
        mine = [r for r in mine if r[0] < seqs[0]]
    return [r[1] for r in mine[:limit]], len(mine) > limit


def _expected_balance(journal: list[tuple[int, ...]], account: int, as_of: int) -> tuple[int, ...]:
    amounts = {r[1]: r[4] for r in journal}
    b = [0, 0, 0, 0]
    for _seq, _tid, debit, credit, amount, flags, pending_id, ts in journal:
        if ts > as_of or account not in (debit, credit):
            continue
        held = amount if flags & PENDING else 0
        released = amounts[pending_id] if flags & (POST | VOID) else 0
        posted = 0 if flags & (PENDING | VOID) else amount
        side = 0 if debit == account else 2
        b[side] += held - released
        b[side + 1] += posted
    return tuple(b)


def _index_rows(database: Database) -> tuple[int, str, list[tuple[int, int]]]:
    assert database.sqlite_path is not None
    conn = sqlite3.connect(sidecar_path(database.sqlite_path))
    try:
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'postings_progress'"
        ).fetchone():
            return 0, "0" * 64, []  # not made yet: nothing indexed
        indexed, digest = conn.execute(
            "SELECT indexed_seq, indexed_hash FROM postings_progress"
        ).fetchone()
        rows = conn.execute("SELECT account_id, seq FROM ledger_postings").fetchall()
    finally:
        conn.close()
    return indexed, digest, rows


def _assert_queries_match_journal(ledger: Ledger) -> None:
    journal = _journal(ledger.database)
    for account in ACCOUNTS:
        for limit in (1, 3, 100):
            seen: list[int] = []
            cursor: int | None = None
            while True:
                page = ledger.account_transfers(account, limit=limit, starting_after=cursor)
                ids, more = _expected_page(journal, account, limit, cursor)
                assert ([t.id for t in page.items], page.has_more) == (ids, more)
                seen += ids
                if not more:
                    break
                cursor = ids[-1]
            assert len(seen) == len(set(seen))
        for ts in {journal[len(journal) // 2][7], journal[-1][7]} if journal else {0}:
            b = ledger.balance_as_of(account, ts)
            got = (b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted)
            assert got == _expected_balance(journal, account, ts)


# ------------------------------------------------------------------------ stateful


class PostingsMachine(RuleBasedStateMachine):
    """Writes, partial indexing steps by hand and queries, in any order, with no thread."""

    def __init__(self) -> None:
        super().__init__()
        self.next_id = 1_000
        self.pending: list[int] = []

    @initialize(tail=st.sampled_from([1, 2, 5]))
    def open(self, tail: int) -> None:
        self.tmp = Path(TEMPLATE_HOLDER["dir"]) / f"m{time.monotonic_ns()}"
        self.tmp.mkdir()
        shutil.copyfile(TEMPLATE_HOLDER["template"], self.tmp / SQLITE_FILE_NAME)
        self.database = _open(self.tmp)
        self.index: PostingsIndex = postings_index(self.database)
        self.index.background = False  # every indexing step here is one the test takes
        self.clock = FakeClock()
        self.ledger = _ledger(self.database, tail, self.clock)

    def teardown(self) -> None:
        database = getattr(self, "database", None)
        if database is not None:
            database.dispose()
            shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(n=st.integers(1, 6), holds=st.integers(0, 2))
    def write(self, n: int, holds: int) -> None:
        batch = _plain(self.next_id, n)
        self.next_id += n
        for _ in range(holds):
            batch.append(NewTransfer(self.next_id, 2, 3, 7, "EUR", 1, flags=PENDING))
            self.pending.append(self.next_id)
            self.next_id += 1
        self.clock.advance(1)
        results = self.ledger.create_transfers(batch)
        assert all(r.ok for r in results), results

    @rule(post=st.booleans())
    def resolve(self, post: bool) -> None:
        if not self.pending:
            return
        pid = self.pending.pop(0)
        self.clock.advance(1)
        (r,) = self.ledger.create_transfers(
            [NewTransfer(self.next_id, flags=POST if post else VOID, pending_id=pid)]
        )
        self.next_id += 1
        assert r.ok, r

    @rule(rows=st.integers(0, 7))
    def index_step(self, rows: int) -> None:
        self.index.step(rows_max=rows)

    @rule(account=st.sampled_from(ACCOUNTS), limit=st.integers(1, 4))
    def page(self, account: int, limit: int) -> None:
        journal = _journal(self.database)
        page = self.ledger.account_transfers(account, limit=limit)
        assert ([t.id for t in page.items], page.has_more) == _expected_page(
            journal, account, limit, None
        )

    @rule(account=st.sampled_from(ACCOUNTS), back=st.integers(0, 5))
    def balance(self, account: int, back: int) -> None:
        journal = _journal(self.database)
        ts = journal[max(0, len(journal) - 1 - back)][7] if journal else 0
        b = self.ledger.balance_as_of(account, ts)
        got = (b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted)
        assert got == _expected_balance(journal, account, ts)

    @invariant()
    def index_is_exactly_the_journal_up_to_its_progress(self) -> None:
        if not hasattr(self, "database"):
            return
        indexed, digest, rows = _index_rows(self.database)
        journal = _journal(self.database)
        expected = sorted(
            p for r in journal if r[0] <= indexed for p in ((r[2], r[0]), (r[3], r[0]))
        )
        assert sorted(rows) == expected  # no row twice, none beyond the progress, none missing
        with self.database.read() as conn:
            found = conn.exec_driver_sql(
                f"SELECT hash FROM ledger_transfers WHERE seq = {int(indexed)}"
            ).scalar()
        assert indexed == 0 or found == digest
        # Beyond the hard bound, a writer indexed on its own (there is no thread).
        assert len(journal) - indexed <= TAIL_HARD_FACTOR * self.ledger.repo.postings_tail_max
        assert not any(t.name == THREAD_NAME for t in threading.enumerate())


TEMPLATE_HOLDER: dict[str, Path] = {}


def test_stateful_interleavings(sqlite_template: Path, tmp_path: Path) -> None:
    TEMPLATE_HOLDER.update(template=sqlite_template, dir=tmp_path)
    run_state_machine_as_test(
        PostingsMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# ------------------------------------------------------------------------ off the writer's path


def test_writers_never_wait_for_the_indexer_and_the_thread_indexes_alone(db: Database) -> None:
    tail = 20
    ledger = _ledger(db, tail)
    ledger.index_postings()  # the index file exists and is current
    assert db.sqlite_path is not None
    # Another indexer (another process) holds the index file's write lock for a while.
    blocker = sqlite3.connect(sidecar_path(db.sqlite_path), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        for k in range(6):  # 60 rows: past the trigger (20), within the hard bound (80)
            started = time.monotonic()
            assert all(r.ok for r in ledger.create_transfers(_plain(10_000 + 10 * k, 10)))
            assert time.monotonic() - started < 2.0  # the lock timeout is 30 s
        assert any(t.name == THREAD_NAME for t in threading.enumerate())  # it started...
        assert ledger.postings_lag_rows() == 60  # ...and waits for the lock, as writers do not
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # No reader, no writer: the thread alone merges until less than a tail is left. (Not
    # always to 0: a merge that waited for the lock read the journal as it was when it began
    # waiting, and a rest below the trigger waits for the next commits, by design.)
    deadline = time.monotonic() + 10
    while ledger.postings_lag_rows() >= tail and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ledger.postings_lag_rows() < tail
    _assert_queries_match_journal(ledger)


def test_transfers_inside_a_callers_transaction_wake_the_indexer_after_it_commits(
    db: Database,
) -> None:
    tail = 20
    ledger = _ledger(db, tail)
    ledger.index_postings()
    for k in range(2):  # 20 rows, the trigger, each batch in the caller's transaction
        with db.write() as conn:
            results = ledger.create_transfers_within(conn, _plain(40_000 + 10 * k, 10))
            assert all(r.ok for r in results)
    # No ledger write or read of its own since: the commits alone woke the thread.
    deadline = time.monotonic() + 10
    while ledger.postings_lag_rows() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ledger.postings_lag_rows() == 0

    def rolled_back() -> None:
        with db.write() as conn:
            ledger.create_transfers_within(conn, _plain(50_000, 30))
            raise RuntimeError("the caller gives up")

    with pytest.raises(RuntimeError):
        rolled_back()
    assert ledger.postings_lag_rows() == 0  # nothing committed, nothing to index
    _assert_queries_match_journal(ledger)


# ------------------------------------------------------------------------ bounds


def test_a_writer_with_no_thread_keeps_the_tail_bounded(db: Database) -> None:
    postings_index(db).background = False
    tail = 4
    ledger = _ledger(db, tail)
    for k in range(40):
        assert all(r.ok for r in ledger.create_transfers(_plain(20_000 + 3 * k, 3)))
        assert ledger.postings_lag_rows() <= TAIL_HARD_FACTOR * tail
    assert not any(t.name == THREAD_NAME for t in threading.enumerate())
    _assert_queries_match_journal(ledger)


def test_a_reader_bounds_a_tail_left_by_writers_that_do_not_index(db: Database) -> None:
    postings_index(db).background = False
    writer = _ledger(db, 32_768)  # writes 100 rows, far below its own trigger
    for k in range(10):
        assert all(r.ok for r in writer.create_transfers(_plain(30_000 + 10 * k, 10)))
    assert writer.postings_lag_rows() == 100
    reader = Ledger(db, clock=FakeClock(), postings_tail_max=5)
    reader.account_transfers(1, limit=3)
    assert reader.postings_lag_rows() <= TAIL_HARD_FACTOR * 5
    _assert_queries_match_journal(reader)


# ------------------------------------------------------------------------ rebuilds


def _written(data_dir: Path, first_id: int, n: int) -> None:
    database = _open(data_dir)
    ledger = _ledger(database, 3)
    assert all(r.ok for r in ledger.create_transfers(_plain(first_id, n)))
    ledger.index_postings()
    database.dispose()


def _check_reopened(data_dir: Path, *, rebuilt: bool) -> None:
    database = _open(data_dir)
    try:
        ledger = Ledger(database, clock=FakeClock(), postings_tail_max=3)
        report = verify(database)
        assert report.ok, report.problems
        assert report.postings_index_rebuilt is rebuilt
        _assert_queries_match_journal(ledger)
        ledger.index_postings()
        indexed, _, rows = _index_rows(database)
        assert len(rows) == 2 * indexed == 2 * ledger.head().last_seq
    finally:
        database.dispose()


def _query_first_then_check_reopened(data_dir: Path) -> None:
    """A query meets the damaged index first (and rebuilds it); the audit then finds it fit."""
    database = _open(data_dir)
    try:
        _assert_queries_match_journal(Ledger(database, clock=FakeClock(), postings_tail_max=3))
    finally:
        database.dispose()
    _check_reopened(data_dir, rebuilt=False)


def test_a_deleted_index_file_is_rebuilt(data_dir: Path) -> None:
    _written(data_dir, 40_000, 30)
    side = Path(sidecar_path(str(data_dir / SQLITE_FILE_NAME)))
    assert side.exists()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{side}{suffix}").unlink(missing_ok=True)
    _check_reopened(data_dir, rebuilt=False)  # a new, empty file is simply behind


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_a_truncated_index_file_is_rebuilt(data_dir: Path, keep: float) -> None:
    _written(data_dir, 40_000, 3_000)
    side = sidecar_path(str(data_dir / SQLITE_FILE_NAME))
    size = os.path.getsize(side)
    assert size > 8 * 4096
    with open(side, "r+b") as f:
        f.truncate(int(size * keep))
    _query_first_then_check_reopened(data_dir)


def test_an_index_ahead_of_a_restored_database_is_rebuilt(data_dir: Path) -> None:
    main = data_dir / SQLITE_FILE_NAME
    _written(data_dir, 40_000, 20)
    backup = data_dir.parent / "backup.sqlite3"
    shutil.copyfile(main, backup)  # the main database alone, as a careless backup would
    _written(data_dir, 50_000, 20)
    shutil.copyfile(backup, main)  # restored: the index now lists rows the journal lacks
    _check_reopened(data_dir, rebuilt=True)  # audit rebuilds it (and says so), queries agree
    _written(data_dir, 50_000, 20)
    shutil.copyfile(backup, main)  # again, and this time a query finds it first
    _query_first_then_check_reopened(data_dir)


def test_an_index_built_from_another_journal_is_rebuilt(data_dir: Path) -> None:
    main = data_dir / SQLITE_FILE_NAME
    _written(data_dir, 40_000, 5)
    backup = data_dir.parent / "backup.sqlite3"
    shutil.copyfile(main, backup)
    _written(data_dir, 50_000, 20)
    shutil.copyfile(backup, main)
    # The restored journal grows past the index's progress with other rows: same seqs,
    # different hashes. Trusting the index would list transfers of other accounts.
    database = _open(data_dir)
    postings_index(database).background = False
    ledger = _ledger(database, 32_768)
    reversed_batch = [NewTransfer(60_000 + i, 4, 3, 5, "EUR", 1) for i in range(30)]
    assert all(r.ok for r in ledger.create_transfers(reversed_batch))
    _assert_queries_match_journal(ledger)
    database.dispose()
    _check_reopened(data_dir, rebuilt=False)  # the queries above already rebuilt it


# ------------------------------------------------------------------------ disposal


def _sidecar_fds(path: str) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(path):
            found.append(target)
    return found


def test_dispose_stops_the_thread_and_closes_every_connection(data_dir: Path) -> None:
    database = _open(data_dir)
    ledger = _ledger(database, 5)
    for k in range(5):
        ledger.create_transfers(_plain(70_000 + 10 * k, 10))
    ledger.account_transfers(1)
    assert any(t.name == THREAD_NAME for t in threading.enumerate())
    assert database.sqlite_path is not None
    side = sidecar_path(database.sqlite_path)
    assert _sidecar_fds(side)
    database.dispose()
    assert not any(t.name == THREAD_NAME for t in threading.enumerate())
    assert _sidecar_fds(side) == []
    # The database object stays usable after dispose, as before: a new indexer on demand.
    ledger.create_transfers(_plain(80_000, 30))
    _assert_queries_match_journal(ledger)
    database.dispose()
    assert not any(t.name == THREAD_NAME for t in threading.enumerate())
    assert _sidecar_fds(side) == []


def test_indexers_of_several_processes_merge_each_row_once(data_dir: Path) -> None:
    # Two Database objects on one file stand for two processes (API and worker), each with
    # its own indexer connection; they race in small steps.
    first, second = _open(data_dir), _open(data_dir)
    try:
        for database in (first, second):
            postings_index(database).background = False
        ledger = _ledger(first, 32_768)
        for k in range(4):
            assert all(r.ok for r in ledger.create_transfers(_plain(90_000 + 500 * k, 500)))
        # Taking turns: each sees the other's progress and merges only what follows it.
        for turn in range(20):
            result = postings_index((first, second)[turn % 2]).step(rows_max=37)
            assert (result.indexed_seq, result.rows_merged) == (37 * (turn + 1), 37)
        # Then racing, in three threads.
        errors: list[BaseException] = []

        def index(database: Database) -> None:
            try:
                while postings_index(database).step(rows_max=37).lag_rows:
                    pass
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=index, args=(d,)) for d in (first, second, first)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        indexed, _, rows = _index_rows(first)
        journal = _journal(first)
        assert indexed == len(journal) == 2_000
        assert sorted(rows) == sorted(p for r in journal for p in ((r[2], r[0]), (r[3], r[0])))
        _assert_queries_match_journal(Ledger(second, clock=FakeClock(), postings_tail_max=3))
    finally:
        first.dispose()
        second.dispose()


def test_a_process_drops_its_connections_to_a_file_another_process_replaced(
    data_dir: Path,
) -> None:
    # "first" has the index file open (a reader and its indexer); "second" finds the file
    # unreadable, unlinks it and starts a new one. "first" must read and index the new file,
    # not go on with the unlinked one as a second, private index.
    first, second = _open(data_dir), _open(data_dir)
    try:
        for database in (first, second):
            postings_index(database).background = False
        ledger = _ledger(first, 32_768)
        assert all(r.ok for r in ledger.create_transfers(_plain(95_000, 50)))
        ledger.index_postings()
        assert ledger.postings_lag_rows() == 0  # first holds connections to the old file
        assert first.sqlite_path is not None
        side = sidecar_path(first.sqlite_path)
        assert _sidecar_fds(side)

        postings_index(second).reset_file()
        other = Ledger(second, clock=FakeClock(), postings_tail_max=32_768)
        head = other.postings_lag_rows()  # the new file, indexed from nothing
        assert head >= 50

        assert ledger.postings_lag_rows() == head  # first now reads the new file...
        ledger.index_postings()  # ...and indexes it, which second sees
        assert other.postings_lag_rows() == 0
        assert _sidecar_fds(side) and not [t for t in _sidecar_fds(side) if "deleted" in t]
        _assert_queries_match_journal(ledger)
        _assert_queries_match_journal(other)
    finally:
        first.dispose()
        second.dispose()
