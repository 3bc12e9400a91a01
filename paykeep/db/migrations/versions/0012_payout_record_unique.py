"""A merchant's payout record names its gateway payout once.

``payments_payouts.gateway_payout_id`` becomes unique: the request that made a payout and the
worker pass that adopts a payout whose record a crash never wrote (``sync_payouts``) may both
try to record it, and the second must find the first's row, not add another. That pass looks
only at the last day's gateway payouts, by ``created_at_ns`` (indexed here), every cycle.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ux_payments_payouts_gateway", "payments_payouts", ["gateway_payout_id"], unique=True
    )
    op.create_index("ix_gateway_payouts_created", "gateway_payouts", ["created_at_ns"])


def downgrade() -> None:
    op.drop_index("ix_gateway_payouts_created", table_name="gateway_payouts")
    op.drop_index("ux_payments_payouts_gateway", table_name="payments_payouts")
