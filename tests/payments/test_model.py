"""The pure escrow core (``paykeep.payments.model``): transition tables, fees, splits, timers.

The expected tables below are written out by hand, independently of the module, so a change
to the module's tables is a failing test (and a deliberate edit here), never a silent drift.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paykeep.payments.errors import IllegalTransition, PaymentsInputInvalid
from paykeep.payments.model import (
    BASIS_POINTS,
    ITEM_QUANTITY_MAX,
    ITEMS_MAX,
    NS_PER_S,
    ORDER_AMOUNT_MAX_MINOR,
    RESERVE_BP_MAX,
    TIMER_MAX_S,
    FeePlan,
    LineItem,
    OrderAction,
    OrderState,
    RefundAction,
    RefundState,
    Timer,
    TimerSettings,
    dispute_split,
    fee_for,
    order_total,
    plan_release,
    refund_transition,
    reserve_for,
    timer_for,
    transition,
)

S, A = OrderState, OrderAction
R, RA = RefundState, RefundAction

#: The escrow flow of DESIGN.md, by hand. Every pair not listed must be illegal.
EXPECTED_ORDER: dict[tuple[OrderState, OrderAction], OrderState] = {
    (S.CREATED, A.PAY): S.AWAITING_SHIPMENT,
    (S.CREATED, A.CLOSE): S.CLOSED,
    (S.AWAITING_SHIPMENT, A.SHIP): S.AWAITING_RECEIPT,
    (S.AWAITING_SHIPMENT, A.REFUND_FULL): S.REFUNDED,
    (S.AWAITING_SHIPMENT, A.REFUND_PARTIAL): S.PARTIALLY_REFUNDED,
    (S.AWAITING_RECEIPT, A.DELIVER): S.AWAITING_RECEIPT,
    (S.AWAITING_RECEIPT, A.CONFIRM): S.COMPLETED,
    (S.AWAITING_RECEIPT, A.REFUND_FULL): S.REFUNDED,
    (S.AWAITING_RECEIPT, A.REFUND_PARTIAL): S.PARTIALLY_REFUNDED,
}

EXPECTED_REFUND: dict[tuple[RefundState, RefundAction], RefundState] = {
    (R.REQUESTED, RA.AGREE): R.COMPLETED,
    (R.REQUESTED, RA.AGREE_WITH_RETURN): R.MERCHANT_AGREED,
    (R.REQUESTED, RA.REFUSE): R.MERCHANT_REFUSED,
    (R.REQUESTED, RA.ESCALATE): R.DISPUTED,
    (R.REQUESTED, RA.CANCEL): R.CANCELLED,
    (R.MERCHANT_AGREED, RA.SHIP_RETURN): R.RETURN_SHIPPED,
    (R.MERCHANT_AGREED, RA.CANCEL): R.CANCELLED,
    (R.RETURN_SHIPPED, RA.RECEIVE_RETURN): R.COMPLETED,
    (R.RETURN_SHIPPED, RA.ESCALATE): R.DISPUTED,
    (R.MERCHANT_REFUSED, RA.ESCALATE): R.DISPUTED,
    (R.MERCHANT_REFUSED, RA.CANCEL): R.CANCELLED,
    (R.DISPUTED, RA.DECIDE_FOR_BUYER): R.COMPLETED,
    (R.DISPUTED, RA.DECIDE_FOR_MERCHANT): R.REJECTED,
}

ORDER_TERMINAL = {S.COMPLETED, S.CLOSED, S.REFUNDED, S.PARTIALLY_REFUNDED}
REFUND_TERMINAL = {R.COMPLETED, R.REJECTED, R.CANCELLED}


# --- transition tables ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "action"), list(itertools.product(OrderState, OrderAction)), ids=str
)
def test_order_transition_table(state: OrderState, action: OrderAction) -> None:
    expected = EXPECTED_ORDER.get((state, action))
    if expected is not None:
        assert transition(state, action) is expected
        return
    with pytest.raises(IllegalTransition) as caught:
        transition(state, action)
    assert caught.value.code == "illegal_transition"
    assert caught.value.type == "conflict"
    assert caught.value.param == "state"
    assert state.value in caught.value.message


@pytest.mark.parametrize(
    ("state", "action"), list(itertools.product(RefundState, RefundAction)), ids=str
)
def test_refund_transition_table(state: RefundState, action: RefundAction) -> None:
    expected = EXPECTED_REFUND.get((state, action))
    if expected is not None:
        assert refund_transition(state, action) is expected
        return
    with pytest.raises(IllegalTransition) as caught:
        refund_transition(state, action)
    assert caught.value.code == "illegal_transition"
    assert caught.value.param == "state"


def test_terminal_states_have_no_way_out() -> None:
    """A finished order or refund never moves again (money already moved for good)."""
    for state in ORDER_TERMINAL:
        assert not [a for a in OrderAction if (state, a) in EXPECTED_ORDER]
    for rstate in REFUND_TERMINAL:
        assert not [a for a in RefundAction if (rstate, a) in EXPECTED_REFUND]
    # and every non-terminal state can still end (no order or refund stuck by construction)
    assert {s for s, _ in EXPECTED_ORDER} == set(OrderState) - ORDER_TERMINAL
    reachable = {R.REQUESTED} | set(EXPECTED_REFUND.values())
    assert {s for s, _ in EXPECTED_REFUND} == reachable - REFUND_TERMINAL
    # return_received is in the enum but no action leads to it (receive_return completes the
    # refund at once); if it ever becomes reachable, it must get a way out.
    assert set(RefundState) - reachable == {R.RETURN_RECEIVED}


# --- fees, releases, reserves -----------------------------------------------------------------

plans = st.builds(
    FeePlan,
    percent_bp=st.integers(0, BASIS_POINTS),
    fixed_minor=st.integers(0, 100_000),
    reserve_percent_bp=st.integers(0, RESERVE_BP_MAX),
    reserve_hold_s=st.integers(0, TIMER_MAX_S),
)
amounts = st.integers(0, ORDER_AMOUNT_MAX_MINOR)


def _half_up(numerator: int, denominator: int) -> int:
    """Reference rounding, integers only: floor(n/d + 1/2) for n >= 0."""
    return (2 * numerator + denominator) // (2 * denominator)


@given(amounts, plans)
def test_fee_never_exceeds_what_is_released(released: int, plan: FeePlan) -> None:
    fee = fee_for(released, plan)
    assert 0 <= fee <= max(released, 0)
    if released > 0:
        expected = min(
            released, _half_up(released * plan.percent_bp, BASIS_POINTS) + plan.fixed_minor
        )
        assert fee == expected
    else:
        assert fee == 0


@pytest.mark.parametrize(
    ("released", "percent_bp", "fixed", "fee"),
    [
        (2_500, 290, 30, 103),  # 72.5 -> 73 (half-up), + 30
        (100, 50, 0, 1),  # 0.5 -> 1 (half-even would give 0)
        (100, 250, 0, 3),  # 2.5 -> 3 (half-even would give 2)
        (100, 249, 0, 2),  # 2.49 -> 2
        (50, 290, 30, 31),  # 1.45 -> 1, + 30
        (1, 290, 30, 1),  # a tiny order pays at most itself
        (30, 0, 30, 30),
        (10_000, 10_000, 0, 10_000),
        (0, 290, 30, 0),  # nothing released, nothing charged
        (-5, 290, 30, 0),
    ],
)
def test_fee_examples(released: int, percent_bp: int, fixed: int, fee: int) -> None:
    assert fee_for(released, FeePlan(percent_bp, fixed)) == fee


@given(st.integers(-10, ORDER_AMOUNT_MAX_MINOR), plans)
def test_reserve_never_exceeds_net_and_rounds_down(net: int, plan: FeePlan) -> None:
    reserve = reserve_for(net, plan)
    assert 0 <= reserve <= max(net, 0)
    if net > 0:
        assert reserve == net * plan.reserve_percent_bp // BASIS_POINTS
        # rounded down: the merchant is never short-changed by rounding
        assert reserve * BASIS_POINTS <= net * plan.reserve_percent_bp


def test_reserve_examples() -> None:
    assert reserve_for(2_397, FeePlan(290, 30, 1_000)) == 239  # 239.7 -> 239
    assert reserve_for(2_397, FeePlan(290, 30, 0)) == 0
    assert reserve_for(0, FeePlan(290, 30, 5_000)) == 0


@given(st.data(), st.integers(0, ORDER_AMOUNT_MAX_MINOR), plans)
def test_plan_release_splits_the_hold_exactly(
    data: st.DataObject, held: int, plan: FeePlan
) -> None:
    refund = data.draw(st.integers(0, held))
    release = plan_release(held, refund, plan)
    assert release.held == held
    assert release.to_buyer == refund
    assert release.to_buyer + release.to_merchant == held
    assert release.merchant_net + release.fee == release.to_merchant
    assert 0 <= release.fee <= release.to_merchant
    assert 0 <= release.reserve <= release.merchant_net
    assert release.fee == fee_for(release.to_merchant, plan)
    assert release.reserve == reserve_for(release.merchant_net, plan)


def test_plan_release_worked_example() -> None:
    """The happy path of the smoke run: 25.00 EUR, 2.9 % + 0.30, 10 % reserve."""
    release = plan_release(2_500, 0, FeePlan(290, 30, 1_000, 3_600))
    assert (release.to_merchant, release.fee, release.reserve, release.to_buyer) == (
        2_500, 103, 239, 0,
    )  # fmt: skip
    assert release.merchant_net - release.reserve == 2_158
    full = plan_release(2_500, 2_500, FeePlan(290, 30, 1_000))
    assert (full.to_merchant, full.fee, full.reserve, full.to_buyer) == (0, 0, 0, 2_500)


@given(st.integers(0, 10**9), st.one_of(st.integers(max_value=-1), st.integers(min_value=1)))
def test_plan_release_refuses_a_refund_outside_the_hold(held: int, beyond: int) -> None:
    refund = beyond if beyond < 0 else held + beyond
    with pytest.raises(PaymentsInputInvalid) as caught:
        plan_release(held, refund, FeePlan())
    assert caught.value.code == "payments_input_invalid"
    assert caught.value.param == "amount_minor"


# --- dispute splits ---------------------------------------------------------------------------


def _reference_split(held: int, bp: int) -> tuple[int, int]:
    """Largest remainder by hand: floors, the leftover unit to the larger remainder (ties to
    the buyer, the first weight)."""
    buyer, buyer_rem = divmod(held * bp, BASIS_POINTS)
    merchant, merchant_rem = divmod(held * (BASIS_POINTS - bp), BASIS_POINTS)
    if buyer + merchant < held:
        if buyer_rem >= merchant_rem:
            buyer += 1
        else:
            merchant += 1
    return buyer, merchant


@pytest.mark.parametrize("held", [0, 1, 2, 3, 7, 3_001, 9_999, 123_457, ORDER_AMOUNT_MAX_MINOR])
def test_dispute_split_is_exact_for_every_basis_point(held: int) -> None:
    for bp in range(BASIS_POINTS + 1):
        buyer, merchant = dispute_split(held, "EUR", bp)
        assert buyer + merchant == held, (held, bp)
        assert buyer >= 0 and merchant >= 0
        assert (buyer, merchant) == _reference_split(held, bp), (held, bp)


@given(st.integers(0, ORDER_AMOUNT_MAX_MINOR), st.integers(0, BASIS_POINTS))
def test_dispute_split_property(held: int, bp: int) -> None:
    buyer, merchant = dispute_split(held, "JPY", bp)
    assert buyer + merchant == held
    # each share is within one minor unit of its exact value
    assert abs(buyer * BASIS_POINTS - held * bp) < BASIS_POINTS


def test_dispute_split_ends() -> None:
    assert dispute_split(3_001, "EUR", 0) == (0, 3_001)
    assert dispute_split(3_001, "EUR", BASIS_POINTS) == (3_001, 0)
    assert dispute_split(3_001, "EUR", 3_333) == (1_000, 2_001)
    assert dispute_split(3_001, "EUR", 5_000) == (1_501, 1_500)


@pytest.mark.parametrize("bp", [-1, 10_001, True, 50.0, "5000", None])
def test_dispute_split_refuses_a_bad_share(bp: object) -> None:
    with pytest.raises(PaymentsInputInvalid) as caught:
        dispute_split(100, "EUR", bp)  # type: ignore[arg-type]
    assert caught.value.param == "buyer_share_bp"


# --- order totals -----------------------------------------------------------------------------

line_items = st.builds(
    LineItem,
    description=st.text(min_size=1, max_size=200),
    quantity=st.integers(1, ITEM_QUANTITY_MAX),
    unit_amount_minor=st.integers(1, 10**6),
)


@given(st.lists(line_items, min_size=1, max_size=ITEMS_MAX))
def test_order_total_is_the_sum_of_the_lines(items: list[LineItem]) -> None:
    assert order_total(items) == sum(i.quantity * i.unit_amount_minor for i in items)


def _item(description: object = "Tea", quantity: object = 1, unit: object = 100) -> LineItem:
    return LineItem(description, quantity, unit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([], "items"),
        ([_item()] * (ITEMS_MAX + 1), "items"),
        ([_item(description="")], "items.0.description"),
        ([_item(), _item(description="x" * 201)], "items.1.description"),
        ([_item(description=None)], "items.0.description"),
        ([_item(quantity=0)], "items.0.quantity"),
        ([_item(quantity=-1)], "items.0.quantity"),
        ([_item(quantity=ITEM_QUANTITY_MAX + 1)], "items.0.quantity"),
        ([_item(quantity=True)], "items.0.quantity"),
        ([_item(quantity=1.0)], "items.0.quantity"),
        ([_item(unit=0)], "items.0.unit_amount_minor"),
        ([_item(unit=-100)], "items.0.unit_amount_minor"),
        ([_item(unit=1.5)], "items.0.unit_amount_minor"),
        ([_item(unit="100")], "items.0.unit_amount_minor"),
        ([_item(unit=ORDER_AMOUNT_MAX_MINOR + 1)], "items"),
        ([_item(quantity=2, unit=ORDER_AMOUNT_MAX_MINOR // 2 + 1)], "items"),
        # the first failure wins: a bad description before a bad quantity
        ([_item(description="", quantity=0)], "items.0.description"),
    ],
)
def test_order_total_refuses_bad_items(items: list[LineItem], param: str) -> None:
    with pytest.raises(PaymentsInputInvalid) as caught:
        order_total(items)
    assert caught.value.code == "payments_input_invalid"
    assert caught.value.type == "invalid_request"
    assert caught.value.param == param


def test_order_total_bounds_are_inclusive() -> None:
    assert order_total([_item(unit=ORDER_AMOUNT_MAX_MINOR)]) == ORDER_AMOUNT_MAX_MINOR
    assert order_total([_item()] * ITEMS_MAX) == 100 * ITEMS_MAX
    assert order_total([_item(quantity=ITEM_QUANTITY_MAX, unit=1)]) == ITEM_QUANTITY_MAX
    assert order_total([_item(description="x" * 200)]) == 100


# --- timers -----------------------------------------------------------------------------------

TIMERS = TimerSettings(
    unpaid_close_s=11, ship_by_s=22, confirm_after_delivery_s=33, confirm_after_shipping_s=44
)
SINCE = 1_000 * NS_PER_S


@pytest.mark.parametrize(
    ("state", "delivered", "timer", "after_s"),
    [
        (S.CREATED, False, Timer.CLOSE_UNPAID, 11),
        (S.AWAITING_SHIPMENT, False, Timer.REFUND_UNSHIPPED, 22),
        (S.AWAITING_RECEIPT, False, Timer.CONFIRM_AFTER_SHIPPING, 44),
        (S.AWAITING_RECEIPT, True, Timer.CONFIRM_AFTER_DELIVERY, 33),
        (S.COMPLETED, False, None, None),
        (S.CLOSED, False, None, None),
        (S.REFUNDED, False, None, None),
        (S.PARTIALLY_REFUNDED, False, None, None),
        (S.COMPLETED, True, None, None),
    ],
)
def test_timer_for_each_state(
    state: OrderState, delivered: bool, timer: Timer | None, after_s: int | None
) -> None:
    kind, due = timer_for(state, TIMERS, SINCE, delivered=delivered)
    assert kind is timer
    assert due == (None if after_s is None else SINCE + after_s * NS_PER_S)


def test_every_timer_state_is_covered() -> None:
    """Each non-terminal state runs a timer: no held money waits forever without one."""
    for state in set(OrderState) - ORDER_TERMINAL:
        assert timer_for(state, TimerSettings(), 0)[0] is not None


@pytest.mark.parametrize(
    "changes",
    [
        {"unpaid_close_s": 0},
        {"ship_by_s": TIMER_MAX_S + 1},
        {"confirm_after_delivery_s": -1},
        {"confirm_after_shipping_s": 1.5},
        {"unpaid_close_s": True},
    ],
)
def test_timer_settings_bounds(changes: dict[str, object]) -> None:
    (name,) = changes
    with pytest.raises(PaymentsInputInvalid) as caught:
        TimerSettings(**changes).check()  # type: ignore[arg-type]
    assert caught.value.param == name
    assert TimerSettings(**{name: 1}).check()
    assert TimerSettings(**{name: TIMER_MAX_S}).check()


@pytest.mark.parametrize(
    ("plan", "param"),
    [
        (FeePlan(percent_bp=-1), "fee_percent_bp"),
        (FeePlan(percent_bp=10_001), "fee_percent_bp"),
        (FeePlan(fixed_minor=-1), "fee_fixed_minor"),
        (FeePlan(fixed_minor=100_001), "fee_fixed_minor"),
        (FeePlan(reserve_percent_bp=RESERVE_BP_MAX + 1), "reserve_percent_bp"),
        (FeePlan(reserve_hold_s=-1), "reserve_hold_s"),
    ],
)
def test_fee_plan_bounds(plan: FeePlan, param: str) -> None:
    with pytest.raises(PaymentsInputInvalid) as caught:
        plan.check()
    assert caught.value.param == param
