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


# --- a gateway wired to the session banksim, on the parametrised database -------------------

from pathlib import Path  # noqa: E402

from paykeep.config import Settings  # noqa: E402
from paykeep.db import Database  # noqa: E402
from paykeep.gateway.cards.client import CardNetworkClient  # noqa: E402
from paykeep.gateway.cards.service import CardGateway  # noqa: E402
from paykeep.gateway.vault.service import CardVault  # noqa: E402
from paykeep.ledger.model import AccountFlags, NewAccount  # noqa: E402
from paykeep.ledger.service import Ledger  # noqa: E402

#: Short timeouts keep fault tests fast; delays injected are longer than these.
CALL_TIMEOUT_S = 0.4
REVERSAL_TIMEOUT_S = 0.4


class Rig:
    def __init__(self, banksim: BanksimProcess, database: Database, data_dir: Path) -> None:
        self.banksim = banksim
        self.issuer_tokens: dict[str, str] = {}
        self.database = database
        self.ledger = Ledger(database)
        self.vault = CardVault.open(database, data_dir)
        self.client = CardNetworkClient(
            "127.0.0.1", banksim.card_port, pool_size=2, timeout_s=CALL_TIMEOUT_S
        )
        self.gateway = CardGateway(
            database, self.ledger, self.vault, self.client,
            timeout_s=CALL_TIMEOUT_S, reversal_timeout_s=REVERSAL_TIMEOUT_S,
        )  # fmt: skip
        self.wallet = self.ledger.create_account(
            NewAccount(self.ledger.ids.next_id(), "EUR", 2,
                       int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                       name=f"buyer:{self.ledger.ids.next_id()}:wallet")
        )  # fmt: skip

    def new_card(self, balance_minor: int = 100_000, **extra: object) -> tuple[str, str]:
        """(pan, vault token) of a fresh card at the issuer."""
        pan = new_pan()
        with self.banksim.http() as http:
            response = http.post(
                "/cards",
                json={"pan": pan, "expiry": "3012", "cvv": "321",
                      "balance_minor": balance_minor, "currency": "EUR", **extra},
            )  # fmt: skip
            assert response.status_code == 201, response.text
        self.issuer_tokens[pan] = response.json()["token"]
        return pan, self.vault.tokenize(pan, 12, 2030).token

    def issuer(self, pan: str) -> dict[str, object]:
        with self.banksim.http() as http:
            # By the issuer's token: random test cards can share their last four digits.
            view: dict[str, object] = http.get(f"/cards/{self.issuer_tokens[pan]}").json()
            return view

    def seen(self, pan: str) -> list[dict[str, object]]:
        with self.banksim.http() as http:
            seen: list[dict[str, object]] = http.get(
                "/authorisations", params={"card": self.issuer_tokens[pan]}
            ).json()["authorisations"]
            return seen

    def faults(self, *rules: dict[str, object]) -> None:
        with self.banksim.http() as http:
            http.post("/faults/cards", json={"faults": list(rules)}).raise_for_status()

    def wallet_credits(self) -> int:
        return self.ledger.account(self.wallet.id).credits_posted

    def clearing_debits(self) -> int:
        return self.ledger.account(self.gateway.clearing_account_id()).debits_posted


@pytest.fixture
def rig(banksim: BanksimProcess, database: Database, settings: Settings) -> Iterator[Rig]:
    r = Rig(banksim, database, settings.data_dir)
    yield r
    r.faults()
    r.client.close()
