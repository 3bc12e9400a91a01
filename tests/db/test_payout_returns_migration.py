"""Migration 0018 on both databases: a returned payout says how and why. Every payout already
``returned`` was rejected by our bank (nothing else returned one before): it becomes
``rejected`` with its batch's recorded answer as the reason (and its code), fee 0, and the
merchant's record copies it; other payouts say nothing. The downgrade takes the columns away
and leaves the states as they are."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from paykeep.db import Database
from paykeep.db.migrate import current_revision, downgrade, upgrade

NEW = {"return_kind", "return_reason_code", "return_reason", "return_fee_minor"}


def _rows(database: Database, sql: str) -> list[tuple[Any, ...]]:
    with database.read() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql))]


def _columns(database: Database, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(database.engine).get_columns(table)}


def _insert_0016_rows(database: Database) -> None:
    """Payouts as 0016 code left them: 20 returned (its file rejected AM04), 30 settled, 40
    returned (its file rejected with no reason recorded); merchants' records of 20 and 30."""
    with database.write() as conn:
        for batch_id, state, reason in ((7, "rejected", "AM04: insufficient funds"),
                                        (8, "settled", None), (9, "rejected", None)):  # fmt: skip
            conn.execute(
                sa.text(
                    "INSERT INTO gateway_payout_batches (id, message_id, schema, currency, "
                    "debtor_name, debtor_iban, bank, state, payout_count, control_sum_minor, "
                    "execution_date, bank_reason, created_at_ns, updated_at_ns) VALUES (:i, :m, "
                    "'pain.001.001.03', 'EUR', 'Paykeep', 'DE89370400440532013000', 'simbank', "
                    ":s, 1, 100, '2026-01-02', :reason, 1, 1)"
                ),
                {"i": batch_id, "m": f"PKPO{batch_id}", "s": state, "reason": reason},
            )
        for payout_id, state, batch_id in ((20, "returned", 7), (30, "settled", 8),
                                           (40, "returned", 9)):  # fmt: skip
            conn.execute(
                sa.text(
                    "INSERT INTO gateway_payouts (id, request_id, fingerprint, merchant_ref, "
                    "debit_account_name, amount_minor, currency, creditor_name_enc, "
                    "creditor_iban_enc, creditor_iban_last4, remittance_enc, end_to_end_id, state, "
                    "batch_id, request_transfer_id, expected, created_at_ns, updated_at_ns) "
                    "VALUES (:id, :r, 'f', 'm_1', 'merchant:m_1:available:EUR', 100, 'EUR', :b, "
                    ":b, '3000', :b, :e, :s, :batch, 1, false, 1, 1)"
                ),
                {"id": payout_id, "r": f"m_1:{payout_id}", "b": b"sealed", "e": f"PO{payout_id}",
                 "s": state, "batch": batch_id},
            )  # fmt: skip
        for record, gateway_id, state in (("po_1", 20, "returned"), ("po_2", 30, "settled")):
            conn.execute(
                sa.text(
                    "INSERT INTO payments_payouts (id, merchant_id, gateway_payout_id, "
                    "amount_minor, currency, state, created_at_ns, updated_at_ns) VALUES "
                    "(:id, 'm_1', :g, 100, 'EUR', :s, 1, 1)"
                ),
                {"id": record, "g": gateway_id, "s": state},
            )


@pytest.fixture
def at_0016(database: Database) -> Database:
    downgrade(database, "0016")
    assert current_revision(database) == "0016"
    assert not NEW & _columns(database, "gateway_payouts")
    _insert_0016_rows(database)
    return database


def test_upgrade_says_how_and_why_each_returned_payout_came_back(at_0016: Database) -> None:
    database = at_0016
    upgrade(database, "0018")
    assert current_revision(database) == "0018"
    assert _rows(
        database,
        "SELECT id, state, return_kind, return_reason_code, return_reason, return_fee_minor "
        "FROM gateway_payouts ORDER BY id",
    ) == [
        (20, "returned", "rejected", "AM04", "AM04: insufficient funds", 0),
        (30, "settled", None, None, None, None),
        (40, "returned", "rejected", None, "the bank gave no reason", 0),
    ]
    assert _rows(
        database,
        "SELECT id, return_kind, return_reason_code, return_reason, return_fee_minor "
        "FROM payments_payouts ORDER BY id",
    ) == [
        ("po_1", "rejected", "AM04", "AM04: insufficient funds", 0),
        ("po_2", None, None, None, None),
    ]
    assert "return_reason" in _columns(database, "stmt_entries")
    assert _columns(database, "payments_withdrawals") >= NEW
    # The columns check what they hold.
    for statement in (
        "UPDATE gateway_payouts SET return_kind = 'lost' WHERE id = 30",
        "UPDATE payments_payouts SET return_fee_minor = -1 WHERE id = 'po_2'",
    ):
        with pytest.raises(sa.exc.DBAPIError), database.write() as conn:
            conn.execute(sa.text(statement))


def test_downgrade_takes_the_columns_away(at_0016: Database) -> None:
    database = at_0016
    upgrade(database, "0018")
    downgrade(database, "0016")
    assert current_revision(database) == "0016"
    for table in ("gateway_payouts", "payments_payouts", "payments_withdrawals"):
        assert not NEW & _columns(database, table), table
    assert "return_reason" not in _columns(database, "stmt_entries")
    assert _rows(database, "SELECT id, state FROM gateway_payouts ORDER BY id") == [
        (20, "returned"), (30, "settled"), (40, "returned")]  # fmt: skip
    upgrade(database)
    assert _rows(database, "SELECT return_kind FROM gateway_payouts WHERE id = 20") == [
        ("rejected",)
    ]
