"""Alembic environment: always handed a live connection by ``paykeep.db.migrate``."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable through the alembic CLI
    raise SystemExit("run migrations with `paykeep db upgrade`, not the alembic CLI")

context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
