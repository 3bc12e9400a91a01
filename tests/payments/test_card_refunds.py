"""Refunds of card-paid orders go back to the card: the payments service over a real database
(SQLite and PostgreSQL), the real card gateway and a real banksim card network over TCP.

The refund's transaction records the card refund and reserves the money in the wallet; the
worker pass (``send_card_refunds``) sends it, outside any transaction, exactly once."""

from __future__ import annotations

import pytest

from paykeep.limits import CARD_REFUND_ATTEMPTS_MAX, CARD_REFUND_RETRIES_MAX
from paykeep.payments.errors import (
    CardRefundRetriesExhausted,
    IllegalTransition,
    InsufficientFunds,
    ResourceMissing,
)
from paykeep.payments.model import TimerSettings
from paykeep.payments.records import Buyer, Merchant, Order
from tests.payments.conftest import CardWorld, assert_books_balance


def test_a_full_refund_reserves_the_money_then_credits_the_card_once(cw: CardWorld) -> None:
    w = cw.world
    merchant, buyer, pan, token, order = cw.card_paid(2_500)
    assert w.wallet(buyer) == (0, 2_500)
    seq = w.last_seq()
    with cw.svc.transaction() as tx:
        _order, refund = cw.svc.refund(tx, merchant.id, order.id, None)
    api = refund.to_api()
    assert (api["destination"], api["card_refund"]) == (
        "card", {"status": "pending", "last4": pan[-4:]})  # fmt: skip
    # Reserved in the refund's transaction: the buyer cannot spend it meanwhile.
    assert w.wallet(buyer) == (0, 2_500)
    _other, other_token = w.order(merchant, buyer, 100)
    bs = w.bs(other_token)  # the buyer, signed in: only the funds can refuse
    with pytest.raises(InsufficientFunds), cw.svc.transaction() as tx:
        cw.svc.pay_from_wallet(tx, other_token, bs)
    assert cw.svc.send_card_refunds() == {"succeeded": 1}
    assert cw.svc.send_card_refunds() == {}  # nothing left: never sent twice
    assert cw.card_refund_rows(order) == [("succeeded", 2_500, 1, refund.id)]
    view = cw.issuer(token)
    assert (view["balance_minor"], view["refunded_minor"]) == (100_000, 2_500)
    assert w.wallet(buyer) == (0, 0)  # where it was before the card sale
    assert cw.clearing() == (2_500, 2_500)  # the sale in, the refund out
    types = w.event_types_since(seq)
    assert types.count("refund.card_refund_succeeded") == 1
    assert types.index("refund.completed") < types.index("refund.card_refund_succeeded")
    with cw.svc.reading() as tx:
        stored = cw.svc.refund_record(tx, merchant.id, refund.id).to_api()
    assert (stored["destination"], stored["card_refund"]["status"]) == ("card", "succeeded")


def test_a_partial_refund_sends_only_the_refunded_part(cw: CardWorld) -> None:
    w = cw.world
    merchant, buyer, _pan, token, order = cw.card_paid(3_000)
    with cw.svc.transaction() as tx:
        cw.svc.ship(tx, merchant.id, order.id, "demo-post", "TRACK0001")
        cw.svc.refund(tx, merchant.id, order.id, 1_000)
    assert cw.svc.send_card_refunds() == {"succeeded": 1}
    assert cw.issuer(token)["balance_minor"] == 100_000 - 2_000
    assert w.wallet(buyer) == (0, 0)
    assert w.get_order(order.id).released_minor == 2_000


def test_the_unshipped_timer_refund_goes_back_to_the_card(cw: CardWorld) -> None:
    w = cw.world
    _merchant, buyer, _pan, token, order = cw.card_paid(
        1_700, w.merchant(timers=TimerSettings(ship_by_s=60))
    )
    w.clock.advance(61)
    assert cw.svc.run_timers() == {"refund_unshipped": 1}
    assert cw.card_refund_rows(order) == [("pending", 1_700, 1, None)]  # no refund record
    assert cw.svc.send_card_refunds() == {"succeeded": 1}
    assert cw.issuer(token)["balance_minor"] == 100_000
    assert w.wallet(buyer) == (0, 0)


def test_an_unavailable_network_is_retried_with_a_new_attempt(cw: CardWorld) -> None:
    merchant, _buyer, _pan, token, order = cw.card_paid(900)
    cw.faults({"kind": "unavailable", "next": 1, "card": token, "mtis": ["0200"]})
    with cw.svc.transaction() as tx:
        cw.svc.refund(tx, merchant.id, order.id, None)
    assert cw.svc.send_card_refunds() == {"retry": 1}
    assert [r[:3] for r in cw.card_refund_rows(order)] == [("pending", 900, 2)]
    assert cw.svc.send_card_refunds() == {"succeeded": 1}
    view = cw.issuer(token)
    assert (view["balance_minor"], view["refunded_minor"]) == (100_000, 900)


def test_a_refund_the_network_never_takes_stays_in_the_wallet(cw: CardWorld) -> None:
    w = cw.world
    merchant, buyer, _pan, token, order = cw.card_paid(800)
    cw.faults({"kind": "unavailable", "card": token, "mtis": ["0200"]})
    with cw.svc.transaction() as tx:
        _order, refund = cw.svc.refund(tx, merchant.id, order.id, None)
    seq = w.last_seq()
    for _ in range(CARD_REFUND_ATTEMPTS_MAX - 1):
        assert cw.svc.send_card_refunds() == {"retry": 1}
    assert cw.svc.send_card_refunds() == {"failed": 1}
    assert cw.card_refund_rows(order) == [("failed", 800, CARD_REFUND_ATTEMPTS_MAX, refund.id)]
    assert w.wallet(buyer) == (800, 0)  # the reservation voided: the buyer's to spend
    assert cw.issuer(token)["balance_minor"] == 100_000 - 800
    assert w.event_types_since(seq) == ["refund.card_refund_failed"]
    with cw.svc.reading() as tx:
        stored = cw.svc.refund_record(tx, None, refund.id).to_api()
    assert (stored["destination"], stored["card_refund"]["status"]) == ("wallet", "failed")
    # The money is the buyer's: it pays the next order from the wallet.
    _other, other_token = w.order(merchant, buyer, 800)
    bs = w.bs(other_token)  # the buyer, signed in
    with cw.svc.transaction() as tx:
        cw.svc.pay_from_wallet(tx, other_token, bs)


def test_a_worker_that_dies_after_the_approval_does_not_credit_twice(cw: CardWorld) -> None:
    w = cw.world
    merchant, buyer, _pan, token, order = cw.card_paid(1_100)
    with cw.svc.transaction() as tx:
        cw.svc.refund(tx, merchant.id, order.id, None)
    with cw.svc.reading() as tx:
        (intent,) = tx.repo.card_refunds({"order_id": order.id}, 1, None)
    # What a worker does before it records the outcome — then it dies.
    wallet_id = w.ledger.account_by_name(f"buyer:{buyer.id}:wallet:EUR").id
    first = cw.gateway.refund(f"{intent.id}-1", intent.card_payment_id, 1_100, "EUR", wallet_id,
                              pending_transfer_id=intent.reservation_transfer_id)  # fmt: skip
    assert first.approved
    assert cw.svc.send_card_refunds() == {"succeeded": 1}  # the replay's stored answer
    view = cw.issuer(token)
    assert (view["balance_minor"], view["refunded_minor"]) == (100_000, 1_100)
    assert w.wallet(buyer) == (0, 0)


def test_a_wallet_paid_order_is_refunded_to_the_wallet(cw: CardWorld) -> None:
    w = cw.world
    merchant = w.merchant()
    buyer = w.buyer(merchant)
    order, _token = w.paid_order(merchant, buyer, 1_300)
    with cw.svc.transaction() as tx:
        _order, refund = cw.svc.refund(tx, merchant.id, order.id, None)
    assert (refund.to_api()["destination"], refund.to_api()["card_refund"]) == ("wallet", None)
    assert cw.card_refund_rows(order) == []
    assert cw.svc.send_card_refunds() == {}
    assert w.wallet(buyer) == (1_300, 0)


def test_money_is_conserved_across_card_sales_and_refunds(cw: CardWorld) -> None:
    """Liabilities = bank top-ups + card sales − card refunds (clearing's balance), and the
    ledger audits clean (checked again by the fixture)."""
    w = cw.world
    merchant = w.merchant()
    buyer = w.buyer(merchant)
    pan, _token = cw.card()
    for amount, refund in ((2_000, None), (1_500, 500), (700, None)):
        order = cw.card_order(merchant, buyer, pan, amount)
        with cw.svc.transaction() as tx:
            if refund is not None:
                cw.svc.ship(tx, merchant.id, order.id, "demo-post", f"TRK{amount}")
            cw.svc.refund(tx, merchant.id, order.id, refund)
    w.paid_order(merchant, buyer, 400)  # wallet money, from the "bank"
    assert cw.svc.send_card_refunds() == {"succeeded": 3}
    debits, credits = cw.clearing()
    assert (debits, credits) == (4_200, 2_000 + 500 + 700)
    assert w.wallet(buyer) == (0, 400)
    assert_books_balance(w.database)


def _failed_card_refund(cw: CardWorld, amount: int) -> tuple[Merchant, Buyer, Order, str, str]:
    """A card-paid order refunded while the issuer is unavailable for its card, so the card
    refund failed after its attempts: (merchant, buyer, order, card refund id, banksim token). The
    fault stays on; the caller clears it with ``cw.faults()``."""
    w = cw.world
    merchant, buyer, _pan, token, order = cw.card_paid(amount)
    cw.faults({"kind": "unavailable", "card": token, "mtis": ["0200"]})
    with cw.svc.transaction() as tx:
        cw.svc.refund(tx, merchant.id, order.id, None)
    for _ in range(CARD_REFUND_ATTEMPTS_MAX):
        cw.svc.send_card_refunds()
    with cw.svc.reading() as tx:
        (intent,) = tx.repo.card_refunds({"order_id": order.id}, 1, None)
    assert intent.state == "failed"
    assert w.wallet(buyer) == (amount, 0)
    return merchant, buyer, order, intent.id, token


def test_an_operator_sends_a_failed_card_refund_again(cw: CardWorld) -> None:
    w = cw.world
    _merchant, buyer, order, intent_id, token = _failed_card_refund(cw, 650)
    cw.faults()  # the issuer is back
    seq = w.last_seq()
    with cw.svc.transaction() as tx:
        retried = cw.svc.retry_card_refund(tx, intent_id, "key_operator")
    assert (retried.state, retried.retries, retried.attempts) == ("pending", 1, 4)
    assert retried.attempts_max == 3 + CARD_REFUND_ATTEMPTS_MAX
    # Reserved again at once: the buyer cannot spend it while it is on its way.
    assert w.wallet(buyer) == (0, 650)
    assert cw.svc.send_card_refunds() == {"succeeded": 1}
    assert cw.card_refund_rows(order) == [("succeeded", 650, 4, retried.refund_id)]
    view = cw.issuer(token)
    assert (view["balance_minor"], view["refunded_minor"]) == (100_000, 650)
    assert w.wallet(buyer) == (0, 0)
    assert w.event_types_since(seq) == [
        "refund.card_refund_retried", "refund.card_refund_succeeded"]  # fmt: skip
    with cw.svc.reading() as tx:
        stored = cw.svc.refund_record(tx, None, str(retried.refund_id)).to_api()
    assert (stored["destination"], stored["card_refund"]["status"]) == ("card", "succeeded")
    # Only a failed card refund can be sent again.
    with pytest.raises(IllegalTransition), cw.svc.transaction() as tx:
        cw.svc.retry_card_refund(tx, intent_id, "key_operator")


def test_a_retry_finds_the_money_spent_and_changes_nothing(cw: CardWorld) -> None:
    w = cw.world
    merchant, buyer, _order, intent_id, _token = _failed_card_refund(cw, 500)
    cw.faults()
    _other, other_token = w.order(merchant, buyer, 500)
    with cw.svc.transaction() as tx:  # the buyer spends the wallet money on another order
        cw.svc.pay_from_wallet(tx, other_token, w.bs(other_token))
    seq = w.last_seq()
    with pytest.raises(InsufficientFunds), cw.svc.transaction() as tx:
        cw.svc.retry_card_refund(tx, intent_id, "key_operator")
    with cw.svc.reading() as tx:
        intent = cw.svc.card_refund(tx, None, intent_id)
    assert (intent.state, intent.retries, intent.attempts) == ("failed", 0, 3)
    assert w.event_types_since(seq) == []
    assert cw.svc.send_card_refunds() == {}


def test_each_round_voids_its_own_reservation_and_retries_are_bounded(cw: CardWorld) -> None:
    """With the issuer still down, every retried round fails and returns the money to the
    wallet again (each round's reservation voided under its own id), until the limit."""
    w = cw.world
    _merchant, buyer, order, intent_id, _token = _failed_card_refund(cw, 300)
    for round_ in range(1, CARD_REFUND_RETRIES_MAX + 1):
        with cw.svc.transaction() as tx:
            cw.svc.retry_card_refund(tx, intent_id, "key_operator")
        assert w.wallet(buyer) == (0, 300)
        for _ in range(CARD_REFUND_ATTEMPTS_MAX - 1):
            assert cw.svc.send_card_refunds() == {"retry": 1}
        assert cw.svc.send_card_refunds() == {"failed": 1}
        assert w.wallet(buyer) == (300, 0)
        attempts = (round_ + 1) * CARD_REFUND_ATTEMPTS_MAX
        assert cw.card_refund_rows(order)[0][:3] == ("failed", 300, attempts)
    with pytest.raises(CardRefundRetriesExhausted), cw.svc.transaction() as tx:
        cw.svc.retry_card_refund(tx, intent_id, "key_operator")
    with pytest.raises(ResourceMissing), cw.svc.transaction() as tx:
        cw.svc.retry_card_refund(tx, "crf_unknown", "key_operator")
