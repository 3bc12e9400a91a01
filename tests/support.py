"""Helpers shared by tests of several contexts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from paykeep.config import Settings


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

    trigger = f"test_refuse_{table}"
    database = open_database(settings, migrate=False)
    try:
        with database.engine.begin() as conn:
            if database.is_postgres:
                if on:
                    conn.exec_driver_sql(
                        f"CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS "
                        "$$ BEGIN RAISE EXCEPTION 'injected'; END $$"
                    )
                    conn.exec_driver_sql(
                        f"CREATE TRIGGER {trigger} BEFORE INSERT ON {table} "
                        f"FOR EACH ROW EXECUTE FUNCTION {trigger}()"
                    )
                else:
                    conn.exec_driver_sql(f"DROP TRIGGER {trigger} ON {table}")
                    conn.exec_driver_sql(f"DROP FUNCTION {trigger}()")
            elif on:
                conn.exec_driver_sql(
                    f"CREATE TRIGGER {trigger} BEFORE INSERT ON {table} "
                    "BEGIN SELECT RAISE(ABORT, 'injected'); END"
                )
            else:
                conn.exec_driver_sql(f"DROP TRIGGER {trigger}")
    finally:
        database.dispose()


def server_settings(server: Any) -> Settings:
    """The settings (data dir, database URL) a running ``ServerProcess`` was started with."""
    argv = list(server.process.args)
    url = argv[argv.index("--database-url") + 1] if "--database-url" in argv else None
    return Settings(data_dir=Path(argv[argv.index("--data-dir") + 1]), database_url=url)
