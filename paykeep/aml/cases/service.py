"""Case management use cases. One write transaction per use case (``Database.write()``);
the service never commits itself.

Other contexts open cases inside their own unit of work with :func:`open_case_in` (the rules
engine does, in the transaction that records a ``review`` decision), so that a decision and
its case exist together or not at all. The officers' commands have the same ``*_in`` form
(:func:`assign_in`, :func:`add_note_in`, :func:`act_in`) for the HTTP API, whose
``Idempotency-Key`` record must commit in the transaction of the command it answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from paykeep.aml.cases import limits, model
from paykeep.aml.cases.errors import (
    CaseEvidenceExists,
    CaseEvidenceNotFound,
    CaseInputInvalid,
    CaseLimitReached,
    CaseNotFound,
)
from paykeep.aml.cases.model import (
    Case,
    CaseAction,
    CaseEvent,
    CaseState,
    EvidenceKind,
    RiskLevel,
)
from paykeep.aml.cases.repository import (
    CaseRepository,
    Evidence,
    Note,
    case_evidence,
    case_notes,
)
from paykeep.clock import Clock, SystemClock
from paykeep.db import Database


@dataclass(frozen=True, slots=True)
class NewEvidence:
    kind: EvidenceKind
    ref: str
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CaseFile:
    """A case with everything attached to it: the trail, notes and evidence."""

    case: Case
    events: tuple[CaseEvent, ...]
    notes: tuple[Note, ...]
    evidence: tuple[Evidence, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.case.to_json(),
            "trail": [e.to_json() for e in self.events],
            "notes": [n.to_json() for n in self.notes],
            "evidence": [e.to_json() for e in self.evidence],
        }


def _evidence_body(body: Mapping[str, Any]) -> str:
    try:
        text = json.dumps(dict(body), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except (TypeError, ValueError) as exc:
        raise CaseInputInvalid(f"evidence is not JSON: {exc}", param="evidence") from None
    if len(text.encode("utf-8")) > limits.EVIDENCE_BYTES_MAX:
        raise CaseInputInvalid(
            f"evidence is larger than {limits.EVIDENCE_BYTES_MAX} bytes", param="evidence"
        )
    return text


def _attach(repo: CaseRepository, case: Case, item: NewEvidence, actor: str, at_ns: int) -> Case:
    body = _evidence_body(item.body)
    if repo.has_evidence(case.case_id, item.kind, item.ref):
        raise CaseEvidenceExists(
            f"{case.reference} already holds {item.kind.value} evidence {item.ref!r}",
            param="ref",
        )
    # Every item is added with a trail event, so a case whose trail is shorter than the limit
    # cannot be full: the count (which scans the case's evidence) is needed only near it.
    if (
        case.last_seq >= limits.EVIDENCE_PER_CASE_MAX
        and repo.count(case_evidence, case.case_id) >= limits.EVIDENCE_PER_CASE_MAX
    ):
        raise CaseLimitReached(f"{case.reference} holds {limits.EVIDENCE_PER_CASE_MAX} items")
    case, event = model.add_evidence(case, item.kind, item.ref, actor=actor, at_ns=at_ns)
    repo.add_evidence(case.case_id, at_ns, item.kind, item.ref, actor, body)
    repo.save(case, event)
    return case


def open_case_in(
    repo: CaseRepository,
    *,
    title: str,
    risk: RiskLevel,
    subject_party_ids: Iterable[str],
    actor: str,
    at_ns: int,
    evidence: Sequence[NewEvidence] = (),
    source_event_id: str | None = None,
) -> Case:
    """Open a case with its evidence inside the caller's transaction."""
    model.check_actor(actor)
    case_id = repo.new_case_id(at_ns)
    case, event = model.open_case(
        case_id,
        title=title,
        risk=risk,
        subject_party_ids=subject_party_ids,
        actor=actor,
        at_ns=at_ns,
        source_event_id=source_event_id,
    )
    repo.save(case, event)
    for item in evidence:
        case = _attach(repo, case, item, actor, at_ns)
    return case


def add_evidence_in(
    repo: CaseRepository,
    case: Case,
    evidence: Sequence[NewEvidence],
    *,
    actor: str,
    at_ns: int,
) -> Case:
    """Attach evidence to an existing case inside the caller's transaction."""
    model.check_actor(actor)
    for item in evidence:
        case = _attach(repo, case, item, actor, at_ns)
    return case


def load_for_update(repo: CaseRepository, case_id: int) -> Case:
    """The case, locked for the rest of the caller's transaction; ``case_not_found`` else."""
    case = repo.get(case_id, for_update=True)
    if case is None:
        raise CaseNotFound(f"no case {case_id}", param="case_id")
    return case


def assign_in(repo: CaseRepository, case_id: int, officer: str, *, actor: str, at_ns: int) -> Case:
    """Assign a case inside the caller's transaction."""
    model.check_actor(actor)
    model.check_actor(officer, "officer")
    case, event = model.assign(load_for_update(repo, case_id), officer, actor=actor, at_ns=at_ns)
    repo.save(case, event)
    return case


def add_note_in(repo: CaseRepository, case_id: int, body: str, *, actor: str, at_ns: int) -> Note:
    """Add a note inside the caller's transaction."""
    model.check_actor(actor)
    text = model.check_text(body, "note", limits.NOTE_LENGTH_MAX)
    case = load_for_update(repo, case_id)
    if repo.count(case_notes, case_id) >= limits.NOTES_PER_CASE_MAX:
        raise CaseLimitReached(f"{case.reference} holds {limits.NOTES_PER_CASE_MAX} notes")
    note_id = repo.add_note(case_id, at_ns, actor, text)
    case, event = model.add_note(case, note_id, actor=actor, at_ns=at_ns)
    repo.save(case, event)
    return Note(note_id, at_ns, actor, text)


def act_in(
    repo: CaseRepository,
    case_id: int,
    action: CaseAction,
    *,
    actor: str,
    at_ns: int,
    reason: str | None = None,
) -> tuple[Case, CaseEvent]:
    """Apply a state-machine action inside the caller's transaction (see
    :meth:`CaseService.act`)."""
    model.check_actor(actor)
    if reason is not None:
        model.check_text(reason, "reason", limits.REASON_LENGTH_MAX)
    case, event = model.act(
        load_for_update(repo, case_id), action, actor=actor, at_ns=at_ns, reason=reason
    )
    repo.save(case, event)
    return case, event


@dataclass
class CaseService:
    database: Database
    clock: Clock = field(default_factory=SystemClock)

    def open_case(
        self,
        *,
        title: str,
        risk: RiskLevel,
        subject_party_ids: Iterable[str],
        actor: str,
        evidence: Sequence[NewEvidence] = (),
    ) -> Case:
        with self.database.write() as conn:
            return open_case_in(
                CaseRepository(conn),
                title=title,
                risk=risk,
                subject_party_ids=subject_party_ids,
                actor=actor,
                at_ns=self.clock.now_ns(),
                evidence=evidence,
            )

    def get(self, case_id: int) -> CaseFile:
        with self.database.read() as conn:
            repo = CaseRepository(conn)
            case = repo.get(case_id)
            if case is None:
                raise CaseNotFound(f"no case {case_id}", param="case_id")
            return CaseFile(
                case=case,
                events=tuple(repo.events(case_id)),
                notes=tuple(repo.notes(case_id)),
                evidence=tuple(repo.evidence(case_id)),
            )

    def list(
        self,
        state: CaseState | None = None,
        *,
        assignee: str | None = None,
        after_id: int = 0,
        limit: int = limits.CASES_PAGE_DEFAULT,
        newest_first: bool = False,
    ) -> list[Case]:
        """Cases in ``state`` and assigned to ``assignee`` (None: any), oldest first from
        ``after_id`` up, or with ``newest_first`` from below ``after_id`` (0: the newest)."""
        if not 0 < limit <= limits.CASES_PAGE_MAX:
            raise CaseInputInvalid(
                f"limit must be within [1, {limits.CASES_PAGE_MAX}]", param="limit"
            )
        if assignee is not None:
            model.check_actor(assignee, "assignee")
        with self.database.read() as conn:
            return CaseRepository(conn).page(
                state, after_id, limit, assignee=assignee, newest_first=newest_first
            )

    def evidence_item(self, case_id: int, evidence_id: int) -> Evidence:
        """One piece of a case's evidence with its body (``case_not_found`` for an unknown
        case, ``case_evidence_not_found`` for an item that is not the case's)."""
        with self.database.read() as conn:
            repo = CaseRepository(conn)
            if repo.get(case_id) is None:
                raise CaseNotFound(f"no case {case_id}", param="case_id")
            item = repo.evidence_item(case_id, evidence_id)
        if item is None:
            raise CaseEvidenceNotFound(
                f"case {case_id} holds no evidence {evidence_id}", param="evidence_id"
            )
        return item

    def assign(self, case_id: int, officer: str, *, actor: str) -> Case:
        with self.database.write() as conn:
            return assign_in(
                CaseRepository(conn), case_id, officer, actor=actor, at_ns=self.clock.now_ns()
            )

    def add_note(self, case_id: int, body: str, *, actor: str) -> Note:
        with self.database.write() as conn:
            return add_note_in(
                CaseRepository(conn), case_id, body, actor=actor, at_ns=self.clock.now_ns()
            )

    def add_evidence(self, case_id: int, item: NewEvidence, *, actor: str) -> Case:
        model.check_actor(actor)
        with self.database.write() as conn:
            repo = CaseRepository(conn)
            return _attach(repo, load_for_update(repo, case_id), item, actor, self.clock.now_ns())

    def act(
        self, case_id: int, action: CaseAction, *, actor: str, reason: str | None = None
    ) -> tuple[Case, CaseEvent]:
        """Apply a state-machine action; returns the case and the trail event written (a
        ``close_requested`` event when a high-risk closure awaits its second officer)."""
        with self.database.write() as conn:
            return act_in(
                CaseRepository(conn),
                case_id,
                action,
                actor=actor,
                at_ns=self.clock.now_ns(),
                reason=reason,
            )
