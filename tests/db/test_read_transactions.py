"""``Database.read()``: one consistent snapshot on both databases, read-only on PostgreSQL, and
the pooled connection goes back to ordinary writes afterwards."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from paykeep.db import Database

_INSERT = sa.text("INSERT INTO payments_outbox_cursor (name, seq) VALUES (:n, :s)")
_COUNT = sa.text("SELECT count(*) FROM payments_outbox_cursor")


def test_a_read_sees_one_snapshot_while_others_commit(database: Database) -> None:
    with database.read() as reading:
        before = reading.execute(_COUNT).scalar_one()
        # Another transaction commits a row between two reads of the same transaction.
        with database.write() as conn:
            conn.execute(_INSERT, {"n": "snapshot-test", "s": 1})
        assert reading.execute(_COUNT).scalar_one() == before
    with database.read() as reading:
        assert reading.execute(_COUNT).scalar_one() == before + 1


# SQLite's read transaction is a deferred BEGIN; READ ONLY and isolation levels are PostgreSQL
# connection characteristics.
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_read_on_postgresql_cannot_write(database: Database) -> None:
    with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"), database.read() as conn:
        conn.execute(_INSERT, {"n": "refused", "s": 1})
    with database.read() as conn:
        assert conn.execute(_COUNT).scalar_one() == 0


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_the_pool_gives_writers_back_an_ordinary_connection(database: Database) -> None:
    seen: list[tuple[str, str]] = []
    for _ in range(3):  # the pool hands the same connections out again
        with database.read() as conn:
            assert conn.execute(sa.text("SHOW transaction_isolation")).scalar_one() == (
                "repeatable read"
            )
            assert conn.execute(sa.text("SHOW transaction_read_only")).scalar_one() == "on"
        with database.write() as conn:
            seen.append(
                (
                    conn.execute(sa.text("SHOW transaction_isolation")).scalar_one(),
                    conn.execute(sa.text("SHOW transaction_read_only")).scalar_one(),
                )
            )
            conn.execute(_INSERT, {"n": f"writer-{len(seen)}", "s": len(seen)})
    assert seen == [("read committed", "off")] * 3


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_prepared_statements_outlive_a_read(database: Database) -> None:
    """A read ends with COMMIT: psycopg drops every prepared statement of a connection after a
    ROLLBACK, so reads that ended with one made the hot statements be parsed and planned again
    in every transaction (and cost a DEALLOCATE ALL round trip each)."""
    for _ in range(8):  # psycopg prepares a statement from its 5th execution
        with database.read() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.execute("SELECT count(*) FROM payments_outbox_cursor WHERE seq > %s", (0,))
            prepared = raw.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert prepared is not None and prepared[0] >= 1
