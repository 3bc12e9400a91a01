"""Gateway statements: the bank-account registry, imported statements and their lines,
expected movements, matches (with the ledger transfers they post) and reconciliation breaks.

Statement lines are append-only (a trigger refuses UPDATE and DELETE on both databases); a
statement row changes once, from ``posting`` to ``posted``, when its ledger legs are written.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ROWID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

BREAK_REASONS = (
    "account_not_registered",
    "no_reference",
    "unknown_reference",
    "ambiguous_reference",
    "currency_mismatch",
    "wrong_direction",
    "amount_mismatch",
    "duplicate",
    "ledger_rejected",
    "statement_unbalanced",
)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "stmt_bank_accounts",
        sa.Column("iban", sa.String(34), primary_key=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("ledger_account_name", sa.String(128), nullable=False),
        sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "stmt_statements",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("account", sa.String(140), nullable=False),
        # camt.052 / camt.053 / camt.054 / mt940 / mt942: a statement is (account, kind, id).
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("statement_id", sa.String(300), nullable=False),
        sa.Column("sequence", sa.String(140), nullable=True),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("created_at", sa.String(40), nullable=True),
        sa.Column("opening_booked_minor", sa.BigInteger, nullable=True),
        sa.Column("closing_booked_minor", sa.BigInteger, nullable=True),
        sa.Column("balance_basis", sa.String(16), nullable=True),
        sa.Column("entry_count", sa.Integer, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("registered", sa.Boolean, nullable=False),
        sa.Column("imported_at_ns", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.UniqueConstraint(
            "account", "kind", "statement_id", name="uq_stmt_statements_account_id"
        ),
        sa.CheckConstraint("state IN ('posting', 'posted')", name="ck_stmt_statements_state"),
    )
    op.create_index("ix_stmt_statements_state", "stmt_statements", ["state"])
    op.create_table(
        "stmt_entries",
        sa.Column("statement_row_id", sa.BigInteger, sa.ForeignKey("stmt_statements.id"),
                  nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("booking_date", sa.String(10), nullable=True),
        sa.Column("value_date", sa.String(10), nullable=True),
        sa.Column("bank_reference", sa.String(140), nullable=True),
        sa.Column("end_to_end_id", sa.String(140), nullable=True),
        sa.Column("reference", sa.String(140), nullable=True),
        sa.Column("remittance_info", sa.Text, nullable=True),
        sa.Column("counterparty_name", sa.Text, nullable=True),
        sa.Column("counterparty_iban", sa.String(140), nullable=True),
        sa.Column("uetr", sa.String(140), nullable=True),
        sa.PrimaryKeyConstraint("statement_row_id", "line", name="pk_stmt_entries"),
        sa.CheckConstraint(
            "status IN ('booked', 'pending', 'info')", name="ck_stmt_entries_status"
        ),
    )  # fmt: skip
    op.create_table(
        "stmt_expectations",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("iban", sa.String(34), nullable=False),
        sa.Column("reference", sa.String(140), nullable=False),
        sa.Column("direction", sa.String(6), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("standing", sa.Boolean, nullable=False),
        sa.Column("legs", sa.Text, nullable=False),
        sa.Column("created_at_ns", sa.BigInteger, nullable=False),
        sa.Column("consumed_statement_row_id", sa.BigInteger, nullable=True),
        sa.Column("consumed_line", sa.Integer, nullable=True),
        sa.UniqueConstraint("iban", "reference", name="uq_stmt_expectations_iban_reference"),
        sa.CheckConstraint(
            "direction IN ('credit', 'debit')", name="ck_stmt_expectations_direction"
        ),
        sa.CheckConstraint(
            "amount_minor IS NULL OR amount_minor > 0", name="ck_stmt_expectations_amount"
        ),
    )
    op.create_table(
        "stmt_matches",
        sa.Column("statement_row_id", sa.BigInteger, sa.ForeignKey("stmt_statements.id"),
                  nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Column("expectation_id", sa.BigInteger, sa.ForeignKey("stmt_expectations.id"),
                  nullable=False),
        sa.Column("transfer_ids", sa.Text, nullable=False),
        # NULL until the legs are posted; then 'ok' or the ledger's result code.
        sa.Column("ledger_result", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("statement_row_id", "line", name="pk_stmt_matches"),
    )  # fmt: skip
    op.create_table(
        "stmt_breaks",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("statement_row_id", sa.BigInteger, sa.ForeignKey("stmt_statements.id"),
                  nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("expectation_id", sa.BigInteger, nullable=True),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("reference", sa.String(140), nullable=True),
        sa.Column("created_at_ns", sa.BigInteger, nullable=False),
        sa.Column("resolved_at_ns", sa.BigInteger, nullable=True),
        # 'matched' (an operator named the expectation) or 'explained' (a note only).
        sa.Column("resolution", sa.String(16), nullable=True),
        sa.Column("resolved_by", sa.String(64), nullable=True),
        sa.Column("resolution_note", sa.Text, nullable=True),
        sa.CheckConstraint(
            "reason IN (" + ", ".join(f"'{r}'" for r in BREAK_REASONS) + ")",
            name="ck_stmt_breaks_reason",
        ),
    )  # fmt: skip
    op.create_index("ix_stmt_breaks_open", "stmt_breaks", ["resolved_at_ns", "id"])
    if postgres:
        op.execute(
            """
            CREATE FUNCTION stmt_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
                    USING ERRCODE = 'integrity_constraint_violation';
            END $$
            """
        )
        op.execute(
            "CREATE TRIGGER stmt_entries_append_only BEFORE UPDATE OR DELETE ON stmt_entries "
            "FOR EACH STATEMENT EXECUTE FUNCTION stmt_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER stmt_entries_no_update BEFORE UPDATE ON stmt_entries "
            "BEGIN SELECT RAISE(ABORT, 'stmt_entries is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER stmt_entries_no_delete BEFORE DELETE ON stmt_entries "
            "BEGIN SELECT RAISE(ABORT, 'stmt_entries is append-only'); END"
        )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("DROP TRIGGER IF EXISTS stmt_entries_append_only ON stmt_entries")
        op.execute("DROP FUNCTION IF EXISTS stmt_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS stmt_entries_no_update")
        op.execute("DROP TRIGGER IF EXISTS stmt_entries_no_delete")
    for table in (
        "stmt_breaks",
        "stmt_matches",
        "stmt_expectations",
        "stmt_entries",
        "stmt_statements",
        "stmt_bank_accounts",
    ):
        op.drop_table(table)
