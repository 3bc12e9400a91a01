"""SQLite: the per-account index of the journal, in a file of its own beside the database.

SQLite has one write lock per database file. Kept in the main file, the index had to be merged
by the writer inside its own transaction (~14 % of its time and every p99 batch). Here it lives
in ``<main>.postings`` (WAL, ``synchronous=NORMAL``), so an indexer merges it under that file's
write lock while writers keep committing to the main file, on the other core: the merge is one
``INSERT ... SELECT ... ORDER BY`` that SQLite runs in C with the GIL released.

The index is derived data. Its ``postings_progress`` row says how far it goes (``indexed_seq``)
and which journal it was built from (the journal's ``hash`` at ``indexed_seq``, which the hash
chain makes a digest of every row up to there). An index whose progress row does not match the
journal -- ahead of it, or built from another journal (a main database restored from a backup,
a copied data directory) -- is emptied and rebuilt, never trusted; so is a file SQLite cannot
read. Postings and progress change in one transaction of the index file, so an index is always
consistent after a crash, and several processes may index at once: the second one finds the
progress moved and merges only what is left.

Connections here open the main database read-only (``mode=ro``) and attach the index file as
``px``: ``BEGIN IMMEDIATE`` then takes the index file's write lock and only a read snapshot of
the main file, so an indexer never waits for a writer nor a writer for it. The engine's pooled
connections (the writers') never attach it.

Bounds that do not depend on the background thread: once the unindexed tail is longer than
``4 x tail_max`` rows, whoever sees it (a writer after its commit, a reader before reading) runs
the indexing itself, outside any main-database transaction.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from paykeep.ledger.model import GENESIS_HASH
from paykeep.limits import DB_LOCK_TIMEOUT_S, POSTINGS_TAIL_MAX

log = logging.getLogger("paykeep.ledger.postings")

#: The unindexed tail may grow to this many times the trigger before writers and readers
#: index it themselves (a process with no running indexer: a CLI one-shot, a stopped thread).
TAIL_HARD_FACTOR: Final = 4
#: Journal rows one indexing transaction merges at most (a rebuild of a long journal is many
#: such transactions, each bounded in time and memory).
STEP_ROWS_MAX: Final = TAIL_HARD_FACTOR * POSTINGS_TAIL_MAX
#: Reader connections kept open between queries.
READERS_IDLE_MAX: Final = 8
#: SQLite result codes of a file that is not (or no longer) a readable database.
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
SIDECAR_SUFFIX: Final = ".postings"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS px.ledger_postings (account_id INTEGER NOT NULL, "
    "seq INTEGER NOT NULL, PRIMARY KEY (account_id, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS px.postings_progress (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "indexed_seq INTEGER NOT NULL, indexed_hash TEXT NOT NULL)",
    f"INSERT OR IGNORE INTO px.postings_progress VALUES (1, 0, '{GENESIS_HASH}')",
)
_MERGE_SQL = (
    "INSERT INTO px.ledger_postings (account_id, seq) SELECT a, s FROM ("
    "SELECT debit_account_id AS a, seq AS s FROM main.ledger_transfers "
    "WHERE seq > ? AND seq <= ? UNION ALL "
    "SELECT credit_account_id AS a, seq AS s FROM main.ledger_transfers "
    "WHERE seq > ? AND seq <= ?) ORDER BY a, s"
)


@dataclass(frozen=True, slots=True)
class StepResult:
    indexed_seq: int
    head_seq: int
    rows_merged: int
    rebuilt: bool

    @property
    def lag_rows(self) -> int:
        return self.head_seq - self.indexed_seq


def sidecar_path(main_path: str) -> str:
    return main_path + SIDECAR_SUFFIX


def is_unreadable(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


#: (st_dev, st_ino) of an index file: which file a connection attached.
FileIdentity = tuple[int, int]


class PostingsIndex:
    """The index file of one SQLite database, its indexer thread and its reader connections.

    One per ``Database`` object (``Database.attachment``); ``close`` (called by
    ``Database.dispose``) stops the thread and closes every connection it opened.
    """

    def __init__(self, main_path: str, *, background: bool = True) -> None:
        self.main_path = main_path
        self.path = sidecar_path(main_path)
        #: False: no thread is ever started (tests of the bounds; writers and readers index).
        self.background = background
        self._lock = threading.Lock()  # guards the fields below
        self._idle: list[sqlite3.Connection] = []
        #: Every connection this object opened, with the identity of the index file it
        #: attached: another process may unlink an unreadable file and start a new one, and a
        #: connection to the old (unlinked) file must not go on reading or indexing it.
        self._open: dict[sqlite3.Connection, FileIdentity | None] = {}
        self._indexer: sqlite3.Connection | None = None
        self._indexer_lock = threading.Lock()  # one indexing transaction per process at a time
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False
        #: Progress as this process last saw it (a hint for triggering; never for reading).
        self.known_indexed_seq = -1
        #: The journal head and trigger the last after-commit call reported.
        self._head_seen = 0
        self._tail_seen = POSTINGS_TAIL_MAX
        self.steps = 0

    # ---------------------------------------------------------------- connections

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("the postings index is closed")
        conn = sqlite3.connect(
            Path(self.main_path).absolute().as_uri() + "?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=DB_LOCK_TIMEOUT_S,
        )
        try:
            conn.execute("ATTACH DATABASE ? AS px", (self.path,))
            conn.execute("PRAGMA px.journal_mode=WAL")
            # Derived data: a commit lost to a power cut is merged again, never wrong.
            conn.execute("PRAGMA px.synchronous=NORMAL")
            conn.execute("PRAGMA temp_store=MEMORY")
            conn.execute("PRAGMA px.cache_size=-32768")
            made = conn.execute(
                "SELECT 1 FROM px.sqlite_master WHERE name = 'postings_progress'"
            ).fetchone()
            if made is None:  # a new (or emptied) file; writes wait for its write lock
                for statement in _SCHEMA:
                    conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._open[conn] = self._file_identity()
        return conn

    def _file_identity(self) -> FileIdentity | None:
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return None
        return found.st_dev, found.st_ino

    def _attached_current_file(self, conn: sqlite3.Connection) -> bool:
        """Whether ``conn`` attached the index file that is at its path now (one stat)."""
        with self._lock:
            attached = self._open.get(conn)
        return attached is not None and attached == self._file_identity()

    def _discard(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            self._open.pop(conn, None)
        conn.close()

    def _close_connections(self) -> None:
        """Close every connection this object opened (after any merge running now)."""
        with self._indexer_lock, self._lock:
            conns = list(self._open)
            self._open.clear()
            self._idle.clear()
            self._indexer = None
        for conn in conns:
            conn.close()

    def reset_file(self) -> None:
        """Remove an index file SQLite cannot read; the next connection starts it anew."""
        log.warning("postings index %s is unreadable: rebuilding it", self.path)
        self._close_connections()
        for suffix in ("", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                os.unlink(self.path + suffix)
        self.known_indexed_seq = -1

    # ---------------------------------------------------------------- indexing

    def step(self, rows_max: int = STEP_ROWS_MAX) -> StepResult:
        """One indexing transaction: check the progress row against the journal (rebuilding
        from nothing if it does not match), then merge up to ``rows_max`` journal rows."""
        for attempt in range(2):
            try:
                with self._indexer_lock:
                    return self._step(rows_max)
            except sqlite3.DatabaseError as exc:
                if attempt or not is_unreadable(exc):
                    raise
                self.reset_file()
        raise AssertionError("unreachable")

    def _step(self, rows_max: int) -> StepResult:
        conn = self._indexer
        if conn is not None and not self._attached_current_file(conn):
            self._indexer = None  # the file was replaced (by another process): not that one
            self._discard(conn)
            conn = None
        if conn is None:
            conn = self._indexer = self._connect()
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")  # the index file's write lock; a snapshot of the main one
        try:
            cur.execute("SELECT indexed_seq, indexed_hash FROM px.postings_progress WHERE id = 1")
            indexed, indexed_hash = cur.fetchone()
            cur.execute("SELECT last_seq FROM main.ledger_journal_head WHERE id = 1")
            (head_seq,) = cur.fetchone()
            rebuilt = False
            if not self._matches(cur, indexed, indexed_hash, head_seq):
                log.warning(
                    "postings index %s (seq %d) was not built from this journal: rebuilding",
                    self.path,
                    indexed,
                )
                cur.execute("DELETE FROM px.ledger_postings")
                indexed, rebuilt = 0, True
                cur.execute(
                    "UPDATE px.postings_progress SET indexed_seq = 0, indexed_hash = ?",
                    (GENESIS_HASH,),
                )
            upto = min(head_seq, indexed + rows_max)
            merged = 0
            if upto > indexed:
                cur.execute(_MERGE_SQL, (indexed, upto, indexed, upto))
                merged = cur.rowcount // 2
                # The last row merged (the journal is dense; a gap is audit's business).
                cur.execute(
                    "SELECT seq, hash FROM main.ledger_transfers WHERE seq <= ? "
                    "ORDER BY seq DESC LIMIT 1",
                    (upto,),
                )
                found = cur.fetchone()
                if found is not None and found[0] > indexed:
                    cur.execute(
                        "UPDATE px.postings_progress SET indexed_seq = ?, indexed_hash = ?",
                        (upto, found[1]),
                    )
                    indexed = upto
            cur.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        self.known_indexed_seq = indexed
        self.steps += 1
        return StepResult(indexed, head_seq, merged, rebuilt)

    @staticmethod
    def _matches(cur: sqlite3.Cursor, indexed: int, indexed_hash: str, head_seq: int) -> bool:
        """Whether an index up to ``indexed`` with ``indexed_hash`` was built from this journal."""
        if indexed == 0:
            return bool(indexed_hash == GENESIS_HASH)
        if indexed > head_seq:
            return False
        cur.execute("SELECT hash FROM main.ledger_transfers WHERE seq = ?", (indexed,))
        row = cur.fetchone()
        return row is not None and row[0] == indexed_hash

    def catch_up(self, lag_max: int = 0) -> StepResult:
        """Index until at most ``lag_max`` journal rows are left unindexed (as of each step)."""
        while True:
            result = self.step()
            if result.lag_rows <= lag_max:
                return result

    def validate(self) -> bool:
        """Check the index against the journal, emptying it if it was built from another
        journal (or removing an unreadable file); True if it had to be rebuilt."""
        return self.step(rows_max=0).rebuilt

    def after_commit(self, head_seq: int, tail_max: int) -> None:
        """A writer of this process committed up to ``head_seq``: wake the indexer once the
        tail reaches ``tail_max`` rows; index here and now beyond ``4 x tail_max``."""
        if self.known_indexed_seq < 0:
            self.known_indexed_seq = self.progress()[0]
        self._head_seen, self._tail_seen = head_seq, tail_max
        lag = head_seq - self.known_indexed_seq
        if lag < tail_max:
            return
        if lag > TAIL_HARD_FACTOR * tail_max:
            self.catch_up(lag_max=TAIL_HARD_FACTOR * tail_max)
            return
        if self.background and not self._closed:
            self._ensure_thread()
            self._wake.set()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(
                target=self._run, name="ledger-postings-indexer", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            if self._head_seen - self.known_indexed_seq < self._tail_seen:
                continue  # woken by commits made while the last merge ran: not a tail yet
            try:
                # One merge per wake: what is left is less than a tail, and a short merge
                # writes almost as many index pages as a long one (they are random accounts).
                self.step()
            except sqlite3.Error:
                # Writers and readers keep the tail bounded without us; the next wake retries.
                log.exception("indexing %s failed", self.path)

    # ---------------------------------------------------------------- reading

    def progress(self) -> tuple[int, str]:
        with self.read() as cur:
            cur.execute("SELECT indexed_seq, indexed_hash FROM px.postings_progress")
            indexed, digest = cur.fetchone()
        return int(indexed), str(digest)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Cursor]:
        """A read transaction over the main database (``main``) and the index (``px``).

        Read ``px.postings_progress`` first: the main snapshot starts at its first read, after
        the index's, so it holds every row the index does (rows never change; the index only
        grows)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the postings index is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is not None and not self._attached_current_file(conn):
            self._discard(conn)  # attached a file since replaced: read the one there now
            conn = None
        if conn is None:
            conn = self._connect()
        cur = conn.cursor()
        ok = False
        try:
            cur.execute("BEGIN")
            yield cur
            ok = True
        finally:
            if conn.in_transaction:
                try:
                    conn.rollback()
                except sqlite3.Error:
                    ok = False
            cur.close()
            with self._lock:
                keep = ok and not self._closed and conn in self._open
                keep = keep and len(self._idle) < READERS_IDLE_MAX
                if keep:
                    self._idle.append(conn)
            if not keep:
                self._discard(conn)

    @contextmanager
    def read_fit(self, tail_max: int) -> Iterator[tuple[sqlite3.Cursor, int]]:
        """A read transaction (see ``read``) over an index fit to read: built from this
        journal (checked in the same transaction) and at most ``4 x tail_max`` rows behind,
        indexing here first if not. Yields the cursor and ``indexed_seq``: journal rows up to
        it are in ``px.ledger_postings``, those beyond it are read from the journal."""
        for attempt in range(3):
            fit = False
            try:
                with self.read() as cur:
                    cur.execute("SELECT indexed_seq, indexed_hash FROM px.postings_progress")
                    indexed, indexed_hash = cur.fetchone()
                    cur.execute("SELECT last_seq FROM main.ledger_journal_head WHERE id = 1")
                    (head_seq,) = cur.fetchone()
                    fit = self._matches(cur, indexed, indexed_hash, head_seq) and (
                        head_seq - indexed <= TAIL_HARD_FACTOR * tail_max
                    )
                    if fit:
                        yield cur, int(indexed)
                        return
            except sqlite3.DatabaseError as exc:
                if fit or attempt or not is_unreadable(exc):
                    raise  # raised by the caller's reads (or twice): not ours to retry
                self.reset_file()
            self.catch_up(lag_max=TAIL_HARD_FACTOR * tail_max)
        raise RuntimeError(f"postings index {self.path} does not stay fit to read")

    # ---------------------------------------------------------------- lifecycle

    @property
    def thread_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout=DB_LOCK_TIMEOUT_S)
        self._close_connections()


def postings_index(database: object) -> PostingsIndex:
    """The postings index of a SQLite ``Database`` (made on first use, closed by dispose)."""
    from paykeep.db import Database

    assert isinstance(database, Database)
    path = database.sqlite_path
    if path is None:
        raise ValueError("the SQLite ledger needs a database file (not in-memory)")
    return database.attachment("ledger.postings", lambda: PostingsIndex(path))
