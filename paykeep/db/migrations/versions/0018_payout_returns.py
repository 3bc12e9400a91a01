"""A returned payout says how and why; a statement line says why a payment came back.

A payout the payee's bank sends back after it settled (an account closed, a wrong IBAN found
later) now returns to the account it was drawn from, like one the bank rejected; what was a
single meaning of ``returned`` gets its explanation:

- ``gateway_payouts``, ``payments_payouts`` and ``payments_withdrawals`` gain ``return_kind``
  (``rejected``: our bank refused the file; ``sent_back``: the payee's bank sent it back after
  settlement), ``return_reason_code`` (the bank's ISO 20022 code, e.g. ``AM04`` or ``AC04``;
  NULL when none was given), ``return_reason`` (in words) and ``return_fee_minor`` (what the
  payee's bank kept; 0 otherwise). The merchants' and buyers' records copy the gateway's.
- ``stmt_entries.return_reason``: the reason a camt statement gives for a returned payment
  (``RtrInf/Rsn``); NULL for every other line and for MT940, which has no field for it.

Backfill: every payout already ``returned`` was rejected by our bank (nothing else returned a
payout before this revision): ``rejected`` with its batch's recorded answer (``CODE: text``)
as the reason and code, fee 0; the merchants' and buyers' returned records copy it.

Downgrade drops the columns (a payout returned after settlement stays ``returned``: its money
is back where it came from, which the ledger records either way).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-12
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

# Spelled out, not imported: a migration keeps meaning what it meant when it ran.
KINDS = ("rejected", "sent_back")
RETURN_TABLES = ("gateway_payouts", "payments_payouts", "payments_withdrawals")
_CODE = re.compile(r"^([A-Za-z0-9]{1,35}):")


def _postgres() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def upgrade() -> None:
    kinds = ", ".join(f"'{k}'" for k in KINDS)
    for table in RETURN_TABLES:
        # Native ADD COLUMN on both databases, with the column's own CHECK (SQLite accepts it
        # there): no batch-mode copy of tables other revisions put triggers and checks on.
        op.execute(
            f"ALTER TABLE {table} ADD COLUMN return_kind VARCHAR(16) "
            f"CONSTRAINT ck_{table}_return_kind CHECK (return_kind IN ({kinds}))"
        )
        op.add_column(table, sa.Column("return_reason_code", sa.String(35), nullable=True))
        op.add_column(table, sa.Column("return_reason", sa.Text, nullable=True))
        op.execute(
            f"ALTER TABLE {table} ADD COLUMN return_fee_minor BIGINT "
            f"CONSTRAINT ck_{table}_return_fee CHECK (return_fee_minor >= 0)"
        )
    op.add_column("stmt_entries", sa.Column("return_reason", sa.String(35), nullable=True))
    _backfill(op.get_bind())


def _backfill(bind: sa.Connection) -> None:
    returned = bind.execute(
        sa.text(
            "SELECT p.id, b.bank_reason FROM gateway_payouts p "
            "LEFT JOIN gateway_payout_batches b ON b.id = p.batch_id "
            "WHERE p.state = 'returned' ORDER BY p.id"
        )
    ).all()
    for payout_id, bank_reason in returned:
        reason = bank_reason or "the bank gave no reason"
        found = _CODE.match(bank_reason or "")
        bind.execute(
            sa.text(
                "UPDATE gateway_payouts SET return_kind = 'rejected', return_reason_code = :c, "
                "return_reason = :r, return_fee_minor = 0 WHERE id = :id"
            ),
            {"id": payout_id, "c": found.group(1) if found else None, "r": reason},
        )
    for table in ("payments_payouts", "payments_withdrawals"):
        copied = ", ".join(
            f"{column} = (SELECT g.{column} FROM gateway_payouts g "
            f"WHERE g.id = {table}.gateway_payout_id)"
            for column in ("return_kind", "return_reason_code", "return_reason", "return_fee_minor")
        )
        bind.execute(
            sa.text(
                f"UPDATE {table} SET {copied} "
                "WHERE state = 'returned' AND gateway_payout_id IS NOT NULL"
            )
        )


def downgrade() -> None:
    columns = ("return_fee_minor", "return_reason", "return_reason_code", "return_kind")
    if _postgres():
        op.drop_column("stmt_entries", "return_reason")
        for table in RETURN_TABLES:
            for column in columns:
                op.drop_column(table, column)
        return
    # Native DROP COLUMN (SQLite >= 3.35; a column's own CHECK goes with it): a batch-mode copy
    # would drop and recreate the tables.
    op.execute("ALTER TABLE stmt_entries DROP COLUMN return_reason")
    for table in RETURN_TABLES:
        for column in columns:
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
