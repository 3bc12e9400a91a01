"""The pure core of case management: the case state machine and its decision trail.

Every change to a case is a command applied by one pure function that returns the new case
and the one trail event recording it; the service writes both in the same transaction. So
the trail is complete by construction: replaying it (:func:`replay`) gives back the case.

State machine::

    open --investigate--> investigating --escalate--> escalated --report--> reported
                               |                          |
                               +---close_false_positive---+--> closed_false_positive

Closing a high-risk case takes two distinct compliance officers: the first
``close_false_positive`` records a request (the state does not change), a second one by a
different officer closes it. Any transition clears a pending request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Final

from paykeep.aml.cases import limits
from paykeep.aml.cases.errors import (
    CaseClosed,
    CaseIllegalTransition,
    CaseInputInvalid,
    CaseLimitReached,
    CaseSecondApproverRequired,
)

#: Suspicious activity report exports: goAML XML or JSON, and a human-readable HTML page.
REPORT_FORMATS: Final = ("goaml-xml", "goaml-json", "html")


class CaseState(Enum):
    OPEN = "open"
    INVESTIGATING = "investigating"
    ESCALATED = "escalated"
    REPORTED = "reported"
    CLOSED_FALSE_POSITIVE = "closed_false_positive"


FINAL_STATES: Final = frozenset({CaseState.REPORTED, CaseState.CLOSED_FALSE_POSITIVE})


class CaseAction(Enum):
    INVESTIGATE = "investigate"
    ESCALATE = "escalate"
    REPORT = "report"
    CLOSE_FALSE_POSITIVE = "close_false_positive"


TRANSITIONS: Final[Mapping[tuple[CaseState, CaseAction], CaseState]] = {
    (CaseState.OPEN, CaseAction.INVESTIGATE): CaseState.INVESTIGATING,
    (CaseState.INVESTIGATING, CaseAction.ESCALATE): CaseState.ESCALATED,
    (CaseState.INVESTIGATING, CaseAction.CLOSE_FALSE_POSITIVE): CaseState.CLOSED_FALSE_POSITIVE,
    (CaseState.ESCALATED, CaseAction.REPORT): CaseState.REPORTED,
    (CaseState.ESCALATED, CaseAction.CLOSE_FALSE_POSITIVE): CaseState.CLOSED_FALSE_POSITIVE,
}


def transition(state: CaseState, action: CaseAction) -> CaseState:
    """The state ``action`` leads to from ``state``; raises :class:`CaseIllegalTransition`."""
    target = TRANSITIONS.get((state, action))
    if target is None:
        allowed = sorted(a.value for (s, a) in TRANSITIONS if s is state)
        raise CaseIllegalTransition(
            f"cannot {action.value} a case that is {state.value}; allowed: "
            f"{', '.join(allowed) or 'nothing (final state)'}",
            param="action",
        )
    return target


class RiskLevel(Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


#: Alert scores (basis points) at or above which a case is high / medium risk.
HIGH_RISK_BP: Final = 8_000
MEDIUM_RISK_BP: Final = 5_000


def risk_from_score(score_bp: int) -> RiskLevel:
    if score_bp >= HIGH_RISK_BP:
        return RiskLevel.HIGH
    if score_bp >= MEDIUM_RISK_BP:
        return RiskLevel.MEDIUM
    return RiskLevel.LOW


class EvidenceKind(Enum):
    ALERT = "alert"
    TRANSACTION = "transaction"
    GRAPH = "graph"
    DOCUMENT = "document"


class CaseEventKind(Enum):
    OPENED = "opened"
    ASSIGNED = "assigned"
    NOTE_ADDED = "note_added"
    EVIDENCE_ADDED = "evidence_added"
    CLOSE_REQUESTED = "close_requested"
    TRANSITIONED = "transitioned"
    EXPORTED = "exported"


@dataclass(frozen=True, slots=True)
class Case:
    case_id: int
    title: str
    state: CaseState
    risk: RiskLevel
    subject_party_ids: tuple[str, ...]
    opened_at_ns: int
    updated_at_ns: int
    last_seq: int
    assignee: str | None = None
    close_requested_by: str | None = None
    source_event_id: str | None = None

    @property
    def reference(self) -> str:
        return f"CASE-{self.case_id:06d}"

    def to_json(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "reference": self.reference,
            "title": self.title,
            "state": self.state.value,
            "risk": self.risk.value,
            "assignee": self.assignee,
            "close_requested_by": self.close_requested_by,
            "subject_party_ids": list(self.subject_party_ids),
            "source_event_id": self.source_event_id,
            "opened_at_ns": self.opened_at_ns,
            "updated_at_ns": self.updated_at_ns,
            "last_seq": self.last_seq,
        }


@dataclass(frozen=True, slots=True)
class CaseEvent:
    """One line of the decision trail (append-only; ``seq`` is dense from 1 per case)."""

    case_id: int
    seq: int
    at_ns: int
    actor: str
    kind: CaseEventKind
    from_state: CaseState | None = None
    to_state: CaseState | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at_ns": self.at_ns,
            "actor": self.actor,
            "kind": self.kind.value,
            "from_state": self.from_state.value if self.from_state else None,
            "to_state": self.to_state.value if self.to_state else None,
            "detail": dict(self.detail),
        }


_ACTOR: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:+-]*$")


def check_actor(actor: object, param: str = "actor") -> str:
    if (
        not isinstance(actor, str)
        or len(actor) > limits.ACTOR_LENGTH_MAX
        or not _ACTOR.match(actor)
    ):
        raise CaseInputInvalid(
            f"{param} must be 1-{limits.ACTOR_LENGTH_MAX} of letters, digits and _.@:+- "
            f"(starting with a letter or digit), not {actor!r}",
            param=param,
        )
    return actor


def storable(text: str) -> bool:
    """Text both databases store as is: valid UTF-8 (no lone surrogates) and no NUL, which
    PostgreSQL text refuses."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(value: object, param: str, length_max: int) -> str:
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > length_max
        or not storable(value)
    ):
        raise CaseInputInvalid(
            f"{param} must be 1-{length_max} characters of valid text", param=param
        )
    return value.strip()


def _next(
    case: Case, at_ns: int, actor: str, kind: CaseEventKind, **changes: Any
) -> tuple[Case, CaseEvent]:
    if case.last_seq >= limits.EVENTS_PER_CASE_MAX:
        raise CaseLimitReached(f"{case.reference} has {case.last_seq} trail events already")
    detail = changes.pop("detail", {})
    from_state = changes.pop("from_state", None)
    to_state = changes.pop("to_state", None)
    seq = case.last_seq + 1
    updated = replace(case, last_seq=seq, updated_at_ns=max(case.updated_at_ns, at_ns), **changes)
    return updated, CaseEvent(
        case_id=case.case_id,
        seq=seq,
        at_ns=at_ns,
        actor=actor,
        kind=kind,
        from_state=from_state,
        to_state=to_state,
        detail=detail,
    )


def open_case(
    case_id: int,
    *,
    title: str,
    risk: RiskLevel,
    subject_party_ids: Iterable[str],
    actor: str,
    at_ns: int,
    source_event_id: str | None = None,
) -> tuple[Case, CaseEvent]:
    check_actor(actor)
    title = check_text(title, "title", limits.TITLE_LENGTH_MAX)
    subjects = tuple(dict.fromkeys(subject_party_ids))
    if len(subjects) > limits.SUBJECTS_PER_CASE_MAX:
        raise CaseInputInvalid(
            f"a case names at most {limits.SUBJECTS_PER_CASE_MAX} subjects", param="subjects"
        )
    blank = Case(
        case_id=case_id,
        title=title,
        state=CaseState.OPEN,
        risk=risk,
        subject_party_ids=subjects,
        opened_at_ns=at_ns,
        updated_at_ns=at_ns,
        last_seq=0,
        source_event_id=source_event_id,
    )
    return _next(
        blank,
        at_ns,
        actor,
        CaseEventKind.OPENED,
        to_state=CaseState.OPEN,
        detail={
            "title": title,
            "risk": risk.value,
            "subject_party_ids": list(subjects),
            "source_event_id": source_event_id,
        },
    )


def assign(case: Case, officer: str, *, actor: str, at_ns: int) -> tuple[Case, CaseEvent]:
    check_actor(actor)
    check_actor(officer, "officer")
    if case.state in FINAL_STATES:
        raise CaseClosed(f"{case.reference} is {case.state.value}; it cannot be reassigned")
    return _next(
        case,
        at_ns,
        actor,
        CaseEventKind.ASSIGNED,
        assignee=officer,
        detail={"from": case.assignee, "to": officer},
    )


def add_note(case: Case, note_id: int, *, actor: str, at_ns: int) -> tuple[Case, CaseEvent]:
    """Notes may be added in any state (a closed case may still be annotated)."""
    check_actor(actor)
    return _next(case, at_ns, actor, CaseEventKind.NOTE_ADDED, detail={"note_id": note_id})


def add_evidence(
    case: Case, kind: EvidenceKind, ref: str, *, actor: str, at_ns: int
) -> tuple[Case, CaseEvent]:
    check_actor(actor)
    check_text(ref, "ref", limits.EVIDENCE_REF_LENGTH_MAX)
    if case.state in FINAL_STATES:
        raise CaseClosed(f"{case.reference} is {case.state.value}; it takes no new evidence")
    return _next(
        case, at_ns, actor, CaseEventKind.EVIDENCE_ADDED, detail={"kind": kind.value, "ref": ref}
    )


def record_export(
    case: Case, report_format: str, *, actor: str, at_ns: int
) -> tuple[Case, CaseEvent]:
    check_actor(actor)
    return _next(case, at_ns, actor, CaseEventKind.EXPORTED, detail={"format": report_format})


def act(
    case: Case, action: CaseAction, *, actor: str, at_ns: int, reason: str | None = None
) -> tuple[Case, CaseEvent]:
    """Apply a state-machine action. Checks, in order: shape (actor, reason), state (the
    transition table), then the second-approver rule for closing a high-risk case."""
    check_actor(actor)
    if reason is not None:
        reason = check_text(reason, "reason", limits.REASON_LENGTH_MAX)
    target = transition(case.state, action)
    detail: dict[str, Any] = {"action": action.value, "reason": reason}
    if action is CaseAction.CLOSE_FALSE_POSITIVE and case.risk is RiskLevel.HIGH:
        if case.close_requested_by is None:
            return _next(
                case,
                at_ns,
                actor,
                CaseEventKind.CLOSE_REQUESTED,
                close_requested_by=actor,
                detail=detail,
            )
        if case.close_requested_by == actor:
            raise CaseSecondApproverRequired(
                f"{case.reference} is high risk: {actor} asked for the closure, a different "
                "compliance officer must approve it",
                param="actor",
            )
        detail["requested_by"] = case.close_requested_by
        detail["approved_by"] = actor
    return _next(
        case,
        at_ns,
        actor,
        CaseEventKind.TRANSITIONED,
        state=target,
        close_requested_by=None,
        from_state=case.state,
        to_state=target,
        detail=detail,
    )


def replay(events: Iterable[CaseEvent]) -> tuple[CaseState, str | None, str | None, int]:
    """Fold a trail into ``(state, assignee, close_requested_by, last_seq)``, checking that it
    is dense and that every transition is in the table. The service's stored case must equal
    this fold of its stored trail."""
    state: CaseState | None = None
    assignee: str | None = None
    requested: str | None = None
    seq = 0
    for event in events:
        assert event.seq == seq + 1, f"trail gap before seq {event.seq}"
        seq = event.seq
        if event.kind is CaseEventKind.OPENED:
            assert state is None
            state = CaseState.OPEN
            continue
        assert state is not None, "trail does not start with 'opened'"
        if event.kind is CaseEventKind.ASSIGNED:
            assignee = event.detail["to"]
        elif event.kind is CaseEventKind.CLOSE_REQUESTED:
            requested = event.actor
        elif event.kind is CaseEventKind.TRANSITIONED:
            assert event.from_state is state
            assert event.to_state is transition(state, CaseAction(event.detail["action"]))
            state = event.to_state
            requested = None
    assert state is not None
    return state, assignee, requested, seq
