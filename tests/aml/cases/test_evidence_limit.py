"""A case file holds at most ``EVIDENCE_PER_CASE_MAX`` items: the next is refused with a typed
error and writes nothing. (The limit is lowered for the test; the code reads it per call.)"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from paykeep.aml.cases import limits
from paykeep.aml.cases.errors import CaseLimitReached
from paykeep.aml.cases.model import CaseAction, EvidenceKind, RiskLevel
from paykeep.aml.cases.service import CaseService, NewEvidence
from paykeep.clock import FakeClock
from paykeep.db import Database

LIMIT = 3


def _count(database: Database, table: str, case_id: int) -> int:
    with database.read() as conn:
        query = sa.text(f"SELECT count(*) FROM {table} WHERE case_id = :c")
        return int(conn.execute(query, {"c": case_id}).scalar_one())


def _item(ref: str) -> NewEvidence:
    return NewEvidence(EvidenceKind.DOCUMENT, ref, {"note": ref})


def test_a_full_case_file_refuses_more_evidence_and_writes_nothing(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "EVIDENCE_PER_CASE_MAX", LIMIT)
    service = CaseService(database, FakeClock())
    case = service.open_case(title="t", risk=RiskLevel.LOW, subject_party_ids=["p"], actor="ann")
    for n in range(LIMIT):
        service.add_evidence(case.case_id, _item(f"doc-{n}"), actor="ann")
    trail = _count(database, "aml_case_events", case.case_id)
    with pytest.raises(CaseLimitReached) as caught:
        service.add_evidence(case.case_id, _item("one-too-many"), actor="ann")
    assert caught.value.code == "case_limit_reached"
    assert _count(database, "aml_case_evidence", case.case_id) == LIMIT
    assert _count(database, "aml_case_events", case.case_id) == trail


def test_a_long_trail_with_little_evidence_is_not_full(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The count is skipped while the trail is shorter than the limit; a trail made long by
    # state changes must still be counted, not taken for a full file.
    monkeypatch.setattr(limits, "EVIDENCE_PER_CASE_MAX", LIMIT)
    service = CaseService(database, FakeClock())
    case = service.open_case(title="t", risk=RiskLevel.LOW, subject_party_ids=["p"], actor="ann")
    service.act(case.case_id, CaseAction.INVESTIGATE, actor="ann")
    service.act(case.case_id, CaseAction.ESCALATE, actor="ann")
    service.add_evidence(case.case_id, _item("doc-0"), actor="ann")
    assert _count(database, "aml_case_events", case.case_id) > LIMIT
    service.add_evidence(case.case_id, _item("doc-1"), actor="ann")
    assert _count(database, "aml_case_evidence", case.case_id) == 2
