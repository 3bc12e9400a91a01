"""A statement break has an explicit state, a return that failed reopens it, and every change
of a break is kept in a trail.

``stmt_breaks`` gains ``state`` (``open``, ``return_failed``, ``explained``, ``matched``,
``returned``, ``bounced``; the resolutions keep their ``resolution`` value too), and for
returns to sender ``return_attempts`` (return payouts made for it), ``return_payout_id`` (the
latest) and ``return_failure`` (why the latest failed). ``stmt_break_events`` is the trail:
one row per change of state, who made it and why, append-only (trigger on both databases).

Backfill: each resolved break gets its state and one trail row (its resolution, by whom,
when, its note). A break with a return payout (request id ``statement-return:<statement
row>:<line>``: every return so far was a first attempt) is linked to it; one still open — its
return was interrupted after the payout committed, when returns were three transactions — is
marked ``returned`` as running the return again would have done. If the bank rejected that
payout, its money went back to ``suspense:unidentified`` while the break stayed ``returned``
with no way to try again: such a break becomes ``return_failed`` here, with the bank's reason,
so it shows among the open breaks and can be returned again or resolved.

Downgrade drops the trail and the new columns; a ``return_failed`` break is left open (0013
code then refuses to explain it while its line is in suspense), a ``bounced`` one keeps its
resolution.

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None

ROWID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Spelled out, not imported: a migration keeps meaning what it meant when it ran.
STATES = ("open", "return_failed", "explained", "matched", "returned", "bounced")
SYSTEM_ACTOR = "paykeep"


def _postgres() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def upgrade() -> None:
    states = ", ".join(f"'{s}'" for s in STATES)
    # Native ADD COLUMN on both databases (SQLite accepts a column CHECK there): a batch-mode
    # copy of stmt_breaks is not needed for a new column.
    op.execute(
        "ALTER TABLE stmt_breaks ADD COLUMN state VARCHAR(16) DEFAULT 'open' NOT NULL "
        f"CONSTRAINT ck_stmt_breaks_state CHECK (state IN ({states}))"
    )
    op.execute(
        "ALTER TABLE stmt_breaks ADD COLUMN return_attempts INTEGER DEFAULT 0 NOT NULL "
        "CONSTRAINT ck_stmt_breaks_return_attempts CHECK (return_attempts >= 0)"
    )
    op.add_column("stmt_breaks", sa.Column("return_payout_id", sa.BigInteger, nullable=True))
    op.add_column("stmt_breaks", sa.Column("return_failure", sa.Text, nullable=True))
    op.create_index("ix_stmt_breaks_return_payout", "stmt_breaks", ["return_payout_id"])
    op.create_table(
        "stmt_break_events",
        sa.Column("id", ROWID, primary_key=True),
        sa.Column("break_id", sa.BigInteger, sa.ForeignKey("stmt_breaks.id"), nullable=False),
        sa.Column("at_ns", sa.BigInteger, nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_stmt_break_events_break", "stmt_break_events", ["break_id", "id"])
    if _postgres():
        # stmt_append_only() is 0003's.
        op.execute(
            "CREATE TRIGGER stmt_break_events_append_only BEFORE UPDATE OR DELETE ON "
            "stmt_break_events FOR EACH STATEMENT EXECUTE FUNCTION stmt_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER stmt_break_events_no_update BEFORE UPDATE ON stmt_break_events "
            "BEGIN SELECT RAISE(ABORT, 'stmt_break_events is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER stmt_break_events_no_delete BEFORE DELETE ON stmt_break_events "
            "BEGIN SELECT RAISE(ABORT, 'stmt_break_events is append-only'); END"
        )
    _backfill(op.get_bind())


def _backfill(bind: sa.Connection) -> None:
    bind.execute(
        sa.text(
            "UPDATE stmt_breaks SET state = resolution "
            "WHERE resolved_at_ns IS NOT NULL AND resolution IS NOT NULL"
        )
    )
    bind.execute(
        sa.text(
            "INSERT INTO stmt_break_events (break_id, at_ns, from_state, to_state, actor, detail) "
            "SELECT id, resolved_at_ns, 'open', resolution, COALESCE(resolved_by, :unknown), "
            "COALESCE(resolution_note, '') FROM stmt_breaks "
            "WHERE resolved_at_ns IS NOT NULL AND resolution IS NOT NULL ORDER BY id"
        ),
        {"unknown": "unknown"},
    )
    # Every return payout so far was a first attempt, request id statement-return:<row>:<line>.
    payouts = bind.execute(
        sa.text(
            "SELECT p.id, p.request_id, p.state, p.created_at_ns, p.updated_at_ns, "
            "b.message_id, b.bank_reason FROM gateway_payouts p "
            "LEFT JOIN gateway_payout_batches b ON b.id = p.batch_id "
            "WHERE p.request_id LIKE 'statement-return:%' ORDER BY p.id"
        )
    ).all()
    for payout_id, request_id, state, created_at_ns, updated_at_ns, message_id, reason in payouts:
        _, row_id, line = request_id.split(":")
        found = bind.execute(
            sa.text(
                "SELECT id, resolved_at_ns FROM stmt_breaks WHERE statement_row_id = :r "
                "AND line = :l AND (resolution = 'returned' OR resolved_at_ns IS NULL) "
                "ORDER BY id"
            ),
            {"r": int(row_id), "l": int(line)},
        ).first()
        if found is None:
            continue  # the break was resolved another way: nothing points at this payout
        break_id, resolved_at_ns = found
        bind.execute(
            sa.text(
                "UPDATE stmt_breaks SET return_payout_id = :p, return_attempts = 1 WHERE id = :id"
            ),
            {"id": break_id, "p": payout_id},
        )
        if resolved_at_ns is None:
            # A return interrupted after its payout committed and before it marked the break
            # (returns were three transactions then): the payout is paying the sender, so the
            # break is returned — what running the return again would have recorded.
            note = (
                f"return payout {payout_id} [finished by migration 0015: the return that made "
                "it was interrupted before it marked the break]"
            )
            bind.execute(
                sa.text(
                    "UPDATE stmt_breaks SET state = 'returned', resolved_at_ns = :t, "
                    "resolution = 'returned', resolved_by = :a, resolution_note = :n "
                    "WHERE id = :id"
                ),
                {"id": break_id, "t": created_at_ns, "a": SYSTEM_ACTOR, "n": note},
            )
            _event(bind, break_id, created_at_ns, "open", "returned", note)
        if state != "returned":
            continue
        # The bank rejected the return and its money went back to suspense:unidentified while
        # the break stayed returned: it waits for a person again.
        failure = f"the bank rejected payment file {message_id}: {reason or 'no reason given'}"
        bind.execute(
            sa.text(
                "UPDATE stmt_breaks SET state = 'return_failed', return_failure = :f, "
                "resolved_at_ns = NULL, resolution = NULL, resolved_by = NULL, "
                "resolution_note = NULL WHERE id = :id"
            ),
            {"id": break_id, "f": failure},
        )
        _event(
            bind, break_id, updated_at_ns, "returned", "return_failed",
            f"return payout {payout_id} failed: {failure}; its money is back in "
            "suspense:unidentified (found by migration 0015)",
        )  # fmt: skip


def _event(
    bind: sa.Connection, break_id: int, at_ns: int, from_state: str, to_state: str, detail: str
) -> None:
    bind.execute(
        sa.text(
            "INSERT INTO stmt_break_events (break_id, at_ns, from_state, to_state, actor, "
            "detail) VALUES (:id, :t, :f, :s, :a, :d)"
        ),
        {"id": break_id, "t": at_ns, "f": from_state, "s": to_state, "a": SYSTEM_ACTOR,
         "d": detail},
    )  # fmt: skip


def downgrade() -> None:
    if _postgres():
        op.execute("DROP TRIGGER IF EXISTS stmt_break_events_append_only ON stmt_break_events")
    else:
        op.execute("DROP TRIGGER IF EXISTS stmt_break_events_no_update")
        op.execute("DROP TRIGGER IF EXISTS stmt_break_events_no_delete")
    op.drop_index("ix_stmt_break_events_break", table_name="stmt_break_events")
    op.drop_table("stmt_break_events")
    op.drop_index("ix_stmt_breaks_return_payout", table_name="stmt_breaks")
    if _postgres():
        for column in ("return_failure", "return_payout_id", "return_attempts", "state"):
            op.drop_column("stmt_breaks", column)
    else:
        # Native DROP COLUMN (SQLite >= 3.35; a column's own CHECK goes with it): a batch-mode
        # copy would drop and recreate stmt_breaks.
        for column in ("return_failure", "return_payout_id", "return_attempts", "state"):
            op.execute(f"ALTER TABLE stmt_breaks DROP COLUMN {column}")
