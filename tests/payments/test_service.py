"""``PaymentsService`` on SQLite and PostgreSQL: the escrow flow as narratives with exact
figures, every refund path, every timer, refusals (illegal transitions, ownership, bad input,
insufficient funds) that change nothing, the outbox, and personal data at rest.

Every test ends (fixture ``world``) with the ledger audit and debits = credits per currency.
Default figures: 25.00 EUR, fee plan 2.9 % + 0.30 with a 10 % reserve held one hour.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from paykeep.clock import NS_PER_S
from paykeep.config import SQLITE_FILE_NAME
from paykeep.errors import PaykeepError
from paykeep.ids import derived_id
from paykeep.ledger.model import TransferFlags
from paykeep.payments.errors import (
    CheckoutSessionExpired,
    IllegalTransition,
    InsufficientFunds,
    PaymentsInputInvalid,
    ResourceMissing,
    RiskDeclined,
)
from paykeep.payments.model import (
    ITEMS_MAX,
    LineItem,
    OrderState,
    RefundAction,
    RefundState,
    Timer,
    TimerSettings,
)
from paykeep.payments.records import Order, Shipment
from paykeep.payments.service import NewMerchant, Tx
from tests.payments.conftest import IBAN, World

S = OrderState
DAY_S = 24 * 3600
DEFAULT_TIMERS = TimerSettings()


# --- helpers ----------------------------------------------------------------------------------


def refused(
    w: World, error: type[PaykeepError], code: str, action: Callable[[Tx], object]
) -> PaykeepError:
    """Run ``action`` in a write transaction, expect ``error`` with ``code``, and check that
    nothing changed: no event written, no ledger movement."""
    seq, head = w.last_seq(), w.ledger.head()
    with pytest.raises(error) as caught, w.svc.transaction() as tx:
        action(tx)
    assert caught.value.code == code, caught.value
    assert w.event_types_since(seq) == [], "a refused action wrote an event"
    assert w.ledger.head() == head, "a refused action moved money"
    return caught.value


def ship(w: World, order: Order, tracking: str = "JD0001234") -> tuple[Order, Shipment]:
    with w.svc.transaction() as tx:
        return w.svc.ship(tx, order.merchant_id, order.id, "dhl", tracking)


def deliver(w: World, shipment: Shipment, occurred_at_ns: int | None = None) -> Shipment:
    with w.svc.transaction() as tx:
        return w.svc.shipment_event(
            tx, shipment, "delivered", source="merchant", occurred_at_ns=occurred_at_ns
        )


def reference_fee(released: int) -> int:
    """The default plan's fee by hand: 2.9 % rounded half-up, + 0.30, at most the amount."""
    if released <= 0:
        return 0
    return min(released, (2 * released * 290 + 10_000) // 20_000 + 30)


def held_by_merchant(w: World, order: Order) -> int:
    acc = w.account(f"merchant:{order.merchant_id}:available:{order.currency}")
    return 0 if acc is None else acc.credits_pending


def open_dispute(w: World, order: Order, token: str) -> tuple[str, str]:
    """Buyer requests a refund, merchant refuses, buyer escalates: (refund id, dispute id)."""
    with w.svc.transaction() as tx:
        refund = w.svc.request_refund(tx, token, order.id, None, "broken")
    with w.svc.transaction() as tx:
        w.svc.refund_action(tx, refund.id, RefundAction.REFUSE, scope=order.merchant_id)
    with w.svc.transaction() as tx:
        w.svc.refund_action(tx, refund.id, RefundAction.ESCALATE, token=token)
    with w.svc.reading() as tx:
        (dispute,) = tx.repo.disputes({"order_id": order.id}, 10, None)
    return refund.id, dispute.id


# --- the happy path ---------------------------------------------------------------------------


def test_happy_path_pay_ship_deliver_confirm(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    w.fund(b, 10_000)
    start = w.clock.now_ns()
    order, token = w.order(m, b, 2_500)
    assert order.state is S.CREATED and order.amount_minor == 2_500
    assert (order.timer, order.timer_due_ns) == (
        Timer.CLOSE_UNPAID, start + DEFAULT_TIMERS.unpaid_close_s * NS_PER_S,
    )  # fmt: skip

    # pay from the wallet: the money is held (pending), not yet the merchant's
    w.clock.advance(60)
    bs = w.bs(token)  # signed in again after the clock moved (a write: outside the tx)
    seq = w.last_seq()
    with w.svc.transaction() as tx:
        order = w.svc.pay_from_wallet(tx, token, bs)
    assert order.state is S.AWAITING_SHIPMENT and order.funding == "wallet"
    assert order.timer == Timer.REFUND_UNSHIPPED
    assert order.timer_due_ns == w.clock.now_ns() + DEFAULT_TIMERS.ship_by_s * NS_PER_S
    assert w.event_types_since(seq) == [
        "order.awaiting_shipment", "checkout_session.completed", "payment.succeeded",
    ]  # fmt: skip
    assert w.wallet(b) == (7_500, 2_500)
    assert (w.available(m), held_by_merchant(w, order)) == (0, 2_500)
    hold = w.ledger.transfer(derived_id("order-hold", order.id))
    assert hold.flags & int(TransferFlags.PENDING) and hold.amount_minor == 2_500

    # ship: the confirm-after-shipping window starts
    w.clock.advance(3_600)
    seq = w.last_seq()
    order, shipment = ship(w, order)
    assert order.state is S.AWAITING_RECEIPT and shipment.state == "label_created"
    assert order.timer == Timer.CONFIRM_AFTER_SHIPPING
    assert (
        order.timer_due_ns == w.clock.now_ns() + DEFAULT_TIMERS.confirm_after_shipping_s * NS_PER_S
    )
    assert w.event_types_since(seq) == ["shipment.created", "order.awaiting_receipt"]

    # tracking events: idempotent per (source, external id), forward only
    seq = w.last_seq()
    for _ in range(2):
        with w.svc.transaction() as tx:
            shipment = w.svc.shipment_event(
                tx, shipment, "in_transit", source="dhl", external_id="evt-1"
            )
    assert w.count("payments_shipment_events", "shipment_id = :s", s=shipment.id) == 1
    assert w.event_types_since(seq) == ["shipment.updated"]
    assert w.get_order(order.id).timer == Timer.CONFIRM_AFTER_SHIPPING

    # delivered: the confirm-after-delivery window starts at the delivery time
    w.clock.advance(DAY_S)
    delivered_at = w.clock.now_ns() - 600 * NS_PER_S
    seq = w.last_seq()
    shipment = deliver(w, shipment, delivered_at)
    order = w.get_order(order.id)
    assert shipment.state == "delivered" and order.state is S.AWAITING_RECEIPT
    assert order.delivered_at_ns == delivered_at
    assert order.timer == Timer.CONFIRM_AFTER_DELIVERY
    assert order.timer_due_ns == delivered_at + DEFAULT_TIMERS.confirm_after_delivery_s * NS_PER_S
    assert w.event_types_since(seq) == ["shipment.updated", "order.updated"]
    # an event behind the shipment's state is recorded, not applied
    seq = w.last_seq()
    with w.svc.transaction() as tx:
        w.svc.shipment_event(tx, shipment, "picked_up", source="merchant")
    assert w.event_types_since(seq) == []

    # the buyer confirms: price - fee - reserve available, reserve held, fee to the platform
    bs = w.bs(token)  # a day later: signed in again (outside the tx: signing in writes)
    seq = w.last_seq()
    with w.svc.transaction() as tx:
        order = w.svc.confirm(tx, order.id, token=token, buyer_session=bs)
    fee = 73 + 30  # 2.9 % of 2,500 = 72.5 -> 73 (half-up) + 0.30
    reserve = (2_500 - fee) // 10  # 239
    assert order.state is S.COMPLETED
    assert (order.fee_minor, order.released_minor, order.refunded_minor) == (fee, 2_500, 0)
    assert order.timer is None and order.timer_due_ns is None
    assert w.event_types_since(seq) == ["order.completed"]
    assert w.available(m) == 2_500 - fee - reserve == 2_158
    assert w.reserve(m) == reserve == 239
    assert w.fees() == fee
    assert w.wallet(b) == (7_500, 0)
    assert held_by_merchant(w, order) == 0
    with w.svc.reading() as tx:
        (balances,) = w.svc.merchant_balances(tx, m.id, m.id)
        (wallet,) = w.svc.buyer_balances(tx, m.id, b.id)
    assert (balances.available_minor, balances.pending_minor, balances.reserve_minor) == (
        2_158, 0, 239,
    )  # fmt: skip
    assert (wallet.available_minor, wallet.pending_minor) == (7_500, 0)

    # the reserve comes back after its hold period, not before
    w.clock.advance(3_599)
    assert w.svc.release_reserves() == 0
    w.clock.advance(1)
    assert w.svc.release_reserves() == 1
    assert w.svc.release_reserves() == 0
    assert (w.available(m), w.reserve(m)) == (2_397, 0)


def test_every_event_carries_its_object(world: World) -> None:
    """The outbox rows are the API's representation: id, type, object id, merchant."""
    w = world
    m = w.merchant()
    b = w.buyer(m)
    seq = w.last_seq()
    order, _token = w.paid_order(m, b)
    events = w.events_since(seq)
    assert [e[0] for e in events] == [
        "order.created", "checkout_session.created",
        "order.awaiting_shipment", "checkout_session.completed", "payment.succeeded",
    ]  # fmt: skip
    for type_, object_id, merchant_id, payload in events:
        document = json.loads(payload)
        assert document["type"] == type_
        assert document["data"]["object"]["id"] == object_id
        assert merchant_id == m.id
    last_order = json.loads(events[2][3])["data"]["object"]
    assert last_order["id"] == order.id and last_order["state"] == "awaiting_shipment"
    assert last_order["amount_minor"] == 2_500


# --- refunds ----------------------------------------------------------------------------------


def test_merchant_full_refund_before_shipping_voids_the_hold(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, _ = w.paid_order(m, b)
    seq = w.last_seq()
    with w.svc.transaction() as tx:
        order, refund = w.svc.refund(tx, m.id, order.id, None, "out of stock")
    assert order.state is S.REFUNDED and refund.state is RefundState.COMPLETED
    assert (order.refunded_minor, order.released_minor, order.fee_minor) == (2_500, 0, 0)
    assert w.event_types_since(seq) == ["refund.completed", "order.refunded"]
    assert w.wallet(b) == (2_500, 0)
    assert (w.available(m), w.reserve(m), w.fees(), held_by_merchant(w, order)) == (0, 0, 0, 0)
    void = w.ledger.transfer(derived_id("order-void", order.id))
    assert void.flags & int(TransferFlags.VOID_PENDING)


def test_merchant_partial_refund_after_shipping(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, _ = w.paid_order(m, b)
    order, _shipment = ship(w, order)
    seq = w.last_seq()
    with w.svc.transaction() as tx:
        order, refund = w.svc.refund(tx, m.id, order.id, 1_000, "one cup broken")
    fee = 44 + 30  # 2.9 % of 1,500 = 43.5 -> 44, + 0.30
    reserve = (1_500 - fee) // 10  # 142
    assert order.state is S.PARTIALLY_REFUNDED and refund.amount_minor == 1_000
    assert (order.refunded_minor, order.released_minor, order.fee_minor) == (1_000, 1_500, fee)
    assert w.event_types_since(seq) == ["refund.completed", "order.partially_refunded"]
    assert w.wallet(b) == (1_000, 0)
    assert (w.available(m), w.reserve(m), w.fees()) == (1_500 - fee - reserve, reserve, fee)


def test_buyer_request_then_merchant_agrees(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b)
    seq = w.last_seq()
    with w.svc.transaction() as tx:
        refund = w.svc.request_refund(tx, token, order.id, None, "changed my mind")
    assert refund.state is RefundState.REQUESTED and refund.amount_minor == 2_500
    assert w.event_types_since(seq) == ["refund.requested", "order.updated"]
    paused = w.get_order(order.id)
    assert paused.paused and paused.to_api()["timer"] is None
    seq = w.last_seq()
    with w.svc.transaction() as tx:
        refund = w.svc.refund_action(tx, refund.id, RefundAction.AGREE, scope=m.id)
    assert refund.state is RefundState.COMPLETED
    assert w.event_types_since(seq) == ["refund.completed", "order.refunded"]
    order = w.get_order(order.id)
    assert order.state is S.REFUNDED and not order.paused
    assert w.wallet(b) == (2_500, 0) and w.available(m) == 0


def test_buyer_request_with_return(world: World) -> None:
    """agree_with_return -> ship_return -> receive_return: the money moves on receipt."""
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b)
    order, _ = ship(w, order)
    with w.svc.transaction() as tx:
        refund = w.svc.request_refund(tx, token, order.id, 2_000, "wrong colour")
    seq = w.last_seq()
    with w.svc.transaction() as tx:
        refund = w.svc.refund_action(tx, refund.id, RefundAction.AGREE_WITH_RETURN, scope=m.id)
    assert refund.state is RefundState.MERCHANT_AGREED
    assert w.event_types_since(seq) == ["refund.merchant_agreed"]
    # the buyer ships it back, with a tracking number of their own
    seq = w.last_seq()
    with w.svc.transaction() as tx:
        refund = w.svc.refund_action(
            tx, refund.id, RefundAction.SHIP_RETURN, token=token, carrier="ups",
            tracking_number="1Z999AA10123456784",
        )  # fmt: skip
    assert refund.state is RefundState.RETURN_SHIPPED
    assert w.event_types_since(seq) == ["shipment.created", "refund.return_shipped"]
    with w.svc.reading() as tx:
        (back,) = tx.repo.shipments({"order_id": order.id, "direction": "return"}, 10, None)
    assert back.tracking_number == "1Z999AA10123456784"
    assert w.wallet(b) == (0, 2_500), "nothing moves before the merchant has the goods back"
    seq = w.last_seq()
    with w.svc.transaction() as tx:
        refund = w.svc.refund_action(tx, refund.id, RefundAction.RECEIVE_RETURN, scope=m.id)
    assert refund.state is RefundState.COMPLETED
    assert w.event_types_since(seq) == ["refund.completed", "order.partially_refunded"]
    fee = 15 + 30  # 2.9 % of 500 = 14.5 -> 15, + 0.30
    order = w.get_order(order.id)
    assert (order.state, order.refunded_minor, order.released_minor, order.fee_minor) == (
        S.PARTIALLY_REFUNDED, 2_000, 500, fee,
    )  # fmt: skip
    assert w.wallet(b) == (2_000, 0)
    assert (w.available(m), w.reserve(m), w.fees()) == (500 - fee - 45, 45, fee)


def test_agreeing_with_a_return_marks_the_refund_return_required(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b)
    with w.svc.transaction() as tx:
        refund = w.svc.request_refund(tx, token, order.id, None, "wrong size")
    with w.svc.transaction() as tx:
        refund = w.svc.refund_action(tx, refund.id, RefundAction.AGREE_WITH_RETURN, scope=m.id)
    with w.svc.reading() as tx:
        stored = w.svc.refund_record(tx, m.id, refund.id)
    assert refund.return_required and stored.return_required
    assert stored.to_api()["return_required"] is True


@pytest.mark.parametrize(
    ("buyer_bp", "state", "to_buyer", "to_merchant"),
    [
        (0, S.COMPLETED, 0, 3_001),
        (10_000, S.REFUNDED, 3_001, 0),
        (3_333, S.PARTIALLY_REFUNDED, 1_000, 2_001),
    ],
)
def test_refuse_escalate_and_decide(
    world: World, buyer_bp: int, state: OrderState, to_buyer: int, to_merchant: int
) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b, 3_001)
    order, _ = ship(w, order)
    with w.svc.transaction() as tx:
        refund = w.svc.request_refund(tx, token, order.id, None, "not as described")
    seq = w.last_seq()
    with w.svc.transaction() as tx:
        refund = w.svc.refund_action(tx, refund.id, RefundAction.REFUSE, scope=m.id)
    assert refund.state is RefundState.MERCHANT_REFUSED
    with w.svc.transaction() as tx:
        refund = w.svc.refund_action(tx, refund.id, RefundAction.ESCALATE, token=token)
    assert refund.state is RefundState.DISPUTED
    assert w.event_types_since(seq) == [
        "refund.merchant_refused", "dispute.created", "refund.disputed",
    ]  # fmt: skip
    assert w.get_order(order.id).paused
    with w.svc.reading() as tx:
        (dispute,) = tx.repo.disputes({"order_id": order.id}, 10, None)
    assert dispute.state == "open" and dispute.refund_id == refund.id

    seq = w.last_seq()
    with w.svc.transaction() as tx:
        decided = w.svc.decide_dispute(tx, dispute.id, buyer_bp, "operator:1", "photos checked")
    assert decided.state == "decided"
    assert (decided.buyer_share_minor, decided.merchant_share_minor) == (to_buyer, to_merchant)
    refund_event = "refund.completed" if to_buyer else "refund.rejected"
    assert w.event_types_since(seq) == [refund_event, f"order.{state.value}", "dispute.decided"]
    order = w.get_order(order.id)
    fee = reference_fee(to_merchant)
    reserve = (to_merchant - fee) // 10
    assert (order.state, order.refunded_minor, order.released_minor, order.fee_minor) == (
        state, to_buyer, to_merchant, fee,
    )  # fmt: skip
    assert not order.paused and order.timer is None
    with w.svc.reading() as tx:
        refund = w.svc.refund_record(tx, m.id, refund.id)
    assert refund.state is (RefundState.COMPLETED if to_buyer else RefundState.REJECTED)
    assert w.wallet(b) == (to_buyer, 0)
    assert (w.available(m), w.reserve(m), w.fees()) == (to_merchant - fee - reserve, reserve, fee)


def test_decision_for_the_merchant_before_shipping_resumes_the_order(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b)
    _refund_id, dispute_id = open_dispute(w, order, token)
    w.clock.advance(DAY_S)
    bs = w.bs(token)  # signed in again after the clock moved (a write: outside the tx)
    with w.svc.transaction() as tx:
        w.svc.decide_dispute(tx, dispute_id, 0, "operator:1", None)
    order = w.get_order(order.id)
    assert order.state is S.AWAITING_SHIPMENT and not order.paused
    assert order.timer == Timer.REFUND_UNSHIPPED
    assert order.timer_due_ns == w.clock.now_ns() + DEFAULT_TIMERS.ship_by_s * NS_PER_S
    assert w.wallet(b) == (0, 2_500)
    # and it can still be shipped and confirmed
    order, _ = ship(w, order)
    with w.svc.transaction() as tx:
        assert w.svc.confirm(tx, order.id, token=token, buyer_session=bs).state is S.COMPLETED


def test_cancelling_a_request_resumes_the_timer(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b)
    first_due = order.timer_due_ns
    assert first_due is not None
    w.clock.advance(DAY_S)
    with w.svc.transaction() as tx:
        refund = w.svc.request_refund(tx, token, order.id, None, None)
    # past the original ship-by time: a paused order does not fire
    w.clock.set(first_due + NS_PER_S)
    assert w.svc.run_timers() == {}
    assert w.get_order(order.id).state is S.AWAITING_SHIPMENT
    bs = w.bs(token)  # signed in again after the clock moved (a write: outside the tx)
    seq = w.last_seq()
    with w.svc.transaction() as tx:
        refund = w.svc.refund_action(
            tx, refund.id, RefundAction.CANCEL, token=token, buyer_session=bs
        )
    assert refund.state is RefundState.CANCELLED
    assert w.event_types_since(seq) == ["refund.cancelled", "order.updated"]
    order = w.get_order(order.id)
    resumed_due = w.clock.now_ns() + DEFAULT_TIMERS.ship_by_s * NS_PER_S
    assert not order.paused and order.timer == Timer.REFUND_UNSHIPPED
    assert order.timer_due_ns == resumed_due
    assert w.svc.run_timers() == {}
    w.clock.set(resumed_due)
    assert w.svc.run_timers() == {"refund_unshipped": 1}
    assert w.get_order(order.id).state is S.REFUNDED
    assert w.wallet(b) == (2_500, 0)


# --- timers -----------------------------------------------------------------------------------


def test_timer_closes_an_unpaid_order(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.order(m, b)
    w.clock.advance(DEFAULT_TIMERS.unpaid_close_s - 1)
    assert w.svc.run_timers() == {}
    w.clock.advance(1)
    seq = w.last_seq()
    assert w.svc.run_timers() == {"close_unpaid": 1}
    assert w.event_types_since(seq) == ["order.closed"]
    order = w.get_order(order.id)
    assert order.state is S.CLOSED and order.timer is None
    # firing twice is a no-op
    seq, head = w.last_seq(), w.ledger.head()
    assert w.svc.run_timers() == {}
    assert w.event_types_since(seq) == [] and w.ledger.head() == head
    # a closed order cannot be paid, even with money in the wallet
    w.fund(b, 5_000)
    refused(
        w,
        IllegalTransition,
        "illegal_transition",
        lambda tx: w.svc.pay_from_wallet(tx, token, w.bs(token)),
    )
    assert w.wallet(b) == (5_000, 0)


def test_timer_refunds_an_unshipped_order(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, _ = w.paid_order(m, b)
    w.clock.advance(DEFAULT_TIMERS.ship_by_s - 1)
    assert w.svc.run_timers() == {}
    w.clock.advance(1)
    seq = w.last_seq()
    assert w.svc.run_timers() == {"refund_unshipped": 1}
    assert w.event_types_since(seq) == ["order.refunded"]
    order = w.get_order(order.id)
    assert (order.state, order.refunded_minor, order.fee_minor) == (S.REFUNDED, 2_500, 0)
    assert w.wallet(b) == (2_500, 0) and w.available(m) == 0
    assert w.svc.run_timers() == {}


def test_timer_confirms_after_shipping(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, _ = w.paid_order(m, b)
    order, _ = ship(w, order)
    w.clock.advance(DEFAULT_TIMERS.confirm_after_shipping_s - 1)
    assert w.svc.run_timers() == {}
    w.clock.advance(1)
    seq = w.last_seq()
    assert w.svc.run_timers() == {"confirm_after_shipping": 1}
    assert w.event_types_since(seq) == ["order.completed"]
    assert w.get_order(order.id).state is S.COMPLETED
    assert (w.available(m), w.reserve(m), w.fees()) == (2_158, 239, 103)
    assert w.svc.run_timers() == {}


def test_timer_confirms_after_delivery(world: World) -> None:
    """Delivery on day 1 confirms on day 8, before the 10-day shipping window would."""
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, _ = w.paid_order(m, b)
    order, shipment = ship(w, order)
    w.clock.advance(DAY_S)
    deliver(w, shipment)
    w.clock.advance(DEFAULT_TIMERS.confirm_after_delivery_s - 1)
    assert w.svc.run_timers() == {}
    w.clock.advance(1)
    assert w.svc.run_timers() == {"confirm_after_delivery": 1}
    assert w.get_order(order.id).state is S.COMPLETED
    assert w.fees() == 103
    w.clock.advance(30 * DAY_S)
    assert w.svc.run_timers() == {}


def test_a_paused_order_does_not_fire(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b)
    order, shipment = ship(w, order)
    with w.svc.transaction() as tx:
        w.svc.request_refund(tx, token, order.id, 500, "scratched")
    deliver(w, shipment)  # the delivery is recorded, the order stays paused
    paused = w.get_order(order.id)
    assert paused.paused and paused.delivered_at_ns is not None
    seq, head = w.last_seq(), w.ledger.head()
    w.clock.advance(60 * DAY_S)
    assert w.svc.run_timers() == {}
    assert w.event_types_since(seq) == [] and w.ledger.head() == head
    assert w.get_order(order.id).state is S.AWAITING_RECEIPT


def test_timers_fire_only_their_own_orders(world: World) -> None:
    """Several orders of two merchants with different timers: each fires at its own time."""
    w = world
    fast = w.merchant("Fast", timers=TimerSettings(60, 120, 180, 240))
    slow = w.merchant("Slow")
    bf, bs = w.buyer(fast), w.buyer(slow)
    unpaid_fast, _ = w.order(fast, bf)
    unpaid_slow, _ = w.order(slow, bs)
    paid_fast, _ = w.paid_order(fast, bf)
    w.clock.advance(60)
    assert w.svc.run_timers() == {"close_unpaid": 1}
    w.clock.advance(60)
    assert w.svc.run_timers() == {"refund_unshipped": 1}
    states = [w.get_order(o.id).state for o in (unpaid_fast, unpaid_slow, paid_fast)]
    assert states == [S.CLOSED, S.CREATED, S.REFUNDED]


def test_concurrent_timer_workers_and_buyers_release_each_order_once(world: World) -> None:
    """Two timer sweeps and a buyer confirming, at the same moment, over the same due orders:
    every order is released exactly once (one fee each), the losers see a no-op or an
    illegal transition, never an error of their own and never a second release."""
    w = world
    m = w.merchant()
    b = w.buyer(m)
    paid = [w.paid_order(m, b, 1_000 + k) for k in range(8)]
    orders = [(ship(w, order, f"C{k:06d}")[0], token) for k, (order, token) in enumerate(paid)]
    w.clock.advance(DEFAULT_TIMERS.confirm_after_shipping_s)
    bs = w.bs(paid[0][1])  # signed in again after the clock moved (a write: outside the tx)
    barrier = threading.Barrier(3)
    fired: list[dict[str, int]] = []
    confirmed: list[str] = []
    failures: list[BaseException] = []

    def sweep() -> None:
        try:
            barrier.wait()
            fired.append(w.svc.run_timers())
        except BaseException as exc:  # reported below, with the thread's own traceback
            failures.append(exc)

    def buyer() -> None:
        try:
            barrier.wait()
            for order, token in reversed(orders):
                try:
                    with w.svc.transaction() as tx:
                        w.svc.confirm(tx, order.id, token=token, buyer_session=bs)
                    confirmed.append(order.id)
                except IllegalTransition:
                    continue
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=f) for f in (sweep, sweep, buyer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    by_timer = sum(r.get("confirm_after_shipping", 0) for r in fired)
    assert by_timer + len(confirmed) == 8, (fired, confirmed)
    assert all(not k.startswith("skipped") for r in fired for k in r), fired
    assert all(w.get_order(o.id).state is S.COMPLETED for o, _ in orders)
    assert w.fees() == sum(reference_fee(1_000 + k) for k in range(8))
    assert w.wallet(b) == (0, 0)


def test_a_returned_parcel_does_not_release_the_money(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, _ = w.paid_order(m, b)
    order, shipment = ship(w, order)
    with w.svc.transaction() as tx:
        w.svc.shipment_event(tx, shipment, "returned", source="dhl", external_id="ret-1")
    w.clock.advance(DEFAULT_TIMERS.confirm_after_shipping_s)
    w.svc.run_timers()
    assert w.get_order(order.id).state is not S.COMPLETED
    assert w.available(m) == 0 and w.fees() == 0


# --- risk controls ----------------------------------------------------------------------------


@dataclass
class FixedRisk:
    """A risk policy (the ``RiskCheck`` port) with a fixed answer per kind of movement."""

    answers: dict[str, str]
    asked: list[str] = field(default_factory=list)

    def decide(self, conn: object, kind: str, context: dict[str, Any]) -> str:
        self.asked.append(kind)
        return self.answers.get(kind, "allow")


def test_risk_blocks_a_payment_and_nothing_moves(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    w.fund(b, 5_000)
    order, token = w.order(m, b)
    w.svc.risk = FixedRisk({"payment": "block"})
    error = refused(
        w, RiskDeclined, "risk_blocked", lambda tx: w.svc.pay_from_wallet(tx, token, w.bs(token))
    )
    assert error.type == "permission_error"
    assert w.get_order(order.id).state is S.CREATED and w.wallet(b) == (5_000, 0)
    assert w.count("payments_payments") == 0


def test_a_release_under_review_stays_held(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b)
    order, _ = ship(w, order)
    w.svc.risk = FixedRisk({"release": "review"})
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: w.svc.confirm(tx, order.id, token=token, buyer_session=w.bs(token)),
    )  # fmt: skip
    w.clock.advance(DEFAULT_TIMERS.confirm_after_shipping_s)
    assert w.svc.run_timers() == {"skipped:illegal_transition": 1}
    assert w.get_order(order.id).state is S.AWAITING_RECEIPT and w.wallet(b) == (0, 2_500)
    # a full refund moves nothing to the merchant: no review needed
    with w.svc.transaction() as tx:
        assert w.svc.refund(tx, m.id, order.id, None)[0].state is S.REFUNDED
    # once cleared, the next order's release goes through
    w.svc.risk = FixedRisk({})
    second, token2 = w.paid_order(m, b)
    ship(w, second, "JD0009999")
    with w.svc.transaction() as tx:
        assert (
            w.svc.confirm(tx, second.id, token=token2, buyer_session=w.bs(token2)).state
            is S.COMPLETED
        )


def test_risk_blocks_a_release(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b)
    order, _ = ship(w, order)
    w.svc.risk = FixedRisk({"release": "block"})
    seq, head = w.last_seq(), w.ledger.head()
    with pytest.raises((RiskDeclined, IllegalTransition)), w.svc.transaction() as tx:
        w.svc.confirm(tx, order.id, token=token, buyer_session=w.bs(token))
    assert w.event_types_since(seq) == [] and w.ledger.head() == head
    assert w.get_order(order.id).state is S.AWAITING_RECEIPT and w.available(m) == 0


# --- illegal transitions ----------------------------------------------------------------------


def test_illegal_transitions_change_nothing(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    svc = w.svc
    w.fund(b, 20_000)

    def ship_in(tx: Tx, order: Order, tracking: str) -> object:
        return svc.ship(tx, order.merchant_id, order.id, "dhl", tracking)

    unpaid, unpaid_token = w.order(m, b)
    refused(w, IllegalTransition, "illegal_transition", lambda tx: ship_in(tx, unpaid, "T0001"))
    refused(w, IllegalTransition, "illegal_transition", lambda tx: svc.confirm(tx, unpaid.id))
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: svc.refund(tx, m.id, unpaid.id, None),
    )  # fmt: skip
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: svc.request_refund(tx, unpaid_token, unpaid.id, None, None),
    )  # fmt: skip

    paid, token = w.order(m, b)
    with svc.transaction() as tx:
        paid = svc.pay_from_wallet(tx, token, w.bs(token))
    refused(
        w,
        IllegalTransition,
        "illegal_transition",
        lambda tx: svc.pay_from_wallet(tx, token, w.bs(token)),
    )
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: svc.create_checkout_session(tx, m.id, paid.id),
    )  # fmt: skip
    refused(w, IllegalTransition, "illegal_transition", lambda tx: svc.confirm(tx, paid.id))
    paid, _ = ship(w, paid, "T0002")
    refused(w, IllegalTransition, "illegal_transition", lambda tx: ship_in(tx, paid, "T0003"))
    refused(w, IllegalTransition, "illegal_transition", lambda tx: ship_in(tx, paid, "T0002"))

    # an open refund request blocks confirmation
    with svc.transaction() as tx:
        refund = svc.request_refund(tx, token, paid.id, None, None)
    refused(w, IllegalTransition, "illegal_transition", lambda tx: svc.confirm(tx, paid.id))
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: svc.request_refund(tx, token, paid.id, None, None),
    )  # fmt: skip
    # who may do what: buyer actions need the buyer's token, merchant actions refuse it
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: svc.refund_action(tx, refund.id, RefundAction.ESCALATE, scope=m.id),
    )  # fmt: skip
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: svc.refund_action(tx, refund.id, RefundAction.AGREE, token=token),
    )  # fmt: skip
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: svc.refund_action(tx, refund.id, RefundAction.DECIDE_FOR_BUYER, scope=m.id),
    )  # fmt: skip
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: svc.refund_action(tx, refund.id, RefundAction.RECEIVE_RETURN, scope=m.id),
    )  # fmt: skip
    with svc.transaction() as tx:
        svc.refund_action(
            tx, refund.id, RefundAction.CANCEL, token=token, buyer_session=w.bs(token)
        )
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: svc.refund_action(tx, refund.id, RefundAction.AGREE, scope=m.id),
    )  # fmt: skip

    with svc.transaction() as tx:
        done = svc.confirm(tx, paid.id, token=token, buyer_session=w.bs(token))
    assert done.state is S.COMPLETED
    refused(w, IllegalTransition, "illegal_transition", lambda tx: svc.confirm(tx, paid.id))
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: svc.refund(tx, m.id, paid.id, None),
    )  # fmt: skip
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: svc.refund(tx, m.id, paid.id, 100),
    )  # fmt: skip
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: svc.request_refund(tx, token, paid.id, None, None),
    )  # fmt: skip
    assert w.get_order(paid.id).state is S.COMPLETED


def test_deciding_twice_is_refused(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b)
    ship(w, order)
    refund_id, dispute_id = open_dispute(w, order, token)
    refused(
        w, PaymentsInputInvalid, "payments_input_invalid",
        lambda tx: w.svc.decide_dispute(tx, dispute_id, 10_001, "operator:1", None),
    )  # fmt: skip
    with w.svc.transaction() as tx:
        w.svc.decide_dispute(tx, dispute_id, 5_000, "operator:1", None)
    for bp in (0, 5_000, 10_000):

        def decide_again(tx: Tx, bp: int = bp) -> object:
            return w.svc.decide_dispute(tx, dispute_id, bp, "operator:2", None)

        refused(w, IllegalTransition, "illegal_transition", decide_again)
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: w.svc.refund_action(tx, refund_id, RefundAction.CANCEL, token=token,
                                       buyer_session=w.bs(token)),
    )  # fmt: skip
    assert w.wallet(b) == (1_250, 0)


def test_expired_checkout_session_cannot_pay(world: World) -> None:
    w = world
    m = w.merchant(timers=TimerSettings(unpaid_close_s=3 * DAY_S))
    b = w.buyer(m)
    w.fund(b, 5_000)
    order, token = w.order(m, b)
    w.clock.advance(DAY_S)
    bs = w.bs(token)  # signed in again after the clock moved (a write: outside the tx)
    refused(
        w, CheckoutSessionExpired, "checkout_session_expired",
        lambda tx: w.svc.pay_from_wallet(tx, token, bs),
    )  # fmt: skip
    assert w.get_order(order.id).state is S.CREATED


def test_merchant_refund_is_refused_while_a_claim_is_open(world: World) -> None:
    """The buyer's claim is settled through the claim (agree, or the platform decides):
    a merchant refund beside it would leave a dispute open over a refunded order, whose
    later decision "for the merchant" would record money the merchant never got."""
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b)
    ship(w, order)
    with w.svc.transaction() as tx:
        claim = w.svc.request_refund(tx, token, order.id, 1_000, "one cup broken")
    for amount in (None, 1_000, 1):

        def merchant_refund(tx: Tx, amount: int | None = amount) -> object:
            return w.svc.refund(tx, m.id, order.id, amount, "here")

        refused(w, IllegalTransition, "illegal_transition", merchant_refund)
    with w.svc.transaction() as tx:
        w.svc.refund_action(tx, claim.id, RefundAction.ESCALATE, token=token)
    with w.svc.reading() as tx:
        (dispute,) = tx.repo.disputes({"order_id": order.id}, 10, None)
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: w.svc.refund(tx, m.id, order.id, None, "fine, have it back"),
    )  # fmt: skip
    # the claim still ends the normal way, once
    with w.svc.transaction() as tx:
        decided = w.svc.decide_dispute(tx, dispute.id, 10_000, "operator:1", None)
    assert (decided.buyer_share_minor, decided.merchant_share_minor) == (2_500, 0)
    assert w.get_order(order.id).state is S.REFUNDED and w.wallet(b) == (2_500, 0)
    # and with the claim over, the order is finished: no second refund either
    refused(
        w, IllegalTransition, "illegal_transition",
        lambda tx: w.svc.refund(tx, m.id, order.id, None, None),
    )  # fmt: skip


# --- ownership --------------------------------------------------------------------------------


def test_merchants_cannot_see_or_touch_each_others_objects(world: World) -> None:
    w = world
    a = w.merchant("Shop A")
    other = w.merchant("Shop B")
    buyer = w.buyer(a)
    order, token = w.paid_order(a, buyer)
    order, shipment = ship(w, order)
    refund_id, dispute_id = open_dispute(w, order, token)
    unpaid, _ = w.order(a, buyer)
    svc, scope = w.svc, other.id

    attempts: list[tuple[str, Callable[[Tx], object]]] = [
        ("order", lambda tx: svc.order(tx, scope, order.id)),
        ("buyer", lambda tx: svc.buyer(tx, scope, buyer.id)),
        ("refund", lambda tx: svc.refund_record(tx, scope, refund_id)),
        ("shipment", lambda tx: svc.shipment(tx, scope, shipment.id)),
        ("dispute", lambda tx: svc.dispute(tx, scope, dispute_id)),
        ("merchant", lambda tx: svc.merchant(tx, scope, a.id)),
        ("balances", lambda tx: svc.merchant_balances(tx, scope, a.id)),
        ("wallet", lambda tx: svc.buyer_balances(tx, scope, buyer.id)),
        ("ship", lambda tx: svc.ship(tx, scope, unpaid.id, "dhl", "X00001")),
        ("refund", lambda tx: svc.refund(tx, scope, order.id, None)),
        ("refund", lambda tx: svc.refund(tx, scope, order.id, 1)),
        ("agree", lambda tx: svc.refund_action(tx, refund_id, RefundAction.AGREE, scope=scope)),
        ("refuse", lambda tx: svc.refund_action(tx, refund_id, RefundAction.REFUSE, scope=scope)),
        ("order", lambda tx: svc.create_order(tx, scope, buyer.id, [LineItem("x", 1, 1)])),
        ("session", lambda tx: svc.create_checkout_session(tx, scope, unpaid.id)),
        ("update", lambda tx: svc.update_merchant(tx, scope, a.id, payout_iban=IBAN)),
    ]
    for _name, attempt in attempts:
        error = refused(w, ResourceMissing, "resource_missing", attempt)
        assert error.type == "not_found"
    with svc.reading() as tx:
        assert svc.orders(tx, scope, 100, None) == []
        assert svc.buyers(tx, scope, 100, None) == []
        assert [o.id for o in svc.orders(tx, a.id, 100, None)] == [unpaid.id, order.id]
    # another merchant's object looks exactly like an unknown one
    with pytest.raises(ResourceMissing) as foreign, svc.reading() as tx:
        svc.order(tx, scope, order.id)
    with pytest.raises(ResourceMissing) as unknown, svc.reading() as tx:
        svc.order(tx, scope, "ord_0000000000000000")
    assert (foreign.value.param, foreign.value.code) == (unknown.value.param, unknown.value.code)
    assert foreign.value.message.replace(order.id, "X") == unknown.value.message.replace(
        "ord_0000000000000000", "X"
    )
    assert w.get_order(order.id).paused and w.wallet(buyer) == (0, 2_500)


def test_a_buyer_token_only_works_for_its_own_order(world: World) -> None:
    w = world
    m = w.merchant()
    b1, b2 = w.buyer(m), w.buyer(m, "Bob", "bob@example.com")
    order1, token1 = w.paid_order(m, b1)
    order2, token2 = w.paid_order(m, b2)
    ship(w, order1, "T1111")
    with w.svc.transaction() as tx:
        refund2 = w.svc.request_refund(tx, token2, order2.id, None, None)
    svc = w.svc
    for attempt in (
        lambda tx: svc.confirm(tx, order1.id, token=token2, buyer_session=w.bs(token2)),
        lambda tx: svc.request_refund(tx, token2, order1.id, None, None),
        lambda tx: svc.refund_action(
            tx, refund2.id, RefundAction.CANCEL, token=token1, buyer_session=w.bs(token1)
        ),
        lambda tx: svc.refund_action(tx, refund2.id, RefundAction.ESCALATE, token=token1),
        lambda tx: svc.pay_from_wallet(tx, "cs_not-a-real-token", None),
        lambda tx: svc.pay_from_wallet(tx, "not even the shape", None),
    ):
        refused(w, ResourceMissing, "resource_missing", attempt)
    assert w.get_order(order1.id).state is S.AWAITING_RECEIPT


# --- bad input --------------------------------------------------------------------------------


def test_bad_order_items(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    before = w.count("payments_orders")
    for items, param in [
        ([], "items"),
        ([LineItem("Tea", 1, 100)] * (ITEMS_MAX + 1), "items"),
        ([LineItem("Tea", 1, -100)], "items.0.unit_amount_minor"),
        ([LineItem("Tea", 0, 100)], "items.0.quantity"),
        ([LineItem("Tea", 1, 100), LineItem("", 1, 100)], "items.1.description"),
        ([LineItem("Gold", 1, 10**12 + 1)], "items"),
    ]:

        def create(tx: Tx, items: list[LineItem] = items) -> object:
            return w.svc.create_order(tx, m.id, b.id, items)

        error = refused(w, PaymentsInputInvalid, "payments_input_invalid", create)
        assert error.param == param
    assert w.count("payments_orders") == before


@pytest.mark.parametrize(
    ("name", "email", "param"),
    [
        ("Ada", "not-an-email", "email"),
        ("Ada", "ada@localhost", "email"),
        ("Ada", "ada @example.com", "email"),
        ("Ada", "a" * 250 + "@example.com", "email"),
        ("Ada", "", "email"),
        ("", "ada@example.com", "name"),
        ("   ", "ada@example.com", "name"),
        ("x" * 141, "ada@example.com", "name"),
    ],
)
def test_bad_buyer(world: World, name: str, email: str, param: str) -> None:
    w = world
    m = w.merchant()
    error = refused(
        w, PaymentsInputInvalid, "payments_input_invalid",
        lambda tx: w.svc.create_buyer(tx, m.id, name, email),
    )  # fmt: skip
    assert error.param == param
    assert w.count("payments_buyers") == 0


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"payout_iban": "DE00370400440532013000"}, "payout_iban"),  # bad check digits
        ({"payout_iban": "NOTANIBAN"}, "payout_iban"),
        ({"payout_iban": ""}, "payout_iban"),
        ({"country": "de"}, "country"),
        ({"country": "DEU"}, "country"),
        ({"currency": "EURO"}, "currency"),
        ({"legal_name": " "}, "legal_name"),
    ],
)
def test_bad_merchant(world: World, changes: dict[str, str], param: str) -> None:
    w = world
    fields: dict[str, Any] = {"legal_name": "Shop", "country": "DE", "payout_iban": IBAN}
    fields.update(changes)
    error = refused(
        w, PaymentsInputInvalid, "payments_input_invalid",
        lambda tx: w.svc.create_merchant(tx, NewMerchant(**fields)),
    )  # fmt: skip
    assert error.param == param
    assert w.count("payments_merchants") == 0


@pytest.mark.parametrize(
    ("carrier", "tracking", "param"),
    [
        ("dhl", "abc", "tracking_number"),
        ("dhl", "has space1", "tracking_number"),
        ("dhl", "X" * 65, "tracking_number"),
        ("dhl", "ÄÖÜ12345", "tracking_number"),
        ("dhl", "", "tracking_number"),
        ("DHL", "JD0001234", "carrier"),
        ("", "JD0001234", "carrier"),
    ],
)
def test_bad_tracking(world: World, carrier: str, tracking: str, param: str) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, _ = w.paid_order(m, b)
    error = refused(
        w, PaymentsInputInvalid, "payments_input_invalid",
        lambda tx: w.svc.ship(tx, m.id, order.id, carrier, tracking),
    )  # fmt: skip
    assert error.param == param
    assert w.get_order(order.id).state is S.AWAITING_SHIPMENT


def test_a_tracking_number_cannot_be_reused(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    first, _ = w.paid_order(m, b)
    second, _ = w.paid_order(m, b)
    ship(w, first, "SAME0001")
    error = refused(
        w, PaymentsInputInvalid, "payments_input_invalid",
        lambda tx: w.svc.ship(tx, m.id, second.id, "dhl", "SAME0001"),
    )  # fmt: skip
    assert error.param == "tracking_number"


@pytest.mark.parametrize("amount", [0, -1, 2_501, 10**15, True])
def test_bad_refund_amounts(world: World, amount: int) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b)
    for attempt in (
        lambda tx: w.svc.refund(tx, m.id, order.id, amount),
        lambda tx: w.svc.request_refund(tx, token, order.id, amount, None),
    ):
        error = refused(w, PaymentsInputInvalid, "payments_input_invalid", attempt)
        assert error.param == "amount_minor"
    assert w.count("payments_refunds") == 0
    assert w.wallet(b) == (0, 2_500)


def test_a_long_refund_reason_is_refused(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.paid_order(m, b)
    error = refused(
        w, PaymentsInputInvalid, "payments_input_invalid",
        lambda tx: w.svc.request_refund(tx, token, order.id, None, "x" * 501),
    )  # fmt: skip
    assert error.param == "reason"


# --- insufficient funds -----------------------------------------------------------------------


def test_insufficient_wallet_funds_change_nothing(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    order, token = w.order(m, b, 2_500)
    w.fund(b, 2_499)
    payments_before = w.count("payments_payments")
    refused(
        w,
        InsufficientFunds,
        "insufficient_funds",
        lambda tx: w.svc.pay_from_wallet(tx, token, w.bs(token)),
    )
    after = w.get_order(order.id)
    assert after.state is S.CREATED and after.version == order.version
    assert after.hold_transfer_id is None and after.funding is None
    assert w.count("payments_payments") == payments_before
    assert w.count("payments_checkout_sessions", "state = 'open'") == 1
    assert w.wallet(b) == (2_499, 0)
    assert held_by_merchant(w, order) == 0
    # one more cent and the same session pays
    w.fund(b, 1)
    with w.svc.transaction() as tx:
        assert w.svc.pay_from_wallet(tx, token, w.bs(token)).state is S.AWAITING_SHIPMENT
    assert w.wallet(b) == (0, 2_500)


def test_the_same_wallet_cannot_pay_twice(world: World) -> None:
    """Two orders, money for one: the second payment is refused (the hold counts)."""
    w = world
    m = w.merchant()
    b = w.buyer(m)
    w.fund(b, 3_000)
    _first, t1 = w.order(m, b, 2_000)
    second, t2 = w.order(m, b, 2_000)
    with w.svc.transaction() as tx:
        w.svc.pay_from_wallet(tx, t1, w.bs(t1))
    refused(
        w,
        InsufficientFunds,
        "insufficient_funds",
        lambda tx: w.svc.pay_from_wallet(tx, t2, w.bs(t2)),
    )
    assert w.get_order(second.id).state is S.CREATED
    assert w.wallet(b) == (1_000, 2_000)


# --- personal data ----------------------------------------------------------------------------

SECRET_NAME = "Zebulon Quixotic-Marchbanks"
SECRET_EMAIL = "zebulon.quixotic@example.org"


def _table_dump(w: World) -> str:
    with w.database.read() as conn:
        if w.database.is_postgres:
            tables = conn.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ).scalars()
        else:
            tables = conn.execute(
                sa.text("SELECT name FROM sqlite_master WHERE type = 'table'")
            ).scalars()
        text = []
        for table in list(tables):
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')).all():
                text.append(repr(tuple(row)))
    return "\n".join(text)


def test_personal_data_is_never_stored_in_plaintext(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m, SECRET_NAME, SECRET_EMAIL)
    order, token = w.paid_order(m, b)
    ship(w, order)
    open_dispute(w, order, token)
    with w.svc.reading() as tx:
        shown = w.svc.buyer(tx, m.id, b.id)
    assert shown.email_masked == "z***@example.org"
    secrets = [
        SECRET_NAME,
        SECRET_EMAIL,
        SECRET_EMAIL.upper(),
        "Quixotic",
        "zebulon.quixotic",
        IBAN,
    ]

    events = "\n".join(e[3] for e in w.events_since(0))
    assert "buyer.created" in events
    dump = _table_dump(w)
    assert b.id in dump and "z***@example.org" in events  # the scan does see the rows
    for secret in secrets:
        assert secret not in events, f"{secret!r} in payments_events"
        assert secret not in dump, f"{secret!r} stored in plaintext"

    if not w.database.is_postgres:
        files = list(w.data_dir.glob(SQLITE_FILE_NAME + "*"))
        assert files
        raw = b"".join(path.read_bytes() for path in files)
        assert b.id.encode() in raw
        for secret in secrets:
            for encoded in (secret.encode(), secret.encode("utf-16-le")):
                assert encoded not in raw, f"{secret!r} in the SQLite files"


# --- claims never freeze the money --------------------------------------------------------------


def test_an_unanswered_request_goes_to_the_platform_and_an_abandoned_one_lapses(
    world: World,
) -> None:
    from paykeep.payments.service import CLAIM_IDLE_S

    w = world
    m = w.merchant()
    b = w.buyer(m)
    silent_merchant, token_a = w.paid_order(m, b)
    silent_buyer, token_b = w.paid_order(m, b)
    with w.svc.transaction() as tx:
        unanswered = w.svc.request_refund(tx, token_a, silent_merchant.id, None, "broken")
        refused = w.svc.request_refund(tx, token_b, silent_buyer.id, None, "changed my mind")
    with w.svc.transaction() as tx:
        w.svc.refund_action(tx, refused.id, RefundAction.REFUSE, scope=m.id)
    assert w.svc.expire_claims() == {}, "nothing is idle yet"
    w.clock.advance(CLAIM_IDLE_S + 1)
    assert w.svc.expire_claims() == {"escalate": 1, "cancel": 1}
    assert w.svc.expire_claims() == {}, "a claim expires once"
    with w.svc.reading() as tx:
        assert w.svc.refund_record(tx, m.id, unanswered.id).state is RefundState.DISPUTED
        assert w.svc.refund_record(tx, m.id, refused.id).state is RefundState.CANCELLED
        disputes = tx.repo.disputes({"order_id": silent_merchant.id}, 5, None)
    assert [d.state for d in disputes] == ["open"]
    assert w.get_order(silent_merchant.id).paused, "the platform now decides: still held"
    lapsed = w.get_order(silent_buyer.id)
    assert not lapsed.paused and lapsed.timer == Timer.REFUND_UNSHIPPED
    assert lapsed.timer_due_ns is not None and lapsed.timer_due_ns > w.clock.now_ns()
