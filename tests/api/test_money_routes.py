"""The money routes end to end over real HTTP against a real ``paykeep serve`` (both
databases): the buyer's checkout API, the escrow flow to the merchant's balance and the ledger,
declines, every refund path, disputes, bank transfers, payouts and the ownership matrix.

Each test opens its own merchant (``Shop.open``), so balances are exact, not deltas. Amounts
are checked against an independent computation of the fee plan (integer arithmetic here, not
the domain's functions).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from paykeep.buyer_mailbox import sign_in
from paykeep.payments.buyer_auth import BUYER_SESSION_HEADER
from tests.serverproc import ServerProcess
from tests.support import refuse_inserts, server_settings

APPROVED_CARD = "4111111111111111"
#: banksim: response 51 (insufficient funds) above 10.00.
DECLINED_ABOVE_10 = "4000000000009995"
#: banksim: response 05 (do not honour).
DO_NOT_HONOR_CARD = "4000000000000002"
CARRIER = "demo-post"
SAFEGUARDING_IBAN = "DE89370400440532013000"
#: The fee plan of every shop of these tests: 2.9 % + 0.30, a 5 % reserve held an hour.
FEE_BP, FEE_FIXED, RESERVE_BP = 290, 30, 500
LONG_TIMER_S = 3600


def fee_of(released: int) -> int:
    """2.9 % rounded half up, plus 0.30 (never more than what is released)."""
    return min(released, (released * FEE_BP * 2 + 10_000) // 20_000 + FEE_FIXED)


def merchant_gets(released: int) -> tuple[int, int]:
    """(available, reserve) of a merchant after ``released`` is posted to it."""
    net = released - fee_of(released)
    reserve = net * RESERVE_BP // 10_000
    return net - reserve, reserve


def card(number: str = APPROVED_CARD) -> dict[str, Any]:
    return {"method": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2029,
                                       "cvc": "123"}}  # fmt: skip


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@dataclass
class Shop:
    """A fresh merchant (operator-created, IBAN verified) and its clients."""

    server: ServerProcess
    id: str
    http: httpx.Client
    operator: httpx.Client
    buyer_http: httpx.Client
    tracking: Iterator[int] = field(default_factory=lambda: iter(range(10**6)))
    #: buyer id -> email; checkout token -> buyer id; buyer id -> buyer session (bs_...).
    emails: dict[str, str] = field(default_factory=dict)
    token_buyers: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, server: ServerProcess, iban: str = "GB82WEST12345698765432") -> Shop:
        operator = server.client(server.operator_key)
        created = operator.post(
            "/v1/merchants",
            json={
                "legal_name": f"Shop {uuid.uuid4().hex[:8]}", "country": "GB",
                "payout_iban": iban,
                "fee_plan": {"percent_bp": FEE_BP, "fixed_minor": FEE_FIXED,
                             "reserve_percent_bp": RESERVE_BP, "reserve_hold_s": LONG_TIMER_S},
                "escrow_timers": {"unpaid_close_s": LONG_TIMER_S, "ship_by_s": LONG_TIMER_S,
                                  "confirm_after_delivery_s": LONG_TIMER_S,
                                  "confirm_after_shipping_s": LONG_TIMER_S},
            },
        )  # fmt: skip
        assert created.status_code == 201, created.text
        merchant = created.json()
        verified = operator.post(f"/v1/merchants/{merchant['id']}/verify_payout_iban")
        assert verified.status_code == 200, verified.text
        return cls(server, merchant["id"], server.client(merchant["api_key"]), operator,
                   server.client())  # fmt: skip

    def close(self) -> None:
        for client in (self.http, self.operator, self.buyer_http):
            client.close()

    def buyer(self) -> dict[str, Any]:
        n = uuid.uuid4().hex[:8]
        response = self.http.post("/v1/buyers", json={"name": f"Buyer {n}",
                                                       "email": f"b{n}@example.com"})  # fmt: skip
        assert response.status_code == 201, response.text
        self.emails[response.json()["id"]] = f"b{n}@example.com"
        return dict(response.json())

    def as_buyer(self, token: str) -> dict[str, str]:
        """The header of a signed-in buyer of ``token``: signed in once per buyer, for real
        (the code read from the server's mail folder: ``paykeep.buyer_mailbox``)."""
        buyer_id = self.token_buyers[token]
        if buyer_id not in self.sessions:
            self.sessions[buyer_id] = sign_in(
                self.buyer_http, self.server.mail_dir, token, self.emails[buyer_id]
            )
        return {BUYER_SESSION_HEADER: self.sessions[buyer_id]}

    def confirm(self, token: str, **kw: Any) -> httpx.Response:
        """The signed-in buyer confirms receipt."""
        return self.buyer_http.post(
            f"/v1/checkout/{token}/confirm",
            headers={**self.as_buyer(token), **kw.pop("headers", {})},
            **kw,
        )

    def order(self, buyer_id: str, *amounts: int) -> tuple[dict[str, Any], str]:
        """An order (one line per amount) and the checkout token of its session."""
        items = [{"description": f"Item {i}", "quantity": 1, "unit_amount_minor": a}
                 for i, a in enumerate(amounts)]  # fmt: skip
        order = self.http.post("/v1/orders", json={"buyer": buyer_id, "items": items})
        assert order.status_code == 201, order.text
        session = self.http.post("/v1/checkout_sessions", json={"order": order.json()["id"]})
        assert session.status_code == 201, session.text
        token = str(session.json()["url"]).rsplit("/", 1)[-1]
        self.token_buyers[token] = buyer_id
        return order.json(), token

    def pay(self, token: str, body: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        return self.buyer_http.post(f"/v1/checkout/{token}/pay", json=body or card(), **kw)

    def paid_order(self, buyer_id: str, amount: int) -> tuple[dict[str, Any], str]:
        order, token = self.order(buyer_id, amount)
        paid = self.pay(token)
        assert paid.status_code == 200, paid.text
        return order, token

    def get_order(self, order_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/orders/{order_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def ship(self, order_id: str) -> str:
        shipped = self.http.post(
            f"/v1/orders/{order_id}/ship",
            json={"carrier": CARRIER, "tracking_number": f"TR{uuid.uuid4().hex[:12]}"},
        )
        assert shipped.status_code == 200, shipped.text
        assert shipped.json()["state"] == "awaiting_receipt"
        return str(shipped.json()["shipment"]["id"])

    def deliver(self, shipment_id: str) -> None:
        event = self.http.post(f"/v1/shipments/{shipment_id}/events", json={"kind": "delivered"})
        assert event.status_code == 200, event.text

    def balance(self) -> dict[str, Any]:
        response = self.http.get("/v1/balance")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wallet(self, buyer_id: str) -> tuple[int, int]:
        """(available, held) of the buyer's wallets, summed over currencies."""
        response = self.http.get(f"/v1/buyers/{buyer_id}/balance")
        assert response.status_code == 200, response.text
        rows = response.json()["data"]
        return (sum(r["available_minor"] for r in rows), sum(r["pending_minor"] for r in rows))

    def transfers(self, account: str, **params: Any) -> dict[str, Any]:
        response = self.http.get("/v1/ledger/transfers", params={"account": account, **params})
        assert response.status_code == 200, response.text
        return dict(response.json())


@pytest.fixture
def shop(server: ServerProcess) -> Iterator[Shop]:
    opened = Shop.open(server)
    yield opened
    opened.close()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert set(error) >= {"type", "code", "message", "param", "request_id"}
    return dict(error)


# -- the escrow flow -----------------------------------------------------------------------


def test_escrow_flow_by_card_to_the_merchants_balance_and_ledger(
    shop: Shop, server: ServerProcess
) -> None:
    buyer = shop.buyer()
    order, token = shop.order(buyer["id"], 2500, 2500, 1234)
    amount = 6234
    assert order["amount_minor"] == amount

    view = shop.buyer_http.get(f"/v1/checkout/{token}")
    assert view.status_code == 200, view.text
    document = view.json()
    assert document["order"]["id"] == order["id"]
    assert document["order"]["state"] == "created"
    assert document["merchant"]["id"] == shop.id and document["merchant"]["name"].startswith("Shop")
    assert document["bank_transfer"] == {"iban": SAFEGUARDING_IBAN,
                                         "reference": buyer["payment_reference"],
                                         "amount_minor": amount, "currency": "EUR"}  # fmt: skip
    assert document["wallet"] == {"available_minor": 0, "currency": "EUR", "covers_order": False}
    assert document["latest_payment"] is None

    paid = shop.pay(token)
    assert paid.status_code == 200, paid.text
    result = paid.json()
    assert result["order"]["state"] == "awaiting_shipment"
    assert result["payment"]["state"] == "succeeded"
    assert result["payment"]["card"] == {"brand": "visa", "last4": "1111"}
    assert shop.get_order(order["id"])["state"] == "awaiting_shipment"
    assert shop.balance() == {"object": "balance", "owner": shop.id, "currency": "EUR",
                              "available_minor": 0, "pending_minor": amount,
                              "reserve_minor": 0}  # fmt: skip
    assert shop.wallet(buyer["id"]) == (0, amount)

    shipment = shop.ship(order["id"])
    shop.deliver(shipment)
    delivered = shop.get_order(order["id"])
    assert delivered["state"] == "awaiting_receipt" and delivered["delivered_at"] is not None
    assert delivered["timer"]["kind"] == "confirm_after_delivery"

    confirmed = shop.confirm(token, json={})
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["state"] == "completed"
    again = shop.confirm(token)
    assert_error(again, 409, "illegal_transition")

    available, reserve = merchant_gets(amount)
    assert (available, reserve) == (5722, 301)  # 6234 - 211 fee = 6023; 5 % of it reserved
    balance = shop.balance()
    assert balance["available_minor"] == available
    assert balance["reserve_minor"] == reserve
    assert balance["pending_minor"] == 0
    assert shop.wallet(buyer["id"]) == (0, 0)
    with shop.server.client(shop.server.operator_key) as op:
        as_operator = op.get(f"/v1/merchants/{shop.id}/balance")
        assert as_operator.status_code == 200 and as_operator.json() == balance

    # The ledger: hold (pending), release (posts the hold), fee and reserve.
    account = f"merchant:{shop.id}:available:EUR"
    listed = shop.transfers(account)
    assert listed["object"] == "list" and listed["has_more"] is False
    by_ref = {t["reference"]: t for t in listed["data"]}
    prefix = f"order:{order['id']}:"
    assert set(by_ref) == {prefix + k for k in ("hold", "release", "fee", "reserve")}
    hold, release = by_ref[prefix + "hold"], by_ref[prefix + "release"]
    assert "pending" in hold["flags"] and hold["amount_minor"] == amount
    assert hold["debit_account"] == f"buyer:{buyer['id']}:wallet:EUR"
    assert hold["credit_account"] == account
    assert "post_pending" in release["flags"] and release["pending_id"] == hold["id"]
    assert release["amount_minor"] == amount
    assert by_ref[prefix + "fee"]["amount_minor"] == fee_of(amount)
    assert by_ref[prefix + "fee"]["credit_account"] == "platform:fees:EUR"
    assert by_ref[prefix + "reserve"]["amount_minor"] == reserve
    assert by_ref[prefix + "reserve"]["credit_account"] == f"merchant:{shop.id}:reserve:EUR"
    # Newest first, and the keyset cursor walks the rest without overlap.
    first = shop.transfers(account, limit=2)
    assert first["has_more"] is True and len(first["data"]) == 2
    rest = shop.transfers(account, limit=2, starting_after=first["data"][-1]["id"])
    ids = [t["id"] for t in first["data"] + rest["data"]]
    assert ids == [t["id"] for t in listed["data"]] and rest["has_more"] is False
    one = shop.http.get(f"/v1/ledger/transfers/{hold['id']}")
    assert one.status_code == 200 and one.json() == hold
    # The platform's fee account is the operator's to read, not the merchant's.
    assert_error(shop.http.get("/v1/ledger/transfers", params={"account": "platform:fees:EUR"}),
                 404, "account_not_found")  # fmt: skip
    fees = shop.operator.get("/v1/ledger/transfers", params={"account": "platform:fees:EUR"})
    assert fees.status_code == 200
    assert prefix + "fee" in {t["reference"] for t in fees.json()["data"]}

    # Events: every state change of the order, newest first; filters by type and object.
    events = shop.http.get("/v1/events", params={"object": order["id"], "limit": 100}).json()
    types = [e["type"] for e in events["data"]]
    assert types == ["order.completed", "order.updated", "order.awaiting_receipt",
                     "order.awaiting_shipment", "order.created"]  # fmt: skip
    assert all(e["data"]["object"]["id"] == order["id"] for e in events["data"])
    completed = shop.http.get("/v1/events", params={"type": "order.completed"}).json()["data"]
    assert [e["data"]["object"]["id"] for e in completed] == [order["id"]]
    single = shop.http.get(f"/v1/events/{events['data'][0]['id']}")
    assert single.status_code == 200 and single.json() == events["data"][0]

    # The card number never reaches a log or a response.
    assert APPROVED_CARD not in server.log()
    for response in (view, paid, confirmed):
        assert APPROVED_CARD not in response.text


def test_declined_card_moves_nothing_and_the_buyer_reads_why(shop: Shop) -> None:
    buyer = shop.buyer()
    order, token = shop.order(buyer["id"], 2500)

    declined = shop.pay(token, card(DECLINED_ABOVE_10))
    assert declined.status_code == 402, declined.text
    error = declined.json()["error"]
    assert error["type"] == "card_error" and error["code"] == "card_declined"
    assert error["decline_code"] == "insufficient_funds"
    assert error["message"] == "The card has insufficient funds for this payment."
    refused = shop.pay(token, card(DO_NOT_HONOR_CARD))
    assert refused.status_code == 402
    assert refused.json()["error"]["decline_code"] == "do_not_honor"

    assert shop.get_order(order["id"])["state"] == "created"
    assert shop.balance()["pending_minor"] == shop.balance()["available_minor"] == 0
    assert shop.wallet(buyer["id"]) == (0, 0)
    assert shop.transfers(f"merchant:{shop.id}:available:EUR")["data"] == []
    view = shop.buyer_http.get(f"/v1/checkout/{token}").json()
    assert view["latest_payment"]["state"] == "failed"
    assert view["latest_payment"]["decline_code"] == "do_not_honor"
    for response in (declined, refused):
        assert DECLINED_ABOVE_10 not in response.text and DO_NOT_HONOR_CARD not in response.text
    assert DECLINED_ABOVE_10 not in shop.server.log()

    # The buyer tries again with another card: paid, once.
    retried = shop.pay(token)
    assert retried.status_code == 200, retried.text
    assert retried.json()["order"]["state"] == "awaiting_shipment"
    twice = shop.pay(token)
    assert_error(twice, 409, "illegal_transition")
    assert shop.wallet(buyer["id"]) == (0, 2500)


def test_card_payment_is_idempotent_and_validated_before_anything_is_written(shop: Shop) -> None:
    buyer = shop.buyer()
    order, token = shop.order(buyer["id"], 1800)

    bad_luhn = shop.pay(token, card("4111111111111112"))
    error = assert_error(bad_luhn, 400, "vault_card_number_invalid")
    assert error["param"] == "card.number" and "4111111111111112" not in bad_luhn.text
    letters = card()
    letters["card"]["number"] = "4111-1111-1111-1111"
    dashed = shop.pay(token, letters)
    assert_error(dashed, 400, "vault_card_number_invalid")
    assert "4111-1111" not in dashed.text
    too_long = card()
    too_long["card"]["number"] = "4" * 20
    assert_error(shop.pay(token, too_long), 400, "parameter_invalid")
    extra = card()
    extra["card"]["name"] = "X"
    assert_error(shop.pay(token, extra), 400, "parameter_invalid")
    fractional = card()
    fractional["card"]["exp_month"] = 12.0
    assert_error(shop.pay(token, fractional), 400, "parameter_invalid")
    bad_cvc = card()
    bad_cvc["card"]["cvc"] = "12a"
    assert_error(shop.pay(token, bad_cvc), 400, "card_security_code_invalid")
    assert_error(shop.pay(token, {"method": "cash"}), 400, "parameter_invalid")
    # Nothing was attempted: no payment exists for the order.
    payments = shop.http.get("/v1/payments", params={"order": order["id"]}).json()["data"]
    assert payments == []

    key = {"Idempotency-Key": f"pay-{uuid.uuid4()}"}
    first = shop.pay(token, card(), headers=key)
    assert first.status_code == 200, first.text
    replay = shop.pay(token, card(), headers=key)
    assert replay.status_code == 200 and replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json() == first.json()
    other = shop.pay(token, card("5555555555554444"), headers=key)
    assert_error(other, 409, "idempotency_key_reused")
    payments = shop.http.get("/v1/payments", params={"order": order["id"]}).json()["data"]
    assert [p["state"] for p in payments] == ["succeeded"]
    assert shop.wallet(buyer["id"]) == (0, 1800)

    # A stored decline replays as the same 402.
    _, token2 = shop.order(buyer["id"], 2500)
    key2 = {"Idempotency-Key": f"pay-{uuid.uuid4()}"}
    declined = shop.pay(token2, card(DECLINED_ABOVE_10), headers=key2)
    again = shop.pay(token2, card(DECLINED_ABOVE_10), headers=key2)
    assert declined.status_code == again.status_code == 402
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json() == declined.json()


def luhn_card(prefix: str = "4000") -> str:
    """A fresh 16-digit card number with a valid check digit."""
    body = prefix + str(uuid.uuid4().int % 10**11).zfill(11)
    total = 0
    for i, digit in enumerate(reversed(body)):
        d = int(digit) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


def test_an_unreachable_card_network_releases_the_key_for_the_retry(shop: Shop) -> None:
    banksim = shop.server.info["banksim_url"]
    pan = luhn_card()
    added = httpx.post(f"{banksim}/cards", json={"pan": pan, "expiry": "2912", "cvv": "123",
                                                 "balance_minor": 100_000}, timeout=10)  # fmt: skip
    assert added.status_code == 201, added.text
    rule = {"kind": "unavailable", "next": 1, "card": added.json()["token"]}
    httpx.post(f"{banksim}/faults/cards", json={"faults": [rule]}, timeout=10).raise_for_status()
    buyer = shop.buyer()
    order, token = shop.order(buyer["id"], 2600)

    key = {"Idempotency-Key": f"pay-{uuid.uuid4()}"}
    failed = shop.pay(token, card(pan), headers=key)
    error = assert_error(failed, 503, "payment_processor_unavailable")
    assert "not charged" in error["message"] and pan not in failed.text
    assert shop.get_order(order["id"])["state"] == "created"
    # Not stored: the same key runs the payment afresh (the network answers now).
    retried = shop.pay(token, card(pan), headers=key)
    assert retried.status_code == 200, retried.text
    assert "Idempotent-Replayed" not in retried.headers
    assert retried.json()["order"]["state"] == "awaiting_shipment"
    replayed = shop.pay(token, card(pan), headers=key)
    assert replayed.headers.get("Idempotent-Replayed") == "true"
    assert replayed.json() == retried.json()
    assert shop.wallet(buyer["id"]) == (0, 2600)
    assert pan not in shop.server.log()


def test_unknown_checkout_tokens_are_missing(shop: Shop) -> None:
    for token in ("cs_doesnotexist", "nope", "cs_" + "x" * 200):
        assert_error(shop.buyer_http.get(f"/v1/checkout/{token}"), 404, "resource_missing")
        assert_error(shop.pay(token), 404, "resource_missing")
        assert_error(shop.buyer_http.post(f"/v1/checkout/{token}/confirm"), 404,
                     "resource_missing")  # fmt: skip


# -- refunds and disputes ------------------------------------------------------------------


def largest_remainder(total: int, bp: int) -> tuple[int, int]:
    """Buyer and merchant shares of ``total`` for a buyer share of ``bp``: floors, then the
    leftover unit to the larger remainder (ties to the first)."""
    parts = [total * bp, total * (10_000 - bp)]
    floors = [p // 10_000 for p in parts]
    remainders = [p % 10_000 for p in parts]
    for _ in range(total - sum(floors)):
        index = 0 if remainders[0] >= remainders[1] else 1
        floors[index] += 1
        remainders[index] = -1
    return floors[0], floors[1]


def test_every_refund_path_and_disputes(shop: Shop) -> None:
    buyer = shop.buyer()
    b = buyer["id"]
    returned = 0  # what the buyer's wallet should hold at the end
    released = 0  # what was posted to the merchant

    # 1. The merchant refunds an unshipped order in full: the hold is voided.
    order, first_token = shop.paid_order(b, 2000)
    refund = shop.http.post(f"/v1/orders/{order['id']}/refunds", json={"reason": "out of stock"})
    assert refund.status_code == 201, refund.text
    assert refund.json()["state"] == "completed" and refund.json()["amount_minor"] == 2000
    assert shop.get_order(order["id"])["state"] == "refunded"
    returned += 2000

    # 2. A partial refund after shipping: the rest is released to the merchant.
    order, _ = shop.paid_order(b, 3000)
    shop.ship(order["id"])
    partial = shop.http.post(f"/v1/orders/{order['id']}/refunds", json={"amount_minor": 1000})
    assert partial.status_code == 201, partial.text
    state = shop.get_order(order["id"])
    assert state["state"] == "partially_refunded"
    assert (state["refunded_minor"], state["released_minor"]) == (1000, 2000)
    returned += 1000
    released += 2000
    assert_error(shop.http.post(f"/v1/orders/{order['id']}/refunds", json={}), 409,
                 "illegal_transition")  # fmt: skip
    assert_error(shop.http.post(f"/v1/orders/{order['id']}/refunds", json={"amount_minor": 1.5}),
                 400, "parameter_invalid")  # fmt: skip

    # 3. The buyer asks; the merchant agrees without a return: the money moves at once.
    order, token = shop.paid_order(b, 1500)
    asked = shop.buyer_http.post(f"/v1/checkout/{token}/refunds", json={"reason": "broken"})
    assert asked.status_code == 201 and asked.json()["state"] == "requested", asked.text
    assert shop.get_order(order["id"])["disputed"] is True
    listed = shop.http.get("/v1/refunds", params={"order": order["id"]}).json()["data"]
    assert [r["id"] for r in listed] == [asked.json()["id"]]
    agreed = shop.http.post(f"/v1/refunds/{asked.json()['id']}/agree")
    assert agreed.status_code == 200 and agreed.json()["state"] == "completed", agreed.text
    assert shop.get_order(order["id"])["state"] == "refunded"
    assert_error(shop.http.post(f"/v1/refunds/{asked.json()['id']}/agree"), 409,
                 "illegal_transition")  # fmt: skip
    returned += 1500

    # 4. Agreed with a return: the buyer ships it back, the merchant receives it.
    order, token = shop.paid_order(b, 2200)
    shop.ship(order["id"])
    asked = shop.buyer_http.post(f"/v1/checkout/{token}/refunds", json={"amount_minor": 700})
    rid = asked.json()["id"]
    assert_error(shop.confirm(token), 409, "illegal_transition")
    agreed = shop.http.post(f"/v1/refunds/{rid}/agree", json={"return_required": True})
    assert agreed.json()["state"] == "merchant_agreed", agreed.text
    assert agreed.json()["return_required"] is True
    assert_error(shop.http.post(f"/v1/refunds/{rid}/receive_return"), 409, "illegal_transition")
    shipped = shop.buyer_http.post(
        f"/v1/checkout/{token}/refunds/{rid}/ship_return",
        json={"carrier": CARRIER, "tracking_number": f"RT{uuid.uuid4().hex[:10]}"},
    )
    assert shipped.status_code == 200 and shipped.json()["state"] == "return_shipped", shipped.text
    received = shop.http.post(f"/v1/refunds/{rid}/receive_return")
    assert received.json()["state"] == "completed", received.text
    assert shop.get_order(order["id"])["state"] == "partially_refunded"
    returned += 700
    released += 1500

    # 5. Refused, then withdrawn by the buyer: the order goes on.
    order, token = shop.paid_order(b, 1200)
    rid = shop.buyer_http.post(f"/v1/checkout/{token}/refunds", json={}).json()["id"]
    refused = shop.http.post(f"/v1/refunds/{rid}/refuse")
    assert refused.json()["state"] == "merchant_refused", refused.text
    cancelled = shop.buyer_http.post(
        f"/v1/checkout/{token}/refunds/{rid}/cancel", headers=shop.as_buyer(token)
    )
    assert cancelled.json()["state"] == "cancelled", cancelled.text
    resumed = shop.get_order(order["id"])
    assert resumed["state"] == "awaiting_shipment" and resumed["disputed"] is False
    # A checkout token reaches its own order's refunds only.
    assert_error(shop.buyer_http.post(f"/v1/checkout/{first_token}/refunds/{rid}/escalate"),
                 404, "resource_missing")  # fmt: skip

    # 6. Refused, escalated, decided by the platform: an exact split.
    order, token = shop.paid_order(b, 2500)
    rid = shop.buyer_http.post(f"/v1/checkout/{token}/refunds", json={"reason": "fake"}).json()[
        "id"
    ]
    shop.http.post(f"/v1/refunds/{rid}/refuse")
    escalated = shop.buyer_http.post(f"/v1/checkout/{token}/refunds/{rid}/escalate")
    assert escalated.json()["state"] == "disputed", escalated.text
    disputes = shop.http.get("/v1/disputes", params={"state": "open"}).json()["data"]
    dispute = next(d for d in disputes if d["order"] == order["id"])
    assert dispute["refund"] == rid and dispute["reason"] == "fake"
    assert_error(shop.http.post(f"/v1/disputes/{dispute['id']}/decide",
                                json={"buyer_share_bp": 5000}), 403, "operator_only")  # fmt: skip
    decide = f"/v1/disputes/{dispute['id']}/decide"
    too_much = shop.operator.post(decide, json={"buyer_share_bp": 10_001})
    assert_error(too_much, 400, "parameter_invalid")
    decided = shop.operator.post(
        f"/v1/disputes/{dispute['id']}/decide", json={"buyer_share_bp": 3333, "note": "split"}
    )
    assert decided.status_code == 200, decided.text
    buyer_share, merchant_share = largest_remainder(2500, 3333)
    assert (buyer_share, merchant_share) == (833, 1667)
    body = decided.json()
    assert (body["buyer_share_minor"], body["merchant_share_minor"]) == (833, 1667)
    assert body["state"] == "decided" and body["decision_note"] == "split"
    settled = shop.http.get(f"/v1/refunds/{rid}").json()
    assert (settled["state"], settled["amount_minor"]) == ("completed", 833)
    assert shop.get_order(order["id"])["state"] == "partially_refunded"
    assert_error(shop.operator.post(decide, json={"buyer_share_bp": 0}), 409, "illegal_transition")
    returned += buyer_share
    released += merchant_share

    # 7. Decided wholly for the merchant after shipping: the refund is rejected, the order
    # completes.
    order, token = shop.paid_order(b, 1000)
    shop.ship(order["id"])
    rid = shop.buyer_http.post(f"/v1/checkout/{token}/refunds", json={}).json()["id"]
    shop.buyer_http.post(f"/v1/checkout/{token}/refunds/{rid}/escalate")
    dispute_id = shop.http.get("/v1/disputes").json()["data"][0]["id"]
    assert shop.http.get(f"/v1/disputes/{dispute_id}").json()["refund"] == rid
    decided = shop.operator.post(f"/v1/disputes/{dispute_id}/decide", json={"buyer_share_bp": 0})
    assert (
        decided.json()["buyer_share_minor"] == 0 and decided.json()["merchant_share_minor"] == 1000
    )
    assert shop.http.get(f"/v1/refunds/{rid}").json()["state"] == "rejected"
    assert shop.get_order(order["id"])["state"] == "completed"
    released += 1000

    # Every order was paid by card: every refund goes back to the card (the workers send
    # them), so the wallet ends as it began, but for order 5's hold; the merchant has the rest.
    def card_refunds() -> list[dict[str, Any]] | None:
        refunds = shop.http.get("/v1/refunds", params={"limit": 100}).json()["data"]
        done = [r for r in refunds if r["state"] == "completed"]
        settled = all((r["card_refund"] or {}).get("status") == "succeeded" for r in done)
        return done if settled else None

    done = wait_for("the card refunds", card_refunds)
    assert sum(r["amount_minor"] for r in done) == returned
    assert {(r["destination"], r["card_refund"]["last4"]) for r in done} == {("card", "1111")}
    assert shop.wallet(b) == (0, 1200)
    expected_available = sum(merchant_gets(r)[0] for r in (2000, 1500, merchant_share, 1000))
    expected_reserve = sum(merchant_gets(r)[1] for r in (2000, 1500, merchant_share, 1000))
    assert released == 2000 + 1500 + merchant_share + 1000
    balance = shop.balance()
    assert (balance["available_minor"], balance["reserve_minor"], balance["pending_minor"]) == (
        expected_available, expected_reserve, 1200,
    )  # fmt: skip


# -- bank transfers and payouts ------------------------------------------------------------


def send_bank_transfer(server: ServerProcess, reference: str, amount: int) -> None:
    """A transfer from the buyer's bank to the safeguarding account, at banksim."""
    incoming = httpx.post(
        f"{server.info['banksim_url']}/bank/accounts/{SAFEGUARDING_IBAN}/incoming",
        json={"amount_minor": amount, "remittance": reference, "debtor_name": "Ada Buyer",
              "debtor_iban": "NL91ABNA0417164300"},
        timeout=10,
    )  # fmt: skip
    assert incoming.status_code < 300, incoming.text


def pay_by_bank_transfer(
    shop: Shop, buyer: dict[str, Any], amount: int
) -> tuple[dict[str, Any], str]:
    order, token = shop.order(buyer["id"], amount)
    chosen = shop.pay(token, {"method": "bank_transfer"})
    assert chosen.status_code == 200, chosen.text
    instructions = chosen.json()["bank_transfer"]
    assert instructions == {"iban": SAFEGUARDING_IBAN, "reference": buyer["payment_reference"],
                            "amount_minor": amount, "currency": "EUR"}  # fmt: skip
    assert chosen.json()["order"]["funding"] == "bank_transfer"
    assert shop.get_order(order["id"])["state"] == "created"
    send_bank_transfer(shop.server, instructions["reference"], amount)
    wait_for(
        "the order to be paid by the bank transfer",
        lambda: shop.get_order(order["id"])["state"] == "awaiting_shipment",
        timeout_s=15,
    )
    return order, token


def test_bank_transfer_pays_the_order_when_the_statement_arrives(shop: Shop) -> None:
    buyer = shop.buyer()
    pay_by_bank_transfer(shop, buyer, 4321)
    assert shop.balance()["pending_minor"] == 4321
    assert shop.wallet(buyer["id"]) == (0, 4321)


def test_payout_follows_the_bank_cycle(shop: Shop) -> None:
    # Paid by bank transfer: that money is at the bank now (card money reaches the bank only
    # with the acquirer's settlement, and a payout beyond the bank's balance is rejected).
    buyer = shop.buyer()
    order, token = pay_by_bank_transfer(shop, buyer, 10_000)
    shop.ship(order["id"])
    shop.confirm(token).raise_for_status()
    available, _ = merchant_gets(10_000)
    assert shop.balance()["available_minor"] == available

    assert_error(shop.operator.post("/v1/payouts", json={"amount_minor": 100}), 403,
                 "merchant_key_required")  # fmt: skip
    assert_error(shop.http.post("/v1/payouts", json={"amount_minor": available + 1}), 409,
                 "insufficient_funds")  # fmt: skip
    assert_error(shop.http.post("/v1/payouts", json={"amount_minor": "100"}), 400,
                 "parameter_invalid")  # fmt: skip
    key = {"Idempotency-Key": f"payout-{uuid.uuid4()}"}
    created = shop.http.post("/v1/payouts", json={"amount_minor": 5000}, headers=key)
    assert created.status_code == 201, created.text
    payout = created.json()
    assert payout["object"] == "payout" and payout["amount_minor"] == 5000
    replay = shop.http.post("/v1/payouts", json={"amount_minor": 5000}, headers=key)
    assert replay.status_code == 201 and replay.json()["id"] == payout["id"]
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert_error(shop.http.post("/v1/payouts", json={"amount_minor": 4000}, headers=key), 409,
                 "idempotency_key_reused")  # fmt: skip
    assert shop.balance()["available_minor"] == available - 5000
    listed = shop.http.get("/v1/payouts").json()["data"]
    assert [p["id"] for p in listed] == [payout["id"]]

    def settled() -> bool:
        state = shop.http.get(f"/v1/payouts/{payout['id']}").json()["state"]
        return state in ("accepted", "settled")

    wait_for("the payout to be accepted by the bank", settled, timeout_s=20)
    events = shop.http.get("/v1/events", params={"object": payout["id"]}).json()["data"]
    assert events[-1]["type"] == "payout.created"
    assert {e["type"] for e in events} & {"payout.accepted", "payout.settled"}


def test_a_payout_whose_request_died_before_its_record_is_adopted(shop: Shop) -> None:
    """The gateway moved the money and holds the payout, then the request died before the
    merchant's record was written (a trigger refuses that row): the worker pass records it
    (``payout.created``) once. The key stays in flight meanwhile (whether the effect happened
    was unknown), so a retry at once is told to wait instead of paying again."""
    from paykeep.api.runtime import RuntimeConfig, open_runtime

    buyer = shop.buyer()
    order, token = pay_by_bank_transfer(shop, buyer, 4_000)
    shop.ship(order["id"])
    shop.confirm(token).raise_for_status()
    available = shop.balance()["available_minor"]
    settings = server_settings(shop.server)
    key = {"Idempotency-Key": f"payout-{uuid.uuid4()}"}
    refuse_inserts(settings, "payments_payouts", on=True)
    try:
        died = shop.http.post("/v1/payouts", json={"amount_minor": 1_500}, headers=key)
        assert died.status_code == 500, died.text
        assert "Traceback" not in died.text
    finally:
        refuse_inserts(settings, "payments_payouts", on=False)
    assert shop.balance()["available_minor"] == available - 1_500  # the gateway's, done
    assert shop.http.get("/v1/payouts").json()["data"] == []
    runtime = open_runtime(RuntimeConfig(settings=settings), migrate=False)
    try:
        assert runtime.payments.sync_payouts(unrecorded_min_age_s=0) >= 1
        assert runtime.payments.sync_payouts(unrecorded_min_age_s=0) == 0  # adopted once
    finally:
        runtime.database.dispose()
    [adopted] = shop.http.get("/v1/payouts").json()["data"]
    assert adopted["amount_minor"] == 1_500
    events = shop.http.get("/v1/events", params={"object": adopted["id"]}).json()["data"]
    assert [e["type"] for e in events] == ["payout.created"]
    retried = shop.http.post("/v1/payouts", json={"amount_minor": 1_500}, headers=key)
    assert_error(retried, 409, "idempotency_key_in_use")
    assert shop.balance()["available_minor"] == available - 1_500  # paid once
    assert len(shop.http.get("/v1/payouts").json()["data"]) == 1


# -- ownership -------------------------------------------------------------------------------


def test_another_merchant_sees_nothing_of_these_objects(shop: Shop) -> None:
    """Merchant B on merchant A's ids answers exactly as on ids that do not exist."""
    buyer = shop.buyer()
    order, token = shop.paid_order(buyer["id"], 3000)
    shop.ship(order["id"])
    refund_id = shop.buyer_http.post(f"/v1/checkout/{token}/refunds", json={}).json()["id"]
    shop.http.post(f"/v1/refunds/{refund_id}/refuse").raise_for_status()
    shop.buyer_http.post(f"/v1/checkout/{token}/refunds/{refund_id}/escalate").raise_for_status()
    dispute_id = shop.http.get("/v1/disputes").json()["data"][0]["id"]
    # Money for a payout: a second order, partially refunded after shipping.
    other, _ = shop.paid_order(buyer["id"], 5000)
    shop.ship(other["id"])
    shop.http.post(f"/v1/orders/{other['id']}/refunds", json={"amount_minor": 1}).raise_for_status()
    payout_id = shop.http.post("/v1/payouts", json={"amount_minor": 100}).json()["id"]
    event_id = shop.http.get("/v1/events").json()["data"][0]["id"]
    endpoint = shop.http.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/hook"})
    endpoint_id = endpoint.json()["id"]
    account = f"merchant:{shop.id}:available:EUR"
    transfer_id = shop.transfers(account)["data"][0]["id"]

    unknown_we = "we_0000000000000000"
    # (method, path template, body, real id, unknown id)
    cases: list[tuple[str, str, dict[str, Any] | None, str, str]] = [
        ("GET", "/v1/refunds/{}", None, refund_id, "ref_0000000000000000"),
        ("POST", "/v1/refunds/{}/agree", None, refund_id, "ref_0000000000000000"),
        ("POST", "/v1/refunds/{}/refuse", None, refund_id, "ref_0000000000000000"),
        ("POST", "/v1/refunds/{}/receive_return", None, refund_id, "ref_0000000000000000"),
        ("POST", "/v1/orders/{}/refunds", {}, order["id"], "ord_0000000000000000"),
        ("GET", "/v1/disputes/{}", None, dispute_id, "dsp_0000000000000000"),
        ("GET", "/v1/payouts/{}", None, payout_id, "po_0000000000000000"),
        ("GET", "/v1/events/{}", None, event_id, "evt_0000000000000000"),
        ("POST", "/v1/events/{}/replay", None, event_id, "evt_0000000000000000"),
        ("GET", "/v1/webhook_endpoints/{}", None, endpoint_id, "we_0000000000000000"),
        ("POST", "/v1/webhook_endpoints/{}/disable", None, endpoint_id, "we_0000000000000000"),
        ("POST", "/v1/webhook_endpoints/{}/rotate_secret", None, endpoint_id, unknown_we),
        ("GET", "/v1/merchants/{}/balance", None, shop.id, "mer_0000000000000000"),
        ("GET", "/v1/buyers/{}/balance", None, buyer["id"], "buy_0000000000000000"),
        ("GET", "/v1/ledger/transfers/{}", None, transfer_id, "1"),
        ("GET", "/v1/ledger/transfers?account={}", None, account,
         "merchant:mer_0000000000000000:available:EUR"),
    ]  # fmt: skip
    other_merchant = shop.server.merchant(1)
    with shop.server.client(other_merchant["api_key"]) as b:
        for method, template, body, real, unknown in cases:
            theirs = b.request(method, template.format(real), json=body)
            none = b.request(method, template.format(unknown), json=body)
            assert theirs.status_code == none.status_code == 404, (template, theirs.text)
            seen, expected = theirs.json()["error"], none.json()["error"]
            for error in (seen, expected):
                error.pop("request_id")
            expected["message"] = expected["message"].replace(unknown, real)
            assert seen == expected, template
        # Lists are filtered, never an error.
        for path in ("/v1/refunds", "/v1/disputes", "/v1/payouts", "/v1/events"):
            ids = {o["id"] for o in b.get(path, params={"limit": 100}).json()["data"]}
            assert not ids & {refund_id, dispute_id, payout_id, event_id}, path
        assert_error(b.get("/v1/ledger/transfers", params={"account": "platform:fees:EUR"}), 404,
                     "account_not_found")  # fmt: skip
    # The owner still sees everything, and nothing changed.
    assert shop.http.get(f"/v1/refunds/{refund_id}").json()["state"] == "disputed"
    assert shop.http.get(f"/v1/webhook_endpoints/{endpoint_id}").json()["enabled"] is True
    assert_error(shop.operator.get("/v1/balance"), 403, "merchant_key_required")
