"""One real ``paykeep serve`` per test module and backend (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from paykeep.api.runtime import ENV_WEBHOOK_ALLOWED_NETWORKS
from paykeep.bench.serveproc import ServerProcess
from paykeep.config import Settings


@contextmanager
def serving(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    *extra: str,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """``paykeep serve --bank-cycle 1 *extra`` on the backend ``request.param`` names (a
    PostgreSQL database of its own, dropped afterwards)."""
    from tests.conftest import BACKENDS, _pg_admin, _pg_url

    if request.param not in BACKENDS:
        pytest.skip(f"backend {request.param} not selected (PAYKEEP_TEST_BACKENDS)")
    data_dir = tmp_path_factory.mktemp("serve")
    name = None
    if request.param == "postgres":
        name = f"paykeep_srv_{uuid.uuid4().hex[:12]}"
        with _pg_admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        settings = Settings(data_dir=data_dir, database_url=_pg_url(name))
    else:
        settings = Settings(data_dir=data_dir)
    # The tests' webhook receivers listen on loopback: opened explicitly for the SSRF guard.
    environment = {ENV_WEBHOOK_ALLOWED_NETWORKS: "127.0.0.0/8,::1/128", **(env or {})}
    try:
        with ServerProcess(settings, "--bank-cycle", "1", *extra, env=environment) as proc:
            yield proc
    finally:
        if name is not None:
            with _pg_admin() as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with serving(request, tmp_path_factory) as proc:
        yield proc
