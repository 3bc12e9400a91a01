"""Buyer withdrawals back to the card that funded the wallet.

``payments_withdrawals.destination`` says where a withdrawal goes: ``source_bank_account``
(every withdrawal so far: the IBAN of a credited top-up, a gateway payout) or ``source_card``
(refunds to the buyer's captured card payments, no payout). A card withdrawal names no top-up
and no IBAN, so those columns become nullable — a check ties each destination to exactly its
own columns. Its new final state ``partially_settled`` (17 characters: ``state`` widens to 24)
says that some of its card refunds failed (their money is back in the wallet).
``payments_card_refunds.withdrawal_id`` names the withdrawal a card refund pays out (NULL for an
order's; never both a refund and a withdrawal).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

STATES = (
    "pending", "requested", "batched", "accepted", "settled", "returned", "failed",
    "partially_settled",
)  # fmt: skip
OLD_STATES = STATES[:-1]


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    with op.batch_alter_table("payments_withdrawals") as batch:
        batch.add_column(
            sa.Column(
                "destination", sa.String(24), nullable=False, server_default="source_bank_account"
            )
        )
        batch.alter_column("source_topup_id", existing_type=sa.String(40), nullable=True)
        batch.alter_column("iban_enc", existing_type=sa.LargeBinary, nullable=True)
        batch.alter_column("iban_last4", existing_type=sa.String(4), nullable=True)
        # ``partially_settled`` is 17 characters.
        batch.alter_column("state", existing_type=sa.String(16), type_=sa.String(24))
        batch.drop_constraint("ck_payments_withdrawals_state", type_="check")
        batch.drop_constraint("ck_payments_withdrawals_gateway", type_="check")
        batch.create_check_constraint("ck_payments_withdrawals_state", _in("state", STATES))
        batch.create_check_constraint(
            "ck_payments_withdrawals_destination",
            "(destination = 'source_bank_account' AND source_topup_id IS NOT NULL "
            "AND iban_enc IS NOT NULL AND iban_last4 IS NOT NULL "
            "AND state <> 'partially_settled') "
            "OR (destination = 'source_card' AND source_topup_id IS NULL "
            "AND iban_enc IS NULL AND iban_last4 IS NULL AND gateway_payout_id IS NULL "
            "AND state IN ('pending', 'settled', 'partially_settled', 'failed'))",
        )
        # A bank withdrawal has its gateway payout from ``requested`` on; a card one never has.
        batch.create_check_constraint(
            "ck_payments_withdrawals_gateway",
            "gateway_payout_id IS NOT NULL OR state IN ('pending', 'failed') "
            "OR destination = 'source_card'",
        )
    with op.batch_alter_table("payments_card_refunds") as batch:
        batch.add_column(sa.Column("withdrawal_id", sa.String(40), nullable=True))
        batch.create_foreign_key(
            "fk_payments_card_refunds_withdrawal",
            "payments_withdrawals",
            ["withdrawal_id"],
            ["id"],
        )
        batch.create_check_constraint(
            "ck_payments_card_refunds_one_cause", "refund_id IS NULL OR withdrawal_id IS NULL"
        )
    op.create_index(
        "ix_payments_card_refunds_withdrawal", "payments_card_refunds", ["withdrawal_id"]
    )


def downgrade() -> None:
    bind = op.get_bind()
    cards = bind.execute(
        sa.text("SELECT COUNT(*) FROM payments_withdrawals WHERE destination = 'source_card'")
    ).scalar_one()
    if cards:
        # Their rows cannot live in the old table (no IBAN, no top-up), and deleting them
        # would forget money that moved.
        raise RuntimeError(f"{cards} withdrawals to the card exist: cannot downgrade past 0016")
    op.drop_index("ix_payments_card_refunds_withdrawal", table_name="payments_card_refunds")
    with op.batch_alter_table("payments_card_refunds") as batch:
        batch.drop_constraint("ck_payments_card_refunds_one_cause", type_="check")
        batch.drop_constraint("fk_payments_card_refunds_withdrawal", type_="foreignkey")
        batch.drop_column("withdrawal_id")
    with op.batch_alter_table("payments_withdrawals") as batch:
        batch.drop_constraint("ck_payments_withdrawals_gateway", type_="check")
        batch.drop_constraint("ck_payments_withdrawals_destination", type_="check")
        batch.drop_constraint("ck_payments_withdrawals_state", type_="check")
        batch.create_check_constraint("ck_payments_withdrawals_state", _in("state", OLD_STATES))
        batch.create_check_constraint(
            "ck_payments_withdrawals_gateway",
            "gateway_payout_id IS NOT NULL OR state IN ('pending', 'failed')",
        )
        batch.alter_column("iban_last4", existing_type=sa.String(4), nullable=False)
        batch.alter_column("iban_enc", existing_type=sa.LargeBinary, nullable=False)
        batch.alter_column("source_topup_id", existing_type=sa.String(40), nullable=False)
        batch.alter_column("state", existing_type=sa.String(24), type_=sa.String(16))
        batch.drop_column("destination")
