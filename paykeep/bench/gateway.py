"""``paykeep bench gateway``: card authorisations per second over ISO 8583, with a baseline.

Starts a real banksim process (``python -m paykeep.banksim``) and measures, in the same run:

- ``echo``: the raw round trip of an empty 0800/0810 network management echo — the baseline;
- ``network_authorisations``: bare 0100/0110 exchanges through the acquirer client (no
  database), i.e. what ISO 8583 encoding and the issuer cost on top of the echo;
- ``authorisations``: ``CardGateway.authorise`` end to end (vault, payment state persisted
  before and after each message, SQLite with ``synchronous`` as configured);
- ``statements``: statement lines imported per second, when the statements work provides
  ``paykeep.gateway.statements.bench.run_statement_bench``.

``ratio`` = authorisations per second / echoes per second, a figure that survives a noisy machine.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from paykeep import limits
from paykeep.config import Settings
from paykeep.db import open_database
from paykeep.gateway.cards.client import CardNetworkClient
from paykeep.gateway.cards.iso8583 import currency_numeric
from paykeep.gateway.cards.model import CardOutcome
from paykeep.gateway.cards.service import CardGateway
from paykeep.gateway.vault.service import CardVault
from paykeep.ledger.service import Ledger

BENCH_PAN = "4000056655665556"  # a Luhn-valid visa test number, given a large balance here
STARTUP_TIMEOUT_S = 30.0


class BanksimProcess:
    """A banksim subprocess on free ports; ``stop()`` sends SIGTERM and waits."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.process = subprocess.Popen(
            [sys.executable, "-m", "paykeep.banksim", "--data-dir", str(data_dir),
             "--http-port", "0", "--card-port", "0", *(extra_args or [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], STARTUP_TIMEOUT_S)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.process.kill()
            _, err = self.process.communicate(timeout=5)
            raise RuntimeError(f"banksim did not start: {err.strip()[-500:]}")
        ports = json.loads(line)
        self.http_port = int(ports["http_port"])
        self.card_port = int(ports["card_port"])
        self.base_url = f"http://127.0.0.1:{self.http_port}"

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=10.0)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return int(self.process.returncode)

    def __enter__(self) -> BanksimProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _timed(count: int, concurrency: int, one: Callable[[int], bool]) -> dict[str, Any]:
    latencies: list[float] = []
    lock = threading.Lock()
    ok = 0

    def run(i: int) -> None:
        nonlocal ok
        start = time.perf_counter()
        good = one(i)
        elapsed = time.perf_counter() - start
        with lock:
            latencies.append(elapsed)
            ok += int(good)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(run, range(count)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "count": count,
        "ok": ok,
        "seconds": round(wall, 3),
        "per_second": round(count / wall, 1) if wall > 0 else None,
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
    }


def run_gateway_bench(
    authorisations: int = 2_000,
    concurrency: int = 8,
    echoes: int | None = None,
    statement_lines: int = 10_000,
) -> dict[str, Any]:
    if not 0 < authorisations <= limits.BENCH_CARD_AUTHS_MAX:
        raise ValueError(f"authorisations must be 1 to {limits.BENCH_CARD_AUTHS_MAX}")
    if not 0 < concurrency <= limits.BENCH_CARD_CONCURRENCY_MAX:
        raise ValueError(f"concurrency must be 1 to {limits.BENCH_CARD_CONCURRENCY_MAX}")
    echoes = echoes or authorisations
    workdir = Path(tempfile.mkdtemp(prefix="paykeep-bench-gateway-"))
    pool_size = min(concurrency, limits.CARD_POOL_SIZE_MAX)
    try:
        with BanksimProcess(workdir / "banksim") as bank:
            with bank.http() as http:
                http.post(
                    "/cards",
                    json={"pan": BENCH_PAN, "expiry": "4912", "cvv": "123",
                          "balance_minor": limits.CARD_AMOUNT_MAX_MINOR, "currency": "EUR"},
                ).raise_for_status()  # fmt: skip
            client = CardNetworkClient("127.0.0.1", bank.card_port, pool_size=pool_size)
            with client:
                client.echo()  # connect once before timing
                echo = _timed(echoes, concurrency, lambda _i: client.echo().get("39") == "00")

                def raw_auth(_i: int) -> bool:
                    stan = client.next_stan()
                    response = client.call(
                        {"t": "0100", "2": BENCH_PAN, "3": "000000", "4": "000000000100",
                         "7": "0101000000", "11": stan, "14": "4912", "41": "BENCHRAW",
                         "42": "PAYKEEPBENCH001", "49": currency_numeric("EUR")}
                    )  # fmt: skip
                    return response.get("39") == "00"

                network = _timed(authorisations, concurrency, raw_auth)
                data_dir = workdir / "paykeep"
                database = open_database(Settings(data_dir=data_dir))
                try:
                    ledger = Ledger(database)
                    vault = CardVault.open(database, data_dir)
                    card = vault.tokenize(BENCH_PAN, 12, 2049)
                    gateway = CardGateway(database, ledger, vault, client)
                    run_id = ledger.ids.next_id()

                    def auth(i: int) -> bool:
                        result = gateway.authorise(
                            card.token, 100, "EUR", payment_id=f"bench-{run_id}-{i}",
                            security_code="123",
                        )  # fmt: skip
                        return result.outcome is CardOutcome.APPROVED

                    full = _timed(authorisations, concurrency, auth)
                finally:
                    database.dispose()
        figures: dict[str, Any] = {
            "concurrency": concurrency,
            "pool_size": pool_size,
            "sqlite_synchronous": os.environ.get("PAYKEEP_SQLITE_SYNCHRONOUS", "FULL"),
            "echo": echo,
            "network_authorisations": network,
            "authorisations": full,
            "ratio": (
                round(full["per_second"] / echo["per_second"], 4)
                if full["per_second"] and echo["per_second"]
                else None
            ),
            "network_ratio": (
                round(network["per_second"] / echo["per_second"], 4)
                if network["per_second"] and echo["per_second"]
                else None
            ),
        }
        figures["statements"] = _statement_figures(statement_lines)
        return figures
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _statement_figures(lines: int) -> dict[str, Any]:
    """Statement lines parsed and imported per second (``gateway.statements.bench``)."""
    from paykeep.gateway.statements.bench import run_statement_bench

    return run_statement_bench(lines)
