"""Helpers shared by tests of several contexts."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paykeep.config import SQLITE_FILE_NAME, Settings


def paykeep(*args: str, settings: Settings | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``paykeep ARGS`` as a real subprocess, against ``settings``' data dir / database."""
    extra: list[str] = []
    if settings is not None:
        extra = ["--data-dir", str(settings.data_dir)]
        if settings.database_url:
            extra += ["--database-url", settings.database_url]
    return subprocess.run(
        [sys.executable, "-m", "paykeep.cli", *args, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def refuse_inserts(settings: Settings, table: str, on: bool) -> None:
    """Fault injection in the database itself: while on, every INSERT into ``table`` fails
    (its transaction rolls back), as if the process writing it had died at that point."""
    from paykeep.db import open_database

    database = open_database(settings, migrate=False)
    try:
        _refusing_trigger(database, f"test_refuse_{table}", table, ("INSERT",), None, on=on)
    finally:
        database.dispose()


def _refusing_trigger(
    database: Any, name: str, table: str, ops: Sequence[str], when: str | None, *, on: bool
) -> None:
    """Create (``on``) or drop the database triggers behind the ``refuse_*`` helpers: every
    ``ops`` statement on ``table`` whose new row meets ``when`` (an SQL condition on ``NEW``;
    None: every row) fails with "injected", so its transaction rolls back."""
    condition = f"WHEN ({when}) " if when else ""
    with database.engine.begin() as conn:
        if database.is_postgres:
            if on:
                conn.exec_driver_sql(
                    f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'injected'; END $$"
                )
                conn.exec_driver_sql(
                    f"CREATE TRIGGER {name} BEFORE {' OR '.join(ops)} ON {table} "
                    f"FOR EACH ROW {condition}EXECUTE FUNCTION {name}()"
                )
            else:
                conn.exec_driver_sql(f"DROP TRIGGER {name} ON {table}")
                conn.exec_driver_sql(f"DROP FUNCTION {name}()")
            return
        for op in ops:  # SQLite: one trigger per statement kind
            if on:
                conn.exec_driver_sql(
                    f"CREATE TRIGGER {name}_{op.lower()} BEFORE {op} ON {table} "
                    f"{condition}BEGIN SELECT RAISE(ABORT, 'injected'); END"
                )
            else:
                conn.exec_driver_sql(f"DROP TRIGGER {name}_{op.lower()}")


def server_settings(server: Any) -> Settings:
    """The settings (data dir, database URL) a running ``ServerProcess`` was started with."""
    argv = list(server.process.args)
    url = argv[argv.index("--database-url") + 1] if "--database-url" in argv else None
    return Settings(data_dir=Path(argv[argv.index("--data-dir") + 1]), database_url=url)


def spellings(value: str) -> set[str]:
    """How a value may sit in a column: as given, compact, grouped by four, either case."""
    compact = "".join(value.split())
    grouped = " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
    forms = {value, compact, grouped}
    return forms | {f.lower() for f in forms} | {f.upper() for f in forms}


def scan(settings: Settings, needles: dict[str, set[str]]) -> list[str]:
    """``table.column: what`` for every text or binary cell holding one of the needles."""
    import sqlalchemy as sa

    from paykeep.db import open_database

    found = []
    database = open_database(settings, migrate=False)
    try:
        inspector = sa.inspect(database.engine)
        tables = inspector.get_table_names()
        assert "gateway_payouts" in tables and "stmt_entries" in tables
        with database.read() as conn:
            for table in tables:
                columns = [
                    c["name"]
                    for c in inspector.get_columns(table)
                    if isinstance(c["type"], sa.String | sa.Text | sa.LargeBinary | sa.JSON)
                    or "BYTEA" in str(c["type"]).upper()
                    or "BLOB" in str(c["type"]).upper()
                ]
                if not columns:
                    continue
                quoted = ", ".join(f'"{c}"' for c in columns)
                for row in conn.execute(sa.text(f'SELECT {quoted} FROM "{table}"')):
                    for column, value in zip(columns, row, strict=True):
                        if value is None:
                            continue
                        if isinstance(value, bytes | memoryview | bytearray):
                            text = bytes(value).decode("latin-1")
                        else:
                            text = str(value)
                        for what, forms in needles.items():
                            if any(form in text for form in forms):
                                found.append(f"{table}.{column}: {what}")
    finally:
        database.dispose()
    return sorted(set(found))


def raw_traces(settings: Settings, needles: dict[str, set[str]]) -> list[str]:
    """``where: what`` for each needle found below the columns :func:`scan` reads: on SQLite
    the database file's bytes and its write-ahead log (free pages, index entries, every column
    type); on PostgreSQL every row of every table cast whole to text (every column type; a
    ``bytea`` shows as hex, so the needles are looked for in hex too)."""
    import sqlalchemy as sa

    from paykeep.db import open_database

    found = []
    if not settings.database_url:
        main = settings.data_dir / SQLITE_FILE_NAME
        for path in (main, main.with_name(main.name + "-wal")):
            if not path.exists():
                continue
            data = path.read_bytes()
            for what, forms in needles.items():
                if any(form.encode() in data for form in forms):
                    found.append(f"{path.name}: {what}")
        return sorted(found)
    database = open_database(settings, migrate=False)
    try:
        tables = sa.inspect(database.engine).get_table_names()
        with database.read() as conn:
            for table in tables:
                for (text,) in conn.execute(sa.text(f'SELECT t::text FROM "{table}" AS t')):
                    for what, forms in needles.items():
                        if any(f in text or f.encode().hex() in text for f in forms):
                            found.append(f"{table} (whole rows): {what}")
    finally:
        database.dispose()
    return sorted(set(found))


def refuse_updates(
    database: Any, table: str, column: str, values: Sequence[str], *, on: bool
) -> None:
    """Fault injection for updates only: while on, every UPDATE of ``table`` whose new
    ``column`` is one of ``values`` fails in the database (its transaction rolls back); rows
    are still inserted, and every other row is updated as usual. ``database`` is a
    :class:`paykeep.db.Database`; switch it off before switching it on with other values."""
    listed = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    name = f"test_refuse_update_{table}_{column}"
    _refusing_trigger(database, name, table, ("UPDATE",), f"NEW.{column} IN ({listed})", on=on)


def refuse_row(database: Any, table: str, column: str, value: str, *, on: bool) -> None:
    """Fault injection for one row only: while on, every INSERT or UPDATE of ``table`` whose
    new ``column`` is ``value`` fails in the database (its transaction rolls back); every
    other row is written as usual. ``database`` is a :class:`paykeep.db.Database`."""
    name = f"test_refuse_row_{table}_{column}"
    condition = f"NEW.{column} = '{value}'"
    _refusing_trigger(database, name, table, ("INSERT", "UPDATE"), condition, on=on)
