"""One card refund (or payment) whose recovery fails must not stall the others
(``paykeep.db.quarantine``), against the session banksim, on SQLite and PostgreSQL.

Two refunds the issuer approved wait in ``posting`` (the ledger refused the debit: the account
held nothing yet); once the money is there, the recovery sweep posts them. One refund's row is
refused by a database trigger: the other is posted and finished in the same run, the poisoned
one is recorded under ``gateway.cards.recover_refunds``, left alone while backed off, and
finished — its money moved once — when the cause is gone and the wait is over.
"""

from __future__ import annotations

import pytest

from paykeep import limits
from paykeep.clock import FakeClock
from paykeep.db.quarantine import Quarantine
from paykeep.gateway.cards.errors import CardLedgerPostingFailed
from paykeep.gateway.cards.model import CardPaymentState, CardRefundState
from paykeep.gateway.cards.repository import CardRepository
from paykeep.gateway.cards.service import CardGateway
from paykeep.ledger.model import Account, AccountFlags, NewAccount, NewTransfer
from tests.gateway.cards.conftest import CALL_TIMEOUT_S, REVERSAL_TIMEOUT_S, Rig
from tests.support import refuse_row

R = CardRefundState
S = CardPaymentState
PASS = "gateway.cards.recover_refunds"
PAYMENTS_PASS = "gateway.cards.recover"


def empty_account(rig: Rig) -> Account:
    return rig.ledger.create_account(
        NewAccount(rig.ledger.ids.next_id(), "EUR", 2,
                   int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                   name=f"buyer:{rig.ledger.ids.next_id()}:wallet")
    )  # fmt: skip


def test_a_refund_whose_recovery_cannot_be_recorded_stalls_no_other(rig: Rig) -> None:
    clock = FakeClock()  # the backoff's clock; the gateway keeps the real one (field 7)
    gateway = CardGateway(
        rig.database, rig.ledger, rig.vault, rig.client,
        timeout_s=CALL_TIMEOUT_S, reversal_timeout_s=REVERSAL_TIMEOUT_S,
        quarantine=Quarantine(rig.database, clock),
    )  # fmt: skip
    funding = rig.ledger.create_account(NewAccount(rig.ledger.ids.next_id(), "EUR", 1, 0))
    refunds = {}
    for refund_id in ("rf-poisoned", "rf-other"):
        pan, token = rig.new_card(10_000)
        sale = gateway.sale(token, 5_000, "EUR", payment_id=f"sale-{pan[-8:]}",
                            credit_account_id=rig.wallet.id)  # fmt: skip
        assert sale.approved
        wallet = empty_account(rig)
        with pytest.raises(CardLedgerPostingFailed):  # approved; the wallet holds nothing
            gateway.refund(refund_id, sale.payment_id, 2_000, "EUR", wallet.id)
        assert gateway.card_refund(refund_id).state is R.POSTING
        rig.ledger.create_transfer(
            NewTransfer(rig.ledger.ids.next_id(), funding.id, wallet.id, 2_000, "EUR", 1)
        )
        refunds[refund_id] = wallet
    with rig.database.read() as conn:
        poisoned = CardRepository(conn).get_refund("rf-poisoned")
    assert poisoned is not None

    refuse_row(rig.database, "card_refunds", "refund_id", "rf-poisoned", on=True)
    try:
        assert gateway.recover_refunds(min_age_s=0) == (0, 0, 1)
        assert gateway.card_refund("rf-other").state is R.REFUNDED
        assert gateway.card_refund("rf-poisoned").state is R.POSTING
        (failure,) = gateway.quarantine.failures(PASS)
        assert failure.item_id == str(poisoned.pk)
        assert failure.error_code.startswith("database_")
        assert gateway.recover_refunds(min_age_s=0) == (0, 0, 0)  # backed off: not tried
    finally:
        refuse_row(rig.database, "card_refunds", "refund_id", "rf-poisoned", on=False)
    assert gateway.recover_refunds(min_age_s=0) == (0, 0, 0)  # still backed off
    clock.advance(limits.WORKER_ITEM_BACKOFF_S[0])
    assert gateway.recover_refunds(min_age_s=0) == (0, 0, 1)
    assert gateway.card_refund("rf-poisoned").state is R.REFUNDED
    assert gateway.quarantine.failures(PASS) == []
    # The ledger answered ``exists`` to the second posting: each wallet paid once.
    for wallet in refunds.values():
        assert rig.ledger.account(wallet.id).debits_posted == 2_000


def test_a_payment_whose_recovery_cannot_be_recorded_stalls_no_other(rig: Rig) -> None:
    """``recover``'s payments: two authorisations answered by nobody wait in ``reversing``
    (the network lost the answer and refuses every reversal). Once the network is back, one
    payment's row is refused by the database: the other is reversed in the same run, the
    poisoned one is recorded under ``gateway.cards.recover``, left alone while backed off,
    and reversed — the card's hold released once — when the cause is gone."""
    clock = FakeClock()
    gateway = CardGateway(
        rig.database, rig.ledger, rig.vault, rig.client,
        timeout_s=CALL_TIMEOUT_S, reversal_timeout_s=REVERSAL_TIMEOUT_S,
        quarantine=Quarantine(rig.database, clock),
    )  # fmt: skip
    cards = {}
    for payment_id in ("pay-poisoned", "pay-other"):
        pan, token = rig.new_card(10_000)
        card = rig.issuer_tokens[pan]
        with rig.banksim.http() as http:
            http.post("/faults/cards", json={"faults": [
                {"kind": "lost", "next": 1, "card": card, "mtis": ["0100"]},
                {"kind": "unavailable", "card": card, "mtis": ["0400"]},
            ]}).raise_for_status()  # fmt: skip
        result = gateway.authorise(token, 1_000, "EUR", payment_id=payment_id)
        assert result.state is S.REVERSING
        assert rig.issuer(pan)["held_minor"] == 1_000
        cards[payment_id] = pan
    rig.faults()
    with rig.database.read() as conn:
        poisoned = CardRepository(conn).get("pay-poisoned")
    assert poisoned is not None

    refuse_row(rig.database, "card_payments", "payment_id", "pay-poisoned", on=True)
    try:
        report = gateway.recover(min_age_s=0)
        assert (report.reversed, report.reversal_pending) == (1, 0)
        assert gateway.payment("pay-other").state is S.REVERSED
        assert gateway.payment("pay-poisoned").state is S.REVERSING
        (failure,) = gateway.quarantine.failures(PAYMENTS_PASS)
        assert failure.item_id == str(poisoned.pk)
        assert failure.error_code.startswith("database_")
        assert gateway.recover(min_age_s=0).reversed == 0  # backed off: not tried
    finally:
        refuse_row(rig.database, "card_payments", "payment_id", "pay-poisoned", on=False)
    assert gateway.recover(min_age_s=0).reversed == 0  # still backed off
    clock.advance(limits.WORKER_ITEM_BACKOFF_S[0])
    assert gateway.recover(min_age_s=0).reversed == 1
    assert gateway.payment("pay-poisoned").state is S.REVERSED
    assert gateway.quarantine.failures(PAYMENTS_PASS) == []
    for pan in cards.values():
        assert (rig.issuer(pan)["balance_minor"], rig.issuer(pan)["held_minor"]) == (10_000, 0)
