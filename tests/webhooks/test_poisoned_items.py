"""One bad event or delivery must not stall every webhook (``paykeep.db.quarantine``).

Real faults where the database can give them — a trigger refusing one event's deliveries,
or one delivery's result — on SQLite and PostgreSQL; an attempt that raises something
unexpected (nothing in the database makes ``_attempt`` raise: its one foreseen fault, a
sealed secret that will not open, is already a failed attempt) by patching the signer.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from paykeep import limits
from paykeep.clock import NS_PER_S, FakeClock
from paykeep.db import Database
from paykeep.workers import webhook_model as model
from paykeep.workers.webhooks import (
    FAN_OUT_ITEMS,
    RECORD_ITEMS,
    DeliveryPump,
    WebhookService,
)
from tests.support import refuse_row
from tests.webhooks.conftest import Receiver, add_event, add_merchant


def _deliveries(database: Database) -> dict[str, sa.Row[Any]]:
    """Event id -> its one delivery."""
    with database.read() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, event_id, state, attempts, last_error, next_attempt_at_ns "
                "FROM payments_webhook_deliveries"
            )
        ).all()
    return {str(r.event_id): r for r in rows}


def _failures(service: WebhookService, pass_name: str, item_id: str) -> tuple[int, bool]:
    (found,) = [f for f in service.quarantine.failures(pass_name) if f.item_id == item_id]
    return found.failures, found.parked


def test_an_event_whose_deliveries_cannot_be_written_is_parked_not_a_wall(
    database: Database, service: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    add_merchant(database, "mer_a")
    service.create_endpoint("mer_a", receiver.url("/hook"), None)
    before = add_event(database, clock, "mer_a")
    poisoned = add_event(database, clock, "mer_a")
    behind = [add_event(database, clock, "mer_a") for _ in range(2)]
    refuse_row(database, "payments_webhook_deliveries", "event_id", poisoned, on=True)
    try:
        # The batch fails; one at a time, the event before it goes through.
        assert service.fan_out() == 1
        assert set(_deliveries(database)) == {before}
        assert _failures(service, FAN_OUT_ITEMS, poisoned) == (1, False)
        for failures, wait_s in enumerate(model.FAN_OUT_BACKOFF_S, start=1):
            clock.advance(wait_s - 0.5)
            assert service.fan_out() == 0  # backed off: the cursor waits (order is kept)
            assert _failures(service, FAN_OUT_ITEMS, poisoned) == (failures, False)
            clock.advance(0.5)
            consumed = service.fan_out()
        # The last failure parks it: passed over without deliveries, the rest fan out.
        assert consumed == 3
        assert _failures(service, FAN_OUT_ITEMS, poisoned) == (
            len(model.FAN_OUT_BACKOFF_S) + 1, True,
        )  # fmt: skip
        assert set(_deliveries(database)) == {before, *behind}
        assert service.fan_out() == 0
    finally:
        refuse_row(database, "payments_webhook_deliveries", "event_id", poisoned, on=False)
    # The operator fixed the cause: a replay delivers it.
    service.replay(None, poisoned)
    assert set(_deliveries(database)) == {before, poisoned, *behind}
    assert service.deliver_due() == 4


def test_a_delivery_whose_row_takes_no_update_stalls_no_other(
    database: Database, service: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    """Its lease is refused (so it is never sent: unleased, another worker could send it
    too); the claim goes on with the others, and it is backed off, then parked."""
    add_merchant(database, "mer_a")
    service.create_endpoint("mer_a", receiver.url("/hook"), None)
    events = [add_event(database, clock, "mer_a") for _ in range(3)]
    assert service.fan_out() == 3
    poisoned = str(_deliveries(database)[events[0]].id)
    refuse_row(database, "payments_webhook_deliveries", "id", poisoned, on=True)
    try:
        assert service.deliver_due() == 2
        states = {e: r.state for e, r in _deliveries(database).items()}
        assert states == {events[0]: "pending", events[1]: "delivered", events[2]: "delivered"}
        assert _failures(service, RECORD_ITEMS, poisoned) == (1, False)
        for failures, wait_s in enumerate(limits.WORKER_ITEM_BACKOFF_S, start=2):
            clock.advance(wait_s - 1)
            assert service.deliver_due() == 0  # backed off: not even claimed
            assert _failures(service, RECORD_ITEMS, poisoned)[0] == failures - 1
            clock.advance(1)
            assert service.deliver_due() == 0  # claimed, its lease refused again
            assert _failures(service, RECORD_ITEMS, poisoned)[0] == failures
        assert _failures(service, RECORD_ITEMS, poisoned) == (
            limits.WORKER_ITEM_FAILURES_MAX, True,
        )  # fmt: skip
        clock.advance(30 * 24 * 3600)
        assert service.deliver_due() == 0  # parked: left out of the claims
        assert _failures(service, RECORD_ITEMS, poisoned)[0] == limits.WORKER_ITEM_FAILURES_MAX
        # Other deliveries, even to the same endpoint, go on.
        fresh = add_event(database, clock, "mer_a")
        assert service.fan_out() == 1
        assert service.deliver_due() == 1
        assert _deliveries(database)[fresh].state == "delivered"
    finally:
        refuse_row(database, "payments_webhook_deliveries", "id", poisoned, on=False)
    assert len(receiver.received()) == 3  # never sent unleased
    assert service.quarantine.release(RECORD_ITEMS, poisoned)
    service._record_items = None  # a pump reads the list again within seconds anyway
    assert service.deliver_due() == 1
    assert _deliveries(database)[events[0]].state == "delivered"


def test_a_delivery_whose_result_cannot_be_recorded_is_backed_off(
    database: Database, service: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    """The lease goes through, the result is refused: the others' results are recorded (one
    savepoint each), it is sent again after its lease and backoff (at least once)."""
    add_merchant(database, "mer_a")
    service.create_endpoint("mer_a", receiver.url("/hook"), None)
    events = [add_event(database, clock, "mer_a") for _ in range(3)]
    assert service.fan_out() == 3
    poisoned = str(_deliveries(database)[events[0]].id)
    # A result refused: the state column takes no "delivered" for this delivery.
    trigger_on(database, poisoned)
    try:
        assert service.deliver_due() == 3
        states = {e: r.state for e, r in _deliveries(database).items()}
        assert states == {events[0]: "pending", events[1]: "delivered", events[2]: "delivered"}
        assert _failures(service, RECORD_ITEMS, poisoned) == (1, False)
        lease_s = model.lease_s(service.http_timeout_s)
        clock.advance(max(lease_s, limits.WORKER_ITEM_BACKOFF_S[0]) + 1)
        assert service.deliver_due() == 1  # sent again
        assert _failures(service, RECORD_ITEMS, poisoned) == (2, False)
    finally:
        trigger_off(database)
    clock.advance(limits.WORKER_ITEM_BACKOFF_S[1] + lease_s)
    assert service.deliver_due() == 1
    assert _deliveries(database)[events[0]].state == "delivered"
    assert service.quarantine.failures(RECORD_ITEMS) == []  # forgotten once through


def trigger_on(database: Database, delivery_id: str) -> None:
    """Refuse recording ``delivered`` on one delivery (its lease is allowed)."""
    with database.engine.begin() as conn:
        if database.is_postgres:
            conn.exec_driver_sql(
                "CREATE FUNCTION test_refuse_result() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected'; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER test_refuse_result BEFORE UPDATE ON payments_webhook_deliveries "
                f"FOR EACH ROW WHEN (NEW.id = '{delivery_id}' AND NEW.state = 'delivered') "
                "EXECUTE FUNCTION test_refuse_result()"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER test_refuse_result BEFORE UPDATE ON payments_webhook_deliveries "
                f"WHEN NEW.id = '{delivery_id}' AND NEW.state = 'delivered' "
                "BEGIN SELECT RAISE(ABORT, 'injected'); END"
            )


def trigger_off(database: Database) -> None:
    with database.engine.begin() as conn:
        if database.is_postgres:
            conn.exec_driver_sql("DROP TRIGGER test_refuse_result ON payments_webhook_deliveries")
            conn.exec_driver_sql("DROP FUNCTION test_refuse_result()")
        else:
            conn.exec_driver_sql("DROP TRIGGER test_refuse_result")


def test_an_attempt_that_raises_is_a_failed_attempt_and_the_pump_goes_on(
    database: Database,
    service: WebhookService,
    receiver: Receiver,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_merchant(database, "mer_a")
    service.create_endpoint("mer_a", receiver.url("/hook"), None)
    poisoned = add_event(database, clock, "mer_a")
    good = add_event(database, clock, "mer_a")
    assert service.fan_out() == 2
    real = model.sign_headers

    def sign_headers(secrets_: Any, message_id: str, timestamp_s: int, body: bytes) -> Any:
        if message_id == poisoned:
            raise RuntimeError("a payload nothing foresaw: ada@example.com")
        return real(secrets_, message_id, timestamp_s, body)

    monkeypatch.setattr(model, "sign_headers", sign_headers)
    pump = DeliveryPump(service)
    for _ in range(20):
        pump.pump()
        if not pump.in_flight:
            break
        pump.wait(0.5)
    rows = _deliveries(database)
    assert rows[good].state == "delivered"
    row = rows[poisoned]
    assert (row.state, row.attempts) == ("pending", 1)
    assert row.last_error == "internal error (unexpected:RuntimeError)"  # no personal data
    assert row.next_attempt_at_ns == clock.now_ns() + model.RETRY_SCHEDULE_S[0] * NS_PER_S
    # On schedule, then dead (the dead-letter record) like any failing delivery.
    with database.write() as conn:
        conn.execute(
            sa.text("UPDATE payments_webhook_deliveries SET attempts = :n WHERE id = :id"),
            {"n": model.ATTEMPTS_MAX - 1, "id": row.id},
        )
    clock.advance(3 * 24 * 3600)
    assert service.deliver_due() == 1
    dead = _deliveries(database)[poisoned]
    assert (dead.state, dead.attempts) == ("dead", model.ATTEMPTS_MAX)
    pump.close()
