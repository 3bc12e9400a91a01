"""The floor under ``paykeep bench api``: the cheapest durable POST this machine and stack answer.

A FastAPI app in a process of its own, served by uvicorn as ``paykeep serve`` serves the API,
over one SQLite database in Paykeep's mode (WAL, ``synchronous=FULL``) with a group commit:

- ``POST /v1/floor/writes`` validates a two-field body, inserts one row under its
  ``Idempotency-Key`` (unique) and answers once the COMMIT that made the row durable returned;
- ``GET /v1/floor/whoami`` checks a bearer token and answers a constant;
- ``GET /v1/floor/count`` answers how many rows are committed (the bench checks it against
  the writes it was answered for, so the floor is real durable writes, not answers).

No key look-up, no idempotent replay, no ledger, no rules, no events, no webhooks: each
money-moving request of Paykeep does at least what a write here does, so the write rate bounds
what the money path can reach on this machine. It is measured in the same run as the money
path, with the same client and concurrency, while the Paykeep server under test idles.

The write route is ``async`` and the commit wakes it through the event loop: measured here, a
plain-function route (run in the thread pool) made the same write a third slower, and the
floor is the cheapest way, not Paykeep's way.

``python -m paykeep.bench.floor DIR`` prints ``{"port": N, "token": T}`` on one line, then
serves until killed, its database in ``DIR`` (the caller's to remove: uvicorn ends the process
by the signal that stopped it, so nothing here runs after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import secrets
import socket
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Annotated, Final

import uvicorn
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

#: Rows in one COMMIT, as Paykeep's group writer allows (``paykeep.db.group``).
GROUP_MAX: Final = 128
TEXT_MAX: Final = 64


class FloorWrite(BaseModel):
    carrier: Annotated[str, Field(min_length=1, max_length=TEXT_MAX)]
    tracking_number: Annotated[str, Field(min_length=1, max_length=TEXT_MAX)]


_Pending = tuple[str, str, asyncio.AbstractEventLoop, "asyncio.Future[bool]"]


class GroupCommit:
    """One writer thread: each COMMIT makes every write queued since the last one durable."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS writes "
            "(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, body TEXT NOT NULL)"
        )
        self._queue: queue.Queue[_Pending] = queue.Queue()
        threading.Thread(target=self._loop, name="floor-group-commit", daemon=True).start()

    async def write(self, key: str, body: str) -> bool:
        """True once the row is durable; False if ``key`` was already written."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        self._queue.put((key, body, loop, done))
        return await done

    def count(self) -> int:
        """Rows committed: read on a connection of its own (the writer's sees its open group)."""
        with contextlib.closing(sqlite3.connect(f"file:{self._path}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM writes").fetchone()[0])

    def _loop(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < GROUP_MAX:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                created = self._commit(group)
            except sqlite3.Error as exc:  # its writers get the error instead of waiting forever
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                for _key, _body, loop, done in group:
                    loop.call_soon_threadsafe(done.set_exception, exc)
                continue
            for (_key, _body, loop, done), fresh in zip(group, created, strict=True):
                loop.call_soon_threadsafe(done.set_result, fresh)

    def _commit(self, group: list[_Pending]) -> list[bool]:
        created: list[bool] = []
        self._db.execute("BEGIN IMMEDIATE")
        for key, body, _loop, _done in group:
            cursor = self._db.execute(
                "INSERT INTO writes (key, body) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (key, body),
            )
            created.append(cursor.rowcount == 1)
        self._db.execute("COMMIT")
        return created


def create_floor_app(path: Path, token: str) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    commit = GroupCommit(path)
    expected = f"Bearer {token}"

    @app.get("/v1/floor/whoami")
    async def whoami(authorization: Annotated[str, Header()]) -> dict[str, str]:
        if not secrets.compare_digest(authorization, expected):
            raise HTTPException(status_code=401)
        return {"object": "principal", "kind": "floor"}

    @app.post("/v1/floor/writes")
    async def write(
        body: FloorWrite,
        idempotency_key: Annotated[str, Header(min_length=1, max_length=255)],
    ) -> dict[str, object]:
        created = await commit.write(idempotency_key, body.model_dump_json())
        return {"object": "write", "key": idempotency_key, "created": created}

    @app.get("/v1/floor/count")
    async def count() -> dict[str, int]:
        return {"rows": commit.count()}

    return app


def main() -> None:
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python -m paykeep.bench.floor DIR (an existing directory)")
    token = secrets.token_urlsafe(16)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(2048)  # connections wait in the backlog until uvicorn serves, not refused
    app = create_floor_app(Path(sys.argv[1]) / "floor.sqlite3", token)
    print(json.dumps({"port": listener.getsockname()[1], "token": token}), flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
