"""Webhook test wiring: a real HTTP receiver (the merchant's side), merchants, events, and a
service on a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from paykeep.clock import FakeClock, monotonic_s
from paykeep.db import Database
from paykeep.gateway.vault.keys import VaultKeys
from paykeep.payments.events import record_event
from paykeep.security.fields import FieldCipher
from paykeep.workers.webhook_model import parse_allowed_networks
from paykeep.workers.webhooks import WebhookService

#: How long a "hang" answer holds the connection (longer than the tests' HTTP timeout).
HANG_S = 3.0
HTTP_TIMEOUT_S = 0.5
#: The receivers below listen on loopback, which the SSRF guard refuses unless allowed.
LOOPBACK = parse_allowed_networks("127.0.0.0/8,::1/128")


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    arrived_s: float = 0.0  # monotonic


@dataclass
class Receiver:
    """A merchant's web server: records every request; answers per path as told."""

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    answers: dict[str, tuple[int, bytes, dict[str, str]] | str] = field(default_factory=dict)
    delay_s: float = 0.0
    #: Per path, how long the answer waits (instead of ``delay_s``); ``released`` ends it.
    delays: dict[str, float] = field(default_factory=dict)
    #: Per path, requests being answered now and the most there ever were at once.
    active: dict[str, int] = field(default_factory=dict)
    active_max: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)
    #: TCP connections accepted so far (a kept-alive connection serves many requests).
    connections: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(
        self, path: str, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        with self.lock:
            self.answers[path] = (status, body, headers or {})

    def hang(self, path: str) -> None:
        with self.lock:
            self.answers[path] = "hang"

    def delay(self, path: str, seconds: float) -> None:
        with self.lock:
            self.delays[path] = seconds

    def most_at_once(self, path: str | None = None) -> int:
        """The most requests (to ``path``, or to any path) answered at one time so far."""
        with self.lock:
            return self.active_max.get("" if path is None else path, 0)

    def received(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:  # once per connection
            super().setup()
            with receiver.lock:
                receiver.connections += 1

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            with receiver.lock:
                receiver.requests.append(Received(self.path, headers, body, monotonic_s()))
                answer = receiver.answers.get(self.path, (200, b"ok", {}))
                delay_s = receiver.delays.get(self.path, receiver.delay_s)
                # "" counts every path together.
                for key in (self.path, ""):
                    now = receiver.active.get(key, 0) + 1
                    receiver.active[key] = now
                    receiver.active_max[key] = max(receiver.active_max.get(key, 0), now)
            # Counted until the answer is about to be sent, never after: the client may
            # start its next request as soon as it has the answer.
            try:
                if delay_s:
                    receiver.released.wait(delay_s)
                if answer == "hang":
                    receiver.released.wait(HANG_S)
                    return
            finally:
                with receiver.lock:
                    for key in (self.path, ""):
                        receiver.active[key] -= 1
            assert not isinstance(answer, str)
            status, payload, answer_headers = answer
            self.send_response(status)
            for name, value in answer_headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog (5) resets connections when a worker sends a batch at once.
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that drops a kept-alive connection (the service closing, or giving up on
        # a hanging answer) is not the receiver's error.
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    server = _Server(("127.0.0.1", 0), _handler(receiver))
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.released.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cipher(tmp_path: Path) -> FieldCipher:
    return FieldCipher(VaultKeys.from_directory(tmp_path / "keys", create=True))


@pytest.fixture
def service(database: Database, cipher: FieldCipher, clock: FakeClock) -> Iterator[WebhookService]:
    with WebhookService(
        database, cipher, clock=clock, http_timeout_s=HTTP_TIMEOUT_S, allowed_networks=LOOPBACK
    ) as svc:
        yield svc


def add_merchant(database: Database, merchant_id: str, now_ns: int = 0) -> str:
    with database.write() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO payments_merchants (id, legal_name, country, currency, "
                "payout_iban_verified, fee_percent_bp, fee_fixed_minor, reserve_percent_bp, "
                "reserve_hold_s, unpaid_close_s, ship_by_s, confirm_after_delivery_s, "
                "confirm_after_shipping_s, payment_reference, created_at_ns) VALUES "
                "(:id, :name, 'DE', 'EUR', :f, 0, 0, 0, 0, 0, 0, 0, 0, :ref, :now)"
            ),
            {
                "id": merchant_id,
                "name": f"{merchant_id} GmbH",
                "f": False,
                "ref": merchant_id,
                "now": now_ns,
            },
        )
    return merchant_id


def add_event(
    database: Database,
    clock: FakeClock,
    merchant_id: str | None,
    type_: str = "order.paid",
    obj: dict[str, Any] | None = None,
) -> str:
    with database.write() as conn:
        return record_event(
            conn,
            merchant_id=merchant_id,
            type_=type_,
            object_id="ord_1",
            obj=obj if obj is not None else {"id": "ord_1", "amount_minor": 1250, "note": "é✓"},
            now_ns=clock.now_ns(),
        )


def event_payload(database: Database, event_id: str) -> str:
    with database.read() as conn:
        payload: str = conn.execute(
            sa.text("SELECT payload FROM payments_events WHERE id = :id"), {"id": event_id}
        ).scalar_one()
    return payload
