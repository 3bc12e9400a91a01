"""The banksim process: the card network's TCP server and an HTTP control API, one event loop.

``serve(...)`` binds both listeners (port 0 picks a free port), prints one JSON line
``{"http_port": ..., "card_port": ...}`` on stdout once both listen, and returns when SIGTERM
or SIGINT arrives, after closing both cleanly. The HTTP API is bound to 127.0.0.1 only: it is a
test and demo control surface with no authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, Body, FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from paykeep import limits
from paykeep.banksim.bank import BankError, BankStore, bank_faults_from_json
from paykeep.banksim.bank import create_router as create_bank_router
from paykeep.banksim.cardnet import (
    CardNetwork,
    CardServer,
    FaultConfigInvalid,
    fault_rules_from_json,
)

CONTROL_HOST = "127.0.0.1"


class NewCard(BaseModel):
    pan: str = Field(pattern=r"^[0-9]{12,19}$")
    expiry: str = Field(pattern=r"^[0-9]{2}(0[1-9]|1[0-2])$", description="YYMM")
    cvv: str = Field(pattern=r"^[0-9]{3,4}$")
    balance_minor: int = Field(ge=0, le=limits.CARD_AMOUNT_MAX_MINOR)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    forced_response: str | None = Field(default=None, pattern=r"^[0-9]{2}$")


def create_card_router(network: CardNetwork) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "cards": len(network.cards), **network.stats}

    @router.post("/cards", status_code=201)
    async def add_card(card: NewCard) -> dict[str, Any]:
        try:
            added = network.add_card(
                card.pan, card.expiry, card.cvv, card.balance_minor, card.currency,
                card.forced_response,
            )  # fmt: skip
        except FaultConfigInvalid as exc:
            raise HTTPException(422, str(exc)) from None
        return network.card_view(added)

    @router.get("/cards/{ref}")
    async def get_card(ref: str) -> dict[str, Any]:
        found = network.find_cards(ref)
        if not found:
            raise HTTPException(404, "no such card")
        if len(found) > 1:
            raise HTTPException(409, "several cards end in these digits: use the token")
        return network.card_view(found[0])

    @router.get("/faults/cards")
    async def get_faults() -> dict[str, Any]:
        return {"faults": [rule.to_json() for rule in network.faults]}

    @router.post("/faults/cards")
    async def set_faults(
        document: Annotated[dict[str, Any], Body()],
    ) -> dict[str, Any]:
        replace = document.get("mode", "replace")
        if replace not in ("replace", "append"):
            raise HTTPException(422, "mode must be replace or append")
        try:
            rules = fault_rules_from_json({"cards": document.get("faults", [])})
            network.set_faults(rules, replace=replace == "replace")
        except FaultConfigInvalid as exc:
            raise HTTPException(422, str(exc)) from None
        return {"faults": [rule.to_json() for rule in network.faults]}

    @router.delete("/faults/cards")
    async def clear_faults() -> dict[str, Any]:
        network.set_faults([])
        return {"faults": []}

    @router.get("/authorisations")
    async def authorisations(
        card: Annotated[str | None, Query(max_length=64)] = None,
        after_seq: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=limits.BANKSIM_AUTH_LOG_MAX)] = 1_000,
    ) -> dict[str, Any]:
        items = [
            entry
            for entry in network.log
            if entry["seq"] > after_seq
            and (card is None or card in (entry["last4"], entry["card_token"]))
        ]
        return {"authorisations": items[:limit], "last_seq": network.seq}

    return router


#: The acquirer's own account, the debtor of its settlement credits (a valid example IBAN).
ACQUIRER_IBAN = "GB33BUKB20201555555555"


class CardSettlement(BaseModel):
    iban: str = Field(min_length=15, max_length=34)
    currency: str = Field(min_length=3, max_length=3)


def create_app(
    network: CardNetwork, data_dir: Path, bank_faults: dict[str, Any] | None = None
) -> FastAPI:
    app = FastAPI(title="banksim", docs_url=None, redoc_url=None)
    app.include_router(create_card_router(network))
    store = BankStore(data_dir)
    # accounts, payment files, statements
    app.include_router(
        create_bank_router(data_dir, faults=bank_faults, store=store), prefix="/bank"
    )

    @app.post("/settlements/cards")
    async def settle_cards(body: CardSettlement) -> JSONResponse:
        """The acquirer pays what the card network captured since its last settlement into
        ``iban`` (the merchant-of-record's account) as one credit; the answer is the
        settlement report: reference (also the line's end-to-end id), amount and count."""
        due = network.settle_captures(body.currency)
        amount = network.settled_amount(due)
        if not due or amount == 0:
            # Nothing to pay either way (refunds exactly cancel captures): they stay owed and
            # net into the next settlement that moves money.
            network.unsettle(due)
            return JSONResponse({"reference": None, "amount_minor": 0, "count": 0})
        reference = f"CS{network.clock.now_ns() // 1_000_000:013d}"
        try:
            if amount > 0:
                await run_in_threadpool(
                    store.incoming, body.iban, amount, reference, "banksim acquiring",
                    ACQUIRER_IBAN, reference, False,
                )  # fmt: skip
            else:
                # Refunds outweigh captures: the acquirer collects the difference (the report's
                # amount is negative).
                await run_in_threadpool(
                    store.acquirer_debit, body.iban, -amount, reference, "banksim acquiring",
                    ACQUIRER_IBAN,
                )  # fmt: skip
        except BankError as exc:
            network.unsettle(due)  # nothing was paid: they stay owed
            return exc.response()
        # Like a real settlement file, the report lists what it pays (by retrieval reference
        # number), so the acquirer's customer can match it capture by capture.
        return JSONResponse(
            {"reference": reference, "amount_minor": amount, "count": len(due),
             "rrns": sorted(t.rrn for t in due)},
            status_code=201,
        )  # fmt: skip

    return app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: this process owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(
    data_dir: Path,
    host: str = CONTROL_HOST,
    http_port: int = 0,
    card_port: int = 0,
    faults: Any = None,
    seed: int | None = None,
) -> None:
    network = CardNetwork(seed=seed)
    state = CardState(data_dir / CARD_STATE_FILE)
    state.load(network)
    bank_faults = None
    if faults is not None:
        network.set_faults(fault_rules_from_json(faults))
        if isinstance(faults, dict):
            unknown = sorted(set(faults) - {"cards", "bank"})
            if unknown:
                raise FaultConfigInvalid(f"faults: unknown sections {unknown} (cards, bank)")
            try:
                bank_faults = bank_faults_from_json(faults.get("bank", {}))
            except ValueError as exc:
                raise FaultConfigInvalid(str(exc)) from None
    cards = CardServer(network)
    bound_card_port = await cards.start(host, card_port)

    http_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    http_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    http_socket.bind((CONTROL_HOST, http_port))
    bound_http_port = http_socket.getsockname()[1]
    config = uvicorn.Config(
        create_app(network, data_dir, bank_faults),
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = _Server(config)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))

    http_task = loop.create_task(server.serve(sockets=[http_socket]))
    while not server.started:
        if http_task.done():
            await http_task  # re-raises the start-up failure
            return
        await asyncio.sleep(0.01)
    sys.stdout.write(json.dumps({"http_port": bound_http_port, "card_port": bound_card_port}))
    sys.stdout.write("\n")
    sys.stdout.flush()
    saver = loop.create_task(state.keep_saved(network))
    try:
        await http_task
    finally:
        await cards.stop()
        http_socket.close()
        saver.cancel()
        state.save(network)  # the last changes, on a clean stop


#: The card network's cards, holds, captures and settlements, kept across restarts.
CARD_STATE_FILE = "cards.json"
#: How often changed card state is written (a crash loses at most this much).
CARD_STATE_SAVE_INTERVAL_S = 0.5


class CardState:
    """The card network's state in a JSON file of the data directory, written atomically
    (temporary file + rename) whenever it changed, every ``CARD_STATE_SAVE_INTERVAL_S``, and
    on a clean stop. banksim is a simulator: its test cards' numbers are kept in clear."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved_version = -1

    def load(self, network: CardNetwork) -> None:
        if not self.path.exists():
            return
        if self.path.stat().st_size > limits.BANKSIM_CARD_STATE_BYTES_MAX:
            raise FaultConfigInvalid(f"{self.path} is larger than the card state may be")
        try:
            network.restore(json.loads(self.path.read_text(encoding="utf-8")))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise FaultConfigInvalid(f"{self.path} is not banksim card state: {exc}") from None
        self.saved_version = network.version

    def save(self, network: CardNetwork) -> None:
        if network.version == self.saved_version:
            return
        version, data = network.version, network.snapshot()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, self.path)
        self.saved_version = version

    async def keep_saved(self, network: CardNetwork) -> None:
        while True:
            await asyncio.sleep(CARD_STATE_SAVE_INTERVAL_S)
            self.save(network)


def load_faults(path: Path | None) -> Any:
    if path is None:
        return None
    if path.stat().st_size > 1_000_000:
        raise FaultConfigInvalid("the faults file is larger than 1 MB")
    return json.loads(path.read_text(encoding="utf-8"))
