"""Every rule is held to its declared history needs: the engine reads each party's history only
for the kinds and windows the active rules declare, so a rule reading more than it declared
would silently see nothing. Here each rule runs on many random histories twice — with the
whole history and with only what its ``needs`` asked for — and must find exactly the same."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest

from paykeep.aml.rules import limits
from paykeep.aml.rules.catalogue import RULES
from paykeep.aml.rules.model import (
    NS_PER_S,
    ActiveRule,
    EventKind,
    Finding,
    HistoryEntry,
    HistoryNeed,
    HistoryRead,
    MoneyEvent,
    NeedsFunction,
    Params,
    ParamSpec,
    RuleConfig,
    RuleInput,
    RuleSpec,
    history_entries,
    history_needs,
    read_history,
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
    """What the engine would read: per needed party, what its reads take (``read_history``,
    the definition the database's reads are tested against in test_engine.py)."""
    return {
        party_id: read_history(
            history.get(party_id, []), event.at_ns, reads, limits.HISTORY_ENTRIES_PER_PARTY_MAX
        )
        for party_id, reads in history_needs(event, active).items()
    }


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


def test_every_rule_finds_the_same_with_what_all_rules_read_together() -> None:
    """The reads of several rules at once — live and shadow versions with their own windows —
    must hold what each one needs: a firsts-only rule beside a rule reading the same party's
    other kinds, or the same kind over another window, finds what it finds alone."""
    rng = random.Random("needs-together")
    fired: dict[str, int] = dict.fromkeys(TOUCHY, 0)
    for _case in range(CASES_PER_RULE):
        active = []
        for rule in sorted(TOUCHY):
            spec = RULES[rule]

            def version(n: int, spec: RuleSpec = spec, rule: str = rule) -> RuleConfig:
                params = spec.validate(
                    {**spec.defaults(), **TOUCHY[rule], "window_s": rng.choice(WINDOWS_S)}
                )
                return RuleConfig(rule, n, params, T0, "test", "")

            active.append(ActiveRule(spec, version(1), version(2) if rng.random() < 0.5 else None))
        history = _history(rng)
        event = _random_event(rng, 0)
        needed = _only_needed(event, history, active)
        for each in active:
            for config in (each.live, each.shadow):
                if config is None:
                    continue
                whole = each.spec.evaluate(RuleInput(event, history), config.params)
                found = each.spec.evaluate(RuleInput(event, needed), config.params)
                assert found == whole, (config.rule, event, config.params)
                fired[config.rule] += bool(whole)
    assert min(fired.values()) >= 10, fired


def _payee_need(firsts_only: bool) -> NeedsFunction:
    def needs(event: MoneyEvent, params: Params) -> list[HistoryNeed]:
        if event.payee is None:
            return []
        kinds = frozenset({K.PAYMENT, K.REFUND})
        return [HistoryNeed(event.payee.party_id, int(params["window_s"]), kinds, firsts_only)]

    return needs


def _payee_window(data: RuleInput, params: Params) -> list[HistoryEntry]:
    assert data.event.payee is not None
    at, window = data.event.at_ns, int(params["window_s"]) * NS_PER_S
    return [
        e
        for e in data.entries(data.event.payee.party_id)
        if e.kind in (K.PAYMENT, K.REFUND) and at - window < e.at_ns <= at
    ]


def _earliest_keys(data: RuleInput, params: Params) -> list[Finding]:
    """Reads only which keys occur and each one's earliest time: the firsts contract."""
    if data.event.payee is None:
        return []
    earliest: dict[tuple[object, ...], int] = {}
    for e in _payee_window(data, params):
        key = (e.kind.value, e.direction.value, e.counterparty_id, e.counterparty_opened_at_ns)
        earliest[key] = min(earliest.get(key, e.at_ns), e.at_ns)
    return [Finding(None, 1, "keys", {"keys": repr(sorted(earliest.items(), key=repr))})]


def _every_entry(data: RuleInput, params: Params) -> list[Finding]:
    if data.event.payee is None:
        return []
    window = _payee_window(data, params)
    figures: dict[str, int | str] = {
        "count": len(window),
        "sum": sum(e.amount_minor for e in window),
        "at": repr([e.at_ns for e in window]),
    }
    return [Finding(None, 1, "entries", figures)]


WINDOW_PARAM = ParamSpec("window_s", DAY, "window", 1, 40 * DAY)
EARLIEST_KEYS = RuleSpec(
    "earliest_keys", "", (WINDOW_PARAM,), _earliest_keys, needs=_payee_need(firsts_only=True)
)
EVERY_ENTRY = RuleSpec(
    "every_entry", "", (WINDOW_PARAM,), _every_entry, needs=_payee_need(firsts_only=False)
)


def test_firsts_and_whole_reads_of_the_same_kinds_over_other_windows_serve_both() -> None:
    """Rules reading the same party's same kinds, some whole and some only firsts, each over
    its own window: the bands the engine reads give each exactly what the whole history does
    (a firsts band only beyond the widest whole window, one band per wider firsts window)."""
    rng = random.Random("bands")
    banded = 0
    for _case in range(CASES_PER_RULE):
        active = []
        for spec in (EARLIEST_KEYS, EVERY_ENTRY):
            versions = [
                RuleConfig(spec.name, n, {"enabled": 1, "window_s": rng.choice(WINDOWS_S)}, T0,
                           "test", "")
                for n in (1, 2)
            ]  # fmt: skip
            if rng.random() < 0.3:
                continue
            active.append(
                ActiveRule(spec, versions[0], versions[1] if rng.random() < 0.6 else None)
            )
        history = _history(rng)
        event = _random_event(rng, 0)
        reads = history_needs(event, active)
        for party_reads in reads.values():
            # Bands never overlap: no entry is read twice.
            for kind in K:
                spans = sorted((r.newest_s, r.oldest_s) for r in party_reads if kind in r.kinds)
                assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
            banded += any(r.firsts_only and r.newest_s > 0 for r in party_reads)
        needed = _only_needed(event, history, active)
        for each in active:
            for config in (each.live, each.shadow):
                if config is not None:
                    whole = each.spec.evaluate(RuleInput(event, history), config.params)
                    assert each.spec.evaluate(RuleInput(event, needed), config.params) == whole
    # Not vacuous: many cases read a firsts band beyond a whole read of the same kinds.
    assert banded >= 100, banded


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
    assert needs["buyer-1"] == (
        HistoryRead(frozenset({K.PAYMENT, K.TOP_UP, K.PAYOUT, K.REFUND}), 0, 7_200),
    )
    # fan_in alone reads the merchant, and only the first payment of each buyer.
    assert needs["merchant-1"] == (HistoryRead(frozenset({K.PAYMENT}), 0, DAY, firsts_only=True),)
    two_windows = [
        ActiveRule(fan_in, config("fan_in", 1, window_s=DAY), config("fan_in", 2, window_s=600))
    ]
    # A first in the wider window may precede the narrower one: the firsts of each band.
    assert history_needs(payment, two_windows)["merchant-1"] == (
        HistoryRead(frozenset({K.PAYMENT}), 0, 600, firsts_only=True),
        HistoryRead(frozenset({K.PAYMENT}), 600, DAY, firsts_only=True),
    )
    # Ten minutes of card authorisations read whole beside fan_in's firsts do not turn the
    # day of payments into a whole read.
    card_testing = RULES["card_testing"]
    beside = [*active, ActiveRule(card_testing, config("card_testing", 1, window_s=600))]
    assert history_needs(payment, beside)["merchant-1"] == (
        HistoryRead(frozenset({K.CARD_AUTHORISATION}), 0, 600),
        HistoryRead(frozenset({K.PAYMENT}), 0, DAY, firsts_only=True),
    )
    # A rule reading payments whole over part of fan_in's window: whole there, firsts beyond.
    refunds = RULES["refund_abuse"]
    refund = ev(K.REFUND, 1_000, payer="buyer-1", payee="merchant-1")
    wide = [ActiveRule(refunds, config("refund_abuse", 1, window_s=3_600))]
    assert history_needs(refund, wide)["merchant-1"] == (
        HistoryRead(frozenset({K.PAYMENT, K.REFUND}), 0, 3_600),
    )
    disabled = [ActiveRule(fan_in, config("fan_in", 1, enabled=0))]
    assert history_needs(payment, disabled) == {}
    release = ev(K.RELEASE, 1_000, payer="buyer-1", payee="merchant-1")
    assert history_needs(release, active) == {}
