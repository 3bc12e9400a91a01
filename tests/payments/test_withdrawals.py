"""Buyer withdrawals, the pure part (``paykeep.payments.withdrawals``): the return-to-source
bound as a Hypothesis property against an independent reference, the order in which the
limits are checked, the amount's shape and the state machine."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paykeep.payments.errors import (
    IllegalTransition,
    InsufficientFunds,
    PaymentsInputInvalid,
    WithdrawalExceedsSource,
    WithdrawalNoSource,
)
from paykeep.payments.withdrawals import (
    STANDING,
    WITHDRAWAL_AMOUNT_MAX_MINOR,
    WithdrawalState,
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
