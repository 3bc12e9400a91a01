"""SQLite writers of different processes queue on the writer lock file: a second process's
write waits for the first to commit, then goes ahead; one held past the lock timeout gets the
typed ``database_unavailable`` (retryable), never a half-written transaction."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from paykeep.db import engine as engine_module
from paykeep.db.engine import Database, create_engine_for
from paykeep.db.errors import DatabaseUnavailable

HOLDER = """
import sys, time
from paykeep.db.engine import Database, create_engine_for
db = Database(create_engine_for(sys.argv[1]))
with db.write() as conn:
    conn.exec_driver_sql("INSERT INTO t (who) VALUES ('holder')")
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
db.dispose()
"""


def _database(tmp_path: Path) -> tuple[str, Database]:
    url = f"sqlite:///{tmp_path / 'w.sqlite3'}"
    db = Database(create_engine_for(url))
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)")
    return url, db


def _hold(url: str, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


def test_a_second_process_waits_for_the_first_writer_then_writes(tmp_path: Path) -> None:
    url, db = _database(tmp_path)
    holder = _hold(url, 0.5)
    with db.write() as conn:  # blocks until the holder committed
        conn.exec_driver_sql("INSERT INTO t (who) VALUES ('waiter')")
    assert holder.wait(timeout=30) == 0
    with db.read() as conn:
        order = [r[0] for r in conn.execute(sa.text("SELECT who FROM t ORDER BY id"))]
    assert order == ["holder", "waiter"]
    db.dispose()


def test_a_writer_held_past_the_timeout_is_a_typed_retryable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, db = _database(tmp_path)
    monkeypatch.setattr(engine_module, "DB_LOCK_TIMEOUT_S", 0.3)
    holder = _hold(url, 3)
    try:
        with pytest.raises(DatabaseUnavailable) as caught, db.write() as conn:
            conn.exec_driver_sql("INSERT INTO t (who) VALUES ('late')")
        assert caught.value.code == "database_unavailable"
    finally:
        assert holder.wait(timeout=30) == 0
    with db.read() as conn:
        assert [r[0] for r in conn.execute(sa.text("SELECT who FROM t"))] == ["holder"]
    db.dispose()


WAITER = """
import sys
from paykeep.db.engine import Database, create_engine_for
db = Database(create_engine_for(sys.argv[1]))
with db.write() as conn:
    conn.exec_driver_sql("INSERT INTO t (who) VALUES ('waiter')")
db.dispose()
"""


def test_a_waiting_process_gets_the_lock_before_the_writer_that_released_it(
    tmp_path: Path,
) -> None:
    url, db = _database(tmp_path)
    queue = os.open(f"{tmp_path / 'w.sqlite3'}.writer.lock.queue", os.O_RDWR | os.O_CREAT)
    with db.write() as conn:
        conn.exec_driver_sql("INSERT INTO t (who) VALUES ('first')")
        waiter = subprocess.Popen([sys.executable, "-c", WAITER, url])
        # Until the waiter holds the turnstile (it waits there for the lock this test holds).
        deadline = time.monotonic() + 30
        while True:
            try:
                fcntl.flock(queue, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(queue, fcntl.LOCK_UN)
            except BlockingIOError:
                break
            assert time.monotonic() < deadline, "the waiter never queued"
            time.sleep(0.01)
    # Straight back for another write: the waiter, queued first, must go first.
    with db.write() as conn:
        conn.exec_driver_sql("INSERT INTO t (who) VALUES ('again')")
    assert waiter.wait(timeout=30) == 0
    os.close(queue)
    with db.read() as conn:
        order = [r[0] for r in conn.execute(sa.text("SELECT who FROM t ORDER BY id"))]
    assert order == ["first", "waiter", "again"]
    db.dispose()
