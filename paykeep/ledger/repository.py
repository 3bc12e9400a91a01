"""Persistence of the ledger: one write path per database, tuned for batches.

The hot path speaks the driver directly (``sqlite3`` / psycopg 3) rather than through
SQLAlchemy's expression layer: a batch of 1,000 transfers is a handful of statements
(``executemany`` on SQLite, ``COPY`` and array ``UPDATE ... FROM unnest`` on PostgreSQL).
Everything else (queries, audit) uses plain parameterised SQL too, so both databases share it.

Write transactions serialize on the journal head, which every writer locks first (the hash
chain needs one order anyway): ``BEGIN IMMEDIATE`` on SQLite, ``SELECT ... FOR UPDATE`` of the
head row on PostgreSQL. Account rows are then read and updated only by the head holder, so
limits hold across processes and no lock cycle can form.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from paykeep.db import Database

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from paykeep.ledger.fastpath import PlainBatch
from paykeep.ledger.model import (
    Account,
    Balances,
    JournalHead,
    JournalRow,
    SealedBatch,
    StoredPending,
    Transfer,
)
from paykeep.ledger.postings import PostingsIndex, is_unreadable, postings_index
from paykeep.limits import ID_MAX, POSTINGS_TAIL_MAX

log = logging.getLogger("paykeep.ledger")
_T = TypeVar("_T")

TRANSFER_COLUMNS = (
    "seq, id, debit_account_id, credit_account_id, amount_minor, currency, code, flags, "
    "pending_id, timeout_s, expires_at_ns, reference, metadata, timestamp_ns, hash"
)
ACCOUNT_COLUMNS = (
    "id, currency, code, flags, name, metadata, debits_pending, debits_posted, "
    "credits_pending, credits_posted, timestamp_ns"
)
#: SQLite binds at most 32,766 variables per statement; keep IN lists well below.
_IN_CHUNK = 4_000


class UniqueViolation(Exception):
    """A unique index refused a row: a concurrent writer won a race on an id, reference or name."""


def _valid_ids(values: Iterable[object]) -> list[int]:
    """Only ids the engine could accept: anything else cannot exist and must not reach the
    driver (sqlite3 raises OverflowError binding ints beyond 64 bits)."""
    return sorted({v for v in values if type(v) is int and 0 < v <= ID_MAX})


def _chunks(values: Sequence[Any], size: int = _IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def transfer_from_row(row: Sequence[Any]) -> Transfer:
    (seq, tid, debit, credit, amount, currency, code, flags, pending_id, timeout_s, expires,
     reference, metadata, timestamp_ns, digest) = row  # fmt: skip
    return Transfer(
        id=tid,
        debit_account_id=debit,
        credit_account_id=credit,
        amount_minor=amount,
        currency=currency,
        code=code,
        flags=flags,
        pending_id=pending_id or 0,
        timeout_s=timeout_s,
        expires_at_ns=expires or 0,
        reference=reference,
        metadata_json=metadata,
        timestamp_ns=timestamp_ns,
        seq=seq,
        hash=digest,
    )


def account_from_row(row: Sequence[Any]) -> Account:
    (aid, currency, code, flags, name, metadata, dp, dpo, cp, cpo, ts) = row
    return Account(
        id=aid,
        currency=currency,
        code=code,
        flags=flags,
        name=name,
        metadata=None if metadata is None else json.loads(metadata),
        debits_pending=dp,
        debits_posted=dpo,
        credits_pending=cp,
        credits_posted=cpo,
        timestamp_ns=ts,
    )


class WriteTx(Protocol):
    """What the service needs inside one write transaction."""

    def load_pendings(self, ids: Iterable[int]) -> dict[int, StoredPending]: ...
    def lock_accounts(self, ids: set[int]) -> dict[int, Balances]: ...
    def lock_head(self) -> JournalHead: ...
    def load_resolutions(self, pending_ids: Iterable[int]) -> dict[int, int]: ...
    def load_transfers(self, ids: Iterable[int]) -> dict[int, Transfer]: ...
    def load_references(self, refs: Iterable[str]) -> dict[str, int]: ...
    def write_batch(
        self, sealed: SealedBatch, balances: dict[int, Balances], holds_resolved: Sequence[int]
    ) -> None: ...
    def write_plain(self, plain: PlainBatch, accounts: Mapping[int, Balances]) -> None: ...
    def due_holds(self, now_ns: int, limit: int) -> list[int]: ...
    def load_accounts(self, ids: Iterable[int]) -> dict[int, Account]: ...
    def load_account_names(self, names: Iterable[str]) -> dict[str, int]: ...
    def insert_accounts(self, rows: Sequence[tuple[Any, ...]]) -> None: ...


class _Common:
    """SQL shared by both backends; ``_q`` turns ``?`` placeholders into the driver's style."""

    placeholder = "?"

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.cur = raw.cursor()

    def _q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", "%s")

    def _select_in(self, sql_prefix: str, column: str, values: Sequence[Any]) -> list[Any]:
        if self.placeholder == "%s":
            # One array parameter: PostgreSQL plans it once, whatever the batch size.
            self.cur.execute(f"{sql_prefix} WHERE {column} = ANY(%s)", (list(values),))
            return list(self.cur.fetchall())
        out: list[Any] = []
        for chunk in _chunks(values):
            marks = ",".join([self.placeholder] * len(chunk))
            self.cur.execute(f"{sql_prefix} WHERE {column} IN ({marks})", list(chunk))
            out.extend(self.cur.fetchall())
        return out

    def load_pendings(self, ids: Iterable[int]) -> dict[int, StoredPending]:
        wanted = _valid_ids(ids)
        if not wanted:
            return {}
        rows = self._select_in(
            "SELECT id, debit_account_id, credit_account_id, amount_minor, currency, code, "
            "flags, expires_at_ns FROM ledger_transfers",
            "id",
            wanted,
        )
        return {
            r[0]: StoredPending(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7] or 0) for r in rows
        }

    def load_resolutions(self, pending_ids: Iterable[int]) -> dict[int, int]:
        wanted = _valid_ids(pending_ids)
        if not wanted:
            return {}
        rows = self._select_in(
            "SELECT pending_id, flags FROM ledger_transfers", "pending_id", wanted
        )
        return {r[0]: r[1] for r in rows}

    def load_transfers(self, ids: Iterable[int]) -> dict[int, Transfer]:
        wanted = _valid_ids(ids)
        if not wanted:
            return {}
        rows = self._select_in(f"SELECT {TRANSFER_COLUMNS} FROM ledger_transfers", "id", wanted)
        return {r[1]: transfer_from_row(r) for r in rows}

    def load_references(self, refs: Iterable[str]) -> dict[str, int]:
        wanted = sorted({r for r in refs if isinstance(r, str)})
        if not wanted:
            return {}
        rows = self._select_in("SELECT reference, id FROM ledger_transfers", "reference", wanted)
        return {r[0]: r[1] for r in rows}

    def load_accounts(self, ids: Iterable[int]) -> dict[int, Account]:
        wanted = _valid_ids(ids)
        if not wanted:
            return {}
        rows = self._select_in(f"SELECT {ACCOUNT_COLUMNS} FROM ledger_accounts", "id", wanted)
        return {r[0]: account_from_row(r) for r in rows}

    def load_account_names(self, names: Iterable[str]) -> dict[str, int]:
        wanted = sorted({n for n in names if isinstance(n, str)})
        if not wanted:
            return {}
        rows = self._select_in("SELECT name, id FROM ledger_accounts", "name", wanted)
        return {r[0]: r[1] for r in rows}

    def due_holds(self, now_ns: int, limit: int) -> list[int]:
        self.cur.execute(
            self._q(
                "SELECT transfer_id FROM ledger_holds WHERE expires_at_ns IS NOT NULL "
                "AND expires_at_ns <= ? ORDER BY expires_at_ns, transfer_id LIMIT ?"
            ),
            (now_ns, limit),
        )
        return [r[0] for r in self.cur.fetchall()]

    def insert_accounts(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.cur.executemany(
            self._q(
                "INSERT INTO ledger_accounts (id, currency, code, flags, name, metadata, "
                "debits_pending, debits_posted, credits_pending, credits_posted, timestamp_ns) "
                "VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0, 0, ?)"
            ),
            rows,
        )

    def _write_head(self, head: JournalHead, indexed_seq: int, tail_max: int) -> None:
        if head.last_seq - indexed_seq >= tail_max:
            self._index_postings(indexed_seq, head.last_seq)
            indexed_seq = head.last_seq
        self.cur.execute(
            self._q(
                "UPDATE ledger_journal_head SET last_seq = ?, last_timestamp_ns = ?, "
                "last_hash = ?, indexed_seq = ? WHERE id = 1"
            ),
            (head.last_seq, head.last_timestamp_ns, head.last_hash, indexed_seq),
        )

    def _index_postings(self, after_seq: int, upto_seq: int) -> None:
        """Add journal rows ``after_seq < seq <= upto_seq`` to ``ledger_postings``, sorted, so
        each B-tree page is written once for the whole tail instead of once per batch."""
        self.cur.execute(
            self._q(
                "INSERT INTO ledger_postings (account_id, seq) SELECT a, s FROM ("
                "SELECT debit_account_id AS a, seq AS s FROM ledger_transfers "
                "WHERE seq > ? AND seq <= ? UNION ALL "
                "SELECT credit_account_id AS a, seq AS s FROM ledger_transfers "
                "WHERE seq > ? AND seq <= ?) AS tail ORDER BY a, s"
            ),
            (after_seq, upto_seq, after_seq, upto_seq),
        )


class PostingsReader(_Common):
    """A reader of the per-account index and the journal (``LedgerRepository.read_postings``)."""

    def __init__(self, cur: Any, placeholder: str, indexed_seq: int, postings: str) -> None:
        self.raw = None
        self.cur = cur
        self.placeholder = placeholder
        self.indexed_seq = indexed_seq
        #: The index table: ``ledger_postings`` (PostgreSQL), ``px.ledger_postings`` (SQLite).
        self.postings = postings


class _Writer(_Common):
    """A write transaction. Every writer takes the journal-head row first — the one lock all
    writers share, always first, so writers queue and can never deadlock — and only then
    reads balances, which are therefore current. Balances come from a per-process cache that
    is valid exactly while the head is the one this process last wrote (see AccountCache)."""

    def __init__(self, raw: Any, cache: AccountCache, postings_tail_max: int) -> None:
        super().__init__(raw)
        self.cache = cache
        self.postings_tail_max = postings_tail_max

    _head_sql = (
        "SELECT last_seq, last_timestamp_ns, last_hash, indexed_seq FROM ledger_journal_head "
        "WHERE id = 1"
    )
    indexed_seq = 0

    def lock_head(self) -> JournalHead:
        self.cur.execute(self._head_sql)
        seq, ts, digest, self.indexed_seq = self.cur.fetchone()
        self.cache.validate(seq)
        return JournalHead(seq, ts, digest)

    def lock_accounts(self, ids: set[int]) -> dict[int, Balances]:
        """Working balances of ``ids`` (call after ``lock_head``); absent ids are unknown."""
        cached = self.cache.balances
        # Mostly every id is cached: test membership first, validate only the rest.
        missing = list(ids.difference(cached))
        if missing:
            missing = _valid_ids(missing)
        if missing:
            rows = self._select_in(
                "SELECT id, currency, flags, debits_pending, debits_posted, credits_pending, "
                "credits_posted FROM ledger_accounts",
                "id",
                missing,
            )
            for r in rows:
                cached[r[0]] = Balances(r[1], r[2], r[3], r[4], r[5], r[6])
        return cached


# Absent values are bound as 0 / '' and turned into NULL by SQL: binding Python None goes
# through the sqlite3 module's slow adaptation path (measured 5x slower per row).
_INSERT_VALUES = (
    "(?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, 0), ?, NULLIF(?, 0), NULLIF(?, ''), NULLIF(?, ''), ?, ?)"
)
_INSERT_ONE_SQL = f"INSERT INTO ledger_transfers ({TRANSFER_COLUMNS}) VALUES {_INSERT_VALUES}"
#: Journal rows per multi-row INSERT: 64 x 15 = 960 variables, within the 999 that SQLite
#: builds before 3.32 allow per statement.
_INSERT_GROUP = 64
_INSERT_GROUP_SQL = f"INSERT INTO ledger_transfers ({TRANSFER_COLUMNS}) VALUES " + ", ".join(
    [_INSERT_VALUES] * _INSERT_GROUP
)
#: A plain row (``fastpath``): only the fields it varies in are bound (``PLAIN_COLUMNS``); the
#: others are the constants every plain row has. A third fewer bindings: 0.88 -> 0.59 ms per
#: 1,000 rows measured on SQLite. 110 rows x 9 = 990 variables.
_PLAIN_VALUES = "(?, ?, ?, ?, ?, ?, ?, 0, NULL, 0, NULL, NULL, NULL, ?, ?)"
_PLAIN_GROUP = 110
_PLAIN_GROUP_SQL = f"INSERT INTO ledger_transfers ({TRANSFER_COLUMNS}) VALUES " + ", ".join(
    [_PLAIN_VALUES] * _PLAIN_GROUP
)


_UPDATE_BALANCES_SQL = (
    "UPDATE ledger_accounts SET debits_pending = ?, debits_posted = ?, "
    "credits_pending = ?, credits_posted = ? WHERE id = ?"
)


class SqliteTx(_Writer):
    """SQLite: ``BEGIN IMMEDIATE`` already made this connection the only writer."""

    #: The head this transaction wrote (0: none); after commit the repository tells the
    #: postings indexer (``paykeep.ledger.postings``), which indexes outside this transaction.
    written_seq = 0

    def _write_head(self, head: JournalHead, indexed_seq: int, tail_max: int) -> None:
        # No merge here: the index lives in its own file. ``indexed_seq`` stays 0 on SQLite.
        self.cur.execute(
            "UPDATE ledger_journal_head SET last_seq = ?, last_timestamp_ns = ?, last_hash = ? "
            "WHERE id = 1",
            (head.last_seq, head.last_timestamp_ns, head.last_hash),
        )
        self.written_seq = head.last_seq

    def _insert_journal(
        self, group_sql: str, groups: Sequence[Sequence[object]], rest: Sequence[JournalRow]
    ) -> None:
        """Journal rows: ``groups`` (flattened parameters of ``group_sql``), then ``rest`` one
        by one. A duplicate id or reference is a ``UniqueViolation``."""
        try:
            if groups:
                self.cur.executemany(group_sql, groups)
            if rest:
                self.cur.executemany(_INSERT_ONE_SQL, rest)
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc):
                raise UniqueViolation(str(exc)) from exc
            raise

    def write_batch(
        self, sealed: SealedBatch, balances: dict[int, Balances], holds_resolved: Sequence[int]
    ) -> None:
        rows = sealed.rows
        # Whole groups of rows go in multi-row INSERTs (a quarter less CPU per row than one
        # statement execution per row), the rest one by one. Same rows, same order.
        grouped = len(rows) - len(rows) % _INSERT_GROUP
        self._insert_journal(
            _INSERT_GROUP_SQL,
            [
                list(chain.from_iterable(rows[start : start + _INSERT_GROUP]))
                for start in range(0, grouped, _INSERT_GROUP)
            ],
            rows[grouped:],
        )
        self.cur.executemany(
            _UPDATE_BALANCES_SQL,
            [
                (b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted, aid)
                for aid, b in balances.items()
            ],
        )
        if sealed.holds_opened:
            self.cur.executemany(
                "INSERT INTO ledger_holds (transfer_id, expires_at_ns) VALUES (?, NULLIF(?, 0))",
                sealed.holds_opened,
            )
        if holds_resolved:
            self.cur.executemany(
                "DELETE FROM ledger_holds WHERE transfer_id = ?", [(i,) for i in holds_resolved]
            )
        self._write_head(sealed.head, self.indexed_seq, self.postings_tail_max)

    def write_plain(self, plain: PlainBatch, accounts: Mapping[int, Balances]) -> None:
        """``write_batch`` for a batch the compiled core sealed (``fastpath``): the same
        statements, with the INSERT groups and UPDATE parameters it already built."""
        assert plain.group_rows == _PLAIN_GROUP
        rows = plain.sealed.rows
        grouped = len(plain.insert_groups) * _PLAIN_GROUP
        self._insert_journal(_PLAIN_GROUP_SQL, plain.insert_groups, rows[grouped:])
        self.cur.executemany(_UPDATE_BALANCES_SQL, plain.balance_rows)
        self._write_head(plain.sealed.head, self.indexed_seq, self.postings_tail_max)


class PostgresTx(_Writer):
    """PostgreSQL: the head row is locked ``FOR UPDATE``; account rows are then changed only
    by head holders (their UPDATE locks them), so no two writers ever wait on each other
    in a cycle, and a balance read under the head lock cannot change before commit."""

    placeholder = "%s"
    _head_sql = _Writer._head_sql + " FOR UPDATE"

    def write_batch(
        self, sealed: SealedBatch, balances: dict[int, Balances], holds_resolved: Sequence[int]
    ) -> None:
        import psycopg

        if sealed.rows:
            try:
                with self.cur.copy(
                    f"COPY ledger_transfers ({TRANSFER_COLUMNS}) FROM STDIN"
                ) as copy:
                    for (seq, tid, debit, credit, amount, currency, code, flags, pending_id,
                         timeout_s, expires, ref, meta, ts, digest) in sealed.rows:  # fmt: skip
                        copy.write_row(
                            (seq, tid, debit, credit, amount, currency, code, flags,
                             pending_id or None, timeout_s, expires or None, ref or None,
                             meta or None, ts, digest)
                        )  # fmt: skip
            except psycopg.errors.UniqueViolation as exc:
                raise UniqueViolation(str(exc)) from exc
        if balances:
            ids = list(balances)
            values = list(balances.values())
            # One statement, so the zero-sum trigger sees the batch's whole change at once.
            self.cur.execute(
                "UPDATE ledger_accounts AS a SET debits_pending = v.dp, debits_posted = v.dpo, "
                "credits_pending = v.cp, credits_posted = v.cpo "
                "FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], "
                "%s::bigint[]) AS v(id, dp, dpo, cp, cpo) WHERE a.id = v.id",
                (
                    ids,
                    [b.debits_pending for b in values],
                    [b.debits_posted for b in values],
                    [b.credits_pending for b in values],
                    [b.credits_posted for b in values],
                ),
            )
        opened = sealed.holds_opened
        if opened:
            self.cur.execute(
                "INSERT INTO ledger_holds (transfer_id, expires_at_ns) "
                "SELECT id, NULLIF(e, 0) FROM unnest(%s::bigint[], %s::bigint[]) AS h(id, e)",
                ([h[0] for h in opened], [h[1] for h in opened]),
            )
        if holds_resolved:
            self.cur.execute(
                "DELETE FROM ledger_holds WHERE transfer_id = ANY(%s)", (list(holds_resolved),)
            )
        self._write_head(sealed.head, self.indexed_seq, self.postings_tail_max)

    def write_plain(self, plain: PlainBatch, accounts: Mapping[int, Balances]) -> None:
        """PostgreSQL takes the rows by COPY, not SQLite's INSERT groups: ``write_batch``."""
        self.write_batch(plain.sealed, {i: accounts[i] for i in plain.touched_ids}, ())


class AccountCache:
    """Working balances of accounts, kept between batches by a writer process.

    Balances change only through transfers, and every transfer advances the journal head. So
    the cache is valid exactly while the head's ``last_seq`` is the one this process wrote
    last; any other writer (another process, the CLI) moves it and the cache is dropped. A
    failed transaction also drops it, because the engine mutates the cached objects.
    """

    def __init__(self) -> None:
        self.balances: dict[int, Balances] = {}
        self.seq = -1

    def validate(self, head_seq: int) -> None:
        if head_seq != self.seq:
            self.balances.clear()
            self.seq = head_seq

    def committed(self, head_seq: int) -> None:
        self.seq = head_seq

    def drop(self) -> None:
        self.balances.clear()
        self.seq = -1


class LedgerRepository:
    """Opens write transactions and runs the read queries."""

    def __init__(self, database: Database, *, postings_tail_max: int = POSTINGS_TAIL_MAX) -> None:
        self.database = database
        self.cache = AccountCache()
        self.postings_tail_max = postings_tail_max

    @contextmanager
    def write(self) -> Iterator[WriteTx]:
        """A write transaction; commits when the block ends normally (see ``Database.write``)."""
        try:
            with self.database.write() as conn:
                raw = Database.driver_connection(conn)
                tx: WriteTx = (
                    SqliteTx(raw, self.cache, self.postings_tail_max)
                    if self.database.is_sqlite
                    else PostgresTx(raw, self.cache, self.postings_tail_max)
                )
                yield tx
        except BaseException:
            # The engine mutated cached balances for a batch that did not commit.
            self.cache.drop()
            raise
        if isinstance(tx, SqliteTx) and tx.written_seq:
            self.committed(tx.written_seq)

    def postings(self) -> PostingsIndex:
        """SQLite only: the index file beside the database (one per ``Database``)."""
        return postings_index(self.database)

    def committed(self, head_seq: int) -> None:
        """SQLite: a transaction committed the journal up to ``head_seq``. Wakes the indexer;
        indexes here, after the commit, if the tail is past its hard bound. The commit stands
        whatever happens here: an indexing failure is logged, and readers bound the tail too."""
        try:
            self.postings().after_commit(head_seq, self.postings_tail_max)
        except sqlite3.Error:
            log.exception("indexing the postings after a commit failed")

    def postings_lag_rows(self) -> int:
        """Journal rows not yet in the per-account index."""
        if self.database.is_sqlite:
            with self.postings().read() as cur:
                cur.execute("SELECT indexed_seq FROM px.postings_progress")
                (indexed,) = cur.fetchone()
                cur.execute("SELECT last_seq FROM main.ledger_journal_head")
                (head,) = cur.fetchone()
            return int(head - indexed)
        with self.read() as reader:
            reader.cur.execute("SELECT last_seq - indexed_seq FROM ledger_journal_head")
            return int(reader.cur.fetchone()[0])

    def index_postings(self) -> None:
        """SQLite: index the whole journal now (in this thread). PostgreSQL merges inline."""
        if self.database.is_sqlite:
            self.postings().catch_up()

    def query_postings(self, query: Callable[[PostingsReader], _T]) -> _T:
        """``query`` in a ``read_postings`` transaction. SQLite: if the index file proves
        unreadable midway (truncated, overwritten), it is removed and ``query`` runs once more
        on a rebuilt one."""
        for attempt in range(2):
            try:
                with self.read_postings() as reader:
                    return query(reader)
            except sqlite3.DatabaseError as exc:
                if attempt or not self.database.is_sqlite or not is_unreadable(exc):
                    raise
                self.postings().reset_file()
        raise AssertionError("unreachable")

    @contextmanager
    def read_postings(self) -> Iterator[PostingsReader]:
        """A read transaction for per-account queries: journal rows up to ``indexed_seq`` are
        in the table ``postings`` names, the rest (a bounded tail) only in the journal. Each
        row is in exactly one of the two, whatever writers and indexers do meanwhile."""
        if self.database.is_sqlite:
            with self.postings().read_fit(self.postings_tail_max) as (cur, indexed):
                yield PostingsReader(cur, "?", indexed, "px.ledger_postings")
            return
        with self.database.read() as conn:
            cur = Database.driver_connection(conn).cursor()
            # Rows at or below it stay indexed forever, so this one value serves both reads.
            cur.execute("SELECT indexed_seq FROM ledger_journal_head WHERE id = 1")
            indexed = int(cur.fetchone()[0])
            yield PostingsReader(cur, "%s", indexed, "ledger_postings")

    def within(self, conn: Connection) -> WriteTx:
        """The engine's view of a write transaction another context opened (``Database.write``)
        so that its own rows and the ledger's commit together. It uses a cache of its own: the
        shared one sees the journal head move and drops itself at its next write."""
        raw = Database.driver_connection(conn)
        cache = AccountCache()
        if self.database.is_sqlite:
            return SqliteTx(raw, cache, self.postings_tail_max)
        return PostgresTx(raw, cache, self.postings_tail_max)

    @contextmanager
    def read(self) -> Iterator[_Common]:
        with self.database.read() as conn:
            raw = Database.driver_connection(conn)
            reader = _Common(raw)
            if self.database.is_postgres:
                reader.placeholder = "%s"
            yield reader
