"""Buyer sign-in: one-time codes sent to the buyer's email, and buyer sessions.

A code is stored only as a keyed hash (HMAC under the field-lookup key) of
``buyer | checkout session | code``; a session only as the SHA-256 of its token. Both are
bound to the buyer. ``payments_buyer_codes.state`` follows ``paykeep.payments.buyer_auth``'s
transition table (issued -> used | expired | exhausted).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

CODE_STATES = ("issued", "used", "expired", "exhausted")


def upgrade() -> None:
    op.create_table(
        "payments_buyer_codes",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("buyer_id", sa.String(40), sa.ForeignKey("payments_buyers.id"), nullable=False),
        sa.Column(
            "checkout_session_id",
            sa.String(40),
            sa.ForeignKey("payments_checkout_sessions.id"),
            nullable=False,
        ),
        sa.Column("code_hmac", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("expires_at_ns", sa.BigInteger, nullable=False),
        sa.Column("created_at_ns", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "state IN (" + ", ".join(f"'{s}'" for s in CODE_STATES) + ")",
            name="ck_buyer_codes_state",
        ),
        sa.CheckConstraint("attempts >= 0", name="ck_buyer_codes_attempts"),
    )
    # The hourly limit counts a buyer's recent codes; verification reads a checkout's newest.
    op.create_index("ix_buyer_codes_buyer", "payments_buyer_codes", ["buyer_id", "created_at_ns"])
    op.create_index(
        "ix_buyer_codes_checkout", "payments_buyer_codes", ["checkout_session_id", "id"]
    )
    op.create_table(
        "payments_buyer_sessions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("buyer_id", sa.String(40), sa.ForeignKey("payments_buyers.id"), nullable=False),
        sa.Column(
            "code_id",
            sa.String(40),
            sa.ForeignKey("payments_buyer_codes.id"),
            nullable=False,
            unique=True,  # one code signs in once
        ),
        sa.Column("expires_at_ns", sa.BigInteger, nullable=False),
        sa.Column("created_at_ns", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("payments_buyer_sessions")
    op.drop_table("payments_buyer_codes")
