"""Worker items whose handling failed unexpectedly: backed off, then parked for an operator.

One row per (pass, item) that a background pass could not handle (an exception that is not a
typed business outcome and not the database being unavailable): how many times in a row, the
last stable error code, when it may be tried again, and — after
``limits.WORKER_ITEM_FAILURES_MAX`` failures — when it was parked. The item's own table is not
touched (its transaction rolled back), so this works the same for every pass; no personal
data is stored (ids and error codes only).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_item_failures",
        sa.Column("pass_name", sa.String(64), primary_key=True),
        sa.Column("item_id", sa.String(128), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("error_code", sa.String(100), nullable=False),
        sa.Column("first_failed_at_ns", sa.BigInteger, nullable=False),
        sa.Column("last_failed_at_ns", sa.BigInteger, nullable=False),
        sa.Column("next_attempt_at_ns", sa.BigInteger, nullable=True),
        sa.Column("parked_at_ns", sa.BigInteger, nullable=True),
        sa.CheckConstraint("failures >= 1", name="ck_worker_item_failures_failures"),
        # Parked: never tried again by itself; else: tried again from next_attempt_at_ns.
        sa.CheckConstraint(
            "(parked_at_ns IS NULL) <> (next_attempt_at_ns IS NULL)",
            name="ck_worker_item_failures_state",
        ),
    )
    op.create_index("ix_worker_item_failures_parked", "worker_item_failures", ["parked_at_ns"])


def downgrade() -> None:
    op.drop_index("ix_worker_item_failures_parked", table_name="worker_item_failures")
    op.drop_table("worker_item_failures")
