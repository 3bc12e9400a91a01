"""Persistence of cases: SQLAlchemy Core over the tables of migration 0002.

A repository wraps one open transaction (a ``Connection`` from ``Database.write()`` or
``.read()``); it never commits. Case rows are read ``FOR UPDATE`` before a change, so two
officers acting on one case serialize on PostgreSQL (SQLite writers already hold the database
lock from ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from paykeep.aml.cases.model import (
    Case,
    CaseEvent,
    CaseEventKind,
    CaseState,
    EvidenceKind,
    RiskLevel,
)

_meta = sa.MetaData()
cases = sa.Table(
    "aml_cases",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("title", sa.Text),
    sa.Column("state", sa.String(32)),
    sa.Column("risk", sa.String(16)),
    sa.Column("assignee", sa.String(64)),
    sa.Column("close_requested_by", sa.String(64)),
    sa.Column("subject_party_ids", sa.Text),
    sa.Column("source_event_id", sa.String(128)),
    sa.Column("opened_at_ns", sa.BigInteger),
    sa.Column("updated_at_ns", sa.BigInteger),
    sa.Column("last_seq", sa.Integer),
)
case_events = sa.Table(
    "aml_case_events",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("case_id", sa.BigInteger),
    sa.Column("seq", sa.Integer),
    sa.Column("at_ns", sa.BigInteger),
    sa.Column("actor", sa.String(64)),
    sa.Column("kind", sa.String(32)),
    sa.Column("from_state", sa.String(32)),
    sa.Column("to_state", sa.String(32)),
    sa.Column("detail", sa.Text),
)
case_notes = sa.Table(
    "aml_case_notes",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("case_id", sa.BigInteger),
    sa.Column("at_ns", sa.BigInteger),
    sa.Column("author", sa.String(64)),
    sa.Column("body", sa.Text),
)
case_evidence = sa.Table(
    "aml_case_evidence",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("case_id", sa.BigInteger),
    sa.Column("at_ns", sa.BigInteger),
    sa.Column("kind", sa.String(16)),
    sa.Column("ref", sa.String(128)),
    sa.Column("added_by", sa.String(64)),
    sa.Column("body", sa.Text),
)


# Built once (hot: every review that joins an open case writes evidence, the case summary and
# its trail event; a statement built per call pays SQLAlchemy's cache-key walk each time).
_UPDATE_CASE = (
    sa.update(cases)
    .where(cases.c.id == sa.bindparam("case_id"), cases.c.last_seq == sa.bindparam("previous_seq"))
    .values(
        {
            column: sa.bindparam(column)
            for column in (
                "title",
                "state",
                "risk",
                "assignee",
                "close_requested_by",
                "subject_party_ids",
                "source_event_id",
                "opened_at_ns",
                "updated_at_ns",
                "last_seq",
            )
        }
    )
)
_INSERT_CASE_EVENT = sa.insert(case_events)
_OPEN_CASE_ABOUT = (
    sa.select(cases)
    .where(
        cases.c.state.in_(("open", "investigating", "escalated")),
        cases.c.last_seq > 0,
        cases.c.subject_party_ids.like(sa.bindparam("pattern"), escape="\\"),
    )
    .order_by(cases.c.id.desc())
    .limit(1)
    .with_for_update()
)
_HAS_EVIDENCE = sa.select(case_evidence.c.id).where(
    case_evidence.c.case_id == sa.bindparam("case_id"),
    case_evidence.c.kind == sa.bindparam("kind"),
    case_evidence.c.ref == sa.bindparam("ref"),
)
_INSERT_EVIDENCE = sa.insert(case_evidence).returning(case_evidence.c.id)


@dataclass(frozen=True, slots=True)
class Note:
    note_id: int
    at_ns: int
    author: str
    body: str

    def to_json(self) -> dict[str, Any]:
        return {
            "note_id": self.note_id,
            "at_ns": self.at_ns,
            "author": self.author,
            "body": self.body,
        }


@dataclass(frozen=True, slots=True)
class Evidence:
    evidence_id: int
    at_ns: int
    kind: EvidenceKind
    ref: str
    added_by: str
    body: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "evidence_id": self.evidence_id,
            "at_ns": self.at_ns,
            "kind": self.kind.value,
            "ref": self.ref,
            "added_by": self.added_by,
            "body": self.body,
        }


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _case(row: sa.Row[Any]) -> Case:
    return Case(
        case_id=row.id,
        title=row.title,
        state=CaseState(row.state),
        risk=RiskLevel(row.risk),
        subject_party_ids=tuple(json.loads(row.subject_party_ids)),
        opened_at_ns=row.opened_at_ns,
        updated_at_ns=row.updated_at_ns,
        last_seq=row.last_seq,
        assignee=row.assignee,
        close_requested_by=row.close_requested_by,
        source_event_id=row.source_event_id,
    )


class CaseRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # --- cases ---------------------------------------------------------------------------

    def new_case_id(self, opened_at_ns: int) -> int:
        """Insert a placeholder row to obtain the next id; :meth:`save` then fills it in the
        same transaction (the trail's first event needs the id)."""
        result = self.conn.execute(
            sa.insert(cases)
            .values(
                title="",
                state=CaseState.OPEN.value,
                risk=RiskLevel.LOW.value,
                subject_party_ids="[]",
                opened_at_ns=opened_at_ns,
                updated_at_ns=opened_at_ns,
                last_seq=0,
            )
            .returning(cases.c.id)
        )
        return int(result.scalar_one())

    def save(self, case: Case, event: CaseEvent) -> None:
        """Write the case's new summary and its trail event (the caller's one transaction)."""
        assert event.case_id == case.case_id and event.seq == case.last_seq
        updated = self.conn.execute(
            _UPDATE_CASE,
            {
                "case_id": case.case_id,
                "previous_seq": event.seq - 1,
                "title": case.title,
                "state": case.state.value,
                "risk": case.risk.value,
                "assignee": case.assignee,
                "close_requested_by": case.close_requested_by,
                "subject_party_ids": _dumps(list(case.subject_party_ids)),
                "source_event_id": case.source_event_id,
                "opened_at_ns": case.opened_at_ns,
                "updated_at_ns": case.updated_at_ns,
                "last_seq": case.last_seq,
            },
        )
        assert updated.rowcount == 1, "case changed under a lock holder"
        self.conn.execute(
            _INSERT_CASE_EVENT,
            {
                "case_id": event.case_id,
                "seq": event.seq,
                "at_ns": event.at_ns,
                "actor": event.actor,
                "kind": event.kind.value,
                "from_state": event.from_state.value if event.from_state else None,
                "to_state": event.to_state.value if event.to_state else None,
                "detail": _dumps(dict(event.detail)),
            },
        )

    def open_case_about(self, party_ids: Sequence[str]) -> Case | None:
        """The newest case still being worked on (open, investigating or escalated) whose
        subjects include one of ``party_ids``."""
        for party_id in party_ids:
            escaped = party_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern = '%"' + escaped.replace('"', '\\"') + '"%'
            row = self.conn.execute(_OPEN_CASE_ABOUT, {"pattern": pattern}).first()
            if row is not None:
                return _case(row)
        return None

    def get(self, case_id: int, *, for_update: bool = False) -> Case | None:
        query = sa.select(cases).where(cases.c.id == case_id, cases.c.last_seq > 0)
        if for_update:
            query = query.with_for_update()
        row = self.conn.execute(query).first()
        return None if row is None else _case(row)

    def page(
        self,
        state: CaseState | None,
        after_id: int,
        limit: int,
        *,
        assignee: str | None = None,
        newest_first: bool = False,
    ) -> list[Case]:
        """Cases beyond ``after_id`` in the listing order: oldest first, ids above it (the
        CLI's work queue), or with ``newest_first`` ids below it (0: no bound), as the HTTP
        API lists everything."""
        query = sa.select(cases).where(cases.c.last_seq > 0)
        if newest_first:
            if after_id:
                query = query.where(cases.c.id < after_id)
            query = query.order_by(cases.c.id.desc())
        else:
            query = query.where(cases.c.id > after_id).order_by(cases.c.id)
        if state is not None:
            query = query.where(cases.c.state == state.value)
        if assignee is not None:
            query = query.where(cases.c.assignee == assignee)
        rows = self.conn.execute(query.limit(limit)).all()
        return [_case(r) for r in rows]

    # --- trail, notes, evidence ----------------------------------------------------------

    def events(self, case_id: int) -> list[CaseEvent]:
        rows = self.conn.execute(
            sa.select(case_events)
            .where(case_events.c.case_id == case_id)
            .order_by(case_events.c.seq)
        ).all()
        return [
            CaseEvent(
                case_id=r.case_id,
                seq=r.seq,
                at_ns=r.at_ns,
                actor=r.actor,
                kind=CaseEventKind(r.kind),
                from_state=CaseState(r.from_state) if r.from_state else None,
                to_state=CaseState(r.to_state) if r.to_state else None,
                detail=json.loads(r.detail),
            )
            for r in rows
        ]

    def add_note(self, case_id: int, at_ns: int, author: str, body: str) -> int:
        result = self.conn.execute(
            sa.insert(case_notes)
            .values(case_id=case_id, at_ns=at_ns, author=author, body=body)
            .returning(case_notes.c.id)
        )
        return int(result.scalar_one())

    def notes(self, case_id: int) -> list[Note]:
        rows = self.conn.execute(
            sa.select(case_notes).where(case_notes.c.case_id == case_id).order_by(case_notes.c.id)
        ).all()
        return [Note(r.id, r.at_ns, r.author, r.body) for r in rows]

    def count(self, table: sa.Table, case_id: int) -> int:
        return int(
            self.conn.execute(
                sa.select(sa.func.count()).select_from(table).where(table.c.case_id == case_id)
            ).scalar_one()
        )

    def has_evidence(self, case_id: int, kind: EvidenceKind, ref: str) -> bool:
        row = self.conn.execute(
            _HAS_EVIDENCE, {"case_id": case_id, "kind": kind.value, "ref": ref}
        ).first()
        return row is not None

    def add_evidence(
        self, case_id: int, at_ns: int, kind: EvidenceKind, ref: str, added_by: str, body: str
    ) -> int:
        result = self.conn.execute(
            _INSERT_EVIDENCE,
            {
                "case_id": case_id,
                "at_ns": at_ns,
                "kind": kind.value,
                "ref": ref,
                "added_by": added_by,
                "body": body,
            },
        )
        return int(result.scalar_one())

    def evidence_item(self, case_id: int, evidence_id: int) -> Evidence | None:
        row = self.conn.execute(
            sa.select(case_evidence).where(
                case_evidence.c.case_id == case_id, case_evidence.c.id == evidence_id
            )
        ).first()
        if row is None:
            return None
        return Evidence(
            row.id, row.at_ns, EvidenceKind(row.kind), row.ref, row.added_by, json.loads(row.body)
        )

    def evidence(self, case_id: int) -> Sequence[Evidence]:
        rows = self.conn.execute(
            sa.select(case_evidence)
            .where(case_evidence.c.case_id == case_id)
            .order_by(case_evidence.c.id)
        ).all()
        return [
            Evidence(r.id, r.at_ns, EvidenceKind(r.kind), r.ref, r.added_by, json.loads(r.body))
            for r in rows
        ]
