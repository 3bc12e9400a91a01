"""Test wiring: every database-backed test runs on SQLite and on PostgreSQL.

PostgreSQL is required (CI starts it). Each test gets a fresh database: SQLite files are
copied from a migrated template file, PostgreSQL databases are created from a migrated
template database (``CREATE DATABASE ... TEMPLATE``), both made once per worker.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from paykeep.config import SQLITE_FILE_NAME, Settings
from paykeep.db import Database, field_cipher, open_database
from paykeep.security.fields import FieldCipher

POSTGRES_URL = os.environ.get(
    "PAYKEEP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = [b for b in os.environ.get("PAYKEEP_TEST_BACKENDS", "sqlite,postgres").split(",") if b]


def _pg_url(dbname: str) -> str:
    base, _, _ = POSTGRES_URL.rpartition("/")
    return f"{base}/{dbname}"


def _pg_admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def worker_tag() -> str:
    return f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{os.getpid()}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sqlite-template")
    database = open_database(Settings(data_dir=directory))
    database.dispose()
    return directory / SQLITE_FILE_NAME


@pytest.fixture(scope="session")
def postgres_template(worker_tag: str) -> Iterator[str]:
    name = f"paykeep_tpl_{worker_tag}"
    try:
        admin = _pg_admin()
    except psycopg.OperationalError as exc:
        pytest.exit(
            f"PostgreSQL is required at {POSTGRES_URL} ({exc}); start it or set "
            "PAYKEEP_TEST_BACKENDS=sqlite to run the SQLite half only",
            returncode=2,
        )
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    database = open_database(Settings(data_dir=Path("/nonexistent"), database_url=_pg_url(name)))
    database.dispose()
    yield name
    with _pg_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings for a fresh, migrated database of the parametrized backend."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copyfile(template, data_dir / SQLITE_FILE_NAME)
        yield Settings(data_dir=data_dir)
        return
    template_name: str = request.getfixturevalue("postgres_template")
    name = f"paykeep_t_{uuid.uuid4().hex[:16]}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
    yield Settings(data_dir=data_dir, database_url=_pg_url(name))
    with _pg_admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    db = open_database(settings)
    yield db
    db.dispose()


@pytest.fixture
def cipher(settings: Settings) -> FieldCipher:
    """The field cipher of the test's data directory (its keys are made on first use)."""
    return field_cipher(settings)
