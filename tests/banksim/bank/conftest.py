"""A real bank over real HTTP: one banksim process per test session (per xdist worker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from paykeep.bench.gateway import BanksimProcess


@pytest.fixture(scope="session")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BanksimProcess]:
    process = BanksimProcess(tmp_path_factory.mktemp("banksim"))
    yield process
    process.stop()


@pytest.fixture
def http(bank: BanksimProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bank.base_url, timeout=10) as client:
        yield client
        client.post(
            "/bank/faults",
            json={"unknown_reference_line": False, "reject_payment_files": False,
                  "return_after_settlement": False},
        )  # fmt: skip


@pytest.fixture
def fixtures_dir() -> Path:
    return Path(__file__).parents[2] / "fixtures" / "bank" / "pain001"
