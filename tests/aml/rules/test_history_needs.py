"""Every rule is held to its declared history needs: the engine reads each party's history only
for the kinds and windows the active rules declare, so a rule reading more than it declared
would silently see nothing. Here each rule runs on many random histories twice — with the
whole history and with only what its ``needs`` asked for — and must find exactly the same."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from paykeep.aml.rules.catalogue import RULES
from paykeep.aml.rules.model import (
    NS_PER_S,
    ActiveRule,
    EventKind,
    HistoryEntry,
    MoneyEvent,
    PartyNeed,
    RuleConfig,
    RuleInput,
    firsts,
    history_entries,
    history_needs,
)
from tests.aml.rules.helpers import DAY, T0, ev

K = EventKind
PARTIES = ("buyer-1", "buyer-2", "merchant-1", "merchant-2")
CASES_PER_RULE = 1_500

#: Small thresholds so that every rule fires on a good share of random histories.
TOUCHY: dict[str, dict[str, int | str]] = {
    "velocity": {"count_max": 3, "amount_max_minor": 5_000},
    "structuring": {"reporting_threshold_minor": 10_000, "band_bp": 3_000, "count_min": 2},
    "pass_through": {"inflow_min_minor": 1_000, "out_ratio_bp": 3_000},
    "fan_in": {"distinct_min": 2},
    "card_testing": {"declines_min": 2},
    "refund_abuse": {"refunds_min": 2, "ratio_bp": 2_000},
}
WINDOWS_S = (600, 3_600, 6 * 3_600, DAY, 7 * DAY, 30 * DAY)


def _random_event(rng: random.Random, at_s: float) -> MoneyEvent:
    kind = rng.choice(list(K))
    payer = rng.choice(PARTIES)
    payee = rng.choice([p for p in PARTIES if p != payer])
    if kind is K.TOP_UP:
        payer = None
    if kind is K.PAYOUT:
        payee = None
    return ev(
        kind,
        rng.choice((100, 400, 800, 7_500, 9_000, 9_999, 20_000, 250_000)),
        at_s,
        payer=payer,
        payee=payee,
        currency=rng.choice(("EUR", "EUR", "EUR", "USD")),
        approved=rng.choice((True, False)) if kind is K.CARD_AUTHORISATION else None,
        payer_age_s=rng.choice((None, 60, 3 * DAY, 30 * DAY)),
        payee_age_s=rng.choice((None, 60, 3 * DAY, 30 * DAY)),
    )


def _history(rng: random.Random) -> dict[str, list[HistoryEntry]]:
    store: dict[str, list[HistoryEntry]] = {}
    span_s = rng.choice((900, 2 * 3_600, 2 * DAY, 40 * DAY))
    for at_s in sorted(-rng.uniform(1, span_s) for _ in range(rng.randint(0, 40))):
        for party_id, entry in history_entries(_random_event(rng, at_s)):
            store.setdefault(party_id, []).append(entry)
    return store


def _only_needed(
    event: MoneyEvent, history: dict[str, list[HistoryEntry]], active: Sequence[ActiveRule]
) -> dict[str, list[HistoryEntry]]:
    """What the engine would read: per needed party, entries of the needed kinds within the
    widest needed window (``at - window < t <= at``) — only their firsts where the need says
    so."""
    read: dict[str, list[HistoryEntry]] = {}
    for party_id, need in history_needs(event, active).items():
        entries = [
            e
            for e in history.get(party_id, [])
            if e.kind in need.kinds
            and event.at_ns - need.window_s * NS_PER_S < e.at_ns <= event.at_ns
        ]
        read[party_id] = firsts(entries) if need.firsts_only else entries
    return read


@pytest.mark.parametrize("rule", sorted(TOUCHY))
def test_a_rule_finds_the_same_with_only_the_history_it_declared(rule: str) -> None:
    spec = RULES[rule]
    rng = random.Random(f"needs-{rule}")
    fired = 0
    for _case in range(CASES_PER_RULE):
        params = spec.validate(
            {**spec.defaults(), **TOUCHY[rule], "window_s": rng.choice(WINDOWS_S)}
        )
        active = [ActiveRule(spec, RuleConfig(rule, 1, params, T0, "test", ""))]
        history = _history(rng)
        event = _random_event(rng, 0)
        whole = spec.evaluate(RuleInput(event, history), params)
        needed = spec.evaluate(RuleInput(event, _only_needed(event, history, active)), params)
        assert needed == whole, (rule, event, params)
        fired += bool(whole)
    # Not vacuous: the random histories make the rule fire often enough to compare findings.
    assert fired >= 10, (rule, fired)


def test_rules_without_needs_read_no_history() -> None:
    rng = random.Random("no-needs")
    for rule in ("sanctions", "new_account_high_value"):
        spec = RULES[rule]
        assert spec.needs is None
        params = spec.validate(
            {**spec.defaults(), "currency": "EUR"} if rule != "sanctions" else spec.defaults()
        )
        for _case in range(300):
            event = _random_event(rng, 0)
            history = _history(rng)
            assert spec.evaluate(RuleInput(event, history), params) == spec.evaluate(
                RuleInput(event, {}), params
            )


def test_needs_union_takes_the_widest_window_and_every_kind_and_skips_disabled_versions() -> None:
    velocity, fan_in = RULES["velocity"], RULES["fan_in"]
    payment = ev(K.PAYMENT, 1_000, payer="buyer-1", payee="merchant-1")

    def config(spec_name: str, version: int, **params: int) -> RuleConfig:
        spec = RULES[spec_name]
        return RuleConfig(
            spec_name, version, spec.validate({**spec.defaults(), **params}), T0, "test", ""
        )

    active = [
        ActiveRule(
            velocity, config("velocity", 1, window_s=600), config("velocity", 2, window_s=7_200)
        ),
        ActiveRule(fan_in, config("fan_in", 1, window_s=DAY)),
    ]
    needs = history_needs(payment, active)
    assert needs["buyer-1"] == PartyNeed(
        7_200, frozenset({K.PAYMENT, K.TOP_UP, K.PAYOUT, K.REFUND})
    )
    # fan_in alone reads the merchant, and only the first payment of each buyer.
    assert needs["merchant-1"] == PartyNeed(DAY, frozenset({K.PAYMENT}), firsts_only=True)
    two_windows = [
        ActiveRule(fan_in, config("fan_in", 1, window_s=DAY), config("fan_in", 2, window_s=600))
    ]
    # A first in the wider window may precede the narrower one: every entry is read.
    assert history_needs(payment, two_windows)["merchant-1"] == PartyNeed(
        DAY, frozenset({K.PAYMENT}), firsts_only=False
    )
    disabled = [ActiveRule(fan_in, config("fan_in", 1, enabled=0))]
    assert history_needs(payment, disabled) == {}
    release = ev(K.RELEASE, 1_000, payer="buyer-1", payee="merchant-1")
    assert history_needs(release, active) == {}
