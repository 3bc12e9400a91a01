"""One bad item must not stall a whole background pass.

The workers' passes handle many items (orders whose timer is due, card refunds to send,
top-ups to credit, ...), each in its own transaction. An item whose handling raises something
nobody planned for — a value the database refuses, a sealed field that will not open, a row
in a state no transition expects — used to abort the pass at that item; as it stays due (and
usually first in line), every later pass failed there too and everything behind it stalled.

A pass now opens its items (:meth:`Quarantine.open`) and handles each inside
:meth:`PassItems.isolated`:

- **Typed business outcomes** (a decline, insufficient funds, an illegal transition) are the
  pass's own to handle and never reach the isolation.
- **The database unavailable** (:func:`is_database_unavailable`: ``DatabaseUnavailable``, a
  lost or refused connection, a lock timeout) is not the item's fault: it propagates and
  aborts the pass as a whole, as before.
- **Anything else** is the item's failure: its transaction has already rolled back (the
  isolation wraps it), so no money moved half-way. The failure is recorded in
  ``worker_item_failures`` (own transaction: ids and a stable code, no personal data), logged
  once as a warning with the item id and the code — the traceback only at debug level, as
  exception messages may carry row values —, and the item is left alone for a while
  (``limits.WORKER_ITEM_BACKOFF_S``), then tried again. At the
  ``limits.WORKER_ITEM_FAILURES_MAX``-th failure in a row it is **parked**: never tried again
  by itself, logged as an error, named again in a warning every
  ``limits.WORKER_PARKED_REPORT_S`` while any is parked, listed by ``paykeep worker-items``
  and released by an operator (``paykeep worker-items release``) once the cause is fixed.
- **A lost race** (a typed error marked ``transient``, such as ``concurrent_update``: another
  worker or request changed the item between read and write) is neither: nothing is
  recorded or forgotten, and the next pass reads the item afresh.
- **Success** forgets an earlier failure of the item.

The record lives in the database, so every worker process sees the same backoff, a restart
forgets nothing, and an operator can see what is parked.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import psycopg
import sqlalchemy as sa

from paykeep import limits
from paykeep.clock import Clock
from paykeep.db.engine import Database
from paykeep.db.errors import DatabaseUnavailable
from paykeep.errors import PaykeepError

log = logging.getLogger("paykeep.workers.items")

T = TypeVar("T")

#: Longest stored error code (the column's width).
ERROR_CODE_LENGTH_MAX: Final = 100
PASS_NAME_LENGTH_MAX: Final = 64
ITEM_ID_LENGTH_MAX: Final = 128

_COLUMNS = (
    "pass_name, item_id, failures, error_code, first_failed_at_ns, last_failed_at_ns, "
    "next_attempt_at_ns, parked_at_ns"
)


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be used right now — busy, unreachable, the
    connection lost, a lock not granted in time — rather than that one item is bad. Such an
    error aborts a pass as a whole; it must never park an item."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return True  # connection refused or lost, lock or statement timeout, SQLite busy
    # The same from the drivers themselves (the ledger's bulk paths use their cursors).
    if isinstance(exc, (sqlite3.OperationalError, sqlite3.InterfaceError)):
        return True
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return True
    return isinstance(exc, sa.exc.DBAPIError) and bool(exc.connection_invalidated)


def error_code(exc: BaseException) -> str:
    """A stable code for ``exc``, safe to log and store: a typed error's own code, the kind
    of a database error, else the exception's class (never its message, which may quote row
    values)."""
    if isinstance(exc, PaykeepError):
        code = exc.code
    elif isinstance(exc, (sa.exc.IntegrityError, sqlite3.IntegrityError, psycopg.IntegrityError)):
        code = "database_integrity_error"
    elif isinstance(exc, (sa.exc.DataError, sqlite3.DataError, psycopg.DataError)):
        code = "database_data_error"  # e.g. a value too long for its column
    elif isinstance(exc, (sa.exc.DBAPIError, sqlite3.DatabaseError, psycopg.DatabaseError)):
        code = "database_error"
    else:
        code = f"unexpected:{type(exc).__name__}"
    return code[:ERROR_CODE_LENGTH_MAX]


def backoff_s(failures: int, schedule: Sequence[int] = limits.WORKER_ITEM_BACKOFF_S) -> int | None:
    """How long an item that has failed ``failures`` times in a row is left alone (the
    ``failures``-th wait of ``schedule``); None once it is parked (one failure more than
    ``schedule`` has waits)."""
    assert failures >= 1
    if failures > len(schedule):
        return None
    return schedule[failures - 1]


@dataclass(frozen=True)
class ItemFailure:
    """What ``worker_item_failures`` holds for one item of one pass."""

    pass_name: str
    item_id: str
    failures: int
    error_code: str
    first_failed_at_ns: int
    last_failed_at_ns: int
    next_attempt_at_ns: int | None
    parked_at_ns: int | None

    @property
    def parked(self) -> bool:
        return self.parked_at_ns is not None

    def blocks(self, now_ns: int) -> bool:
        """Whether the pass leaves the item alone at ``now_ns``."""
        return self.parked or (self.next_attempt_at_ns or 0) > now_ns

    def to_json(self) -> dict[str, Any]:
        return {
            "pass": self.pass_name,
            "item": self.item_id,
            "failures": self.failures,
            "error_code": self.error_code,
            "first_failed_at_ns": self.first_failed_at_ns,
            "last_failed_at_ns": self.last_failed_at_ns,
            "next_attempt_at_ns": self.next_attempt_at_ns,
            "parked_at_ns": self.parked_at_ns,
        }


def _failure(row: Sequence[Any]) -> ItemFailure:
    return ItemFailure(
        str(row[0]), str(row[1]), int(row[2]), str(row[3]), int(row[4]), int(row[5]),
        None if row[6] is None else int(row[6]), None if row[7] is None else int(row[7]),
    )  # fmt: skip


class Quarantine:
    """The failure records of every pass on one database (one per service; thread-safe)."""

    def __init__(self, database: Database, clock: Clock) -> None:
        self.database = database
        self.clock = clock
        self._lock = threading.Lock()
        #: Pass name -> when its parked items were last named in the log (ns, ``clock``).
        self._reported_ns: dict[str, int] = {}

    def open(
        self, pass_name: str, backoff: Sequence[int] = limits.WORKER_ITEM_BACKOFF_S
    ) -> PassItems:
        """The items of ``pass_name`` to leave alone now, for one run of the pass; names the
        parked ones in the log, at most every ``WORKER_PARKED_REPORT_S``. ``backoff``: the
        waits after each failure in a row (a pass that cannot go round an item waits less)."""
        assert 1 <= len(pass_name) <= PASS_NAME_LENGTH_MAX
        now_ns = self.clock.now_ns()
        with self.database.read() as conn:
            rows = conn.execute(
                sa.text(
                    f"SELECT {_COLUMNS} FROM worker_item_failures WHERE pass_name = :p "
                    "ORDER BY last_failed_at_ns DESC LIMIT :n"
                ),
                {"p": pass_name, "n": limits.WORKER_ITEM_FAILURES_LOADED_MAX},
            ).all()
        known = {f.item_id: f for f in map(_failure, rows)}
        parked = [f for f in known.values() if f.parked]
        if parked:
            with self._lock:
                last = self._reported_ns.get(pass_name)
                due = last is None or now_ns - last >= limits.WORKER_PARKED_REPORT_S * 10**9
                if due:
                    self._reported_ns[pass_name] = now_ns
            if due:
                oldest = min(parked, key=lambda f: f.parked_at_ns or 0)
                log.warning(
                    "worker %s: %d item(s) parked (failing again and again, or set aside), "
                    "e.g. %s (%s); see `paykeep worker-items`",
                    pass_name, len(parked), oldest.item_id, oldest.error_code,
                )  # fmt: skip
        return PassItems(self, pass_name, known, now_ns, tuple(backoff))

    def failures(self, pass_name: str | None = None, *, limit: int = 100) -> list[ItemFailure]:
        """The failure records (of one pass, or all), parked first, then the latest."""
        where = "" if pass_name is None else "WHERE pass_name = :p "
        with self.database.read() as conn:
            rows = conn.execute(
                sa.text(
                    f"SELECT {_COLUMNS} FROM worker_item_failures {where}"
                    "ORDER BY CASE WHEN parked_at_ns IS NULL THEN 1 ELSE 0 END, "
                    "last_failed_at_ns DESC, pass_name, item_id LIMIT :n"
                ),
                {"p": pass_name, "n": limit},
            ).all()
        return [_failure(r) for r in rows]

    def release(self, pass_name: str, item_id: str) -> bool:
        """An operator fixed the cause: the item is tried again on the pass's next run (with
        a fresh count of failures). False if it had no record."""
        gone = self.forget_parked(pass_name, item_id)
        if gone:
            log.warning("worker %s: item %s released by an operator", pass_name, item_id)
        return gone

    def purge_stale(self) -> int:
        """Forget failures not repeated for ``WORKER_ITEM_FAILURE_KEEP_S`` (the item left the
        pass: another worker handled it, an operator settled it); parked ones are kept."""
        before = self.clock.now_ns() - limits.WORKER_ITEM_FAILURE_KEEP_S * 10**9
        with self.database.write() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "DELETE FROM worker_item_failures "
                        "WHERE parked_at_ns IS NULL AND last_failed_at_ns < :t"
                    ),
                    {"t": before},
                ).rowcount
            )

    def forget_parked(self, pass_name: str, item_id: str) -> bool:
        """Drop the item's record, parked or not (``release``, ``PassItems.handled_elsewhere``);
        False if it had none."""
        with self.database.write() as conn:
            return bool(
                conn.execute(
                    sa.text(
                        "DELETE FROM worker_item_failures WHERE pass_name = :p AND item_id = :i"
                    ),
                    {"p": pass_name, "i": item_id},
                ).rowcount
            )

    def _forget(self, pass_name: str, item_id: str) -> None:
        with self.database.write() as conn:
            conn.execute(
                sa.text(
                    "DELETE FROM worker_item_failures "
                    "WHERE pass_name = :p AND item_id = :i AND parked_at_ns IS NULL"
                ),
                {"p": pass_name, "i": item_id},
            )

    def _record(
        self, pass_name: str, item_id: str, code: str, backoff: Sequence[int]
    ) -> ItemFailure:
        """One more failure of the item, in a transaction of its own (the item's rolled back)."""
        now_ns = self.clock.now_ns()
        lock = " FOR UPDATE" if self.database.is_postgres else ""
        with self.database.write() as conn:
            row = conn.execute(
                sa.text(
                    f"SELECT {_COLUMNS} FROM worker_item_failures "
                    f"WHERE pass_name = :p AND item_id = :i{lock}"
                ),
                {"p": pass_name, "i": item_id},
            ).first()
            before = None if row is None else _failure(row)
            failures = 1 if before is None else before.failures + 1
            wait_s = backoff_s(failures, backoff)
            failure = ItemFailure(
                pass_name, item_id, failures, code,
                now_ns if before is None else before.first_failed_at_ns, now_ns,
                None if wait_s is None else now_ns + wait_s * 10**9,
                now_ns if wait_s is None else None,
            )  # fmt: skip
            values = {
                "p": pass_name, "i": item_id, "f": failure.failures, "c": code,
                "first": failure.first_failed_at_ns, "last": now_ns,
                "next": failure.next_attempt_at_ns, "parked": failure.parked_at_ns,
            }  # fmt: skip
            if before is None:
                conn.execute(
                    sa.text(
                        f"INSERT INTO worker_item_failures ({_COLUMNS}) "
                        "VALUES (:p, :i, :f, :c, :first, :last, :next, :parked)"
                    ),
                    values,
                )
            else:
                conn.execute(
                    sa.text(
                        "UPDATE worker_item_failures SET failures = :f, error_code = :c, "
                        "last_failed_at_ns = :last, next_attempt_at_ns = :next, "
                        "parked_at_ns = :parked WHERE pass_name = :p AND item_id = :i"
                    ),
                    values,
                )
        return failure


class PassItems:
    """One run of one pass: which items to leave alone, and the isolation of each item."""

    def __init__(
        self,
        quarantine: Quarantine,
        pass_name: str,
        known: dict[str, ItemFailure],
        now_ns: int,
        backoff: tuple[int, ...],
    ) -> None:
        self.quarantine = quarantine
        self.pass_name = pass_name
        self.backoff = backoff
        self._known = known
        self.blocked = frozenset(i for i, f in known.items() if f.blocks(now_ns))
        #: Items that failed in this run (ids), in order.
        self.failed: list[str] = []
        #: Items parked, before or in this run.
        self.parked = {i for i, f in known.items() if f.parked}

    def blocked_at(self, now_ns: int) -> frozenset[str]:
        """The items left alone at ``now_ns`` (for a caller that keeps this view a while)."""
        return frozenset(i for i, f in self._known.items() if f.blocks(now_ns))

    def knows(self, item_id: str) -> bool:
        """Whether the item has a failure on record (as this view last saw it)."""
        return item_id in self._known

    @property
    def fetch(self) -> int:
        """How many more candidates to read than the pass handles, so that items left alone
        never fill its batch."""
        return len(self.blocked)

    def due(self, candidates: Sequence[T], limit: int, key: Callable[[T], str] = str) -> list[T]:
        """``candidates`` (read ``limit + fetch`` of them) less the items left alone, at most
        ``limit``."""
        return [c for c in candidates if key(c) not in self.blocked][:limit]

    @contextmanager
    def isolated(self, item_id: str, expected: tuple[type[Exception], ...] = ()) -> Iterator[None]:
        """Handle one item. An unexpected exception in the block is the item's failure:
        recorded, logged, suppressed — the pass goes on with the next item. The database
        being unavailable propagates (the pass stops), and so do the typed business outcomes
        the pass handles itself (``expected``: a decline, insufficient funds, ...). Wrap the
        item's whole transaction, so it has rolled back before the failure is recorded."""
        assert 1 <= len(item_id) <= ITEM_ID_LENGTH_MAX
        try:
            yield
        except expected:
            raise
        except Exception as exc:
            if is_database_unavailable(exc):
                raise
            if isinstance(exc, PaykeepError) and exc.transient:
                # Another worker or request changed the item meanwhile: nothing is wrong with
                # it, and the next pass reads it afresh. Neither a failure nor a success.
                log.debug("worker %s: item %s changed meanwhile (%s)", self.pass_name,
                          item_id, exc.code)  # fmt: skip
                return
            self.failure(item_id, exc)
            return
        self.success(item_id)

    def success(self, item_id: str) -> None:
        """The item was handled: an earlier failure of it is forgotten."""
        earlier = self._known.get(item_id)
        if earlier is not None and not earlier.parked:
            self.quarantine._forget(self.pass_name, item_id)
            del self._known[item_id]

    def park(self, item_id: str, exc: Exception) -> ItemFailure:
        """Set the item aside at once, with ``exc``'s code: trying it again cannot change
        the outcome (a bank file the parser refuses stays refused), so it waits for an
        operator (``paykeep worker-items``) instead of being fetched and refused every run."""
        code = error_code(exc)
        failure = self.quarantine._record(self.pass_name, item_id, code, ())
        self._known[item_id] = failure
        self.parked.add(item_id)
        log.warning("worker %s: item %s set aside (%s); see `paykeep worker-items`",
                    self.pass_name, item_id, code)  # fmt: skip
        return failure

    def handled_elsewhere(self, item_id: str) -> None:
        """The item was done outside the pass (an operator imported a corrected file): its
        record, parked or not, no longer stands for anything."""
        if self._known.pop(item_id, None) is not None:
            self.quarantine.forget_parked(self.pass_name, item_id)
            self.parked.discard(item_id)

    def failure(self, item_id: str, exc: Exception) -> ItemFailure:
        """The item failed with ``exc`` (not the database being unavailable), its work
        rolled back: record, log, back off or park. Call outside any transaction."""
        assert not is_database_unavailable(exc)
        code = error_code(exc)
        self.failed.append(item_id)
        failure = self.quarantine._record(self.pass_name, item_id, code, self.backoff)
        self._known[item_id] = failure
        if failure.parked:
            self.parked.add(item_id)
        # The message names ids and the code only; the traceback (whose text may quote row
        # values) goes to the debug log.
        log.debug("worker %s: item %s failed", self.pass_name, item_id, exc_info=exc)
        if failure.parked:
            log.error(
                "worker %s: item %s parked after %d failures in a row (%s); it is left alone "
                "until an operator releases it (`paykeep worker-items release`)",
                self.pass_name, item_id, failure.failures, code,
            )  # fmt: skip
        else:
            log.warning(
                "worker %s: item %s failed (%s), failure %d of %d; tried again in %d s",
                self.pass_name, item_id, code, failure.failures, len(self.backoff) + 1,
                backoff_s(failure.failures, self.backoff) or 0,
            )  # fmt: skip
        return failure
