"""The worker's and the case queue's hot queries use their indexes (SQLite's plan of the very
statement the repository sends, captured as it runs): without them a pass would read every
payout ever made, and an officer's queue every case."""

from __future__ import annotations

import sqlite3

import pytest

from paykeep.aml.cases.model import CaseState
from paykeep.aml.cases.repository import CaseRepository
from paykeep.db import Database
from paykeep.payments.repository import PaymentsRepository


def _plans(database: Database, run: object) -> list[str]:
    """SQLite's query plan of each statement ``run(conn)`` sent."""
    sent: list[str] = []
    with database.engine.connect() as conn:
        raw = Database.driver_connection(conn)
        assert isinstance(raw, sqlite3.Connection)
        raw.set_trace_callback(sent.append)
        try:
            run(conn)  # type: ignore[operator]
        finally:
            raw.set_trace_callback(None)
        return [
            " / ".join(str(row[3]) for row in raw.execute("EXPLAIN QUERY PLAN " + sql))
            for sql in sent
            if sql.lstrip().upper().startswith("SELECT")
        ]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_open_payouts_are_read_through_their_partial_index(database: Database) -> None:
    plans = _plans(
        database, lambda conn: PaymentsRepository(conn, postgres=False).open_payouts("po_0", 10)
    )
    assert len(plans) == 1
    assert "USING INDEX ix_payments_payouts_open" in plans[0]
    assert "TEMP B-TREE" not in plans[0]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_an_officers_queue_is_read_through_the_assignee_index(database: Database) -> None:
    plans = _plans(
        database,
        lambda conn: CaseRepository(conn).page(
            CaseState.OPEN, 0, 50, assignee="key_0001a2b3c4d5e6f7"
        ),
    )
    assert len(plans) == 1
    assert "USING INDEX ix_aml_cases_assignee" in plans[0]
