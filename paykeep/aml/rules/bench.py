"""Real-time rules benchmark: decision latency over a warm per-party history, beside a baseline.

What is measured is the decision itself — building the rule input from the bounded in-memory
history, running every rule's live version (and a shadow version of one rule), aggregating,
and appending the event to the history — the work that must fit in the payment's latency
budget. Recording the decision in the database is one more write transaction on top, paid by
the caller's unit of work and not measured here.

The baseline, measured in the same run over the same number of events, is a plain dictionary
lookup of the payer's party id: the cheapest possible "decision".
"""

from __future__ import annotations

import gc
import random
from collections.abc import Sequence
from typing import Any

from paykeep.aml.rules.catalogue import RULES
from paykeep.aml.rules.history import PartyHistory
from paykeep.aml.rules.model import (
    NS_PER_S,
    ActiveRule,
    EventKind,
    MoneyEvent,
    Outcome,
    Party,
    RuleConfig,
    RuleInput,
    SanctionsHit,
    evaluate,
    history_entries,
    records_history,
)
from paykeep.clock import monotonic_s
from paykeep.money import Money

_START_NS = 1_767_225_600 * NS_PER_S
_KINDS = (
    [EventKind.PAYMENT] * 6
    + [EventKind.TOP_UP, EventKind.PAYOUT, EventKind.REFUND, EventKind.RELEASE]
    + [EventKind.CARD_AUTHORISATION] * 2
)


class _DictSanctions:
    def __init__(self, names: dict[str, list[SanctionsHit]]) -> None:
        self.names = names

    def screen(self, name: str, country: str | None, dob: str | None) -> Sequence[SanctionsHit]:
        return self.names.get(name, [])


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def _events(count: int, parties: int, rng: random.Random, start_ns: int) -> list[MoneyEvent]:
    buyers = parties * 4 // 5
    events = []
    at_ns = start_ns
    for i in range(count):
        at_ns += rng.randint(1, 4) * NS_PER_S
        kind = rng.choice(_KINDS)
        buyer = Party(
            f"b{rng.randrange(buyers)}",
            start_ns - rng.randint(0, 60) * 86_400 * NS_PER_S,
            name=f"Buyer {i % 997}",
        )
        merchant = Party(f"m{rng.randrange(parties - buyers)}", start_ns - 400 * 86_400 * NS_PER_S)
        payer: Party | None = buyer
        payee: Party | None = merchant
        if kind is EventKind.TOP_UP:
            payer = None
            payee = buyer
        elif kind is EventKind.PAYOUT:
            payer, payee = merchant, None
        elif kind is EventKind.REFUND:
            payer, payee = merchant, buyer
        amount = rng.choice(
            (300, 1_200, 2_500, 2_500, 4_900, 9_900, 9_900, 45_000, 120_000, 250_000, 950_000)
            if i % 50 == 0
            else (300, 1_200, 2_500, 4_900, 9_900, 19_900, 45_000)
        )
        events.append(
            MoneyEvent(
                kind=kind,
                event_id=f"e{i}",
                at_ns=at_ns,
                amount=Money(amount, "EUR"),
                payer=payer,
                payee=payee,
                card_approved=(rng.random() < 0.7)
                if kind is EventKind.CARD_AUTHORISATION
                else None,
            )
        )
    return events


def run_rules_bench(
    decisions: int = 5_000,
    history_size: int = 100_000,
    parties: int = 2_000,
    seed: int = 7,
) -> dict[str, Any]:
    """Decide ``decisions`` events after warming the history with ``history_size`` events over
    ``parties`` parties. Returns throughput, p50/p99 latency, the baseline and their ratio."""
    if decisions < 1 or history_size < 0 or parties < 10:
        raise ValueError("need decisions >= 1, history_size >= 0 and parties >= 10")
    rng = random.Random(seed)
    active = [
        ActiveRule(spec, RuleConfig(name, 1, spec.defaults())) for name, spec in RULES.items()
    ]
    # One rule also runs a shadow version, as it would while a change is being evaluated.
    velocity = RULES["velocity"]
    active = [
        ActiveRule(
            a.spec, a.live, RuleConfig("velocity", 2, {**velocity.defaults(), "count_max": 5})
        )
        if a.spec.name == "velocity"
        else a
        for a in active
    ]
    sanctions = _DictSanctions({"Buyer 13": [SanctionsHit("ofac-1", 0.93, "exact name")]})
    history = PartyHistory()
    warm = _events(history_size, parties, rng, _START_NS)
    for event in warm:
        for party_id, entry in history_entries(event):
            history.append(party_id, entry)
    start_ns = warm[-1].at_ns if warm else _START_NS
    events = _events(decisions, parties, rng, start_ns)
    # The warm history is long-lived data: move it out of the collector's generations, as a
    # service does with what it loads at start-up, so that full collections over it do not
    # land in the measured decisions. The collector stays enabled during the run.
    gc.collect()
    gc.freeze()
    try:
        measured = _measure(events, active, sanctions, history)
    finally:
        gc.unfreeze()
    latencies, outcomes, alerts, run_s = measured

    table = {f"b{i}": i for i in range(parties)}
    baseline_started = monotonic_s()
    found = 0
    for event in events:
        key = event.payer.party_id if event.payer else ""
        if table.get(key) is not None:
            found += 1
    baseline_s = max(monotonic_s() - baseline_started, 1e-9)

    latencies.sort()
    decisions_per_s = decisions / run_s
    baseline_per_s = decisions / baseline_s
    return {
        "decisions": decisions,
        "rules": len(active),
        "shadow_rules": sum(1 for a in active if a.shadow is not None),
        "history_size": history_size,
        "parties": parties,
        "decisions_per_s": round(decisions_per_s, 1),
        "decision_ms_p50": round(_percentile(latencies, 0.50) * 1000, 4),
        "decision_ms_p99": round(_percentile(latencies, 0.99) * 1000, 4),
        "decision_ms_max": round(latencies[-1] * 1000, 4),
        "outcomes": outcomes,
        "alerts": alerts,
        "baseline": "dict lookup of the payer's party id",
        "baseline_lookups_per_s": round(baseline_per_s, 1),
        "baseline_found": found,
        "ratio": round(decisions_per_s / baseline_per_s, 6),
        "scope": "in-memory decision (sanctions lookup, rules, aggregation, history append); "
        "the database write of the decision is not included; warm history frozen out of GC",
    }


def _measure(
    events: Sequence[MoneyEvent],
    active: Sequence[ActiveRule],
    sanctions: _DictSanctions,
    history: PartyHistory,
) -> tuple[list[float], dict[str, int], int, float]:
    latencies: list[float] = []
    outcomes = dict.fromkeys((o.value for o in Outcome), 0)
    alerts = 0
    run_started = monotonic_s()
    for event in events:
        t0 = monotonic_s()
        ids = [p.party_id for p in event.parties]
        hits = {
            p.party_id: sanctions.screen(p.name, p.country, p.dob) for p in event.parties if p.name
        }
        evaluation = evaluate(RuleInput(event, history.view(ids), hits), active)
        if records_history(event, evaluation.outcome):
            for party_id, entry in history_entries(event):
                history.append(party_id, entry)
        latencies.append(monotonic_s() - t0)
        outcomes[evaluation.outcome.value] += 1
        alerts += len(evaluation.live) + len(evaluation.shadow)
    return latencies, outcomes, alerts, monotonic_s() - run_started
