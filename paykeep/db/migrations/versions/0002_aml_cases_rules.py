"""AML real-time rules and cases: rule configuration versions, decisions and their alerts,
the per-party event history the rules read, cases with their append-only decision trail,
notes and evidence.

Config versions, decisions, alerts, party events, case events, notes and evidence are
append-only; on both databases a trigger refuses UPDATE and DELETE of those rows. Only the
``aml_rule_active`` pointers and the ``aml_cases`` summary rows change, and every change of a
case row is written together with its trail event in one transaction.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ROWID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

APPEND_ONLY_TABLES = (
    "aml_rule_configs",
    "aml_decisions",
    "aml_alerts",
    "aml_party_events",
    "aml_case_events",
    "aml_case_notes",
    "aml_case_evidence",
)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "aml_rule_configs",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("created_at_ns", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.UniqueConstraint("rule", "version", name="uq_aml_rule_configs_rule_version"),
        sa.CheckConstraint("version > 0", name="ck_aml_rule_configs_version_positive"),
    )
    op.create_table(
        "aml_rule_active",
        sa.Column("rule", sa.String(64), primary_key=True),
        sa.Column("live_version", sa.Integer, nullable=False),
        sa.Column("shadow_version", sa.Integer, nullable=True),
        sa.Column("updated_at_ns", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "shadow_version IS NULL OR shadow_version <> live_version",
            name="ck_aml_rule_active_shadow_differs",
        ),
    )
    op.create_table(
        "aml_decisions",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("event_id", sa.String(128), nullable=False, unique=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("at_ns", sa.BigInteger, nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("payer_id", sa.String(64), nullable=True),
        sa.Column("payee_id", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("case_id", sa.BigInteger, nullable=True),
        sa.Column("decided_at_ns", sa.BigInteger, nullable=False),
        sa.CheckConstraint(
            "outcome IN ('allow', 'review', 'block')", name="ck_aml_decisions_outcome"
        ),
        sa.CheckConstraint("amount_minor > 0", name="ck_aml_decisions_amount_positive"),
    )
    op.create_table(
        "aml_alerts",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("decision_id", sa.BigInteger, sa.ForeignKey("aml_decisions.id"), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("shadow", sa.Boolean, nullable=False),
        sa.Column("score_bp", sa.Integer, nullable=False),
        sa.Column("party_id", sa.String(64), nullable=True),
        sa.Column("explanation", sa.Text, nullable=False),
        sa.Column("figures", sa.Text, nullable=False),
        sa.CheckConstraint("score_bp >= 0 AND score_bp <= 10000", name="ck_aml_alerts_score"),
    )
    op.create_index("ix_aml_alerts_decision", "aml_alerts", ["decision_id"])
    op.create_table(
        "aml_party_events",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("party_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("at_ns", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("direction", sa.String(3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("counterparty_id", sa.String(64), nullable=True),
        sa.Column("counterparty_opened_at_ns", sa.BigInteger, nullable=True),
        sa.Column("card_approved", sa.Boolean, nullable=True),
        sa.CheckConstraint("direction IN ('in', 'out')", name="ck_aml_party_events_direction"),
    )
    op.create_index("ix_aml_party_events_party_at", "aml_party_events", ["party_id", "at_ns"])

    op.create_table(
        "aml_cases",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("risk", sa.String(16), nullable=False),
        sa.Column("assignee", sa.String(64), nullable=True),
        sa.Column("close_requested_by", sa.String(64), nullable=True),
        sa.Column("subject_party_ids", sa.Text, nullable=False),
        sa.Column("source_event_id", sa.String(128), nullable=True),
        sa.Column("opened_at_ns", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ns", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.Integer, nullable=False),
        sa.CheckConstraint(
            "state IN ('open', 'investigating', 'escalated', 'reported', 'closed_false_positive')",
            name="ck_aml_cases_state",
        ),
        sa.CheckConstraint("risk IN ('low', 'medium', 'high')", name="ck_aml_cases_risk"),
    )
    op.create_index("ix_aml_cases_state", "aml_cases", ["state", "id"])
    op.create_table(
        "aml_case_events",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("case_id", sa.BigInteger, sa.ForeignKey("aml_cases.id"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("at_ns", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("from_state", sa.String(32), nullable=True),
        sa.Column("to_state", sa.String(32), nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.UniqueConstraint("case_id", "seq", name="uq_aml_case_events_case_seq"),
    )
    op.create_table(
        "aml_case_notes",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("case_id", sa.BigInteger, sa.ForeignKey("aml_cases.id"), nullable=False),
        sa.Column("at_ns", sa.BigInteger, nullable=False),
        sa.Column("author", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_aml_case_notes_case", "aml_case_notes", ["case_id", "id"])
    op.create_table(
        "aml_case_evidence",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("case_id", sa.BigInteger, sa.ForeignKey("aml_cases.id"), nullable=False),
        sa.Column("at_ns", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ref", sa.String(128), nullable=False),
        sa.Column("added_by", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.UniqueConstraint("case_id", "kind", "ref", name="uq_aml_case_evidence_ref"),
        sa.CheckConstraint(
            "kind IN ('alert', 'transaction', 'graph', 'document')",
            name="ck_aml_case_evidence_kind",
        ),
    )
    for table in APPEND_ONLY_TABLES:
        for statement in _append_only(table, postgres):
            op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in APPEND_ONLY_TABLES:
        if postgres:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS aml_append_only()")
    for table in (
        "aml_case_evidence",
        "aml_case_notes",
        "aml_case_events",
        "aml_cases",
        "aml_party_events",
        "aml_alerts",
        "aml_decisions",
        "aml_rule_active",
        "aml_rule_configs",
    ):
        op.drop_table(table)


def _append_only(table: str, postgres: bool) -> list[str]:
    if postgres:
        statements = []
        if table == APPEND_ONLY_TABLES[0]:
            statements.append(
                """
                CREATE FUNCTION aml_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
                        USING ERRCODE = 'integrity_constraint_violation';
                END $$
                """
            )
        statements.append(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION aml_append_only()"
        )
        return statements
    return [
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END",
        f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END",
    ]
