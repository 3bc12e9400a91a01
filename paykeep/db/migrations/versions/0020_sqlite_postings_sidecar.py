"""SQLite: the per-account journal index moves out of the main database file.

SQLite has one write lock per file, so an index kept in the main file had to be merged by the
writer inside its own transaction (~14 % of its time, every p99 batch). It now lives in
``<database>.postings`` beside the main file, written by an indexer that never takes the main
file's write lock (``paykeep.ledger.postings``); it is derived data and is built there from the
journal on first use. ``ledger_journal_head.indexed_seq`` stays 0 on SQLite (the index file
has its own progress row). PostgreSQL keeps ``ledger_postings`` and its inline merge.

Downgrade recreates the table (with its append-only guards) and indexes the whole journal.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

SQLITE_GUARDS = [
    """
    CREATE TRIGGER ledger_postings_no_update BEFORE UPDATE ON ledger_postings
    BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END
    """,
    """
    CREATE TRIGGER ledger_postings_no_delete BEFORE DELETE ON ledger_postings
    BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END
    """,
]


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP TRIGGER IF EXISTS ledger_postings_no_delete")
    op.execute("DROP TRIGGER IF EXISTS ledger_postings_no_update")
    op.drop_table("ledger_postings")
    op.execute("UPDATE ledger_journal_head SET indexed_seq = 0")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.create_table(
        "ledger_postings",
        sa.Column("account_id", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "seq", name="pk_ledger_postings"),
        sqlite_with_rowid=False,
    )
    op.execute(
        "INSERT INTO ledger_postings (account_id, seq) SELECT a, s FROM ("
        "SELECT debit_account_id AS a, seq AS s FROM ledger_transfers UNION ALL "
        "SELECT credit_account_id AS a, seq AS s FROM ledger_transfers) ORDER BY a, s"
    )
    op.execute("UPDATE ledger_journal_head SET indexed_seq = last_seq")
    for statement in SQLITE_GUARDS:
        op.execute(statement)
