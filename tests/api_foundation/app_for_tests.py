"""A small API on the foundation, served by a real uvicorn process for the tests.

``python -m tests.api_foundation.app_for_tests --data-dir DIR [--database-url URL]`` prints
``{"port": N}`` once it listens on 127.0.0.1. Its clock is a FakeClock the tests move with
``POST /test/clock/advance``. The "operation" is a counter: a row of ``payments_outbox_cursor``
(name ``ctr_<name>``) whose ``seq`` goes up — an effect the tests can count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection
from starlette.responses import Response

# Families of errors the tests raise by code through GET /v1/raise/{code}.
import paykeep.db.errors
import paykeep.gateway.payouts.errors
import paykeep.ledger.errors
import paykeep.security.errors  # noqa: F401
from paykeep.api.auth import CurrentPrincipal, OperatorPrincipal, check_owner, missing, owner_filter
from paykeep.api.errors import JsonResponse
from paykeep.api.foundation import build_app
from paykeep.api.idempotency import IdempotencyMeta, idempotent_response
from paykeep.api.pagination import Page, keyset_clause, page_response
from paykeep.clock import FakeClock
from paykeep.config import Settings
from paykeep.db import Database, open_database
from paykeep.errors import registered_errors
from paykeep.security.api_keys import ApiKeyService

COUNTER_PREFIX = "ctr_"
_BUMP = sa.text(
    "INSERT INTO payments_outbox_cursor (name, seq) VALUES (:name, :by) "
    "ON CONFLICT (name) DO UPDATE SET seq = payments_outbox_cursor.seq + :by RETURNING seq"
)
_GET = sa.text("SELECT seq FROM payments_outbox_cursor WHERE name = :name")


class IncrementIn(BaseModel):
    by: int = Field(ge=1, le=1_000)
    #: A registered error code raised after the effect (which must then roll back).
    fail_with: str | None = None
    #: Milliseconds to wait inside the transaction (to make two requests overlap).
    sleep_ms: int = Field(default=0, ge=0, le=2_000)


class Item(BaseModel):
    description: str
    quantity: int = Field(ge=1)


class EchoIn(BaseModel):
    reference: str
    items: list[Item]


class AdvanceIn(BaseModel):
    seconds: int


def create_app(database: Database, clock: FakeClock) -> FastAPI:
    app = build_app("Paykeep foundation test API", "0.0.1", api_keys=ApiKeyService(database, clock))
    #: counter name -> "crash" (RuntimeError) or an error code: raised once, by the next bump.
    armed: dict[str, str] = {}
    armed_lock = threading.Lock()

    def bump(conn: Connection, name: str, by: int) -> int:
        return int(conn.execute(_BUMP, {"name": COUNTER_PREFIX + name, "by": by}).scalar_one())

    @app.post("/v1/counters/{name}/increment")
    def increment(
        name: str, body: IncrementIn, principal: CurrentPrincipal, idem: IdempotencyMeta
    ) -> Response:
        def operation(conn: Connection) -> tuple[int, dict[str, Any]]:
            seq = bump(conn, name, body.by)
            if body.sleep_ms:
                time.sleep(body.sleep_ms / 1000)
            with armed_lock:
                trap = armed.pop(name, None)
            if trap == "crash":
                raise RuntimeError("armed crash")
            if trap is not None:
                raise registered_errors()[trap]("armed failure")
            if body.fail_with is not None:
                raise registered_errors()[body.fail_with]("asked to fail", param="fail_with")
            return 200, {"object": "counter", "id": name, "seq": seq, "by": principal.key_id}

        return idempotent_response(database.write, principal, idem, operation, clock=clock)

    @app.get("/v1/counters/{name}")
    def get_counter(name: str, principal: CurrentPrincipal) -> Response:
        with database.read() as conn:
            seq = conn.execute(_GET, {"name": COUNTER_PREFIX + name}).scalar()
        if seq is None:
            raise missing("counter", name)
        return JsonResponse({"object": "counter", "id": name, "seq": int(seq)})

    @app.get("/v1/groups/{group}/counters")
    def list_counters(group: str, page: Page, principal: CurrentPrincipal) -> Response:
        sql = sa.text(
            "SELECT name, seq FROM payments_outbox_cursor WHERE name LIKE :group"
            + keyset_clause(page, "name")
            + " ORDER BY name DESC LIMIT :fetch"
        )
        with database.read() as conn:
            rows = conn.execute(sql, {"group": f"{group}%", **page.sql_params()}).all()
        return page_response(page, rows, lambda row: {"id": row.name, "seq": int(row.seq)})

    @app.post("/test/counters/{name}/arm")
    async def arm(name: str, trap: Annotated[str, Query()]) -> dict[str, str]:
        with armed_lock:
            armed[name] = trap
        return {"armed": trap}

    @app.get("/v1/whoami")
    async def whoami(principal: CurrentPrincipal) -> dict[str, Any]:
        return {
            "key_id": principal.key_id,
            "role": principal.role,
            "merchant_id": principal.merchant_id,
            "owner_filter": owner_filter(principal),
        }

    @app.get("/v1/operator-only")
    async def operator_only(principal: OperatorPrincipal) -> dict[str, bool]:
        return {"ok": True}

    @app.get("/v1/things/{owner}/{thing_id}")
    async def get_thing(owner: str, thing_id: str, principal: CurrentPrincipal) -> dict[str, str]:
        if owner == "nobody":
            raise missing("thing", thing_id)
        check_owner(principal, owner, "thing", thing_id)
        return {"id": thing_id, "merchant_id": owner}

    @app.get("/v1/raise/{code}")
    async def raise_error(code: str) -> None:
        raise registered_errors()[code]("raised on purpose", param="somewhere")

    @app.get("/v1/crash")
    async def crash() -> None:
        raise RuntimeError("secret detail /srv/paykeep/internal.py password=hunter2")

    @app.post("/v1/echo")
    async def echo(body: EchoIn) -> dict[str, Any]:
        return body.model_dump()

    @app.post("/v1/echo-raw")
    async def echo_raw(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.post("/test/clock/advance")
    async def advance(body: AdvanceIn) -> dict[str, int]:
        return {"now_ns": clock.advance(ns=body.seconds * 1_000_000_000)}

    @app.get("/test/clock")
    async def now() -> dict[str, int]:
        return {"now_ns": clock.now_ns()}

    return app


async def _serve(app: FastAPI) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    sys.stdout.write(json.dumps({"port": sock.getsockname()[1]}) + "\n")
    sys.stdout.flush()
    await task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    database = open_database(Settings(data_dir=args.data_dir, database_url=args.database_url))
    clock = FakeClock(start_ns=time.time_ns())
    asyncio.run(_serve(create_app(database, clock)))


if __name__ == "__main__":
    main()
