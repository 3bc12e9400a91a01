"""The checkout page end to end: banksim, the page's server in its own process, Chromium.

One server per backend per module (SQLite, and PostgreSQL from the migrated template of
``tests/conftest.py``); each test seeds its own merchant, buyer, orders and sessions through a
:class:`PaymentsService` of its own on the same database and data directory (the vault keys
are shared through the data directory, as two Paykeep processes share them in production).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from stdnum import luhn

from paykeep.bench.gateway import BanksimProcess
from paykeep.buyer_mailbox import latest_code
from paykeep.config import SQLITE_FILE_NAME, Settings
from paykeep.mail import MAIL_DIR_NAME
from paykeep.payments.model import LineItem
from paykeep.payments.records import Withdrawal
from paykeep.payments.service import NewMerchant, PaymentsService
from tests.conftest import BACKENDS, _pg_admin, _pg_url
from tests.web.server_app import build_service

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
BANK_IBAN = "DE89370400440532013000"
#: The ledger account of that safeguarding account (``PaymentsService.bank_name``: banksim).
BANK_LEDGER_ACCOUNT = "bank:safeguarding:banksim"
SERVER_START_TIMEOUT_S = 30.0
CARD_EXPIRY_YYMM = "3012"  # what banksim stores; the buyer types 12/30
CARD_CVC = "321"
#: Playwright waits at most this long for a page or an element (the machine is shared).
PAGE_TIMEOUT_MS = 20_000
expect.set_options(timeout=PAGE_TIMEOUT_MS)


def new_pan() -> str:
    """A fresh Luhn-valid Visa-range number, so each test owns its card at the issuer."""
    body = "4" + "".join(str(secrets.randbelow(10)) for _ in range(14))
    return body + luhn.calc_check_digit(body)


def spaced(pan: str) -> str:
    return " ".join(pan[i : i + 4] for i in range(0, len(pan), 4))


class Server:
    """``uvicorn --factory tests.web.server_app:create_app`` on a free port of 127.0.0.1."""

    def __init__(self, settings: Settings, card_port: int, log_path: Path) -> None:
        env = {
            **os.environ,
            "PAYKEEP_DATA_DIR": str(settings.data_dir),
            "CHECKOUT_CARD_PORT": str(card_port),
            "CHECKOUT_BANK_IBAN": BANK_IBAN,
            "PYTHONPATH": str(REPO),
        }
        env.pop("PAYKEEP_VAULT_KEY", None)
        env.pop("PAYKEEP_DATABASE_URL", None)
        if settings.database_url:
            env["PAYKEEP_DATABASE_URL"] = settings.database_url
        self.data_dir = settings.data_dir
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "tests.web.server_app:create_app",
             "--host", "127.0.0.1", "--port", "0", "--no-use-colors", "--log-level", "info"],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", self.log())
            if found:
                self.base_url = found.group(1)
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the checkout server did not start:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


@dataclass
class Shop:
    """The stack of one backend: the test's own service, banksim and the page's server."""

    service: PaymentsService
    banksim: BanksimProcess
    server: Server
    backend: str
    pans: list[str] = field(default_factory=list)
    issuer_tokens: dict[str, str] = field(default_factory=dict)
    #: buyer id -> email address (where the sign-in codes go)
    emails: dict[str, str] = field(default_factory=dict)

    @property
    def mail_dir(self) -> Path:
        """The server's mail folder (its ``DirectoryMailer``)."""
        return self.server.data_dir / MAIL_DIR_NAME

    def code_for(self, buyer_id: str) -> str:
        """The newest sign-in code mailed to the buyer (``paykeep.buyer_mailbox``)."""
        code = latest_code(self.mail_dir, self.emails[buyer_id])
        assert code is not None, "no code mail"
        return code

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def url(self, token: str, suffix: str = "") -> str:
        return f"{self.base_url}/checkout/{token}{suffix}"

    def new_card(self, balance_minor: int = 1_000_000) -> str:
        pan = new_pan()
        with self.banksim.http() as http:
            response = http.post(
                "/cards",
                json={"pan": pan, "expiry": CARD_EXPIRY_YYMM, "cvv": CARD_CVC,
                      "balance_minor": balance_minor, "currency": "EUR"},
            )  # fmt: skip
            assert response.status_code == 201, response.text
        self.pans.append(pan)
        self.issuer_tokens[pan] = response.json()["token"]
        return pan

    def card_fault(self, pan: str, kind: str) -> None:
        """The card network answers the next message for this card with ``kind``."""
        rule = {"kind": kind, "next": 1, "card": self.issuer_tokens[pan]}
        with self.banksim.http() as http:
            http.post("/faults/cards", json={"faults": [rule]}).raise_for_status()

    def new_merchant(self, name: str = "Ada's Books GmbH") -> str:
        with self.service.transaction() as tx:
            return self.service.create_merchant(tx, NewMerchant(name, "DE")).id

    def new_buyer(self, merchant_id: str) -> str:
        email = f"grace+{uuid.uuid4().hex[:8]}@example.com"
        with self.service.transaction() as tx:
            buyer_id = self.service.create_buyer(tx, merchant_id, "Grace Hopper", email).id
        self.emails[buyer_id] = email
        return buyer_id

    def new_order(
        self,
        merchant_id: str,
        buyer_id: str,
        items: list[LineItem] | None = None,
        success_url: str | None = None,
        service: PaymentsService | None = None,
    ) -> tuple[str, str]:
        """(order id, checkout token) of a new order with a session to pay it."""
        svc = service or self.service
        items = items or [LineItem("Paperback: Notes on the Analytical Engine", 2, 1250),
                          LineItem("Bookmark", 1, 500)]  # fmt: skip
        with svc.transaction() as tx:
            order = svc.create_order(tx, merchant_id, buyer_id, items, description="Books")
            _session, token = svc.create_checkout_session(tx, merchant_id, order.id, success_url)
        return order.id, token

    def order_state(self, order_id: str) -> str:
        with self.service.reading() as tx:
            return self.service.order(tx, None, order_id).state.value

    def order(self, order_id: str) -> dict[str, object]:
        with self.service.reading() as tx:
            return self.service.order(tx, None, order_id).to_api()

    def payments(self, order_id: str) -> list[dict[str, object]]:
        with self.service.reading() as tx:
            return [p.to_api() for p in tx.repo.payments({"order_id": order_id}, 50, None)]

    def refunds(self, order_id: str) -> list[dict[str, object]]:
        with self.service.reading() as tx:
            return [r.to_api() for r in tx.repo.refunds({"order_id": order_id}, 50, None)]

    def top_up(self, buyer_id: str, amount_minor: int, debtor_iban: str) -> str:
        """The buyer sends ``amount_minor`` from ``debtor_iban`` to the safeguarding account at
        banksim with their reference; the bank closes its day and its camt.053 statement is
        imported, then the top-up credited, as the worker's bank cycle does. Returns the
        credited top-up's id."""
        service = self.service
        assert service.statements is not None
        service.ensure_bank_accounts("EUR")
        service.statements.add_account(BANK_IBAN, "EUR", BANK_LEDGER_ACCOUNT)
        with service.reading() as tx:
            buyer = service.buyer(tx, None, buyer_id)
        service.register_topup_reference(buyer, "EUR")
        with self.banksim.http() as http:
            # One account at banksim for both backends (opening it again answers 200).
            http.post("/bank/accounts", json={
                "iban": BANK_IBAN, "currency": "EUR", "name": "Paykeep Safeguarding",
                "opening_balance_minor": 0, "business_date": "2026-01-05",
            }).raise_for_status()  # fmt: skip
            http.post(f"/bank/accounts/{BANK_IBAN}/incoming", json={
                "amount_minor": amount_minor, "remittance": buyer.payment_reference,
                "debtor_name": "Grace Hopper", "debtor_iban": debtor_iban,
            }).raise_for_status()  # fmt: skip
            before = self._statement_ids(http)
            http.post(f"/bank/accounts/{BANK_IBAN}/close-day").raise_for_status()
            # Only this day's statement: the other backend's days are not this database's.
            for statement_id in self._statement_ids(http) - before:
                body = http.get(f"/bank/statements/{statement_id}", params={"format": "camt053"})
                body.raise_for_status()
                service.statements.import_file(body.content, filename=f"{statement_id}.xml")
        service.credit_topups()
        with service.reading() as tx:
            topups = service.topups(tx, None, 10, None, buyer_id=buyer_id)
        [topup] = [t for t in topups if t.amount_minor == amount_minor]
        assert topup.state == "credited", topup
        return topup.id

    @staticmethod
    def _statement_ids(http: httpx.Client) -> set[str]:
        listed = http.get(f"/bank/accounts/{BANK_IBAN}/statements")
        listed.raise_for_status()
        return {s["id"] if isinstance(s, dict) else str(s) for s in listed.json()["statements"]}

    def withdrawals(self, buyer_id: str) -> list[Withdrawal]:
        with self.service.reading() as tx:
            return self.service.withdrawals(tx, None, 50, None, buyer_id=buyer_id)

    def wallet_available(self, buyer_id: str) -> int:
        with self.service.reading() as tx:
            [balance] = self.service.buyer_balances(tx, None, buyer_id)
        return balance.available_minor

    def count(self, table: str) -> int:
        with self.service.database.read() as conn:
            return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


@pytest.fixture(scope="module")
def banksim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BanksimProcess]:
    process = BanksimProcess(tmp_path_factory.mktemp("banksim"))
    yield process
    process.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def shop(
    request: pytest.FixtureRequest,
    banksim: BanksimProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Shop]:
    backend = str(request.param)
    data_dir = tmp_path_factory.mktemp(f"checkout-{backend}")
    pg_name: str | None = None
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copyfile(template, data_dir / SQLITE_FILE_NAME)
        settings = Settings(data_dir=data_dir)
    else:
        template_name: str = request.getfixturevalue("postgres_template")
        pg_name = f"paykeep_web_{uuid.uuid4().hex[:16]}"
        with _pg_admin() as admin:
            admin.execute(f'CREATE DATABASE "{pg_name}" TEMPLATE "{template_name}"')
        settings = Settings(data_dir=data_dir, database_url=_pg_url(pg_name))
    # The test's service first: it creates the vault keys the server then loads.
    service = build_service(settings, banksim.card_port, BANK_IBAN)
    server = Server(settings, banksim.card_port, data_dir / "server.log")
    yield Shop(service, banksim, server, backend)
    server.stop()
    assert service.cards is not None
    service.cards.client.close()
    service.database.dispose()
    if pg_name is not None:
        with _pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@dataclass
class Visit:
    """One browser tab, recording every response's HTML and every URL requested."""

    page: Page
    html: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)


@pytest.fixture
def visit(browser: Browser) -> Iterator[Visit]:
    context: BrowserContext = browser.new_context()
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    record = Visit(page)

    def on_response(response: object) -> None:
        from playwright.sync_api import Response

        assert isinstance(response, Response)
        if response.request.resource_type != "document":
            return
        record.statuses.append(response.status)
        if not 300 <= response.status < 400:
            record.html.append(response.text())

    page.on("request", lambda request: record.requested.append(request.url))
    page.on("response", on_response)
    yield record
    context.close()
