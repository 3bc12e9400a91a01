"""Start and stop a real banksim process for tests (shared by the bank and payout tests):
``python -m paykeep.banksim`` (card network + bank), which prints one JSON line with its
bound ports when ready.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from schwifty import IBAN

STARTUP_TIMEOUT_S = 30.0


@dataclass
class BankProcess:
    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def banksim_command(data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "paykeep.banksim", "--data-dir", str(data_dir),
            "--http-port", "0", "--card-port", "0"]  # fmt: skip


def start_bank(data_dir: Path) -> BankProcess:
    root = Path(__file__).parents[3]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    data_dir.mkdir(parents=True, exist_ok=True)
    # stderr goes to a file: a pipe nobody drains could fill up and stall the server.
    with (data_dir / "banksim.stderr").open("wb") as stderr:
        process = subprocess.Popen(
            banksim_command(data_dir), stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=root
        )
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    line = b""
    while not line.endswith(b"\n"):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            process.wait(timeout=10)
            err = (data_dir / "banksim.stderr").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"banksim did not start: {err}")
        if selector.select(timeout=0.1):
            chunk = os.read(process.stdout.fileno(), 4096)
            line += chunk
    selector.close()
    ready = json.loads(line.splitlines()[0])
    return BankProcess(process, f"http://127.0.0.1:{ready['http_port']}", data_dir)


#: A real bank code per country (schwifty checks the bank registry and the BBAN layout).
_RANDOM = random.SystemRandom()
_BANKS = {"DE": ("37040044", 10), "NL": ("ABNA", 10)}


def new_iban(country: str = "DE") -> str:
    """A fresh valid IBAN (random account number) so tests sharing a bank never collide."""
    bank_code, digits = _BANKS[country]
    # SystemRandom: Hypothesis reseeds the module-level generator for every example.
    account = str(_RANDOM.randrange(10 ** (digits - 1), 10**digits))
    return str(IBAN.generate(country, bank_code=bank_code, account_code=account).compact)
