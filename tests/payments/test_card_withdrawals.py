"""Buyer withdrawals back to the card: the payments service over a real database (SQLite and
PostgreSQL), the real card gateway and a real banksim card network over TCP.

Card-funded wallet money is made as it happens in production: card-paid orders refunded while
the issuer is unavailable for the card, so the card refunds fail for good and their money
stays in the wallet. The withdrawal's transaction writes it, its card refunds and their
reservations together; the worker pass (``send_card_refunds``) sends each part exactly once and
the last outcome settles the withdrawal."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from paykeep.gateway.payouts.errors import PayoutRequestIdReused
from paykeep.limits import CARD_REFUND_ATTEMPTS_MAX
from paykeep.payments.errors import InsufficientFunds, RiskDeclined
from paykeep.payments.records import Buyer, Merchant, Order, Withdrawal
from tests.payments.conftest import CardWorld

TO_CARD = "source_card"


class CardMoney(NamedTuple):
    merchant: Merchant
    buyer: Buyer
    token: str  # a checkout token of the buyer
    cards: list[tuple[str, str, Order]]  # (pan, banksim token, order), oldest first


def card_money(cw: CardWorld, *amounts: int) -> CardMoney:
    """A buyer who paid one order per amount with a fresh card each (oldest first), every order
    refunded while the issuer was unavailable for its card: the money is in their wallet."""
    w = cw.world
    merchant = w.merchant()
    buyer = w.buyer(merchant)
    cards = []
    for amount in amounts:
        pan, token = cw.card()
        cards.append((pan, token, cw.card_order(merchant, buyer, pan, amount)))
    cw.faults(*({"kind": "unavailable", "card": t, "mtis": ["0200"]} for _, t, _ in cards))
    for _, _, order in cards:
        with cw.svc.transaction() as tx:
            cw.svc.refund(tx, merchant.id, order.id, None)
    for _ in range(CARD_REFUND_ATTEMPTS_MAX):
        cw.svc.send_card_refunds()
    cw.faults()  # the issuer is back
    assert w.wallet(buyer) == (sum(amounts), 0)
    _order, token = w.order(merchant, buyer, 100)
    return CardMoney(merchant, buyer, token, cards)


def withdraw(cw: CardWorld, money: CardMoney, amount: int, request_id: str = "k1") -> Withdrawal:
    return cw.svc.request_withdrawal(
        money.token, cw.world.bs(money.token), amount, "EUR", request_id, destination=TO_CARD
    )


def test_the_parts_are_reserved_together_and_the_last_outcome_settles_it_once(
    cw: CardWorld,
) -> None:
    w = cw.world
    money = card_money(cw, 1_000, 800)
    (_, older, _), (_, newer, _) = money.cards
    seq = w.last_seq()
    withdrawal = withdraw(cw, money, 1_300)
    assert (withdrawal.state, withdrawal.destination) == ("pending", TO_CARD)
    parts = [(c.amount_minor, c.state, c.withdrawal_id) for c in withdrawal.card_refunds]
    assert parts == [(800, "pending", withdrawal.id), (500, "pending", withdrawal.id)]
    # Reserved with the row: the buyer cannot spend it meanwhile.
    assert w.wallet(money.buyer) == (500, 1_300)
    assert w.event_types_since(seq) == ["withdrawal.created"]
    # A worker approves the first part and dies before recording it.
    first = withdrawal.card_refunds[0]
    wallet_id = w.ledger.account_by_name(f"buyer:{money.buyer.id}:wallet:EUR").id
    approved = cw.gateway.refund(
        f"{first.id}-1",
        first.card_payment_id,
        800,
        "EUR",
        wallet_id,
        pending_transfer_id=first.reservation_transfer_id,
    )
    assert approved.approved
    seq = w.last_seq()
    assert cw.svc.send_card_refunds() == {"succeeded": 2}
    assert cw.svc.send_card_refunds() == {}  # nothing left: never sent twice
    succeeded = "refund.card_refund_succeeded"
    assert w.event_types_since(seq) == [succeeded, succeeded, "withdrawal.settled"]
    with cw.svc.reading() as tx:
        (done,) = cw.svc.withdrawals(tx, None, 10, None, buyer_id=money.buyer.id)
    assert done.state == "settled"
    assert [c.state for c in done.card_refunds] == ["succeeded", "succeeded"]
    assert cw.issuer(newer)["refunded_minor"] == 800
    assert cw.issuer(older)["refunded_minor"] == 500
    assert w.wallet(money.buyer) == (500, 0)


def test_a_replay_is_the_original_and_other_details_are_refused(cw: CardWorld) -> None:
    w = cw.world
    money = card_money(cw, 700)
    first = withdraw(cw, money, 300, "same")
    assert withdraw(cw, money, 300, "same").id == first.id
    with pytest.raises(PayoutRequestIdReused):
        withdraw(cw, money, 301, "same")
    assert w.count("payments_card_refunds", "withdrawal_id = :w", w=first.id) == 1
    assert w.wallet(money.buyer) == (400, 300)


def test_the_risk_controls_stop_it_before_anything_is_written(cw: CardWorld) -> None:
    w = cw.world
    money = card_money(cw, 600)

    class Blocks:
        def __init__(self) -> None:
            self.asked: list[tuple[str, dict[str, Any]]] = []

        def decide(self, conn: Any, kind: str, context: dict[str, Any]) -> str:
            self.asked.append((kind, context))
            return "block" if kind == "withdrawal" else "allow"

    risk = Blocks()
    cw.svc.risk = risk
    seq = w.last_seq()
    with pytest.raises(RiskDeclined):
        withdraw(cw, money, 600)
    [(kind, context)] = risk.asked
    assert (kind, context["buyer"], context["amount_minor"]) == ("withdrawal", money.buyer.id, 600)
    assert w.count("payments_withdrawals") == 0
    assert w.count("payments_card_refunds", "withdrawal_id IS NOT NULL") == 0
    assert w.event_types_since(seq) == []
    assert w.wallet(money.buyer) == (600, 0)


def test_the_wallet_bounds_it_too(cw: CardWorld) -> None:
    """The card paid in 1,000 and can take it all back, but 600 of it was spent since."""
    w = cw.world
    money = card_money(cw, 1_000)
    _order, token = w.order(money.merchant, money.buyer, 600)
    with cw.svc.transaction() as tx:
        cw.svc.pay_from_wallet(tx, token, w.bs(token))
    with pytest.raises(InsufficientFunds):
        withdraw(cw, money, 401)
    assert w.count("payments_withdrawals") == 0
    assert withdraw(cw, money, 400).amount_minor == 400
    assert w.wallet(money.buyer) == (0, 1_000)  # the order's hold and the reservation


def test_the_bank_cycle_never_follows_a_withdrawal_to_the_card(cw: CardWorld) -> None:
    """``sync_withdrawals`` follows gateway payouts and finishes bank withdrawals a crash left
    ``pending``; a withdrawal to the card has no payout and is ``pending`` until its card
    refunds end, however long that takes."""
    money = card_money(cw, 500)
    withdrawal = withdraw(cw, money, 500)

    class NoPayouts:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the payout gateway was asked for {name}")

    cw.svc.payouts = NoPayouts()  # type: ignore[assignment]
    cw.world.clock.advance(3_600)
    assert cw.svc.sync_withdrawals(pending_age_s=0) == 0
    with cw.svc.reading() as tx:
        assert tx.repo.open_withdrawals("", 10) == []
        current = tx.repo.withdrawal(withdrawal.id)
    assert current is not None and current.state == "pending"
    cw.svc.payouts = None
    assert cw.svc.send_card_refunds() == {"succeeded": 1}
