"""A Hypothesis state machine drives random escrow lifecycles through ``PaymentsService``
against an independent reference model (a few dicts and integer arithmetic), on SQLite and
PostgreSQL.

Two merchants (random fee plans and reserves, short timers) with three buyers each: top-ups,
orders, payments, shipping, delivery, confirmation, merchant refunds (full and partial), buyer
refund requests and every refund action, dispute decisions with random shares, clock
advances with timer sweeps, reserve releases. Every call's outcome (result or typed error) is
predicted by the model first. After every step:

- money is conserved: per currency, debits = credits (pending and posted); the bank holds
  exactly what was topped up and every unit of it sits in this example's wallets, merchant
  accounts and the platform's fees;
- every balance (wallet available and held, merchant available and reserve, fees) equals the
  model's; no wallet is below zero;
- every finished order paid its merchant exactly ``released_minor - fee_minor`` (the
  merchant's available + reserve is the sum of those), and a completed order released the
  whole price with the fee the model computes;
- every order's state, pause, timer and amounts equal the model's, and the latest order event
  in the outbox shows that state.

One database per backend is reused by all examples (creating one per example costs more than
a second on PostgreSQL); each example ends by settling every claim and letting every timer
fire, so nothing of it can move in a later example, and then runs the ledger audit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from paykeep.clock import FakeClock
from paykeep.config import Settings
from paykeep.db import Database
from paykeep.payments.errors import (
    CheckoutSessionExpired,
    IllegalTransition,
    InsufficientFunds,
    PaymentsInputInvalid,
)
from paykeep.payments.model import (
    FeePlan,
    LineItem,
    OrderState,
    RefundAction,
    RefundState,
    TimerSettings,
)
from paykeep.payments.records import Buyer, Merchant, Shipment
from paykeep.payments.service import (
    PaymentsService,
    account_id,
    available_name,
    fees_name,
    reserve_name,
    wallet_name,
)
from tests.payments.conftest import BANK, World, assert_books_balance, ledger_sums, make_world
from tests.payments.test_model import EXPECTED_REFUND

S, RA, RS = OrderState, RefundAction, RefundState
NS = 1_000_000_000
BP = 10_000
HELD = (S.AWAITING_SHIPMENT, S.AWAITING_RECEIPT)
TERMINAL = (S.COMPLETED, S.CLOSED, S.REFUNDED, S.PARTIALLY_REFUNDED)
OPEN_REFUND = (
    RS.REQUESTED, RS.MERCHANT_AGREED, RS.MERCHANT_REFUSED, RS.RETURN_SHIPPED, RS.DISPUTED,
)  # fmt: skip
BUYER_ACTIONS = (RA.SHIP_RETURN, RA.ESCALATE, RA.CANCEL)
#: Short timers so that a 30-step run sees every one of them fire.
TIMERS = TimerSettings(
    unpaid_close_s=900, ship_by_s=600, confirm_after_delivery_s=300, confirm_after_shipping_s=1_200
)
SESSION_TTL_S = 24 * 3600
SETTLE_S = 400 * 24 * 3600  # beyond every timer and reserve hold
REFUND_AMOUNTS = st.one_of(st.none(), st.integers(1, 3_000), st.integers(0, 6_001))
ORDER_AMOUNTS = st.one_of(st.integers(1, 60), st.integers(1, 6_000))
SHARES = st.one_of(st.sampled_from([0, 10_000, 3_333, 5_000]), st.integers(0, 10_000))
ADVANCES = st.sampled_from([1, 30, 120, 301, 601, 901, 1_201])
#: What a step does, by weight. ``progress`` moves a random open order one natural step along
#: its lifecycle (or its claim); ``anything`` tries a random action on a random order or claim,
#: whatever its state (the refusals must change nothing).
KINDS = (
    ("progress",) * 8 + ("create_order",) * 2 + ("fund",) + ("advance",) * 2
    + ("release_reserves",) + ("anything",) * 2
)  # fmt: skip
ORDER_ACTIONS = ("pay", "ship", "deliver", "confirm", "merchant_refund", "request_refund")
#: What the machine did, by count (a coverage aid: the test checks it reached each path).
OBSERVED: dict[str, int] = {}


def _seen(what: str) -> None:
    OBSERVED[what] = OBSERVED.get(what, 0) + 1


# --- the reference model ------------------------------------------------------------------------


def ref_fee(released: int, plan: FeePlan) -> int:
    """Percentage rounded half-up (integers only), plus the fixed part, at most the amount."""
    if released <= 0:
        return 0
    return min(released, (2 * released * plan.percent_bp + BP) // (2 * BP) + plan.fixed_minor)


def ref_split(held: int, bp: int) -> int:
    """The buyer's share by largest remainder (the leftover unit to the larger remainder,
    ties to the buyer)."""
    buyer, buyer_rem = divmod(held * bp, BP)
    merchant, merchant_rem = divmod(held * (BP - bp), BP)
    if buyer + merchant < held and buyer_rem >= merchant_rem:
        buyer += 1
    return buyer


def ref_timer(state: OrderState, since: int, delivered: bool) -> tuple[str | None, int | None]:
    if state is S.CREATED:
        return "close_unpaid", since + TIMERS.unpaid_close_s * NS
    if state is S.AWAITING_SHIPMENT:
        return "refund_unshipped", since + TIMERS.ship_by_s * NS
    if state is S.AWAITING_RECEIPT and delivered:
        return "confirm_after_delivery", since + TIMERS.confirm_after_delivery_s * NS
    if state is S.AWAITING_RECEIPT:
        return "confirm_after_shipping", since + TIMERS.confirm_after_shipping_s * NS
    return None, None


@dataclass
class MOrder:
    id: str
    merchant: int
    buyer: Buyer
    token: str
    amount: int
    created_ns: int
    state: OrderState = S.CREATED
    paused: bool = False
    timer: str | None = None
    due: int | None = None
    delivered: bool = False
    session_complete: bool = False
    shipment: Shipment | None = None
    shipment_delivered: bool = False
    released: int = 0
    fee: int = 0
    refunded: int = 0


@dataclass
class MRefund:
    id: str
    order: MOrder
    amount: int
    state: RefundState = RS.REQUESTED
    dispute: str | None = None


@dataclass
class Model:
    wallet: dict[str, int] = field(default_factory=dict)  # available (posted - held)
    held: dict[str, int] = field(default_factory=dict)  # pending debits of the wallet
    available: list[int] = field(default_factory=lambda: [0, 0])
    reserve: list[int] = field(default_factory=lambda: [0, 0])
    fees: int = 0
    funded: int = 0
    reserves: list[tuple[int, int, int]] = field(default_factory=list)  # (due, merchant, amount)


# --- the machine --------------------------------------------------------------------------------


def make_machine(w: World) -> type[RuleBasedStateMachine]:
    svc: PaymentsService = w.svc
    clock: FakeClock = w.clock
    database: Database = w.database
    tracking_numbers = iter(range(10**6, 10**7))

    class PaymentsMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.m = Model()
            self.merchants: list[Merchant] = []
            self.plans: list[FeePlan] = []
            self.buyers: list[list[Buyer]] = []
            self.orders: list[MOrder] = []
            self.refunds: list[MRefund] = []
            self.fees_before = w.fees()
            bank = w.account(BANK)
            self.bank_before = 0 if bank is None else bank.debits_posted - bank.credits_posted

        # -- set-up ------------------------------------------------------------------------

        @initialize(
            plans=st.lists(
                st.builds(
                    FeePlan,
                    percent_bp=st.sampled_from([0, 150, 290, 1_000, 10_000]),
                    fixed_minor=st.sampled_from([0, 30, 100]),
                    reserve_percent_bp=st.sampled_from([0, 1_000, 5_000]),
                    reserve_hold_s=st.sampled_from([0, 250, 900]),
                ),
                min_size=2,
                max_size=2,
            )
        )
        def setup(self, plans: list[FeePlan]) -> None:
            _seen("example")
            for i, plan in enumerate(plans):
                merchant = w.merchant(f"Shop {i}", fees=plan, timers=TIMERS)
                self.merchants.append(merchant)
                self.plans.append(plan)
                self.buyers.append(
                    [w.buyer(merchant, f"Buyer {i}{j}", f"b{i}{j}@example.com") for j in range(3)]
                )
                for buyer in self.buyers[-1]:
                    self.m.wallet[buyer.id] = 0
                    self.m.held[buyer.id] = 0

        # -- one rule: which action happens next --------------------------------------------

        @rule(kind=st.sampled_from(KINDS), i=st.integers(0, 10**6), data=st.data())
        def step(self, kind: str, i: int, data: st.DataObject) -> None:
            """One action, by the weights of ``KINDS``. One rule rather than one per action:
            Hypothesis switches rules off per example, which left most runs without a single
            payment, and random objects in random states mostly produce refusals."""
            if kind in ("progress", "anything") and not self.orders:
                kind = "create_order"
            _seen(f"step:{kind}")
            if kind == "fund":
                who = data.draw(st.integers(0, 5))
                self.fund(self.buyers[who // 3][who % 3], data.draw(st.integers(1, 10_000)))
            elif kind == "create_order":
                self.create_order(data.draw(st.integers(0, 5)), data.draw(ORDER_AMOUNTS))
            elif kind == "advance":
                self.advance_and_run_timers(data.draw(ADVANCES))
            elif kind == "release_reserves":
                self.release_reserves()
            elif kind == "progress":
                self.progress(i, data)
            else:
                self.anything(i, data)

        def progress(self, i: int, data: st.DataObject) -> None:
            going = [o for o in self.orders if o.state not in TERMINAL]
            if not going:
                self.create_order(i % 6, 1 + i % 5_000)
                return
            order = going[i % len(going)]
            claim = self._open_refund(order)
            if claim is not None and data.draw(st.integers(0, 5)) == 0:
                self.merchant_refund(order, data.draw(REFUND_AMOUNTS))  # refused: claim open
            elif claim is not None and claim.state is RS.DISPUTED:
                self.decide(claim, data.draw(SHARES))
            elif claim is not None:
                allowed = sorted(a for (st_, a) in EXPECTED_REFUND if st_ is claim.state)
                self.refund_action(claim, data.draw(st.sampled_from(allowed)))
            elif order.state is S.CREATED:
                self.pay(order, top_up=data.draw(st.sampled_from([True, True, True, False])))
            elif order.state is S.AWAITING_SHIPMENT:
                choice = data.draw(st.sampled_from(["ship"] * 3 + ["request"] * 2 + ["merchant"]))
                self._order_action(order, choice, data)
            elif order.state is S.AWAITING_RECEIPT:
                choices = ["confirm"] * 2 + ["request"] * 3 + ["merchant"]
                if order.shipment is not None and not order.shipment_delivered:
                    choices += ["deliver"] * 3
                self._order_action(order, data.draw(st.sampled_from(choices)), data)

        def anything(self, i: int, data: st.DataObject) -> None:
            claim_first: bool = data.draw(st.booleans())
            if self.refunds and claim_first:
                refund = self.refunds[i % len(self.refunds)]
                if refund.dispute is not None and data.draw(st.booleans()):
                    self.decide(refund, data.draw(SHARES))
                else:
                    self.refund_action(refund, data.draw(st.sampled_from(RefundAction)))
                return
            order = self.orders[i % len(self.orders)]
            self._order_action(order, data.draw(st.sampled_from(ORDER_ACTIONS)), data)

        def _order_action(self, order: MOrder, choice: str, data: st.DataObject) -> None:
            if choice == "pay":
                self.pay(order, top_up=data.draw(st.booleans()))
            elif choice == "ship":
                self.ship(order)
            elif choice == "deliver" and order.shipment is not None:
                self.deliver(order)
            elif choice == "confirm":
                self.confirm(order)
            elif choice in ("merchant", "merchant_refund"):
                self.merchant_refund(order, data.draw(REFUND_AMOUNTS))
            elif choice in ("request", "request_refund"):
                self.request_refund(order, data.draw(REFUND_AMOUNTS))

        # -- model helpers -----------------------------------------------------------------

        def _set_timer(self, order: MOrder, since: int) -> None:
            order.timer, order.due = ref_timer(order.state, since, order.delivered)

        def _end(self, order: MOrder, refund_minor: int) -> None:
            """The hold ends: ``refund_minor`` back to the buyer, the rest released."""
            assert order.state in HELD
            plan = self.plans[order.merchant]
            to_merchant = order.amount - refund_minor
            fee = ref_fee(to_merchant, plan)
            reserve = (to_merchant - fee) * plan.reserve_percent_bp // BP
            self.m.held[order.buyer.id] -= order.amount
            self.m.wallet[order.buyer.id] += refund_minor
            self.m.available[order.merchant] += to_merchant - fee - reserve
            self.m.reserve[order.merchant] += reserve
            self.m.fees += fee
            if reserve:
                due = clock.now_ns() + plan.reserve_hold_s * NS
                self.m.reserves.append((due, order.merchant, reserve))
            if to_merchant == 0:
                order.state = S.REFUNDED
            elif refund_minor == 0:
                order.state = S.COMPLETED
            else:
                order.state = S.PARTIALLY_REFUNDED
            order.released, order.fee, order.refunded = to_merchant, fee, refund_minor
            order.paused = False
            order.timer, order.due = None, None

        def _open_refund(self, order: MOrder) -> MRefund | None:
            found = [r for r in self.refunds if r.order is order and r.state in OPEN_REFUND]
            assert len(found) <= 1
            return found[0] if found else None

        def _expect(self, what: str, error: type[Exception] | None, call: Any) -> Any:
            """Run ``call`` in one write transaction; it must raise ``error`` (or succeed)."""
            _seen(f"{what}:{'ok' if error is None else error.__name__}")
            if error is None:
                with svc.transaction() as tx:
                    return call(tx)
            try:
                with svc.transaction() as tx:
                    result = call(tx)
            except error:
                return None
            raise AssertionError(f"{what}: expected {error.__name__}, got {result!r}")

        # -- actions -------------------------------------------------------------------------

        def fund(self, buyer: Buyer, amount: int) -> None:
            w.fund(buyer, amount)
            self.m.wallet[buyer.id] += amount
            self.m.funded += amount

        def create_order(self, who: int, amount: int) -> None:
            merchant, buyer = self.merchants[who // 3], self.buyers[who // 3][who % 3]
            with svc.transaction() as tx:
                order = svc.create_order(tx, merchant.id, buyer.id, [LineItem("x", 1, amount)])
                _session, token = svc.create_checkout_session(tx, merchant.id, order.id)
            w.bs(token)  # signed in now: the moves below read the session inside their tx
            mo = MOrder(order.id, who // 3, buyer, token, amount, clock.now_ns())
            self._set_timer(mo, clock.now_ns())
            self.orders.append(mo)

        def pay(self, order: MOrder, *, top_up: bool) -> None:
            shortfall = order.amount - self.m.wallet[order.buyer.id]
            if top_up and shortfall > 0:
                self.fund(order.buyer, shortfall)
            error: type[Exception] | None = None
            if not order.session_complete and clock.now_ns() >= (
                order.created_ns + SESSION_TTL_S * NS
            ):
                error = CheckoutSessionExpired
            elif order.state is not S.CREATED:
                error = IllegalTransition
            elif self.m.wallet[order.buyer.id] < order.amount:
                error = InsufficientFunds
            self._expect(
                "pay", error, lambda tx: svc.pay_from_wallet(tx, order.token, w.bs(order.token))
            )
            if error is None:
                order.state, order.session_complete = S.AWAITING_SHIPMENT, True
                self.m.wallet[order.buyer.id] -= order.amount
                self.m.held[order.buyer.id] += order.amount
                self._set_timer(order, clock.now_ns())

        def ship(self, order: MOrder) -> None:
            merchant = self.merchants[order.merchant]
            error = None if order.state is S.AWAITING_SHIPMENT else IllegalTransition
            tracking = f"T{next(tracking_numbers)}"
            result = self._expect(
                "ship", error, lambda tx: svc.ship(tx, merchant.id, order.id, "dhl", tracking)
            )
            if error is None:
                order.state, order.shipment = S.AWAITING_RECEIPT, result[1]
                self._set_timer(order, clock.now_ns())

        def deliver(self, order: MOrder) -> None:
            shipment = order.shipment
            assert shipment is not None
            self._expect(
                "deliver",
                None,
                lambda tx: svc.shipment_event(tx, shipment, "delivered", source="dhl"),
            )
            if order.shipment_delivered:
                return
            order.shipment_delivered = True
            if order.state is S.AWAITING_RECEIPT and not order.delivered:
                order.delivered = True
                self._set_timer(order, clock.now_ns())  # even while paused

        def confirm(self, order: MOrder) -> None:
            ok = order.state is S.AWAITING_RECEIPT and self._open_refund(order) is None
            self._expect(
                "confirm",
                None if ok else IllegalTransition,
                lambda tx: svc.confirm(
                    tx, order.id, token=order.token, buyer_session=w.bs(order.token)
                ),
            )
            if ok:
                self._end(order, 0)

        def merchant_refund(self, order: MOrder, amount: int | None) -> None:
            value = order.amount if amount is None else amount
            error: type[Exception] | None = None
            if not 1 <= value <= order.amount:
                error = PaymentsInputInvalid
            elif order.state not in HELD or self._open_refund(order) is not None:
                # an open claim is settled through the claim, never by a second refund
                error = IllegalTransition
            merchant = self.merchants[order.merchant]
            self._expect(
                "merchant_refund",
                error,
                lambda tx: svc.refund(tx, merchant.id, order.id, amount, None),
            )
            if error is None:
                self._end(order, value)

        def request_refund(self, order: MOrder, amount: int | None) -> None:
            value = order.amount if amount is None else amount
            error: type[Exception] | None = None
            if order.state not in HELD or self._open_refund(order) is not None:
                error = IllegalTransition
            elif not 1 <= value <= order.amount:
                error = PaymentsInputInvalid
            refund = self._expect(
                "request_refund",
                error,
                lambda tx: svc.request_refund(tx, order.token, order.id, amount, "why"),
            )
            if error is None:
                self.refunds.append(MRefund(refund.id, order, value))
                order.paused = True

        def refund_action(self, refund: MRefund, action: RefundAction) -> None:
            order = refund.order
            merchant = self.merchants[order.merchant]
            new_state = EXPECTED_REFUND.get((refund.state, action))
            decide = action in (RA.DECIDE_FOR_BUYER, RA.DECIDE_FOR_MERCHANT)
            error = IllegalTransition if new_state is None or decide else None
            kwargs: dict[str, Any] = {"scope": merchant.id}
            if action in BUYER_ACTIONS:
                kwargs = {"token": order.token, "buyer_session": w.bs(order.token)}
            if action is RA.SHIP_RETURN:
                kwargs.update(carrier="ups", tracking_number=f"R{next(tracking_numbers)}")
            self._expect(
                f"refund:{action.value}",
                error,
                lambda tx: svc.refund_action(tx, refund.id, action, **kwargs),
            )
            if error is not None:
                return
            assert new_state is not None
            refund.state = new_state
            if action is RA.ESCALATE:
                with svc.reading() as tx:
                    (dispute,) = tx.repo.disputes({"refund_id": refund.id}, 2, None)
                refund.dispute = dispute.id
            if new_state is RS.COMPLETED:
                self._end(order, refund.amount)
            elif new_state is RS.CANCELLED:
                order.paused = False
                self._set_timer(order, clock.now_ns())

        def decide(self, refund: MRefund, bp: int) -> None:
            order, dispute_id = refund.order, refund.dispute
            assert dispute_id is not None
            ok = refund.state is RS.DISPUTED
            buyer = ref_split(order.amount, bp)
            share = "merchant" if buyer == 0 else "buyer" if buyer == order.amount else "split"
            decided = self._expect(
                f"decide:{share}",
                None if ok else IllegalTransition,
                lambda tx: svc.decide_dispute(tx, dispute_id, bp, "operator:test", None),
            )
            if not ok:
                return
            assert (decided.buyer_share_minor, decided.merchant_share_minor) == (
                buyer, order.amount - buyer,
            )  # fmt: skip
            if buyer:
                refund.state, refund.amount = RS.COMPLETED, buyer
                self._end(order, buyer)
            else:
                refund.state = RS.REJECTED
                if order.state is S.AWAITING_RECEIPT:
                    self._end(order, 0)
                else:
                    order.paused = False
                    self._set_timer(order, clock.now_ns())

        # -- time --------------------------------------------------------------------------

        def advance_and_run_timers(self, seconds: int) -> None:
            clock.advance(seconds)
            self._run_timers()

        def _run_timers(self) -> None:
            now = clock.now_ns()
            expected: dict[str, int] = {}
            due = [
                o
                for o in self.orders
                if not o.paused and o.timer is not None and o.due is not None and o.due <= now
            ]
            fired = svc.run_timers()
            for order in due:
                assert order.timer is not None
                expected[order.timer] = expected.get(order.timer, 0) + 1
                _seen(f"timer:{order.timer}")
                if order.timer == "close_unpaid":
                    order.state, order.timer, order.due = S.CLOSED, None, None
                elif order.timer == "refund_unshipped":
                    self._end(order, order.amount)
                else:
                    self._end(order, 0)
            assert fired == expected

        def release_reserves(self) -> None:
            now = clock.now_ns()
            due = [r for r in self.m.reserves if r[0] <= now]
            assert svc.release_reserves() == len(due)
            _seen(f"reserves:{'released' if due else 'none due'}")
            for entry in due:
                self.m.reserves.remove(entry)
                self.m.available[entry[1]] += entry[2]
                self.m.reserve[entry[1]] -= entry[2]

        # -- invariants ----------------------------------------------------------------------

        @invariant()
        def books_balance(self) -> None:
            for currency, (dp, cp, dpo, cpo) in ledger_sums(database).items():
                assert (dp, dpo) == (cp, cpo), currency

        @invariant()
        def balances_match_the_model(self) -> None:
            if not self.merchants:
                return
            names: list[str] = [fees_name("EUR"), BANK]
            for merchant in self.merchants:
                names += [available_name(merchant.id, "EUR"), reserve_name(merchant.id, "EUR")]
            buyers = [b for group in self.buyers for b in group]
            names += [wallet_name(b.id, "EUR") for b in buyers]
            accounts = w.ledger.lookup_accounts([account_id(n) for n in names])

            def posted(name: str) -> int:
                acc = accounts.get(account_id(name))
                return 0 if acc is None else acc.balance_posted

            for b in buyers:
                acc = accounts.get(account_id(wallet_name(b.id, "EUR")))
                available, held = (0, 0) if acc is None else (acc.available, acc.debits_pending)
                assert available >= 0, "a wallet is below zero"
                assert (available, held) == (self.m.wallet[b.id], self.m.held[b.id]), b.id
            for k, merchant in enumerate(self.merchants):
                assert posted(available_name(merchant.id, "EUR")) == self.m.available[k]
                assert posted(reserve_name(merchant.id, "EUR")) == self.m.reserve[k]
            fees = posted(fees_name("EUR")) - self.fees_before
            assert fees == self.m.fees
            # conservation: what was topped up is exactly what customers and the platform hold
            bank_acc = accounts.get(account_id(BANK))
            bank = 0 if bank_acc is None else bank_acc.debits_posted - bank_acc.credits_posted
            assert bank - self.bank_before == self.m.funded
            held_total = sum(self.m.held.values())
            liabilities = sum(posted(n) for n in names[2:]) + fees
            assert liabilities == self.m.funded
            assert (
                sum(self.m.wallet.values())
                + held_total
                + sum(self.m.available)
                + sum(self.m.reserve)
                + self.m.fees
                == self.m.funded
            )  # the model conserves too

        @invariant()
        def orders_match_the_model(self) -> None:
            if not self.orders:
                return
            with database.read() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT id, state, disputed, timer, timer_due_ns, released_minor, "
                        "fee_minor, refunded_minor, merchant_id FROM payments_orders "
                        "WHERE merchant_id IN (:a, :b)"
                    ),
                    {"a": self.merchants[0].id, "b": self.merchants[1].id},
                ).all()
                events = conn.execute(
                    sa.text(
                        "SELECT object_id, payload FROM payments_events WHERE type LIKE 'order.%' "
                        "AND merchant_id IN (:a, :b) ORDER BY seq"
                    ),
                    {"a": self.merchants[0].id, "b": self.merchants[1].id},
                ).all()
            stored = {str(r[0]): r for r in rows}
            latest = {str(e[0]): json.loads(e[1])["data"]["object"] for e in events}
            assert set(stored) == {o.id for o in self.orders}
            net = [0, 0]
            for order in self.orders:
                r = stored[order.id]
                actual = (OrderState(r[1]), bool(r[2]), r[3], r[4], int(r[5]), int(r[6]), int(r[7]))
                expected = (
                    order.state, order.paused, order.timer, order.due, order.released,
                    order.fee, order.refunded,
                )  # fmt: skip
                assert actual == expected, order.id
                assert latest[order.id]["state"] == order.state.value, "outbox behind the order"
                if order.state is S.COMPLETED:
                    plan = self.plans[order.merchant]
                    assert int(r[5]) == order.amount and int(r[6]) == ref_fee(order.amount, plan)
                if order.state in TERMINAL:
                    net[order.merchant] += int(r[5]) - int(r[6])
            # every finished order paid its merchant exactly released - fee
            for k in range(2):
                assert self.m.available[k] + self.m.reserve[k] == net[k]

        # -- end of an example ---------------------------------------------------------------

        def teardown(self) -> None:
            """Settle every open claim, let every timer fire and every reserve come back, so
            nothing of this example moves in the next; then audit the whole ledger."""
            if not self.merchants:
                return
            for refund in self.refunds:
                if refund.state in (RS.REQUESTED, RS.MERCHANT_AGREED, RS.MERCHANT_REFUSED):
                    self.refund_action(refund, RA.CANCEL)
                elif refund.state is RS.RETURN_SHIPPED:
                    self.refund_action(refund, RA.ESCALATE)
                if refund.state is RS.DISPUTED:
                    self.decide(refund, 5_000)
            for _ in range(3):  # a merchant's resumed order fires after the others
                clock.advance(SETTLE_S)
                self._run_timers()
            self.release_reserves()
            self.books_balance()
            self.balances_match_the_model()
            self.orders_match_the_model()
            assert all(o.state in TERMINAL for o in self.orders)
            assert self.m.reserves == [] and self.m.held == dict.fromkeys(self.m.held, 0)
            assert_books_balance(database)

    return PaymentsMachine


def test_payments_match_reference_model(database: Database, settings: Settings) -> None:
    OBSERVED.clear()
    world = make_world(database, settings.data_dir)
    run_state_machine_as_test(make_machine(world), settings=settings_for_run())
    # The run reached every path (a generator that only ever produced refusals would pass
    # every invariant and test nothing).
    seen = set(OBSERVED)
    required = {
        "pay:ok", "pay:InsufficientFunds", "ship:ok", "deliver:ok", "confirm:ok",
        "confirm:IllegalTransition", "merchant_refund:ok", "merchant_refund:IllegalTransition",
        "request_refund:ok", "refund:escalate:ok", "timer:close_unpaid",
        "timer:refund_unshipped", "timer:confirm_after_shipping", "reserves:released",
    }  # fmt: skip
    assert required <= seen, sorted(OBSERVED.items())
    assert {k for k in seen if k.startswith("decide:") and k.endswith(":ok")}, OBSERVED
    assert {"refund:agree:ok", "refund:receive_return:ok", "refund:cancel:ok"} & seen, OBSERVED


def settings_for_run() -> Any:
    return settings(
        max_examples=int(os.environ.get("PAYKEEP_STATEFUL_EXAMPLES", "25")),
        stateful_step_count=30,
        deadline=None,
        # Shrinking replays whole histories; the failing run's steps are printed in full
        # anyway. PAYKEEP_SHRINK=1 turns it on.
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
        if os.environ.get("PAYKEEP_SHRINK")
        else (Phase.explicit, Phase.reuse, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        database=None,
        # The coverage assertion above needs the same walk on every run (a random walk of 25
        # examples sometimes missed a path, and CI must not flake); PAYKEEP_STATEFUL_RANDOM=1
        # explores new walks locally.
        derandomize=not os.environ.get("PAYKEEP_STATEFUL_RANDOM"),
    )


def test_reference_helpers() -> None:
    """The model's arithmetic on worked examples (so a model bug is not taken for a service
    bug)."""
    plan = FeePlan(290, 30, 1_000, 3_600)
    assert [ref_fee(a, plan) for a in (0, 1, 50, 2_500)] == [0, 1, 31, 103]
    assert ref_fee(100, FeePlan(50, 0)) == 1 and ref_fee(100, FeePlan(250, 0)) == 3
    assert [ref_split(3_001, bp) for bp in (0, 3_333, 5_000, 10_000)] == [0, 1_000, 1_501, 3_001]
    assert ref_timer(S.COMPLETED, 0, True) == (None, None)
    assert ref_timer(S.AWAITING_RECEIPT, 0, True) == ("confirm_after_delivery", 300 * NS)
