"""Payout tests: a fresh database per test (both backends), a chart of accounts with a funded
merchant, and one real banksim process per session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from paykeep.bench.gateway import BanksimProcess
from paykeep.clock import FakeClock
from paykeep.db import Database
from paykeep.gateway.payouts.model import Debtor, Payout
from paykeep.gateway.payouts.service import PayoutService
from paykeep.gateway.statements.service import StatementService
from paykeep.ledger.model import AccountFlags, NewAccount, NewTransfer
from paykeep.ledger.service import Ledger
from paykeep.security.fields import FieldCipher
from tests.banksim.bank.helpers import new_iban

ASSET, LIABILITY = 1, 2
MERCHANT = "merchant:42:available"
BANK_ACCOUNT = "bank:safeguarding:simbank"
FUNDED_MINOR = 100_000


@dataclass
class World:
    database: Database
    ledger: Ledger
    clock: FakeClock
    statements: StatementService
    payouts: PayoutService
    debtor: Debtor

    def balance(self, name: str) -> int:
        """Credit-positive balance (what a liability owes; an asset shows negative)."""
        account = self.ledger.account_by_name(name)
        return account.credits_posted - account.debits_posted

    def request(self, request_id: str = "req-1", amount: int = 12_345, **kw: object) -> Payout:
        fields: dict[str, object] = {
            "merchant_ref": "42",
            "amount_minor": amount,
            "currency": "EUR",
            "debit_account_name": MERCHANT,
            "creditor_name": "Tea Shop GmbH",
            "creditor_iban": "NL91ABNA0417164300",
            "request_id": request_id,
        }
        fields.update(kw)
        return self.payouts.request(**fields)  # type: ignore[arg-type]


@pytest.fixture
def world(database: Database, cipher: FieldCipher) -> World:
    clock = FakeClock()
    ledger = Ledger(database, clock)
    ledger.create_accounts(
        [
            NewAccount(1, "EUR", ASSET, int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS),
                       name=BANK_ACCOUNT),
            NewAccount(2, "EUR", LIABILITY, int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                       name=MERCHANT),
            NewAccount(3, "USD", LIABILITY, int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                       name="merchant:7:available"),
        ]
    )  # fmt: skip
    ledger.create_transfer(NewTransfer(10, 1, 2, FUNDED_MINOR, "EUR", 1))
    statements = StatementService(database, ledger, clock, cipher=cipher)
    payouts = PayoutService(database, ledger, cipher=cipher, clock=clock, statements=statements)
    debtor = Debtor("Paykeep Safeguarding", new_iban(), "simbank", "COBADEFFXXX")
    return World(database, ledger, clock, statements, payouts, debtor)


@pytest.fixture(scope="session")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BanksimProcess]:
    process = BanksimProcess(tmp_path_factory.mktemp("banksim-payouts"))
    yield process
    process.stop()


@pytest.fixture
def http(bank: BanksimProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=bank.base_url, timeout=10) as client:
        yield client
