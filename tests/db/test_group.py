"""GroupWriter: many callers, one COMMIT per group, each operation isolated by a SAVEPOINT."""

from __future__ import annotations

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
