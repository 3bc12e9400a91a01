"""The pure core of card refunds: the cumulative bound (property-based, against a reference
model) and the refund state machine."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paykeep.gateway.cards.errors import CardIllegalTransition, CardRefundExceedsCapture
from paykeep.gateway.cards.model import (
    REFUND_COUNTED,
    REFUND_FINAL,
    REFUND_TRANSITIONS,
    CardRefundState,
    check_refund_within_capture,
    refund_transition,
)

R = CardRefundState
#: Where a refund that was let through can end up (what the issuer and the ledger make of it).
ENDINGS = st.sampled_from([R.REFUNDED, R.DECLINED, R.UNAVAILABLE, R.REVERSED, R.REFUNDING,
                           R.REVERSING, R.POSTING])  # fmt: skip


@settings(max_examples=400)
@given(
    captured=st.integers(1, 10_000),
    requests=st.lists(st.tuples(st.integers(1, 6_000), ENDINGS), max_size=25),
)
def test_refunds_that_may_have_applied_never_total_more_than_the_capture(
    captured: int, requests: list[tuple[int, CardRefundState]]
) -> None:
    refunds: list[tuple[CardRefundState, int]] = []
    for amount, ending in requests:
        # The reference model: what may have reached the card, plus this one, within capture.
        applied = sum(a for s, a in refunds if s in (R.REFUNDING, R.POSTING, R.REFUNDED,
                                                    R.REVERSING))  # fmt: skip
        allowed = applied + amount <= captured
        if allowed:
            left = check_refund_within_capture(captured, refunds, amount)
            assert left == captured - applied - amount
            refunds.append((ending, amount))
        else:
            with pytest.raises(CardRefundExceedsCapture):
                check_refund_within_capture(captured, refunds, amount)
        counted = sum(a for s, a in refunds if s in REFUND_COUNTED)
        assert counted <= captured


@pytest.mark.parametrize("current", list(R))
@pytest.mark.parametrize("target", list(R))
def test_every_refund_transition_outside_the_table_is_refused(
    current: CardRefundState, target: CardRefundState
) -> None:
    if target in REFUND_TRANSITIONS[current]:
        assert refund_transition(current, target) is target
    else:
        with pytest.raises(CardIllegalTransition):
            refund_transition(current, target)


def test_final_states_are_those_money_can_no_longer_change() -> None:
    assert {R.REFUNDED, R.DECLINED, R.UNAVAILABLE, R.REVERSED} == REFUND_FINAL
    # Only an approval moves money, and only once: posting leads to refunded alone.
    assert REFUND_TRANSITIONS[R.POSTING] == {R.REFUNDED}
