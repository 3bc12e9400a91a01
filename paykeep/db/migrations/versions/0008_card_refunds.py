"""Card refunds: the gateway's refunds and their message trail, and payments' refund intents.

``card_refunds`` is the summary row of one refund's state machine (a credit to the card of an
original capture or sale in ``card_payments``). ``card_refund_messages`` is its ISO 8583
trail, append-only like ``card_messages`` (the same trigger function on PostgreSQL, the same
RAISE(ABORT) triggers on SQLite): every request is written before it is sent.
``payments_card_refunds`` is payments' outbox-like intent: written in the transaction that
returns a card-funded order's money to the buyer's wallet, sent by a worker pass.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ROWID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

REFUND_STATES = (
    "refunding",
    "posting",
    "refunded",
    "declined",
    "unavailable",
    "reversing",
    "reversed",
)
OUTCOMES = (
    "approved",
    "declined",
    "timed_out_reversed",
    "reversal_pending",
    "unavailable",
    "reversed",
)
INTENT_STATES = ("pending", "succeeded", "failed")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "card_refunds",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("refund_id", sa.String(64), nullable=False, unique=True),
        # The original capture or sale this refund credits back.
        sa.Column("payment", sa.BigInteger, sa.ForeignKey("card_payments.id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("reason", sa.String(16), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("acquirer", sa.String(32), nullable=False),
        sa.Column("terminal_id", sa.String(8), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("debit_account_id", sa.BigInteger, nullable=False),
        # A pending ledger transfer (debit account -> clearing) the caller placed to reserve
        # the money; the gateway posts it on approval. NULL: a plain transfer is posted.
        sa.Column("pending_transfer_id", sa.BigInteger, nullable=True),
        sa.Column("ledger_transfer_id", sa.BigInteger, nullable=False, unique=True),
        sa.Column("response_code", sa.String(2), nullable=True),
        sa.Column("auth_code", sa.String(6), nullable=True),
        sa.Column("rrn", sa.String(12), nullable=True),
        sa.Column("last_seq", sa.Integer, nullable=False),
        sa.Column("created_at_ns", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ns", sa.BigInteger, nullable=False),
        # The acquirer's settlement that netted this refund out (NULL: not yet).
        sa.Column("settlement_reference", sa.String(35), nullable=True),
        sa.CheckConstraint(_in("state", REFUND_STATES), name="ck_card_refunds_state"),
        sa.CheckConstraint(
            f"outcome IS NULL OR {_in('outcome', OUTCOMES)}", name="ck_card_refunds_outcome"
        ),
        sa.CheckConstraint("amount_minor > 0", name="ck_card_refunds_amount_positive"),
    )
    op.create_index("ix_card_refunds_state", "card_refunds", ["state", "updated_at_ns"])
    op.create_index("ix_card_refunds_payment", "card_refunds", ["payment"])
    op.create_table(
        "card_refund_messages",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("refund", sa.BigInteger, sa.ForeignKey("card_refunds.id"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("mti", sa.String(4), nullable=False),
        sa.Column("stan", sa.String(6), nullable=False),
        sa.Column("transmitted", sa.String(10), nullable=False),
        sa.Column("rrn", sa.String(12), nullable=True),
        sa.Column("amount_minor", sa.BigInteger, nullable=True),
        sa.Column("response_code", sa.String(2), nullable=True),
        sa.Column("auth_code", sa.String(6), nullable=True),
        sa.Column("reply_to_seq", sa.Integer, nullable=True),
        sa.Column("reverses_seq", sa.Integer, nullable=True),
        sa.Column("at_ns", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("refund", "seq", name="uq_card_refund_messages_refund_seq"),
        sa.CheckConstraint(
            "direction IN ('out', 'in', 'timeout', 'unsent')",
            name="ck_card_refund_messages_direction",
        ),
    )
    for statement in _append_only("card_refund_messages", postgres):
        op.execute(statement)
    op.create_table(
        "payments_card_refunds",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("order_id", sa.String(40), sa.ForeignKey("payments_orders.id"), nullable=False),
        # The refund record it pays back (NULL for the unshipped timer, which has none).
        sa.Column("refund_id", sa.String(40), sa.ForeignKey("payments_refunds.id"), nullable=True),
        sa.Column("merchant_id", sa.String(40), nullable=False),
        sa.Column("buyer_id", sa.String(40), nullable=False),
        sa.Column("card_payment_id", sa.String(64), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("reservation_transfer_id", sa.BigInteger, nullable=False, unique=True),
        sa.Column("card_brand", sa.String(16), nullable=True),
        sa.Column("card_last4", sa.String(4), nullable=True),
        sa.Column("response_code", sa.String(2), nullable=True),
        sa.Column("failure_reason", sa.String(48), nullable=True),
        sa.Column("created_at_ns", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ns", sa.BigInteger, nullable=False),
        sa.CheckConstraint(_in("state", INTENT_STATES), name="ck_payments_card_refunds_state"),
        sa.CheckConstraint("amount_minor > 0", name="ck_payments_card_refunds_amount"),
    )
    op.create_index(
        "ix_payments_card_refunds_state", "payments_card_refunds", ["state", "created_at_ns"]
    )
    op.create_index("ix_payments_card_refunds_order", "payments_card_refunds", ["order_id"])
    op.create_index("ix_payments_card_refunds_refund", "payments_card_refunds", ["refund_id"])


def _append_only(table: str, postgres: bool) -> list[str]:
    if postgres:
        # card_append_only() is migration 0005's function: one rule for both trails.
        return [
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION card_append_only()",
        ]
    return [
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END",
        f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END",
    ]


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.drop_index("ix_payments_card_refunds_refund", table_name="payments_card_refunds")
    op.drop_index("ix_payments_card_refunds_order", table_name="payments_card_refunds")
    op.drop_index("ix_payments_card_refunds_state", table_name="payments_card_refunds")
    op.drop_table("payments_card_refunds")
    if postgres:
        op.execute(
            "DROP TRIGGER IF EXISTS card_refund_messages_append_only ON card_refund_messages"
        )
    else:
        op.execute("DROP TRIGGER IF EXISTS card_refund_messages_no_update")
        op.execute("DROP TRIGGER IF EXISTS card_refund_messages_no_delete")
    op.drop_table("card_refund_messages")
    op.drop_index("ix_card_refunds_payment", table_name="card_refunds")
    op.drop_index("ix_card_refunds_state", table_name="card_refunds")
    op.drop_table("card_refunds")
