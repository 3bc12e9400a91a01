"""The bench's floor (:mod:`paykeep.bench.floor`) over real HTTP: its writes are durable rows,
one per key, and it refuses what the money path would refuse (a body out of shape, no key, a
wrong token), so its rate is a real durable POST's."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from paykeep.bench.floor import GroupCommit


@pytest.fixture(scope="module")
def floor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, str]]:
    directory = tmp_path_factory.mktemp("floor")
    child = subprocess.Popen(
        [sys.executable, "-m", "paykeep.bench.floor", str(directory)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        started = json.loads(child.stdout.readline())
        with httpx.Client(base_url=f"http://127.0.0.1:{started['port']}", timeout=30) as http:
            yield http, started["token"]
    finally:
        child.terminate()
        child.wait(timeout=10)


def _rows(http: httpx.Client) -> int:
    return int(http.get("/v1/floor/count").json()["rows"])


def test_a_write_is_one_row_per_key(floor: tuple[httpx.Client, str]) -> None:
    http, _token = floor
    before = _rows(http)
    body = {"carrier": "bench-post", "tracking_number": "BP1"}
    first = http.post("/v1/floor/writes", json=body, headers={"Idempotency-Key": "k-one"})
    again = http.post("/v1/floor/writes", json=body, headers={"Idempotency-Key": "k-one"})
    other = http.post("/v1/floor/writes", json=body, headers={"Idempotency-Key": "k-two"})
    assert [r.status_code for r in (first, again, other)] == [200, 200, 200]
    assert [r.json()["created"] for r in (first, again, other)] == [True, False, True]
    assert _rows(http) == before + 2


def test_what_the_floor_refuses_writes_nothing(floor: tuple[httpx.Client, str]) -> None:
    http, token = floor
    before = _rows(http)
    key = {"Idempotency-Key": "k-refused"}
    assert http.post("/v1/floor/writes", json={"carrier": "x"}, headers=key).status_code == 422
    too_long = {"carrier": "x" * 65, "tracking_number": "BP"}
    assert http.post("/v1/floor/writes", json=too_long, headers=key).status_code == 422
    body = {"carrier": "x", "tracking_number": "BP"}
    assert http.post("/v1/floor/writes", json=body).status_code == 422  # no key
    assert _rows(http) == before
    assert http.get("/v1/floor/whoami", headers={"Authorization": "Bearer no"}).status_code == 401
    assert http.get("/v1/floor/whoami").status_code == 422
    answer = http.get("/v1/floor/whoami", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and answer.json()["kind"] == "floor"


def test_the_floor_wants_a_directory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "paykeep.bench.floor", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "DIR" in done.stderr and not done.stdout


def test_a_committed_write_is_on_disk_for_another_connection(tmp_path: Path) -> None:
    commit = GroupCommit(tmp_path / "floor.sqlite3")

    async def twice() -> tuple[bool, bool]:
        return await commit.write("k", '{"carrier": "x"}'), await commit.write("k", "{}")

    assert asyncio.run(twice()) == (True, False)
    with sqlite3.connect(tmp_path / "floor.sqlite3") as other:
        rows = other.execute("SELECT key, body FROM writes").fetchall()
        mode = other.execute("PRAGMA journal_mode").fetchone()[0]
    assert rows == [("k", '{"carrier": "x"}')] and mode == "wal"


def test_a_failed_group_fails_its_writers_and_the_next_group_commits(tmp_path: Path) -> None:
    """A group the database refuses answers its writers with the error (none waits forever),
    and the writer thread goes on with the next group."""
    path = tmp_path / "floor.sqlite3"
    commit = GroupCommit(path)
    with sqlite3.connect(path) as other:
        other.execute("DROP TABLE writes")

    async def refused() -> None:
        await asyncio.wait_for(commit.write("lost", "{}"), timeout=10)

    with pytest.raises(sqlite3.OperationalError, match="writes"):
        asyncio.run(refused())
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE writes (id INTEGER PRIMARY KEY, key TEXT UNIQUE, body TEXT)")

    async def after() -> bool:
        return await asyncio.wait_for(commit.write("kept", "{}"), timeout=10)

    assert asyncio.run(after()) is True
    assert commit.count() == 1
