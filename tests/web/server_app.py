"""The checkout page's test server: the real stack in a real process, run by uvicorn.

``uvicorn --factory tests.web.server_app:create_app`` with the environment naming the state:
``PAYKEEP_DATA_DIR`` (vault keys, SQLite file), ``PAYKEEP_DATABASE_URL`` (PostgreSQL, optional),
``CHECKOUT_CARD_PORT`` (banksim's ISO 8583 port) and ``CHECKOUT_BANK_IBAN`` (the safeguarding
account shown for bank transfers). The tests seed merchants, buyers, orders and sessions through
their own :class:`PaymentsService` on the same database; this process only serves the pages.
(``paykeep serve`` is the shared server; this one exists so the page is tested on its own.)
"""

from __future__ import annotations

import logging
import os
import sys

from fastapi import FastAPI

from paykeep.config import Settings
from paykeep.db import open_database
from paykeep.gateway.cards.client import CardNetworkClient
from paykeep.gateway.cards.service import CardGateway
from paykeep.gateway.payouts.service import PayoutService
from paykeep.gateway.statements.service import StatementService
from paykeep.gateway.vault.keys import VaultKeys
from paykeep.gateway.vault.service import CardVault
from paykeep.ledger.service import Ledger
from paykeep.mail import MAIL_DIR_NAME, DirectoryMailer
from paykeep.payments.service import PaymentsService
from paykeep.security.fields import FieldCipher
from paykeep.web import SecretsFilter, checkout_router

CARD_CALL_TIMEOUT_S = 5.0


def build_service(settings: Settings, card_port: int, bank_iban: str | None) -> PaymentsService:
    """The payments service wired like production: database, ledger, field cipher, vault, a
    card gateway to the card network on ``card_port``, the bank statements and the payout
    gateway (a buyer's withdrawal back to their bank account is a gateway payout). The tests
    use the same function."""
    database = open_database(settings)
    ledger = Ledger(database)
    vault = CardVault.open(database, settings.data_dir)
    client = CardNetworkClient("127.0.0.1", card_port, pool_size=2, timeout_s=CARD_CALL_TIMEOUT_S)
    cards = CardGateway(database, ledger, vault, client, timeout_s=CARD_CALL_TIMEOUT_S)
    cipher = FieldCipher(VaultKeys.load(settings.data_dir))
    statements = StatementService(database, ledger, cipher=cipher)
    payouts = PayoutService(database, ledger, cipher=cipher, statements=statements)
    # Buyers' sign-in codes go to <data dir>/mail/ as .eml files (the tests read them there).
    mailer = DirectoryMailer(settings.data_dir / MAIL_DIR_NAME)
    return PaymentsService(
        database, ledger, cipher, cards=cards, vault=vault, statements=statements,
        payouts=payouts, bank_iban=bank_iban, mailer=mailer,
    )  # fmt: skip


def _logging() -> None:
    """Every log line of this process through one handler on stderr, scrubbed."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(SecretsFilter())
    paykeep = logging.getLogger("paykeep")
    paykeep.addHandler(handler)
    paykeep.setLevel(logging.INFO)
    paykeep.propagate = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        for existing in logging.getLogger(name).handlers:
            existing.addFilter(SecretsFilter())


def create_app() -> FastAPI:
    _logging()
    settings = Settings.resolve(None, None)
    service = build_service(
        settings, int(os.environ["CHECKOUT_CARD_PORT"]), os.environ.get("CHECKOUT_BANK_IBAN")
    )
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(checkout_router(lambda: service))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
