"""Gateway payouts: payout requests, pain.001 batches and the batches' append-only trail.

``gateway_payout_batch_events`` is append-only (a trigger refuses UPDATE and DELETE on both
databases). Message ids and end-to-end ids are unique, so a message id can never be reused;
request ids are unique (idempotency).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ROWID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

PAYOUT_STATES = "('requested', 'batched', 'accepted', 'settled', 'returned')"
BATCH_STATES = "('open', 'generated', 'submitted', 'accepted', 'rejected', 'settled')"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "gateway_payout_batches",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("message_id", sa.String(35), nullable=False, unique=True),
        sa.Column("schema", sa.String(32), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("debtor_name", sa.String(70), nullable=False),
        sa.Column("debtor_iban", sa.String(34), nullable=False),
        sa.Column("debtor_bic", sa.String(11), nullable=True),
        sa.Column("bank", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("payout_count", sa.Integer, nullable=False),
        sa.Column("control_sum_minor", sa.BigInteger, nullable=False),
        sa.Column("execution_date", sa.String(10), nullable=False),
        sa.Column("file_xml", sa.Text, nullable=True),
        sa.Column("file_sha256", sa.String(64), nullable=True),
        sa.Column("destination", sa.Text, nullable=True),
        sa.Column("bank_status", sa.String(8), nullable=True),
        sa.Column("bank_reason", sa.Text, nullable=True),
        sa.Column("created_at_ns", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ns", sa.BigInteger, nullable=False),
        sa.CheckConstraint(f"state IN {BATCH_STATES}", name="ck_gateway_payout_batches_state"),
        sa.CheckConstraint("payout_count > 0", name="ck_gateway_payout_batches_count"),
        sa.CheckConstraint("control_sum_minor > 0", name="ck_gateway_payout_batches_sum"),
    )
    op.create_index("ix_gateway_payout_batches_state", "gateway_payout_batches", ["state", "id"])
    op.create_table(
        "gateway_payouts",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("request_id", sa.String(64), nullable=False, unique=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("merchant_ref", sa.String(64), nullable=False),
        sa.Column("debit_account_name", sa.String(128), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("creditor_name", sa.String(70), nullable=False),
        sa.Column("creditor_iban", sa.String(34), nullable=False),
        sa.Column("creditor_bic", sa.String(11), nullable=True),
        sa.Column("remittance", sa.String(140), nullable=False),
        sa.Column("end_to_end_id", sa.String(35), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column(
            "batch_id", sa.BigInteger, sa.ForeignKey("gateway_payout_batches.id"), nullable=True
        ),
        sa.Column("request_transfer_id", sa.BigInteger, nullable=False),
        sa.Column("return_transfer_id", sa.BigInteger, nullable=True),
        sa.Column("expected", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at_ns", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ns", sa.BigInteger, nullable=False),
        sa.CheckConstraint(f"state IN {PAYOUT_STATES}", name="ck_gateway_payouts_state"),
        sa.CheckConstraint("amount_minor > 0", name="ck_gateway_payouts_amount_positive"),
        sa.CheckConstraint(
            "(state = 'requested') = (batch_id IS NULL)", name="ck_gateway_payouts_batched"
        ),
    )
    op.create_index("ix_gateway_payouts_state", "gateway_payouts", ["state", "currency", "id"])
    op.create_index("ix_gateway_payouts_batch", "gateway_payouts", ["batch_id", "id"])
    op.create_table(
        "gateway_payout_batch_events",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column(
            "batch_id", sa.BigInteger, sa.ForeignKey("gateway_payout_batches.id"), nullable=False
        ),
        sa.Column("at_ns", sa.BigInteger, nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_gateway_payout_batch_events_batch", "gateway_payout_batch_events", ["batch_id", "id"]
    )
    table = "gateway_payout_batch_events"
    if postgres:
        op.execute(
            """
            CREATE FUNCTION gateway_payouts_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
                    USING ERRCODE = 'integrity_constraint_violation';
            END $$
            """
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION gateway_payouts_append_only()"
        )
    else:
        op.execute(
            f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
        )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    table = "gateway_payout_batch_events"
    if postgres:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute("DROP FUNCTION IF EXISTS gateway_payouts_append_only()")
    else:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    op.drop_table("gateway_payout_batch_events")
    op.drop_table("gateway_payouts")
    op.drop_table("gateway_payout_batches")
