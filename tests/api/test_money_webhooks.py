"""Webhooks through the /v1 routes, end to end: a real receiver (an ``http.server`` thread on
127.0.0.1) registered as a merchant's endpoint gets every state change of an escrow flow,
signed (checked with the ``standardwebhooks`` package and with ``paykeep.workers.webhooks``),
only its own merchant's events, again on replay, under a rotated secret, and nothing once the
endpoint is disabled."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from paykeep.workers.webhooks import verify
from tests.api.test_money_routes import Shop, assert_error, wait_for
from tests.serverproc import ServerProcess


class Receiver:
    """Records every POST: (path, lower-cased headers, raw body)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.received.append((self.path, headers, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def at(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self._lock:
            return [(h, b) for p, h, b in self.received if p == path]

    def ids(self, path: str) -> list[str]:
        return [h["webhook-id"] for h, _ in self.at(path)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def test_every_state_change_arrives_signed_once_per_endpoint_and_replays(
    server: ServerProcess, receiver: Receiver
) -> None:
    shop = Shop.open(server)
    before = {e["id"] for e in shop.http.get("/v1/events", params={"limit": 100}).json()["data"]}
    key = {"Idempotency-Key": f"we-{uuid.uuid4()}"}
    created = shop.http.post("/v1/webhook_endpoints", json={"url": receiver.url + "/all"},
                             headers=key)  # fmt: skip
    assert created.status_code == 201, created.text
    endpoint = created.json()
    secret = endpoint["secret"]
    assert secret.startswith("whsec_") and endpoint["event_types"] == ["*"]
    replayed = shop.http.post("/v1/webhook_endpoints", json={"url": receiver.url + "/all"},
                              headers=key)  # fmt: skip
    assert replayed.status_code == 201 and replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.json()["id"] == endpoint["id"] and replayed.json()["secret"] is None
    shown = shop.http.get(f"/v1/webhook_endpoints/{endpoint['id']}").json()
    assert "secret" not in shown and shown["enabled"] is True
    only = shop.http.post(
        "/v1/webhook_endpoints",
        json={"url": receiver.url + "/completed", "event_types": ["order.completed"]},
    ).json()
    listed = shop.http.get("/v1/webhook_endpoints").json()["data"]
    assert [e["id"] for e in listed] == [only["id"], endpoint["id"]]
    assert_error(shop.operator.get("/v1/webhook_endpoints"), 400, "webhook_merchant_required")
    by_operator = shop.operator.get("/v1/webhook_endpoints", params={"merchant": shop.id})
    assert [e["id"] for e in by_operator.json()["data"]] == [only["id"], endpoint["id"]]

    # The escrow flow, and meanwhile an event of another merchant.
    buyer = shop.buyer()
    order, token = shop.paid_order(buyer["id"], 3100)
    shop.deliver(shop.ship(order["id"]))
    shop.confirm(token).raise_for_status()
    with server.client(server.merchant(1)["api_key"]) as other:
        other.post("/v1/buyers", json={"name": "Else", "email": "else@example.com"})
        foreign = {e["id"] for e in other.get("/v1/events", params={"limit": 100}).json()["data"]}

    ours = shop.http.get("/v1/events", params={"limit": 100}).json()["data"]
    our_ids = {e["id"] for e in ours}
    # Events older than the endpoint (the merchant's creation) may go either way: fan-out
    # matches the endpoints that exist when it runs.
    expected = our_ids - before
    wait_for("every event of the merchant to arrive",
             lambda: expected <= set(receiver.ids("/all")))  # fmt: skip
    types = {e["type"] for e in ours}
    assert types >= {"buyer.created", "order.created", "payment.succeeded",
                     "order.awaiting_shipment", "shipment.created", "order.awaiting_receipt",
                     "shipment.updated", "order.updated", "order.completed"}  # fmt: skip
    time.sleep(1.0)  # a stray delivery (another merchant's event, a duplicate) would land now
    arrived = receiver.at("/all")
    arrived_ids = [h["webhook-id"] for h, _ in arrived]
    assert len(arrived_ids) == len(set(arrived_ids)), "an event arrived twice"
    assert set(arrived_ids) <= our_ids and not foreign & set(arrived_ids)
    hook = Webhook(secret)
    for headers, body in arrived:
        hook.verify(body, headers)
        verify(secret, headers, body)
        assert shop.http.get(f"/v1/events/{headers['webhook-id']}").content == body
    headers, body = arrived[0]
    with pytest.raises(WebhookVerificationError):
        hook.verify(body.replace(b'"', b"'", 1), headers)
    completed = next(e for e in ours if e["type"] == "order.completed")
    assert receiver.ids("/completed") == [completed["id"]]

    # Replay: the same event again, to this endpoint only.
    again = shop.http.post(f"/v1/events/{completed['id']}/replay",
                           json={"endpoint": endpoint["id"]})  # fmt: skip
    assert again.status_code == 200, again.text
    assert [d["endpoint_id"] for d in again.json()["data"]] == [endpoint["id"]]
    wait_for("the replay", lambda: receiver.ids("/all").count(completed["id"]) == 2)
    replay_headers, replay_body = receiver.at("/all")[-1]
    hook.verify(replay_body, replay_headers)
    deliveries = shop.http.get("/v1/webhook_deliveries", params={"event": completed["id"]})
    assert deliveries.status_code == 200, deliveries.text
    rows = deliveries.json()["data"]
    assert len(rows) == 3  # two to /all, one to /completed
    wait_for(
        "the deliveries to be recorded",
        lambda: all(
            d["state"] == "delivered"
            for d in shop.http.get(
                "/v1/webhook_deliveries", params={"event": completed["id"]}
            ).json()["data"]
        ),
    )

    # A rotated secret signs what follows.
    rotated = shop.http.post(f"/v1/webhook_endpoints/{endpoint['id']}/rotate_secret")
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret.startswith("whsec_") and new_secret != secret
    later = shop.buyer()
    event_id = shop.http.get("/v1/events", params={"object": later["id"]}).json()["data"][0]["id"]
    wait_for("the event after rotation", lambda: event_id in receiver.ids("/all"))
    headers, body = next((h, b) for h, b in receiver.at("/all") if h["webhook-id"] == event_id)
    Webhook(new_secret).verify(body, headers)

    # Disabled: nothing more arrives, and a replay to it is refused.
    disabled = shop.http.post(f"/v1/webhook_endpoints/{endpoint['id']}/disable")
    assert disabled.status_code == 200 and disabled.json()["enabled"] is False
    count = len(receiver.at("/all"))
    shop.buyer()
    time.sleep(1.5)
    assert len(receiver.at("/all")) == count
    assert_error(shop.http.post(f"/v1/events/{completed['id']}/replay",
                                json={"endpoint": endpoint["id"]}), 409,
                 "webhook_endpoint_disabled")  # fmt: skip
    shop.close()


def test_webhook_endpoint_input_is_checked(server: ServerProcess) -> None:
    shop = Shop.open(server)
    cases = [
        ({"url": "ftp://example.com/x"}, "webhook_url_invalid"),
        ({"url": "http://u:p@example.com/x"}, "webhook_url_invalid"),
        ({"url": "https://example.com/x", "event_types": []}, "webhook_event_types_invalid"),
        ({"url": "https://example.com/x", "secret": "mine"}, "parameter_invalid"),
        ({}, "parameter_invalid"),
    ]
    for body, code in cases:
        assert_error(shop.http.post("/v1/webhook_endpoints", json=body), 400, code)
    assert_error(shop.operator.post("/v1/webhook_endpoints", json={"url": "https://e.com/x"}),
                 403, "merchant_key_required")  # fmt: skip
    assert shop.http.get("/v1/webhook_endpoints").json()["data"] == []
    shop.close()
