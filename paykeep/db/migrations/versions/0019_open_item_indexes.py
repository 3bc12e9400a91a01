"""Indexes for the worker's follow-up passes and the case queue's assignee filter.

- ``ix_payments_payouts_open``: the merchant payouts still open at the gateway, in id order
  (ids are time-ordered). The worker's ``sync_payouts`` walks them with a cursor, a page per
  pass, wrapping around, so every open one is looked at however many there are. Partial: the
  open ones are few beside the settled history, and the query names the same states, which
  is what lets SQLite use a partial index. (``sync_withdrawals`` walks the buyers' open
  withdrawals the same way through ``ix_payments_withdrawals_state``.)
- ``ix_aml_cases_assignee``: the cases assigned to one officer (``GET
  /v1/aml/cases?assignee=``, an officer's own queue) in id order, without reading every
  case.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

#: The states the pass follows; the repository's query names exactly these.
PAYOUT_OPEN = "state IN ('requested', 'batched', 'accepted')"


def upgrade() -> None:
    op.create_index(
        "ix_payments_payouts_open",
        "payments_payouts",
        ["id"],
        sqlite_where=sa.text(PAYOUT_OPEN),
        postgresql_where=sa.text(PAYOUT_OPEN),
    )
    op.create_index("ix_aml_cases_assignee", "aml_cases", ["assignee", "id"])


def downgrade() -> None:
    op.drop_index("ix_aml_cases_assignee", table_name="aml_cases")
    op.drop_index("ix_payments_payouts_open", table_name="payments_payouts")
