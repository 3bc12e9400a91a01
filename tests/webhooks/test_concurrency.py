"""Several workers on one database: each attempt happens once, the outbox is read once.

PostgreSQL is where this matters (several processes, row locks, ``seq`` drawn before commit);
the fan-out and delivery races run on SQLite too, where writers are serialised.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from paykeep.clock import FakeClock, monotonic_s
from paykeep.config import Settings
from paykeep.db import Database, open_database
from paykeep.payments.events import record_event
from paykeep.security.fields import FieldCipher
from paykeep.workers import webhook_model as model
from paykeep.workers.outbox_gaps import GAP_SETTLE_NS
from paykeep.workers.webhooks import DeliveryPump, WebhookService
from tests.webhooks.conftest import (
    HTTP_TIMEOUT_S,
    LOOPBACK,
    Receiver,
    add_event,
    add_merchant,
)

WORKERS = 3
EVENTS = 60


@pytest.fixture
def workers(
    settings: Settings, database: Database, cipher: FieldCipher, clock: FakeClock
) -> Iterator[list[WebhookService]]:
    """Services on separate engines (separate connection pools), as separate processes have."""
    databases = [open_database(settings, migrate=False) for _ in range(WORKERS)]
    services = [
        WebhookService(
            db, cipher, clock=clock, http_timeout_s=HTTP_TIMEOUT_S, allowed_networks=LOOPBACK
        )
        for db in databases
    ]
    yield services
    for service, db in zip(services, databases, strict=True):
        service.close()
        db.dispose()


def _race(services: list[WebhookService], work: Callable[[WebhookService], int]) -> list[int]:
    """Run ``work`` on every service at once until all of them find nothing to do."""
    barrier = threading.Barrier(len(services))
    done: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(service: WebhookService) -> None:
        try:
            barrier.wait()
            while True:
                n = work(service)
                with lock:
                    done.append(n)
                if n == 0:
                    return
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return done


def _delivery_rows(database: Database) -> list[sa.Row[tuple[str, str, str, int]]]:
    with database.read() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT event_id, endpoint_id, state, attempts FROM payments_webhook_deliveries"
                )
            ).all()
        )


def test_concurrent_fan_out_creates_each_delivery_once(
    database: Database,
    workers: list[WebhookService],
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    add_merchant(database, "mer_a")
    endpoints = [
        workers[0].create_endpoint("mer_a", receiver.url(f"/{i}"), None)[0] for i in (1, 2)
    ]
    events = [add_event(database, clock, "mer_a") for _ in range(EVENTS)]
    consumed = _race(workers, lambda s: s.fan_out(7))
    assert sum(consumed) == EVENTS
    pairs = Counter((r.event_id, r.endpoint_id) for r in _delivery_rows(database))
    assert set(pairs) == {(e, w.id) for e in events for w in endpoints}
    assert set(pairs.values()) == {1}


def test_concurrent_workers_never_send_one_attempt_twice(
    database: Database,
    workers: list[WebhookService],
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    # Enough endpoints that no per-endpoint cap binds (merchants have at most 16 each).
    merchants = [add_merchant(database, f"mer_{m}") for m in range(4)]
    for i in range(model.DELIVER_BATCH_MAX):
        merchant = merchants[i % len(merchants)]
        workers[0].create_endpoint(merchant, receiver.url(f"/{i}"), None)
    for _ in range(EVENTS // 10):
        for merchant in merchants:
            add_event(database, clock, merchant)
    workers[0].fan_out()
    total = (EVENTS // 10) * model.DELIVER_BATCH_MAX
    receiver.delay_s = 0.01  # requests overlap the other workers' claims
    attempted = _race(workers, lambda s: s.deliver_due(8))
    assert sum(attempted) == total
    sent = Counter((r.path, r.headers["webhook-id"]) for r in receiver.received())
    assert len(sent) == total
    assert set(sent.values()) == {1}
    rows = _delivery_rows(database)
    assert {(r.state, r.attempts) for r in rows} == {("delivered", 1)}


def test_concurrent_pumps_never_send_one_attempt_twice(
    database: Database,
    workers: list[WebhookService],
    receiver: Receiver,
    clock: FakeClock,
) -> None:
    """The worker loop's form: each worker keeps its own attempts in flight and claims while
    they run, so claims and results of different workers interleave."""
    merchants = [add_merchant(database, f"mer_{m}") for m in range(4)]
    for i in range(model.DELIVER_BATCH_MAX):
        workers[0].create_endpoint(merchants[i % len(merchants)], receiver.url(f"/{i}"), None)
    for _ in range(EVENTS // 10):
        for merchant in merchants:
            add_event(database, clock, merchant)
    workers[0].fan_out()
    total = (EVENTS // 10) * model.DELIVER_BATCH_MAX
    receiver.delay_s = 0.01  # requests overlap the other workers' claims
    all_recorded = threading.Event()
    errors: list[BaseException] = []

    def run(service: WebhookService) -> None:
        pump = DeliveryPump(service, in_flight_max=8)
        try:
            while not all_recorded.is_set():
                worked = pump.pump()
                if pump.in_flight:
                    pump.wait(0.05)
                elif not worked:
                    all_recorded.wait(0.02)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)
        finally:
            pump.close()

    threads = [threading.Thread(target=run, args=(s,)) for s in workers]
    for thread in threads:
        thread.start()
    try:
        deadline_s = monotonic_s() + 60
        while monotonic_s() < deadline_s and not errors:
            states = Counter(r.state for r in _delivery_rows(database))
            if states["delivered"] == total:
                break
            threading.Event().wait(0.05)
    finally:
        all_recorded.set()
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    sent = Counter((r.path, r.headers["webhook-id"]) for r in receiver.received())
    assert len(sent) == total
    assert set(sent.values()) == {1}
    rows = _delivery_rows(database)
    assert {(r.state, r.attempts) for r in rows} == {("delivered", 1)}


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_fan_out_waits_for_an_earlier_event_still_being_committed(
    database: Database,
    workers: list[WebhookService],
    receiver: Receiver,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL draws ``seq`` before commit: the cursor must not jump over an event whose
    transaction is still open, or that event would never be delivered."""
    add_merchant(database, "mer_a")
    service = workers[0]
    service.create_endpoint("mer_a", receiver.url("/a"), None)
    with database.write() as early:
        first = record_event(
            early,
            merchant_id="mer_a",
            type_="order.paid",
            object_id="o1",
            obj={"n": 1},
            now_ns=clock.now_ns(),
        )
        second = add_event(database, clock, "mer_a")  # commits while `first` is open
        # A gap that may still fill: wait, however long the transaction takes (a fixed grace
        # used to pass it after 120 s and lose `first` for good).
        for _ in range(3):
            assert service.fan_out() == 0
            clock.advance(300)
    # The operator is told why webhooks wait: once per OUTBOX_GAP_WARN_S, not per call.
    warnings = [r for r in caplog.records if "still open" in r.getMessage()]
    assert len(warnings) == 2
    assert service.fan_out() == 2
    with database.read() as conn:
        ordered = conn.execute(
            sa.text("SELECT event_id FROM payments_webhook_deliveries ORDER BY id")
        ).scalars()
        assert list(ordered) == [first, second]


class _RollBack(Exception):
    pass


def _record_then_roll_back(database: Database, clock: FakeClock) -> None:
    """An event whose transaction rolls back: its ``seq`` is drawn and never used."""
    try:
        with database.write() as conn:
            record_event(
                conn,
                merchant_id="mer_a",
                type_="order.paid",
                object_id="o1",
                obj={},
                now_ns=clock.now_ns(),
            )
            raise _RollBack
    except _RollBack:
        pass


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_fan_out_passes_a_rolled_back_gap_once_it_settled(
    database: Database, workers: list[WebhookService], receiver: Receiver, clock: FakeClock
) -> None:
    add_merchant(database, "mer_a")
    service = workers[0]
    service.create_endpoint("mer_a", receiver.url("/a"), None)
    _record_then_roll_back(database, clock)
    after = add_event(database, clock, "mer_a")
    assert service.fan_out() == 0  # seen
    clock.advance(ns=GAP_SETTLE_NS - 1)
    assert service.fan_out() == 0
    assert service.fan_out() == 0  # not settled: no horizon yet, so it cannot pass
    clock.advance(ns=1)
    assert service.fan_out() == 0  # the horizon is taken now
    # Passed as soon as every transaction of the cluster that was open at the horizon has
    # ended (other tests' transactions may be open a moment: poll, in real time).
    deadline = monotonic_s() + 10
    while (consumed := service.fan_out()) == 0 and monotonic_s() < deadline:
        threading.Event().wait(0.05)
    assert consumed == 1
    assert [r.event_id for r in _delivery_rows(database)] == [after]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_a_locked_cursor_means_another_worker_is_fanning_out(
    database: Database, workers: list[WebhookService], clock: FakeClock, receiver: Receiver
) -> None:
    add_merchant(database, "mer_a")
    workers[0].create_endpoint("mer_a", receiver.url("/a"), None)
    add_event(database, clock, "mer_a")
    assert workers[0].fan_out() == 1
    add_event(database, clock, "mer_a")
    with database.write() as holder:
        holder.execute(
            sa.text("SELECT seq FROM payments_outbox_cursor WHERE name = 'webhooks' FOR UPDATE")
        )
        assert workers[1].fan_out() == 0  # returns at once, does not wait
    assert workers[1].fan_out() == 1
