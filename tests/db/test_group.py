"""GroupWriter: many callers, one COMMIT per group, each operation isolated by a SAVEPOINT."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from paykeep.db import Database
from paykeep.db.group import GroupWriter
from paykeep.errors import InvalidInput

_INSERT = sa.text("INSERT INTO payments_outbox_cursor (name, seq) VALUES (:n, :s)")


def _count(database: Database) -> int:
    with database.read() as conn:
        return int(
            conn.execute(sa.text("SELECT count(*) FROM payments_outbox_cursor")).scalar_one()
        )


def test_concurrent_operations_all_commit_and_failures_roll_back_alone(database: Database) -> None:
    writer = GroupWriter(database)

    def op(i: int) -> int:
        def body(conn: sa.Connection) -> int:
            conn.execute(_INSERT, {"n": f"k{i}", "s": i})
            if i % 7 == 0:
                raise InvalidInput(f"operation {i} refuses")
            return i

        try:
            return writer.run(body)
        except InvalidInput:
            return -1

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(op, range(200)))
    writer.close()
    failed = [i for i in range(200) if i % 7 == 0]
    assert [r for r in results if r == -1] == [-1] * len(failed)
    assert sorted(r for r in results if r >= 0) == [i for i in range(200) if i % 7]
    assert _count(database) == 200 - len(failed)
    with database.read() as conn:
        names = {r[0] for r in conn.execute(sa.text("SELECT name FROM payments_outbox_cursor"))}
    assert not names & {f"k{i}" for i in failed}
    if database.is_sqlite:
        assert writer.groups < 200  # several operations shared a commit


def test_a_caller_gets_its_own_exception_type(database: Database) -> None:
    writer = GroupWriter(database)

    def boom(_conn: sa.Connection) -> None:
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        writer.run(boom)
    assert writer.run(lambda conn: conn.execute(sa.text("SELECT 41 + 1")).scalar_one()) == 42
    writer.close()


def test_a_unique_violation_in_one_operation_leaves_the_group_committed(database: Database) -> None:
    writer = GroupWriter(database)
    writer.run(lambda conn: conn.execute(_INSERT, {"n": "dup", "s": 1}))
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def op(i: int) -> None:
        barrier.wait()
        try:
            writer.run(
                lambda conn: conn.execute(_INSERT, {"n": "dup" if i == 3 else f"u{i}", "s": i})
            )
            outcomes.append("ok")
        except sa.exc.IntegrityError:
            outcomes.append("dup")

    threads = [threading.Thread(target=op, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert sorted(outcomes) == ["dup"] + ["ok"] * 7
    assert _count(database) == 8


# --- after-commit hooks ------------------------------------------------------------------------


def test_after_commit_hooks_run_after_the_commit_and_never_for_work_rolled_back(
    database: Database,
) -> None:
    ran: list[str] = []

    def seen_committed(name: str) -> None:
        # Runs after the COMMIT: a fresh read transaction sees the row.
        with database.read() as conn:
            found = conn.execute(
                sa.text("SELECT count(*) FROM payments_outbox_cursor WHERE name = :n"),
                {"n": name},
            ).scalar_one()
        ran.append(f"{name}:{found}")

    with database.write() as conn:
        conn.execute(_INSERT, {"n": "kept", "s": 1})
        assert Database.after_commit(conn, lambda: seen_committed("kept"))
        assert ran == []  # not before the commit
    assert ran == ["kept:1"]

    def rolled_back() -> None:
        with database.write() as conn:
            conn.execute(_INSERT, {"n": "gone", "s": 2})
            Database.after_commit(conn, lambda: ran.append("rolled back"))
            raise InvalidInput("no")

    with pytest.raises(InvalidInput):
        rolled_back()
    assert ran == ["kept:1"]

    # In a group: the hook of an operation whose SAVEPOINT rolled back is dropped with it;
    # its neighbours' hooks run once the group has committed.
    writer = GroupWriter(database)

    def op(i: int) -> None:
        def body(conn: sa.Connection) -> None:
            conn.execute(_INSERT, {"n": f"g{i}", "s": i})
            Database.after_commit(conn, lambda: seen_committed(f"g{i}"))
            if i % 3 == 0:
                raise InvalidInput("refused")

        with contextlib.suppress(InvalidInput):
            writer.run(body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(op, range(30)))
    writer.close()
    assert sorted(ran[1:]) == sorted(f"g{i}:1" for i in range(30) if i % 3)


def test_a_failing_hook_leaves_the_commit_and_the_other_hooks(database: Database) -> None:
    ran: list[int] = []

    def boom() -> None:
        raise RuntimeError("hook failed")

    with database.write() as conn:
        conn.execute(_INSERT, {"n": "stands", "s": 1})
        Database.after_commit(conn, boom)
        Database.after_commit(conn, lambda: ran.append(1))
    assert ran == [1] and _count(database) == 1
    with database.engine.connect() as conn:  # not a transaction Database.write opened
        assert not Database.after_commit(conn, lambda: ran.append(2))
    with database.write() as conn:  # and the info dict keeps no hooks across checkouts
        pass
    assert ran == [1]
