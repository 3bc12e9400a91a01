"""Persistence of the rules: configuration versions and pointers, decisions with their alerts,
and the per-party event history. SQLAlchemy Core over migration 0002's tables; one
repository wraps one open transaction and never commits.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from paykeep.aml.rules.model import (
    Alert,
    Direction,
    EventKind,
    HistoryEntry,
    MoneyEvent,
    Outcome,
    RuleConfig,
    event_fields,
)
from paykeep.db import driver

_meta = sa.MetaData()
rule_configs = sa.Table(
    "aml_rule_configs",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("rule", sa.String(64)),
    sa.Column("version", sa.Integer),
    sa.Column("params", sa.Text),
    sa.Column("created_at_ns", sa.BigInteger),
    sa.Column("created_by", sa.String(64)),
    sa.Column("note", sa.Text),
)
rule_active = sa.Table(
    "aml_rule_active",
    _meta,
    sa.Column("rule", sa.String(64), primary_key=True),
    sa.Column("live_version", sa.Integer),
    sa.Column("shadow_version", sa.Integer),
    sa.Column("updated_at_ns", sa.BigInteger),
)
decisions = sa.Table(
    "aml_decisions",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("event_id", sa.String(128)),
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("kind", sa.String(32)),
    sa.Column("at_ns", sa.BigInteger),
    sa.Column("amount_minor", sa.BigInteger),
    sa.Column("currency", sa.String(3)),
    sa.Column("payer_id", sa.String(64)),
    sa.Column("payee_id", sa.String(64)),
    sa.Column("outcome", sa.String(16)),
    sa.Column("case_id", sa.BigInteger),
    sa.Column("decided_at_ns", sa.BigInteger),
)
alerts = sa.Table(
    "aml_alerts",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("decision_id", sa.BigInteger),
    sa.Column("rule", sa.String(64)),
    sa.Column("version", sa.Integer),
    sa.Column("shadow", sa.Boolean),
    sa.Column("score_bp", sa.Integer),
    sa.Column("party_id", sa.String(64)),
    sa.Column("explanation", sa.Text),
    sa.Column("figures", sa.Text),
)
party_events = sa.Table(
    "aml_party_events",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("party_id", sa.String(64)),
    sa.Column("event_id", sa.String(128)),
    sa.Column("at_ns", sa.BigInteger),
    sa.Column("kind", sa.String(32)),
    sa.Column("direction", sa.String(3)),
    sa.Column("amount_minor", sa.BigInteger),
    sa.Column("currency", sa.String(3)),
    sa.Column("counterparty_id", sa.String(64)),
    sa.Column("counterparty_opened_at_ns", sa.BigInteger),
    sa.Column("card_approved", sa.Boolean),
)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True, slots=True)
class StoredDecision:
    decision_id: int
    event_id: str
    fingerprint: str
    outcome: Outcome
    case_id: int | None
    decided_at_ns: int
    alerts: tuple[Alert, ...]


@dataclass(frozen=True, slots=True)
class ActivePointer:
    rule: str
    live_version: int
    shadow_version: int | None


def _config(row: sa.Row[Any]) -> RuleConfig:
    return RuleConfig(
        rule=row.rule,
        version=row.version,
        params=json.loads(row.params),
        created_at_ns=row.created_at_ns,
        created_by=row.created_by,
        note=row.note,
    )


class RulesRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # --- configuration -------------------------------------------------------------------

    def versions(self, rule: str) -> list[RuleConfig]:
        rows = self.conn.execute(
            sa.select(rule_configs)
            .where(rule_configs.c.rule == rule)
            .order_by(rule_configs.c.version)
        ).all()
        return [_config(r) for r in rows]

    def version(self, rule: str, version: int) -> RuleConfig | None:
        row = self.conn.execute(
            sa.select(rule_configs).where(
                rule_configs.c.rule == rule, rule_configs.c.version == version
            )
        ).first()
        return None if row is None else _config(row)

    def latest_version(self, rule: str) -> int:
        value = self.conn.execute(
            sa.select(sa.func.max(rule_configs.c.version)).where(rule_configs.c.rule == rule)
        ).scalar_one()
        return int(value or 0)

    def insert_config(self, config: RuleConfig) -> None:
        self.conn.execute(
            sa.insert(rule_configs).values(
                rule=config.rule,
                version=config.version,
                params=_dumps(dict(config.params)),
                created_at_ns=config.created_at_ns,
                created_by=config.created_by,
                note=config.note,
            )
        )

    def pointers(self, *, for_update_rule: str | None = None) -> dict[str, ActivePointer]:
        if for_update_rule is None:  # every decision: on the driver's connection
            rows: Iterable[Sequence[Any]] = self._driver_all(_POINTERS_SQL, {})
        else:
            query = _POINTERS.where(rule_active.c.rule == for_update_rule).with_for_update()
            rows = [(r.rule, r.live_version, r.shadow_version) for r in self.conn.execute(query)]
        return {rule: ActivePointer(rule, live, shadow) for rule, live, shadow in rows}

    def _driver_all(self, sql: str, params: dict[str, Any]) -> list[Sequence[Any]]:
        return driver.fetch_all(self.conn, sql, params)

    def active_configs(self) -> list[RuleConfig]:
        """Every stored config that is some rule's live or shadow version (one query)."""
        join = rule_configs.join(rule_active, rule_configs.c.rule == rule_active.c.rule)
        rows = self.conn.execute(
            sa.select(rule_configs)
            .select_from(join)
            .where(
                sa.or_(
                    rule_configs.c.version == rule_active.c.live_version,
                    rule_configs.c.version == rule_active.c.shadow_version,
                )
            )
        ).all()
        return [_config(r) for r in rows]

    def set_pointer(self, pointer: ActivePointer, at_ns: int, *, exists: bool) -> None:
        values = {
            "live_version": pointer.live_version,
            "shadow_version": pointer.shadow_version,
            "updated_at_ns": at_ns,
        }
        if exists:
            self.conn.execute(
                sa.update(rule_active).where(rule_active.c.rule == pointer.rule).values(**values)
            )
        else:
            self.conn.execute(sa.insert(rule_active).values(rule=pointer.rule, **values))

    # --- decisions -----------------------------------------------------------------------

    def decision(self, event_id: str) -> StoredDecision | None:
        # Asked before every decision, and almost always answered "none": probed on the
        # driver's connection, read whole only when there is one.
        if not self._driver_all(_DECISION_EXISTS_SQL, {"event_id": event_id}):
            return None
        row = self.conn.execute(_DECISION_BY_EVENT, {"event_id": event_id}).first()
        if row is None:
            return None
        alert_rows = self.conn.execute(_ALERTS_OF_DECISION, {"decision_id": row.id}).all()
        return StoredDecision(
            decision_id=row.id,
            event_id=row.event_id,
            fingerprint=row.fingerprint,
            outcome=Outcome(row.outcome),
            case_id=row.case_id,
            decided_at_ns=row.decided_at_ns,
            alerts=tuple(
                Alert(
                    rule=a.rule,
                    version=a.version,
                    shadow=bool(a.shadow),
                    score_bp=a.score_bp,
                    party_id=a.party_id,
                    explanation=a.explanation,
                    figures=json.loads(a.figures),
                )
                for a in alert_rows
            ),
        )

    def insert_decision(
        self,
        event: MoneyEvent,
        fingerprint: str,
        outcome: Outcome,
        case_id: int | None,
        decided_at_ns: int,
        decision_alerts: Iterable[Alert],
    ) -> int:
        inserted = self._driver_all(
            _INSERT_DECISION_SQL,
            {
                **event_fields(event),
                "fingerprint": fingerprint,
                "outcome": outcome.value,
                "case_id": case_id,
                "decided_at_ns": decided_at_ns,
            },
        )
        decision_id = int(inserted[0][0])
        rows = [
            {
                "decision_id": decision_id,
                "rule": a.rule,
                "version": a.version,
                "shadow": a.shadow,
                "score_bp": a.score_bp,
                "party_id": a.party_id,
                "explanation": a.explanation,
                "figures": _dumps(dict(a.figures)),
            }
            for a in decision_alerts
        ]
        if rows:
            self.conn.execute(_INSERT_ALERT, rows)
        return decision_id

    # --- history -------------------------------------------------------------------------

    def history(
        self,
        party_id: str,
        since_ns: int,
        until_ns: int,
        limit: int,
        kinds: Iterable[EventKind] | None = None,
        *,
        firsts_only: bool = False,
    ) -> Sequence[HistoryEntry]:
        """The party's most recent ``limit`` entries with ``since_ns < at_ns <= until_ns``
        (of ``kinds`` only, when given), oldest first. ``firsts_only``: of those, only the
        earliest of each (kind, direction, counterparty, counterparty's opening time), as
        ``model.firsts`` — grouped by the database, which hands over a row per key."""
        # Hot (every decision, for every party): precompiled statements, plain tuples, and
        # enum members looked up in a dict instead of constructed per row.
        params: dict[str, Any] = {
            "party": party_id,
            "since": since_ns,
            "until": until_ns,
            "limit": limit,
        }
        postgres = driver.is_postgres(self.conn)
        of_kinds = ""
        if kinds is not None:
            values = sorted(k.value for k in kinds)
            if not values:
                return []
            params.update({f"k{i}": v for i, v in enumerate(values)})
            of_kinds = _OF_KINDS[len(values)]
        sql = _history_sql(of_kinds, firsts_only=firsts_only, postgres=postgres)
        rows = driver.fetch_all(self.conn, sql, params, postgres=postgres)
        kind_of, directions = _KINDS, _DIRECTIONS
        return [
            HistoryEntry(
                at,
                event_id,
                kind_of[kind],
                directions[direction],
                amount,
                currency,
                counterparty,
                opened,
                None if approved is None else bool(approved),
            )
            for (
                at,
                event_id,
                kind,
                direction,
                amount,
                currency,
                counterparty,
                opened,
                approved,
            ) in reversed(rows)
        ]

    def append_history(self, entries: Iterable[tuple[str, HistoryEntry]]) -> None:
        rows = [
            {
                "party_id": party_id,
                "event_id": e.event_id,
                "at_ns": e.at_ns,
                "kind": e.kind.value,
                "direction": e.direction.value,
                "amount_minor": e.amount_minor,
                "currency": e.currency,
                "counterparty_id": e.counterparty_id,
                "counterparty_opened_at_ns": e.counterparty_opened_at_ns,
                "card_approved": e.card_approved,
            }
            for party_id, e in entries
        ]
        if rows:
            driver.execute_many(self.conn, _INSERT_HISTORY_SQL, rows)


# Run on the driver's connection (paykeep.db.driver): read for every decision, for every
# party whose history an active rule reads.
_ENTRY_COLUMNS = (
    "event_id, kind, direction, amount_minor, currency, counterparty_id, "
    "counterparty_opened_at_ns, card_approved"
)
_IN_WINDOW = "FROM aml_party_events WHERE party_id = :party AND at_ns > :since AND at_ns <= :until "
_OF_KINDS = {
    n: f"AND kind IN ({', '.join(f':k{i}' for i in range(n))}) "
    for n in range(1, len(EventKind) + 1)
}
_FIRSTS_KEY = "kind, direction, counterparty_id, counterparty_opened_at_ns"
_NEWEST_FIRST = "ORDER BY at_ns DESC, id DESC LIMIT :limit"


@cache
def _history_sql(of_kinds: str, *, firsts_only: bool, postgres: bool) -> str:
    if not firsts_only:
        return f"SELECT at_ns, {_ENTRY_COLUMNS} {_IN_WINDOW}{of_kinds}{_NEWEST_FIRST}"
    if postgres:
        return (
            f"SELECT at_ns, {_ENTRY_COLUMNS} FROM (SELECT DISTINCT ON ({_FIRSTS_KEY}) id, "
            f"at_ns, {_ENTRY_COLUMNS} {_IN_WINDOW}{of_kinds}ORDER BY {_FIRSTS_KEY}, at_ns, id) "
            f"AS firsts {_NEWEST_FIRST}"
        )
    # SQLite: with MIN() the other columns are those of the row holding the minimum.
    return (
        f"SELECT MIN(at_ns), {_ENTRY_COLUMNS} {_IN_WINDOW}{of_kinds}GROUP BY {_FIRSTS_KEY} "
        "ORDER BY 1 DESC LIMIT :limit"
    )


# Built once: a statement built per call pays SQLAlchemy's cache-key walk every time (hot:
# every decision writes one decision row, its alerts and its history entries).
_DECISION_COLUMNS = (
    "event_id, fingerprint, kind, at_ns, amount_minor, currency, payer_id, payee_id, outcome, "
    "case_id, decided_at_ns"
)
_INSERT_DECISION_SQL = (
    f"INSERT INTO aml_decisions ({_DECISION_COLUMNS}) VALUES "
    f"({', '.join(':' + c for c in _DECISION_COLUMNS.split(', '))}) RETURNING id"
)
_DECISION_EXISTS_SQL = "SELECT 1 FROM aml_decisions WHERE event_id = :event_id"
_POINTERS_SQL = "SELECT rule, live_version, shadow_version FROM aml_rule_active"
_HISTORY_ROW_COLUMNS = (
    "party_id, event_id, at_ns, kind, direction, amount_minor, currency, counterparty_id, "
    "counterparty_opened_at_ns, card_approved"
)
_INSERT_HISTORY_SQL = (
    f"INSERT INTO aml_party_events ({_HISTORY_ROW_COLUMNS}) VALUES "
    f"({', '.join(':' + c for c in _HISTORY_ROW_COLUMNS.split(', '))})"
)
_DECISION_BY_EVENT = sa.select(decisions).where(decisions.c.event_id == sa.bindparam("event_id"))
_ALERTS_OF_DECISION = (
    sa.select(alerts)
    .where(alerts.c.decision_id == sa.bindparam("decision_id"))
    .order_by(alerts.c.id)
)
_POINTERS = sa.select(rule_active)
_INSERT_ALERT = sa.insert(alerts)
_KINDS = {k.value: k for k in EventKind}
_DIRECTIONS = {d.value: d for d in Direction}
