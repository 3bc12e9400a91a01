"""The ledger: accounts, the hash-chained transfer journal, open holds, the journal head.

On PostgreSQL the database enforces double entry again, independently of the engine:
- every UPDATE statement on accounts must change debits and credits by the same amount per
  currency (pending and posted separately) and may change nothing but balances;
- accounts are created with zero balances;
- a transfer's accounts exist and its currency equals theirs; a post/void names a pending
  transfer with the same accounts; the journal is append-only.
Balance limits are CHECK constraints on both databases. SQLite also refuses changes to journal
rows and to accounts' non-balance columns (triggers that never fire on the write path).

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# A BIGINT primary key that is the rowid on SQLite (fast appends), BIGINT on PostgreSQL.
ROWID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

LIMIT_CHECKS = [
    sa.CheckConstraint(
        "debits_pending >= 0 AND debits_posted >= 0 AND credits_pending >= 0 "
        "AND credits_posted >= 0",
        name="ck_ledger_accounts_balances_non_negative",
    ),
    sa.CheckConstraint(
        "(flags & 2) = 0 OR debits_pending + debits_posted <= credits_posted",
        name="ck_ledger_accounts_debits_must_not_exceed_credits",
    ),
    sa.CheckConstraint(
        "(flags & 4) = 0 OR credits_pending + credits_posted <= debits_posted",
        name="ck_ledger_accounts_credits_must_not_exceed_debits",
    ),
    sa.CheckConstraint("(flags & 6) <> 6", name="ck_ledger_accounts_flags_exclusive"),
    sa.CheckConstraint("code > 0 AND code <= 65535", name="ck_ledger_accounts_code"),
]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "ledger_accounts",
        sa.Column("id", ROWID, primary_key=True, autoincrement=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("code", sa.Integer, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("name", sa.String(128), nullable=True, unique=True),
        sa.Column("metadata", sa.Text, nullable=True),
        sa.Column("debits_pending", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("debits_posted", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("credits_pending", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("credits_posted", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("timestamp_ns", sa.BigInteger, nullable=False),
        *LIMIT_CHECKS,
    )
    op.create_table(
        "ledger_transfers",
        # Journal position: dense, strictly increasing, the order of the hash chain.
        sa.Column("seq", ROWID, primary_key=True, autoincrement=False),
        sa.Column("id", sa.BigInteger, nullable=False, unique=True),
        sa.Column("debit_account_id", sa.BigInteger, nullable=False),
        sa.Column("credit_account_id", sa.BigInteger, nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("code", sa.Integer, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        # NULL, not 0, when absent: the unique index then holds only real resolutions, which is
        # what makes "a hold is resolved exactly once" a database guarantee.
        sa.Column("pending_id", sa.BigInteger, nullable=True),
        sa.Column("timeout_s", sa.Integer, nullable=False),
        sa.Column("expires_at_ns", sa.BigInteger, nullable=True),
        sa.Column("reference", sa.String(128), nullable=True),
        sa.Column("metadata", sa.Text, nullable=True),
        sa.Column("timestamp_ns", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.CheckConstraint("amount_minor > 0", name="ck_ledger_transfers_amount_positive"),
        sa.CheckConstraint(
            "debit_account_id <> credit_account_id", name="ck_ledger_transfers_accounts_differ"
        ),
    )
    op.create_index(
        "ux_ledger_transfers_pending_id",
        "ledger_transfers",
        ["pending_id"],
        unique=True,
        sqlite_where=sa.text("pending_id IS NOT NULL"),
        postgresql_where=sa.text("pending_id IS NOT NULL"),
    )
    op.create_index(
        "ux_ledger_transfers_reference",
        "ledger_transfers",
        ["reference"],
        unique=True,
        sqlite_where=sa.text("reference IS NOT NULL"),
        postgresql_where=sa.text("reference IS NOT NULL"),
    )
    # The per-account index of the journal, maintained in bulk rather than row by row: a batch
    # of random accounts touches a different B-tree page per row, and writing those pages at
    # every commit cost more than everything else a batch does (measured: 20 ms of a 27 ms
    # SQLite batch of 1,000 at 300,000 rows). The writer appends journal rows only and merges
    # the tail into this table, sorted, once it is POSTINGS_TAIL_MAX rows long; queries read
    # the table up to ``ledger_journal_head.indexed_seq`` and scan the short tail beyond it.
    op.create_table(
        "ledger_postings",
        sa.Column("account_id", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "seq", name="pk_ledger_postings"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "ledger_holds",
        # Pending transfers not yet posted, voided or expired (a derived index for the sweep;
        # `paykeep audit verify` checks it against the journal).
        sa.Column("transfer_id", ROWID, primary_key=True, autoincrement=False),
        sa.Column("expires_at_ns", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_ledger_holds_expires", "ledger_holds", ["expires_at_ns"])
    op.create_table(
        "ledger_journal_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("last_timestamp_ns", sa.BigInteger, nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        # Journal rows up to here are in ledger_postings; later ones are the unindexed tail.
        sa.Column("indexed_seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.CheckConstraint("id = 1", name="ck_ledger_journal_head_singleton"),
        sa.CheckConstraint("indexed_seq <= last_seq", name="ck_ledger_journal_head_indexed"),
    )
    op.execute(
        "INSERT INTO ledger_journal_head (id, last_seq, last_timestamp_ns, last_hash) "
        f"VALUES (1, 0, 0, '{'0' * 64}')"
    )
    for statement in POSTGRES_GUARDS if postgres else SQLITE_GUARDS:
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRES_GUARDS_DROP if postgres else SQLITE_GUARDS_DROP:
        op.execute(statement)
    op.drop_table("ledger_journal_head")
    op.drop_table("ledger_postings")
    op.drop_table("ledger_holds")
    op.drop_table("ledger_transfers")
    op.drop_table("ledger_accounts")


POSTGRES_GUARDS = [
    """
    CREATE FUNCTION ledger_accounts_check_update() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        bad record;
    BEGIN
        -- Set operations, not joins: transition tables have no indexes or statistics, and a
        -- nested-loop join of a 2,000-row batch against itself costs a second per batch.
        SELECT c.id INTO bad FROM (
            SELECT id, currency, code, flags, name, metadata, timestamp_ns FROM new_rows
            EXCEPT
            SELECT id, currency, code, flags, name, metadata, timestamp_ns FROM old_rows) c
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ledger account % is immutable except its balances', bad.id
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        SELECT s.currency, s.pending, s.posted INTO bad FROM (
            SELECT x.currency, sum(x.pending) AS pending, sum(x.posted) AS posted FROM (
                SELECT currency, debits_pending - credits_pending AS pending,
                       debits_posted - credits_posted AS posted
                  FROM new_rows
                UNION ALL
                SELECT currency, credits_pending - debits_pending,
                       credits_posted - debits_posted
                  FROM old_rows) x
             GROUP BY x.currency) s
         WHERE s.pending <> 0 OR s.posted <> 0
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'double entry broken in %: pending % posted %',
                bad.currency, bad.pending, bad.posted
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER ledger_accounts_zero_sum AFTER UPDATE ON ledger_accounts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_accounts_check_update()
    """,
    """
    CREATE FUNCTION ledger_accounts_check_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM new_rows WHERE debits_pending <> 0 OR debits_posted <> 0
                   OR credits_pending <> 0 OR credits_posted <> 0) THEN
            RAISE EXCEPTION 'ledger accounts start with zero balances'
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER ledger_accounts_start_at_zero AFTER INSERT ON ledger_accounts
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_accounts_check_insert()
    """,
    """
    CREATE FUNCTION ledger_transfers_check_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        bad record;
    BEGIN
        -- One set-based check per statement instead of per-row foreign-key triggers (which
        -- cost more than the rest of a batch): both accounts exist and share the currency.
        SELECT t.id INTO bad FROM new_rows t
          LEFT JOIN ledger_accounts d ON d.id = t.debit_account_id
          LEFT JOIN ledger_accounts c ON c.id = t.credit_account_id
         WHERE d.id IS NULL OR c.id IS NULL
            OR d.currency <> t.currency OR c.currency <> t.currency
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'transfer % names a missing account or moves money between '
                'currencies', bad.id USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        SELECT t.id INTO bad FROM (SELECT * FROM new_rows WHERE (flags & 12) <> 0) t
          LEFT JOIN ledger_transfers p ON p.id = t.pending_id
         WHERE p.id IS NULL OR (p.flags & 2) = 0
            OR p.debit_account_id <> t.debit_account_id
            OR p.credit_account_id <> t.credit_account_id
            OR t.amount_minor > p.amount_minor
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'transfer % does not resolve a matching pending transfer', bad.id
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER ledger_transfers_consistent AFTER INSERT ON ledger_transfers
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_transfers_check_insert()
    """,
    """
    CREATE FUNCTION ledger_transfers_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the ledger journal is append-only'
            USING ERRCODE = 'integrity_constraint_violation';
    END $$
    """,
    """
    CREATE TRIGGER ledger_transfers_no_change BEFORE UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_transfers_append_only()
    """,
    """
    CREATE TRIGGER ledger_postings_no_change BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_transfers_append_only()
    """,
]

POSTGRES_GUARDS_DROP = [
    "DROP TRIGGER IF EXISTS ledger_postings_no_change ON ledger_postings",
    "DROP TRIGGER IF EXISTS ledger_transfers_no_change ON ledger_transfers",
    "DROP TRIGGER IF EXISTS ledger_transfers_consistent ON ledger_transfers",
    "DROP TRIGGER IF EXISTS ledger_accounts_start_at_zero ON ledger_accounts",
    "DROP TRIGGER IF EXISTS ledger_accounts_zero_sum ON ledger_accounts",
    "DROP FUNCTION IF EXISTS ledger_transfers_append_only()",
    "DROP FUNCTION IF EXISTS ledger_transfers_check_insert()",
    "DROP FUNCTION IF EXISTS ledger_accounts_check_insert()",
    "DROP FUNCTION IF EXISTS ledger_accounts_check_update()",
]

# SQLite: no statement-level triggers, so only the guards that cost nothing on the hot path.
# `UPDATE OF <columns>` fires only when a statement sets one of them, which the ledger never does.
SQLITE_GUARDS = [
    """
    CREATE TRIGGER ledger_transfers_no_update BEFORE UPDATE ON ledger_transfers
    BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END
    """,
    """
    CREATE TRIGGER ledger_transfers_no_delete BEFORE DELETE ON ledger_transfers
    BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END
    """,
    """
    CREATE TRIGGER ledger_accounts_immutable
    BEFORE UPDATE OF id, currency, code, flags, name, metadata, timestamp_ns ON ledger_accounts
    BEGIN SELECT RAISE(ABORT, 'ledger accounts are immutable except their balances'); END
    """,
    """
    CREATE TRIGGER ledger_postings_no_update BEFORE UPDATE ON ledger_postings
    BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END
    """,
    """
    CREATE TRIGGER ledger_postings_no_delete BEFORE DELETE ON ledger_postings
    BEGIN SELECT RAISE(ABORT, 'the ledger journal is append-only'); END
    """,
]

SQLITE_GUARDS_DROP = [
    "DROP TRIGGER IF EXISTS ledger_postings_no_delete",
    "DROP TRIGGER IF EXISTS ledger_postings_no_update",
    "DROP TRIGGER IF EXISTS ledger_accounts_immutable",
    "DROP TRIGGER IF EXISTS ledger_transfers_no_delete",
    "DROP TRIGGER IF EXISTS ledger_transfers_no_update",
]
