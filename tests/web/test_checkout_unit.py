"""The checkout page's pure parts: form parsing, forgery checks, the words tables, the action
rules against the refund transition table, the log scrubber, and the generic error page."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from dataclasses import replace
from itertools import product

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from stdnum import luhn

from paykeep.errors import PaykeepError
from paykeep.gateway.cards.errors import CardNetworkUnavailable, CardSecurityCodeInvalid
from paykeep.gateway.payouts.errors import PayoutRequestIdReused
from paykeep.gateway.vault.errors import VaultCardNumberInvalid, VaultExpiryInvalid
from paykeep.mail import MailUnavailable
from paykeep.money import InvalidAmount
from paykeep.payments.errors import (
    BuyerAuthenticationRequired,
    BuyerCodeAttemptsExceeded,
    BuyerCodeExpired,
    BuyerCodeInvalid,
    BuyerCodeRateLimited,
    CheckoutSessionExpired,
    IllegalTransition,
    InsufficientFunds,
    PaymentDeclined,
    PaymentProcessorUnavailable,
    PaymentsInputInvalid,
    ResourceMissing,
    RiskDeclined,
    WithdrawalExceedsCardRefundable,
    WithdrawalExceedsSource,
    WithdrawalNoSource,
)
from paykeep.payments.model import (
    DECLINE_FALLBACK,
    DECLINE_REASONS,
    TERMINAL_REFUND_STATES,
    OrderState,
    RefundState,
    refund_transition,
)
from paykeep.payments.records import CheckoutSession, Order
from paykeep.payments.service import PaymentsService
from paykeep.web.checkout import (
    FORM_BYTES_MAX,
    FORM_FIELD_CHARS_MAX,
    FORM_FIELDS_MAX,
    OUTCOME_WORDS,
    REFUND_ACTIONS,
    REFUND_STATE_WORDS,
    BuyerAction,
    CheckoutCardAttemptsExceeded,
    CheckoutFormForged,
    CheckoutFormInvalid,
    Outcome,
    SecretsFilter,
    check_cvc,
    check_form_token,
    check_origin,
    checkout_router,
    environment,
    format_money,
    iban_print_format,
    normalise_pan,
    order_actions,
    outcome_of,
    parse_expiry,
    parse_form,
    problem_for,
    refund_actions,
    scrub,
)
from paykeep.web.checkout import ORDER_STATE_WORDS as STATE_WORDS

OWN = "http://127.0.0.1:8000"
_PAN_RUN = re.compile(r"\d(?:[ -]?\d){11,}")


# -- card fields -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("12/30", (12, 2030)), ("1/27", (1, 2027)), (" 07 / 2031 ", (7, 2031)), ("09/99", (9, 2099))],
)
def test_expiry_as_printed_on_cards(text: str, expected: tuple[int, int]) -> None:
    assert parse_expiry(text) == expected


@pytest.mark.parametrize(
    "text", ["", "13/30", "00/30", "12-30", "1230", "12/3", "12/1999", "ab/cd", "１２/３０"]
)
def test_expiry_refused(text: str) -> None:
    with pytest.raises(VaultExpiryInvalid):
        parse_expiry(text)


@given(st.integers(1, 12), st.integers(2000, 2099), st.booleans(), st.booleans())
def test_expiry_round_trip(month: int, year: int, padded: bool, long_year: bool) -> None:
    text = f"{month:02d}" if padded else str(month)
    text += "/" + (str(year) if long_year else f"{year % 100:02d}")
    assert parse_expiry(text) == (month, year)


@given(st.text(max_size=30))
def test_expiry_parser_only_accepts_or_refuses(text: str) -> None:
    try:
        month, year = parse_expiry(text)
    except VaultExpiryInvalid:
        return
    assert 1 <= month <= 12 and 2000 <= year <= 2099


def test_iban_shown_in_groups_of_four() -> None:
    assert iban_print_format("DE89370400440532013000") == "DE89 3704 0044 0532 0130 00"
    assert iban_print_format("de89 3704 0044 0532 0130 00") == "DE89 3704 0044 0532 0130 00"


@given(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=5, max_size=34))
def test_iban_grouping_keeps_every_character(iban: str) -> None:
    shown = iban_print_format(iban)
    groups = shown.split(" ")
    assert "".join(groups) == iban
    assert all(len(g) == 4 for g in groups[:-1]) and 1 <= len(groups[-1]) <= 4


def luhn_pans() -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=11, max_size=18).map(
        lambda body: body + luhn.calc_check_digit(body)
    )


@given(luhn_pans(), st.lists(st.sampled_from(["", " ", "-"]), min_size=19, max_size=19))
def test_card_numbers_as_typed(pan: str, separators: list[str]) -> None:
    typed = "".join(digit + sep for digit, sep in zip(pan, separators, strict=False)).strip(" -")
    assert normalise_pan(typed) == pan


@given(st.text(max_size=45))
def test_card_number_check_only_accepts_or_refuses(text: str) -> None:
    try:
        pan = normalise_pan(text)
    except VaultCardNumberInvalid as exc:
        message = exc.message
    else:
        assert pan.isdigit() and luhn.is_valid(pan)
        return
    assert not _PAN_RUN.search(message)  # the error never quotes the number


def test_security_code() -> None:
    assert check_cvc(" 123 ") == "123" and check_cvc("1234") == "1234"
    for bad in ("12", "12345", "12a", ""):
        with pytest.raises(CardSecurityCodeInvalid):
            check_cvc(bad)


def test_money_is_shown_with_the_currency_exponent() -> None:
    assert format_money(3000, "EUR") == "30.00 EUR"
    assert format_money(5, "EUR") == "0.05 EUR"
    assert format_money(1250, "JPY") == "1250 JPY"
    assert format_money(1, "KWD") == "0.001 KWD"


# -- forms and forgery -------------------------------------------------------------------------


def test_form_parsing_limits() -> None:
    assert parse_form(b"csrf=ab&reason=caf%C3%A9+ok&amount=") == {
        "csrf": "ab",
        "reason": "café ok",
        "amount": "",
    }
    assert parse_form(b"") == {}
    refused = [
        b"a=1&a=2",  # a field twice: which one would we believe?
        b"x=" + b"1" * (FORM_FIELD_CHARS_MAX + 1),
        b"x=" + b"1" * FORM_BYTES_MAX,
        "&".join(f"f{i}=1" for i in range(FORM_FIELDS_MAX + 1)).encode(),
        b"reason=%FF",  # not UTF-8
        "reason=café".encode(),  # not urlencoded
        b"no-equals-sign",
    ]
    for body in refused:
        with pytest.raises(CheckoutFormInvalid):
            parse_form(body)


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"sec-fetch-site": "same-origin"}, True),
        ({"sec-fetch-site": "none"}, True),
        ({"sec-fetch-site": "same-origin", "origin": "https://evil.example"}, True),
        ({"sec-fetch-site": "same-site"}, False),
        ({"sec-fetch-site": "cross-site"}, False),
        ({"sec-fetch-site": "cross-site", "origin": OWN}, False),
        ({"origin": OWN}, True),
        ({"origin": "null"}, True),  # what Referrer-Policy: no-referrer makes browsers send
        ({}, True),  # an old browser without either header: the form token still decides
        ({"origin": "https://evil.example"}, False),
        ({"origin": "http://127.0.0.1:8001"}, False),
    ],
)
def test_origin_checks(headers: dict[str, str], allowed: bool) -> None:
    if allowed:
        check_origin(headers, OWN)
    else:
        with pytest.raises(CheckoutFormForged):
            check_origin(headers, OWN)


def test_form_token_must_match_exactly() -> None:
    check_form_token("a" * 64, "a" * 64)
    for given_ in (None, "", "a" * 63, "A" * 64, "a" * 65):
        with pytest.raises(CheckoutFormForged):
            check_form_token(given_, "a" * 64)


# -- what the page offers ----------------------------------------------------------------------


@pytest.mark.parametrize(("state", "refund"), list(product(OrderState, [None, *RefundState])))
def test_order_actions_follow_the_escrow_rules(
    state: OrderState, refund: RefundState | None
) -> None:
    actions = order_actions(state, refund)
    held = state in (OrderState.AWAITING_SHIPMENT, OrderState.AWAITING_RECEIPT)
    # The service refuses to confirm or to open a second claim while one is open.
    assert actions == (
        set()
        if refund is not None or not held
        else {BuyerAction.REQUEST_REFUND}
        | ({BuyerAction.CONFIRM} if state is OrderState.AWAITING_RECEIPT else set())
    )


@pytest.mark.parametrize("state", list(RefundState))
def test_refund_actions_are_exactly_the_legal_buyer_moves(state: RefundState) -> None:
    offered = refund_actions(state)
    for page_action, action in REFUND_ACTIONS.items():
        try:
            refund_transition(state, action)
            legal = True
        except IllegalTransition:
            legal = False
        assert (page_action in offered) == legal, (state, page_action)
    if state in TERMINAL_REFUND_STATES:
        assert not offered
    assert state in REFUND_STATE_WORDS


def test_every_state_and_outcome_has_words() -> None:
    assert set(STATE_WORDS) == set(OrderState)
    assert set(REFUND_STATE_WORDS) == set(RefundState)
    assert set(OUTCOME_WORDS) == set(Outcome)
    for headline, words in OUTCOME_WORDS.values():
        assert headline and words.endswith(".")


def _order(state: OrderState, funding: str | None = None) -> Order:
    return Order(
        "ord_1", "mer_1", "buy_1", "EUR", 3000, 0, state, funding, None, 0, 0, False, None,
        None, None, None, 1, None, None, None, 0, 0,
    )  # fmt: skip


SESSION = CheckoutSession("cs_1", "mer_1", "ord_1", None, "open", 100, 0)  # expires at 100 ns


@pytest.mark.parametrize(
    ("state", "funding", "now", "expected"),
    [
        (OrderState.CREATED, None, 99, Outcome.UNPAID),
        (OrderState.CREATED, None, 100, Outcome.EXPIRED),
        (OrderState.CREATED, "bank_transfer", 99, Outcome.WAITING_FOR_TRANSFER),
        # The transfer may still arrive after the link expired: the order is still waiting.
        (OrderState.CREATED, "bank_transfer", 500, Outcome.WAITING_FOR_TRANSFER),
        (OrderState.AWAITING_SHIPMENT, "card", 500, Outcome.PAID),
        (OrderState.AWAITING_RECEIPT, "wallet", 99, Outcome.PAID),
        (OrderState.COMPLETED, "card", 500, Outcome.COMPLETED),
        (OrderState.REFUNDED, "card", 500, Outcome.REFUNDED),
        (OrderState.PARTIALLY_REFUNDED, "card", 500, Outcome.REFUNDED),
        (OrderState.CLOSED, None, 99, Outcome.CLOSED),
    ],
)
def test_outcome(state: OrderState, funding: str | None, now: int, expected: Outcome) -> None:
    assert outcome_of(_order(state, funding), SESSION, now) is expected


def test_a_session_marked_expired_is_expired_before_its_time() -> None:
    expired = replace(SESSION, state="expired")
    assert outcome_of(_order(OrderState.CREATED), expired, 0) is Outcome.EXPIRED


# -- errors in words ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "action", "status", "words"),
    [
        (PaymentDeclined("Declined words.", decline_code="x"), "pay", 402, "Declined words."),
        (PaymentProcessorUnavailable("Try again."), "pay", 503, "Try again."),
        (InsufficientFunds("internal wording"), "pay", 402, "balance does not cover"),
        (RiskDeclined("internal wording"), "pay", 402, "could not accept this payment"),
        (CheckoutSessionExpired("internal wording"), "pay", 410, "expired"),
        (ResourceMissing("internal wording"), "confirm", 404, "could not find this checkout"),
        (IllegalTransition("internal wording"), "confirm", 409, "cannot be confirmed"),
        (IllegalTransition("internal wording"), "pay", 409, "can no longer be paid"),
        (VaultCardNumberInvalid("internal wording"), "pay", 422, "card number is not valid"),
        (VaultExpiryInvalid("internal wording"), "pay", 422, "expiry date is not valid"),
        (CardSecurityCodeInvalid("internal wording"), "pay", 422, "security code"),
        (CheckoutFormForged("internal wording"), "pay", 403, "did not come from this page"),
        (CheckoutCardAttemptsExceeded("internal wording"), "pay", 429, "too many card attempts"),
        (
            PaymentsInputInvalid("internal wording", param="tracking_number"),
            "refund_action",
            422,
            "4 to 64",
        ),
        (PaymentsInputInvalid("internal wording", param="reason"), "refund", 422, "500 characters"),
        (PaymentsInputInvalid("internal wording", param="other"), "refund", 422, "not valid"),
        (InvalidAmount("internal wording"), "refund", 422, "like 12.50"),
        (CheckoutFormInvalid("internal wording"), "pay", 422, "could not be read"),
        (
            CardNetworkUnavailable("internal wording"),
            "pay",
            503,
            "Something went wrong on our side",
        ),
        (BuyerAuthenticationRequired("internal wording"), "confirm", 401, "sign in with the code"),
        (BuyerCodeInvalid("internal wording"), "sign_in_verify", 422, "code is not right"),
        (BuyerCodeExpired("internal wording"), "sign_in_verify", 422, "code has expired"),
        (
            BuyerCodeAttemptsExceeded("internal wording"),
            "sign_in_verify",
            429,
            "ask for a new code",
        ),
        (BuyerCodeRateLimited("internal wording"), "sign_in", 429, "several codes"),
        (MailUnavailable("internal wording"), "sign_in", 503, "could not send the email"),
        # The same errors read differently when the buyer sends their balance back.
        (InsufficientFunds("internal wording"), "withdraw", 409, "less than this amount"),
        (RiskDeclined("internal wording"), "withdraw", 402, "could not send this money"),
        (WithdrawalNoSource("internal wording"), "withdraw", 409, "choose the other option"),
        (WithdrawalExceedsSource("internal wording"), "withdraw", 409, "from that bank account"),
        (
            WithdrawalExceedsCardRefundable("internal wording"),
            "withdraw",
            409,
            "card payments can take back",
        ),
        (
            PaymentsInputInvalid("internal wording", param="amount_minor"),
            "withdraw",
            422,
            "more than zero",
        ),
        # A form sent again after the buyer changed it: the first request went through.
        (PayoutRequestIdReused("internal wording"), "withdraw", 409, "already sent money back"),
    ],
)
def test_typed_errors_become_words(
    error: PaykeepError, action: str, status: int, words: str
) -> None:
    problem = problem_for(error, action)
    assert problem.status == status
    assert words.lower() in problem.words.lower()
    if not isinstance(error, PaymentDeclined | PaymentProcessorUnavailable):
        assert error.message not in problem.words  # internal wording never reaches the buyer


@pytest.mark.parametrize("code", sorted(DECLINE_REASONS))
def test_each_decline_is_shown_in_its_own_words(code: str) -> None:
    decline_code, words = DECLINE_REASONS[code]
    problem = problem_for(PaymentDeclined(words, decline_code=decline_code), "pay")
    assert (problem.status, problem.words) == (402, words)
    assert problem_for(PaymentDeclined(DECLINE_FALLBACK[1], decline_code="x"), "pay").status == 402


# -- templates, logs, unexpected errors --------------------------------------------------------


def test_templates_escape_everything() -> None:
    env = environment()
    assert env.from_string("{{ x }}").render(x="<script>'\"&") == ("&lt;script&gt;&#39;&#34;&amp;")
    # Every template compiles (a syntax error would only show on the page that uses it).
    for name in env.list_templates():
        env.get_template(name)


@given(st.text(max_size=40), luhn_pans(), st.text(max_size=40), st.booleans())
def test_scrub_removes_card_numbers(before: str, pan: str, after: str, grouped: bool) -> None:
    shown = " ".join(pan[i : i + 4] for i in range(0, len(pan), 4)) if grouped else pan
    cleaned = scrub(before + shown + after)
    assert pan not in cleaned and shown not in cleaned
    assert not _PAN_RUN.search(cleaned)


def test_scrub_removes_buyer_sessions() -> None:
    line = "cookie paykeep_buyer_session=bs_iIarYDnGxMuSswZcN2lP10HbNSIConENYF4g38pbF2s; x"
    assert scrub(line) == "cookie paykeep_buyer_session=bs_[redacted]; x"


def test_scrub_removes_checkout_tokens_and_keeps_the_rest() -> None:
    line = '127.0.0.1:5 - "POST /checkout/cs_AbC-12_xyzXYZ0123/card HTTP/1.1" 402'
    assert scrub(line) == '127.0.0.1:5 - "POST /checkout/cs_[redacted]/card HTTP/1.1" 402'
    assert scrub("order ord_0001 of 12.50 EUR") == "order ord_0001 of 12.50 EUR"


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretsFilter())
    logger = logging.getLogger("paykeep.web.checkout")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def test_secrets_filter_keeps_tuple_arguments_for_access_formatters(
    log_lines: io.StringIO,
) -> None:
    from uvicorn.logging import AccessFormatter

    handler = logging.StreamHandler(log_lines)
    handler.addFilter(SecretsFilter())
    handler.setFormatter(AccessFormatter(use_colors=False))
    access = logging.getLogger("test.web.access")
    access.addHandler(handler)
    access.propagate = False
    access.setLevel(logging.INFO)
    try:
        access.info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/checkout/cs_secretTOKEN123", "1.1",
            200,
        )  # fmt: skip
    finally:
        access.removeHandler(handler)
    assert '"GET /checkout/cs_[redacted] HTTP/1.1" 200' in log_lines.getvalue()
    assert "secretTOKEN" not in log_lines.getvalue()


def test_unexpected_errors_show_a_generic_page_and_log_the_traceback_scrubbed(
    log_lines: io.StringIO,
) -> None:
    def broken() -> PaymentsService:
        raise RuntimeError("exploded near 4111 1111 1111 1111 and cs_secretTOKEN123")

    app = FastAPI()
    app.include_router(checkout_router(broken))
    with TestClient(app, raise_server_exceptions=True) as client:
        page = client.get("/checkout/cs_secretTOKEN123")
        post = client.post(
            "/checkout/cs_secretTOKEN123/card",
            data={"card_number": "4111111111111111", "expiry": "12/30", "cvc": "123"},
        )
    for response in (page, post):
        assert response.status_code == 500
        assert "Something went wrong on our side" in response.text
        assert "exploded" not in response.text and "Traceback" not in response.text
        assert "4111" not in response.text
        assert "default-src 'none'" in response.headers["content-security-policy"]
    logged = log_lines.getvalue()
    assert logged.count("Traceback") == 2 and "RuntimeError: exploded near" in logged
    assert "4111" not in logged and "secretTOKEN" not in logged


def test_unknown_refund_action_is_a_not_found_page() -> None:
    def unused() -> PaymentsService:
        raise AssertionError("not reached")

    app = FastAPI()
    app.include_router(checkout_router(unused))
    with TestClient(app) as client:
        response = client.post("/checkout/cs_x/refunds/ref_1/agree", data={})
    assert response.status_code == 404
    assert "could not find this checkout" in response.text
