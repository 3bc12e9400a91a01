"""The case state machine against an independent reference, on both databases.

A Hypothesis state machine drives one case through random commands by random officers and
checks after every step: no illegal transition is accepted, a high-risk case is closed only
by two distinct officers, the stored case equals the fold of its trail, and the trail only
ever grows (each accepted command appends exactly one event; a refused one appends none).
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from paykeep.aml.cases.errors import (
    CaseClosed,
    CaseIllegalTransition,
    CaseInputInvalid,
    CaseNotFound,
    CaseSecondApproverRequired,
)
from paykeep.aml.cases.model import (
    TRANSITIONS,
    CaseAction,
    CaseEventKind,
    CaseState,
    EvidenceKind,
    RiskLevel,
    replay,
    transition,
)
from paykeep.aml.cases.service import CaseService, NewEvidence
from paykeep.clock import FakeClock
from paykeep.db import Database
from paykeep.errors import PaykeepError

S, A = CaseState, CaseAction
# The reference table, written out independently of the code's.
REFERENCE = {
    (S.OPEN, A.INVESTIGATE): S.INVESTIGATING,
    (S.INVESTIGATING, A.ESCALATE): S.ESCALATED,
    (S.INVESTIGATING, A.CLOSE_FALSE_POSITIVE): S.CLOSED_FALSE_POSITIVE,
    (S.ESCALATED, A.REPORT): S.REPORTED,
    (S.ESCALATED, A.CLOSE_FALSE_POSITIVE): S.CLOSED_FALSE_POSITIVE,
}
FINAL = {S.REPORTED, S.CLOSED_FALSE_POSITIVE}
OFFICERS = ["alice", "bob"]


@pytest.mark.parametrize("state", list(CaseState))
@pytest.mark.parametrize("action", list(CaseAction))
def test_transition_table_is_exactly_the_reference(state: CaseState, action: CaseAction) -> None:
    expected = REFERENCE.get((state, action))
    if expected is None:
        with pytest.raises(CaseIllegalTransition):
            transition(state, action)
    else:
        assert transition(state, action) is expected
    assert dict(TRANSITIONS) == REFERENCE


class CaseMachine(RuleBasedStateMachine):
    def __init__(self, service: CaseService, clock: FakeClock) -> None:
        super().__init__()
        self.service = service
        self.clock = clock
        self.case_id = 0
        self.state = S.OPEN
        self.risk = RiskLevel.LOW
        self.assignee: str | None = None
        self.requested: str | None = None
        self.trail: list[dict[str, Any]] = []
        self.expected_events = 0
        self.evidence_refs = 0

    def _refused(self, error: type[PaykeepError], call: Any) -> None:
        with pytest.raises(error):
            call()

    @initialize(
        risk=st.sampled_from([RiskLevel.HIGH, RiskLevel.HIGH, RiskLevel.MEDIUM, RiskLevel.LOW])
    )
    def open(self, risk: RiskLevel) -> None:
        case = self.service.open_case(
            title="Velocity on buyer-1",
            risk=risk,
            subject_party_ids=["buyer-1"],
            actor="paykeep:rules",
            evidence=[NewEvidence(EvidenceKind.TRANSACTION, "ev-1", {"event_id": "ev-1"})],
        )
        self.case_id, self.risk = case.case_id, risk
        self.expected_events = 2

    @rule(action=st.sampled_from(list(CaseAction)), actor=st.sampled_from(OFFICERS))
    def act(self, action: CaseAction, actor: str) -> None:
        self.clock.advance(1)
        target = REFERENCE.get((self.state, action))
        call = lambda: self.service.act(self.case_id, action, actor=actor, reason="checked")  # noqa: E731
        if target is None:
            self._refused(CaseIllegalTransition, call)
            return
        high_close = action is A.CLOSE_FALSE_POSITIVE and self.risk is RiskLevel.HIGH
        if high_close and self.requested == actor:
            self._refused(CaseSecondApproverRequired, call)
            return
        case, event = call()
        self.expected_events += 1
        if high_close and self.requested is None:
            assert event.kind is CaseEventKind.CLOSE_REQUESTED and case.state is self.state
            self.requested = actor
            return
        assert event.kind is CaseEventKind.TRANSITIONED and case.state is target
        if high_close:
            assert event.detail["requested_by"] == self.requested != actor
            assert event.detail["approved_by"] == actor
        self.state, self.requested = target, None

    @precondition(lambda self: self.requested is not None)
    @rule()
    def requester_closes_again(self) -> None:
        assert self.requested is not None
        self.act(A.CLOSE_FALSE_POSITIVE, self.requested)

    @precondition(lambda self: self.state not in FINAL)
    @rule(actor=st.sampled_from(OFFICERS))
    def advance(self, actor: str) -> None:
        # Bias towards legal moves so that runs reach the later states often.
        legal = sorted((a for (s, a) in REFERENCE if s is self.state), key=lambda a: a.value)
        self.act(legal[len(self.trail) % len(legal)], actor)

    @rule(officer=st.sampled_from(OFFICERS), actor=st.sampled_from(OFFICERS))
    def assign(self, officer: str, actor: str) -> None:
        call = lambda: self.service.assign(self.case_id, officer, actor=actor)  # noqa: E731
        if self.state in FINAL:
            self._refused(CaseClosed, call)
            return
        assert call().assignee == officer
        self.assignee = officer
        self.expected_events += 1

    @rule(actor=st.sampled_from(OFFICERS), text=st.text(min_size=0, max_size=20))
    def note(self, actor: str, text: str) -> None:
        call = lambda: self.service.add_note(self.case_id, text, actor=actor)  # noqa: E731
        if not text.strip() or "\x00" in text:
            self._refused(CaseInputInvalid, call)
            return
        assert call().body == text.strip()
        self.expected_events += 1

    @rule(actor=st.sampled_from(OFFICERS))
    def evidence(self, actor: str) -> None:
        self.evidence_refs += 1
        item = NewEvidence(EvidenceKind.DOCUMENT, f"doc-{self.evidence_refs}", {"n": 1})
        call = lambda: self.service.add_evidence(self.case_id, item, actor=actor)  # noqa: E731
        if self.state in FINAL:
            self._refused(CaseClosed, call)
            return
        call()
        self.expected_events += 1

    @rule(actor=st.sampled_from(["", "has space", "x" * 65, "nul\x00", "\ud800"]))
    def bad_actor(self, actor: str) -> None:
        self._refused(
            CaseInputInvalid, lambda: self.service.act(self.case_id, A.INVESTIGATE, actor=actor)
        )

    @invariant()
    def stored_case_is_the_fold_of_a_growing_trail(self) -> None:
        if not self.case_id:
            return
        case_file = self.service.get(self.case_id)
        case = case_file.case
        assert (case.state, case.assignee, case.close_requested_by) == (
            self.state,
            self.assignee,
            self.requested,
        )
        assert replay(case_file.events) == (
            case.state,
            case.assignee,
            case.close_requested_by,
            case.last_seq,
        )
        trail = [e.to_json() for e in case_file.events]
        assert len(trail) == self.expected_events == case.last_seq
        assert trail[: len(self.trail)] == self.trail  # append-only: history never rewritten
        self.trail = trail
        closes = [e for e in case_file.events if e.to_state is S.CLOSED_FALSE_POSITIVE]
        if closes and case.risk is RiskLevel.HIGH:
            (close,) = closes
            assert close.detail["requested_by"] != close.detail["approved_by"]


def test_case_state_machine(database: Database) -> None:
    clock = FakeClock()
    service = CaseService(database, clock)
    run_state_machine_as_test(
        lambda: CaseMachine(service, clock),
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )


def test_high_risk_close_needs_two_distinct_officers(database: Database) -> None:
    service = CaseService(database, FakeClock())
    case = service.open_case(title="t", risk=RiskLevel.HIGH, subject_party_ids=["p"], actor="alice")
    service.act(case.case_id, A.INVESTIGATE, actor="alice")
    case, event = service.act(case.case_id, A.CLOSE_FALSE_POSITIVE, actor="alice")
    assert event.kind is CaseEventKind.CLOSE_REQUESTED and case.state is S.INVESTIGATING
    # Any transition withdraws a pending request: after escalation alice only asks again.
    case, _ = service.act(case.case_id, A.ESCALATE, actor="bob")
    assert case.close_requested_by is None
    case, event = service.act(case.case_id, A.CLOSE_FALSE_POSITIVE, actor="alice")
    assert event.kind is CaseEventKind.CLOSE_REQUESTED and case.state is S.ESCALATED
    with pytest.raises(CaseSecondApproverRequired) as caught:
        service.act(case.case_id, A.CLOSE_FALSE_POSITIVE, actor="alice")
    assert caught.value.code == "case_second_approver_required"
    case, event = service.act(case.case_id, A.CLOSE_FALSE_POSITIVE, actor="bob")
    assert case.state is S.CLOSED_FALSE_POSITIVE
    assert (event.detail["requested_by"], event.detail["approved_by"]) == ("alice", "bob")
    # A low-risk case closes with one officer.
    low = service.open_case(title="t", risk=RiskLevel.LOW, subject_party_ids=[], actor="alice")
    service.act(low.case_id, A.INVESTIGATE, actor="alice")
    closed, _ = service.act(low.case_id, A.CLOSE_FALSE_POSITIVE, actor="alice")
    assert closed.state is S.CLOSED_FALSE_POSITIVE
    with pytest.raises(CaseNotFound):
        service.act(10**9, A.INVESTIGATE, actor="alice")


def test_trail_rows_cannot_be_changed(database: Database) -> None:
    service = CaseService(database, FakeClock())
    case = service.open_case(title="t", risk=RiskLevel.LOW, subject_party_ids=[], actor="alice")
    service.add_note(case.case_id, "first look", actor="alice")
    for statement in (
        "UPDATE aml_case_events SET actor = 'mallory'",
        "DELETE FROM aml_case_events",
        "UPDATE aml_case_notes SET body = 'x'",
        "DELETE FROM aml_case_notes",
    ):
        with pytest.raises(sa.exc.DatabaseError), database.write() as conn:
            conn.execute(sa.text(statement))
    assert [e.actor for e in service.get(case.case_id).events] == ["alice", "alice"]
