"""Payments test wiring: the service on a fake clock over a real database (both backends), a
stand-in for wallet top-ups, and the checks every test ends with (the ledger audit, and
debits = credits per currency); and the same service with the real card gateway and a real
banksim card network over TCP (``cw``: card refunds, withdrawals to the card)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import sqlalchemy as sa
from stdnum import luhn

from paykeep.bench.gateway import BanksimProcess
from paykeep.buyer_mailbox import latest_code
from paykeep.clock import FakeClock
from paykeep.config import Settings
from paykeep.db import Database
from paykeep.gateway.cards.client import CardNetworkClient
from paykeep.gateway.cards.service import CardGateway
from paykeep.gateway.vault.keys import VaultKeys
from paykeep.gateway.vault.service import CardVault
from paykeep.ids import derived_id
from paykeep.ledger.audit import verify
from paykeep.ledger.model import Account, AccountFlags, NewAccount, NewTransfer
from paykeep.ledger.service import Ledger
from paykeep.mail import DirectoryMailer
from paykeep.payments.errors import BuyerAuthenticationRequired
from paykeep.payments.model import FeePlan, LineItem, TimerSettings
from paykeep.payments.records import Buyer, Merchant, Order
from paykeep.payments.service import (
    LIABILITY,
    TOPUP_CODE,
    NewMerchant,
    PaymentsService,
    account_id,
    available_name,
    fees_name,
    reserve_name,
    wallet_name,
)
from paykeep.security.fields import FieldCipher

#: The asset account that stands in for the safeguarding bank: in production wallets are
#: funded by card sales or bank top-ups; here a ledger transfer from it is the top-up.
BANK = "bank:safeguarding:test"
ASSET = 1
#: Default plan in the tests: 2.9 % + 0.30, 10 % rolling reserve held one hour.
PLAN = FeePlan(percent_bp=290, fixed_minor=30, reserve_percent_bp=1_000, reserve_hold_s=3_600)
IBAN = "DE89370400440532013000"


def ledger_sums(database: Database) -> dict[str, tuple[int, int, int, int]]:
    """Per currency: (debits_pending, credits_pending, debits_posted, credits_posted)."""
    with database.read() as conn:
        rows = conn.exec_driver_sql(
            "SELECT currency, SUM(debits_pending), SUM(credits_pending), SUM(debits_posted), "
            "SUM(credits_posted) FROM ledger_accounts GROUP BY currency"
        ).all()
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}


def assert_books_balance(database: Database) -> None:
    """What ``paykeep audit verify`` checks (called directly), and debits = credits."""
    report = verify(database)
    assert report.ok, report.to_json()
    for currency, (dp, cp, dpo, cpo) in ledger_sums(database).items():
        assert dp == cp, f"{currency}: pending debits {dp} != pending credits {cp}"
        assert dpo == cpo, f"{currency}: posted debits {dpo} != posted credits {cpo}"


@dataclass
class World:
    """One payments service on one fresh database, with helpers that keep tests short."""

    database: Database
    clock: FakeClock
    ledger: Ledger
    svc: PaymentsService
    data_dir: Path
    funded: int = 0  # EUR minor units topped up so far
    _topups: int = 0
    #: Buyer id -> the buyer session the tests act with (signed in for real: code by mail).
    sessions: dict[str, str] = field(default_factory=dict)

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    def sign_in(self, token: str) -> str:
        """The buyer of ``token`` asks for a code, reads it from the mail folder and enters
        it: a new buyer session (call outside any transaction)."""
        with self.svc.reading() as tx:
            order = self.svc.order(tx, None, self.svc.session_for_token(tx, token).order_id)
            row = tx.repo.buyer_row(order.buyer_id)
            assert row is not None
            email = self.svc.cipher.open(bytes(row[2]), purpose="buyer.email", row_id=row[0])
        self.svc.start_buyer_sign_in(token)
        code = latest_code(self.mail_dir, email)
        assert code is not None, "the code mail was written"
        buyer_session, secret = self.svc.verify_buyer_code(token, code)
        self.sessions[buyer_session.buyer_id] = secret
        return secret

    def bs(self, token: str) -> str:
        """A live buyer session of ``token``'s buyer: the one already held, or a new one
        (call outside any transaction: signing in writes)."""
        with self.svc.reading() as tx:
            order = self.svc.order(tx, None, self.svc.session_for_token(tx, token).order_id)
        held = self.sessions.get(order.buyer_id)
        if held is not None:
            try:
                self.svc.check_buyer_session(token, held)
                return held
            except BuyerAuthenticationRequired:
                pass
        return self.sign_in(token)

    # -- set-up helpers ----------------------------------------------------------------------

    def merchant(
        self,
        name: str = "Tea Shop GmbH",
        *,
        fees: FeePlan = PLAN,
        timers: TimerSettings | None = None,
        currency: str = "EUR",
    ) -> Merchant:
        with self.svc.transaction() as tx:
            return self.svc.create_merchant(
                tx, NewMerchant(name, "DE", currency, IBAN, fees, timers or TimerSettings())
            )

    def buyer(
        self, merchant: Merchant, name: str = "Ada Lovelace", email: str = "ada@example.com"
    ) -> Buyer:
        with self.svc.transaction() as tx:
            return self.svc.create_buyer(tx, merchant.id, name, email)

    def order(
        self, merchant: Merchant, buyer: Buyer, amount_minor: int = 2_500
    ) -> tuple[Order, str]:
        """An order of one line and its checkout session's token."""
        with self.svc.transaction() as tx:
            order = self.svc.create_order(
                tx, merchant.id, buyer.id, [LineItem("Tea", 1, amount_minor)]
            )
            _session, token = self.svc.create_checkout_session(tx, merchant.id, order.id)
        # Signed in now (once per buyer), so that moves inside a transaction only read it.
        self.bs(token)
        return order, token

    def fund(self, buyer: Buyer, amount_minor: int) -> None:
        """A EUR top-up: bank:safeguarding:test -> the buyer's wallet (both created if absent,
        exactly as the service creates them)."""
        currency = "EUR"
        no_overdraft = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
        self.ledger.create_accounts(
            [
                NewAccount(
                    account_id(BANK), currency, ASSET,
                    int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS), name=BANK,
                ),
                NewAccount(
                    account_id(wallet_name(buyer.id, currency)), currency, LIABILITY,
                    no_overdraft, name=wallet_name(buyer.id, currency),
                ),
            ]
        )  # fmt: skip
        self._topups += 1
        self.ledger.create_transfer(
            NewTransfer(
                derived_id("test-topup", f"{self.data_dir}:{self._topups}"),
                account_id(BANK),
                account_id(wallet_name(buyer.id, currency)),
                amount_minor,
                currency,
                TOPUP_CODE,
            )
        )
        self.funded += amount_minor

    def paid_order(
        self, merchant: Merchant, buyer: Buyer, amount_minor: int = 2_500
    ) -> tuple[Order, str]:
        self.fund(buyer, amount_minor)
        order, token = self.order(merchant, buyer, amount_minor)
        buyer_session = self.bs(token)
        with self.svc.transaction() as tx:
            order = self.svc.pay_from_wallet(tx, token, buyer_session)
        return order, token

    # -- reading -----------------------------------------------------------------------------

    def get_order(self, order_id: str) -> Order:
        with self.svc.reading() as tx:
            return self.svc.order(tx, None, order_id)

    def account(self, name: str) -> Account | None:
        return self.ledger.lookup_accounts([account_id(name)]).get(account_id(name))

    def wallet(self, buyer: Buyer, currency: str = "EUR") -> tuple[int, int]:
        """(available, pending): posted balance less holds, and the holds."""
        acc = self.account(wallet_name(buyer.id, currency))
        return (0, 0) if acc is None else (acc.available, acc.debits_pending)

    def available(self, merchant: Merchant) -> int:
        acc = self.account(available_name(merchant.id, merchant.currency))
        return 0 if acc is None else acc.balance_posted

    def reserve(self, merchant: Merchant) -> int:
        acc = self.account(reserve_name(merchant.id, merchant.currency))
        return 0 if acc is None else acc.balance_posted

    def fees(self, currency: str = "EUR") -> int:
        acc = self.account(fees_name(currency))
        return 0 if acc is None else acc.balance_posted

    def last_seq(self) -> int:
        with self.database.read() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT COALESCE(MAX(seq), 0) FROM payments_events")
                ).scalar_one()
            )

    def events_since(self, seq: int) -> list[tuple[str, str, str | None, str]]:
        """(type, object_id, merchant_id, payload) of the events after ``seq``, in order."""
        with self.database.read() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT type, object_id, merchant_id, payload FROM payments_events "
                    "WHERE seq > :s ORDER BY seq"
                ),
                {"s": seq},
            ).all()
        return [(str(r[0]), str(r[1]), r[2], str(r[3])) for r in rows]

    def event_types_since(self, seq: int) -> list[str]:
        return [e[0] for e in self.events_since(seq)]

    def count(self, table: str, where: str = "1 = 1", **params: Any) -> int:
        with self.database.read() as conn:
            return int(
                conn.execute(
                    sa.text(f"SELECT COUNT(*) FROM {table} WHERE {where}"), params
                ).scalar_one()
            )

    def check_books(self) -> None:
        assert_books_balance(self.database)
        # the bank holds exactly what was topped up, and (debits = credits) every unit of it
        # sits in a wallet, a merchant's available or reserve, or the platform's fees
        bank = self.account(BANK)
        if bank is not None:
            assert bank.debits_posted - bank.credits_posted == self.funded
        eur = ledger_sums(self.database).get("EUR")
        if eur is not None:
            with self.database.read() as conn:
                liabilities = conn.execute(
                    sa.text(
                        "SELECT COALESCE(SUM(credits_posted - debits_posted), 0) "
                        "FROM ledger_accounts WHERE currency = 'EUR' AND (name LIKE 'buyer:%' "
                        "OR name LIKE 'merchant:%' OR name LIKE 'platform:fees:%')"
                    )
                ).scalar_one()
            assert int(liabilities) == self.funded


def make_world(database: Database, data_dir: Path) -> World:
    clock = FakeClock()
    ledger = Ledger(database, clock)
    keys = VaultKeys.from_directory(data_dir / "keys", create=True)
    mailer = DirectoryMailer(data_dir / "mail", clock=clock)
    svc = PaymentsService(database, ledger, FieldCipher(keys), clock=clock, mailer=mailer)
    return World(database, clock, ledger, svc, data_dir)


@pytest.fixture
def world(database: Database, settings: Settings) -> Iterator[World]:
    """A fresh service; after the test, the ledger must still audit clean and balance."""
    w = make_world(database, settings.data_dir)
    yield w
    w.check_books()


# -- the card side: the real gateway and banksim's card network ---------------------------------

TIMEOUT_S = 0.4


@pytest.fixture(scope="module")
def banksim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BanksimProcess]:
    process = BanksimProcess(tmp_path_factory.mktemp("banksim"))
    yield process
    process.stop()


class CardPaid(NamedTuple):
    merchant: Merchant
    buyer: Buyer
    pan: str
    token: str  # the card's token at banksim's issuer
    order: Order


@dataclass
class CardWorld:
    world: World
    gateway: CardGateway
    banksim: BanksimProcess

    @property
    def svc(self) -> PaymentsService:
        return self.world.svc

    def card(self, balance: int = 100_000) -> tuple[str, str]:
        """(pan, banksim token) of a fresh card at the issuer."""
        body = "4" + "".join(str(secrets.randbelow(10)) for _ in range(14))
        pan = body + luhn.calc_check_digit(body)
        with self.banksim.http() as http:
            card = {"pan": pan, "expiry": "3012", "cvv": "321", "balance_minor": balance,
                    "currency": "EUR"}  # fmt: skip
            added = http.post("/cards", json=card)
        assert added.status_code == 201, added.text
        return pan, str(added.json()["token"])

    def issuer(self, token: str) -> dict[str, int]:
        with self.banksim.http() as http:
            view: dict[str, int] = http.get(f"/cards/{token}").json()
            return view

    def faults(self, *rules: dict[str, object]) -> None:
        with self.banksim.http() as http:
            http.post("/faults/cards", json={"faults": list(rules)}).raise_for_status()

    def card_order(self, merchant: Merchant, buyer: Buyer, pan: str, amount: int) -> Order:
        _order, token = self.world.order(merchant, buyer, amount)
        paid, payment = self.svc.pay_with_card(token, pan, 12, 2030, "321")
        assert payment.state == "succeeded"
        return paid

    def card_paid(self, amount: int, merchant: Merchant | None = None) -> CardPaid:
        """A fresh buyer of ``merchant`` (default: a new one) whose order of ``amount`` was
        paid with a fresh card at the issuer."""
        merchant = merchant or self.world.merchant()
        buyer = self.world.buyer(merchant)
        pan, token = self.card()
        return CardPaid(merchant, buyer, pan, token, self.card_order(merchant, buyer, pan, amount))

    def card_refund_rows(self, order: Order) -> list[tuple[str, int, int, str | None]]:
        """(state, amount, attempts, refund id) of the order's card refunds."""
        with self.svc.reading() as tx:
            rows = tx.repo.card_refunds({"order_id": order.id}, 10, None)
        return [(r.state, r.amount_minor, r.attempts, r.refund_id) for r in rows]

    def clearing(self) -> tuple[int, int]:
        account = self.world.ledger.account(self.gateway.clearing_account_id())
        return account.debits_posted, account.credits_posted


@pytest.fixture
def cw(banksim: BanksimProcess, database: Database, settings: Settings) -> Iterator[CardWorld]:
    from paykeep.clock import FakeClock

    clock = FakeClock()
    ledger = Ledger(database, clock)
    keys = VaultKeys.from_directory(settings.data_dir / "keys", create=True)
    vault = CardVault.open(database, settings.data_dir)
    client = CardNetworkClient("127.0.0.1", banksim.card_port, pool_size=2, timeout_s=TIMEOUT_S)
    # The gateway keeps the real clock: field 7 (with the STAN) names a message at the network.
    gateway = CardGateway(database, ledger, vault, client, timeout_s=TIMEOUT_S,
                          reversal_timeout_s=TIMEOUT_S)  # fmt: skip
    svc = PaymentsService(database, ledger, FieldCipher(keys), clock=clock, cards=gateway,
                          vault=vault, mailer=DirectoryMailer(settings.data_dir / "mail",
                                                              clock=clock))  # fmt: skip
    world = World(database, clock, ledger, svc, settings.data_dir)
    yield CardWorld(world, gateway, banksim)
    with banksim.http() as http:
        http.post("/faults/cards", json={"faults": []})
    client.close()
    assert_books_balance(database)
