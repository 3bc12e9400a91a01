"""Buyer withdrawals: wallet money returned to the bank account it came from.

One row per withdrawal (``paykeep.payments.withdrawals``). The destination is the counterparty
IBAN of one of the buyer's credited top-ups (``source_topup_id``): it is stored AES-GCM sealed
(``iban_enc``, purpose ``withdrawal.iban``) with its last four for display. ``request_id`` is
the gateway payout's request id (unique: one withdrawal per request, whatever the retries);
``gateway_payout_id`` is NULL only while the withdrawal is ``pending`` (the bound is reserved,
the gateway not asked yet). ``state`` follows the module's transition table.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

STATES = ("pending", "requested", "batched", "accepted", "settled", "returned", "failed")


def upgrade() -> None:
    states = ", ".join(repr(s) for s in STATES)
    op.create_table(
        "payments_withdrawals",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("request_id", sa.String(64), nullable=False, unique=True),
        # SHA-256 of what was asked (amount, currency, source): a replay must match it.
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("buyer_id", sa.String(40), sa.ForeignKey("payments_buyers.id"), nullable=False),
        # The buyer's merchant (NULL for an operator's buyer): who sees it and gets its events.
        sa.Column("merchant_id", sa.String(40), nullable=True),
        sa.Column(
            "source_topup_id", sa.String(40), sa.ForeignKey("payments_topups.id"), nullable=False
        ),
        sa.Column("iban_enc", sa.LargeBinary, nullable=False),
        sa.Column("iban_last4", sa.String(4), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("gateway_payout_id", sa.BigInteger, nullable=True, unique=True),
        sa.Column("created_at_ns", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ns", sa.BigInteger, nullable=False),
        sa.CheckConstraint(f"state IN ({states})", name="ck_payments_withdrawals_state"),
        sa.CheckConstraint("amount_minor > 0", name="ck_payments_withdrawals_amount"),
        sa.CheckConstraint(
            "gateway_payout_id IS NOT NULL OR state IN ('pending', 'failed')",
            name="ck_payments_withdrawals_gateway",
        ),
    )
    op.create_index(
        "ix_payments_withdrawals_buyer", "payments_withdrawals", ["buyer_id", "currency", "state"]
    )
    op.create_index(
        "ix_payments_withdrawals_merchant", "payments_withdrawals", ["merchant_id", "id"]
    )
    op.create_index(
        "ix_payments_withdrawals_state", "payments_withdrawals", ["state", "created_at_ns"]
    )


def downgrade() -> None:
    op.drop_index("ix_payments_withdrawals_state", table_name="payments_withdrawals")
    op.drop_index("ix_payments_withdrawals_merchant", table_name="payments_withdrawals")
    op.drop_index("ix_payments_withdrawals_buyer", table_name="payments_withdrawals")
    op.drop_table("payments_withdrawals")
