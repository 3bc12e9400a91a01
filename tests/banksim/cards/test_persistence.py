"""banksim keeps its card network's state across restarts: cards and balances, holds, what
was captured, and the answers a retransmission must get again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paykeep.bench.gateway import BanksimProcess
from paykeep.gateway.cards.client import CardNetworkClient
from paykeep.gateway.cards.iso8583 import currency_numeric, original_data_elements

PAN = "4000056655665556"


def _auth(stan: str, amount: int) -> dict[str, str]:
    return {"t": "0100", "2": PAN, "3": "000000", "4": f"{amount:012d}", "7": "1126101500",
            "11": stan, "14": "4912", "41": "PERSIST1", "42": "PAYKEEPPERSIST1",
            "49": currency_numeric("EUR")}  # fmt: skip


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_holds_and_captures_survive_a_restart(tmp_path: Path, stop: str) -> None:
    data_dir = tmp_path / "banksim"
    bank = BanksimProcess(data_dir)
    with bank.http() as http:
        card = {"pan": PAN, "expiry": "4912", "cvv": "123", "balance_minor": 10_000,
                "currency": "EUR"}  # fmt: skip
        token = http.post("/cards", json=card).json()["token"]
    with CardNetworkClient("127.0.0.1", bank.card_port, pool_size=1) as client:
        first = client.call(_auth("000101", 3_000))
        assert first["39"] == "00"
    if stop == "sigterm":
        bank.stop()
    else:
        # A crash: whatever was saved by the periodic writer (every 0.5 s) must be enough.
        time.sleep(1.5)
        bank.process.send_signal(signal.SIGKILL)
        bank.process.wait(timeout=10)
        bank.stop()
    again = BanksimProcess(data_dir)
    try:
        with again.http() as http:
            view = http.get(f"/cards/{token}").json()
        assert (view["balance_minor"], view["held_minor"]) == (7_000, 3_000)
        with CardNetworkClient("127.0.0.1", again.card_port, pool_size=1) as client:
            # A retransmission of the original gets its stored answer, applied once.
            assert client.call(_auth("000101", 3_000)) == first
            capture = {**_auth("000102", 2_500), "t": "0200",
                       "90": original_data_elements("0100", "000101", "1126101500")}  # fmt: skip
            assert client.call(capture)["39"] == "00"
        with again.http() as http:
            view = http.get(f"/cards/{token}").json()
        assert (view["balance_minor"], view["held_minor"], view["captured_minor"]) == (
            7_500, 0, 2_500,
        )  # fmt: skip
    finally:
        again.stop()


def test_a_corrupt_state_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    data_dir = tmp_path / "banksim"
    data_dir.mkdir()
    (data_dir / "cards.json").write_text(json.dumps({"format": 1, "cards": [{"pan": 1}]}))
    done = subprocess.run(
        [sys.executable, "-m", "paykeep.banksim", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "card state" in done.stderr
