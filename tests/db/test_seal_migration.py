"""Migration 0011 on both databases: rows written in clear under 0010 are sealed in place, the
plaintext columns are gone, the values open under their purpose and row id (and nowhere else);
without field keys the migration refuses with a typed error and changes nothing; the
downgrade opens them back."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from paykeep.db import Database
from paykeep.db.errors import MigrationNeedsFieldKeys
from paykeep.db.migrate import current_revision, downgrade, upgrade
from paykeep.gateway.payouts.service import PayoutService
from paykeep.security.errors import FieldDecryptionFailed
from paykeep.security.fields import FieldCipher

NAME = "Zoë Ångström-Buyer"
IBAN = "NL91ABNA0417164300"
OTHER_NAME = "Tea Shop GmbH"
OTHER_IBAN = "GB82WEST12345698765432"
XML = (
    f"<?xml version='1.0' encoding='UTF-8'?><Document><Nm>{NAME}</Nm><IBAN>{IBAN}</IBAN></Document>"
)
REMITTANCE = "TOPUP-7 rent for Zoë"
PAYOUT_FP = "a" * 64
STATEMENT_FP = "b" * 64
PLAINTEXT_COLUMNS = {
    "gateway_payouts": {"creditor_name", "creditor_iban"},
    "gateway_payout_batches": {"file_xml"},
    "stmt_entries": {"counterparty_name", "counterparty_iban", "remittance_info"},
}


def _insert_0010_rows(database: Database) -> None:
    """What a 0010 database held: a batch with its file, two payouts, a statement of two lines
    (one naming its payer, one naming nobody)."""
    with database.write() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO gateway_payout_batches (id, message_id, schema, currency, "
                "debtor_name, debtor_iban, bank, state, payout_count, control_sum_minor, "
                "execution_date, file_xml, file_sha256, created_at_ns, updated_at_ns) VALUES "
                "(7, 'PKPO7', 'pain.001.001.03', 'EUR', 'Paykeep', 'DE89370400440532013000', "
                "'simbank', 'generated', 1, 100, '2026-01-02', :x, 'f', 1, 1)"
            ),
            {"x": XML},
        )
        for payout_id, name, iban, batch, state in (
            (11, NAME, IBAN, 7, "batched"),
            (12, OTHER_NAME, OTHER_IBAN, None, "requested"),
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO gateway_payouts (id, request_id, fingerprint, merchant_ref, "
                    "debit_account_name, amount_minor, currency, creditor_name, creditor_iban, "
                    "remittance, end_to_end_id, state, batch_id, request_transfer_id, expected, "
                    "created_at_ns, updated_at_ns) VALUES (:id, :r, :f, 'm', 'merchant:1', 100, "
                    "'EUR', :n, :i, 'Payout m', :e, :s, :b, 1, false, 1, 1)"
                ),
                {"id": payout_id, "r": f"req-{payout_id}", "f": PAYOUT_FP, "n": name, "i": iban,
                 "e": f"PO{payout_id}", "s": state, "b": batch},
            )  # fmt: skip
        conn.execute(
            sa.text(
                "INSERT INTO stmt_statements (id, account, kind, statement_id, format, currency, "
                "entry_count, fingerprint, registered, imported_at_ns, state) VALUES "
                "(3, 'DE89370400440532013000', 'camt.053', 'S-1', 'camt.053.001.02', 'EUR', 2, "
                ":f, true, 1, 'posted')"
            ),
            {"f": STATEMENT_FP},
        )
        conn.execute(
            sa.text(
                "INSERT INTO stmt_entries (statement_row_id, line, amount_minor, currency, status, "
                "remittance_info, counterparty_name, counterparty_iban) VALUES "
                "(3, 1, 2500, 'EUR', 'booked', :r, :n, :i), "
                "(3, 2, -100, 'EUR', 'booked', NULL, NULL, NULL)"
            ),
            {"r": REMITTANCE, "n": NAME, "i": IBAN},
        )


def _columns(database: Database, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(database.engine).get_columns(table)}


def _rows(database: Database, sql: str) -> list[tuple[Any, ...]]:
    with database.read() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql))]


@pytest.fixture
def at_0010(database: Database) -> Database:
    downgrade(database, "0010")  # the tables are empty: no keys needed
    assert current_revision(database) == "0010"
    _insert_0010_rows(database)
    return database


def test_upgrade_without_keys_refuses_and_changes_nothing(at_0010: Database) -> None:
    database = at_0010
    snapshot = {
        t: _rows(database, f"SELECT * FROM {t}")
        for t in ("gateway_payouts", "gateway_payout_batches", "stmt_statements", "stmt_entries")
    }
    with pytest.raises(MigrationNeedsFieldKeys) as caught:
        upgrade(database)
    assert caught.value.code == "migration_needs_field_keys"
    assert current_revision(database) == "0010"
    for table, columns in PLAINTEXT_COLUMNS.items():
        assert columns <= _columns(database, table)
        assert "creditor_iban_enc" not in _columns(database, "gateway_payouts")
    for table, rows in snapshot.items():
        assert _rows(database, f"SELECT * FROM {table}") == rows


def test_upgrade_seals_every_row_and_drops_the_plaintext(
    at_0010: Database, cipher: FieldCipher
) -> None:
    database = at_0010
    upgrade(database, "0011", cipher=lambda: cipher)  # built only because there are rows
    assert current_revision(database) == "0011"
    for table, columns in PLAINTEXT_COLUMNS.items():
        assert not columns & _columns(database, table), table

    payouts = _rows(
        database,
        "SELECT id, creditor_name_enc, creditor_iban_enc, creditor_iban_last4, fingerprint "
        "FROM gateway_payouts ORDER BY id",
    )
    for (payout_id, name_enc, iban_enc, last4, fingerprint), (name, iban) in zip(
        payouts, [(NAME, IBAN), (OTHER_NAME, OTHER_IBAN)], strict=True
    ):
        row_id = str(payout_id)
        assert IBAN.encode() not in bytes(iban_enc) and name.encode() not in bytes(name_enc)
        assert cipher.open(bytes(name_enc), purpose="payout.creditor_name", row_id=row_id) == name
        assert cipher.open(bytes(iban_enc), purpose="payout.creditor_iban", row_id=row_id) == iban
        assert last4 == iban[-4:]
        # The unkeyed request digest is gone; the keyed one is what a replay is compared with.
        assert fingerprint == cipher.lookup(PAYOUT_FP, purpose="payout.request") != PAYOUT_FP
    # A sealed IBAN copied to another payout does not open there.
    with pytest.raises(FieldDecryptionFailed):
        cipher.open(bytes(payouts[0][2]), purpose="payout.creditor_iban", row_id="12")

    # The batch's file opens to the very bytes it held, through the service that sends it
    # (today's service, on today's schema: the later revisions keep these rows as they are).
    upgrade(database, cipher=cipher)
    service = PayoutService(database, cipher=cipher)
    assert service.file(7) == XML.encode("utf-8")
    assert service.get(11).creditor_iban_last4 == IBAN[-4:]

    ((fingerprint,),) = _rows(database, "SELECT fingerprint FROM stmt_statements")
    assert fingerprint == cipher.lookup(STATEMENT_FP, purpose="statement.content")
    lines = _rows(
        database,
        "SELECT line, counterparty_name_enc, counterparty_iban_enc, counterparty_iban_last4, "
        "remittance_info_enc FROM stmt_entries ORDER BY line",
    )
    line, name_enc, iban_enc, last4, remittance_enc = lines[0]
    assert line == 1
    assert cipher.open(bytes(name_enc), purpose="statement.counterparty_name", row_id="3:1") == NAME
    assert cipher.open(bytes(iban_enc), purpose="statement.counterparty_iban", row_id="3:1") == IBAN
    assert last4 == IBAN[-4:]
    opened = cipher.open(bytes(remittance_enc), purpose="statement.remittance_info", row_id="3:1")
    assert opened == REMITTANCE
    assert lines[1] == (2, None, None, None, None)  # nothing named, nothing sealed
    # stmt_entries is append-only again.
    with pytest.raises(sa.exc.DBAPIError), database.write() as conn:
        conn.execute(sa.text("UPDATE stmt_entries SET amount_minor = 1 WHERE line = 2"))


def test_downgrade_opens_the_values_back_and_refuses_without_keys(
    at_0010: Database, cipher: FieldCipher
) -> None:
    database = at_0010
    before = {
        "payouts": "SELECT id, creditor_name, creditor_iban FROM gateway_payouts ORDER BY id",
        "batches": "SELECT id, file_xml FROM gateway_payout_batches",
        "entries": "SELECT line, counterparty_name, counterparty_iban, remittance_info "
        "FROM stmt_entries ORDER BY line",
    }
    expected = {k: _rows(database, q) for k, q in before.items()}
    upgrade(database, "0011", cipher=cipher)
    with pytest.raises(MigrationNeedsFieldKeys):
        downgrade(database, "0010")
    assert current_revision(database) == "0011"
    assert "creditor_iban_enc" in _columns(database, "gateway_payouts")
    downgrade(database, "0010", cipher=cipher)
    assert current_revision(database) == "0010"
    assert {k: _rows(database, q) for k, q in before.items()} == expected
    assert "creditor_iban_enc" not in _columns(database, "gateway_payouts")
    with pytest.raises(sa.exc.DBAPIError), database.write() as conn:
        conn.execute(sa.text("DELETE FROM stmt_entries"))
