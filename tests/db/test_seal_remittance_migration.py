"""Migration 0013 on both databases: a payout's remittance text written in clear under 0012 is
sealed in place and the plaintext column is gone; the value opens under its purpose and row id
(and nowhere else), and the next pain.001 file still carries it; without field keys the
migration refuses with a typed error and changes nothing; the downgrade opens it back."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from lxml import etree

from paykeep.db import Database
from paykeep.db.errors import MigrationNeedsFieldKeys
from paykeep.db.migrate import current_revision, downgrade, upgrade
from paykeep.gateway.payouts.model import Debtor
from paykeep.gateway.payouts.service import PayoutService
from paykeep.ledger.model import NewAccount
from paykeep.ledger.service import Ledger
from paykeep.security.errors import FieldDecryptionFailed
from paykeep.security.fields import FieldCipher
from tests.db.test_seal_migration import _columns, _rows

#: payout id -> its remittance as 0012 stored it. ASCII for the first (the file carries it as
#: typed); the second checks a non-Latin-1 text opens exactly.
REMITTANCES = {21: "Invoice 88 rent for Zoe Angstrom", 22: "Miete März für Zoë Ångström"}
IBAN = "NL91ABNA0417164300"
PAIN = {"p": "urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"}
PAYOUTS = "SELECT id, remittance FROM gateway_payouts ORDER BY id"


def _insert_0012_rows(database: Database, cipher: FieldCipher) -> None:
    """What a 0012 database held: two requested payouts, creditors sealed (0011), remittance
    texts in clear."""
    with database.write() as conn:
        for payout_id, remittance in REMITTANCES.items():
            row_id = str(payout_id)
            conn.execute(
                sa.text(
                    "INSERT INTO gateway_payouts (id, request_id, fingerprint, merchant_ref, "
                    "debit_account_name, amount_minor, currency, creditor_name_enc, "
                    "creditor_iban_enc, creditor_iban_last4, remittance, end_to_end_id, state, "
                    "request_transfer_id, expected, created_at_ns, updated_at_ns) VALUES "
                    "(:id, :r, 'f', 'm', 'merchant:1', 100, 'EUR', :n, :i, :l, :t, :e, "
                    "'requested', 1, false, 1, 1)"
                ),
                {"id": payout_id, "r": f"req-{payout_id}", "t": remittance, "e": f"PO{payout_id}",
                 "n": cipher.seal("Tea Shop GmbH", purpose="payout.creditor_name", row_id=row_id),
                 "i": cipher.seal(IBAN, purpose="payout.creditor_iban", row_id=row_id),
                 "l": IBAN[-4:]},
            )  # fmt: skip


@pytest.fixture
def at_0012(database: Database, cipher: FieldCipher) -> Database:
    downgrade(database, "0012")  # the tables are empty: no keys needed
    assert current_revision(database) == "0012"
    _insert_0012_rows(database, cipher)
    return database


def test_upgrade_without_keys_refuses_and_changes_nothing(at_0012: Database) -> None:
    database = at_0012
    before = _rows(database, "SELECT * FROM gateway_payouts ORDER BY id")
    with pytest.raises(MigrationNeedsFieldKeys) as caught:
        upgrade(database)
    assert caught.value.code == "migration_needs_field_keys"
    assert current_revision(database) == "0012"
    columns = _columns(database, "gateway_payouts")
    assert "remittance" in columns and "remittance_enc" not in columns
    assert _rows(database, "SELECT * FROM gateway_payouts ORDER BY id") == before


def test_upgrade_seals_the_remittance_and_the_file_still_carries_it(
    at_0012: Database, cipher: FieldCipher
) -> None:
    database = at_0012
    upgrade(database, "0013", cipher=lambda: cipher)  # built only because there are rows
    assert current_revision(database) == "0013"
    assert "remittance" not in _columns(database, "gateway_payouts")
    # The batch-mode copy on SQLite kept the table's indexes (0012's among them).
    indexes = {i["name"] for i in sa.inspect(database.engine).get_indexes("gateway_payouts")}
    assert {"ix_gateway_payouts_state", "ix_gateway_payouts_created"} <= indexes

    sealed = _rows(database, "SELECT id, remittance_enc FROM gateway_payouts ORDER BY id")
    assert [payout_id for payout_id, _ in sealed] == list(REMITTANCES)
    for payout_id, remittance_enc in sealed:
        text = REMITTANCES[payout_id]
        assert text.encode() not in bytes(remittance_enc)
        opened = cipher.open(
            bytes(remittance_enc), purpose="payout.remittance", row_id=str(payout_id)
        )
        assert opened == text
    # A sealed text copied to another payout does not open there.
    with pytest.raises(FieldDecryptionFailed):
        cipher.open(bytes(sealed[0][1]), purpose="payout.remittance", row_id="22")

    # The next batch opens it for the bank, as typed (today's service, on today's schema: the
    # later revisions keep these rows as they are).
    upgrade(database, cipher=cipher)
    ledger = Ledger(database)
    ledger.create_accounts([NewAccount(1, "EUR", 1, 0, name="bank:safeguarding:simbank")])
    service = PayoutService(database, ledger, cipher=cipher)
    batch = service.batch("EUR", Debtor("Paykeep", "DE89370400440532013000", "simbank"))
    root = etree.fromstring(service.file(batch.batch_id))
    lines = {
        tx.findtext("p:PmtId/p:EndToEndId", namespaces=PAIN): tx
        for tx in root.iterfind(".//p:CdtTrfTxInf", PAIN)
    }
    assert lines["PO21"].findtext("p:RmtInf/p:Ustrd", namespaces=PAIN) == REMITTANCES[21]
    assert lines["PO21"].findtext("p:CdtrAcct/p:Id/p:IBAN", namespaces=PAIN) == IBAN


def test_downgrade_opens_the_text_back_and_refuses_without_keys(
    at_0012: Database, cipher: FieldCipher
) -> None:
    database = at_0012
    expected = _rows(database, PAYOUTS)
    assert expected == list(REMITTANCES.items())
    upgrade(database, "0013", cipher=cipher)
    with pytest.raises(MigrationNeedsFieldKeys):
        downgrade(database, "0012")
    assert current_revision(database) == "0013"
    assert "remittance_enc" in _columns(database, "gateway_payouts")
    downgrade(database, "0012", cipher=cipher)
    assert current_revision(database) == "0012"
    assert _rows(database, PAYOUTS) == expected
    assert "remittance_enc" not in _columns(database, "gateway_payouts")
