"""Lost, duplicated and late answers: never a double charge, never lost money.

After every scenario the issuer's books (``GET /cards``) and Paykeep's (ledger and payment
states) must agree: money the issuer took = holds of payments still authorised + captures
credited in the ledger.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paykeep.gateway.cards.model import CardOutcome, CardPaymentState
from tests.gateway.cards.conftest import CALL_TIMEOUT_S, Rig

S, O = CardPaymentState, CardOutcome  # noqa: E741
DELAY_S = CALL_TIMEOUT_S + 0.4


def fault(rig: Rig, pan: str, kind: str | None, mtis: list[str] | None = None) -> None:
    if kind is None:
        rig.faults()
        return
    rule: dict[str, object] = {"kind": kind, "next": 1, "card": rig.issuer_tokens[pan]}
    if kind == "delay":
        rule["delay_s"] = DELAY_S
    if mtis:
        rule["mtis"] = mtis
    rig.faults(rule)


def assert_books_agree(rig: Rig, pan: str, initial: int, payment_ids: list[str]) -> None:
    rig.faults()
    rig.gateway.recover(min_age_s=0)
    view = rig.issuer(pan)
    taken = initial - int(view["balance_minor"])  # type: ignore[call-overload]
    assert taken == view["held_minor"] + view["captured_minor"]  # type: ignore[operator]
    results = [rig.gateway.payment(p) for p in payment_ids]
    assert all(r.state not in (S.AUTHORISING, S.CAPTURING, S.REVERSING) for r in results)
    held = sum(r.amount_minor for r in results if r.state is S.AUTHORISED)
    captured = sum(r.captured_minor for r in results if r.state is S.CAPTURED)
    assert view["held_minor"] == held
    assert view["captured_minor"] == captured == rig.wallet_credits() == rig.clearing_debits()


@pytest.mark.parametrize("kind", ["lost", "duplicate", "delay"])
def test_authorisation_under_faults(rig: Rig, kind: str) -> None:
    pan, token = rig.new_card(10_000)
    fault(rig, pan, kind)
    result = rig.gateway.authorise(token, 4_000, "EUR", payment_id="f-auth")
    if kind == "duplicate":
        assert (result.outcome, result.state) == (O.APPROVED, S.AUTHORISED)
    else:
        assert (result.outcome, result.state) == (O.TIMED_OUT_REVERSED, S.REVERSED)
        assert rig.issuer(pan)["balance_minor"] == 10_000
    assert_books_agree(rig, pan, 10_000, ["f-auth"])


@pytest.mark.parametrize("kind", ["lost", "duplicate", "delay"])
def test_capture_under_faults(rig: Rig, kind: str) -> None:
    pan, token = rig.new_card(10_000)
    rig.gateway.authorise(token, 4_000, "EUR", payment_id="f-cap")
    fault(rig, pan, kind, ["0200"])
    result = rig.gateway.capture("f-cap", 3_000, credit_account_id=rig.wallet.id)
    if kind == "duplicate":
        assert (result.state, rig.wallet_credits()) == (S.CAPTURED, 3_000)
        assert rig.gateway.capture("f-cap", 3_000, credit_account_id=rig.wallet.id) == result
    else:
        # The capture may have been applied: both it and the authorisation are reversed.
        assert (result.outcome, result.state) == (O.TIMED_OUT_REVERSED, S.REVERSED)
        assert rig.wallet_credits() == 0
        assert rig.issuer(pan)["balance_minor"] == 10_000
    assert_books_agree(rig, pan, 10_000, ["f-cap"])


@pytest.mark.parametrize("kind", ["lost", "duplicate", "delay", "unavailable"])
def test_sale_under_faults(rig: Rig, kind: str) -> None:
    pan, token = rig.new_card(10_000)
    fault(rig, pan, kind)
    result = rig.gateway.sale(token, 2_000, "EUR", payment_id="f-sale",
                              credit_account_id=rig.wallet.id)  # fmt: skip
    expected = {
        "duplicate": (O.APPROVED, S.CAPTURED),
        "unavailable": (O.UNAVAILABLE, S.UNAVAILABLE),
    }.get(kind, (O.TIMED_OUT_REVERSED, S.REVERSED))
    assert (result.outcome, result.state) == expected
    assert_books_agree(rig, pan, 10_000, ["f-sale"])


def test_lost_reversal_answers_are_retried_and_duplicates_are_harmless(rig: Rig) -> None:
    pan, token = rig.new_card(10_000)
    rig.gateway.authorise(token, 1_000, "EUR", payment_id="f-rev")
    rule = {"kind": "lost", "next": 2, "card": rig.issuer_tokens[pan], "mtis": ["0400"]}
    rig.faults(rule)
    result = rig.gateway.reverse("f-rev")
    assert (result.outcome, result.state) == (O.REVERSED, S.REVERSED)
    reversals = [m for m in rig.gateway.messages("f-rev") if m.mti == "0400"]
    assert [m.direction.value for m in reversals] == ["out", "timeout", "out", "timeout",
                                                      "out", "in"]  # fmt: skip
    assert rig.issuer(pan)["balance_minor"] == 10_000
    assert_books_agree(rig, pan, 10_000, ["f-rev"])


def test_a_network_that_stays_silent_leaves_the_reversal_to_the_sweep(rig: Rig) -> None:
    pan, token = rig.new_card(10_000)
    card = rig.issuer_tokens[pan]
    with rig.banksim.http() as http:
        http.post("/faults/cards", json={"faults": [
            {"kind": "lost", "next": 1, "card": card, "mtis": ["0100"]},
            {"kind": "unavailable", "card": card, "mtis": ["0400"]},  # until removed
        ]}).raise_for_status()  # fmt: skip
    result = rig.gateway.authorise(token, 1_000, "EUR", payment_id="f-silent")
    assert (result.outcome, result.state) == (O.REVERSAL_PENDING, S.REVERSING)
    assert rig.issuer(pan)["held_minor"] == 1_000  # applied, and no reversal got through
    rig.faults()
    report = rig.gateway.recover(min_age_s=0)
    assert report.reversed == 1
    assert rig.gateway.payment("f-silent").outcome is O.TIMED_OUT_REVERSED
    assert_books_agree(rig, pan, 10_000, ["f-silent"])


OPS = st.lists(
    st.tuples(
        st.sampled_from(["auth", "sale", "capture", "reverse"]),
        st.integers(min_value=1, max_value=3_000),
        st.sampled_from([None, None, "lost", "duplicate", "delay", "unavailable"]),
    ),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_property_books_agree_under_any_faults(
    rig: Rig, ops: list[tuple[str, int, str | None]]
) -> None:
    initial = 5_000
    pan, token = rig.new_card(initial)
    run = rig.ledger.ids.next_id()
    payments: list[str] = []
    for i, (op, amount, kind) in enumerate(ops):
        fault(rig, pan, kind)
        authorised = [p for p in payments if rig.gateway.payment(p).state is S.AUTHORISED]
        if op == "auth":
            payments.append(f"p-{run}-{i}")
            rig.gateway.authorise(token, amount, "EUR", payment_id=payments[-1])
        elif op == "sale":
            payments.append(f"p-{run}-{i}")
            rig.gateway.sale(token, amount, "EUR", payment_id=payments[-1],
                             credit_account_id=rig.wallet.id)  # fmt: skip
        elif op == "capture" and authorised:
            rig.gateway.capture(authorised[-1], credit_account_id=rig.wallet.id)
        elif op == "reverse" and authorised:
            rig.gateway.reverse(authorised[-1])
    wallet_before = rig.wallet_credits()
    # the wallet is shared by the rig's examples: compare this card's share only
    view = rig.issuer(pan)
    rig.faults()
    rig.gateway.recover(min_age_s=0)
    view = rig.issuer(pan)
    results = [rig.gateway.payment(p) for p in payments]
    taken = initial - int(view["balance_minor"])  # type: ignore[call-overload]
    held = sum(r.amount_minor for r in results if r.state is S.AUTHORISED)
    captured = sum(r.captured_minor for r in results if r.state is S.CAPTURED)
    assert taken == held + captured
    assert view["held_minor"] == held and view["captured_minor"] == captured
    credited = sum(
        rig.ledger.transfer(r.ledger_transfer_id).amount_minor
        for r in results
        if r.ledger_transfer_id is not None
    )
    assert credited == captured
    assert rig.wallet_credits() == wallet_before
