"""Ledger use cases: create accounts and transfers, resolve holds, query, sweep expiries.

Transaction boundaries live here (through ``LedgerRepository.write``), never in the model.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

from paykeep import limits
from paykeep.clock import Clock, SystemClock, monotonic_s
from paykeep.db import Database
from paykeep.ids import IdGenerator
from paykeep.ledger import fastpath
from paykeep.ledger.errors import (
    AccountNotFound,
    BatchTooLarge,
    InvalidCursor,
    LedgerBusy,
    LedgerConflict,
    TransferNotFound,
    account_error,
    transfer_error,
)
from paykeep.ledger.model import (
    Account,
    AccountResult,
    Balances,
    CreateAccountResult,
    CreateTransferResult,
    JournalHead,
    NewAccount,
    NewTransfer,
    Transfer,
    TransferFlags,
    TransferResult,
    assert_zero_sum,
    batch_timestamps,
    name_ok,
    net_by_currency,
    plan_transfers,
    reference_ok,
    seal,
    transfer_results,
    validate_new_account,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection

from paykeep.ledger.repository import (
    TRANSFER_COLUMNS,
    LedgerRepository,
    PostingsReader,
    SqliteTx,
    UniqueViolation,
    WriteTx,
    transfer_from_row,
)

_RESOLVING = int(TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING)
_PENDING = int(TransferFlags.PENDING)
_POST = int(TransferFlags.POST_PENDING)
_VOID = int(TransferFlags.VOID_PENDING)
_transfer_id = attrgetter("id")


@dataclass(frozen=True, slots=True)
class BalanceAsOf:
    account_id: int
    as_of_ns: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Transfer]
    has_more: bool


def _is_valid_id(value: object) -> bool:
    return type(value) is int and 0 < value <= limits.ID_MAX


class Ledger:
    """The double-entry ledger. Safe to share between threads of one process."""

    def __init__(
        self,
        database: Database,
        clock: Clock | None = None,
        id_generator: IdGenerator | None = None,
        *,
        postings_tail_max: int = limits.POSTINGS_TAIL_MAX,
    ) -> None:
        """``postings_tail_max``: journal rows left out of the per-account index before a
        write merges them in (see ``ledger_postings`` in the schema); tests make it small."""
        self.database = database
        self.clock = clock or SystemClock()
        self.ids = id_generator or IdGenerator(self.clock)
        if not 1 <= postings_tail_max <= limits.POSTINGS_TAIL_MAX:
            raise ValueError(f"postings_tail_max must be 1..{limits.POSTINGS_TAIL_MAX}")
        self.repo = LedgerRepository(database, postings_tail_max=postings_tail_max)
        # Writers serialize on the journal head anyway; serializing this process's writers
        # first keeps the shared balance cache coherent without fine-grained locking.
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------------ accounts

    def create_accounts(self, accounts: Sequence[NewAccount]) -> list[AccountResult]:
        """Create accounts; one result per item, in order. Idempotent per id."""
        if len(accounts) > limits.BATCH_SIZE_MAX:
            raise BatchTooLarge(f"at most {limits.BATCH_SIZE_MAX} accounts per call")
        if not accounts:
            return []
        for _attempt in range(2):
            try:
                return self._create_accounts(accounts)
            except UniqueViolation:
                continue  # a concurrent creator won a race on id or name; decide again
        raise LedgerConflict("accounts could not be created: concurrent conflicting writes")

    def create_accounts_within(
        self, conn: Connection, accounts: Sequence[NewAccount]
    ) -> list[AccountResult]:
        """:meth:`create_accounts` inside a write transaction the caller opened with
        ``Database.write()`` and commits (its rows and these accounts commit together)."""
        if len(accounts) > limits.BATCH_SIZE_MAX:
            raise BatchTooLarge(f"at most {limits.BATCH_SIZE_MAX} accounts per call")
        return self._insert_accounts(self.repo.within(conn), accounts) if accounts else []

    def create_transfers_within(
        self, conn: Connection, transfers: Sequence[NewTransfer]
    ) -> list[TransferResult]:
        """:meth:`create_transfers` inside a write transaction the caller opened with
        ``Database.write()``: the caller's own rows and these transfers commit or roll back
        together. Linked chains stay atomic; a rejected item writes nothing of its chain."""
        if len(transfers) > limits.BATCH_SIZE_MAX:
            raise BatchTooLarge(f"at most {limits.BATCH_SIZE_MAX} transfers per call")
        if not transfers:
            return []
        tx = self.repo.within(conn)
        try:
            results, _head = self._decide(tx, transfers, (), False)
        except UniqueViolation as exc:
            raise LedgerConflict(
                "a concurrent writer created the same transfer id or reference; retry"
            ) from exc
        if isinstance(tx, SqliteTx) and tx.written_seq:
            # As after the ledger's own commits: the indexer of SQLite's postings file learns
            # of these rows once the caller's transaction has committed them.
            written = tx.written_seq
            Database.after_commit(conn, lambda: self.repo.committed(written))
        return results

    def _create_accounts(self, accounts: Sequence[NewAccount]) -> list[AccountResult]:
        with self._writer(), self.repo.write() as tx:
            return self._insert_accounts(tx, accounts)

    def _insert_accounts(self, tx: WriteTx, accounts: Sequence[NewAccount]) -> list[AccountResult]:
        import sqlite3

        import psycopg

        existing = tx.load_accounts(a.id for a in accounts)
        names = tx.load_account_names(
            a.name for a in accounts if isinstance(a.name, str) and name_ok(a.name)
        )
        now = self.clock.now_ns()
        results: list[AccountResult] = []
        rows: list[tuple[object, ...]] = []
        for index, new in enumerate(accounts):
            result, meta = validate_new_account(
                new,
                existing.get(new.id) if type(new.id) is int else None,
                names.get(new.name) if new.name is not None else None,
            )
            if result is CreateAccountResult.OK:
                rows.append((new.id, new.currency, new.code, int(new.flags), new.name, meta, now))
                # Later items in the same call see this one (idempotency within a batch).
                existing[new.id] = Account(
                    new.id, new.currency, new.code, int(new.flags), new.name,
                    new.metadata, 0, 0, 0, 0, now,
                )  # fmt: skip
                if new.name is not None:
                    names[new.name] = new.id
            results.append(AccountResult(index, new.id, result))
        if rows:
            try:
                tx.insert_accounts(rows)
            except (sqlite3.IntegrityError, psycopg.errors.UniqueViolation) as exc:
                raise UniqueViolation(str(exc)) from exc
        return results

    def create_account(self, account: NewAccount) -> Account:
        """Create one account (or return it when it already exists identically)."""
        (result,) = self.create_accounts([account])
        if result.result not in (CreateAccountResult.OK, CreateAccountResult.EXISTS):
            raise account_error(result.result, account.id)
        return self.account(account.id)

    def lookup_accounts(self, ids: Sequence[int]) -> dict[int, Account]:
        with self.repo.read() as reader:
            return reader.load_accounts(ids)

    def account(self, account_id: int) -> Account:
        found = self.lookup_accounts([account_id]).get(account_id)
        if found is None:
            raise AccountNotFound(f"no account {account_id}", param="account_id")
        return found

    def account_by_name(self, name: str) -> Account:
        if not name_ok(name):
            raise AccountNotFound(f"no account named {name!r}", param="name")
        with self.repo.read() as reader:
            ids = reader.load_account_names([name])
            found = reader.load_accounts(ids.values()) if ids else {}
        if not found:
            raise AccountNotFound(f"no account named {name!r}", param="name")
        return next(iter(found.values()))

    # ------------------------------------------------------------------ transfers

    def create_transfers(self, transfers: Sequence[NewTransfer]) -> list[TransferResult]:
        """Apply a batch; one result per item, in order. Linked chains are atomic."""
        if len(transfers) > limits.BATCH_SIZE_MAX:
            raise BatchTooLarge(f"at most {limits.BATCH_SIZE_MAX} transfers per call")
        return self._create_transfers(transfers, ())

    def create_transfer(self, transfer: NewTransfer) -> Transfer:
        """Apply one transfer and return it as stored; a rejection raises its typed error.

        A replay of an already-applied transfer returns the stored transfer (``exists``).
        """
        (result,) = self.create_transfers([transfer])
        if not result.applied_or_exists:
            raise transfer_error(result.result, transfer.id)
        return self.transfer(transfer.id)

    def _create_transfers(
        self,
        transfers: Sequence[NewTransfer],
        segment_ends: Sequence[int],
        *,
        sweeping: bool = False,
    ) -> list[TransferResult]:
        if not transfers:
            return []
        try:
            return self._apply(transfers, segment_ends, sweeping=sweeping)
        except UniqueViolation as exc:
            # Every writer decides under the journal-head lock, so only a writer that bypasses
            # it could get here; nothing was written and the request may be retried.
            raise LedgerConflict(
                "a concurrent writer created the same transfer id or reference; retry"
            ) from exc

    def _writer(self) -> threading.Lock:
        return self._write_lock

    def _apply(
        self,
        transfers: Sequence[NewTransfer],
        segment_ends: Sequence[int],
        *,
        sweeping: bool,
    ) -> list[TransferResult]:
        with self._writer():
            with self.repo.write() as tx:
                results, head = self._decide(tx, transfers, segment_ends, sweeping)
            self.repo.cache.committed(head.last_seq)
        return results

    def _decide(
        self,
        tx: WriteTx,
        transfers: Sequence[NewTransfer],
        segment_ends: Sequence[int],
        sweeping: bool,
    ) -> tuple[list[TransferResult], JournalHead]:
        head: JournalHead | None = None
        stored: dict[int, Transfer] | None = None
        if fastpath.ENABLED:
            # An all-plain batch that is all ok is decided, applied and sealed in one compiled
            # call (under the head lock, like everything below); any other batch comes back
            # None, nothing changed, and is decided below with the head and stored transfers
            # already read.
            head = tx.lock_head()
            stored = tx.load_transfers(t.id for t in transfers)
            accounts = tx.lock_accounts(set())
            plain = fastpath.plan_plain(
                transfers, accounts, stored, head, self.clock.now_ns(), load=tx.lock_accounts
            )
            if plain is not None:
                tx.write_plain(plain, accounts)
                return plain.results, plain.sealed.head
        # One pass over the batch for what must be read before deciding: the accounts it
        # names and the pending transfers it resolves.
        pending_ids: list[int] = []
        account_ids: set[int] = set()
        add_account = account_ids.add
        for t in transfers:
            debit_id = t.debit_account_id
            credit_id = t.credit_account_id
            if type(debit_id) is int:
                add_account(debit_id)
            if type(credit_id) is int:
                add_account(credit_id)
            flags = t.flags
            if isinstance(flags, int) and flags & _RESOLVING:
                pending_id = t.pending_id
                if type(pending_id) is int:
                    pending_ids.append(pending_id)
        pendings = tx.load_pendings(pending_ids) if pending_ids else {}
        for p in pendings.values():
            account_ids.add(p.debit_account_id)
            account_ids.add(p.credit_account_id)
        # The head first: it serializes writers, and it validates the balance cache.
        if head is None:
            head = tx.lock_head()
        accounts = tx.lock_accounts(account_ids)
        resolutions = tx.load_resolutions(pendings) if pendings else {}
        # Idempotency and reference checks need every stored transfer the batch names. These
        # are indexed lookups, read after the locks so no other writer can change the answer.
        if stored is None:
            stored = tx.load_transfers(t.id for t in transfers)
        # Only well-formed references reach SQL (a lone surrogate cannot even be encoded); the
        # engine gives the others their reference_invalid result.
        references = tx.load_references(
            t.reference
            for t in transfers
            if isinstance(t.reference, str) and reference_ok(t.reference)
        )
        missing = [s.pending_id for s in stored.values() if s.pending_id not in pendings]
        if any(missing):
            pendings.update(tx.load_pendings(i for i in missing if i))
        loaded = [b for i in account_ids if (b := accounts.get(i)) is not None]
        before = net_by_currency(loaded)
        now = self.clock.now_ns()
        plan = plan_transfers(
            transfers,
            accounts=accounts,
            stored=stored,
            pendings=pendings,
            resolutions=resolutions,
            references=references,
            now_ns=now,
            segment_ends=segment_ends,
            sweeping=sweeping,
        )
        assert_zero_sum(before, net_by_currency(loaded))
        sealed = seal(plan.planned, head, now)
        if sealed.rows:
            touched: dict[int, Balances] = {i: accounts[i] for i in plan.touched}
            tx.write_batch(sealed, touched, plan.holds_resolved)
        results = transfer_results(
            map(_transfer_id, transfers),
            plan.results,
            batch_timestamps(len(transfers), plan.planned, sealed),
        )
        if stored:  # only a stored transfer gives a replay its original timestamp
            for i, code in enumerate(plan.results):
                if code is CreateTransferResult.EXISTS:
                    existing = stored.get(transfers[i].id)
                    if existing is not None:
                        results[i] = TransferResult(i, existing.id, code, existing.timestamp_ns)
        return results, sealed.head

    # ------------------------------------------------------------------ holds

    def expire_holds(self, limit: int = limits.EXPIRY_SWEEP_BATCH) -> int:
        """Void every hold whose timeout has passed (at most ``limit``); returns how many.

        Idempotent and safe to run from several processes: each void is an ordinary journal
        transfer flagged ``EXPIRY``, and the unique index on ``pending_id`` lets only one
        resolution of a hold ever exist.
        """
        now = self.clock.now_ns()
        with self.repo.read() as reader:
            due = reader.due_holds(now, limit)
        if not due:
            return 0
        voids = [
            NewTransfer(
                id=self.ids.next_id(),
                flags=int(TransferFlags.VOID_PENDING | TransferFlags.EXPIRY),
                pending_id=pending_id,
            )
            for pending_id in due
        ]
        results = self._create_transfers(voids, range(len(voids)), sweeping=True)
        return sum(1 for r in results if r.ok)

    # ------------------------------------------------------------------ queries

    def lookup_transfers(self, ids: Sequence[int]) -> dict[int, Transfer]:
        with self.repo.read() as reader:
            return reader.load_transfers(ids)

    def transfer(self, transfer_id: int) -> Transfer:
        found = self.lookup_transfers([transfer_id]).get(transfer_id)
        if found is None:
            raise TransferNotFound(f"no transfer {transfer_id}", param="id")
        return found

    def transfer_by_reference(self, reference: str) -> Transfer:
        if not reference_ok(reference):
            raise TransferNotFound(f"no transfer with reference {reference!r}", param="reference")
        with self.repo.read() as reader:
            ids = reader.load_references([reference])
            found = reader.load_transfers(ids.values()) if ids else {}
        if not found:
            raise TransferNotFound(f"no transfer with reference {reference!r}", param="reference")
        return next(iter(found.values()))

    def head(self) -> JournalHead:
        with self.repo.read() as reader:
            reader.cur.execute(
                "SELECT last_seq, last_timestamp_ns, last_hash FROM ledger_journal_head"
            )
            seq, ts, digest = reader.cur.fetchone()
        return JournalHead(seq, ts, digest)

    def postings_lag_rows(self) -> int:
        """Journal rows not yet in the per-account index (they are read from the journal)."""
        return self.repo.postings_lag_rows()

    def index_postings(self) -> None:
        """Bring the per-account index up to the journal head now (SQLite; PostgreSQL merges
        inline). Safe beside a running indexer: the index file's lock serializes them."""
        self.repo.index_postings()

    def account_transfers(
        self,
        account_id: int,
        *,
        limit: int = limits.PAGE_SIZE_DEFAULT,
        starting_after: int | None = None,
    ) -> Page:
        """Transfers debiting or crediting the account, newest first, ``limit`` at a time.

        ``starting_after`` is the id of the last transfer of the previous page.
        """
        if type(limit) is not int or not 0 < limit <= limits.PAGE_SIZE_MAX:
            raise InvalidCursor(f"limit must be 1..{limits.PAGE_SIZE_MAX}", param="limit")
        if not _is_valid_id(account_id):
            raise AccountNotFound(f"no account {account_id!r}", param="account_id")
        if starting_after is not None and not _is_valid_id(starting_after):
            raise InvalidCursor(f"starting_after {starting_after!r} is not a transfer id")

        # A function, not a block: run again if the index file proved unreadable (it is rebuilt).
        def read(reader: PostingsReader) -> list[tuple[object, ...]]:
            q = reader._q
            below = limits.ID_MAX
            if starting_after is not None:
                reader.cur.execute(
                    q("SELECT seq, debit_account_id, credit_account_id FROM ledger_transfers "
                      "WHERE id = ?"),
                    (starting_after,),
                )  # fmt: skip
                row = reader.cur.fetchone()
                if row is None or account_id not in (row[1], row[2]):
                    raise InvalidCursor(
                        f"starting_after {starting_after} is not a transfer of this account",
                        param="starting_after",
                    )
                below = row[0]
            indexed = reader.indexed_seq
            # Newest first: the unindexed tail (a bounded scan by sequence number), then the
            # per-account index for what the tail did not fill.
            reader.cur.execute(
                q(f"SELECT {TRANSFER_COLUMNS} FROM ledger_transfers WHERE seq > ? AND seq < ? "
                  "AND (debit_account_id = ? OR credit_account_id = ?) ORDER BY seq DESC LIMIT ?"),
                (indexed, below, account_id, account_id, limit + 1),
            )  # fmt: skip
            rows: list[tuple[object, ...]] = list(reader.cur.fetchall())
            if len(rows) <= limit:
                reader.cur.execute(
                    q(f"SELECT {_T_COLUMNS} FROM {reader.postings} x "
                      "JOIN ledger_transfers t ON t.seq = x.seq "
                      "WHERE x.account_id = ? AND x.seq <= ? AND x.seq < ? "
                      "ORDER BY x.seq DESC LIMIT ?"),
                    (account_id, indexed, below, limit + 1 - len(rows)),
                )  # fmt: skip
                rows.extend(reader.cur.fetchall())
            return rows

        rows = self.repo.query_postings(read)
        rows.sort(key=lambda r: r[0], reverse=True)  # type: ignore[arg-type,return-value]
        items = [transfer_from_row(r) for r in rows[:limit]]
        return Page(items=items, has_more=len(rows) > limit)

    def balance_as_of(self, account_id: int, as_of_ns: int) -> BalanceAsOf:
        """The account's four balances as they stood at ``as_of_ns`` (inclusive).

        Recomputed from the journal: a pending transfer adds to the pending balances when it is
        written and leaves them when its post/void (or expiry) is written.
        """
        self.account(account_id)
        if type(as_of_ns) is not int or not 0 <= as_of_ns <= limits.ID_MAX:
            raise InvalidCursor(f"as_of_ns must be nanoseconds since the epoch: {as_of_ns!r}")

        def read(reader: PostingsReader) -> tuple[int, int, int, int]:
            dp = dpo = cp = cpo = 0
            indexed = reader.indexed_seq
            for column in ("debit_account_id", "credit_account_id"):
                is_debit = column == "debit_account_id"
                for sql, args in (
                    (
                        f"FROM {reader.postings} x JOIN ledger_transfers t ON t.seq = x.seq "
                        "LEFT JOIN ledger_transfers p ON p.id = t.pending_id "
                        f"WHERE x.account_id = ? AND x.seq <= ? AND t.{column} = ? "
                        "AND t.timestamp_ns <= ?",
                        (account_id, indexed, account_id, as_of_ns),
                    ),
                    (
                        "FROM ledger_transfers t "
                        "LEFT JOIN ledger_transfers p ON p.id = t.pending_id "
                        f"WHERE t.seq > ? AND t.{column} = ? AND t.timestamp_ns <= ?",
                        (indexed, account_id, as_of_ns),
                    ),
                ):
                    reader.cur.execute(
                        reader._q("SELECT t.flags, t.amount_minor, p.amount_minor " + sql), args
                    )
                    while chunk := reader.cur.fetchmany(10_000):
                        for flags, amount, pending_amount in chunk:
                            held = amount if flags & _PENDING else 0
                            released = pending_amount if flags & _RESOLVING else 0
                            posted = 0 if flags & (_PENDING | _VOID) else amount
                            if is_debit:
                                dp += held - released
                                dpo += posted
                            else:
                                cp += held - released
                                cpo += posted
            return dp, dpo, cp, cpo

        return BalanceAsOf(account_id, as_of_ns, *self.repo.query_postings(read))


#: The journal columns qualified for a join (``t`` is the journal).
_T_COLUMNS = ", ".join(f"t.{c.strip()}" for c in TRANSFER_COLUMNS.split(","))


# ---------------------------------------------------------------------------------------------
# Group commit
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Request:
    transfers: Sequence[NewTransfer]
    future: Future[list[TransferResult]]


class GroupCommitter:
    """Coalesces concurrent callers' small batches into one database transaction.

    Each caller blocks in :meth:`submit` until the transaction holding its transfers commits,
    so an acknowledged transfer is durable. A linked chain never spans two callers (each
    caller's batch is a separate segment for the engine), and one caller's rejected transfer
    never affects another's. If the transaction itself fails, every caller in it gets the
    error and nothing of theirs was written.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        max_batch: int = limits.GROUP_COMMIT_BATCH_MAX,
        queue_max: int = limits.GROUP_COMMIT_QUEUE_MAX,
        wait_s: float = limits.GROUP_COMMIT_WAIT_S,
        linger_s: float = limits.GROUP_COMMIT_LINGER_S,
    ) -> None:
        self.ledger = ledger
        self.linger_s = linger_s
        self.max_batch = min(max_batch, limits.BATCH_SIZE_MAX)
        self.wait_s = wait_s
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=queue_max)
        self._thread = threading.Thread(target=self._run, name="ledger-group-commit", daemon=True)
        self._closed = False
        self.commits = 0
        self.transfers_committed = 0
        self._thread.start()

    def submit(self, transfers: Sequence[NewTransfer]) -> list[TransferResult]:
        if self._closed:
            raise LedgerBusy("the group committer is closed")
        if len(transfers) > self.max_batch:
            raise BatchTooLarge(f"at most {self.max_batch} transfers per call")
        request = _Request(transfers, Future())
        try:
            self._queue.put(request, timeout=self.wait_s)
        except queue.Full:
            raise LedgerBusy("ledger write queue is full; retry with the same ids") from None
        try:
            return request.future.result(timeout=self.wait_s)
        except TimeoutError:
            # The batch may still commit: the caller must retry with the same ids, and the
            # ledger's idempotency answers `exists` if it did.
            raise LedgerBusy("ledger write timed out; retry with the same ids") from None

    def submit_one(self, transfer: NewTransfer) -> TransferResult:
        return self.submit([transfer])[0]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout=self.wait_s)

    def __enter__(self) -> GroupCommitter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            size = len(first.transfers)
            deadline = monotonic_s() + self.linger_s
            while size < self.max_batch:
                try:
                    # Linger a moment for more callers: one fsync then serves them all.
                    nxt = self._queue.get(timeout=max(0.0, deadline - monotonic_s()))
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                if size + len(nxt.transfers) > self.max_batch:
                    # Too big to join this group: commit what we have, then start with it.
                    self._commit(group)
                    group, size = [nxt], 0
                else:
                    group.append(nxt)
                size += len(nxt.transfers)
            self._commit(group)

    def _commit(self, group: list[_Request]) -> None:
        combined: list[NewTransfer] = []
        ends: list[int] = []
        for request in group:
            combined.extend(request.transfers)
            if request.transfers:
                ends.append(len(combined) - 1)
        try:
            results = self.ledger._create_transfers(combined, ends)
        except Exception as exc:
            if len(group) > 1:
                # Nothing was written (the transaction rolled back). One caller's request may
                # be what failed, so each caller is retried alone and hears only its own fate.
                for request in group:
                    self._commit([request])
                return
            group[0].future.set_exception(exc)
            return
        except BaseException as exc:  # every waiting caller must hear about it
            for request in group:
                request.future.set_exception(exc)
            raise
        self.commits += 1
        self.transfers_committed += len(combined)
        offset = 0
        for request in group:
            n = len(request.transfers)
            mine = results[offset : offset + n]
            request.future.set_result(
                [TransferResult(r.index - offset, r.id, r.result, r.timestamp_ns) for r in mine]
            )
            offset += n
