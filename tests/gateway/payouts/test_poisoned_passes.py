"""One bad item must not stall a gateway pass (``paykeep.db.quarantine``): payouts' ``resume``
and ``settle``, and the statements' import pass and posting recovery.

Each test poisons one item with a real fault — a trigger that refuses that item's row in the
database, on SQLite and PostgreSQL — and checks: another item of the same pass is handled in
the same run; the poisoned one changed nothing (its transaction rolled back); its failure is
recorded under the pass's name; it is left alone while backed off, and handled once the
cause is gone and its wait is over (the test clock), its failure then forgotten.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from paykeep import limits
from paykeep.db.quarantine import ItemFailure
from paykeep.gateway.payouts.model import CLEARING_ACCOUNT, BatchState, PayoutState
from paykeep.gateway.payouts.service import BankAnswer
from paykeep.gateway.statements.model import ExpectedMovement, Leg
from tests.gateway.payouts.conftest import BANK_ACCOUNT, FUNDED_MINOR, MERCHANT, World
from tests.gateway.statements.builder import Line, camt053
from tests.support import refuse_row, refuse_updates

TOPUP_CODE = 20


def failure_of(w: World, pass_name: str, item_id: str) -> ItemFailure | None:
    # Every service's quarantine reads the same table; the payouts' one will do.
    found = [f for f in w.payouts.quarantine.failures(pass_name) if f.item_id == item_id]
    return found[0] if found else None


def statement_state(w: World, statement_id: str) -> str:
    with w.database.read() as conn:
        return str(
            conn.execute(
                sa.text("SELECT state FROM stmt_statements WHERE statement_id = :s"),
                {"s": statement_id},
            ).scalar_one()
        )


def wait_out_backoff(w: World) -> None:
    w.clock.advance(limits.WORKER_ITEM_BACKOFF_S[0])


# --- payouts ----------------------------------------------------------------------------------


def test_a_rejected_payout_whose_return_cannot_be_recorded_stalls_no_other(world: World) -> None:
    w = world
    first, second = w.request("req-a", 3_000), w.request("req-b", 4_000)
    batch = w.payouts.batch("EUR", w.debtor)
    poisoned = str(first.payout_id)
    refuse_row(w.database, "gateway_payouts", "request_id", "req-a", on=True)
    try:
        # The bank's rejection; resume() returns each payout's money, one at a time.
        rejected = w.payouts.record_bank_answer(batch.batch_id, BankAnswer("RJCT", "AM04"))
        assert rejected.state is BatchState.REJECTED
        assert w.payouts.get(second.payout_id).state is PayoutState.RETURNED
        assert w.payouts.get(first.payout_id).state is PayoutState.BATCHED  # rolled back whole
        assert w.balance(CLEARING_ACCOUNT) == 3_000
        assert w.balance(MERCHANT) == FUNDED_MINOR - 3_000
        failure = failure_of(w, "gateway.payouts.resume", poisoned)
        assert failure is not None and failure.failures == 1
        assert failure.error_code.startswith("database_")
        assert w.payouts.resume() == 0  # backed off: not tried
    finally:
        refuse_row(w.database, "gateway_payouts", "request_id", "req-a", on=False)
    assert w.payouts.resume() == 0  # still backed off
    wait_out_backoff(w)
    assert w.payouts.resume() == 1
    assert w.payouts.get(first.payout_id).state is PayoutState.RETURNED
    assert (w.balance(CLEARING_ACCOUNT), w.balance(MERCHANT)) == (0, FUNDED_MINOR)
    assert failure_of(w, "gateway.payouts.resume", poisoned) is None


def test_a_payout_that_cannot_be_settled_stalls_no_other(world: World) -> None:
    w = world
    first, second = w.request("req-a", 3_000), w.request("req-b", 4_000)
    batch = w.payouts.batch("EUR", w.debtor)
    w.payouts.record_bank_answer(batch.batch_id, BankAnswer("ACCP", None))
    statement = camt053(
        [Line(-3_000, end_to_end_id=first.end_to_end_id),
         Line(-4_000, end_to_end_id=second.end_to_end_id)],
        iban=w.debtor.iban, statement_id="STMT-PAID", opening_minor=FUNDED_MINOR,
    )  # fmt: skip
    (outcome,) = w.statements.import_file(statement).statements
    assert outcome.matched == 2
    poisoned = str(first.payout_id)
    refuse_row(w.database, "gateway_payouts", "request_id", "req-a", on=True)
    try:
        assert w.payouts.settle() == 1
        assert w.payouts.get(second.payout_id).state is PayoutState.SETTLED
        assert w.payouts.get(first.payout_id).state is PayoutState.ACCEPTED
        # Not every payout of the batch is settled: the batch is not either.
        assert w.payouts.batch_file(batch.batch_id).batch.state is BatchState.ACCEPTED
        failure = failure_of(w, "gateway.payouts.settle", poisoned)
        assert failure is not None and failure.error_code.startswith("database_")
    finally:
        refuse_row(w.database, "gateway_payouts", "request_id", "req-a", on=False)
    assert w.payouts.settle() == 0  # backed off
    wait_out_backoff(w)
    assert w.payouts.settle() == 1
    assert w.payouts.get(first.payout_id).state is PayoutState.SETTLED
    assert w.payouts.batch_file(batch.batch_id).batch.state is BatchState.SETTLED
    assert w.balance(CLEARING_ACCOUNT) == 0
    assert failure_of(w, "gateway.payouts.settle", poisoned) is None


# --- statements -------------------------------------------------------------------------------


def credit_statement(w: World, statement_id: str, reference: str, amount: int) -> bytes:
    """A camt.053 of the debtor's account with one credit carrying ``reference``."""
    return camt053(
        [Line(amount, creditor_reference=reference)], iban=w.debtor.iban, statement_id=statement_id
    )


def expect_credits(w: World, *references: str) -> None:
    w.statements.add_account(w.debtor.iban, "EUR", BANK_ACCOUNT)
    for reference in references:
        w.statements.expect(
            ExpectedMovement(
                reference=reference, iban=w.debtor.iban, direction="credit", amount_minor=None,
                currency="EUR", standing=True, legs=(Leg(BANK_ACCOUNT, MERCHANT, TOPUP_CODE),),
            )
        )  # fmt: skip


def test_a_statement_file_that_cannot_be_recorded_stalls_no_other(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    w = world
    expect_credits(w, "REF-A", "REF-B")
    files = {
        "STMT-A": credit_statement(w, "STMT-A", "REF-A", 1_000),
        "STMT-B": credit_statement(w, "STMT-B", "REF-B", 2_000),
        "STMT-BAD": b"<not a statement",
    }
    refuse_row(w.database, "stmt_statements", "statement_id", "STMT-A", on=True)
    try:
        counts = w.statements.import_new(list(files), files.__getitem__)
        assert counts == {"imported": 1, "refused": 1, "isolated": 1}
        assert w.balance(MERCHANT) == FUNDED_MINOR + 2_000  # B's line posted, A's nothing
        failure = failure_of(w, "gateway.statements.import", "STMT-A")
        assert failure is not None and failure.error_code.startswith("database_")
        # A file the parser refuses is set aside at once with its code (the same bytes
        # would be refused again), not backed off like a failure.
        bad = failure_of(w, "gateway.statements.import", "STMT-BAD")
        assert bad is not None and bad.parked and bad.failures == 1
        assert bad.error_code.startswith("statement_")
        assert any("STMT-BAD" in r.getMessage() and bad.error_code in r.getMessage()
                   for r in caplog.records)  # fmt: skip
        fetched: list[str] = []

        def fetch(statement_id: str) -> bytes:
            fetched.append(statement_id)
            return files[statement_id]

        assert w.statements.import_new(list(files), fetch) == {}  # A backed off, BAD aside
        assert fetched == []
    finally:
        refuse_row(w.database, "stmt_statements", "statement_id", "STMT-A", on=False)
    wait_out_backoff(w)
    assert w.statements.import_new(list(files), files.__getitem__) == {"imported": 1}
    assert w.balance(MERCHANT) == FUNDED_MINOR + 3_000
    # An operator sends the file through again: refused again, set aside again.
    assert w.payouts.quarantine.release("gateway.statements.import", "STMT-BAD")
    assert w.statements.import_new(list(files), files.__getitem__) == {"refused": 1}
    assert failure_of(w, "gateway.statements.import", "STMT-BAD") is not None
    # ... and imports a corrected file under that id by hand: the pass drops the record.
    w.statements.import_file(credit_statement(w, "STMT-BAD", "REF-A", 5), filename="fixed.xml")
    assert w.statements.import_new(list(files), files.__getitem__) == {}
    assert failure_of(w, "gateway.statements.import", "STMT-BAD") is None
    assert w.balance(MERCHANT) == FUNDED_MINOR + 3_005
    assert failure_of(w, "gateway.statements.import", "STMT-A") is None
    assert w.statements.import_new(["STMT-A", "STMT-B"], files.__getitem__) == {}  # imported


def test_a_statement_left_posting_stalls_no_later_import(world: World) -> None:
    w = world
    expect_credits(w, "REF-A", "REF-B")
    files = {
        "STMT-A": credit_statement(w, "STMT-A", "REF-A", 1_000),
        "STMT-B": credit_statement(w, "STMT-B", "REF-B", 2_000),
    }
    # A is recorded and its line posted to the ledger, but the statement cannot be marked
    # posted: it stays ``posting``, for every later import to finish first.
    refuse_updates(w.database, "stmt_statements", "statement_id", ["STMT-A"], on=True)
    try:
        assert w.statements.import_new(["STMT-A"], files.__getitem__) == {"isolated": 1}
        assert statement_state(w, "STMT-A") == "posting"
        with w.database.read() as conn:
            row_id = str(
                conn.execute(
                    sa.text("SELECT id FROM stmt_statements WHERE statement_id = 'STMT-A'")
                ).scalar_one()
            )
        assert w.statements.import_new(list(files), files.__getitem__) == {"imported": 1}
        assert statement_state(w, "STMT-B") == "posted"
        assert statement_state(w, "STMT-A") == "posting"
        failure = failure_of(w, "gateway.statements.recover", row_id)
        assert failure is not None and failure.error_code.startswith("database_")
        assert w.statements.recover() == 0  # backed off: not tried
    finally:
        refuse_updates(w.database, "stmt_statements", "statement_id", ["STMT-A"], on=False)
    wait_out_backoff(w)
    assert w.statements.recover() == 1
    assert statement_state(w, "STMT-A") == "posted"
    assert w.balance(MERCHANT) == FUNDED_MINOR + 3_000  # A's line posted once
    assert failure_of(w, "gateway.statements.recover", row_id) is None
