"""Buyer withdrawals, the pure part (``paykeep.payments.withdrawals``): the return-to-source
bounds as Hypothesis properties against independent references (per IBAN for the bank, per
capture for the card, where the amount is split newest capture first), the order in which the
limits are checked, the amount's shape and the state machines."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paykeep.payments.errors import (
    IllegalTransition,
    InsufficientFunds,
    PaymentsInputInvalid,
    WithdrawalExceedsCardRefundable,
    WithdrawalExceedsSource,
    WithdrawalNoSource,
)
from paykeep.payments.withdrawals import (
    STANDING,
    WITHDRAWAL_AMOUNT_MAX_MINOR,
    CardCapture,
    WithdrawalDestination,
    WithdrawalState,
    allocate_card_refunds,
    card_withdrawal_outcome,
    check_amount,
    check_withdrawal,
    compact_iban,
    source_headroom,
    withdrawal_transition,
)

#: Three accounts money may come from, each as a statement might print it.
IBANS = ("NL91ABNA0417164300", "DE89370400440532013000", "GB82WEST12345698765432")
SPELLINGS = st.sampled_from(IBANS).flatmap(
    lambda iban: st.sampled_from([iban, iban.lower(), " ".join(iban[i : i + 4]
                                                                 for i in range(0, len(iban), 4))])
)  # fmt: skip

# One step of a buyer's history: a top-up credited from an IBAN, a withdrawal asked for
# (to an IBAN, possibly one nothing came from), or the bank returning a standing withdrawal.
topup = st.tuples(st.just("topup"), SPELLINGS, st.integers(1, 50_000))
request = st.tuples(
    st.just("request"),
    st.one_of(SPELLINGS, st.just("FR1420041010050500013M02606")),
    st.integers(1, 60_000),
)
give_back = st.tuples(st.just("return"), st.integers(0, 100), st.just(0))


@settings(max_examples=300)
@given(st.lists(st.one_of(topup, request, give_back), max_size=60))
def test_what_goes_back_to_an_iban_never_exceeds_what_it_sent(
    steps: list[tuple[str, Any, int]],
) -> None:
    credited: list[tuple[str, int]] = []
    standing: list[tuple[str, int]] = []  # (iban as asked, amount)
    wallet = 0  # the wallet holds the top-ups (refunds of what they paid for included)
    for kind, target, amount in steps:
        if kind == "topup":
            credited.append((target, amount))
            wallet += amount
        elif kind == "return" and standing:
            iban, back = standing.pop(target % len(standing))
            wallet += back  # the gateway puts a returned payout back into the wallet
        elif kind == "request":
            # The reference: plain sums over compacted IBANs, computed here.
            key = "".join(target.split()).upper()
            sent = sum(a for i, a in credited if "".join(i.split()).upper() == key)
            out = sum(a for i, a in standing if "".join(i.split()).upper() == key)
            fits = sent > 0 and amount <= sent - out and amount <= wallet
            headroom = source_headroom(credited, standing)
            try:
                check_withdrawal(amount, target, headroom, wallet)
            except (WithdrawalNoSource, WithdrawalExceedsSource, InsufficientFunds):
                assert not fits, (target, amount, sent, out, wallet)
            else:
                assert fits, (target, amount, sent, out, wallet)
                standing.append((target, amount))
                wallet -= amount
        # The invariant, after every step, for every account.
        for iban in IBANS:
            sent = sum(a for i, a in credited if compact_iban(i) == iban)
            out = sum(a for i, a in standing if compact_iban(i) == iban)
            assert out <= sent
        assert wallet >= 0


def test_the_first_broken_limit_wins() -> None:
    room = source_headroom([(IBANS[0], 1_000)], [(IBANS[0], 400)])
    assert room == {IBANS[0]: 600}
    # (amount, iban, wallet) -> error: no source, then the source's headroom, then the wallet.
    table: list[tuple[int, str | None, int, type[Exception] | None]] = [
        (100, None, 10_000, WithdrawalNoSource),
        (100, IBANS[1], 10_000, WithdrawalNoSource),
        (601, IBANS[0], 0, WithdrawalExceedsSource),
        (600, IBANS[0], 599, InsufficientFunds),
        (600, IBANS[0], 600, None),
        (600, IBANS[0].lower(), 600, None),
    ]
    for amount, iban, wallet, expected in table:
        if expected is None:
            check_withdrawal(amount, iban, room, wallet)
        else:
            with pytest.raises(expected):
                check_withdrawal(amount, iban, room, wallet)


def test_a_withdrawal_to_an_account_nothing_came_from_is_never_allowed() -> None:
    # Even with the wallet full of money (refunds, card money): only a source may receive.
    with pytest.raises(WithdrawalNoSource):
        check_withdrawal(1, IBANS[2], source_headroom([(IBANS[0], 5_000)], []), 10**9)


@pytest.mark.parametrize("amount", [0, -1, 1.5, "100", None, True, WITHDRAWAL_AMOUNT_MAX_MINOR + 1])
def test_the_amount_is_a_positive_bounded_int(amount: object) -> None:
    with pytest.raises(PaymentsInputInvalid):
        check_amount(amount)


def test_the_amount_bounds_themselves_are_allowed() -> None:
    assert check_amount(1) == 1
    assert check_amount(WITHDRAWAL_AMOUNT_MAX_MINOR) == WITHDRAWAL_AMOUNT_MAX_MINOR


W = WithdrawalState


def test_the_state_machine_follows_the_gateway_forward_only() -> None:
    allowed = {
        (W.PENDING, W.REQUESTED), (W.PENDING, W.FAILED), (W.PENDING, W.BATCHED),
        (W.PENDING, W.ACCEPTED), (W.PENDING, W.SETTLED), (W.PENDING, W.RETURNED),
        (W.REQUESTED, W.BATCHED), (W.REQUESTED, W.ACCEPTED), (W.REQUESTED, W.SETTLED),
        (W.REQUESTED, W.RETURNED), (W.BATCHED, W.ACCEPTED), (W.BATCHED, W.SETTLED),
        (W.BATCHED, W.RETURNED), (W.ACCEPTED, W.SETTLED),
        # the buyer's bank sends a settled withdrawal back (an account closed)
        (W.SETTLED, W.RETURNED), (W.ACCEPTED, W.RETURNED),
    }  # fmt: skip
    for current in W:
        for target in W:
            if (current, target) in allowed:
                assert withdrawal_transition(current, target) is target
            else:
                with pytest.raises(IllegalTransition):
                    withdrawal_transition(current, target)
    # Only money that came back frees its source's headroom.
    assert set(W) - STANDING == {W.RETURNED, W.FAILED}


def test_the_card_state_machine_is_one_step_to_an_outcome() -> None:
    card = WithdrawalDestination.SOURCE_CARD
    allowed = {(W.PENDING, W.SETTLED), (W.PENDING, W.PARTIALLY_SETTLED), (W.PENDING, W.FAILED)}
    for current in W:
        for target in W:
            if (current, target) in allowed:
                assert withdrawal_transition(current, target, card) is target
            else:
                with pytest.raises(IllegalTransition):
                    withdrawal_transition(current, target, card)
    # A bank withdrawal never becomes partially settled (the gateway pays all or returns).
    for current in W:
        with pytest.raises(IllegalTransition):
            withdrawal_transition(current, W.PARTIALLY_SETTLED)


@pytest.mark.parametrize(
    ("states", "outcome"),
    [
        (["pending"], W.PENDING),
        (["succeeded", "pending"], W.PENDING),
        (["failed", "pending", "succeeded"], W.PENDING),
        (["succeeded"], W.SETTLED),
        (["succeeded", "succeeded"], W.SETTLED),
        (["failed"], W.FAILED),
        (["failed", "failed"], W.FAILED),
        (["succeeded", "failed"], W.PARTIALLY_SETTLED),
    ],
)
def test_a_card_withdrawal_ends_when_its_last_card_refund_does(
    states: list[str], outcome: WithdrawalState
) -> None:
    assert card_withdrawal_outcome(states) is outcome


# -- withdrawals to the card: the allocation over captures --------------------------------------

#: Captures of one buyer: distinct ids, capture times that may tie (then the id decides),
#: refunds that may already have used some, all or (never in practice) more than captured.
captures_st = st.lists(
    st.tuples(st.integers(0, 30), st.integers(1, 5_000), st.integers(0, 6_000)),
    max_size=30,
).map(
    lambda rows: [
        CardCapture(f"pay_{i:04d}", at, captured, min(refunded, captured + 10))
        for i, (at, captured, refunded) in enumerate(rows)
    ]
)


@settings(max_examples=400)
@given(
    captures_st,
    st.integers(1, 60_000),
    st.integers(0, 80_000),
    st.integers(1, 25),
)
def test_a_card_withdrawal_splits_exactly_newest_first_within_each_capture(
    captures: list[CardCapture], amount: int, wallet: int, refunds_max: int
) -> None:
    # The reference, computed independently: the newest captures with room, in order.
    left = {c.payment_id: max(c.captured_minor - c.refunded_minor, 0) for c in captures}
    # Ties on capture time: the larger id is the newer (ids are time-ordered).
    newest = sorted(
        (c for c in captures if left[c.payment_id] > 0),
        key=lambda c: (c.captured_at_ns, c.payment_id),
        reverse=True,
    )[:refunds_max]
    room = sum(left[c.payment_id] for c in newest)
    try:
        parts = allocate_card_refunds(amount, captures, wallet, refunds_max=refunds_max)
    except WithdrawalNoSource:
        assert captures == []
        return
    except WithdrawalExceedsCardRefundable:
        assert captures and amount > room
        return
    except InsufficientFunds:
        assert captures and amount <= room and amount > wallet
        return
    assert captures and amount <= room and amount <= wallet
    # Sums exactly; every part positive and within what its capture has left.
    assert sum(a for _, a in parts) == amount
    assert all(0 < a <= left[pid] for pid, a in parts)
    assert len({pid for pid, _ in parts}) == len(parts) <= refunds_max
    # Newest first, and greedy: every part but the last fills its capture, and a capture
    # takes something only after every newer one with room is full.
    order = [c.payment_id for c in newest]
    assert [pid for pid, _ in parts] == order[: len(parts)]
    assert all(a == left[pid] for pid, a in parts[:-1])


def test_the_card_allocation_walks_from_the_newest_capture() -> None:
    captures = [
        CardCapture("pay_a", 10, 1_000, 0),  # oldest
        CardCapture("pay_b", 20, 2_000, 2_000),  # fully refunded already
        CardCapture("pay_c", 30, 1_500, 500),  # newest: 1,000 left
    ]
    assert allocate_card_refunds(800, captures, 10_000) == [("pay_c", 800)]
    assert allocate_card_refunds(1_600, captures, 10_000) == [("pay_c", 1_000), ("pay_a", 600)]
    assert allocate_card_refunds(2_000, captures, 10_000) == [("pay_c", 1_000), ("pay_a", 1_000)]
    # The first broken limit wins: no capture, then the captures' room, then the wallet.
    table: list[tuple[list[CardCapture], int, int, type[Exception]]] = [
        ([], 1, 10_000, WithdrawalNoSource),
        ([], 1, 0, WithdrawalNoSource),
        (captures, 2_001, 0, WithdrawalExceedsCardRefundable),
        ([CardCapture("pay_b", 20, 2_000, 2_000)], 1, 10_000, WithdrawalExceedsCardRefundable),
        (captures, 2_000, 1_999, InsufficientFunds),
    ]
    for found, amount, wallet, expected in table:
        with pytest.raises(expected):
            allocate_card_refunds(amount, found, wallet)
    # At most refunds_max captures share one withdrawal: the newest with room.
    many = [CardCapture(f"pay_{i:02d}", i, 100, 0) for i in range(5)]
    assert allocate_card_refunds(300, many, 10_000, refunds_max=3) == [
        ("pay_04", 100), ("pay_03", 100), ("pay_02", 100)]  # fmt: skip
    with pytest.raises(WithdrawalExceedsCardRefundable):
        allocate_card_refunds(301, many, 10_000, refunds_max=3)
