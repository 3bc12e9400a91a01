"""Builders for money events and a fake sanctions screen (the screening context's boundary)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count

from paykeep.aml.rules.catalogue import RULES
from paykeep.aml.rules.history import PartyHistory
from paykeep.aml.rules.model import (
    EventKind,
    Finding,
    MoneyEvent,
    Party,
    RuleInput,
    SanctionsHit,
    history_entries,
)
from paykeep.money import Money

NS = 1_000_000_000
T0 = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z
DAY = 24 * 3600
_ids = count(1)

K = EventKind


def ev(
    kind: EventKind,
    amount_minor: int,
    at_s: float = 0,
    *,
    payer: str | None = "buyer-1",
    payee: str | None = "merchant-1",
    currency: str = "EUR",
    approved: bool | None = None,
    payer_age_s: int | None = None,
    payee_age_s: int | None = None,
    payer_name: str | None = None,
    event_id: str | None = None,
) -> MoneyEvent:
    """An event ``at_s`` seconds after T0; ages are the accounts' ages at that moment."""
    at_ns = T0 + int(at_s * NS)

    def party(pid: str | None, age: int | None, name: str | None = None) -> Party | None:
        if pid is None:
            return None
        return Party(pid, None if age is None else at_ns - age * NS, name)

    if kind is EventKind.CARD_AUTHORISATION and approved is None:
        approved = False
    return MoneyEvent(
        kind=kind,
        event_id=event_id or f"ev-{next(_ids)}",
        at_ns=at_ns,
        amount=Money(amount_minor, currency),
        payer=party(payer, payer_age_s, payer_name),
        payee=party(payee, payee_age_s),
        card_approved=approved,
    )


def run_rule(
    rule: str,
    event: MoneyEvent,
    history: Iterable[MoneyEvent] = (),
    sanctions: Mapping[str, Sequence[SanctionsHit]] | None = None,
    **params: int | str,
) -> list[Finding]:
    store = PartyHistory()
    for past in history:
        for party_id, entry in history_entries(past):
            store.append(party_id, entry)
    spec = RULES[rule]
    checked = spec.validate({**spec.defaults(), **params})
    data = RuleInput(event, store.view(p.party_id for p in event.parties), sanctions or {})
    return spec.evaluate(data, checked)


@dataclass
class FakeSanctions:
    """Names mapped to hits; records every call."""

    hits: dict[str, list[SanctionsHit]] = field(default_factory=dict)
    calls: list[tuple[str, str | None, str | None]] = field(default_factory=list)

    def screen(self, name: str, country: str | None, dob: str | None) -> Sequence[SanctionsHit]:
        self.calls.append((name, country, dob))
        return self.hits.get(name, [])
