"""End to end through a real ``paykeep serve`` (both databases): every escrow timer fires over
real time, a failing webhook endpoint gets the event again on the retry schedule, card money
reaches the bank through the acquirer's settlement (``clearing:card`` back to zero and a
payout from card-funded balance), and ``paykeep demo`` drives a whole day that reconciles."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from paykeep.workers.webhooks import verify
from tests.api.test_money_routes import Shop, merchant_gets, wait_for
from tests.serverproc import ServerProcess

SHORT = {"unpaid_close_s": 1, "ship_by_s": 2, "confirm_after_delivery_s": 1,
         "confirm_after_shipping_s": 3}  # fmt: skip


@pytest.fixture
def shop(server: ServerProcess) -> Iterator[Shop]:
    opened = Shop.open(server)
    yield opened
    opened.close()


def test_every_timer_fires_over_real_time(shop: Shop) -> None:
    set_timers = shop.http.post(f"/v1/merchants/{shop.id}", json={"escrow_timers": SHORT})
    assert set_timers.status_code == 200, set_timers.text
    buyer = shop.buyer()
    unpaid, _ = shop.order(buyer["id"], 1_000)
    unshipped, _ = shop.paid_order(buyer["id"], 2_000)
    shipped, _ = shop.paid_order(buyer["id"], 3_000)
    delivered, _ = shop.paid_order(buyer["id"], 4_000)
    shop.ship(shipped["id"])
    shop.deliver(shop.ship(delivered["id"]))
    timers = {o["id"]: (shop.get_order(o["id"])["timer"] or {}).get("kind")
              for o in (unpaid, unshipped, shipped, delivered)}  # fmt: skip
    assert timers == {
        unpaid["id"]: "close_unpaid",
        unshipped["id"]: "refund_unshipped",
        shipped["id"]: "confirm_after_shipping",
        delivered["id"]: "confirm_after_delivery",
    }
    expected = {unpaid["id"]: "closed", unshipped["id"]: "refunded",
                shipped["id"]: "completed", delivered["id"]: "completed"}  # fmt: skip
    wait_for(
        "every timer to fire",
        lambda: all(shop.get_order(i)["state"] == s for i, s in expected.items()),
        timeout_s=30,
    )
    for order_id in expected:
        assert shop.get_order(order_id)["timer"] is None
    # Money: the unshipped order went back to the buyer's card (paid by card: the timer's
    # refund is sent to the card by the workers), the two confirmed ones to the shop.
    available = sum(merchant_gets(a)[0] for a in (3_000, 4_000))
    reserve = sum(merchant_gets(a)[1] for a in (3_000, 4_000))
    balance = shop.balance()
    assert (balance["available_minor"], balance["reserve_minor"], balance["pending_minor"]) == (
        available, reserve, 0,
    )  # fmt: skip

    def card_refund() -> dict[str, Any] | None:
        events = shop.http.get(
            "/v1/events", params={"type": "refund.card_refund_succeeded", "limit": 100}
        ).json()["data"]
        mine = [e for e in events if e["data"]["object"]["order"] == unshipped["id"]]
        return mine[0]["data"]["object"] if mine else None

    sent = wait_for("the timer's refund to reach the card", card_refund)
    assert (sent["amount_minor"], sent["refund"], sent["last4"]) == (2_000, None, "1111")
    assert shop.wallet(buyer["id"]) == (0, 0)
    types = [e["type"] for e in shop.http.get("/v1/events", params={"limit": 100}).json()["data"]]
    for kind in ("order.closed", "order.refunded", "order.completed"):
        assert kind in types


class FlakyReceiver:
    """Answers 500 to the first delivery of each event, 204 afterwards."""

    def __init__(self) -> None:
        self.received: list[tuple[int, dict[str, str], bytes]] = []
        seen: set[str] = set()
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with lock:
                    first = headers["webhook-id"] not in seen
                    seen.add(headers["webhook-id"])
                    status = 500 if first else 204
                    outer.received.append((status, headers, body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"


def test_a_failing_endpoint_gets_the_event_again_signed_the_same(shop: Shop) -> None:
    receiver = FlakyReceiver()
    try:
        created = shop.http.post(
            "/v1/webhook_endpoints", json={"url": receiver.url, "event_types": ["buyer.created"]}
        )
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        buyer = shop.buyer()
        wait_for("the retry to succeed", lambda: len(receiver.received) >= 2, timeout_s=30)
        (status_1, headers_1, body_1), (status_2, headers_2, body_2) = receiver.received[:2]
        assert (status_1, status_2) == (500, 204)
        assert headers_1["webhook-id"] == headers_2["webhook-id"] and body_1 == body_2
        for headers, body in ((headers_1, body_1), (headers_2, body_2)):
            verify(secret, headers, body)
        assert json.loads(body_2)["data"]["object"]["id"] == buyer["id"]

        def recorded() -> list[tuple[str, int]]:
            deliveries = shop.http.get(
                "/v1/webhook_deliveries", params={"event": headers_1["webhook-id"]}
            ).json()["data"]
            mine = [d for d in deliveries if d["endpoint_id"] == created.json()["id"]]
            return [(d["state"], d["attempts"]) for d in mine]

        # The worker records an attempt's result a moment after the receiver answered it.
        wait_for("the second attempt to be recorded", lambda: recorded() == [("delivered", 2)])
        assert len(receiver.received) == 2  # and nothing was sent a third time
    finally:
        receiver.server.shutdown()


def test_card_money_reaches_the_bank_and_can_be_paid_out(shop: Shop) -> None:
    buyer = shop.buyer()
    order, token = shop.paid_order(buyer["id"], 20_000)
    shop.ship(order["id"])
    assert shop.confirm(token).status_code == 200
    available, _reserve = merchant_gets(20_000)

    def clearing_settled() -> bool:
        page = shop.operator.get(
            "/v1/ledger/transfers", params={"account": "clearing:card:banksim", "limit": 100}
        ).json()["data"]
        debits = sum(int(t["amount_minor"]) for t in page if t["code"] != 0 and
                     t["credit_account"] == "clearing:card:banksim")  # fmt: skip
        return debits > 0

    wait_for("the acquirer's settlement to be booked", clearing_settled, timeout_s=30)
    payout = shop.http.post(
        "/v1/payouts", json={"amount_minor": available},
        headers={"Idempotency-Key": f"po-{uuid.uuid4()}"},
    )  # fmt: skip
    assert payout.status_code == 201, payout.text

    def payout_done() -> str | None:
        state = str(shop.http.get(f"/v1/payouts/{payout.json()['id']}").json()["state"])
        return state if state in ("settled", "returned") else None

    assert wait_for("the payout to settle", payout_done, timeout_s=40) == "settled"


def test_demo_day_reconciles(server: ServerProcess) -> None:
    data_dir = server.log_path.parent
    done = subprocess.run(
        [sys.executable, "-m", "paykeep.cli", "demo", "--data-dir", str(data_dir),
         "--orders", "10", "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["orders"] == 10
    assert sum(result["states"].values()) == 10
    assert set(result["states"]) <= {"completed", "closed", "refunded", "partially_refunded"}
    assert {"completed", "closed"} <= set(result["states"])
    assert result["fees_minor"] > 0 and result["webhooks_delivered"] > 0
    assert len(result["checks"]) == 6
    # the buyer of the refunded bank-paid order took it back to the account it came from
    [withdrew] = [c for c in result["checks"] if " withdrew " in c]
    assert "back to the bank account ending 4300 it came from" in withdrew, withdrew
    # buyers confirmed receipt signed in, with codes read from the server's mail folder
    [signed] = [c for c in result["checks"] if "signed in with a code read from" in c]
    assert int(signed.split()[0]) > 0 and str(server.mail_dir) in signed


def _aml_rules(server: ServerProcess, *changes: str) -> None:
    database = server.info["database"]
    argv = [sys.executable, "-m", "paykeep.cli", "aml", "rules", "set-config",
            "new_account_high_value", *changes, "--actor", "compliance:test",
            "--data-dir", str(server.log_path.parent)]  # fmt: skip
    if database != "sqlite":
        argv += ["--database-url", database]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_a_held_top_up_waits_for_the_operator(shop: Shop, server: ServerProcess) -> None:
    from tests.api.test_money_routes import send_bank_transfer

    big = 5_000_000  # only transfers this large are held, so the module's other tests are not
    _aml_rules(server, f"amount_min_minor={big}", "age_max_s=31536000", "score_bp=6000")
    try:
        buyer = shop.buyer()
        send_bank_transfer(server, buyer["payment_reference"], big)

        def held() -> dict[str, object] | None:
            rows = shop.http.get("/v1/topups", params={"buyer": buyer["id"]}).json()["data"]
            return rows[0] if rows else None

        topup = wait_for("the top-up to be decided", held, timeout_s=30)
        assert (topup["state"], topup["risk_outcome"], topup["amount_minor"]) == (
            "held", "review", big,
        )  # fmt: skip
        assert shop.wallet(buyer["id"]) == (0, 0)
        refused = shop.http.post(f"/v1/topups/{topup['id']}/release")
        assert refused.status_code == 403, refused.text
        released = shop.operator.post(f"/v1/topups/{topup['id']}/release")
        assert released.status_code == 200, released.text
        assert released.json()["state"] == "credited"
        assert shop.wallet(buyer["id"]) == (big, 0)
        again = shop.operator.post(f"/v1/topups/{topup['id']}/release")
        assert again.status_code == 409 and again.json()["error"]["code"] == "illegal_transition"
    finally:
        _aml_rules(server, "amount_min_minor=200000", "age_max_s=604800", "score_bp=5500")
