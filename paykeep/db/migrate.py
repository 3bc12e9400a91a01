"""Alembic, driven from code: ``upgrade(database)`` brings any database to the latest schema.

Concurrent starters (several server processes) serialize on a lock — a PostgreSQL advisory
lock, or a file lock next to the SQLite file — and the fast path skips Alembic entirely when
the schema is already current.

A migration that seals personal data already stored (0011, 0013) needs the field keys:
``cipher`` is a :class:`FieldCipher`, or a function that builds one — called only by a
migration that has rows to seal, so opening an empty database never creates or reads keys. A
migration with rows and no cipher raises :class:`MigrationNeedsFieldKeys` and changes nothing.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from paykeep.db.engine import Database
from paykeep.db.errors import MigrationNeedsFieldKeys

if TYPE_CHECKING:
    from paykeep.security.fields import FieldCipher

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


_CIPHER_ATTRIBUTE = "field_cipher"


def _sqlite_transaction(conn: Connection) -> None:
    """Make a SQLite migration one transaction, as it is on PostgreSQL. Our SQLite connections
    leave transactions to us (the driver never begins one: ``engine._sqlite_on_connect``), so
    without this every statement committed on its own, and a crash inside a batch-mode table
    copy (create, copy, drop, rename) or between a backfill and a column drop left the schema
    half changed. The driver's commit/rollback at the block's end close this transaction."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def upgrade(
    database: Database,
    revision: str = "head",
    *,
    cipher: FieldCipher | Callable[[], FieldCipher] | None = None,
) -> None:
    if revision == "head" and current_revision(database) == head_revision(database):
        return
    with _migration_lock(database), database.engine.begin() as conn:
        _sqlite_transaction(conn)
        cfg = alembic_config(database)
        cfg.attributes["connection"] = conn
        cfg.attributes[_CIPHER_ATTRIBUTE] = cipher
        command.upgrade(cfg, revision)


def downgrade(
    database: Database,
    revision: str,
    *,
    cipher: FieldCipher | Callable[[], FieldCipher] | None = None,
) -> None:
    with _migration_lock(database), database.engine.begin() as conn:
        _sqlite_transaction(conn)
        cfg = alembic_config(database)
        cfg.attributes["connection"] = conn
        cfg.attributes[_CIPHER_ATTRIBUTE] = cipher
        command.downgrade(cfg, revision)


def migration_cipher(attributes: Mapping[str, Any], needed_for: str) -> FieldCipher:
    """The cipher a migration was given (built now if it was given as a function), for a
    migration that has ``needed_for`` to seal or open; :class:`MigrationNeedsFieldKeys` if it
    was given none. Call it before changing anything."""
    source = attributes.get(_CIPHER_ATTRIBUTE)
    if source is None:
        raise MigrationNeedsFieldKeys(
            f"this migration must seal or open {needed_for} and was given no field keys: run it "
            "through paykeep (open_database / `paykeep db upgrade`) with the data directory "
            "whose keys sealed them; nothing was changed"
        )
    from paykeep.security.fields import FieldCipher

    cipher = source if isinstance(source, FieldCipher) else source()
    assert isinstance(cipher, FieldCipher), f"not a FieldCipher: {type(cipher).__name__}"
    return cipher
