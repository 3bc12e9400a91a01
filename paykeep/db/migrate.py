"""Alembic, driven from code: ``upgrade(database)`` brings any database to the latest schema.

Concurrent starters (several server processes) serialize on a lock — a PostgreSQL advisory
lock, or a file lock next to the SQLite file — and the fast path skips Alembic entirely when
the schema is already current.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from paykeep.db.engine import Database

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK_KEY = 0x5041594B  # "PAYK"


def alembic_config(database: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    return cfg


def head_revision(database: Database) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database)).get_current_head()


def current_revision(database: Database) -> str | None:
    with database.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _migration_lock(database: Database) -> Iterator[None]:
    if database.is_postgres:
        with database.engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_MIGRATION_LOCK_KEY})")
            conn.commit()
            try:
                yield
            finally:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_MIGRATION_LOCK_KEY})")
                conn.commit()
        return
    db_path = database.engine.url.database
    if not db_path or db_path == ":memory:":
        yield
        return
    lock_path = Path(db_path + ".migrate.lock")
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(database: Database, revision: str = "head") -> None:
    if revision == "head" and current_revision(database) == head_revision(database):
        return
    with _migration_lock(database), database.engine.begin() as conn:
        cfg = alembic_config(database)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(database: Database, revision: str) -> None:
    with _migration_lock(database), database.engine.begin() as conn:
        cfg = alembic_config(database)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
