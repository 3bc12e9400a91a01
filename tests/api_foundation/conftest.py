"""One real server process per backend and test session (starting one costs about a second).

Tests share it and stay independent by using fresh names, keys and merchants; a test that
moves the server's clock only ever moves it forward, which no other test depends on.
"""

from __future__ import annotations

import json
import select
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from paykeep.config import SQLITE_FILE_NAME, Settings
from paykeep.db import Database, open_database
from paykeep.security.api_keys import ApiKeyService
from tests.conftest import BACKENDS, _pg_admin, _pg_url

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60


@dataclass
class ApiServer:
    backend: str
    settings: Settings
    database: Database
    process: subprocess.Popen[str]
    base_url: str
    log_path: Path
    keys: ApiKeyService = field(init=False)

    def __post_init__(self) -> None:
        self.keys = ApiKeyService(self.database)

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30.0)

    def new_merchant(self) -> str:
        merchant_id = "mch_" + uuid.uuid4().hex[:20]
        with self.database.write() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO payments_merchants (id, legal_name, country, currency, "
                    "payout_iban_verified, fee_percent_bp, fee_fixed_minor, reserve_percent_bp, "
                    "reserve_hold_s, unpaid_close_s, ship_by_s, confirm_after_delivery_s, "
                    "confirm_after_shipping_s, payment_reference, created_at_ns) VALUES (:id, "
                    "'Test Shop', 'DE', 'EUR', false, 250, 25, 0, 0, 3600, 86400, 86400, 864000,"
                    " :ref, 0)"
                ),
                {"id": merchant_id, "ref": "PK" + uuid.uuid4().hex[:20].upper()},
            )
        return merchant_id

    def merchant_key(self, merchant_id: str | None = None) -> str:
        plain, _ = self.keys.create("merchant", merchant_id or self.new_merchant())
        return plain

    def operator_key(self) -> str:
        plain, _ = self.keys.create("operator", label="tests")
        return plain

    def advance(self, seconds: int) -> None:
        with self.client() as http:
            http.post("/test/clock/advance", json={"seconds": seconds}).raise_for_status()

    def now_ns(self) -> int:
        with self.client() as http:
            return int(http.get("/test/clock").json()["now_ns"])


def _start(
    data_dir: Path, database_url: str | None, log_path: Path
) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "tests.api_foundation.app_for_tests", "--data-dir", str(data_dir)]
    if database_url:
        args += ["--database-url", database_url]
    # The server's log goes to a file: a pipe nobody reads would block it once full.
    with log_path.open("w") as log:
        process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], STARTUP_TIMEOUT_S)
    line = process.stdout.readline() if ready else ""
    if not line:
        process.kill()
        process.wait(timeout=10)
        raise RuntimeError(f"test server did not start: {log_path.read_text()[-2000:]}")
    return process, f"http://127.0.0.1:{json.loads(line)['port']}"


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()


@pytest.fixture(scope="session", params=BACKENDS)
def api_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    backend = str(request.param)
    data_dir = tmp_path_factory.mktemp(f"api-{backend}")
    database_url: str | None = None
    pg_name: str | None = None
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copyfile(template, data_dir / SQLITE_FILE_NAME)
    else:
        template_name: str = request.getfixturevalue("postgres_template")
        pg_name = f"paykeep_api_{uuid.uuid4().hex[:16]}"
        with _pg_admin() as admin:
            admin.execute(f'CREATE DATABASE "{pg_name}" TEMPLATE "{template_name}"')
        database_url = _pg_url(pg_name)
    settings = Settings(data_dir=data_dir, database_url=database_url)
    database = open_database(settings)
    log_path = data_dir / "server.log"
    process, base_url = _start(data_dir, database_url, log_path)
    try:
        yield ApiServer(backend, settings, database, process, base_url, log_path)
    finally:
        stop(process)
        database.dispose()
        if pg_name is not None:
            with _pg_admin() as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"
