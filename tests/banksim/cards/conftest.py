"""A real banksim process, shared by this directory's tests (session scope keeps them fast)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from stdnum import luhn

from paykeep.bench.gateway import BanksimProcess


@pytest.fixture(scope="session")
def banksim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BanksimProcess]:
    process = BanksimProcess(tmp_path_factory.mktemp("banksim"))
    yield process
    process.stop()


def new_pan(prefix: str = "4") -> str:
    """A fresh Luhn-valid card number (16 digits), so each test owns its card."""
    body = prefix + "".join(str(secrets.randbelow(10)) for _ in range(15 - len(prefix)))
    return body + luhn.calc_check_digit(body)
