"""Seal the personal data the gateway kept in clear.

Payouts: the creditor's name and IBAN (a merchant's payout account, or a buyer's own account
for a withdrawal) become ``creditor_name_enc`` / ``creditor_iban_enc`` (AES-GCM,
``FieldCipher.seal``, purposes ``payout.creditor_name`` / ``payout.creditor_iban``, row id the
payout id) plus ``creditor_iban_last4`` for display. The batch's copy of its pain.001 file,
which lists every creditor, becomes ``file_xml_enc`` (purpose ``payout_batch.file``, row id the
batch id). A payout request's ``fingerprint`` was an unkeyed SHA-256 over fields that include
the IBAN — guessable from a list of candidate IBANs — and becomes the keyed
``FieldCipher.lookup`` of that digest (purpose ``payout.request``).

Statement lines (``stmt_entries``): the counterparty's name and IBAN (the payer of a bank
transfer: a buyer) and the free remittance text become ``counterparty_name_enc``,
``counterparty_iban_enc`` (+ ``counterparty_iban_last4``) and ``remittance_info_enc``
(purposes ``statement.counterparty_name`` / ``.counterparty_iban`` / ``.remittance_info``, row
id ``<statement row id>:<line>``). A statement's ``fingerprint`` (SHA-256 over its lines,
counterparties included) becomes the keyed lookup of that digest (purpose
``statement.content``).

Existing rows are sealed here, then the plaintext columns are dropped. The keys come from the
caller (``paykeep.db.migrate.upgrade(cipher=...)``); with rows to seal and no keys the
migration raises ``migration_needs_field_keys`` before changing anything. ``stmt_entries`` is
append-only: its triggers are dropped for the backfill and created again, in this one
transaction. On SQLite, ``gateway_payout_batches`` loses ``file_xml`` with a native ``ALTER
TABLE ... DROP COLUMN`` (SQLite >= 3.35): a batch-mode copy would drop and recreate the table,
and with foreign keys on, dropping a table that payouts and batch events reference fails.

The purposes are spelled out here rather than imported: a migration must keep meaning what it
meant when it ran, whatever the code is renamed to later.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from paykeep.db.migrate import migration_cipher
from paykeep.security.fields import FieldCipher

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

PAYOUT_NAME = "payout.creditor_name"
PAYOUT_IBAN = "payout.creditor_iban"
PAYOUT_REQUEST = "payout.request"
BATCH_FILE = "payout_batch.file"
ENTRY_NAME = "statement.counterparty_name"
ENTRY_IBAN = "statement.counterparty_iban"
ENTRY_REMITTANCE = "statement.remittance_info"
STATEMENT_CONTENT = "statement.content"

_PAGE = 1_000
_WHAT = "payout creditors, payment files and statement lines"


def _postgres() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def _has_rows(tables: Sequence[str]) -> bool:
    bind = op.get_bind()
    return any(bind.execute(sa.text(f"SELECT 1 FROM {t} LIMIT 1")).first() for t in tables)


def _cipher_if_rows() -> FieldCipher | None:
    """The cipher if there is anything to seal or open, decided before any change."""
    tables = ("gateway_payouts", "gateway_payout_batches", "stmt_statements", "stmt_entries")
    if not _has_rows(tables):
        return None
    return migration_cipher(context.config.attributes, _WHAT)


def _drop_entry_triggers() -> None:
    if _postgres():
        op.execute("DROP TRIGGER IF EXISTS stmt_entries_append_only ON stmt_entries")
    else:
        op.execute("DROP TRIGGER IF EXISTS stmt_entries_no_update")
        op.execute("DROP TRIGGER IF EXISTS stmt_entries_no_delete")


def _create_entry_triggers() -> None:
    # As in 0003 (the PostgreSQL function stmt_append_only() stays in place).
    if _postgres():
        op.execute(
            "CREATE TRIGGER stmt_entries_append_only BEFORE UPDATE OR DELETE ON stmt_entries "
            "FOR EACH STATEMENT EXECUTE FUNCTION stmt_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER stmt_entries_no_update BEFORE UPDATE ON stmt_entries "
            "BEGIN SELECT RAISE(ABORT, 'stmt_entries is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER stmt_entries_no_delete BEFORE DELETE ON stmt_entries "
            "BEGIN SELECT RAISE(ABORT, 'stmt_entries is append-only'); END"
        )


def _drop_batch_column(name: str) -> None:
    if _postgres():
        op.drop_column("gateway_payout_batches", name)
    else:
        op.execute(f"ALTER TABLE gateway_payout_batches DROP COLUMN {name}")


def _pages(sql: str, keys: int) -> Iterator[list[Any]]:
    """Rows of ``sql`` (ordered by its first ``keys`` columns, with a ``{after}`` slot for the
    keyset condition) a page at a time, so a large table is never held in memory at once."""
    bind = op.get_bind()
    after: tuple[Any, ...] | None = None
    while True:
        if after is None:
            where, params = "1 = 1", {}
        elif keys == 1:
            where, params = "id > :k0", {"k0": after[0]}
        else:
            where = "(statement_row_id > :k0 OR (statement_row_id = :k0 AND line > :k1))"
            params = {"k0": after[0], "k1": after[1]}
        rows = list(bind.execute(sa.text(sql.format(after=where) + f" LIMIT {_PAGE}"), params))
        if not rows:
            return
        yield rows
        after = tuple(rows[-1][:keys])


def _seal(cipher: FieldCipher, value: str | None, purpose: str, row_id: str) -> bytes | None:
    return None if value is None else cipher.seal(value, purpose=purpose, row_id=row_id)


def _open(cipher: FieldCipher, value: Any, purpose: str, row_id: str) -> str | None:
    return None if value is None else cipher.open(bytes(value), purpose=purpose, row_id=row_id)


def upgrade() -> None:
    cipher = _cipher_if_rows()
    bind = op.get_bind()
    _drop_entry_triggers()
    op.add_column("gateway_payouts", sa.Column("creditor_name_enc", sa.LargeBinary))
    op.add_column("gateway_payouts", sa.Column("creditor_iban_enc", sa.LargeBinary))
    op.add_column("gateway_payouts", sa.Column("creditor_iban_last4", sa.String(4)))
    op.add_column("gateway_payout_batches", sa.Column("file_xml_enc", sa.LargeBinary))
    for column in ("counterparty_name_enc", "counterparty_iban_enc", "remittance_info_enc"):
        op.add_column("stmt_entries", sa.Column(column, sa.LargeBinary))
    op.add_column("stmt_entries", sa.Column("counterparty_iban_last4", sa.String(4)))
    if cipher is not None:
        _seal_existing(bind, cipher)
    with op.batch_alter_table("gateway_payouts") as batch:
        batch.drop_column("creditor_name")
        batch.drop_column("creditor_iban")
        batch.alter_column("creditor_name_enc", existing_type=sa.LargeBinary, nullable=False)
        batch.alter_column("creditor_iban_enc", existing_type=sa.LargeBinary, nullable=False)
        batch.alter_column("creditor_iban_last4", existing_type=sa.String(4), nullable=False)
    _drop_batch_column("file_xml")
    with op.batch_alter_table("stmt_entries") as batch:
        batch.drop_column("counterparty_name")
        batch.drop_column("counterparty_iban")
        batch.drop_column("remittance_info")
    _create_entry_triggers()


def _seal_existing(bind: sa.Connection, cipher: FieldCipher) -> None:
    for rows in _pages(
        "SELECT id, creditor_name, creditor_iban, fingerprint FROM gateway_payouts "
        "WHERE {after} ORDER BY id",
        1,
    ):
        bind.execute(
            sa.text(
                "UPDATE gateway_payouts SET creditor_name_enc = :n, creditor_iban_enc = :i, "
                "creditor_iban_last4 = :l, fingerprint = :f WHERE id = :id"
            ),
            [
                {
                    "id": r[0],
                    "n": cipher.seal(r[1], purpose=PAYOUT_NAME, row_id=str(r[0])),
                    "i": cipher.seal(r[2], purpose=PAYOUT_IBAN, row_id=str(r[0])),
                    "l": r[2][-4:],
                    "f": cipher.lookup(r[3], purpose=PAYOUT_REQUEST),
                }
                for r in rows
            ],
        )
    for rows in _pages(
        "SELECT id, file_xml FROM gateway_payout_batches "
        "WHERE file_xml IS NOT NULL AND {after} ORDER BY id",
        1,
    ):
        bind.execute(
            sa.text("UPDATE gateway_payout_batches SET file_xml_enc = :x WHERE id = :id"),
            [
                {"id": r[0], "x": cipher.seal(r[1], purpose=BATCH_FILE, row_id=str(r[0]))}
                for r in rows
            ],
        )
    for rows in _pages("SELECT id, fingerprint FROM stmt_statements WHERE {after} ORDER BY id", 1):
        bind.execute(
            sa.text("UPDATE stmt_statements SET fingerprint = :f WHERE id = :id"),
            [{"id": r[0], "f": cipher.lookup(r[1], purpose=STATEMENT_CONTENT)} for r in rows],
        )
    for rows in _pages(
        "SELECT statement_row_id, line, counterparty_name, counterparty_iban, remittance_info "
        "FROM stmt_entries WHERE {after} ORDER BY statement_row_id, line",
        2,
    ):
        changed = [r for r in rows if r[2] is not None or r[3] is not None or r[4] is not None]
        if not changed:
            continue
        bind.execute(
            sa.text(
                "UPDATE stmt_entries SET counterparty_name_enc = :n, counterparty_iban_enc = :i, "
                "counterparty_iban_last4 = :l, remittance_info_enc = :r "
                "WHERE statement_row_id = :s AND line = :line"
            ),
            [
                {
                    "s": r[0],
                    "line": r[1],
                    "n": _seal(cipher, r[2], ENTRY_NAME, f"{r[0]}:{r[1]}"),
                    "i": _seal(cipher, r[3], ENTRY_IBAN, f"{r[0]}:{r[1]}"),
                    "l": r[3][-4:] if r[3] else None,
                    "r": _seal(cipher, r[4], ENTRY_REMITTANCE, f"{r[0]}:{r[1]}"),
                }
                for r in changed
            ],
        )


def downgrade() -> None:
    """Back to 0010's plaintext columns, opened with the keys that sealed them (refused, with
    nothing changed, when there are sealed rows and no keys). Fingerprints stay keyed digests:
    the unkeyed ones cannot be recomputed from a digest, so after a downgrade a replayed payout
    request or re-imported statement is refused as a conflict — never processed twice."""
    cipher = _cipher_if_rows()
    bind = op.get_bind()
    _drop_entry_triggers()
    # NOT NULL needs a value for the rows already there; the default goes once they are filled.
    op.add_column(
        "gateway_payouts",
        sa.Column("creditor_name", sa.String(70), nullable=False, server_default=""),
    )
    op.add_column(
        "gateway_payouts",
        sa.Column("creditor_iban", sa.String(34), nullable=False, server_default=""),
    )
    op.add_column("gateway_payout_batches", sa.Column("file_xml", sa.Text))
    op.add_column("stmt_entries", sa.Column("remittance_info", sa.Text))
    op.add_column("stmt_entries", sa.Column("counterparty_name", sa.Text))
    op.add_column("stmt_entries", sa.Column("counterparty_iban", sa.String(140)))
    if cipher is not None:
        _open_existing(bind, cipher)
    with op.batch_alter_table("gateway_payouts") as batch:
        batch.drop_column("creditor_iban_last4")
        batch.drop_column("creditor_iban_enc")
        batch.drop_column("creditor_name_enc")
        batch.alter_column("creditor_name", existing_type=sa.String(70), server_default=None)
        batch.alter_column("creditor_iban", existing_type=sa.String(34), server_default=None)
    _drop_batch_column("file_xml_enc")
    with op.batch_alter_table("stmt_entries") as batch:
        batch.drop_column("counterparty_iban_last4")
        batch.drop_column("remittance_info_enc")
        batch.drop_column("counterparty_iban_enc")
        batch.drop_column("counterparty_name_enc")
    _create_entry_triggers()


def _open_existing(bind: sa.Connection, cipher: FieldCipher) -> None:
    for rows in _pages(
        "SELECT id, creditor_name_enc, creditor_iban_enc FROM gateway_payouts "
        "WHERE {after} ORDER BY id",
        1,
    ):
        bind.execute(
            sa.text(
                "UPDATE gateway_payouts SET creditor_name = :n, creditor_iban = :i WHERE id = :id"
            ),
            [
                {
                    "id": r[0],
                    "n": _open(cipher, r[1], PAYOUT_NAME, str(r[0])),
                    "i": _open(cipher, r[2], PAYOUT_IBAN, str(r[0])),
                }
                for r in rows
            ],
        )
    for rows in _pages(
        "SELECT id, file_xml_enc FROM gateway_payout_batches "
        "WHERE file_xml_enc IS NOT NULL AND {after} ORDER BY id",
        1,
    ):
        bind.execute(
            sa.text("UPDATE gateway_payout_batches SET file_xml = :x WHERE id = :id"),
            [{"id": r[0], "x": _open(cipher, r[1], BATCH_FILE, str(r[0]))} for r in rows],
        )
    for rows in _pages(
        "SELECT statement_row_id, line, counterparty_name_enc, counterparty_iban_enc, "
        "remittance_info_enc FROM stmt_entries WHERE {after} ORDER BY statement_row_id, line",
        2,
    ):
        changed = [r for r in rows if r[2] is not None or r[3] is not None or r[4] is not None]
        if not changed:
            continue
        bind.execute(
            sa.text(
                "UPDATE stmt_entries SET counterparty_name = :n, counterparty_iban = :i, "
                "remittance_info = :r WHERE statement_row_id = :s AND line = :line"
            ),
            [
                {
                    "s": r[0],
                    "line": r[1],
                    "n": _open(cipher, r[2], ENTRY_NAME, f"{r[0]}:{r[1]}"),
                    "i": _open(cipher, r[3], ENTRY_IBAN, f"{r[0]}:{r[1]}"),
                    "r": _open(cipher, r[4], ENTRY_REMITTANCE, f"{r[0]}:{r[1]}"),
                }
                for r in changed
            ],
        )
