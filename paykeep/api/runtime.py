"""The composition root: every service of one Paykeep process, wired once.

An API process (``paykeep serve`` runs one or several) and the worker loops build the same
:class:`Runtime` from :class:`RuntimeConfig`, which ``paykeep serve`` passes to its children
through the environment (``PAYKEEP_*`` variables below), so a process started by uvicorn's
multi-process mode finds everything without arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import httpx
from fastapi import Depends, Request

from paykeep.config import Settings
from paykeep.workers.webhook_model import (
    IPNetwork,
    format_allowed_networks,
    parse_allowed_networks,
)

if TYPE_CHECKING:
    from paykeep.aml.cases.service import CaseService
    from paykeep.aml.rules.escrow import EscrowRisk
    from paykeep.db import Database
    from paykeep.gateway.cards.client import CardNetworkClient
    from paykeep.gateway.cards.service import CardGateway
    from paykeep.gateway.payouts.service import PayoutService
    from paykeep.gateway.statements.service import StatementService
    from paykeep.gateway.vault.service import CardVault
    from paykeep.ledger.service import Ledger
    from paykeep.payments.service import PaymentsService
    from paykeep.security.api_keys import ApiKeyService
    from paykeep.security.fields import FieldCipher
    from paykeep.workers.webhooks import WebhookService

ENV_CARD_NETWORK = "PAYKEEP_CARD_NETWORK"  # host:port of the acquirer's ISO 8583 endpoint
ENV_BANK_URL = "PAYKEEP_BANK_URL"  # the bank's HTTP API (banksim: http://127.0.0.1:port)
ENV_BANK_IBAN = "PAYKEEP_BANK_IBAN"  # the safeguarding account's IBAN
ENV_BANK_NAME = "PAYKEEP_BANK_NAME"  # names the ledger account bank:safeguarding:<name>
ENV_PUBLIC_URL = "PAYKEEP_PUBLIC_URL"  # how buyers reach this server (checkout links)
ENV_CURRENCY = "PAYKEEP_CURRENCY"  # the acquirer's and the safeguarding account's currency
#: Comma-separated CIDRs webhook endpoints may be on besides public addresses (SSRF guard):
#: e.g. "127.0.0.0/8,::1/128" for receivers on this machine. Empty: public addresses only.
ENV_WEBHOOK_ALLOWED_NETWORKS = "PAYKEEP_WEBHOOK_ALLOWED_NETWORKS"
#: How long a buyer's sign-in code is good, in seconds (default 600): shorter only for tests
#: of expiry against a real server. Outgoing mail: ``paykeep.mail`` (``PAYKEEP_SMTP_URL``,
#: ``PAYKEEP_MAIL_FROM``; without an SMTP URL, files in ``<data-dir>/mail/``).
ENV_BUYER_CODE_TTL_S = "PAYKEEP_BUYER_CODE_TTL_S"
BUYER_CODE_TTL_RANGE_S: Final = (1, 3600)

DEFAULT_BANK_NAME = "banksim"
DEFAULT_CURRENCY = "EUR"


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    settings: Settings
    card_network: tuple[str, int] | None = None
    bank_url: str | None = None
    bank_iban: str | None = None
    bank_name: str = DEFAULT_BANK_NAME
    public_url: str = "http://127.0.0.1:8000"
    currency: str = DEFAULT_CURRENCY
    webhook_allowed_networks: tuple[IPNetwork, ...] = ()

    def to_env(self) -> dict[str, str]:
        env = {"PAYKEEP_DATA_DIR": str(self.settings.data_dir)}
        if self.settings.database_url:
            env["PAYKEEP_DATABASE_URL"] = self.settings.database_url
        if self.card_network is not None:
            env[ENV_CARD_NETWORK] = f"{self.card_network[0]}:{self.card_network[1]}"
        if self.bank_url is not None:
            env[ENV_BANK_URL] = self.bank_url
        if self.bank_iban is not None:
            env[ENV_BANK_IBAN] = self.bank_iban
        env[ENV_BANK_NAME] = self.bank_name
        env[ENV_PUBLIC_URL] = self.public_url
        env[ENV_CURRENCY] = self.currency
        env[ENV_WEBHOOK_ALLOWED_NETWORKS] = format_allowed_networks(self.webhook_allowed_networks)
        return env

    @classmethod
    def from_env(cls) -> RuntimeConfig:
        card = os.environ.get(ENV_CARD_NETWORK)
        network = None
        if card:
            host, _, port = card.rpartition(":")
            network = (host, int(port))
        return cls(
            settings=Settings.resolve(None, None),
            card_network=network,
            bank_url=os.environ.get(ENV_BANK_URL) or None,
            bank_iban=os.environ.get(ENV_BANK_IBAN) or None,
            bank_name=os.environ.get(ENV_BANK_NAME) or DEFAULT_BANK_NAME,
            public_url=os.environ.get(ENV_PUBLIC_URL) or "http://127.0.0.1:8000",
            currency=os.environ.get(ENV_CURRENCY) or DEFAULT_CURRENCY,
            webhook_allowed_networks=parse_allowed_networks(
                os.environ.get(ENV_WEBHOOK_ALLOWED_NETWORKS)
            ),
        )


#: The bank (banksim) answers on loopback; a cycle gives up on a request after this long.
BANK_HTTP_TIMEOUT_S: Final = 10.0


@dataclass
class Runtime:
    config: RuntimeConfig
    database: Database
    ledger: Ledger
    cipher: FieldCipher
    vault: CardVault
    api_keys: ApiKeyService
    statements: StatementService
    payouts: PayoutService
    payments: PaymentsService
    webhooks: WebhookService
    card_client: CardNetworkClient | None
    cards: CardGateway | None
    #: AML cases, for the compliance officers' routes (``routes/aml.py``).
    cases: CaseService
    _bank_http: httpx.Client | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.config.settings.data_dir

    def bank_http(self) -> httpx.Client:
        """The bank cycle's client, kept open between cycles (a new client per cycle built a
        TLS context and a connection every time: measurable CPU at a one-second cycle)."""
        if self._bank_http is None:
            assert self.config.bank_url is not None
            self._bank_http = httpx.Client(
                base_url=self.config.bank_url, timeout=BANK_HTTP_TIMEOUT_S, trust_env=False
            )
        return self._bank_http

    def close(self) -> None:
        self.payments.writer.close()
        self.webhooks.close()
        if self._bank_http is not None:
            self._bank_http.close()
        if self.card_client is not None:
            self.card_client.close()
        self.database.dispose()


def _risk_controls(config: RuntimeConfig, database: Database) -> EscrowRisk:
    """The real-time rules before every hold, release and payout, screening parties against
    the sanctions lists imported into the data directory (``paykeep aml lists import``).
    Without any list the sanctions rule has nothing to match: said once, loudly."""
    import logging

    from paykeep.aml.rules.escrow import EscrowRisk
    from paykeep.aml.rules.sanctions import NoSanctions, ScreeningSanctions
    from paykeep.aml.rules.service import DecisionEngine
    from paykeep.aml.screening.service import ScreeningService

    screening = ScreeningService(data_dir=config.settings.data_dir)
    sanctions: NoSanctions | ScreeningSanctions
    if screening.current_versions():
        sanctions = ScreeningSanctions(screening)
    else:
        logging.getLogger("paykeep.aml").warning(
            "no sanctions list imported in %s: payments are not screened against one "
            "(paykeep aml lists import FILE --format ofac-csv|un-xml|ftm)",
            config.settings.data_dir,
        )
        sanctions = NoSanctions()
    return EscrowRisk(DecisionEngine(database, sanctions))


def buyer_code_ttl_s() -> int:
    """``PAYKEEP_BUYER_CODE_TTL_S`` (bounded), or the payments default."""
    from paykeep.payments.buyer_auth import BUYER_CODE_TTL_S

    raw = os.environ.get(ENV_BUYER_CODE_TTL_S)
    if not raw:
        return BUYER_CODE_TTL_S
    low, high = BUYER_CODE_TTL_RANGE_S
    value = int(raw)
    if not low <= value <= high:
        raise ValueError(f"{ENV_BUYER_CODE_TTL_S} is {low} to {high} seconds")
    return value


def open_runtime(config: RuntimeConfig, *, migrate: bool = True) -> Runtime:
    from paykeep.aml.cases.service import CaseService
    from paykeep.db import open_database
    from paykeep.gateway.cards.client import CardNetworkClient
    from paykeep.gateway.cards.service import CardGateway
    from paykeep.gateway.payouts.service import PayoutService
    from paykeep.gateway.statements.service import StatementService
    from paykeep.gateway.vault.keys import VaultKeys
    from paykeep.gateway.vault.service import CardVault
    from paykeep.ledger.service import Ledger
    from paykeep.payments.service import PaymentsService
    from paykeep.security.api_keys import ApiKeyService
    from paykeep.security.fields import FieldCipher
    from paykeep.workers.webhooks import WebhookService

    config.settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(config.settings, migrate=migrate)
    ledger = Ledger(database)
    keys = VaultKeys.load(config.settings.data_dir)
    cipher = FieldCipher(keys)
    vault = CardVault(database, keys)
    statements = StatementService(database, ledger, cipher=cipher)
    payouts = PayoutService(database, ledger, cipher=cipher, statements=statements)
    card_client = None
    cards = None
    if config.card_network is not None:
        card_client = CardNetworkClient(*config.card_network)
        cards = CardGateway(
            database, ledger, vault, card_client, acquirer="banksim", currency=config.currency
        )
    from paykeep.mail import mailer_from_env

    payments = PaymentsService(
        database,
        ledger,
        cipher,
        mailer=mailer_from_env(config.settings.data_dir),
        buyer_code_ttl_s=buyer_code_ttl_s(),
        risk=_risk_controls(config, database),
        cards=cards,
        vault=vault,
        statements=statements,
        payouts=payouts,
        bank_iban=config.bank_iban,
        bank_name=config.bank_name,
    )
    return Runtime(
        config=config,
        database=database,
        ledger=ledger,
        cipher=cipher,
        vault=vault,
        api_keys=ApiKeyService(database),
        statements=statements,
        payouts=payouts,
        payments=payments,
        webhooks=WebhookService(database, cipher, allowed_networks=config.webhook_allowed_networks),
        card_client=card_client,
        cards=cards,
        # The payments clock: case trail times and idempotency records read the same clock.
        cases=CaseService(database, payments.clock),
    )


async def runtime_of(request: Request) -> Runtime:
    """The process's :class:`Runtime`, for a route's ``runtime: RuntimeDep``. async: FastAPI
    runs a plain-function dependency in its thread pool, a thread hop per request to read
    one attribute."""
    runtime = getattr(request.app.state, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise RuntimeError("app.state.runtime is not set: build the app with create_app")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(runtime_of)]
