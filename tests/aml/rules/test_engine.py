"""The decision engine on both databases: recording, history, review cases, shadow mode,
configuration versions, idempotency."""

from __future__ import annotations

import random

import pytest
import sqlalchemy as sa

from paykeep.aml.cases.model import CaseAction, CaseState, EvidenceKind, RiskLevel
from paykeep.aml.cases.service import CaseService
from paykeep.aml.rules import limits
from paykeep.aml.rules.errors import (
    PaymentBlocked,
    PaymentUnderReview,
    RuleConfigInvalid,
    RuleEventIdReused,
    RuleEventInvalid,
    RuleNoShadow,
    RuleNotFound,
)
from paykeep.aml.rules.model import (
    NS_PER_S,
    Direction,
    HistoryEntry,
    HistoryRead,
    Outcome,
    SanctionsHit,
    firsts,
    read_history,
)
from paykeep.aml.rules.repository import RulesRepository
from paykeep.aml.rules.service import DecisionEngine, RulesService, _read_history
from paykeep.clock import FakeClock
from paykeep.db import Database
from tests.aml.rules.helpers import DAY, T0, FakeSanctions, K, ev


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def sanctions() -> FakeSanctions:
    return FakeSanctions()


@pytest.fixture
def engine(database: Database, sanctions: FakeSanctions, clock: FakeClock) -> DecisionEngine:
    return DecisionEngine(database, sanctions, clock)


@pytest.fixture
def rules(database: Database, clock: FakeClock) -> RulesService:
    return RulesService(database, clock)


def _history(database: Database, party_id: str) -> list[str]:
    with database.read() as conn:
        entries = RulesRepository(conn).history(party_id, 0, 2**62, 1_000)
    return [e.event_id for e in entries]


def test_allow_records_decision_and_history(engine: DecisionEngine, database: Database) -> None:
    event = ev(K.PAYMENT, 1_000, event_id="pay-1")
    decision = engine.check(event)
    assert decision.outcome is Outcome.ALLOW and decision.alerts == () and not decision.replayed
    assert _history(database, "buyer-1") == ["pay-1"]
    assert _history(database, "merchant-1") == ["pay-1"]
    again = engine.decide(event)
    assert again.replayed and again.outcome is Outcome.ALLOW
    assert _history(database, "buyer-1") == ["pay-1"]  # a replay records nothing new
    changed = ev(K.PAYMENT, 1_001, event_id="pay-1")
    with pytest.raises(RuleEventIdReused):
        engine.decide(changed)
    with pytest.raises(RuleEventInvalid):
        engine.decide(ev(K.PAYMENT, 1_000, payee="buyer-1"))


def test_history_from_earlier_decisions_feeds_the_rules(
    engine: DecisionEngine, rules: RulesService
) -> None:
    rules.set_config("velocity", {"count_max": 2}, actor="alice")
    outcomes = [engine.decide(ev(K.PAYMENT, 1_000, i)).outcome for i in range(3)]
    assert outcomes == [Outcome.ALLOW, Outcome.ALLOW, Outcome.REVIEW]


def test_review_opens_a_case_with_the_evidence(
    engine: DecisionEngine, database: Database, clock: FakeClock
) -> None:
    engine.decide(ev(K.PAYMENT, 5_000, -60, payer="buyer-1"))
    event = ev(K.PAYMENT, 250_000, payer_age_s=3600, event_id="big-1")
    with pytest.raises(PaymentUnderReview) as caught:
        engine.check(event)
    case_id = caught.value.case_id
    assert case_id is not None
    case_file = CaseService(database, clock).get(case_id)
    case = case_file.case
    assert case.state is CaseState.OPEN and case.risk is RiskLevel.MEDIUM
    assert case.source_event_id == "big-1" and case.subject_party_ids == ("buyer-1",)
    kinds = [(e.kind, e.ref) for e in case_file.evidence]
    assert (EvidenceKind.TRANSACTION, "big-1") in kinds
    alerts = [e.body for e in case_file.evidence if e.kind is EvidenceKind.ALERT]
    assert [a["rule"] for a in alerts] == ["new_account_high_value"]
    assert alerts[0]["figures"]["age_s"] == 3600 and alerts[0]["version"] == 1
    (graph,) = [e.body for e in case_file.evidence if e.kind is EvidenceKind.GRAPH]
    assert {
        "from": "buyer-1",
        "to": "merchant-1",
        "currency": "EUR",
        "count": 2,
        "amount_minor": 255_000,
    } in graph["edges"]
    # The trail records the opening and every piece of evidence, by the rules engine.
    assert [e.kind.value for e in case_file.events] == ["opened"] + ["evidence_added"] * 3
    assert {e.actor for e in case_file.events} == {"paykeep:rules"}
    # The replay reports the same case; the money is still held.
    with pytest.raises(PaymentUnderReview) as again:
        engine.check(event)
    assert again.value.case_id == case_id


def test_block_declines_and_moves_nothing(
    engine: DecisionEngine, database: Database, sanctions: FakeSanctions
) -> None:
    sanctions.hits["Ivan Sanctioned"] = [SanctionsHit("ofac-42", 0.95, "exact name")]
    event = ev(K.PAYMENT, 1_000, payer_name="Ivan Sanctioned", event_id="pay-x")
    with pytest.raises(PaymentBlocked) as caught:
        engine.check(event)
    assert caught.value.code == "rule_event_blocked"
    assert sanctions.calls == [("Ivan Sanctioned", None, None)]
    assert _history(database, "buyer-1") == []  # no money moved: no history
    replay = engine.decide(event)
    assert replay.replayed and replay.outcome is Outcome.BLOCK and replay.case_id is None
    assert replay.alerts[0].figures["entity_id"] == "ofac-42"
    # A weaker hit only asks for review.
    sanctions.hits["Ivana Sanction"] = [SanctionsHit("ofac-43", 0.85, "close name")]
    assert (
        engine.decide(ev(K.PAYMENT, 1_000, payer="b2", payer_name="Ivana Sanction")).outcome
        is Outcome.REVIEW
    )


def test_card_testing_blocks_and_keeps_declines_in_history(
    engine: DecisionEngine, database: Database
) -> None:
    outcomes = [
        engine.decide(ev(K.CARD_AUTHORISATION, 100, i, payer="card-9")).outcome for i in range(6)
    ]
    assert outcomes == [Outcome.ALLOW] * 4 + [Outcome.BLOCK] * 2
    assert len(_history(database, "card-9")) == 6


def test_shadow_version_is_recorded_but_never_decides(
    engine: DecisionEngine, rules: RulesService, database: Database
) -> None:
    shadow = rules.set_config(
        "velocity", {"count_max": 1, "score_bp": 10_000}, actor="alice", shadow=True
    )
    assert shadow.version == 2
    decisions = [engine.decide(ev(K.PAYMENT, 1_000, i)) for i in range(3)]
    assert [d.outcome for d in decisions] == [Outcome.ALLOW] * 3
    assert decisions[0].shadow_alerts == ()
    assert decisions[2].alerts == ()
    assert {(a.rule, a.version, a.shadow) for a in decisions[2].shadow_alerts} == {
        ("velocity", 2, True)
    }
    replay = engine.decide(ev(K.PAYMENT, 1_000, 2, event_id=decisions[2].event_id))
    assert replay.replayed and replay.outcome is Outcome.ALLOW
    assert replay.shadow_alerts == decisions[2].shadow_alerts
    with database.read() as conn:
        shadow_rows = conn.execute(
            sa.text("SELECT count(*) FROM aml_alerts WHERE shadow = :t"), {"t": True}
        ).scalar_one()
    assert shadow_rows == 2  # the payer's, on the second and third decisions
    # Promoted, the same version now decides.
    rules.promote_shadow("velocity", actor="bob")
    assert engine.decide(ev(K.PAYMENT, 1_000, 4)).outcome is Outcome.BLOCK


def test_config_versions_are_immutable_and_complete(
    rules: RulesService, database: Database, clock: FakeClock
) -> None:
    assert rules.show("velocity").live.version == 1  # built-in, not stored yet
    v2 = rules.set_config("velocity", {"count_max": "7"}, actor="alice", note="tighter")
    clock.advance(1)
    v3 = rules.set_config("velocity", {"window_s": 60}, actor="bob")
    v4 = rules.set_config("velocity", {"count_max": 9}, actor="carol", shadow=True)
    status = rules.show("velocity")
    assert [v.version for v in status.versions] == [1, 2, 3, 4]
    assert status.versions[0].created_by == "paykeep"
    assert (v2.params["count_max"], v3.params["count_max"], v3.params["window_s"]) == (7, 7, 60)
    assert v4.params["window_s"] == 60  # based on the live version
    assert status.live.version == 3 and status.shadow is not None and status.shadow.version == 4
    assert rules.drop_shadow("velocity", actor="bob").version == 3
    with pytest.raises(RuleNoShadow):
        rules.promote_shadow("velocity", actor="bob")
    with pytest.raises(RuleNotFound):
        rules.set_config("nope", {"x": 1}, actor="alice")
    with pytest.raises(RuleConfigInvalid):
        rules.set_config("velocity", {"count_max": -1}, actor="alice")
    assert [v.version for v in rules.show("velocity").versions] == [1, 2, 3, 4]
    # Stored versions cannot be edited or deleted, by any code path.
    for statement in ("UPDATE aml_rule_configs SET params = '{}'", "DELETE FROM aml_rule_configs"):
        with pytest.raises(sa.exc.DatabaseError), database.write() as conn:
            conn.execute(sa.text(statement))
    assert rules.show("velocity").versions[1].params["count_max"] == 7


def test_decision_records_the_version_that_fired(
    engine: DecisionEngine, rules: RulesService
) -> None:
    rules.set_config("new_account_high_value", {"amount_min_minor": 100}, actor="alice")
    decision = engine.decide(ev(K.PAYMENT, 100, payer_age_s=1))
    assert [(a.rule, a.version) for a in decision.alerts] == [("new_account_high_value", 2)]
    assert decision.outcome is Outcome.REVIEW


def test_history_is_per_party_and_bounded_in_time(engine: DecisionEngine) -> None:
    # A top-up 40 days ago is outside every window; only recent inflow counts for pass-through.
    engine.decide(ev(K.TOP_UP, 500_000, -40 * DAY, payer=None, payee="m1"))
    out = ev(K.PAYOUT, 500_000, payer="m1", payee=None)
    assert engine.decide(out).outcome is Outcome.ALLOW
    engine.decide(ev(K.TOP_UP, 500_000, 60, payer=None, payee="m2"))
    assert (
        engine.decide(ev(K.PAYOUT, 480_000, 120, payer="m2", payee=None)).outcome is Outcome.REVIEW
    )


def test_a_party_under_review_has_one_case_until_it_is_closed(
    engine: DecisionEngine, database: Database, clock: FakeClock
) -> None:
    cases = CaseService(database, clock)
    first = engine.decide(ev(K.PAYMENT, 250_000, payer_age_s=3600, event_id="big-1"))
    second = engine.decide(ev(K.PAYMENT, 260_000, 60, payer_age_s=3660, event_id="big-2"))
    assert first.outcome is second.outcome is Outcome.REVIEW
    assert first.case_id is not None and second.case_id == first.case_id
    refs = {e.ref for e in cases.get(first.case_id).evidence if e.kind is EvidenceKind.TRANSACTION}
    assert refs == {"big-1", "big-2"}
    # Closed as a false positive, the next review of that party opens a new case.
    cases.act(first.case_id, CaseAction.INVESTIGATE, actor="officer:ann")
    cases.act(first.case_id, CaseAction.CLOSE_FALSE_POSITIVE, actor="officer:ann", reason="ok")
    third = engine.decide(ev(K.PAYMENT, 270_000, 120, payer_age_s=3720, event_id="big-3"))
    assert third.case_id is not None and third.case_id != first.case_id


def test_the_database_reads_the_same_firsts_as_the_model(database: Database) -> None:
    """``history(..., firsts_only=True)`` groups in SQL (MIN() on SQLite, DISTINCT ON on
    PostgreSQL); ``model.firsts`` is the definition. Random entries with repeated keys, equal
    times and unknown counterparties and opening times; every window and limit agrees."""
    rng = random.Random("firsts")
    entries: list[tuple[str, HistoryEntry]] = []
    for n in range(600):
        kind = rng.choice((K.PAYMENT, K.PAYMENT, K.REFUND, K.TOP_UP))
        entries.append(
            (
                rng.choice(("merchant-1", "merchant-2")),
                HistoryEntry(
                    T0 + rng.randrange(0, 50) * NS_PER_S,
                    f"fe-{n}",
                    kind,
                    rng.choice(list(Direction)),
                    rng.choice((100, 200)),
                    "EUR",
                    rng.choice(("buyer-1", "buyer-2", "buyer-3", None)),
                    rng.choice((T0 - DAY * NS_PER_S, T0, None)),
                ),
            )
        )
    with database.write() as conn:
        RulesRepository(conn).append_history(entries)

    def key_and_time(e: HistoryEntry) -> tuple[object, ...]:
        # Among entries of one key at the same earliest time, either may stand for the key.
        return (
            e.at_ns,
            e.kind.value,
            e.direction.value,
            e.counterparty_id or "",
            -1 if e.counterparty_opened_at_ns is None else e.counterparty_opened_at_ns,
        )

    checked = 0
    for party in ("merchant-1", "merchant-2"):
        mine = sorted((e for p, e in entries if p == party), key=lambda e: e.at_ns)
        for since_s, until_s, limit, kinds in (
            (-1, 50, 1_000, None),
            (10, 30, 1_000, frozenset({K.PAYMENT})),
            (-1, 50, 5, frozenset({K.PAYMENT, K.REFUND})),
            (20, 21, 1_000, None),
        ):
            since, until = T0 + since_s * NS_PER_S, T0 + until_s * NS_PER_S
            window = [
                e for e in mine if since < e.at_ns <= until and (kinds is None or e.kind in kinds)
            ]
            expected = firsts(window)[-limit:]
            with database.read() as conn:
                read = RulesRepository(conn).history(
                    party, since, until, limit, kinds, firsts_only=True
                )
            assert sorted(map(key_and_time, read)) == sorted(map(key_and_time, expected))
            assert [e.at_ns for e in read] == [e.at_ns for e in expected]  # oldest first
            checked += len(expected)
    assert checked > 50  # not vacuous: many keys per window


def test_the_database_reads_a_partys_bands_as_the_model(database: Database) -> None:
    """A party's reads (a whole band, firsts bands beyond it, other kinds beside) come back
    from the database as ``model.read_history`` takes them from the same entries: merged
    oldest first, each entry once."""
    rng = random.Random("bands")
    entries = [
        (
            "merchant-1",
            HistoryEntry(
                T0 + rng.randrange(0, 60) * NS_PER_S,
                f"be-{n}",
                rng.choice((K.PAYMENT, K.PAYMENT, K.CARD_AUTHORISATION, K.TOP_UP)),
                rng.choice(list(Direction)),
                100,
                "EUR",
                rng.choice(("buyer-1", "buyer-2", "buyer-3")),
                T0,
            ),
        )
        for n in range(400)
    ]
    with database.write() as conn:
        RulesRepository(conn).append_history(entries)
    mine = sorted((e for _p, e in entries), key=lambda e: e.at_ns)
    at = T0 + 60 * NS_PER_S
    payments, cards = frozenset({K.PAYMENT}), frozenset({K.CARD_AUTHORISATION})
    plans = (
        (HistoryRead(cards, 0, 10), HistoryRead(payments, 0, 60, firsts_only=True)),
        (
            HistoryRead(payments | cards, 0, 15),
            HistoryRead(payments, 15, 40, firsts_only=True),
            HistoryRead(payments, 40, 60, firsts_only=True),
        ),
    )
    for reads in plans:
        expected = read_history(mine, at, reads, limits.HISTORY_ENTRIES_PER_PARTY_MAX)
        with database.read() as conn:
            read = _read_history(RulesRepository(conn), "merchant-1", at, reads)
        # Among a key's entries at its earliest time, either may stand for the key.
        assert sorted(
            (e.at_ns, e.kind.value, e.direction.value, e.counterparty_id) for e in read
        ) == sorted((e.at_ns, e.kind.value, e.direction.value, e.counterparty_id) for e in expected)
        assert [e.at_ns for e in read] == sorted(e.at_ns for e in read)  # oldest first
        assert {e.kind for e in read} == {K.PAYMENT, K.CARD_AUTHORISATION}  # not vacuous
