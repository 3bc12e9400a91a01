"""Every rule as worked examples: fires / does not fire on each side of each threshold."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paykeep.aml.rules.catalogue import RULES
from paykeep.aml.rules.errors import RuleConfigInvalid, RuleEventInvalid
from paykeep.aml.rules.model import (
    ActiveRule,
    Alert,
    DecisionPolicy,
    MoneyEvent,
    Outcome,
    Party,
    RuleConfig,
    RuleInput,
    SanctionsHit,
    aggregate,
    evaluate,
    validate_event,
)
from paykeep.money import Money
from tests.aml.rules.helpers import DAY, T0, K, ev, run_rule

# --- velocity: count_max=3, amount_max 1,000.00 EUR, window 1 h ------------------------------

V = {"count_max": 3, "amount_max_minor": 100_000, "window_s": 3600}


@pytest.mark.parametrize(
    ("history", "event", "fires"),
    [
        pytest.param(
            [ev(K.PAYMENT, 100, -60), ev(K.PAYMENT, 100, -30)],
            ev(K.PAYMENT, 100),
            False,
            id="3 events = count_max",
        ),
        pytest.param(
            [ev(K.PAYMENT, 100, -s) for s in (90, 60, 30)],
            ev(K.PAYMENT, 100),
            True,
            id="4 events > count_max",
        ),
        pytest.param(
            [ev(K.PAYMENT, 100, -3600), *(ev(K.PAYMENT, 100, -s) for s in (60, 30))],
            ev(K.PAYMENT, 100),
            False,
            id="exactly window_s old is out",
        ),
        pytest.param(
            [ev(K.PAYMENT, 100, -3599), *(ev(K.PAYMENT, 100, -s) for s in (60, 30))],
            ev(K.PAYMENT, 100),
            True,
            id="window_s - 1 old is in",
        ),
        pytest.param(
            [ev(K.PAYMENT, 60_000, -60)], ev(K.PAYMENT, 40_000), False, id="amount = amount_max"
        ),
        pytest.param(
            [ev(K.PAYMENT, 60_000, -60)], ev(K.PAYMENT, 40_001), True, id="amount > amount_max"
        ),
        pytest.param(
            [ev(K.PAYMENT, 60_000, -60, currency="USD")],
            ev(K.PAYMENT, 40_001),
            False,
            id="other currency not summed",
        ),
        pytest.param(
            [ev(K.RELEASE, 100, -s) for s in (90, 60, 30)],
            ev(K.PAYMENT, 100),
            False,
            id="releases not counted",
        ),
        pytest.param(
            [ev(K.PAYMENT, 100, -s) for s in (90, 60, 30)],
            ev(K.RELEASE, 100),
            False,
            id="release not judged",
        ),
        pytest.param(
            [ev(K.PAYMENT, 100, -s, payer=f"buyer-{s}") for s in (90, 60, 30, 20)],
            ev(K.REFUND, 100, payer="merchant-1", payee="buyer-1"),
            False,
            id="refund: the merchant's sales are not judged",
        ),
        pytest.param(
            [ev(K.PAYMENT, 100, -s) for s in (90, 60, 30)],
            ev(K.REFUND, 100, payer="merchant-1", payee="buyer-1"),
            True,
            id="refund: the buyer whose wallet fills is judged",
        ),
    ],
)
def test_velocity(history: list[MoneyEvent], event: MoneyEvent, fires: bool) -> None:
    findings = run_rule("velocity", event, history, **V)
    assert bool(findings) is fires
    if fires:
        # Only the party whose money moves is judged (a merchant's inflows are fan_in's).
        assert {f.party_id for f in findings} == {"buyer-1"}
        assert findings[0].score_bp == 6_000 and "window_s" in findings[0].figures


# --- structuring: threshold 10,000.00, band 10 % (9,000.00 .. 9,999.99), count_min 3 ------

S = {"reporting_threshold_minor": 1_000_000, "band_bp": 1_000, "count_min": 3}
IN_BAND = 900_000


@pytest.mark.parametrize(
    ("history", "event", "fires"),
    [
        pytest.param(
            [ev(K.TOP_UP, IN_BAND, -s, payer=None) for s in (60, 30)],
            ev(K.TOP_UP, IN_BAND, payer=None),
            True,
            id="third at band floor",
        ),
        pytest.param(
            [ev(K.TOP_UP, IN_BAND, -s, payer=None) for s in (60, 30)],
            ev(K.TOP_UP, 999_999, payer=None),
            True,
            id="third at threshold - 1",
        ),
        pytest.param(
            [ev(K.TOP_UP, IN_BAND, -s, payer=None) for s in (60, 30)],
            ev(K.TOP_UP, 1_000_000, payer=None),
            False,
            id="at threshold: reported",
        ),
        pytest.param(
            [ev(K.TOP_UP, IN_BAND, -s, payer=None) for s in (60, 30)],
            ev(K.TOP_UP, 899_999, payer=None),
            False,
            id="below band",
        ),
        pytest.param(
            [ev(K.TOP_UP, IN_BAND, -30, payer=None)],
            ev(K.TOP_UP, IN_BAND, payer=None),
            False,
            id="only two",
        ),
        pytest.param(
            [ev(K.TOP_UP, 899_999, -s, payer=None) for s in (60, 30)],
            ev(K.TOP_UP, IN_BAND, payer=None, payee="buyer-1"),
            False,
            id="history below band",
        ),
        pytest.param(
            [ev(K.PAYOUT, IN_BAND, -s, payer="merchant-1", payee=None) for s in (60, 30)],
            ev(K.TOP_UP, IN_BAND, payer=None),
            False,
            id="other direction",
        ),
        pytest.param(
            [ev(K.PAYOUT, IN_BAND, -s, payer="merchant-1", payee=None) for s in (60, 30)],
            ev(K.PAYOUT, IN_BAND, payer="merchant-1", payee=None),
            True,
            id="payouts",
        ),
        pytest.param(
            [ev(K.TOP_UP, IN_BAND, -7 * DAY, payer=None), ev(K.TOP_UP, IN_BAND, -30, payer=None)],
            ev(K.TOP_UP, IN_BAND, payer=None),
            False,
            id="one outside 7 days",
        ),
    ],
)
def test_structuring(history: list[MoneyEvent], event: MoneyEvent, fires: bool) -> None:
    findings = run_rule("structuring", event, history, **S)
    assert bool(findings) is fires
    if fires:
        assert len(findings) == 1 and findings[0].figures["count"] == 3


# --- pass-through: inflow >= 1,000.00 then >= 90 % out within 6 h -------------------------

P = {"inflow_min_minor": 100_000, "out_ratio_bp": 9_000, "window_s": 6 * 3600}


def _top_up(amount: int, at_s: float) -> MoneyEvent:
    return ev(K.TOP_UP, amount, at_s, payer=None, payee="buyer-1")


def _payout(amount: int, at_s: float = 0) -> MoneyEvent:
    return ev(K.PAYOUT, amount, at_s, payer="buyer-1", payee=None)


@pytest.mark.parametrize(
    ("history", "event", "fires"),
    [
        pytest.param([_top_up(100_000, -3600)], _payout(90_000), True, id="90 % out"),
        pytest.param([_top_up(100_000, -3600)], _payout(89_999), False, id="just under 90 %"),
        pytest.param([_top_up(99_999, -3600)], _payout(99_999), False, id="inflow under min"),
        pytest.param(
            [_top_up(100_000, -6 * 3600)], _payout(100_000), False, id="inflow outside window"
        ),
        pytest.param(
            [_top_up(100_000, -3600), _payout(50_000, -1800)],
            _payout(40_000),
            True,
            id="earlier outflow counts",
        ),
        pytest.param(
            [_top_up(100_000, -3600)],
            ev(K.PAYMENT, 95_000, payee="merchant-9"),
            True,
            id="payment out",
        ),
        pytest.param(
            [_top_up(100_000, -3600)],
            ev(K.TOP_UP, 95_000, payer=None),
            False,
            id="inflow is not judged",
        ),
    ],
)
def test_pass_through(history: list[MoneyEvent], event: MoneyEvent, fires: bool) -> None:
    findings = run_rule("pass_through", event, history, **P)
    assert bool(findings) is fires
    if fires:
        assert findings[0].party_id == "buyer-1"
        figures = findings[0].figures
        assert figures["retained_minor"] == figures["inflow_minor"] - figures["outflow_minor"]


# --- new account, high value: younger than 7 days, at least 2,000.00 ----------------------


@pytest.mark.parametrize(
    ("event", "fires"),
    [
        pytest.param(ev(K.PAYMENT, 200_000, payer_age_s=7 * DAY - 1), True, id="age 7d-1s"),
        pytest.param(ev(K.PAYMENT, 200_000, payer_age_s=7 * DAY), False, id="age 7d"),
        pytest.param(ev(K.PAYMENT, 199_999, payer_age_s=0), False, id="amount under min"),
        pytest.param(ev(K.PAYMENT, 200_000), False, id="opening time unknown"),
        pytest.param(ev(K.PAYMENT, 200_000, payer_age_s=-5), True, id="opened in the future"),
        pytest.param(
            ev(K.CARD_AUTHORISATION, 200_000, payer_age_s=0), False, id="card authorisation"
        ),
        pytest.param(
            ev(K.PAYMENT, 200_000, payer_age_s=0, currency="USD"), False, id="other currency"
        ),
    ],
)
def test_new_account_high_value(event: MoneyEvent, fires: bool) -> None:
    assert bool(run_rule("new_account_high_value", event)) is fires


def test_new_account_high_value_reports_each_young_party() -> None:
    findings = run_rule(
        "new_account_high_value", ev(K.PAYMENT, 300_000, payer_age_s=10, payee_age_s=20)
    )
    assert {(f.party_id, f.figures["age_s"]) for f in findings} == {
        ("buyer-1", 10),
        ("merchant-1", 20),
    }


# --- fan-in: 3 distinct new buyers within a day ---------------------------------------------

F = {"distinct_min": 3, "new_age_s": 7 * DAY, "window_s": DAY}


def _pay(buyer: str, at_s: float, age_s: int | None) -> MoneyEvent:
    return ev(K.PAYMENT, 1_000, at_s, payer=buyer, payer_age_s=age_s)


@pytest.mark.parametrize(
    ("history", "event", "fires"),
    [
        pytest.param(
            [_pay("b1", -60, 10), _pay("b2", -30, 10)],
            _pay("b3", 0, 10),
            True,
            id="third new buyer",
        ),
        pytest.param(
            [_pay("b1", -60, 10), _pay("b2", -30, 10)],
            _pay("b3", 0, 7 * DAY),
            False,
            id="third buyer exactly 7 days old",
        ),
        pytest.param(
            [_pay("b1", -60, 10), _pay("b1", -30, 10)],
            _pay("b3", 0, 10),
            False,
            id="repeat buyer counted once",
        ),
        pytest.param(
            [_pay("b1", -DAY, 10), _pay("b2", -30, 10)],
            _pay("b3", 0, 10),
            False,
            id="one outside the day",
        ),
        pytest.param(
            [_pay("b1", -60, 10), _pay("b2", -30, None)],
            _pay("b3", 0, 10),
            False,
            id="unknown age is not new",
        ),
        pytest.param(
            [_pay(f"b{i}", -60 + i, 10) for i in range(3)],
            _pay("b3", 0, 10),
            False,
            id="fourth: the threshold was reported at the third",
        ),
        pytest.param(
            [_pay(f"b{i}", -60 + i, 10) for i in range(3)],
            _pay("b1", 0, 10),
            False,
            id="a buyer already counted adds nothing",
        ),
        pytest.param(
            [_pay(f"b{i}", -60 + i, 10) for i in range(5)],
            _pay("b5", 0, 10),
            True,
            id="sixth: the count doubled",
        ),
        pytest.param(
            [_pay(f"b{i}", -60 + i, 10) for i in range(11)],
            _pay("b11", 0, 10),
            True,
            id="twelfth: doubled again",
        ),
        pytest.param(
            [_pay(f"b{i}", -60 + i, 10) for i in range(8)],
            _pay("b8", 0, 10),
            False,
            id="ninth: a multiple, not a doubling",
        ),
    ],
)
def test_fan_in(history: list[MoneyEvent], event: MoneyEvent, fires: bool) -> None:
    findings = run_rule("fan_in", event, history, **F)
    assert bool(findings) is fires
    if fires:
        assert findings[0].party_id == "merchant-1"


# --- card testing: 3 declines of at most 5.00 within 10 minutes -----------------------------

C = {"declines_min": 3, "small_max_minor": 500, "window_s": 600}


def _auth(amount: int, at_s: float, approved: bool = False, card: str = "card-1") -> MoneyEvent:
    return ev(K.CARD_AUTHORISATION, amount, at_s, payer=card, approved=approved)


@pytest.mark.parametrize(
    ("history", "event", "fires"),
    [
        pytest.param([_auth(100, -60), _auth(200, -30)], _auth(500, 0), True, id="third"),
        pytest.param(
            [_auth(100, -60), _auth(200, -30)], _auth(501, 0), False, id="third not small"
        ),
        pytest.param(
            [_auth(100, -60), _auth(200, -30)],
            _auth(100, 0, approved=True),
            False,
            id="third approved",
        ),
        pytest.param(
            [_auth(100, -600), _auth(200, -30)], _auth(100, 0), False, id="one exactly 10 min old"
        ),
        pytest.param(
            [_auth(100, -s) for s in (90, 60, 30)],
            ev(K.PAYMENT, 50_000, payer="card-1"),
            True,
            id="payment after burst",
        ),
        pytest.param(
            [_auth(100, -60, card="c2"), _auth(200, -30, card="c3")],
            _auth(100, 0, card="c4"),
            True,
            id="many cards, one merchant",
        ),
    ],
)
def test_card_testing(history: list[MoneyEvent], event: MoneyEvent, fires: bool) -> None:
    findings = run_rule("card_testing", event, history, **C)
    assert bool(findings) is fires
    if fires:
        assert findings[0].score_bp == 9_500


# --- refund abuse: 3 refunds worth >= 50 % of payments within 30 days -----------------------

R = {"refunds_min": 3, "ratio_bp": 5_000}


def _refund(amount: int, at_s: float) -> MoneyEvent:
    return ev(K.REFUND, amount, at_s, payer="merchant-1", payee="buyer-1")


@pytest.mark.parametrize(
    ("history", "event", "fires"),
    [
        pytest.param(
            [ev(K.PAYMENT, 10_000, -90), _refund(1_666, -60), _refund(1_667, -30)],
            _refund(1_667, 0),
            True,
            id="exactly 50 %",
        ),
        pytest.param(
            [ev(K.PAYMENT, 10_000, -90), _refund(1_666, -60), _refund(1_666, -30)],
            _refund(1_667, 0),
            False,
            id="49.99 %",
        ),
        pytest.param(
            [ev(K.PAYMENT, 10_000, -90), _refund(5_000, -30)],
            _refund(5_000, 0),
            False,
            id="only two refunds",
        ),
        pytest.param(
            [_refund(100, -60), _refund(100, -30)],
            _refund(100, 0),
            True,
            id="nothing paid in window",
        ),
        pytest.param(
            [ev(K.PAYMENT, 10_000, -90), _refund(5_000, -31 * DAY), _refund(5_000, -30)],
            _refund(5_000, 0),
            False,
            id="one refund outside window",
        ),
    ],
)
def test_refund_abuse(history: list[MoneyEvent], event: MoneyEvent, fires: bool) -> None:
    findings = run_rule("refund_abuse", event, history, **R)
    assert bool(findings) is fires
    if fires:
        assert findings[0].party_id == "buyer-1"


# --- sanctions: best hit >= 0.80 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "fires", "score_bp"),
    [([0.80], True, 8_000), ([0.7999], False, 0), ([0.5, 0.97], True, 9_700), ([], False, 0)],
)
def test_sanctions(scores: list[float], fires: bool, score_bp: int) -> None:
    hits = [SanctionsHit(f"ofac-{i}", s, "name matches") for i, s in enumerate(scores)]
    findings = run_rule("sanctions", ev(K.PAYMENT, 100), sanctions={"buyer-1": hits})
    assert bool(findings) is fires
    if fires:
        assert findings[0].score_bp == score_bp and findings[0].party_id == "buyer-1"
        assert "ofac-" in findings[0].explanation


# --- aggregation, validation, shadow --------------------------------------------------------


def _alert(score_bp: int, shadow: bool = False) -> Alert:
    return Alert("r", 1, shadow, score_bp, None, "x", {})


@pytest.mark.parametrize(
    ("scores", "outcome"),
    [
        ([], Outcome.ALLOW),
        ([4_999], Outcome.ALLOW),
        ([5_000], Outcome.REVIEW),
        ([8_999, 100], Outcome.REVIEW),
        ([9_000], Outcome.BLOCK),
        ([0, 10_000], Outcome.BLOCK),
    ],
)
def test_aggregate_thresholds(scores: list[int], outcome: Outcome) -> None:
    assert aggregate([_alert(s) for s in scores]) is outcome


@pytest.mark.parametrize(
    ("kind", "outcome"),
    [(K.PAYMENT, Outcome.BLOCK), (K.PAYOUT, Outcome.BLOCK), (K.REFUND, Outcome.REVIEW)],
)
def test_a_refund_is_never_refused_its_worst_outcome_is_review(kind: K, outcome: Outcome) -> None:
    """A merchant matching a sanctions entry at 0.97 (block level): its payment and its
    payout are blocked; its refund of a buyer's escrowed money goes ahead under review."""
    payer, payee = {
        K.PAYMENT: ("buyer-1", "merchant-1"),
        K.PAYOUT: ("merchant-1", None),
        K.REFUND: ("merchant-1", "buyer-1"),
    }[kind]
    sanctions = RuleConfig("sanctions", 1, RULES["sanctions"].defaults(), T0, "test", "")
    hits = {"merchant-1": [SanctionsHit("ofac-1", 0.97, "name matches")]}
    data = RuleInput(ev(kind, 100, payer=payer, payee=payee), {}, hits)
    evaluation = evaluate(data, [ActiveRule(RULES["sanctions"], sanctions)])
    # The alert keeps its block-level score (the case's risk comes from it).
    assert [a.score_bp for a in evaluation.live] == [9_700]
    assert evaluation.outcome is outcome


def test_aggregate_refuses_shadow_alerts_and_bad_policies() -> None:
    with pytest.raises(AssertionError):
        aggregate([_alert(10_000, shadow=True)])
    with pytest.raises(RuleConfigInvalid):
        DecisionPolicy(review_bp=9_000, block_bp=8_000)


@pytest.mark.parametrize(
    ("event", "param"),
    [
        (MoneyEvent(K.PAYMENT, "", T0, Money(1, "EUR"), Party("a"), Party("b")), "event_id"),
        (MoneyEvent(K.PAYMENT, "e", -1, Money(1, "EUR"), Party("a"), Party("b")), "at_ns"),
        (MoneyEvent(K.PAYMENT, "e", T0, Money(0, "EUR"), Party("a"), Party("b")), "amount"),
        (MoneyEvent(K.PAYMENT, "e", T0, Money(1, "EUR"), Party(""), Party("b")), "payer.party_id"),
        (MoneyEvent(K.PAYMENT, "e", T0, Money(1, "EUR"), Party("a"), None), "payee"),
        (MoneyEvent(K.TOP_UP, "e", T0, Money(1, "EUR"), None, None), "payer"),
        (MoneyEvent(K.PAYMENT, "e", T0, Money(1, "EUR"), Party("a"), Party("a")), "payee"),
        (
            MoneyEvent(K.CARD_AUTHORISATION, "e", T0, Money(1, "EUR"), Party("a"), Party("b")),
            "card_approved",
        ),
        (
            MoneyEvent(K.PAYMENT, "e", T0, Money(1, "EUR"), Party("a"), Party("b"), True),
            "card_approved",
        ),
    ],
)
def test_event_validation(event: MoneyEvent, param: str) -> None:
    with pytest.raises(RuleEventInvalid) as caught:
        validate_event(event)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"nope": 1}, "nope"),
        ({"count_max": 0}, "count_max"),
        ({"count_max": "1.5"}, "count_max"),
        ({"currency": "XYZ"}, "currency"),
        ({"enabled": 2}, "enabled"),
        ({"window_s": 40 * DAY}, "window_s"),
    ],
)
def test_config_validation(changes: dict[str, object], param: str) -> None:
    spec = RULES["velocity"]
    with pytest.raises(RuleConfigInvalid) as caught:
        spec.validate({**spec.defaults(), **changes})
    assert caught.value.param == param


def test_disabled_rule_never_alerts() -> None:
    spec = RULES["new_account_high_value"]
    event = ev(K.PAYMENT, 900_000, payer_age_s=0)
    on = RuleConfig(spec.name, 1, spec.defaults())
    off = RuleConfig(spec.name, 2, {**spec.defaults(), "enabled": 0})
    data = RuleInput(event, {})
    assert evaluate(data, [ActiveRule(spec, on)]).outcome is Outcome.REVIEW
    assert evaluate(data, [ActiveRule(spec, off)]).live == ()


@settings(max_examples=60, deadline=None)
@given(
    amount=st.integers(1, 3_000_000),
    age_s=st.integers(0, 10 * DAY),
    shadow_amount_min=st.integers(1, 3_000_000),
    shadow_score=st.integers(0, 10_000),
    history_amounts=st.lists(st.integers(1, 1_000_000), max_size=6),
)
def test_shadow_versions_never_change_the_outcome(
    amount: int,
    age_s: int,
    shadow_amount_min: int,
    shadow_score: int,
    history_amounts: list[int],
) -> None:
    event = ev(K.PAYOUT, amount, payer="m", payee=None, payer_age_s=age_s)
    history = [
        ev(K.TOP_UP, a, -60 * (i + 1), payer=None, payee="m") for i, a in enumerate(history_amounts)
    ]
    from paykeep.aml.rules.history import PartyHistory
    from paykeep.aml.rules.model import history_entries

    store = PartyHistory()
    for past in history:
        for pid, entry in history_entries(past):
            store.append(pid, entry)
    data = RuleInput(event, store.view(["m"]))
    live_only = [
        ActiveRule(spec, RuleConfig(name, 1, spec.defaults())) for name, spec in RULES.items()
    ]
    with_shadow = [
        ActiveRule(
            a.spec,
            a.live,
            RuleConfig(
                a.spec.name,
                2,
                {
                    **a.live.params,
                    **(
                        {"amount_min_minor": shadow_amount_min}
                        if "amount_min_minor" in a.live.params
                        else {}
                    ),
                    **({"score_bp": shadow_score} if "score_bp" in a.live.params else {}),
                },
            ),
        )
        for a in live_only
    ]
    plain = evaluate(data, live_only)
    shadowed = evaluate(data, with_shadow)
    assert shadowed.outcome is plain.outcome
    assert shadowed.live == plain.live
    assert all(a.shadow and a.version == 2 for a in shadowed.shadow)
