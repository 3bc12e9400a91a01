"""The webhook service against real databases (SQLite and PostgreSQL) and a real HTTP receiver."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from paykeep.clock import NS_PER_S, FakeClock, monotonic_s
from paykeep.db import Database
from paykeep.security.fields import FieldCipher
from paykeep.workers import webhook_model as model
from paykeep.workers.webhook_model import (
    DeliveryState,
    EventNotFound,
    WebhookEndpointDisabled,
    WebhookEndpointLimitReached,
    WebhookEndpointNotFound,
    WebhookMerchantUnknown,
    WebhookParameterInvalid,
    WebhookSignatureInvalid,
    WebhookUrlInvalid,
)
from paykeep.workers.webhooks import DeliveryView, WebhookService, run_webhook_worker
from tests.webhooks.conftest import (
    HTTP_TIMEOUT_S,
    LOOPBACK,
    Receiver,
    add_event,
    add_merchant,
    event_payload,
)


def _rows(database: Database, sql: str, **params: Any) -> list[sa.Row[Any]]:
    with database.read() as conn:
        return list(conn.execute(sa.text(sql), params).all())


def _deliveries(database: Database) -> list[sa.Row[Any]]:
    return _rows(
        database,
        "SELECT id, event_id, endpoint_id, state, attempts, next_attempt_at_ns, last_status, "
        "last_error FROM payments_webhook_deliveries ORDER BY id",
    )


def _only(database: Database) -> sa.Row[Any]:
    rows = _deliveries(database)
    assert len(rows) == 1, rows
    return rows[0]


# --- Endpoints ------------------------------------------------------------------------------


def test_create_endpoint_returns_the_secret_once_and_seals_it(
    database: Database, service: WebhookService, receiver: Receiver
) -> None:
    add_merchant(database, "mer_a")
    view, secret = service.create_endpoint("mer_a", receiver.url("/a"), ["order.paid"])
    assert secret.startswith("whsec_")
    assert view.merchant_id == "mer_a" and view.enabled and view.event_types == ("order.paid",)
    assert "secret" not in json.dumps(view.to_json())
    (row,) = _rows(database, "SELECT secret_enc FROM payments_webhook_endpoints")
    stored = bytes(row.secret_enc)
    assert secret.encode() not in stored
    assert model.secret_key(secret) not in stored
    assert service.get_endpoint("mer_a", view.id) == view
    assert service.get_endpoint(None, view.id) == view  # the operator's scope
    assert service.list_endpoints("mer_a") == [view]


def test_endpoint_ownership_and_errors(
    database: Database, service: WebhookService, receiver: Receiver
) -> None:
    add_merchant(database, "mer_a")
    add_merchant(database, "mer_b")
    view, _ = service.create_endpoint("mer_a", receiver.url("/a"), None)
    assert service.list_endpoints("mer_b") == []
    for action in (service.get_endpoint, service.disable_endpoint, service.rotate_secret):
        with pytest.raises(WebhookEndpointNotFound):
            action("mer_b", view.id)
        with pytest.raises(WebhookEndpointNotFound):
            action("mer_a", "we_missing")
    with pytest.raises(WebhookUrlInvalid):
        service.create_endpoint("mer_a", "https://u:p@example.com/", None)
    with pytest.raises(WebhookMerchantUnknown):
        service.create_endpoint("mer_nobody", receiver.url("/a"), None)
    for i in range(model.ENDPOINTS_PER_MERCHANT_MAX - 1):
        service.create_endpoint("mer_a", receiver.url(f"/a{i}"), None)
    with pytest.raises(WebhookEndpointLimitReached):
        service.create_endpoint("mer_a", receiver.url("/one-too-many"), None)
    service.disable_endpoint("mer_a", view.id)  # a disabled endpoint frees its slot
    service.create_endpoint("mer_a", receiver.url("/again"), None)


# --- Fan-out and delivery -------------------------------------------------------------------


def test_a_delivery_end_to_end(
    database: Database, service: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    add_merchant(database, "mer_a")
    endpoint, secret = service.create_endpoint("mer_a", receiver.url("/hook"), None)
    event_id = add_event(database, clock, "mer_a")
    assert service.deliver_due() == 0  # nothing fanned out yet
    assert service.fan_out() == 1
    assert service.fan_out() == 0
    assert service.deliver_due() == 1
    (request,) = receiver.received()
    assert request.path == "/hook"
    assert request.body == event_payload(database, event_id).encode("utf-8")  # byte for byte
    assert request.headers["webhook-id"] == event_id
    assert request.headers["webhook-timestamp"] == str(clock.now_ns() // NS_PER_S)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "Paykeep-Webhooks/1"
    service.verify(secret, request.headers, request.body)
    with pytest.raises(WebhookSignatureInvalid):
        service.verify(secret, request.headers, request.body.replace(b"1250", b"9250"))
    with pytest.raises(WebhookSignatureInvalid):
        service.verify(model.new_secret(), request.headers, request.body)
    row = _only(database)
    assert (row.state, row.attempts, row.last_status, row.last_error) == ("delivered", 1, 200, None)
    assert row.next_attempt_at_ns is None and row.endpoint_id == endpoint.id
    assert service.deliver_due() == 0
    assert len(receiver.received()) == 1


_BODY_CAP = model.RESPONSE_BODY_READ_BYTES_MAX


@pytest.mark.parametrize(
    ("status", "body", "connections"),
    [
        (200, b"ok", 1),
        (204, b"", 1),
        (202, b"x" * (_BODY_CAP - 100), 1),
        # Past the cap the rest is never read: that connection is dropped, the delivery counts.
        (200, b"x" * (_BODY_CAP * 3), 12),
    ],
)
def test_deliveries_keep_their_connection_alive(
    database: Database,
    service: WebhookService,
    receiver: Receiver,
    clock: FakeClock,
    status: int,
    body: bytes,
    connections: int,
) -> None:
    """A merchant's endpoint gets one connection for many deliveries, not one per delivery
    (a TCP and, over https, a TLS handshake each): the answer's body is read, bounded, so the
    connection can go back to the pool. One at a time here, so one connection serves all."""
    add_merchant(database, "mer_a")
    service.create_endpoint("mer_a", receiver.url("/hook"), None)
    receiver.answer("/hook", status, body)
    for _ in range(12):
        add_event(database, clock, "mer_a")
        assert service.fan_out() == 1
        assert service.deliver_due() == 1
    assert len(receiver.received("/hook")) == 12
    assert receiver.connections == connections
    assert {row.state for row in _deliveries(database)} == {"delivered"}


def test_fan_out_respects_ownership_and_event_types(
    database: Database, service: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    add_merchant(database, "mer_a")
    add_merchant(database, "mer_b")
    a_all, _ = service.create_endpoint("mer_a", receiver.url("/a-all"), None)
    a_paid, _ = service.create_endpoint("mer_a", receiver.url("/a-paid"), ["order.paid"])
    a_star, _ = service.create_endpoint("mer_a", receiver.url("/a-star"), ["*"])
    b_paid, _ = service.create_endpoint("mer_b", receiver.url("/b"), ["order.paid"])
    a_off, _ = service.create_endpoint("mer_a", receiver.url("/a-off"), None)
    service.disable_endpoint("mer_a", a_off.id)
    paid_a = add_event(database, clock, "mer_a", "order.paid")
    shipped_a = add_event(database, clock, "mer_a", "order.shipped")
    shipped_b = add_event(database, clock, "mer_b", "order.shipped")
    paid_b = add_event(database, clock, "mer_b", "order.paid")
    add_event(database, clock, None, "platform.fees_swept")
    assert service.fan_out() == 5
    got = {(r.event_id, r.endpoint_id) for r in _deliveries(database)}
    assert got == {
        (paid_a, a_all.id),
        (paid_a, a_paid.id),
        (paid_a, a_star.id),
        (shipped_a, a_all.id),
        (shipped_a, a_star.id),
        (paid_b, b_paid.id),
    }
    assert shipped_b not in {event for event, _ in got}
    assert service.deliver_due() == 6
    assert sorted(r.path for r in receiver.received()) == sorted(
        ["/a-all", "/a-paid", "/a-star", "/a-all", "/a-star", "/b"]
    )


def test_fan_out_moves_the_cursor_in_order_and_in_batches(
    database: Database, service: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    add_merchant(database, "mer_a")
    service.create_endpoint("mer_a", receiver.url("/a"), None)
    events = [add_event(database, clock, "mer_a") for _ in range(7)]
    assert [service.fan_out(3), service.fan_out(3), service.fan_out(3), service.fan_out(3)] == [
        3,
        3,
        1,
        0,
    ]
    rows = _deliveries(database)
    assert [r.event_id for r in rows] == events  # delivery ids are time-ordered: seq order
    (cursor,) = _rows(database, "SELECT name, seq FROM payments_outbox_cursor")
    assert cursor.name == "webhooks"
    with pytest.raises(WebhookParameterInvalid):
        service.fan_out(0)


def _due(clock: FakeClock, row: sa.Row[Any]) -> None:
    clock.set(int(row.next_attempt_at_ns))


def test_retries_follow_the_schedule_then_dead(
    database: Database, service: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    add_merchant(database, "mer_a")
    service.create_endpoint("mer_a", receiver.url("/down"), None)
    receiver.answer("/down", 500, b"upstream exploded " + b"x" * 10_000)
    add_event(database, clock, "mer_a")
    service.fan_out()
    for attempt in range(1, model.ATTEMPTS_MAX):
        failed_at = clock.now_ns()
        assert service.deliver_due() == 1
        row = _only(database)
        assert (row.state, row.attempts, row.last_status) == ("pending", attempt, 500)
        assert row.last_error.startswith("HTTP 500: upstream exploded")
        assert len(row.last_error) <= model.LAST_ERROR_LENGTH_MAX
        wait_ns = model.RETRY_SCHEDULE_S[attempt - 1] * NS_PER_S
        assert row.next_attempt_at_ns == failed_at + wait_ns
        clock.set(row.next_attempt_at_ns - 1)  # one nanosecond early: not due
        assert service.deliver_due() == 0
        _due(clock, row)
    assert service.deliver_due() == 1
    row = _only(database)
    assert (row.state, row.attempts, row.last_status) == ("dead", model.ATTEMPTS_MAX, 500)
    assert row.next_attempt_at_ns is None and row.last_error
    clock.advance(30 * 24 * 3600)
    assert service.deliver_due() == 0
    assert len(receiver.received()) == model.ATTEMPTS_MAX
    (dead,) = service.deliveries("mer_a", state="dead").data
    assert dead.state is DeliveryState.DEAD and dead.last_status == 500


def test_a_failed_endpoint_recovers(
    database: Database, service: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    add_merchant(database, "mer_a")
    service.create_endpoint("mer_a", receiver.url("/flaky"), None)
    receiver.answer("/flaky", 503)
    add_event(database, clock, "mer_a")
    service.fan_out()
    service.deliver_due()
    receiver.answer("/flaky", 204)
    _due(clock, _only(database))
    assert service.deliver_due() == 1
    row = _only(database)
    assert (row.state, row.attempts, row.last_status, row.last_error) == ("delivered", 2, 204, None)


@pytest.mark.parametrize("failure", ["hang", "refused", "redirect", "garbage"])
def test_network_failures_are_retried(
    database: Database,
    service: WebhookService,
    receiver: Receiver,
    clock: FakeClock,
    failure: str,
) -> None:
    add_merchant(database, "mer_a")
    url = receiver.url("/x")
    if failure == "hang":
        receiver.hang("/x")
    elif failure == "redirect":
        receiver.answer("/x", 302, headers={"location": receiver.url("/elsewhere")})
    elif failure == "refused":
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{probe.getsockname()[1]}/x"
    else:  # a server that answers with something that is not HTTP
        raw = socket.socket()
        raw.bind(("127.0.0.1", 0))
        raw.listen()
        url = f"http://127.0.0.1:{raw.getsockname()[1]}/x"

        def garbage() -> None:
            conn, _ = raw.accept()
            conn.recv(65536)
            conn.sendall(b"\x00\x01 not http at all\r\n\r\n")
            conn.close()

        threading.Thread(target=garbage, daemon=True).start()
    service.create_endpoint("mer_a", url, None)
    add_event(database, clock, "mer_a")
    service.fan_out()
    started = monotonic_s()
    assert service.deliver_due() == 1
    assert monotonic_s() - started < 4 * HTTP_TIMEOUT_S + 2
    row = _only(database)
    assert row.state == "pending" and row.attempts == 1
    assert row.next_attempt_at_ns == clock.now_ns() + model.RETRY_SCHEDULE_S[0] * NS_PER_S
    if failure == "redirect":
        assert row.last_status == 302
        assert [r.path for r in receiver.received()] == ["/x"]  # not followed
    else:
        assert row.last_status is None
        assert row.last_error
    if failure == "hang":
        assert row.last_error.startswith("timeout")
    if failure == "garbage":
        raw.close()


def test_a_hanging_endpoint_takes_a_bounded_share_of_a_call(
    database: Database, service: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    add_merchant(database, "mer_a")
    add_merchant(database, "mer_b")
    slow, _ = service.create_endpoint("mer_a", receiver.url("/slow"), None)
    fast, _ = service.create_endpoint("mer_b", receiver.url("/fast"), None)
    receiver.hang("/slow")
    for _ in range(10):
        add_event(database, clock, "mer_a")
    add_event(database, clock, "mer_b")  # after all the slow endpoint's events
    service.fan_out()
    started = monotonic_s()
    attempted = service.deliver_due()
    elapsed = monotonic_s() - started
    assert attempted == model.DELIVERIES_PER_ENDPOINT_PER_CALL_MAX + 1
    assert elapsed < 4 * HTTP_TIMEOUT_S + 2  # concurrent, not one timeout after another
    assert len(receiver.received("/fast")) == 1
    states = {(r.endpoint_id, r.state, r.attempts) for r in _deliveries(database)}
    assert (fast.id, "delivered", 1) in states
    assert (slow.id, "pending", 0) in states  # the rest waits for the next call


# --- Disable, rotate, replay, the delivery log ----------------------------------------------


def test_disabling_dead_letters_pending_deliveries(
    database: Database, service: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    add_merchant(database, "mer_a")
    endpoint, _ = service.create_endpoint("mer_a", receiver.url("/a"), None)
    add_event(database, clock, "mer_a")
    service.fan_out()
    view = service.disable_endpoint("mer_a", endpoint.id)
    assert not view.enabled and not service.get_endpoint("mer_a", endpoint.id).enabled
    assert service.deliver_due() == 0
    row = _only(database)
    assert (row.state, row.last_error) == ("dead", "endpoint disabled")
    add_event(database, clock, "mer_a")
    assert service.fan_out() == 1
    assert len(_deliveries(database)) == 1  # no delivery to a disabled endpoint
    assert receiver.received() == []
    with pytest.raises(WebhookEndpointDisabled):
        service.rotate_secret("mer_a", endpoint.id)


def test_rotation_signs_with_both_secrets_for_a_day(
    database: Database, service: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    add_merchant(database, "mer_a")
    endpoint, old = service.create_endpoint("mer_a", receiver.url("/a"), None)
    new = service.rotate_secret("mer_a", endpoint.id)
    assert new != old
    add_event(database, clock, "mer_a")
    service.fan_out()
    service.deliver_due()
    (first,) = receiver.received()
    service.verify(old, first.headers, first.body)
    service.verify(new, first.headers, first.body)
    clock.advance(model.SECRET_ROTATION_GRACE_S)
    add_event(database, clock, "mer_a")
    service.fan_out()
    service.deliver_due()
    second = receiver.received()[1]
    service.verify(new, second.headers, second.body)
    with pytest.raises(WebhookSignatureInvalid):
        service.verify(old, second.headers, second.body)


def test_replay(
    database: Database, service: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    add_merchant(database, "mer_a")
    add_merchant(database, "mer_b")
    one, _ = service.create_endpoint("mer_a", receiver.url("/one"), None)
    two, _ = service.create_endpoint("mer_a", receiver.url("/two"), ["order.paid"])
    other, _ = service.create_endpoint("mer_b", receiver.url("/b"), None)
    event_id = add_event(database, clock, "mer_a", "order.paid")
    service.fan_out()
    service.deliver_due()
    # Same instant as the fan-out: (event, endpoint, created_at_ns) must still be unique.
    replayed = service.replay("mer_a", event_id)
    assert {d.endpoint_id for d in replayed} == {one.id, two.id}
    assert all(d.state is DeliveryState.PENDING and d.attempts == 0 for d in replayed)
    only_one = service.replay("mer_a", event_id, one.id)
    assert [d.endpoint_id for d in only_one] == [one.id]
    assert service.replay(None, event_id, one.id)[0].endpoint_id == one.id  # operator
    assert service.deliver_due() == 4
    ids = [r.headers["webhook-id"] for r in receiver.received("/one")]
    assert ids == [event_id] * 4  # the same webhook-id: receivers deduplicate on it
    with pytest.raises(EventNotFound):
        service.replay("mer_b", event_id)  # another merchant's event: not found
    with pytest.raises(EventNotFound):
        service.replay("mer_a", "evt_missing")
    with pytest.raises(WebhookEndpointNotFound):
        service.replay("mer_a", event_id, other.id)
    service.disable_endpoint("mer_a", two.id)
    with pytest.raises(WebhookEndpointDisabled):
        service.replay("mer_a", event_id, two.id)


def test_the_delivery_log_pages_filters_and_scopes(
    database: Database, service: WebhookService, receiver: Receiver, clock: FakeClock
) -> None:
    add_merchant(database, "mer_a")
    add_merchant(database, "mer_b")
    service.create_endpoint("mer_a", receiver.url("/a"), None)
    service.create_endpoint("mer_b", receiver.url("/b"), None)
    receiver.answer("/b", 500)
    events = [add_event(database, clock, "mer_a") for _ in range(5)]
    b_event = add_event(database, clock, "mer_b")
    service.fan_out()
    service.deliver_due()
    seen: list[DeliveryView] = []
    page = service.deliveries("mer_a", limit=2)
    while True:
        seen.extend(page.data)
        if not page.has_more:
            break
        page = service.deliveries("mer_a", limit=2, starting_after=page.data[-1].id)
    assert [d.event_id for d in seen] == list(reversed(events))  # newest first, each once
    assert len(service.deliveries("mer_a", limit=5).data) == 5
    assert not service.deliveries("mer_a", limit=5).has_more
    assert service.deliveries("mer_a", event_id=b_event).data == ()
    (b,) = service.deliveries("mer_b").data
    assert b.state is DeliveryState.PENDING and b.last_status == 500
    assert service.deliveries("mer_b", state="delivered").data == ()
    assert len(service.deliveries(None, limit=100).data) == 6
    assert service.deliveries("mer_a", event_id=events[0]).data[0].event_id == events[0]
    for bad in ({"limit": 0}, {"limit": 101}, {"state": "gone"}, {"starting_after": "x"}):
        with pytest.raises(WebhookParameterInvalid):
            service.deliveries("mer_a", **bad)


def test_the_worker_loop_delivers_until_stopped(
    database: Database, cipher: FieldCipher, receiver: Receiver
) -> None:
    add_merchant(database, "mer_a")
    with WebhookService(
        database, cipher, http_timeout_s=HTTP_TIMEOUT_S, allowed_networks=LOOPBACK
    ) as service:
        service.create_endpoint("mer_a", receiver.url("/a"), None)
        stop = threading.Event()
        worker = threading.Thread(target=run_webhook_worker, args=(service, stop, 0.05))
        worker.start()
        try:
            clock = FakeClock()  # the events' times do not matter to the worker
            event_ids = [add_event(database, clock, "mer_a") for _ in range(3)]
            deadline = monotonic_s() + 10
            while len(receiver.received()) < 3 and monotonic_s() < deadline:
                stop.wait(0.05)
        finally:
            stop.set()
            worker.join(10)
        assert not worker.is_alive()
        assert sorted(r.headers["webhook-id"] for r in receiver.received()) == sorted(event_ids)
        assert {r.state for r in _deliveries(database)} == {"delivered"}
