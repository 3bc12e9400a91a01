"""Buyer sign-in: the pure code state machine (a Hypothesis property against a reference
model), and the service's use cases on a real database (both backends), codes read from the
real mail folder (``DirectoryMailer``).

The three moves a merchant holding the checkout token must not make — pay from the buyer's
wallet, confirm receipt, withdraw the buyer's refund request — are refused by the *service*
without a live session of the order's buyer, so no entry point (API, hosted page, a script on
the service) can skip the check.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paykeep.buyer_mailbox import latest_code
from paykeep.clock import NS_PER_S
from paykeep.payments.buyer_auth import (
    BUYER_CODE_ATTEMPTS_MAX,
    BUYER_CODE_TTL_S,
    BUYER_CODES_PER_WINDOW_MAX,
    BUYER_SESSION_TTL_S,
    CODE_TRANSITIONS,
    CodeEvent,
    CodeRecord,
    CodeState,
    Verdict,
    code_transition,
    may_issue,
    verify_step,
)
from paykeep.payments.errors import (
    BuyerAuthenticationRequired,
    BuyerCodeAttemptsExceeded,
    BuyerCodeExpired,
    BuyerCodeInvalid,
    BuyerCodeRateLimited,
    IllegalTransition,
)
from paykeep.payments.model import LineItem, OrderState, RefundAction, RefundState
from paykeep.payments.service import Tx
from tests.payments.conftest import World

T0 = 1_800_000_000 * NS_PER_S


# --- the pure state machine -------------------------------------------------------------------


def test_transition_table_is_closed() -> None:
    for state in CodeState:
        for event in CodeEvent:
            if (state, event) in CODE_TRANSITIONS:
                assert code_transition(state, event) is CODE_TRANSITIONS[(state, event)]
            else:
                with pytest.raises(IllegalTransition):
                    code_transition(state, event)
    # every terminal state is terminal
    for state in (CodeState.USED, CodeState.EXPIRED, CodeState.EXHAUSTED):
        assert not any(s is state for s, _ in CODE_TRANSITIONS)


def _record() -> CodeRecord:
    return CodeRecord("bcode_1", "buy_1", "cs_1", "h", CodeState.ISSUED, 0,
                      T0 + BUYER_CODE_TTL_S * NS_PER_S, T0)  # fmt: skip


ATTEMPT = st.tuples(st.booleans(), st.integers(min_value=0, max_value=2 * BUYER_CODE_TTL_S))


@settings(max_examples=300, deadline=None)
@given(st.lists(ATTEMPT, max_size=12))
def test_code_attempts_against_a_reference_model(attempts: list[tuple[bool, int]]) -> None:
    """A sequence of (right code?, seconds after sending) attempts: at most one sign-in ever,
    never after expiry, never after BUYER_CODE_ATTEMPTS_MAX wrong codes; once dead, dead."""
    record = _record()
    wrong = 0
    signed_in = 0
    dead: Verdict | None = None  # the reference model's terminal answer
    for right, after_s in sorted(attempts, key=lambda a: a[1]):
        now = T0 + after_s * NS_PER_S
        record, verdict = verify_step(record, right, now)
        if dead is not None:
            expected = dead
        elif after_s >= BUYER_CODE_TTL_S:
            expected = dead = Verdict.EXPIRED
        elif right:
            expected, dead = Verdict.SIGNED_IN, Verdict.DEAD
        else:
            wrong += 1
            expected = Verdict.EXHAUSTED if wrong >= BUYER_CODE_ATTEMPTS_MAX else Verdict.WRONG
            if expected is Verdict.EXHAUSTED:
                dead = Verdict.EXHAUSTED
        assert verdict is expected, (attempts, verdict, expected)
        signed_in += verdict is Verdict.SIGNED_IN
        assert record.attempts <= BUYER_CODE_ATTEMPTS_MAX
        assert (record.state is CodeState.ISSUED) == (dead is None)
    assert signed_in <= 1


def test_hourly_limit_counts_only_the_last_hour() -> None:
    hour = 3600 * NS_PER_S
    now = T0 + 10 * hour
    assert may_issue([], now)
    assert may_issue([now - hour + 1] * (BUYER_CODES_PER_WINDOW_MAX - 1), now)
    assert not may_issue([now - hour + 1] * BUYER_CODES_PER_WINDOW_MAX, now)
    assert may_issue([now - hour] * BUYER_CODES_PER_WINDOW_MAX, now)  # exactly an hour ago


# --- the service --------------------------------------------------------------------------------


def _email_of(w: World, token: str) -> str:
    with w.svc.reading() as tx:
        order = w.svc.order(tx, None, w.svc.session_for_token(tx, token).order_id)
        row = tx.repo.buyer_row(order.buyer_id)
        assert row is not None
        return w.svc.cipher.open(bytes(row[2]), purpose="buyer.email", row_id=row[0])


def _unchanged(w: World, move: Callable[[Tx], object]) -> None:
    """``move`` is refused with 401 buyer_authentication_required; no event, no money."""
    seq, head = w.last_seq(), w.ledger.head()
    with pytest.raises(BuyerAuthenticationRequired), w.svc.transaction() as tx:
        move(tx)
    assert w.event_types_since(seq) == []
    assert w.ledger.head() == head


def test_the_code_goes_to_the_buyer_and_is_stored_only_as_a_keyed_hash(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m, email="jane.doe@example.com")
    w.fund(b, 2_500)
    with w.svc.transaction() as tx:
        order = w.svc.create_order(tx, m.id, b.id, [LineItem("Tea", 1, 2_500)])
        _s, token = w.svc.create_checkout_session(tx, m.id, order.id)
    sent = w.svc.start_buyer_sign_in(token)
    assert sent.email_masked == "j***@example.com"
    assert sent.expires_at_ns == w.clock.now_ns() + BUYER_CODE_TTL_S * NS_PER_S
    code = latest_code(w.mail_dir, "jane.doe@example.com")
    assert code is not None and len(code) == 6
    with w.database.read() as conn:
        stored = conn.exec_driver_sql("SELECT code_hmac, state FROM payments_buyer_codes").all()
    assert len(stored) == 1 and code not in stored[0][0] and stored[0][1] == "issued"
    buyer_session, secret = w.svc.verify_buyer_code(token, code)
    assert secret.startswith("bs_") and len(secret) >= 43
    assert buyer_session.buyer_id == b.id
    assert buyer_session.expires_at_ns == w.clock.now_ns() + BUYER_SESSION_TTL_S * NS_PER_S
    with w.database.read() as conn:
        hashes = [
            r[0] for r in conn.exec_driver_sql("SELECT token_hash FROM payments_buyer_sessions")
        ]
    assert secret not in hashes and len(hashes) == 1
    # single use
    with pytest.raises(BuyerCodeInvalid):
        w.svc.verify_buyer_code(token, code)
    # and the session works
    with w.svc.transaction() as tx:
        assert w.svc.pay_from_wallet(tx, token, secret).state is OrderState.AWAITING_SHIPMENT


def test_wrong_codes_then_the_code_is_dead(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    _order, token = w.order(m, b)  # signs b in once (its code is used)
    w.svc.start_buyer_sign_in(token)
    code = latest_code(w.mail_dir, _email_of(w, token))
    assert code is not None
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(BUYER_CODE_ATTEMPTS_MAX - 1):
        with pytest.raises(BuyerCodeInvalid):
            w.svc.verify_buyer_code(token, wrong)
    with pytest.raises(BuyerCodeAttemptsExceeded):
        w.svc.verify_buyer_code(token, wrong)
    # dead: even the right code is refused now
    with pytest.raises(BuyerCodeAttemptsExceeded):
        w.svc.verify_buyer_code(token, code)
    with w.database.read() as conn:
        state, attempts = conn.exec_driver_sql(
            "SELECT state, attempts FROM payments_buyer_codes ORDER BY id DESC LIMIT 1"
        ).one()
    assert (state, attempts) == ("exhausted", BUYER_CODE_ATTEMPTS_MAX)
    # a malformed code is refused without using an attempt (shape first)
    with pytest.raises(BuyerCodeInvalid):
        w.svc.verify_buyer_code(token, "12 34")


def test_an_expired_code_is_refused_even_when_right(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    _order, token = w.order(m, b)
    w.svc.start_buyer_sign_in(token)
    code = latest_code(w.mail_dir, _email_of(w, token))
    assert code is not None
    w.clock.advance(BUYER_CODE_TTL_S)
    with pytest.raises(BuyerCodeExpired):
        w.svc.verify_buyer_code(token, code)


def test_a_new_code_replaces_the_previous_one(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    _order, token = w.order(m, b)
    email = _email_of(w, token)
    w.svc.start_buyer_sign_in(token)
    first = latest_code(w.mail_dir, email)
    w.clock.advance(1)
    w.svc.start_buyer_sign_in(token)
    second = latest_code(w.mail_dir, email)
    assert first is not None and second is not None
    if first != second:
        with pytest.raises(BuyerCodeInvalid):
            w.svc.verify_buyer_code(token, first)
    w.svc.verify_buyer_code(token, second)


def test_at_most_five_codes_an_hour_per_buyer(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    _order, token = w.order(m, b)  # the first code (signing in)
    _order2, token2 = w.order(m, b)  # same buyer, held session: no code
    for _ in range(BUYER_CODES_PER_WINDOW_MAX - 1):
        w.svc.start_buyer_sign_in(token2)
    with pytest.raises(BuyerCodeRateLimited) as caught:
        w.svc.start_buyer_sign_in(token)  # per buyer, across checkouts
    assert caught.value.code == "buyer_code_rate_limited"
    w.clock.advance(3600)
    w.svc.start_buyer_sign_in(token)


def test_the_three_moves_need_the_orders_buyer_signed_in(world: World) -> None:
    """The merchant holds the checkout token: alone it is not enough for a wallet payment, a
    confirmation or withdrawing a refund request; neither is another buyer's session."""
    w = world
    m = w.merchant()
    buyer, other = w.buyer(m), w.buyer(m, "Eve", "eve@example.com")
    w.fund(buyer, 5_000)
    order, token = w.order(m, buyer, 2_500)
    _o, other_token = w.order(m, other, 100)
    own, foreign = w.bs(token), w.bs(other_token)
    for bad in (None, "", "bs_forged", foreign, "cs_" + token[3:]):
        _unchanged(w, lambda tx, bad=bad: w.svc.pay_from_wallet(tx, token, bad))
    with w.svc.transaction() as tx:
        w.svc.pay_from_wallet(tx, token, own)
    with w.svc.transaction() as tx:
        w.svc.ship(tx, m.id, order.id, "dhl", "JD0001234")
    for bad in (None, foreign):
        _unchanged(w, lambda tx, bad=bad: w.svc.confirm(tx, order.id, token=token,
                                                          buyer_session=bad))  # fmt: skip
    with w.svc.transaction() as tx:
        refund = w.svc.request_refund(tx, token, order.id, None, "broken")  # token alone: ok
    for bad in (None, foreign):
        _unchanged(w, lambda tx, bad=bad: w.svc.refund_action(
            tx, refund.id, RefundAction.CANCEL, token=token, buyer_session=bad))  # fmt: skip
    assert w.get_order(order.id).state is OrderState.AWAITING_RECEIPT
    with w.svc.transaction() as tx:
        cancelled = w.svc.refund_action(
            tx, refund.id, RefundAction.CANCEL, token=token, buyer_session=own
        )
    assert cancelled.state is RefundState.CANCELLED
    with w.svc.transaction() as tx:
        assert w.svc.confirm(tx, order.id, token=token, buyer_session=own).state is (
            OrderState.COMPLETED
        )


def test_a_session_expires(world: World) -> None:
    w = world
    m = w.merchant()
    b = w.buyer(m)
    w.fund(b, 2_500)
    _order, token = w.order(m, b)
    held = w.sessions[b.id]
    w.clock.advance(BUYER_SESSION_TTL_S)
    _unchanged(w, lambda tx: w.svc.pay_from_wallet(tx, token, held))
