"""Card refunds an operator sends again after they failed.

A card refund that failed for good (declined, or not through after its attempts) left its
money in the buyer's wallet. An operator may now send it again: a new round of attempts
(``attempts_max`` is where the current round ends; before, the limit was the constant 3),
with a new reservation of the money. ``retries`` counts the operator's retries and
``retried_by`` names the last operator key that asked for one.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "payments_card_refunds",
        # 3 was limits.CARD_REFUND_ATTEMPTS_MAX when every card refund had one round.
        sa.Column("attempts_max", sa.Integer, nullable=False, server_default="3"),
    )
    op.add_column(
        "payments_card_refunds",
        sa.Column("retries", sa.Integer, nullable=False, server_default="0"),
    )
    op.add_column("payments_card_refunds", sa.Column("retried_by", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payments_card_refunds") as batch:
        batch.drop_column("retried_by")
        batch.drop_column("retries")
        batch.drop_column("attempts_max")
