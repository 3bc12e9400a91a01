"""One bad item must not stall a worker pass (``paykeep.db.quarantine``).

Each test poisons one item of a pass with a real fault — a trigger that refuses that item's
row (or its event) in the database, on SQLite and PostgreSQL — and checks: the other items
are handled in the same run; the poisoned item's transaction left nothing half-applied (its
ledger balances are unchanged); it is backed off (not tried again until its wait is over),
then parked after ``WORKER_ITEM_FAILURES_MAX`` failures in a row and never tried again by
itself; an operator's release sends it through once the cause is gone. The database being
unavailable still aborts a pass as a whole and parks nothing.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
import sqlalchemy as sa

from paykeep import limits
from paykeep.clock import NS_PER_S, FakeClock
from paykeep.config import Settings
from paykeep.db import Database
from paykeep.db.errors import DatabaseUnavailable
from paykeep.db.quarantine import ItemFailure, error_code, is_database_unavailable
from paykeep.gateway.payouts.model import Debtor
from paykeep.gateway.payouts.service import PayoutService
from paykeep.gateway.statements.service import StatementService
from paykeep.gateway.vault.keys import VaultKeys
from paykeep.ids import derived_id
from paykeep.ledger.model import NewTransfer
from paykeep.ledger.service import Ledger
from paykeep.mail import DirectoryMailer
from paykeep.payments.model import OrderState, TimerSettings
from paykeep.payments.records import Buyer, Merchant, Order
from paykeep.payments.service import (
    PaymentsService,
    available_name,
    fees_name,
    reserve_name,
    wallet_name,
)
from paykeep.security.fields import FieldCipher
from tests.gateway.statements.builder import Line, camt053
from tests.payments.conftest import IBAN, CardWorld, World, assert_books_balance
from tests.support import refuse_row, refuse_updates

S = OrderState
DAY_S = 24 * 3600
TIMERS = TimerSettings()


def failure_of(w: World, pass_name: str, item_id: str) -> ItemFailure | None:
    found = [f for f in w.svc.quarantine.failures(pass_name) if f.item_id == item_id]
    return found[0] if found else None


def drive_to_parked(w: World, run: Callable[[], object], pass_name: str, item_id: str) -> None:
    """The pass has just failed ``item_id`` once: it waits out each backoff (not tried during
    it), fails again after it, and is parked at the last failure — then never tried again."""
    for failures in range(1, limits.WORKER_ITEM_FAILURES_MAX + 1):
        failure = failure_of(w, pass_name, item_id)
        assert failure is not None and failure.failures == failures
        assert failure.error_code.startswith("database_")  # the trigger's refusal
        if failures == limits.WORKER_ITEM_FAILURES_MAX:
            assert failure.parked and failure.next_attempt_at_ns is None
            break
        wait_s = limits.WORKER_ITEM_BACKOFF_S[failures - 1]
        assert not failure.parked
        assert failure.next_attempt_at_ns == w.clock.now_ns() + wait_s * NS_PER_S
        w.clock.advance(wait_s - 1)
        run()  # still backed off: not tried
        assert failure_of(w, pass_name, item_id) == failure
        w.clock.advance(1)
        run()
    w.clock.advance(30 * DAY_S)
    run()
    parked = failure_of(w, pass_name, item_id)
    assert parked is not None and parked.failures == limits.WORKER_ITEM_FAILURES_MAX


def held(w: World, order: Order) -> list[tuple[int, int, int, int] | None]:
    """The ledger balances of ``order``'s parties — the buyer's wallet, the merchant's
    available and reserve, the platform's fees: (debits pending, credits pending, debits
    posted, credits posted) each."""
    names = [
        wallet_name(order.buyer_id, order.currency),
        available_name(order.merchant_id, order.currency),
        reserve_name(order.merchant_id, order.currency),
        fees_name(order.currency),
    ]
    accounts = [w.account(name) for name in names]
    return [
        None
        if a is None
        else (a.debits_pending, a.credits_pending, a.debits_posted, a.credits_posted)
        for a in accounts
    ]


# --- escrow timers ----------------------------------------------------------------------------


def test_a_timer_whose_order_cannot_be_refunded_stalls_no_other_order(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    w = world
    shops = [w.merchant(f"Shop {i} GmbH") for i in range(3)]  # balances of its own each
    orders = [
        w.paid_order(m, w.buyer(m, email=f"b{i}@example.com"))[0] for i, m in enumerate(shops)
    ]
    poisoned = orders[0]  # the first due: it stood in front of the others
    money_before = held(w, poisoned)
    refuse_row(w.database, "payments_events", "object_id", poisoned.id, on=True)
    try:
        w.clock.advance(TIMERS.ship_by_s)
        with caplog.at_level(logging.DEBUG, logger="paykeep.workers.items"):
            fired = w.svc.run_timers()
        assert fired == {"refund_unshipped": 2, "isolated": 1}
        assert [w.get_order(o.id).state for o in orders] == [
            S.AWAITING_SHIPMENT, S.REFUNDED, S.REFUNDED,
        ]  # fmt: skip
        # Its refund rolled back whole: the hold still holds the buyer's money.
        assert held(w, poisoned) == money_before
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        message = warnings[0].getMessage()
        assert poisoned.id in message and "database_" in message
        assert "injected" not in message and "Traceback" not in message
        assert warnings[0].exc_info is None  # the traceback is at debug level only
        assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)

        with caplog.at_level(logging.WARNING, logger="paykeep.workers.items"):
            drive_to_parked(w, w.svc.run_timers, "payments.timers", poisoned.id)
        assert any(
            r.levelno == logging.ERROR
            and "parked" in r.getMessage()
            and poisoned.id in r.getMessage()
            for r in caplog.records
        )
        assert held(w, poisoned) == money_before
        assert w.get_order(poisoned.id).state is S.AWAITING_SHIPMENT
    finally:
        refuse_row(w.database, "payments_events", "object_id", poisoned.id, on=False)
    # Parked stays parked with the cause gone, until an operator releases it.
    assert w.svc.run_timers() == {}
    assert w.svc.quarantine.release("payments.timers", poisoned.id)
    assert w.svc.run_timers() == {"refund_unshipped": 1}
    assert w.get_order(poisoned.id).state is S.REFUNDED
    assert failure_of(w, "payments.timers", poisoned.id) is None


def test_an_item_that_succeeds_after_a_failure_is_forgotten(world: World) -> None:
    w = world
    m = w.merchant()
    order, _token = w.order(m, w.buyer(m))
    refuse_row(w.database, "payments_events", "object_id", order.id, on=True)
    w.clock.advance(TIMERS.unpaid_close_s)
    try:
        assert w.svc.run_timers() == {"isolated": 1}
    finally:
        refuse_row(w.database, "payments_events", "object_id", order.id, on=False)
    assert failure_of(w, "payments.timers", order.id) is not None
    w.clock.advance(limits.WORKER_ITEM_BACKOFF_S[0])
    assert w.svc.run_timers() == {"close_unpaid": 1}
    assert failure_of(w, "payments.timers", order.id) is None


@pytest.mark.parametrize(
    "outage",
    [
        DatabaseUnavailable("another writer held the database for 30 s; retry"),
        sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")),
    ],
    ids=["database_unavailable", "connection_lost"],
)
def test_the_database_unavailable_aborts_the_pass_and_parks_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch, outage: Exception
) -> None:
    w = world
    m = w.merchant()
    first, _ = w.paid_order(m, w.buyer(m))
    second, _ = w.paid_order(m, w.buyer(m, email="b2@example.com"))
    real = w.svc._release

    def release(tx: object, order: Order, *args: object, **kwargs: object) -> object:
        if order.id == first.id:
            raise outage
        return real(tx, order, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(w.svc, "_release", release)
    w.clock.advance(TIMERS.ship_by_s)
    with pytest.raises(type(outage)):
        w.svc.run_timers()
    assert w.svc.quarantine.failures() == []  # not the item's fault
    assert w.get_order(second.id).state is S.AWAITING_SHIPMENT  # the pass stopped
    monkeypatch.setattr(w.svc, "_release", real)
    assert w.svc.run_timers() == {"refund_unshipped": 2}


def test_what_counts_as_the_database_unavailable() -> None:
    assert is_database_unavailable(DatabaseUnavailable("busy"))
    assert is_database_unavailable(sa.exc.OperationalError("x", {}, Exception("gone")))
    assert is_database_unavailable(sa.exc.InterfaceError("x", {}, Exception("closed")))
    lost = sa.exc.DBAPIError("x", {}, Exception("reset"), connection_invalidated=True)
    assert is_database_unavailable(lost)
    assert is_database_unavailable(sqlite3.OperationalError("database is locked"))
    assert is_database_unavailable(psycopg.OperationalError("server closed the connection"))
    assert error_code(sqlite3.IntegrityError("injected")) == "database_integrity_error"
    assert error_code(psycopg.errors.StringDataRightTruncation("x")) == "database_data_error"
    for item_fault in (
        sa.exc.IntegrityError("x", {}, Exception("refused")),
        sa.exc.DataError("x", {}, Exception("value too long")),
        sa.exc.InternalError("x", {}, Exception("injected")),
        KeyError("order"),
        AssertionError(),
    ):
        assert not is_database_unavailable(item_fault)
    assert error_code(sa.exc.DataError("x", {}, Exception("ada@example.com"))) == (
        "database_data_error"
    )
    assert error_code(KeyError("ada@example.com")) == "unexpected:KeyError"
    assert error_code(DatabaseUnavailable("busy")) == "database_unavailable"


# --- claims, reserves, bank transfers ---------------------------------------------------------


def test_a_claim_that_cannot_expire_stalls_no_other_claim(world: World) -> None:
    from paykeep.payments.service import CLAIM_IDLE_S

    w = world
    m = w.merchant()
    refunds = []
    for i in range(3):
        order, token = w.paid_order(m, w.buyer(m, email=f"c{i}@example.com"))
        with w.svc.transaction() as tx:
            refunds.append(w.svc.request_refund(tx, token, order.id, None, "broken"))
    poisoned = refunds[0]
    refuse_row(w.database, "payments_events", "object_id", poisoned.id, on=True)
    try:
        w.clock.advance(CLAIM_IDLE_S + 1)
        assert w.svc.expire_claims() == {"escalate": 2, "isolated": 1}
        assert w.count("payments_disputes") == 2
        assert w.count("payments_disputes", "refund_id = :r", r=poisoned.id) == 0
        drive_to_parked(w, w.svc.expire_claims, "payments.expire_claims", poisoned.id)
    finally:
        refuse_row(w.database, "payments_events", "object_id", poisoned.id, on=False)
    with w.svc.reading() as tx:
        assert w.svc.refund_record(tx, None, poisoned.id).state.value == "requested"
    assert w.svc.expire_claims() == {}


def test_a_reserve_that_cannot_be_released_stalls_no_other_merchants(world: World) -> None:
    w = world
    merchants = [w.merchant(f"Shop {i} GmbH") for i in range(3)]
    for i, m in enumerate(merchants):
        b = w.buyer(m, email=f"r{i}@example.com")
        order, token = w.paid_order(m, b)
        bs = w.bs(token)
        with w.svc.transaction() as tx:
            w.svc.ship(tx, m.id, order.id, "dhl", f"TRACK000{i}")
        with w.svc.transaction() as tx:
            w.svc.confirm(tx, order.id, token=token, buyer_session=bs)
    with w.database.read() as conn:
        reserves = {
            str(r[1]): str(r[0])
            for r in conn.execute(sa.text("SELECT id, merchant_id FROM payments_reserves"))
        }
    poisoned = merchants[0]
    before = [(w.available(m), w.reserve(m)) for m in merchants]
    assert all(reserve > 0 for _, reserve in before)
    refuse_row(w.database, "payments_reserves", "id", reserves[poisoned.id], on=True)
    try:
        w.clock.advance(3_600)
        assert w.svc.release_reserves() == 2  # one transaction each now
        after = [(w.available(m), w.reserve(m)) for m in merchants]
        assert after[0] == before[0], "the poisoned release moved no money"
        assert after[1:] == [(a + r, 0) for a, r in before[1:]]
        drive_to_parked(
            w, w.svc.release_reserves, "payments.release_reserves", reserves[poisoned.id]
        )
        assert (w.available(poisoned), w.reserve(poisoned)) == before[0]
    finally:
        refuse_row(w.database, "payments_reserves", "id", reserves[poisoned.id], on=False)
    assert w.svc.quarantine.release("payments.release_reserves", reserves[poisoned.id])
    assert w.svc.release_reserves() == 1
    assert (w.available(poisoned), w.reserve(poisoned)) == (sum(before[0]), 0)


def test_a_bank_transfer_order_that_cannot_be_paid_stalls_no_other(world: World) -> None:
    w = world
    orders = []
    for i in range(3):
        m = w.merchant(f"Shop {i} GmbH")
        b = w.buyer(m, email=f"t{i}@example.com")
        order, token = w.order(m, b)
        with w.svc.transaction() as tx:
            w.svc.choose_bank_transfer(tx, token)
        w.fund(b, order.amount_minor)  # the statement credited the wallet
        orders.append(order)
    poisoned = orders[0]
    money_before = held(w, poisoned)
    refuse_row(w.database, "payments_payments", "order_id", poisoned.id, on=True)
    try:
        assert w.svc.settle_bank_transfers() == 2
        assert [w.get_order(o.id).state for o in orders] == [
            S.CREATED, S.AWAITING_SHIPMENT, S.AWAITING_SHIPMENT,
        ]  # fmt: skip
        assert held(w, poisoned) == money_before  # no hold placed
        drive_to_parked(
            w, w.svc.settle_bank_transfers, "payments.settle_bank_transfers", poisoned.id
        )
        assert held(w, poisoned) == money_before
    finally:
        refuse_row(w.database, "payments_payments", "order_id", poisoned.id, on=False)


# --- refunds to the card ----------------------------------------------------------------------


def test_a_card_refund_whose_outcome_cannot_be_recorded_stalls_no_other(
    cw: CardWorld,
) -> None:
    w = cw.world
    m = w.merchant()
    paid = [cw.card_paid(2_000, m) for _ in range(3)]
    for p in paid:
        with w.svc.transaction() as tx:
            w.svc.refund(tx, m.id, p.order.id, None, None)
    with w.svc.reading() as tx:
        intents = {r.order_id: r.id for r in tx.repo.card_refunds({}, 10, None)}
    poisoned = intents[paid[0].order.id]
    refuse_row(w.database, "payments_events", "object_id", poisoned, on=True)
    try:
        counts = w.svc.send_card_refunds()
        assert counts == {"succeeded": 2, "isolated": 1}
        states = [cw.card_refund_rows(p.order)[0][0] for p in paid]
        assert states == ["pending", "succeeded", "succeeded"]
        drive_to_parked(w, w.svc.send_card_refunds, "payments.card_refunds", poisoned)
        assert cw.card_refund_rows(paid[0].order)[0][0] == "pending"
        assert cw.issuer(paid[0].token)["refunded_minor"] == 2_000  # sent once, not again
    finally:
        refuse_row(w.database, "payments_events", "object_id", poisoned, on=False)
    # The issuer approved the first attempt (the gateway is idempotent on it): released, the
    # outcome is recorded once and the card was credited once.
    assert w.svc.quarantine.release("payments.card_refunds", poisoned)
    assert w.svc.send_card_refunds() == {"succeeded": 1}
    assert cw.card_refund_rows(paid[0].order)[0][0] == "succeeded"
    assert [cw.issuer(p.token)["refunded_minor"] for p in paid] == [2_000] * 3
    assert w.event_types_since(0).count("refund.card_refund_succeeded") == 3


# --- what an operator sees ------------------------------------------------------------------


def test_an_operator_lists_and_releases_parked_items_and_stale_ones_are_purged(
    world: World, settings: Settings
) -> None:
    import json

    from tests.support import paykeep

    w = world
    m = w.merchant()
    order, _token = w.order(m, w.buyer(m))
    w.clock.advance(TIMERS.unpaid_close_s)
    refuse_row(w.database, "payments_events", "object_id", order.id, on=True)
    try:
        assert w.svc.run_timers() == {"isolated": 1}
        drive_to_parked(w, w.svc.run_timers, "payments.timers", order.id)
    finally:
        refuse_row(w.database, "payments_events", "object_id", order.id, on=False)
    items = w.svc.quarantine.open("payments.timers")
    items.failure("ord_elsewhere", KeyError("x"))  # backed off, then never seen again

    listed = paykeep("worker-items", "list", "--json", settings=settings)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["item"], r["parked_at_ns"] is not None) for r in rows] == [
        (order.id, True), ("ord_elsewhere", False),
    ]  # fmt: skip
    assert rows[0]["failures"] == limits.WORKER_ITEM_FAILURES_MAX

    # A week on, the failure not repeated is forgotten; the parked one is kept.
    w.clock.advance(limits.WORKER_ITEM_FAILURE_KEEP_S + 1)
    assert w.svc.quarantine.purge_stale() == 1
    assert [f.item_id for f in w.svc.quarantine.failures()] == [order.id]

    released = paykeep("worker-items", "release", "payments.timers", order.id, settings=settings)
    assert released.returncode == 0, released.stderr
    again = paykeep("worker-items", "release", "payments.timers", order.id, settings=settings)
    assert again.returncode == 2 and "no failure recorded" in again.stderr
    assert w.svc.run_timers() == {"close_unpaid": 1}


# --- the bank's passes: top-ups, payouts, withdrawals -----------------------------------------

BANK_IBAN = "DE02120300000000202051"
BANK_NAME = "poisonbank"


@dataclass
class BankWorld:
    """The payments service with the real statement and payout gateways on the test clock."""

    world: World
    statements: StatementService
    payouts: PayoutService
    debtor: Debtor
    statements_imported: int = 0

    @property
    def svc(self) -> PaymentsService:
        return self.world.svc

    def failures(self, pass_name: str) -> list[ItemFailure]:
        return self.svc.quarantine.failures(pass_name)

    def import_credits(self, *lines: tuple[Buyer, int, str]) -> None:
        """A statement of the bank account: one credit per (buyer, amount, sender IBAN),
        carrying the buyer's payment reference."""
        self.statements_imported += 1
        data = camt053(
            [Line(amount, remittance=buyer.payment_reference, counterparty_name="Ada Lovelace",
                  counterparty_iban=iban) for buyer, amount, iban in lines],
            iban=BANK_IBAN, statement_id=f"STMT-{self.statements_imported}",
        )  # fmt: skip
        (outcome,) = self.statements.import_file(data).statements
        assert outcome.matched == len(lines)

    def buyer(self, merchant: Merchant, email: str) -> tuple[Buyer, str]:
        """A buyer with a checkout (signed in) whose bank transfers top up their wallet."""
        buyer = self.world.buyer(merchant, email=email)
        _order, token = self.world.order(merchant, buyer)
        self.svc.register_topup_reference(buyer, "EUR")
        return buyer, token

    def merchant(self, name: str, funds: int) -> Merchant:
        """A merchant with a verified payout IBAN and ``funds`` available."""
        merchant = self.world.merchant(name)
        with self.svc.transaction() as tx:
            self.svc.verify_payout_iban(tx, merchant.id)
        ledger = self.world.ledger
        ledger.create_transfer(
            NewTransfer(
                derived_id("test-funding", merchant.id),
                ledger.account_by_name(f"bank:safeguarding:{BANK_NAME}").id,
                ledger.account_by_name(available_name(merchant.id, "EUR")).id,
                funds, "EUR", 1,
            )
        )  # fmt: skip
        return merchant

    def payout_state(self, record_id: str) -> str:
        with self.svc.reading() as tx:
            found = tx.repo.payout(record_id)
        assert found is not None
        return found.state

    def withdrawal_state(self, withdrawal_id: str) -> str:
        with self.svc.reading() as tx:
            found = tx.repo.withdrawal(withdrawal_id)
        assert found is not None
        return str(found.state)


@pytest.fixture
def bw(database: Database, settings: Settings) -> Iterator[BankWorld]:
    clock = FakeClock()
    ledger = Ledger(database, clock)
    cipher = FieldCipher(VaultKeys.from_directory(settings.data_dir / "keys", create=True))
    statements = StatementService(database, ledger, clock, cipher=cipher)
    payouts = PayoutService(database, ledger, cipher=cipher, clock=clock, statements=statements)
    svc = PaymentsService(
        database, ledger, cipher, clock=clock, statements=statements, payouts=payouts,
        bank_iban=BANK_IBAN, bank_name=BANK_NAME,
        mailer=DirectoryMailer(settings.data_dir / "mail", clock=clock),
    )  # fmt: skip
    svc.ensure_bank_accounts("EUR")
    statements.add_account(BANK_IBAN, "EUR", f"bank:safeguarding:{BANK_NAME}")
    world = World(database, clock, ledger, svc, settings.data_dir)
    debtor = Debtor("Paykeep Safeguarding", BANK_IBAN, BANK_NAME)
    yield BankWorld(world, statements, payouts, debtor)
    assert_books_balance(database)


def test_a_top_up_that_cannot_be_recorded_stalls_no_other(bw: BankWorld) -> None:
    w = bw.world
    m = w.merchant()
    (first, _), (second, _) = bw.buyer(m, "t1@example.com"), bw.buyer(m, "t2@example.com")
    bw.import_credits(
        (first, 1_000, "NL91ABNA0417164300"), (second, 2_000, "GB82WEST12345698765432")
    )
    refuse_row(w.database, "payments_topups", "buyer_id", first.id, on=True)
    try:
        assert bw.svc.credit_topups() == {"credited": 1}
        assert [w.wallet(first)[0], w.wallet(second)[0]] == [0, 2_000]
        (failure,) = bw.failures("payments.credit_topups")
        assert failure.item_id.startswith("stmt:") and failure.error_code.startswith("database_")
        assert bw.svc.credit_topups() == {}  # backed off: not tried
    finally:
        refuse_row(w.database, "payments_topups", "buyer_id", first.id, on=False)
    assert bw.svc.credit_topups() == {}  # still backed off
    w.clock.advance(limits.WORKER_ITEM_BACKOFF_S[0])
    assert bw.svc.credit_topups() == {"credited": 1}
    assert w.wallet(first)[0] == 1_000
    assert bw.failures("payments.credit_topups") == []


def test_a_payout_whose_state_cannot_be_copied_stalls_no_other(bw: BankWorld) -> None:
    w = bw.world
    shops = [bw.merchant(f"Shop {i} GmbH", 10_000) for i in range(2)]
    records = [bw.svc.request_payout(m.id, m.id, 3_000, f"p-{i}") for i, m in enumerate(shops)]
    bw.payouts.batch("EUR", bw.debtor)  # the gateway's payouts are batched now
    poisoned = records[0].id
    refuse_row(w.database, "payments_payouts", "id", poisoned, on=True)
    try:
        assert bw.svc.sync_payouts() == 1
        assert [bw.payout_state(r.id) for r in records] == ["requested", "batched"]
        (failure,) = bw.failures("payments.sync_payouts")
        assert failure.item_id == poisoned and failure.error_code.startswith("database_")
        assert bw.svc.sync_payouts() == 0  # backed off: not tried
    finally:
        refuse_row(w.database, "payments_payouts", "id", poisoned, on=False)
    assert bw.svc.sync_payouts() == 0  # still backed off
    w.clock.advance(limits.WORKER_ITEM_BACKOFF_S[0])
    assert bw.svc.sync_payouts() == 1
    assert bw.payout_state(poisoned) == "batched"
    assert bw.failures("payments.sync_payouts") == []


def test_a_payout_that_cannot_be_adopted_stalls_no_other(bw: BankWorld) -> None:
    """Gateway payouts whose request died before it recorded them: each is adopted on its own."""
    w = bw.world
    shops = [bw.merchant(f"Shop {i} GmbH", 10_000) for i in range(2)]
    gateway = [
        bw.payouts.request(
            m.id,
            3_000,
            "EUR",
            available_name(m.id, "EUR"),
            "Tea Shop GmbH",
            IBAN,
            request_id=f"died-{i}",
        )
        for i, m in enumerate(shops)
    ]
    w.clock.advance(1)
    poisoned = str(gateway[0].payout_id)

    def adopted(payout_id: int) -> bool:
        with bw.svc.reading() as tx:
            return tx.repo.payout_by_gateway(payout_id) is not None

    # Its record is refused (by merchant: the id is a number, which SQLite's trigger would
    # not compare with a text literal).
    refuse_row(w.database, "payments_payouts", "merchant_id", shops[0].id, on=True)
    try:
        bw.svc.sync_payouts(unrecorded_min_age_s=0)
        assert [adopted(g.payout_id) for g in gateway] == [False, True]
        (failure,) = bw.failures("payments.adopt_payouts")
        assert failure.item_id == poisoned and failure.error_code.startswith("database_")
        bw.svc.sync_payouts(unrecorded_min_age_s=0)
        assert not adopted(gateway[0].payout_id)  # backed off: not tried
    finally:
        refuse_row(w.database, "payments_payouts", "merchant_id", shops[0].id, on=False)
    bw.svc.sync_payouts(unrecorded_min_age_s=0)
    assert not adopted(gateway[0].payout_id)  # still backed off
    w.clock.advance(limits.WORKER_ITEM_BACKOFF_S[0])
    bw.svc.sync_payouts(unrecorded_min_age_s=0)
    assert adopted(gateway[0].payout_id)
    assert bw.failures("payments.adopt_payouts") == []


def test_a_withdrawal_whose_state_cannot_be_copied_stalls_no_other(bw: BankWorld) -> None:
    w = bw.world
    m = w.merchant()
    buyers = [bw.buyer(m, f"w{i}@example.com") for i in range(2)]
    bw.import_credits(
        (buyers[0][0], 2_000, "NL91ABNA0417164300"), (buyers[1][0], 2_000, "GB82WEST12345698765432")
    )
    assert bw.svc.credit_topups() == {"credited": 2}
    withdrawals = [
        bw.svc.request_withdrawal(token, w.bs(token), 1_500, "EUR", f"wd-{buyer.id}")
        for buyer, token in buyers
    ]
    bw.payouts.batch("EUR", bw.debtor)  # the gateway's payouts are batched now
    poisoned = withdrawals[0].id
    refuse_row(w.database, "payments_withdrawals", "id", poisoned, on=True)
    try:
        assert bw.svc.sync_withdrawals() == 1
        assert [bw.withdrawal_state(x.id) for x in withdrawals] == ["requested", "batched"]
        (failure,) = bw.failures("payments.sync_withdrawals")
        assert failure.item_id == poisoned and failure.error_code.startswith("database_")
        assert bw.svc.sync_withdrawals() == 0  # backed off: not tried
    finally:
        refuse_row(w.database, "payments_withdrawals", "id", poisoned, on=False)
    assert bw.svc.sync_withdrawals() == 0  # still backed off
    w.clock.advance(limits.WORKER_ITEM_BACKOFF_S[0])
    assert bw.svc.sync_withdrawals() == 1
    assert bw.withdrawal_state(poisoned) == "batched"
    assert bw.failures("payments.sync_withdrawals") == []


# --- card payments a crash left processing ----------------------------------------------------


def test_a_card_payment_whose_outcome_cannot_be_recorded_stalls_no_other(cw: CardWorld) -> None:
    w = cw.world
    m = w.merchant()
    orders = []
    for i in range(2):
        buyer = w.buyer(m, email=f"k{i}@example.com")
        orders.append((w.order(m, buyer, 2_000), cw.card()[0]))
    ids = [order.id for (order, _token), _pan in orders]
    # The issuer approves each; recording the outcome fails as a crash there would: both
    # payments stay ``processing``, the money in the buyers' wallets.
    refuse_updates(w.database, "payments_payments", "order_id", ids, on=True)
    try:
        for (_order, token), pan in orders:
            with pytest.raises((sa.exc.DBAPIError, sqlite3.Error, psycopg.Error)):
                cw.svc.pay_with_card(token, pan, 12, 2030, "321")
    finally:
        refuse_updates(w.database, "payments_payments", "order_id", ids, on=False)
    w.clock.advance(1)
    refuse_updates(w.database, "payments_payments", "order_id", ids[:1], on=True)
    try:
        assert cw.svc.recover_card_payments(min_age_s=0) == 1
        assert [w.get_order(i).state for i in ids] == [S.CREATED, S.AWAITING_SHIPMENT]
        (failure,) = w.svc.quarantine.failures("payments.recover_card_payments")
        assert failure.error_code.startswith("database_")
        with w.svc.reading() as tx:
            (payment,) = tx.repo.payments({"order_id": ids[0]}, 5, None)
        assert failure.item_id == payment.id and payment.state == "processing"
        assert cw.svc.recover_card_payments(min_age_s=0) == 0  # backed off: not tried
    finally:
        refuse_updates(w.database, "payments_payments", "order_id", ids[:1], on=False)
    assert cw.svc.recover_card_payments(min_age_s=0) == 0  # still backed off
    w.clock.advance(limits.WORKER_ITEM_BACKOFF_S[0])
    assert cw.svc.recover_card_payments(min_age_s=0) == 1
    assert w.get_order(ids[0]).state is S.AWAITING_SHIPMENT
    assert w.svc.quarantine.failures("payments.recover_card_payments") == []
