"""Every issuer answer becomes one typed result; bad requests are refused before sending."""

from __future__ import annotations

import pytest

from paykeep.gateway.cards.errors import (
    CardAmountInvalid,
    CardCaptureExceedsAuthorisation,
    CardCreditAccountInvalid,
    CardCurrencyNotSupported,
    CardIllegalTransition,
    CardInputInvalid,
    CardPaymentIdReused,
    CardPaymentNotFound,
    CardSecurityCodeInvalid,
)
from paykeep.gateway.cards.model import CardOutcome, CardPaymentState
from paykeep.gateway.vault.errors import VaultTokenNotFound
from paykeep.ledger.model import NewAccount
from tests.gateway.cards.conftest import Rig

S, O = CardPaymentState, CardOutcome  # noqa: E741


@pytest.mark.parametrize(
    ("pan", "exp", "cvv", "amount", "outcome", "state", "code", "meaning"),
    [
        ("4111111111111111", (12, 2029), "123", 500, O.APPROVED, S.AUTHORISED, "00", "approved"),
        ("378282246310005", (12, 2029), "1234", 500, O.APPROVED, S.AUTHORISED, "00", "approved"),
        ("4000000000000002", (12, 2029), "123", 500, O.DECLINED, S.DECLINED, "05",
         "do not honour"),
        ("4111111111111111", (12, 2029), "999", 500, O.DECLINED, S.DECLINED, "05",
         "do not honour"),
        ("4000000000009995", (12, 2029), "123", 1_001, O.DECLINED, S.DECLINED, "51",
         "insufficient funds"),
        ("4000000000000069", (1, 2020), "123", 500, O.DECLINED, S.DECLINED, "54", "expired card"),
        ("4012888888881881", (12, 2029), "123", 500, O.DECLINED, S.DECLINED, "14",
         "invalid card number"),
        ("4000000000000119", (12, 2029), "123", 500, O.UNAVAILABLE, S.UNAVAILABLE, "91",
         "issuer unavailable"),
    ],
)  # fmt: skip
def test_response_code_table(
    rig: Rig, pan: str, exp: tuple[int, int], cvv: str, amount: int,
    outcome: CardOutcome, state: CardPaymentState, code: str, meaning: str,
) -> None:  # fmt: skip
    token = rig.vault.tokenize(pan, *exp).token
    payment_id = f"t-{rig.ledger.ids.next_id()}"
    result = rig.gateway.authorise(token, amount, "EUR", payment_id=payment_id, security_code=cvv)
    assert (result.outcome, result.state, result.response_code) == (outcome, state, code)
    assert result.response_meaning == meaning
    assert result.last4 == pan[-4:] and result.ledger_transfer_id is None
    if outcome is O.APPROVED:
        assert result.auth_code and len(result.auth_code) == 6
        assert rig.gateway.reverse(payment_id).outcome is O.REVERSED


def test_authorise_capture_moves_money_only_on_approval(rig: Rig) -> None:
    pan, token = rig.new_card(10_000)
    auth = rig.gateway.authorise(token, 6_000, "EUR", payment_id="a1", security_code="321")
    assert auth.outcome is O.APPROVED
    assert rig.wallet_credits() == 0
    assert rig.issuer(pan)["held_minor"] == 6_000
    captured = rig.gateway.capture("a1", 5_000, credit_account_id=rig.wallet.id)
    assert (captured.state, captured.captured_minor) == (S.CAPTURED, 5_000)
    assert rig.wallet_credits() == 5_000 == rig.clearing_debits()
    view = rig.issuer(pan)
    assert (view["balance_minor"], view["held_minor"], view["captured_minor"]) == (5_000, 0, 5_000)
    transfer = rig.ledger.transfer(captured.ledger_transfer_id or 0)
    assert transfer.reference == "card:banksim:a1"
    assert rig.gateway.clearing_account_name == "clearing:card:banksim"


def test_sale_credits_the_named_account(rig: Rig) -> None:
    pan, token = rig.new_card(10_000)
    name = rig.ledger.account(rig.wallet.id).name
    result = rig.gateway.sale(token, 2_500, "EUR", payment_id="s1", credit_account_name=name)
    assert (result.outcome, result.state) == (O.APPROVED, S.CAPTURED)
    assert rig.wallet_credits() == 2_500
    assert rig.issuer(pan)["balance_minor"] == 7_500


def test_a_declined_capture_leaves_the_authorisation(rig: Rig) -> None:
    pan, token = rig.new_card(10_000)
    rig.gateway.authorise(token, 1_000, "EUR", payment_id="a2")
    rig.faults({"kind": "unavailable", "next": 1, "card": rig.issuer_tokens[pan]})
    failed = rig.gateway.capture("a2", credit_account_id=rig.wallet.id)
    assert (failed.outcome, failed.state, failed.response_code) == (
        O.UNAVAILABLE, S.AUTHORISED, "91",
    )  # fmt: skip
    assert rig.wallet_credits() == 0
    done = rig.gateway.capture("a2", credit_account_id=rig.wallet.id)
    assert done.state is S.CAPTURED and rig.wallet_credits() == 1_000


def test_replays_return_the_stored_result_and_send_nothing(rig: Rig) -> None:
    pan, token = rig.new_card(10_000)
    first = rig.gateway.authorise(token, 1_000, "EUR", payment_id="r1", security_code="321")
    seen = len(rig.seen(pan))
    assert rig.gateway.authorise(token, 1_000, "EUR", payment_id="r1") == first
    with pytest.raises(CardPaymentIdReused):
        rig.gateway.authorise(token, 1_001, "EUR", payment_id="r1")
    captured = rig.gateway.capture("r1", credit_account_id=rig.wallet.id)
    assert rig.gateway.capture("r1", credit_account_id=rig.wallet.id) == captured
    with pytest.raises(CardIllegalTransition):
        rig.gateway.capture("r1", 10, credit_account_id=rig.wallet.id)
    with pytest.raises(CardIllegalTransition):
        rig.gateway.reverse("r1")
    assert len(rig.seen(pan)) == seen + 1  # only the capture
    assert rig.wallet_credits() == 1_000
    assert rig.gateway.payment("r1") == captured


def test_refusals_come_before_anything_is_sent(rig: Rig) -> None:
    pan, token = rig.new_card(10_000)
    usd = rig.ledger.create_account(NewAccount(rig.ledger.ids.next_id(), "USD", 2))
    cases = [
        (CardInputInvalid, lambda: rig.gateway.authorise(token, 1, "EUR", payment_id="")),
        (CardInputInvalid, lambda: rig.gateway.authorise(token, 1, "EUR", payment_id="a b")),
        (CardAmountInvalid, lambda: rig.gateway.authorise(token, 0, "EUR", payment_id="x")),
        (CardAmountInvalid, lambda: rig.gateway.authorise(token, 10**12, "EUR", payment_id="x")),
        (CardAmountInvalid, lambda: rig.gateway.authorise(token, True, "EUR", payment_id="x")),
        (CardCurrencyNotSupported, lambda: rig.gateway.authorise(token, 1, "USD",
                                                                 payment_id="x")),
        (CardSecurityCodeInvalid, lambda: rig.gateway.authorise(token, 1, "EUR", payment_id="x",
                                                                security_code="12")),
        (VaultTokenNotFound, lambda: rig.gateway.authorise("tok_nope", 1, "EUR", payment_id="x")),
        (CardCreditAccountInvalid, lambda: rig.gateway.sale(token, 1, "EUR", payment_id="x")),
        (CardCreditAccountInvalid, lambda: rig.gateway.sale(token, 1, "EUR", payment_id="x",
                                                            credit_account_id=usd.id)),
        (CardCreditAccountInvalid, lambda: rig.gateway.sale(token, 1, "EUR", payment_id="x",
                                                            credit_account_name="nobody")),
        (CardPaymentNotFound, lambda: rig.gateway.capture("nope", credit_account_id=1)),
    ]  # fmt: skip
    for error, call in cases:
        with pytest.raises(error):
            call()
    assert rig.seen(pan) == []
    rig.gateway.authorise(token, 100, "EUR", payment_id="c1")
    with pytest.raises(CardCaptureExceedsAuthorisation):
        rig.gateway.capture("c1", 101, credit_account_id=rig.wallet.id)
    with pytest.raises(CardCreditAccountInvalid):
        rig.gateway.capture("c1", credit_account_id=usd.id)
    assert len(rig.seen(pan)) == 1
