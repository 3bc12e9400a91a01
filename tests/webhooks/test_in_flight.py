"""Deliveries in flight: a slow or hanging endpoint delays only its own deliveries.

Real HTTP receivers on 127.0.0.1 and real databases (SQLite and PostgreSQL). The bounds are
generous (a hang of 8 s, healthy deliveries required within 3 s) so that a loaded machine
does not make them flaky, while the old barrier (every result waited for the slowest attempt
of the batch) fails them by seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
import sqlalchemy as sa

from paykeep.clock import FakeClock, monotonic_s
from paykeep.db import Database
from paykeep.security.fields import FieldCipher
from paykeep.workers import webhook_model as model
from paykeep.workers.cycle import (
    WEBHOOK_INTERVAL_S,
    WEBHOOK_PASS_BUDGET_S,
    WorkerStats,
    webhook_pass,
)
from paykeep.workers.cycle import _loop as cycle_loop
from paykeep.workers.webhooks import DeliveryPump, WebhookService, run_webhook_worker
from tests.webhooks.conftest import LOOPBACK, Receiver, add_event, add_merchant

#: How long the slow endpoint takes to answer (its attempts are in flight all that time).
SLOW_ANSWER_S = 8.0
#: The HTTP timeout of these tests' service: longer than the slow answer, so the slow
#: attempts really are in flight for ``SLOW_ANSWER_S`` instead of timing out early.
PATIENT_TIMEOUT_S = 10.0
#: The healthy endpoint's deliveries must arrive (and be recorded) within this.
HEALTHY_WITHIN_S = 3.0
#: The worker loop's idle interval in these tests.
INTERVAL_S = 0.05


@pytest.fixture
def patient(database: Database, cipher: FieldCipher, clock: FakeClock) -> Iterator[WebhookService]:
    """A service that waits out the slow endpoint. Tests release the receiver before this
    closes (closing waits for the attempts still running)."""
    with WebhookService(
        database, cipher, clock=clock, http_timeout_s=PATIENT_TIMEOUT_S, allowed_networks=LOOPBACK
    ) as svc:
        yield svc


def _eventually(condition: Callable[[], bool], within_s: float) -> bool:
    deadline = monotonic_s() + within_s
    while not condition():
        if monotonic_s() > deadline:
            return False
        threading.Event().wait(0.02)
    return True


def _rows(database: Database, endpoint_id: str) -> list[sa.Row[Any]]:
    with database.read() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT id, state, attempts, last_status FROM payments_webhook_deliveries "
                    "WHERE endpoint_id = :w ORDER BY id"
                ),
                {"w": endpoint_id},
            ).all()
        )


def _start_run_webhook_worker(service: WebhookService, stop: threading.Event) -> float:
    """``run_webhook_worker`` in a thread; returns how long a stop may take (its grace)."""
    threading.Thread(
        target=run_webhook_worker, args=(service, stop, INTERVAL_S), name="test-webhooks"
    ).start()
    return model.WORKER_STOP_GRACE_S + 2.0


def _start_serve_workers_loop(service: WebhookService, stop: threading.Event) -> float:
    """The loop ``paykeep serve``'s worker process runs (``cycle``), on a stand-in runtime
    (the pass only uses ``runtime.webhooks``); a stop waits for the pass under way."""
    runtime = cast(Any, SimpleNamespace(webhooks=service))
    pump = DeliveryPump(service)
    threading.Thread(
        target=cycle_loop,
        args=("webhooks", WEBHOOK_INTERVAL_S, lambda: webhook_pass(runtime, pump), stop),
        kwargs={"stats": WorkerStats()},
        name="test-webhooks",
    ).start()
    return WEBHOOK_PASS_BUDGET_S + WEBHOOK_INTERVAL_S + 2.0


def _worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "test-webhooks"]


@pytest.mark.parametrize(
    "loop",
    [_start_run_webhook_worker, _start_serve_workers_loop],
    ids=["run_webhook_worker", "serve_workers"],
)
def test_a_hanging_endpoint_delays_only_its_own_deliveries(
    database: Database,
    patient: WebhookService,
    receiver: Receiver,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    loop: Callable[[WebhookService, threading.Event], float],
) -> None:
    # A claim scan shorter than the slow endpoint's backlog: an endpoint whose share is in
    # flight must be left out of the scan, or its backlog fills the scan and starves others.
    monkeypatch.setattr(model, "CLAIM_SCAN_MAX", 4)
    add_merchant(database, "mer_slow")
    add_merchant(database, "mer_fast")
    slow, _ = patient.create_endpoint("mer_slow", receiver.url("/slow"), None)
    fast, _ = patient.create_endpoint("mer_fast", receiver.url("/fast"), None)
    receiver.delay("/slow", SLOW_ANSWER_S)
    share = model.DELIVERIES_PER_ENDPOINT_IN_FLIGHT_MAX
    slow_events = [add_event(database, clock, "mer_slow") for _ in range(2 * share)]
    stop = threading.Event()
    stop_within_s = loop(patient, stop)
    try:
        assert _eventually(lambda: len(receiver.received("/slow")) >= 1, HEALTHY_WITHIN_S)
        # The slow endpoint's attempts are in flight now; the healthy merchant's events come.
        created_s = monotonic_s()
        fast_events = [add_event(database, clock, "mer_fast") for _ in range(5)]

        def fast_recorded() -> bool:
            rows = _rows(database, fast.id)
            return len(rows) == len(fast_events) and all(r.state == "delivered" for r in rows)

        arrived = _eventually(fast_recorded, HEALTHY_WITHIN_S)
        took_s = monotonic_s() - created_s
        assert arrived, (
            f"healthy deliveries not recorded {took_s:.1f} s after their events "
            f"({len(receiver.received('/fast'))} of {len(fast_events)} arrived)"
        )
        got = receiver.received("/fast")
        assert sorted(r.headers["webhook-id"] for r in got) == sorted(fast_events)
        assert max(r.arrived_s for r in got) - created_s < HEALTHY_WITHIN_S
        assert {(r.state, r.attempts, r.last_status) for r in _rows(database, fast.id)} == {
            ("delivered", 1, 200)
        }
        # The slow endpoint has its share in flight, no more, and none of it has ended.
        assert _eventually(lambda: len(receiver.received("/slow")) == share, HEALTHY_WITHIN_S)
        assert receiver.most_at_once("/slow") == share
        assert {(r.state, r.attempts) for r in _rows(database, slow.id)} == {("pending", 0)}

        # Stopping does not wait for the hanging attempts: they are abandoned, still leased.
        stop.set()
        assert _eventually(lambda: not _worker_threads(), stop_within_s)
        first_slow_s = receiver.received("/slow")[0].arrived_s
        assert monotonic_s() - first_slow_s < SLOW_ANSWER_S, "too slow for these margins"
        assert {(r.state, r.attempts) for r in _rows(database, slow.id)} == {("pending", 0)}
    finally:
        receiver.released.set()
        stop.set()
        for thread in _worker_threads():
            thread.join(PATIENT_TIMEOUT_S)
    # Once the lease has run out, the abandoned deliveries are sent again (at least once).
    clock.advance(model.lease_s(PATIENT_TIMEOUT_S) + 1)
    while patient.deliver_due():
        pass
    assert {(r.state, r.attempts) for r in _rows(database, slow.id)} == {("delivered", 1)}
    sent = [r.headers["webhook-id"] for r in receiver.received("/slow")]
    assert sorted(set(sent)) == sorted(slow_events)
    assert len(sent) == len(slow_events) + share  # the abandoned share twice


def test_in_flight_limits_hold_per_endpoint_and_in_total(
    database: Database, service: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    in_flight_max, per_endpoint_max = 6, 2
    add_merchant(database, "mer_a")
    paths = [f"/e{i}" for i in range(4)]  # 4 endpoints x 2 > 6: the total bound binds too
    for path in paths:
        # /e0 also gets order.paid: a backlog of its own, first in line.
        types = None if path == "/e0" else ["order.shipped"]
        service.create_endpoint("mer_a", receiver.url(path), types)
        receiver.delay(path, 0.3)  # answers overlap the next claims
    add_event(database, clock, "mer_a", "order.shipped")
    service.fan_out()
    pump = DeliveryPump(service, in_flight_max=in_flight_max, per_endpoint_max=per_endpoint_max)
    assert pump.pump() == len(paths)  # one each
    # /e0 has one in flight: of its backlog, only one more may start.
    for type_ in ["order.paid"] * 3 + ["order.shipped"] * 3:
        add_event(database, clock, "mer_a", type_)
    service.fan_out()
    expected = {"/e0": 7, "/e1": 4, "/e2": 4, "/e3": 4}

    def delivered() -> int:
        return len(service.deliveries("mer_a", state="delivered", limit=100).data)

    deadline_s = monotonic_s() + 20
    while delivered() < sum(expected.values()) and monotonic_s() < deadline_s:
        pump.pump()
        assert pump.in_flight <= in_flight_max
        pump.wait(1.0)
    assert pump.close() == 0
    for path, count in expected.items():
        assert len(receiver.received(path)) == count
        assert 1 <= receiver.most_at_once(path) <= per_endpoint_max
    # More than one endpoint's share at once (the pump fills its slots), never more than all.
    assert per_endpoint_max < receiver.most_at_once() <= in_flight_max
    rows = service.deliveries("mer_a", limit=100).data
    assert {(d.state.value, d.attempts) for d in rows} == {("delivered", 1)}


def test_deliver_due_records_each_result_as_it_ends(
    database: Database, patient: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    add_merchant(database, "mer_slow")
    add_merchant(database, "mer_fast")
    slow, _ = patient.create_endpoint("mer_slow", receiver.url("/slow"), None)
    fast, _ = patient.create_endpoint("mer_fast", receiver.url("/fast"), None)
    receiver.delay("/slow", SLOW_ANSWER_S)
    add_event(database, clock, "mer_slow")
    add_event(database, clock, "mer_fast")
    patient.fan_out()
    call = threading.Thread(target=patient.deliver_due)
    call.start()
    try:
        recorded = _eventually(
            lambda: [r.state for r in _rows(database, fast.id)] == ["delivered"],
            HEALTHY_WITHIN_S,
        )
        assert recorded and call.is_alive()  # recorded while the slow attempt still runs
        assert [r.state for r in _rows(database, slow.id)] == ["pending"]
    finally:
        receiver.released.set()
        call.join(PATIENT_TIMEOUT_S)
    assert not call.is_alive()
    assert [(r.state, r.attempts) for r in _rows(database, slow.id)] == [("delivered", 1)]


@pytest.mark.parametrize("taker_recorded_first", [True, False], ids=["recorded", "in_flight"])
def test_a_result_after_a_lost_lease_writes_nothing(
    database: Database,
    service: WebhookService,
    receiver: Receiver,
    clock: FakeClock,
    cipher: FieldCipher,
    caplog: pytest.LogCaptureFixture,
    taker_recorded_first: bool,
) -> None:
    add_merchant(database, "mer_a")
    endpoint, _ = service.create_endpoint("mer_a", receiver.url("/x"), None)
    receiver.answer("/x", 500)
    event_id = add_event(database, clock, "mer_a")
    service.fan_out()
    stalled = DeliveryPump(service)
    assert stalled.pump() == 1  # started
    assert stalled.wait(5.0)  # ended (a 500), not recorded yet: this worker stalls here
    # The lease runs out; another worker takes the delivery over.
    clock.advance(model.lease_s(service.http_timeout_s) + 1)
    receiver.answer("/x", 200)
    with WebhookService(
        database, cipher, clock=clock, http_timeout_s=service.http_timeout_s,
        allowed_networks=LOOPBACK,
    ) as other:  # fmt: skip
        taker = DeliveryPump(other)
        assert taker.pump() == 1
        assert taker.wait(5.0)
        if taker_recorded_first:
            assert taker.pump() == 1
        with caplog.at_level(logging.WARNING, logger="paykeep.workers.webhooks"):
            assert stalled.pump() == 1  # the stale result is handled, and writes nothing:
        (row,) = _rows(database, endpoint.id)
        if taker_recorded_first:
            assert (row.state, row.attempts, row.last_status) == ("delivered", 1, 200)
        else:  # the attempt number is the same, the lease is not
            assert (row.state, row.attempts, row.last_status) == ("pending", 0, None)
            assert taker.pump() == 1
        assert "lease lost" in caplog.text
        assert taker.close() == 0
    (row,) = _rows(database, endpoint.id)
    assert (row.state, row.attempts, row.last_status) == ("delivered", 1, 200)
    assert stalled.in_flight == 0 and stalled.close() == 0
    assert [r.headers["webhook-id"] for r in receiver.received("/x")] == [event_id] * 2


def test_a_round_records_and_claims_in_one_write_transaction(
    database: Database,
    service: WebhookService,
    receiver: Receiver,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's writes hold the one write lock the API's writer waits for, each with its
    own fsync: a round that takes results in and claims the slots they free is one
    transaction, not two. Counted by watching (not replacing) ``Database.write``."""
    add_merchant(database, "mer_a")
    service.create_endpoint("mer_a", receiver.url("/hook"), None)
    for _ in range(3):
        add_event(database, clock, "mer_a")
    assert service.fan_out() == 3
    pump = DeliveryPump(service, in_flight_max=2)
    assert pump.pump() == 2  # two started, one left due
    assert _eventually(lambda: pump.wait(0.1) or pump.in_flight == 0, 5.0)
    assert _eventually(lambda: len(receiver.received("/hook")) == 2, 5.0)
    writes = 0
    real_write = Database.write

    def counting_write(self: Database) -> Any:
        nonlocal writes
        writes += 1
        return real_write(self)

    monkeypatch.setattr(Database, "write", counting_write)
    assert _eventually(lambda: all(f.done() for f in pump._in_flight), 5.0)
    assert pump.pump() == 3  # two results taken in + the third claimed
    assert writes == 1
    monkeypatch.undo()
    assert _eventually(lambda: len(receiver.received("/hook")) == 3, 5.0)
    pump.close()
    with database.read() as conn:
        states = conn.execute(
            sa.text("SELECT state, count(*) FROM payments_webhook_deliveries GROUP BY state")
        ).all()
    assert dict(states) == {"delivered": 3}


def test_the_claim_scan_reads_while_another_transaction_holds_the_write_lock(
    service: WebhookService, database: Database, clock: FakeClock, receiver: Receiver
) -> None:
    """The scan for due deliveries passes over the backlog of every endpoint with its share in
    flight; it runs in a read transaction, so the API's writer never waits for it. Here a
    write transaction is held open meanwhile (on SQLite a scan under the write lock would wait
    for it, and give up after the lock timeout)."""
    add_merchant(database, "mer_a")
    add_merchant(database, "mer_b")
    busy, _ = service.create_endpoint("mer_a", receiver.url("/a"), None)
    other, _ = service.create_endpoint("mer_b", receiver.url("/b"), None)
    for _ in range(5):
        add_event(database, clock, "mer_a")
    add_event(database, clock, "mer_b")
    service.fan_out()
    holding, release = threading.Event(), threading.Event()

    def hold_the_write_lock() -> None:
        with database.write():
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    try:
        assert holding.wait(10)
        picked = service._scan(10, 2, {busy.id: 2}, clock.now_ns())
    finally:
        release.set()
        holder.join()
    # The busy endpoint's five are passed over: its share is in flight.
    assert [r.id for r in _rows(database, other.id)] == picked
    assert len(picked) == 1
    with database.write() as conn:
        claims = service._lease_picked(conn, picked, clock.now_ns(), [])
    assert [c.delivery_id for c in claims] == picked
    # Leased, it is no longer due: a second scan does not offer it again.
    assert service._scan(10, 2, {busy.id: 2}, clock.now_ns()) == []
