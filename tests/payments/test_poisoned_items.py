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
from collections.abc import Callable

import psycopg
import pytest
import sqlalchemy as sa

from paykeep import limits
from paykeep.clock import NS_PER_S
from paykeep.config import Settings
from paykeep.db.errors import DatabaseUnavailable
from paykeep.db.quarantine import ItemFailure, error_code, is_database_unavailable
from paykeep.payments.model import OrderState, TimerSettings
from paykeep.payments.records import Order
from paykeep.payments.service import available_name, fees_name, reserve_name, wallet_name
from tests.payments.conftest import CardWorld, World
from tests.support import refuse_row

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
