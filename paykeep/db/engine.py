"""Engine creation and the unit of work.

SQLite runs in WAL mode with ``synchronous=FULL``: every commit is fsynced, so a commit that
returned survives a power cut, not just a process crash. Writers take the lock up front
(``BEGIN IMMEDIATE``) so a read-then-write transaction can never be overtaken.
PostgreSQL runs at READ COMMITTED; writers lock the rows they change in a fixed order.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from paykeep.config import Settings
from paykeep.db.errors import DatabaseUnavailable, DatabaseUrlInvalid
from paykeep.db.fairlock import FairRLock
from paykeep.limits import DB_LOCK_TIMEOUT_S

if TYPE_CHECKING:
    from paykeep.security.fields import FieldCipher

log = logging.getLogger(__name__)

#: A process waiting for another's write retries after this long, doubling up to the max.
WRITER_LOCK_POLL_MIN_S: Final = 0.0002
WRITER_LOCK_POLL_MAX_S: Final = 0.002

#: FULL (the default) fsyncs the WAL on every commit: a commit that returned survives a power
#: cut. NORMAL (opt-in via PAYKEEP_SQLITE_SYNCHRONOUS) survives a process crash but may lose
#: the last commits on power loss; benchmarks state which one they ran with.
SQLITE_SYNCHRONOUS = os.environ.get("PAYKEEP_SQLITE_SYNCHRONOUS", "FULL").upper()
if SQLITE_SYNCHRONOUS not in ("FULL", "NORMAL", "EXTRA"):
    raise SystemExit(
        f"PAYKEEP_SQLITE_SYNCHRONOUS must be FULL, NORMAL or EXTRA, not {SQLITE_SYNCHRONOUS!r}"
    )


class Closeable(Protocol):
    def close(self) -> None: ...


_C = TypeVar("_C", bound=Closeable)


class Database:
    """A configured engine plus the one place transactions begin and end."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            raise DatabaseUrlInvalid(f"unsupported database {self.dialect!r}")
        # SQLite has one writer. Threads of this process queue here, in arrival order (see
        # paykeep.db.fairlock), instead of in SQLite's busy handler, which sleeps in steps of
        # up to 100 ms and turned a few ms of queueing into p99 latencies of half a second.
        self._sqlite_writer = FairRLock()
        # ...and processes (``paykeep serve --workers N``, a CLI beside a server) queue on an
        # advisory lock file: a waiting process retries every few milliseconds at most, where
        # SQLite's busy handler backs off to 100 ms sleeps (p99 latencies over a second with
        # two API processes, measured). SQLite's own lock stays the guarantee underneath.
        self._writer_lock_fds: tuple[int, int] | None = None
        path = engine.url.database if self.is_sqlite else None
        self._writer_lock_path = (
            f"{path}.writer.lock" if path and path != ":memory:" and not path.startswith("file:")
            else None
        )  # fmt: skip
        # Per-database helpers other packages attach (the ledger's SQLite postings indexer):
        # made on first use, closed by ``dispose``.
        self._attachments: dict[str, Closeable] = {}
        self._attachments_lock = threading.Lock()

    def attachment(self, key: str, factory: Callable[[], _C]) -> _C:
        """The helper stored under ``key``, made by ``factory`` on first use (or first use
        after ``dispose``). One per database object, shared by every user of it."""
        found = self._attachments.get(key)
        if found is None:
            with self._attachments_lock:
                found = self._attachments.get(key)
                if found is None:
                    found = self._attachments[key] = factory()
        return found  # type: ignore[return-value]

    @property
    def sqlite_path(self) -> str | None:
        """The SQLite database file, or None (PostgreSQL, in-memory or URI databases)."""
        path = self.engine.url.database if self.is_sqlite else None
        if not path or path == ":memory:" or path.startswith("file:"):
            return None
        return path

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=False)

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: commits when the block ends normally, rolls back otherwise."""
        if not self.is_sqlite:
            with self.engine.connect() as conn, _after_commit_hooks(conn) as hooks:
                conn.begin()
                try:
                    yield conn
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
            _run_after_commit(hooks)
            return
        if not self._sqlite_writer.acquire(timeout=DB_LOCK_TIMEOUT_S):
            raise DatabaseUnavailable(
                f"another writer held the database for {DB_LOCK_TIMEOUT_S:.0f} s; retry"
            )
        try:
            with (
                self._other_processes_wait(),
                self.engine.connect() as conn,
                _after_commit_hooks(conn) as hooks,
            ):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
        finally:
            self._sqlite_writer.release()
        _run_after_commit(hooks)

    @staticmethod
    def after_commit(conn: Connection, hook: Callable[[], object]) -> bool:
        """Run ``hook`` once the write transaction ``conn`` belongs to has committed, after
        the write lock is released; never if it (or the group commit's SAVEPOINT around the
        caller) rolls back. For work that must see the commit (waking an indexer), never for
        work the commit depends on: a hook that fails is logged and the commit stands.

        False, and ``hook`` is not kept, when ``conn`` is not in a transaction that
        :meth:`write` opened (nothing here learns when that one commits), or when it holds
        ``AFTER_COMMIT_HOOKS_MAX`` hooks already: callers' hooks must be optional."""
        hooks = conn.info.get(_AFTER_COMMIT_KEY)
        if hooks is None or len(hooks) >= AFTER_COMMIT_HOOKS_MAX:
            return False
        hooks.append(hook)
        return True

    @contextmanager
    def _other_processes_wait(self) -> Iterator[None]:
        """Hold the writer lock file (taken by this process's one writing thread at a time).

        A turnstile in front of it makes the hand-over fair: a waiting process holds the
        turnstile while it waits for the lock, so the process that just wrote cannot take the
        lock straight back (with the lock alone, a busy process re-took it between another's
        polls: p99 0.6–0.7 s at two API processes, measured)."""
        fds = self._writer_lock_fds
        if fds is None and self._writer_lock_path is not None:
            try:  # opened on the first write (this thread holds the process's writer lock)
                fds = self._writer_lock_fds = (
                    os.open(f"{self._writer_lock_path}.queue", os.O_RDWR | os.O_CREAT, 0o600),
                    os.open(self._writer_lock_path, os.O_RDWR | os.O_CREAT, 0o600),
                )
            except OSError:
                fds = None  # no such directory: SQLite's own error says so when it connects
        if fds is None:
            yield
            return
        turnstile, lock = fds
        deadline = time.monotonic() + DB_LOCK_TIMEOUT_S
        _flock_by(turnstile, deadline)
        try:
            _flock_by(lock, deadline)
        finally:
            _unlock(turnstile)
        try:
            yield
        finally:
            _unlock(lock)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (one consistent snapshot on both databases)."""
        with self.engine.connect() as conn:
            if self.is_sqlite:
                conn.exec_driver_sql("BEGIN")
                try:
                    yield conn
                finally:
                    conn.rollback()
                return
            # The driver opens the transaction itself (its own BEGIN) at the first statement, so
            # the snapshot's level is set on the connection before it, not by a statement of
            # ours (which came second: a round trip and a "transaction in progress" warning
            # each time). The pool puts both characteristics back when the connection returns.
            conn = conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            conn.begin()
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            # COMMIT, not ROLLBACK: the same for a read-only transaction, but psycopg drops every
            # prepared statement of the connection after a ROLLBACK (one DEALLOCATE ALL round
            # trip, and each statement prepared again later).
            conn.commit()

    @staticmethod
    def driver_connection(conn: Connection) -> Any:
        """The DBAPI connection under ``conn`` (sqlite3 or psycopg), for bulk hot paths."""
        raw = conn.connection.driver_connection
        assert raw is not None, "connection is closed"
        return raw

    def dispose(self) -> None:
        with self._attachments_lock:
            attachments = list(self._attachments.values())
            self._attachments.clear()
        for helper in attachments:  # before the engine: a helper may still be using it
            helper.close()
        self.engine.dispose()
        if self._writer_lock_fds is not None:  # a later write opens them again
            for fd in self._writer_lock_fds:
                os.close(fd)
            self._writer_lock_fds = None


def _flock_by(fd: int, deadline: float) -> None:
    """Take an exclusive advisory lock on ``fd``, retrying every 0.2–2 ms until ``deadline``."""
    pause_s = WRITER_LOCK_POLL_MIN_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise DatabaseUnavailable(
                    f"another process held the database for {DB_LOCK_TIMEOUT_S:.0f} s; retry"
                ) from None
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, WRITER_LOCK_POLL_MAX_S)


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):  # closed by dispose() meanwhile: nothing held
        fcntl.flock(fd, fcntl.LOCK_UN)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let us own transaction boundaries (BEGIN IMMEDIATE); the driver must not open its own.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(DB_LOCK_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def create_engine_for(url: str) -> Engine:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise DatabaseUrlInvalid(f"not a database URL: {url!r}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        in_memory = parsed.database in (None, "", ":memory:")
        engine = sa.create_engine(
            parsed,
            poolclass=NullPool if in_memory else None,
            # Enough pooled connections for a thread pool of API handlers: a connection made
            # on demand and discarded runs the on-connect PRAGMAs every time.
            **({} if in_memory else {"pool_size": 16, "max_overflow": 48}),
            connect_args={"check_same_thread": False, "timeout": DB_LOCK_TIMEOUT_S},
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    if backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return sa.create_engine(
            parsed,
            pool_size=8,
            max_overflow=32,
            pool_pre_ping=True,
            connect_args={
                "connect_timeout": 10,
                "options": f"-c lock_timeout={int(DB_LOCK_TIMEOUT_S * 1000)}",
            },
        )
    raise DatabaseUrlInvalid(f"unsupported database {backend!r}: use sqlite or postgresql")


def open_database(settings: Settings, *, migrate: bool = True) -> Database:
    """Open (and by default migrate to the latest schema) the database ``settings`` name."""
    database = Database(create_engine_for(settings.effective_database_url))
    try:
        with database.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {database.engine.url.render_as_string(hide_password=True)}"
        ) from exc
    if migrate:
        from paykeep.db.migrate import upgrade

        # The field keys are loaded (or created) only if a migration has stored personal data
        # to seal: a fresh or current database never touches them.
        upgrade(database, cipher=lambda: field_cipher(settings))
    return database


def field_cipher(settings: Settings) -> FieldCipher:
    """The field cipher of ``settings``' data directory: its vault keys (``<data dir>/keys``,
    created on first use) or the environment's — the same keys the API runtime seals with."""
    from paykeep.gateway.vault.keys import VaultKeys
    from paykeep.security.fields import FieldCipher

    return FieldCipher(VaultKeys.load(settings.data_dir))


_AFTER_COMMIT_KEY: Final = "paykeep_after_commit"
#: Hooks one transaction may register (a group commit of 128 operations, a few each).
AFTER_COMMIT_HOOKS_MAX: Final = 1_024


@contextmanager
def _after_commit_hooks(conn: Connection) -> Iterator[list[Callable[[], object]]]:
    """The hook list of one write transaction, on the connection's info while it is open
    (the info dict outlives the checkout, so it is always removed)."""
    hooks: list[Callable[[], object]] = []
    conn.info[_AFTER_COMMIT_KEY] = hooks
    try:
        yield hooks
    finally:
        conn.info.pop(_AFTER_COMMIT_KEY, None)


def _run_after_commit(hooks: list[Callable[[], object]]) -> None:
    for hook in hooks:
        try:
            hook()
        except Exception:
            log.exception("an after-commit hook failed (the commit stands)")


def after_commit_mark(conn: Connection) -> int:
    """How many after-commit hooks ``conn``'s transaction holds: a SAVEPOINT's caller keeps
    this, and on ROLLBACK TO drops the hooks registered since (:func:`drop_after_commit`)."""
    return len(conn.info.get(_AFTER_COMMIT_KEY, ()))


def drop_after_commit(conn: Connection, mark: int) -> None:
    hooks = conn.info.get(_AFTER_COMMIT_KEY)
    if hooks is not None:
        del hooks[mark:]
