"""A merchant's payout and a buyer's withdrawal that the payee's bank sends back after they
settled, through the runtime ``paykeep serve`` builds (the payments service listening on the
payout gateway) and the worker's own bank cycle (``bank_cycle_pass``) against a real banksim:
pain.001 executed, camt.053 statements imported, the settle pass applying the return.

The merchant's record, its ``payout.returned`` event and the unverified payout IBAN commit in
the gateway's transaction (a database that refuses the event refuses all of it); a return
applied by the operator's ``paykeep payouts settle`` — no payments service listening there —
is caught up by the next sync pass. Both databases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from paykeep.api.runtime import Runtime, RuntimeConfig, open_runtime
from paykeep.bench.gateway import BanksimProcess
from paykeep.buyer_mailbox import latest_code
from paykeep.config import Settings
from paykeep.gateway.payouts.model import Debtor, PayoutState
from paykeep.ids import derived_id
from paykeep.ledger.audit import verify
from paykeep.ledger.model import NewTransfer
from paykeep.payments.errors import PayoutNotAllowed
from paykeep.payments.model import LineItem
from paykeep.payments.records import MerchantPayout, PayoutReturn, Withdrawal
from paykeep.payments.service import NewMerchant, available_name, wallet_name
from paykeep.workers.cycle import bank_cycle_pass
from tests.banksim.bank.helpers import new_iban
from tests.support import paykeep, refuse_inserts

BANK = "bank:safeguarding:banksim"
MERCHANT_IBAN = "GB82WEST12345698765432"
BUYER_IBAN = "NL91ABNA0417164300"
FUNDS = 50_000


@dataclass
class Cycle:
    """A runtime wired as ``paykeep serve`` wires it, its safeguarding account at banksim."""

    runtime: Runtime
    http: httpx.Client
    iban: str
    settings: Settings

    def returns(self, **terms: Any) -> None:
        """The payee's bank sends back what our bank pays from now on (none: it stops)."""
        answer = self.http.post("/bank/faults", json={"return_after_settlement": terms or False})
        assert answer.status_code == 200, answer.text

    def merchant(self) -> str:
        """A merchant with a verified payout IBAN and FUNDS available: the money the bank's
        opening balance holds (once per test)."""
        payments = self.runtime.payments
        with payments.transaction() as tx:
            merchant = payments.create_merchant(
                tx, NewMerchant("Tea Shop GmbH", "GB", "EUR", MERCHANT_IBAN)
            )
            payments.verify_payout_iban(tx, merchant.id)
        ledger = self.runtime.ledger
        ledger.create_transfer(
            NewTransfer(
                derived_id("test-funding", merchant.id),
                ledger.account_by_name(BANK).id,
                ledger.account_by_name(available_name(merchant.id, "EUR")).id,
                FUNDS,
                "EUR",
                1,
            )
        )
        return merchant.id

    def payout(self, merchant_id: str, amount: int, key: str) -> MerchantPayout:
        return self.runtime.payments.request_payout(merchant_id, merchant_id, amount, key)

    def record(self, payout: MerchantPayout) -> MerchantPayout:
        with self.runtime.payments.reading() as tx:
            found = tx.repo.payout(payout.id)
        assert found is not None
        return found

    def withdrawal(self, merchant_id: str, amount: int) -> Withdrawal:
        """A buyer of the merchant tops up from BUYER_IBAN (a real transfer, imported) and,
        signed in with the code from the mail folder, withdraws ``amount`` back to it."""
        payments = self.runtime.payments
        email = "ada@example.com"
        with payments.transaction() as tx:
            buyer = payments.create_buyer(tx, merchant_id, "Ada Lovelace", email)
            order = payments.create_order(tx, merchant_id, buyer.id, [LineItem("Tea", 1, 100)])
            _session, token = payments.create_checkout_session(tx, merchant_id, order.id)
        payments.register_topup_reference(buyer, "EUR")
        self.http.post(
            f"/bank/accounts/{self.iban}/incoming",
            json={"amount_minor": amount, "remittance": buyer.payment_reference,
                  "debtor_name": "Ada Lovelace", "debtor_iban": BUYER_IBAN},
        ).raise_for_status()  # fmt: skip
        bank_cycle_pass(self.runtime)  # the statement credits the wallet
        payments.start_buyer_sign_in(token)
        code = latest_code(self.settings.data_dir / "mail", email)
        assert code is not None
        _, secret = payments.verify_buyer_code(token, code)
        return payments.request_withdrawal(token, secret, amount, "EUR", f"wd-{buyer.id}")

    def withdrawal_record(self, withdrawal: Withdrawal) -> Withdrawal:
        with self.runtime.payments.reading() as tx:
            found = tx.repo.withdrawal(withdrawal.id)
        assert found is not None
        return found

    def events(self, object_id: str) -> list[tuple[str, dict[str, Any]]]:
        with self.runtime.database.read() as conn:
            rows = conn.execute(
                sa.text("SELECT type, payload FROM payments_events WHERE object_id = :o "
                        "ORDER BY seq"), {"o": object_id},
            ).all()  # fmt: skip
        return [(str(r[0]), json.loads(r[1])) for r in rows]

    def verified(self, merchant_id: str) -> bool:
        with self.runtime.payments.reading() as tx:
            return self.runtime.payments.merchant(tx, None, merchant_id).payout_iban_verified

    def balance(self, name: str) -> int:
        account = self.runtime.ledger.account_by_name(name)
        return account.credits_posted - account.debits_posted

    def books_agree_with_the_bank(self) -> None:
        """The audit passes, nothing is in transit, and the ledger's bank account is what the
        bank holds; no statement line waits for a person."""
        assert verify(self.runtime.database).ok
        bank = int(self.http.get(f"/bank/accounts/{self.iban}").json()["balance_minor"])
        assert -self.balance(BANK) == bank
        assert self.balance("clearing:payout") == 0
        assert self.runtime.statements.open_breaks() == []


@pytest.fixture
def cycle(banksim: BanksimProcess, settings: Settings) -> Iterator[Cycle]:
    iban = new_iban()
    http = banksim.http()
    opened = http.post(
        "/bank/accounts",
        json={"iban": iban, "currency": "EUR", "name": "Paykeep Safeguarding",
              "opening_balance_minor": FUNDS, "business_date": "2026-01-05"},
    )  # fmt: skip
    assert opened.status_code == 201, opened.text
    runtime = open_runtime(
        RuntimeConfig(settings=settings, bank_url=banksim.base_url, bank_iban=iban)
    )
    runtime.payments.ensure_bank_accounts("EUR")
    runtime.statements.add_account(iban, "EUR", BANK)
    yield Cycle(runtime, http, iban, settings)
    http.post("/bank/faults", json={"return_after_settlement": False})
    http.close()
    runtime.close()


def test_the_merchant_hears_of_it_in_the_gateways_transaction(
    cycle: Cycle, settings: Settings
) -> None:
    merchant_id = cycle.merchant()
    cycle.returns(reason="AC04")
    payout = cycle.payout(merchant_id, 5_000, "p-1")
    bank_cycle_pass(cycle.runtime)  # batched, the bank pays it, the statement settles it
    cycle.returns()
    assert cycle.record(payout).state == "settled"
    assert cycle.balance(available_name(merchant_id, "EUR")) == FUNDS - 5_000

    # The payee's bank's return is on the next statement. The database refuses the event:
    # nothing of the return happens — not the money, not the payout, not the statement —
    # and the pass backs that payout off instead of failing (``paykeep.db.quarantine``).
    refuse_inserts(settings, "payments_events", on=True)
    try:
        head = cycle.runtime.ledger.head()
        bank_cycle_pass(cycle.runtime)
        assert cycle.runtime.ledger.head() == head
        (failure,) = cycle.runtime.payouts.quarantine.failures("gateway.payouts.return_sent_back")
        assert failure.item_id == str(payout.gateway_payout_id)
        gateway = cycle.runtime.payouts.get(payout.gateway_payout_id or 0)
        assert gateway.state is PayoutState.SETTLED
        assert cycle.record(payout).state == "settled" and cycle.verified(merchant_id)
        assert any(b.reason == "duplicate" for b in cycle.runtime.statements.open_breaks())
    finally:
        refuse_inserts(settings, "payments_events", on=False)

    # Released rather than waiting out the backoff on the runtime's real clock.
    assert cycle.runtime.payouts.quarantine.release(
        "gateway.payouts.return_sent_back", failure.item_id
    )
    bank_cycle_pass(cycle.runtime)  # the next pass applies all of it at once
    record = cycle.record(payout)
    assert record.state == "returned"
    assert record.returned == PayoutReturn("sent_back", "AC04", "AC04: the account is closed", 0)
    assert record.to_api()["return"] == {
        "kind": "sent_back", "reason_code": "AC04", "reason": "AC04: the account is closed",
        "fee_minor": 0, "returned_minor": 5_000,
    }  # fmt: skip
    events = cycle.events(payout.id)
    assert [t for t, _ in events].count("payout.returned") == 1
    returned_event = next(p for t, p in events if t == "payout.returned")
    assert returned_event["data"]["object"]["return"]["reason_code"] == "AC04"
    assert cycle.balance(available_name(merchant_id, "EUR")) == FUNDS
    # The account is closed: the payout IBAN is unverified, with the merchant's event, and the
    # next payout is refused until an operator verifies an account again.
    assert not cycle.verified(merchant_id)
    updated = [p for t, p in cycle.events(merchant_id) if t == "merchant.updated"]
    assert updated[-1]["data"]["object"]["payout_iban_verified"] is False
    with pytest.raises(PayoutNotAllowed):
        cycle.payout(merchant_id, 1_000, "p-2")
    assert cycle.runtime.payments.sync_payouts() == 0  # nothing left to copy
    cycle.books_agree_with_the_bank()

    with cycle.runtime.payments.transaction() as tx:  # the operator checked the account
        cycle.runtime.payments.verify_payout_iban(tx, merchant_id)
    again = cycle.payout(merchant_id, 1_000, "p-2")
    bank_cycle_pass(cycle.runtime)
    assert cycle.record(again).state == "settled"
    assert cycle.balance(available_name(merchant_id, "EUR")) == FUNDS - 1_000
    cycle.books_agree_with_the_bank()


def test_a_return_the_operators_settle_applied_is_caught_up_by_the_sync(
    cycle: Cycle, settings: Settings
) -> None:
    """``paykeep payouts settle`` runs the gateway alone: the money, the payout and the
    statement line change there, and the merchant's and buyer's records follow at the next
    sync pass, with their events. The buyer's bank kept a fee: charged to the wallet."""
    merchant_id = cycle.merchant()
    withdrawal = cycle.withdrawal(merchant_id, 3_000)
    cycle.returns(reason="MD07", fee_minor=150)
    payout = cycle.payout(merchant_id, 4_000, "p-1")
    bank_cycle_pass(cycle.runtime)  # both in one file, paid, settled
    cycle.returns()
    assert cycle.record(payout).state == "settled"
    assert cycle.withdrawal_record(withdrawal).state == "settled"
    assert cycle.balance(wallet_name(withdrawal.buyer_id, "EUR")) == 0

    closed = cycle.http.post(f"/bank/accounts/{cycle.iban}/close-day").json()
    data = cycle.http.get(f"/bank/statements/{closed['statement_id']}").content
    cycle.runtime.statements.import_file(data)
    done = paykeep("payouts", "settle", "--json", settings=settings)
    assert done.returncode == 0, done.stderr
    gateway = cycle.runtime.payouts.get(payout.gateway_payout_id or 0)
    assert (gateway.state, gateway.return_fee_minor) == (PayoutState.RETURNED, 150)
    # The records have not heard yet: no payments service was listening.
    assert cycle.record(payout).state == "settled"
    assert cycle.withdrawal_record(withdrawal).state == "settled"

    assert cycle.runtime.payments.sync_payouts() == 1
    assert cycle.runtime.payments.sync_withdrawals() == 1
    assert cycle.runtime.payments.sync_payouts() == 0
    assert cycle.runtime.payments.sync_withdrawals() == 0
    reason = "MD07: the account holder is deceased"
    assert cycle.record(payout).returned == PayoutReturn("sent_back", "MD07", reason, 150)
    back = cycle.withdrawal_record(withdrawal)
    assert back.state == "returned"
    assert back.to_api()["return"] == {"kind": "sent_back", "reason_code": "MD07",
                                       "reason": reason, "fee_minor": 150,
                                       "returned_minor": 2_850}  # fmt: skip
    assert [t for t, _ in cycle.events(withdrawal.id)][-1] == "withdrawal.returned"
    assert [t for t, _ in cycle.events(payout.id)][-1] == "payout.returned"
    assert not cycle.verified(merchant_id)
    # The money is back where it came from, less what each payee's bank kept.
    assert cycle.balance(available_name(merchant_id, "EUR")) == FUNDS - 150
    assert cycle.balance(wallet_name(withdrawal.buyer_id, "EUR")) == 3_000 - 150
    cycle.books_agree_with_the_bank()


# --- Following every open payout -------------------------------------------------------------


def test_the_sync_follows_every_open_payout_a_page_per_pass(cycle: Cycle) -> None:
    """Settled payouts are not read at all, and open ones a page per pass, wrapping: five
    payouts the gateway batched behind the merchants' backs (no sync in between) are all
    followed within three passes of two — with their events — and the passes after that
    find nothing to copy."""
    merchant_id = cycle.merchant()
    earlier = [cycle.payout(merchant_id, 500, f"old-{n}") for n in range(2)]
    bank_cycle_pass(cycle.runtime)
    assert [cycle.record(p).state for p in earlier] == ["settled", "settled"]
    payouts = [cycle.payout(merchant_id, 1_000 + n, f"p-{n}") for n in range(5)]
    with cycle.runtime.payments.reading() as tx:
        assert [p.id for p in tx.repo.open_payouts("", 10)] == sorted(p.id for p in payouts)
    debtor = Debtor("Paykeep Safeguarding", cycle.iban, cycle.runtime.config.bank_name)
    batch = cycle.runtime.payouts.batch("EUR", debtor)
    assert {cycle.record(p).state for p in payouts} == {"requested"}

    sync = cycle.runtime.payments.sync_payouts
    assert [sync(limit=2) for _ in range(4)] == [2, 2, 1, 0]
    assert {cycle.record(p).state for p in payouts} == {"batched"}
    for p in payouts:
        assert [t for t, _ in cycle.events(p.id)] == ["payout.created", "payout.batched"]
    # Still open (batched) at the gateway: read again page by page, nothing changed.
    assert [sync(limit=2) for _ in range(3)] == [0, 0, 0]
    cycle.runtime.payouts.submit(batch.batch_id, cycle.runtime.config.bank_url or "")
    bank_cycle_pass(cycle.runtime)
    assert {cycle.record(p).state for p in payouts} == {"settled"}
    with cycle.runtime.payments.reading() as tx:
        assert tx.repo.open_payouts("", 10) == []
    cycle.books_agree_with_the_bank()
