"""Use cases of the real-time rules: configuration versions, and the decision engine.

- :class:`RulesService` manages immutable configuration versions: every change creates a
  version; each rule has one live version and at most one shadow version. A rule never
  configured runs its built-in defaults as version 1, which is stored the first time the rule
  is changed, so that the stored history of versions is complete.
- :class:`DecisionEngine` decides one money event in one write transaction: it reads the
  active configurations and the parties' bounded history, screens names, runs the rules
  (pure), records the decision, every live and shadow alert, the history entries, and — for a
  ``review`` — opens a case with the alerts, the transaction and the counterparty graph as
  evidence. A replayed event id returns the recorded decision.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from paykeep.aml.cases.errors import CaseLimitReached
from paykeep.aml.cases.model import EvidenceKind, risk_from_score
from paykeep.aml.cases.repository import CaseRepository
from paykeep.aml.cases.service import NewEvidence, add_evidence_in, open_case_in
from paykeep.aml.rules import limits
from paykeep.aml.rules.catalogue import RULES
from paykeep.aml.rules.errors import (
    PaymentBlocked,
    PaymentUnderReview,
    RuleConfigInvalid,
    RuleConfigVersionNotFound,
    RuleEventIdReused,
    RuleNoShadow,
    RuleNotFound,
)
from paykeep.aml.rules.model import (
    DEFAULT_POLICY,
    NS_PER_S,
    ActiveRule,
    Alert,
    Decision,
    DecisionPolicy,
    Direction,
    HistoryEntry,
    HistoryRead,
    MoneyEvent,
    Outcome,
    ParamValue,
    RuleConfig,
    RuleInput,
    RuleSpec,
    SanctionsHit,
    SanctionsScreen,
    evaluate,
    event_fields,
    event_fingerprint,
    history_entries,
    history_needs,
    merge_reads,
    records_history,
    validate_event,
)
from paykeep.aml.rules.repository import ActivePointer, RulesRepository
from paykeep.clock import Clock, SystemClock
from paykeep.db import Database

SYSTEM_ACTOR: Final = "paykeep:rules"
GRAPH_EDGES_MAX: Final = 500
#: Rule configurations an engine keeps in memory (versions ever seen; cleared past this).
CONFIG_CACHE_MAX: Final = 10_000


def builtin_config(spec: RuleSpec) -> RuleConfig:
    return RuleConfig(spec.name, 1, spec.defaults(), 0, "paykeep", "built-in default")


def _spec(rules: Mapping[str, RuleSpec], name: str) -> RuleSpec:
    spec = rules.get(name)
    if spec is None:
        raise RuleNotFound(f"no rule {name!r}; rules are {', '.join(sorted(rules))}", param="rule")
    return spec


def _check_actor(actor: str) -> None:
    if not actor.strip() or len(actor) > limits.ACTOR_LENGTH_MAX:
        raise RuleConfigInvalid(
            f"actor must be 1-{limits.ACTOR_LENGTH_MAX} characters", param="actor"
        )


def load_active(
    repo: RulesRepository,
    rules: Mapping[str, RuleSpec],
    known: dict[tuple[str, int], RuleConfig] | None = None,
) -> list[ActiveRule]:
    """Each registered rule with its live (and shadow) configuration, in registry order.

    ``known`` caches configurations by (rule, version) across calls: a stored version is
    never changed (a change is a new version), so only the small pointer table is read for
    every decision, and the configurations only when a pointer names a version not seen yet.
    """
    pointers = repo.pointers()
    stored = {} if known is None else known
    wanted = {
        (name, version)
        for name, pointer in pointers.items()
        for version in (pointer.live_version, pointer.shadow_version)
        if version is not None
    }
    if not wanted <= stored.keys():
        if len(stored) > CONFIG_CACHE_MAX:
            stored.clear()
        stored.update({(c.rule, c.version): c for c in repo.active_configs()})
    active = []
    for name, spec in rules.items():
        pointer = pointers.get(name)
        if pointer is None:
            active.append(ActiveRule(spec, builtin_config(spec)))
            continue
        shadow = None
        if pointer.shadow_version is not None:
            shadow = stored[(name, pointer.shadow_version)]
        active.append(ActiveRule(spec, stored[(name, pointer.live_version)], shadow))
    return active


@dataclass(frozen=True, slots=True)
class RuleStatus:
    spec: RuleSpec
    live: RuleConfig
    shadow: RuleConfig | None
    versions: tuple[RuleConfig, ...]

    def to_json(self, *, with_versions: bool = False) -> dict[str, Any]:
        document: dict[str, Any] = {
            "rule": self.spec.name,
            "description": self.spec.description,
            "live": self.live.to_json(),
            "shadow": self.shadow.to_json() if self.shadow else None,
            "parameters": [
                {
                    "name": p.name,
                    "default": p.default,
                    "help": p.help,
                    "minimum": None if p.currency else p.minimum,
                    "maximum": None if p.currency else p.maximum,
                }
                for p in self.spec.all_params
            ],
        }
        if with_versions:
            document["versions"] = [v.to_json() for v in self.versions]
        return document


@dataclass
class RulesService:
    database: Database
    clock: Clock = field(default_factory=SystemClock)
    rules: Mapping[str, RuleSpec] = field(default_factory=lambda: RULES)

    def _status(self, repo: RulesRepository, spec: RuleSpec) -> RuleStatus:
        versions = tuple(repo.versions(spec.name)) or (builtin_config(spec),)
        by_version = {v.version: v for v in versions}
        pointer = repo.pointers().get(spec.name)
        if pointer is None:
            return RuleStatus(spec, versions[0], None, versions)
        shadow = by_version[pointer.shadow_version] if pointer.shadow_version else None
        return RuleStatus(spec, by_version[pointer.live_version], shadow, versions)

    def list(self) -> list[RuleStatus]:
        with self.database.read() as conn:
            repo = RulesRepository(conn)
            return [self._status(repo, spec) for spec in self.rules.values()]

    def show(self, rule: str) -> RuleStatus:
        spec = _spec(self.rules, rule)
        with self.database.read() as conn:
            return self._status(RulesRepository(conn), spec)

    def set_config(
        self,
        rule: str,
        changes: Mapping[str, object],
        *,
        actor: str,
        shadow: bool = False,
        note: str = "",
        base_version: int | None = None,
    ) -> RuleConfig:
        """Create a new version: ``base_version`` (default: the live one) with ``changes``
        applied, validated as a whole. It becomes the live version, or the shadow version
        (replacing any previous shadow) when ``shadow``."""
        spec = _spec(self.rules, rule)
        _check_actor(actor)
        if len(note) > limits.CONFIG_NOTE_LENGTH_MAX:
            raise RuleConfigInvalid("note is too long", param="note")
        if not changes:
            raise RuleConfigInvalid("no parameter changed", param="params")
        at_ns = self.clock.now_ns()
        with self.database.write() as conn:
            repo = RulesRepository(conn)
            pointer = repo.pointers(for_update_rule=rule).get(rule)
            latest = repo.latest_version(rule)
            if latest == 0:
                repo.insert_config(builtin_config(spec))
                latest = 1
            if latest >= limits.CONFIG_VERSIONS_PER_RULE_MAX:
                raise RuleConfigInvalid(f"{rule} has {latest} versions already")
            live_version = pointer.live_version if pointer else 1
            base = repo.version(rule, base_version if base_version is not None else live_version)
            if base is None:
                raise RuleConfigVersionNotFound(
                    f"{rule} has no version {base_version}", param="base_version"
                )
            params = spec.validate({**base.params, **changes})
            config = RuleConfig(rule, latest + 1, params, at_ns, actor, note)
            repo.insert_config(config)
            new_pointer = (
                ActivePointer(rule, live_version, config.version)
                if shadow
                else ActivePointer(
                    rule, config.version, pointer.shadow_version if pointer else None
                )
            )
            repo.set_pointer(new_pointer, at_ns, exists=pointer is not None)
            return config

    def promote_shadow(self, rule: str, *, actor: str) -> RuleConfig:
        """The shadow version becomes the live one; the rule then runs no shadow."""
        return self._change_shadow(rule, actor, promote=True)

    def drop_shadow(self, rule: str, *, actor: str) -> RuleConfig:
        """Stop running the shadow version; returns the (unchanged) live version."""
        return self._change_shadow(rule, actor, promote=False)

    def _change_shadow(self, rule: str, actor: str, *, promote: bool) -> RuleConfig:
        _spec(self.rules, rule)
        _check_actor(actor)
        with self.database.write() as conn:
            repo = RulesRepository(conn)
            pointer = repo.pointers(for_update_rule=rule).get(rule)
            if pointer is None or pointer.shadow_version is None:
                raise RuleNoShadow(f"{rule} runs no shadow version", param="rule")
            live = pointer.shadow_version if promote else pointer.live_version
            repo.set_pointer(ActivePointer(rule, live, None), self.clock.now_ns(), exists=True)
            config = repo.version(rule, live)
            assert config is not None
            return config


def _graph(event: MoneyEvent, history: Mapping[str, Sequence[HistoryEntry]]) -> dict[str, Any]:
    """The counterparty graph around the event's parties: edges payer -> payee aggregated
    over the history that was read for the decision, this event included."""
    edges: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for party_id, entries in history.items():
        for entry in entries:
            if entry.counterparty_id is None:
                continue
            source, target = (
                (party_id, entry.counterparty_id)
                if entry.direction is Direction.OUT
                else (entry.counterparty_id, party_id)
            )
            if source in history and target in history and entry.direction is Direction.IN:
                continue  # seen from both sides: count it once, from the payer's side
            edge = edges[(source, target, entry.currency)]
            edge[0] += 1
            edge[1] += entry.amount_minor
    if event.payer is not None and event.payee is not None:
        edge = edges[(event.payer.party_id, event.payee.party_id, event.amount.currency)]
        edge[0] += 1
        edge[1] += event.amount.amount_minor
    ranked = sorted(edges.items(), key=lambda item: (-item[1][1], item[0]))[:GRAPH_EDGES_MAX]
    nodes = sorted({pid for (s, t, _), _v in ranked for pid in (s, t)} | set(history))
    return {
        "nodes": nodes,
        "edges": [
            {"from": s, "to": t, "currency": c, "count": v[0], "amount_minor": v[1]}
            for (s, t, c), v in ranked
        ],
    }


def _transaction_body(event: MoneyEvent, outcome: Outcome) -> dict[str, Any]:
    return {
        **event_fields(event),
        "payer_country": event.payer.country if event.payer else None,
        "payee_country": event.payee.country if event.payee else None,
        "outcome": outcome.value,
    }


def _read_history(
    repo: RulesRepository, party_id: str, at_ns: int, reads: Sequence[HistoryRead]
) -> Sequence[HistoryEntry]:
    """One party's history as ``reads`` ask for it (``model.read_history`` is the definition)."""
    limit = limits.HISTORY_ENTRIES_PER_PARTY_MAX
    taken = [
        repo.history(
            party_id,
            at_ns - read.oldest_s * NS_PER_S,
            at_ns - read.newest_s * NS_PER_S,
            limit,
            read.kinds,
            firsts_only=read.firsts_only,
        )
        for read in reads
    ]
    return taken[0] if len(taken) == 1 else merge_reads(taken, limit)


@dataclass
class DecisionEngine:
    """``decide(event)`` before money moves. ``sanctions`` is required: a deployment without
    a screen must say so explicitly (e.g. with a screen that never hits, in tests)."""

    database: Database
    sanctions: SanctionsScreen
    clock: Clock = field(default_factory=SystemClock)
    policy: DecisionPolicy = DEFAULT_POLICY
    rules: Mapping[str, RuleSpec] = field(default_factory=lambda: RULES)
    _configs: dict[tuple[str, int], RuleConfig] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def decide(self, event: MoneyEvent) -> Decision:
        """Decide and record (idempotent on ``event.event_id``)."""
        with self.database.write() as conn:
            return self.decide_within(conn, event)

    def decide_within(self, conn: Any, event: MoneyEvent) -> Decision:
        """:meth:`decide` inside a write transaction the caller opened (``Database.write``):
        the decision, its alerts, history and case commit with the caller's own rows (the
        payments code decides inside the transaction that moves the money)."""
        validate_event(event)
        fingerprint = event_fingerprint(event)
        repo = RulesRepository(conn)
        stored = repo.decision(event.event_id)
        if stored is not None:
            if stored.fingerprint != fingerprint:
                raise RuleEventIdReused(
                    f"event {event.event_id!r} was decided with a different body",
                    param="event_id",
                )
            return Decision(
                event_id=stored.event_id,
                outcome=stored.outcome,
                alerts=tuple(a for a in stored.alerts if not a.shadow),
                shadow_alerts=tuple(a for a in stored.alerts if a.shadow),
                decided_at_ns=stored.decided_at_ns,
                case_id=stored.case_id,
                replayed=True,
            )
        active = load_active(repo, self.rules, self._configs)
        # Only what the active rules will read: per party, their widest window and the kinds
        # they look at (a release reads no payment history; a busy merchant's payments are
        # read for fan-in alone, not for every rule and every event).
        history = {
            party_id: _read_history(repo, party_id, event.at_ns, reads)
            for party_id, reads in history_needs(event, active).items()
        }
        hits = self._screen(event, active)
        evaluation = evaluate(RuleInput(event, history, hits), active, self.policy)
        decided_at_ns = self.clock.now_ns()
        case_id = None
        if evaluation.outcome is Outcome.REVIEW:
            case_id = self._open_case(conn, event, evaluation.live, history, decided_at_ns)
        repo.insert_decision(
            event,
            fingerprint,
            evaluation.outcome,
            case_id,
            decided_at_ns,
            (*evaluation.live, *evaluation.shadow),
        )
        if records_history(event, evaluation.outcome):
            repo.append_history(history_entries(event))
        return Decision(
            event_id=event.event_id,
            outcome=evaluation.outcome,
            alerts=evaluation.live,
            shadow_alerts=evaluation.shadow,
            decided_at_ns=decided_at_ns,
            case_id=case_id,
        )

    def check(self, event: MoneyEvent) -> Decision:
        """Decide, then refuse what may not settle: :class:`PaymentBlocked` for ``block``
        (decline, move nothing), :class:`PaymentUnderReview` for ``review`` (hold the money;
        the case is open). The decision is recorded either way."""
        decision = self.decide(event)
        if decision.outcome is Outcome.BLOCK:
            rules = ", ".join(sorted({a.rule for a in decision.alerts}))
            raise PaymentBlocked(
                f"event {event.event_id!r} is blocked by {rules}", event_id=event.event_id
            )
        if decision.outcome is Outcome.REVIEW:
            raise PaymentUnderReview(
                f"event {event.event_id!r} is held for review in case {decision.case_id}",
                event_id=event.event_id,
                case_id=decision.case_id,
            )
        return decision

    def _screen(
        self, event: MoneyEvent, active: Sequence[ActiveRule]
    ) -> dict[str, Sequence[SanctionsHit]]:
        if not any(a.spec.needs_sanctions for a in active):
            return {}
        return {
            party.party_id: tuple(self.sanctions.screen(party.name, party.country, party.dob))
            for party in event.parties
            if party.name
        }

    def _open_case(
        self,
        conn: Any,
        event: MoneyEvent,
        live: Sequence[Alert],
        history: Mapping[str, Sequence[HistoryEntry]],
        at_ns: int,
    ) -> int:
        top = max(a.score_bp for a in live)
        subjects = [a.party_id for a in live if a.party_id] or [p.party_id for p in event.parties]
        repo = CaseRepository(conn)
        # A party already under review gets one case, not one per alert: this event joins
        # the case being worked on (while it has room) as one transaction item carrying its
        # alerts. The graph snapshot and separate alert items are the opening event's: a busy
        # party's follow-ups would otherwise triple the case file (and the cost of deciding).
        current = repo.open_case_about(subjects[:16])
        if current is not None:
            follow_up = NewEvidence(
                EvidenceKind.TRANSACTION,
                event.event_id,
                {
                    **_transaction_body(event, Outcome.REVIEW),
                    "alerts": [a.to_json() for a in live],
                },
            )
            try:
                return add_evidence_in(
                    repo, current, [follow_up], actor=SYSTEM_ACTOR, at_ns=at_ns
                ).case_id
            except CaseLimitReached:
                pass  # that case file is full (nothing was written): this event opens a new one
        evidence = [
            NewEvidence(
                EvidenceKind.TRANSACTION, event.event_id, _transaction_body(event, Outcome.REVIEW)
            ),
            *(
                NewEvidence(
                    EvidenceKind.ALERT,
                    f"{event.event_id}:{a.rule}:{i}",
                    {**a.to_json(), "event_id": event.event_id},
                )
                for i, a in enumerate(live)
            ),
            NewEvidence(EvidenceKind.GRAPH, f"graph:{event.event_id}", _graph(event, history)),
        ]
        rules = ", ".join(sorted({a.rule for a in live}))
        case = open_case_in(
            repo,
            title=f"Review of {event.kind.value} {event.event_id[:64]}: {rules}"[:200],
            risk=risk_from_score(top),
            subject_party_ids=subjects[:16],
            actor=SYSTEM_ACTOR,
            at_ns=at_ns,
            evidence=evidence,
            source_event_id=event.event_id,
        )
        return case.case_id


def builtin_params(rule: str) -> dict[str, ParamValue]:
    return _spec(RULES, rule).defaults()
