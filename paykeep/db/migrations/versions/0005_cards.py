"""Gateway cards: the card vault, card payments and the ISO 8583 message trail.

``card_vault`` holds one row per card number: AES-GCM ciphertext (nonce-prefixed), the key id it
was sealed under, an HMAC fingerprint (unique), brand, last four and expiry — never the number
in clear, never a security code. ``card_payments`` is the summary row of a payment's state
machine. ``card_messages`` is append-only (a trigger refuses UPDATE and DELETE on both
databases): every request is written before it is sent, every answer or timeout after.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ROWID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

STATES = (
    "authorising",
    "authorised",
    "capturing",
    "settling",
    "captured",
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


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "card_vault",
        sa.Column("token", sa.String(40), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("brand", sa.String(16), nullable=False),
        sa.Column("last4", sa.String(4), nullable=False),
        sa.Column("exp_month", sa.Integer, nullable=False),
        sa.Column("exp_year", sa.Integer, nullable=False),
        sa.Column("created_at_ns", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ns", sa.BigInteger, nullable=False),
        sa.CheckConstraint("exp_month BETWEEN 1 AND 12", name="ck_card_vault_exp_month"),
    )
    op.create_index("ix_card_vault_key_id", "card_vault", ["key_id"])
    op.create_table(
        "card_payments",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("payment_id", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("reason", sa.String(16), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("acquirer", sa.String(32), nullable=False),
        sa.Column("terminal_id", sa.String(8), nullable=False),
        sa.Column("card_token", sa.String(40), nullable=False),
        sa.Column("brand", sa.String(16), nullable=False),
        sa.Column("last4", sa.String(4), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("captured_minor", sa.BigInteger, nullable=False),
        sa.Column("credit_account_id", sa.BigInteger, nullable=True),
        sa.Column("ledger_transfer_id", sa.BigInteger, nullable=False, unique=True),
        sa.Column("response_code", sa.String(2), nullable=True),
        sa.Column("auth_code", sa.String(6), nullable=True),
        sa.Column("rrn", sa.String(12), nullable=True),
        sa.Column("last_seq", sa.Integer, nullable=False),
        sa.Column("created_at_ns", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ns", sa.BigInteger, nullable=False),
        # The acquirer's settlement credit that paid this capture out (NULL: still owed).
        sa.Column("settlement_reference", sa.String(35), nullable=True),
        sa.CheckConstraint(_in("state", STATES), name="ck_card_payments_state"),
        sa.CheckConstraint(
            f"outcome IS NULL OR {_in('outcome', OUTCOMES)}", name="ck_card_payments_outcome"
        ),
        sa.CheckConstraint("kind IN ('authorisation', 'sale')", name="ck_card_payments_kind"),
        sa.CheckConstraint("amount_minor > 0", name="ck_card_payments_amount_positive"),
        sa.CheckConstraint(
            "captured_minor >= 0 AND captured_minor <= amount_minor",
            name="ck_card_payments_captured_bounded",
        ),
    )
    op.create_index("ix_card_payments_state", "card_payments", ["state", "updated_at_ns"])
    op.create_index(
        "ix_card_payments_unsettled", "card_payments", ["acquirer", "currency", "state"]
    )
    op.create_table(
        "card_messages",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("payment", sa.BigInteger, sa.ForeignKey("card_payments.id"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        # out: a request written before it is sent; in: its answer; timeout: none came in
        # time; unsent: the link failed before a byte left (nothing to reverse).
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
        sa.UniqueConstraint("payment", "seq", name="uq_card_messages_payment_seq"),
        sa.CheckConstraint(
            "direction IN ('out', 'in', 'timeout', 'unsent')", name="ck_card_messages_direction"
        ),
    )
    for statement in _append_only("card_messages", postgres):
        op.execute(statement)


def _append_only(table: str, postgres: bool) -> list[str]:
    if postgres:
        return [
            """
            CREATE FUNCTION card_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
                    USING ERRCODE = 'integrity_constraint_violation';
            END $$
            """,
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
    if postgres:
        op.execute("DROP TRIGGER IF EXISTS card_messages_append_only ON card_messages")
        op.execute("DROP FUNCTION IF EXISTS card_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS card_messages_no_update")
        op.execute("DROP TRIGGER IF EXISTS card_messages_no_delete")
    op.drop_table("card_messages")
    op.drop_table("card_payments")
    op.drop_index("ix_card_vault_key_id", table_name="card_vault")
    op.drop_table("card_vault")
