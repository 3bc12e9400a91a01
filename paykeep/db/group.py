"""Group commit for arbitrary write operations (SQLite).

SQLite has one writer and a durable commit costs one fsync (~1.3 ms here): operations that
each commit alone cannot exceed ~700 commits/s however many threads ask. ``GroupWriter``
runs the operations of many threads in one transaction on one writer thread — each inside
its own SAVEPOINT, so an operation that fails rolls back alone and its caller gets its
exception — and commits once for the group. A caller returns only after the COMMIT that made
its work durable; if that COMMIT fails, every operation of the group is run again alone.

On PostgreSQL, which runs concurrent transactions itself, ``run`` is simply a transaction in
the calling thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final, TypeVar

from sqlalchemy import Connection

from paykeep.db.engine import Database, after_commit_mark, drop_after_commit
from paykeep.db.errors import DatabaseUnavailable

T = TypeVar("T")

#: Operations in one group (one COMMIT), and how many may wait for the writer at once.
GROUP_OPERATIONS_MAX: Final = 128
GROUP_QUEUE_MAX: Final = 4_096
#: How long a caller waits for its group's commit before giving up with a typed error.
GROUP_WAIT_S: Final = 30.0

Operation = Callable[[Connection], Any]


class GroupWriter:
    """``run(op)`` executes ``op(conn)`` in a write transaction shared with other callers."""

    def __init__(self, database: Database, *, operations_max: int = GROUP_OPERATIONS_MAX) -> None:
        self.database = database
        self.operations_max = operations_max
        self._queue: queue.Queue[tuple[Operation, Future[Any]] | None] = queue.Queue(
            GROUP_QUEUE_MAX
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.groups = 0
        self.operations = 0

    def run(self, op: Callable[[Connection], T]) -> T:
        if not self.database.is_sqlite:
            with self.database.write() as conn:
                return op(conn)
        self._start()
        future: Future[T] = Future()
        try:
            self._queue.put((op, future), timeout=GROUP_WAIT_S)
        except queue.Full:
            raise DatabaseUnavailable("too many writes are waiting; retry") from None
        return future.result(timeout=GROUP_WAIT_S)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=GROUP_WAIT_S)

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="paykeep-group-writer", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < self.operations_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this group
                    break
                group.append(item)
            self._commit(group)

    def _commit(self, group: list[tuple[Operation, Future[Any]]]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self.database.write() as conn:
                for op, _future in group:
                    outcomes.append(_in_savepoint(conn, op))
        except BaseException as exc:  # the COMMIT (or BEGIN) itself failed
            if len(group) == 1:
                group[0][1].set_exception(exc)
                return
            for item in group:  # each alone: one bad operation must not fail the others
                self._commit([item])
            return
        self.groups += 1
        self.operations += len(group)
        for (_op, future), (ok, value) in zip(group, outcomes, strict=True):
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


def _in_savepoint(conn: Connection, op: Operation) -> tuple[bool, Any]:
    conn.exec_driver_sql("SAVEPOINT paykeep_op")
    hooks = after_commit_mark(conn)
    try:
        value = op(conn)
    except BaseException as exc:  # handed to the caller's future
        conn.exec_driver_sql("ROLLBACK TO SAVEPOINT paykeep_op")
        drop_after_commit(conn, hooks)  # what it asked to run after the commit goes with it
        conn.exec_driver_sql("RELEASE SAVEPOINT paykeep_op")
        return False, exc
    conn.exec_driver_sql("RELEASE SAVEPOINT paykeep_op")
    return True, value
