"""Seal the payout remittance text, the gateway's last personal datum in clear.

``gateway_payouts.remittance`` is free text: what an operator types at ``paykeep payouts
request --remittance``, or a returned transfer's bank reference. It can name a person ("rent
for <name>") or their invoice, so it becomes ``remittance_enc`` — sealed exactly as 0011
sealed the creditor's name: AES-GCM (``FieldCipher.seal``), purpose ``payout.remittance``,
row id the payout id. Only the pain.001 builder opens it.

Existing rows are sealed here, then the plaintext column is dropped. The keys come from the
caller (``paykeep.db.migrate.upgrade(cipher=...)``); with rows to seal and no keys the
migration raises ``migration_needs_field_keys`` before changing anything. On SQLite the
column goes with a batch-mode copy of ``gateway_payouts``, as in 0011 (no foreign key points
at this table, and the copy keeps its indexes and constraints).

The downgrade, as 0011's, opens the values back into a plaintext column with the keys that
sealed them, and refuses with ``migration_needs_field_keys`` (nothing changed) when there are
sealed rows and no keys.

The purpose is spelled out here rather than imported: a migration must keep meaning what it
meant when it ran, whatever the code is renamed to later.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from paykeep.db.migrate import migration_cipher
from paykeep.security.fields import FieldCipher

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

REMITTANCE = "payout.remittance"

_PAGE = 1_000
_WHAT = "payout remittance texts"


def _cipher_if_rows() -> FieldCipher | None:
    """The cipher if there is anything to seal or open, decided before any change."""
    if op.get_bind().execute(sa.text("SELECT 1 FROM gateway_payouts LIMIT 1")).first() is None:
        return None
    return migration_cipher(context.config.attributes, _WHAT)


def _pages(column: str) -> Iterator[list[Any]]:
    """``(id, column)`` of every payout, by id, a page at a time, so a large table is never
    held in memory at once."""
    bind = op.get_bind()
    after = None
    while True:
        where, params = ("1 = 1", {}) if after is None else ("id > :after", {"after": after})
        rows = list(
            bind.execute(
                sa.text(
                    f"SELECT id, {column} FROM gateway_payouts WHERE {where} "
                    f"ORDER BY id LIMIT {_PAGE}"
                ),
                params,
            )
        )
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def upgrade() -> None:
    cipher = _cipher_if_rows()
    bind = op.get_bind()
    op.add_column("gateway_payouts", sa.Column("remittance_enc", sa.LargeBinary))
    if cipher is not None:
        for rows in _pages("remittance"):
            bind.execute(
                sa.text("UPDATE gateway_payouts SET remittance_enc = :r WHERE id = :id"),
                [
                    {"id": r[0], "r": cipher.seal(r[1], purpose=REMITTANCE, row_id=str(r[0]))}
                    for r in rows
                ],
            )
    with op.batch_alter_table("gateway_payouts") as batch:
        batch.drop_column("remittance")
        batch.alter_column("remittance_enc", existing_type=sa.LargeBinary, nullable=False)


def downgrade() -> None:
    """Back to 0012's plaintext column, opened with the keys that sealed it (refused, with
    nothing changed, when there are sealed rows and no keys)."""
    cipher = _cipher_if_rows()
    bind = op.get_bind()
    # NOT NULL needs a value for the rows already there; the default goes once they are filled.
    op.add_column(
        "gateway_payouts",
        sa.Column("remittance", sa.String(140), nullable=False, server_default=""),
    )
    if cipher is not None:
        for rows in _pages("remittance_enc"):
            bind.execute(
                sa.text("UPDATE gateway_payouts SET remittance = :r WHERE id = :id"),
                [
                    {
                        "id": r[0],
                        "r": cipher.open(bytes(r[1]), purpose=REMITTANCE, row_id=str(r[0])),
                    }
                    for r in rows
                ],
            )
    with op.batch_alter_table("gateway_payouts") as batch:
        batch.drop_column("remittance_enc")
        batch.alter_column("remittance", existing_type=sa.String(140), server_default=None)
