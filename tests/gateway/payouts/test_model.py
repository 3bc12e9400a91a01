"""The pure core: state machines as tables, validation order, identifiers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paykeep import limits
from paykeep.gateway.payouts.errors import (
    PayoutAmountInvalid,
    PayoutBicInvalid,
    PayoutCurrencyUnsupported,
    PayoutIbanInvalid,
    PayoutIllegalTransition,
    PayoutInputInvalid,
)
from paykeep.gateway.payouts.model import (
    BATCH_TRANSITIONS,
    PAYOUT_TRANSITIONS,
    BatchAction,
    BatchState,
    PayoutAction,
    PayoutRequest,
    PayoutState,
    account_needs_checking,
    bank_answer_code,
    batch_transition,
    check_limits,
    derived_id,
    end_to_end_id,
    message_id,
    payout_transition,
    return_reason_text,
    sent_back_fee,
    validate_request,
)

GOOD = PayoutRequest(
    request_id="req-1",
    merchant_ref="42",
    amount_minor=100,
    currency="EUR",
    debit_account_name="merchant:42:available",
    creditor_name="Tea Shop",
    creditor_iban="NL91 ABNA 0417 1643 00",
)

EXPECTED_BATCH = {
    ("open", "generate"): "generated",
    ("generated", "submit"): "submitted",
    ("submitted", "accept"): "accepted",
    ("submitted", "reject"): "rejected",
    ("accepted", "settle"): "settled",
}
EXPECTED_PAYOUT = {
    ("requested", "batch"): "batched",
    ("batched", "accept"): "accepted",
    ("batched", "return"): "returned",
    ("accepted", "settle"): "settled",
    # the payee's bank sends a settled payout back; nothing else may be sent back
    ("settled", "send_back"): "returned",
}


@pytest.mark.parametrize(("state", "action"), list(itertools.product(BatchState, BatchAction)))
def test_batch_transition_table(state: BatchState, action: BatchAction) -> None:
    expected = EXPECTED_BATCH.get((state.value, action.value))
    if expected is None:
        with pytest.raises(PayoutIllegalTransition):
            batch_transition(state, action)
    else:
        assert batch_transition(state, action).value == expected
    assert len(BATCH_TRANSITIONS) == len(EXPECTED_BATCH)


@pytest.mark.parametrize(("state", "action"), list(itertools.product(PayoutState, PayoutAction)))
def test_payout_transition_table(state: PayoutState, action: PayoutAction) -> None:
    expected = EXPECTED_PAYOUT.get((state.value, action.value))
    if expected is None:
        with pytest.raises(PayoutIllegalTransition):
            payout_transition(state, action)
    else:
        assert payout_transition(state, action).value == expected
    assert len(PAYOUT_TRANSITIONS) == len(EXPECTED_PAYOUT)


def _with(**changes: object) -> PayoutRequest:
    fields = {f: getattr(GOOD, f) for f in GOOD.__dataclass_fields__}
    fields.update(changes)
    return PayoutRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "error", "param"),
    [
        ({"request_id": ""}, PayoutInputInvalid, "request_id"),
        ({"request_id": "a b"}, PayoutInputInvalid, "request_id"),
        ({"request_id": "x" * 65}, PayoutInputInvalid, "request_id"),
        ({"merchant_ref": " "}, PayoutInputInvalid, "merchant_ref"),
        ({"amount_minor": 1.5}, PayoutAmountInvalid, "amount"),
        ({"amount_minor": True}, PayoutAmountInvalid, "amount"),
        ({"amount_minor": "100"}, PayoutAmountInvalid, "amount"),
        ({"amount_minor": 0}, PayoutAmountInvalid, "amount"),
        ({"amount_minor": -5}, PayoutAmountInvalid, "amount"),
        ({"currency": "JPY"}, PayoutCurrencyUnsupported, "currency"),
        ({"currency": "eur"}, PayoutCurrencyUnsupported, "currency"),
        ({"currency": "XAU"}, PayoutCurrencyUnsupported, "currency"),
        ({"debit_account_name": ""}, PayoutInputInvalid, "debit_account_name"),
        ({"creditor_name": ""}, PayoutInputInvalid, "creditor_name"),
        ({"creditor_name": "x" * 71}, PayoutInputInvalid, "creditor_name"),
        ({"creditor_name": "\U0001f600"}, PayoutInputInvalid, "creditor_name"),
        ({"creditor_name": "a\nb"}, PayoutInputInvalid, "creditor_name"),
        ({"creditor_iban": "NL91ABNA0417164301"}, PayoutIbanInvalid, "creditor_iban"),
        ({"creditor_iban": "not an iban"}, PayoutIbanInvalid, "creditor_iban"),
        ({"creditor_iban": 12}, PayoutIbanInvalid, "creditor_iban"),
        ({"creditor_bic": "NOTABIC"}, PayoutBicInvalid, "creditor_bic"),
        ({"remittance": "x" * 141}, PayoutInputInvalid, "remittance"),
        ({"remittance": "\ud800"}, PayoutInputInvalid, "remittance"),
    ],
)
def test_bad_requests_are_typed(changes: dict[str, object], error: type, param: str) -> None:
    with pytest.raises(error) as caught:
        validate_request(_with(**changes))
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("changes", "first"),
    [
        # shape in field order: id, then amount, then currency, then names, then the IBAN
        ({"request_id": "", "amount_minor": 0, "creditor_iban": "x"}, "request_id"),
        ({"amount_minor": 1.5, "currency": "JPY"}, "amount"),
        ({"currency": "JPY", "creditor_iban": "x"}, "currency"),
        ({"creditor_name": "", "creditor_iban": "x"}, "creditor_name"),
        ({"creditor_iban": "x", "creditor_bic": "x"}, "creditor_iban"),
        ({"creditor_bic": "x", "remittance": ""}, "creditor_bic"),
    ],
)
def test_validation_precedence(changes: dict[str, object], first: str) -> None:
    with pytest.raises(Exception) as caught:
        validate_request(_with(**changes))
    assert getattr(caught.value, "param", None) == first


def test_limits_are_checked_separately() -> None:
    big = validate_request(_with(amount_minor=limits.PAYOUT_AMOUNT_MAX_MINOR + 1))
    with pytest.raises(PayoutAmountInvalid):
        check_limits(big)
    check_limits(validate_request(_with(amount_minor=limits.PAYOUT_AMOUNT_MAX_MINOR)))


def test_normalisation() -> None:
    request = validate_request(_with(creditor_bic="abnanl2a"))
    assert request.creditor_iban == "NL91ABNA0417164300"
    assert request.creditor_bic == "ABNANL2A"
    assert request.fingerprint() == validate_request(_with(creditor_bic="ABNANL2A")).fingerprint()
    assert request.fingerprint() != validate_request(_with(amount_minor=101)).fingerprint()


@settings(max_examples=300)
@given(st.integers(1, 2**63 - 1), st.integers(1, 2**63 - 1))
def test_identifiers_fit_and_never_collide(a: int, b: int) -> None:
    for make, limit in ((end_to_end_id, 16), (message_id, 35)):
        assert len(make(a)) <= limit and make(a).isalnum()
        assert (make(a) == make(b)) == (a == b)


@given(st.text(max_size=40), st.text(max_size=40))
def test_derived_ids_are_positive_63_bit(a: str, b: str) -> None:
    value = derived_id(a, b)
    assert 0 < value < 2**63
    assert value == derived_id(a, b)


FEE_MAX = limits.PAYOUT_RETURN_FEE_MAX_MINOR


@pytest.mark.parametrize(
    ("payout", "currency", "line", "line_currency", "fee"),
    [
        (10_000, "EUR", 10_000, "EUR", 0),  # back whole
        (10_000, "EUR", 9_750, "EUR", 250),  # less the payee's bank's fee
        (10_000, "EUR", 10_000 - FEE_MAX, "EUR", FEE_MAX),  # the largest fee applied
        (10_000, "EUR", 10_000 - FEE_MAX - 1, "EUR", None),  # short by more than a fee
        (10_000, "EUR", 10_001, "EUR", None),  # more than was paid: never applied
        (10_000, "EUR", 10_000, "USD", None),  # another currency
        (10_000, "EUR", 0, "EUR", None),
        (10_000, "EUR", -10_000, "EUR", None),  # a debit is not money coming back
        (100, "EUR", 1, "EUR", 99),  # a small payout may come back as little as 0.01
    ],
)
def test_what_is_a_payout_coming_back(
    payout: int, currency: str, line: int, line_currency: str, fee: int | None
) -> None:
    assert sent_back_fee(payout, currency, line, line_currency) == fee


@given(st.integers(1, 10**9), st.integers(-(10**9), 10**9))
def test_a_fee_is_never_negative_nor_more_than_the_bound(payout: int, line: int) -> None:
    fee = sent_back_fee(payout, "EUR", line, "EUR")
    if fee is not None:
        assert 0 <= fee <= FEE_MAX and line + fee == payout and line > 0


def test_what_a_return_reason_says() -> None:
    assert return_reason_text("AC04") == "AC04: the account is closed"
    assert return_reason_text("ZZ99") == "ZZ99"
    assert return_reason_text(None) == "the statement gave no reason"
    # The account needs checking before it is paid again: closed, wrong, blocked, not the
    # holder's, a deceased holder — or a reason we cannot read (none, unspecified, unknown).
    for code in ("AC01", "AC03", "AC04", "AC06", "AG01", "BE01", "MD07", "MS03", None, "ZZ99"):
        assert account_needs_checking(code), code
    for code in ("AM05", "FOCR", "MS02", "RR04", "CNOR"):
        assert not account_needs_checking(code), code
    assert bank_answer_code("AM04: insufficient funds") == "AM04"
    assert bank_answer_code("no code here") is None
    assert bank_answer_code(None) is None
