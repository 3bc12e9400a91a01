"""Buyer withdrawals back to the card, end to end over real HTTP against a real ``paykeep
serve`` (API, workers, banksim's card network and bank) on SQLite and PostgreSQL.

Card-funded wallet money is made the way it happens: a card-paid order is refunded while the
issuer is unavailable for that card, so its card refund fails for good and the money stays in
the buyer's wallet. The buyer then withdraws it with ``destination: source_card``: the amount
is reserved at once as card refunds against their captures (newest first, each within what
that capture has left), the workers send them over ISO 8583 to banksim's issuer, and the
withdrawal settles — or, when the issuer declines, the money is back in the wallet and the
withdrawal says so. Refusals change nothing; other principals move nothing; the ledger audits
clean.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from paykeep.db import open_database
from paykeep.ledger.audit import verify
from tests.api.test_card_refunds import issuer_card, issuer_view, settled_refund
from tests.api.test_money_routes import (
    Shop,
    assert_error,
    card,
    pay_by_bank_transfer,
    wait_for,
)
from tests.api.test_money_webhooks import Receiver
from tests.api.test_withdrawals import RACERS, events_of, wallet_transfers, withdraw
from tests.serverproc import ServerProcess
from tests.support import refuse_inserts, server_settings

TO_CARD = "source_card"


@pytest.fixture
def shop(server: ServerProcess) -> Iterator[Shop]:
    opened = Shop.open(server)
    yield opened
    opened.close()
    # A test that failed half-way must not leave the issuer down for the next one.
    httpx.post(f"{server.info['banksim_url']}/faults/cards", json={"faults": []}, timeout=10)


def issuer_faults(server: ServerProcess, *tokens: str) -> None:
    """The issuer answers 91 (unavailable) to every 0200 of these cards; none: all clear."""
    rules = [{"kind": "unavailable", "card": t, "mtis": ["0200"]} for t in tokens]
    httpx.post(f"{server.info['banksim_url']}/faults/cards", json={"faults": rules},
               timeout=10).raise_for_status()  # fmt: skip


def card_funded(
    shop: Shop, buyer_id: str, *amounts: int
) -> tuple[list[tuple[str, str]], list[dict[str, Any]], str]:
    """The buyer pays one order per amount, each with a fresh card (oldest first), and each
    order is refunded while the issuer is unavailable for its card: every card refund fails
    for good and its money stays in the buyer's wallet. Returns ((pan, banksim token) per
    card, the orders, a checkout token of the buyer)."""
    before = shop.wallet(buyer_id)[0]
    cards = [issuer_card(shop.server) for _ in amounts]
    orders, token = [], ""
    for (pan, _), amount in zip(cards, amounts, strict=True):
        order, token = shop.order(buyer_id, amount)
        paid = shop.pay(token, card(pan))
        assert paid.status_code == 200, paid.text
        orders.append(order)
    issuer_faults(shop.server, *(t for _, t in cards))
    for order in orders:
        refund = shop.http.post(f"/v1/orders/{order['id']}/refunds", json={"reason": "no stock"})
        assert refund.status_code == 201, refund.text
        settled_refund(shop, refund.json()["id"], "failed")
    issuer_faults(shop.server)  # the issuer is back
    assert shop.wallet(buyer_id) == (before + sum(amounts), 0)
    return cards, orders, token


def reissue(shop: Shop, pan: str, balance: int, currency: str) -> None:
    """The issuer holds the card in ``currency`` from now on: in another currency than the
    sale's, it declines a credit to it (05), as an issuer does for a card it will not credit."""
    changed = httpx.post(f"{shop.server.info['banksim_url']}/cards", timeout=10,
                         json={"pan": pan, "expiry": "2912", "cvv": "123",
                               "balance_minor": balance, "currency": currency})  # fmt: skip
    assert changed.status_code == 201, changed.text


def token_of(shop: Shop, buyer_id: str) -> str:
    """A checkout token of the buyer (any checkout names the buyer for a withdrawal)."""
    return shop.order(buyer_id, 100)[1]


def settled(shop: Shop, withdrawal_id: str, state: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        got = shop.http.get(f"/v1/withdrawals/{withdrawal_id}")
        assert got.status_code == 200, got.text
        body: dict[str, Any] = got.json()
        return body if body["state"] == state else None

    found: dict[str, Any] = wait_for(f"the withdrawal to be {state}", probe, timeout_s=20)
    return found


def card_refunds_of(shop: Shop, withdrawal_id: str) -> list[dict[str, Any]]:
    listed = shop.http.get("/v1/card_refunds", params={"withdrawal": withdrawal_id})
    assert listed.status_code == 200, listed.text
    data: list[dict[str, Any]] = listed.json()["data"]
    return data


def events_typed(shop: Shop, type_: str) -> list[dict[str, Any]]:
    listed = shop.http.get("/v1/events", params={"type": type_, "limit": 100})
    assert listed.status_code == 200, listed.text
    data: list[dict[str, Any]] = listed.json()["data"]
    return data


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    """A webhook receiver (an ``http.server`` thread on 127.0.0.1)."""
    running = Receiver()
    yield running
    running.close()


def test_card_funded_wallet_money_goes_back_to_the_card(shop: Shop, hooks: Receiver) -> None:
    buyer = shop.buyer()
    [(pan, issuer)], [order], token = card_funded(shop, buyer["id"], 1_200)
    assert issuer_view(shop.server, issuer)["balance_minor"] == 100_000 - 1_200
    types = ["withdrawal.created", "withdrawal.settled", "refund.card_refund_succeeded"]
    hook = shop.http.post("/v1/webhook_endpoints",
                          json={"url": hooks.url + "/hook", "event_types": types})  # fmt: skip
    assert hook.status_code == 201, hook.text

    key = f"wd-{uuid.uuid4()}"
    body = {"amount_minor": 1_200, "currency": "EUR", "destination": TO_CARD}
    created = withdraw(shop, token, body, key=key)
    assert created.status_code == 201, created.text
    withdrawal = created.json()
    assert withdrawal["object"] == "withdrawal" and withdrawal["id"].startswith("wd_")
    assert (withdrawal["buyer"], withdrawal["merchant"]) == (buyer["id"], shop.id)
    assert (withdrawal["amount_minor"], withdrawal["currency"], withdrawal["state"]) == (
        1_200, "EUR", "pending")  # fmt: skip
    destination = withdrawal["destination"]
    assert destination["type"] == TO_CARD
    assert (destination["refunded_to_card_minor"], destination["returned_to_wallet_minor"]) == (
        0, 0)  # fmt: skip
    [part] = destination["card_refunds"]
    assert (part["object"], part["withdrawal"], part["refund"], part["order"]) == (
        "card_refund", withdrawal["id"], None, order["id"])  # fmt: skip
    assert (part["amount_minor"], part["last4"]) == (1_200, pan[-4:])
    assert part["status"] in ("pending", "succeeded")
    # Reserved in the request's transaction: out of the buyer's spendable balance at once.
    assert shop.wallet(buyer["id"])[0] == 0
    # A retry with the same key is the same withdrawal (nothing reserved twice); another body
    # under the key is refused.
    again = withdraw(shop, token, body, key=key)
    assert again.status_code == 201 and again.json()["id"] == withdrawal["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert_error(withdraw(shop, token, {**body, "amount_minor": 1_000}, key=key), 409,
                 "idempotency_key_reused")  # fmt: skip

    done = settled(shop, withdrawal["id"], "settled")
    [sent] = done["destination"]["card_refunds"]
    assert (sent["id"], sent["status"]) == (part["id"], "succeeded")
    assert (done["destination"]["refunded_to_card_minor"],
            done["destination"]["returned_to_wallet_minor"]) == (1_200, 0)  # fmt: skip
    # The wallet is where it was before the card sale; the card has its money back, once.
    assert shop.wallet(buyer["id"]) == (0, 0)
    view = issuer_view(shop.server, issuer)
    assert (view["balance_minor"], view["refunded_minor"]) == (100_000, 1_200)
    seen = httpx.get(f"{shop.server.info['banksim_url']}/authorisations",
                     params={"card": issuer}, timeout=10).json()["authorisations"]  # fmt: skip
    assert [s["effect"] for s in seen if s["effect"] != "none"] == ["sale", "credit"]
    # The card refund is listed with the others, and its events went out.
    assert [r["id"] for r in card_refunds_of(shop, withdrawal["id"])] == [part["id"]]
    assert part["id"] in {r["id"] for r in shop.http.get(
        "/v1/card_refunds", params={"order": order["id"]}).json()["data"]}  # fmt: skip
    [event] = [e for e in events_typed(shop, "refund.card_refund_succeeded")
               if e["data"]["object"]["id"] == part["id"]]  # fmt: skip
    assert event["data"]["object"]["withdrawal"] == withdrawal["id"]
    assert events_of(shop, withdrawal["id"]) == ["withdrawal.settled", "withdrawal.created"]
    # ... and were sent to the merchant's endpoint, signed, once each.
    ours = shop.http.get("/v1/events", params={"object": withdrawal["id"]}).json()["data"]
    expected = {event["id"]} | {e["id"] for e in ours}
    wait_for("the events to reach the merchant's endpoint",
             lambda: expected <= set(hooks.ids("/hook")))  # fmt: skip
    assert sorted(hooks.ids("/hook")) == sorted(expected)
    # Operators read it too.
    as_operator = shop.operator.get(f"/v1/withdrawals/{withdrawal['id']}")
    assert as_operator.status_code == 200 and as_operator.json() == done
    listed = shop.http.get("/v1/withdrawals", params={"buyer": buyer["id"]}).json()["data"]
    assert listed == [done]

    database = open_database(server_settings(shop.server), migrate=False)
    try:
        report = verify(database)
        assert report.ok, report.to_json()
    finally:
        database.dispose()


def test_a_withdrawal_is_split_over_the_captures_newest_first(shop: Shop) -> None:
    buyer = shop.buyer()
    cards, _orders, token = card_funded(shop, buyer["id"], 1_000, 800)
    (older_pan, older), (newer_pan, newer) = cards
    created = withdraw(shop, token, {"amount_minor": 1_300, "currency": "EUR",
                                     "destination": TO_CARD})  # fmt: skip
    assert created.status_code == 201, created.text
    withdrawal = created.json()
    parts = [(p["last4"], p["amount_minor"]) for p in withdrawal["destination"]["card_refunds"]]
    # The newest capture takes all it has left, the older one the rest (in that order).
    assert parts == [(newer_pan[-4:], 800), (older_pan[-4:], 500)]
    assert shop.wallet(buyer["id"])[0] == 500
    done = settled(shop, withdrawal["id"], "settled")
    assert {p["status"] for p in done["destination"]["card_refunds"]} == {"succeeded"}
    assert issuer_view(shop.server, newer)["refunded_minor"] == 800
    assert issuer_view(shop.server, older)["refunded_minor"] == 500
    assert shop.wallet(buyer["id"]) == (500, 0)
    # What is left of the older capture is all that can still go back to a card.
    assert_error(withdraw(shop, token, {"amount_minor": 501, "currency": "EUR",
                                        "destination": TO_CARD}),
                 409, "withdrawal_exceeds_card_refundable")  # fmt: skip
    last = withdraw(shop, token, {"amount_minor": 500, "currency": "EUR",
                                  "destination": TO_CARD})  # fmt: skip
    assert last.status_code == 201, last.text
    [only] = last.json()["destination"]["card_refunds"]
    assert (only["last4"], only["amount_minor"]) == (older_pan[-4:], 500)
    settled(shop, last.json()["id"], "settled")
    assert issuer_view(shop.server, older)["refunded_minor"] == 1_000
    assert shop.wallet(buyer["id"]) == (0, 0)


def test_a_declined_card_refund_leaves_the_money_in_the_wallet(shop: Shop) -> None:
    buyer = shop.buyer()
    [(pan, issuer)], _orders, token = card_funded(shop, buyer["id"], 900)
    reissue(shop, pan, 100_000 - 900, "USD")  # the issuer declines a credit to it now (05)
    created = withdraw(shop, token, {"amount_minor": 900, "currency": "EUR",
                                     "destination": TO_CARD})  # fmt: skip
    assert created.status_code == 201, created.text
    withdrawal_id = created.json()["id"]
    failed = settled(shop, withdrawal_id, "failed")
    [part] = failed["destination"]["card_refunds"]
    assert (part["status"], part["failure_reason"], part["response_code"]) == (
        "failed", "declined", "05")  # fmt: skip
    assert (failed["destination"]["refunded_to_card_minor"],
            failed["destination"]["returned_to_wallet_minor"]) == (0, 900)  # fmt: skip
    # The reservation was voided: the money is the buyer's to spend again.
    assert shop.wallet(buyer["id"]) == (900, 0)
    assert issuer_view(shop.server, issuer)["refunded_minor"] == 0
    assert events_of(shop, withdrawal_id) == ["withdrawal.failed", "withdrawal.created"]
    [event] = [e for e in events_typed(shop, "refund.card_refund_failed")
               if e["data"]["object"]["id"] == part["id"]]  # fmt: skip
    assert event["data"]["object"]["withdrawal"] == withdrawal_id
    # Not the operator's to send again: the buyer withdraws again if they want to.
    assert_error(shop.operator.post(f"/v1/card_refunds/{part['id']}/retry"), 409,
                 "illegal_transition")  # fmt: skip
    assert shop.wallet(buyer["id"]) == (900, 0)
    # The failed refund no longer counts against the capture: it may go back again.
    reissue(shop, pan, 100_000 - 900, "EUR")
    again = withdraw(shop, token, {"amount_minor": 900, "currency": "EUR",
                                   "destination": TO_CARD})  # fmt: skip
    assert again.status_code == 201, again.text
    settled(shop, again.json()["id"], "settled")
    assert shop.wallet(buyer["id"]) == (0, 0)
    assert issuer_view(shop.server, issuer)["refunded_minor"] == 900


def test_a_withdrawal_whose_newest_card_declines_is_partially_settled(shop: Shop) -> None:
    buyer = shop.buyer()
    (older_pan, older), (newer_pan, newer) = card_funded(shop, buyer["id"], 1_000, 800)[0]
    reissue(shop, newer_pan, 100_000 - 800, "USD")  # the newer card now declines credits
    body = {"amount_minor": 1_300, "currency": "EUR", "destination": TO_CARD}
    created = withdraw(shop, token_of(shop, buyer["id"]), body)
    assert created.status_code == 201, created.text
    done = settled(shop, created.json()["id"], "partially_settled")
    parts = [(p["last4"], p["amount_minor"], p["status"])
             for p in done["destination"]["card_refunds"]]  # fmt: skip
    assert parts == [(newer_pan[-4:], 800, "failed"), (older_pan[-4:], 500, "succeeded")]
    assert (done["destination"]["refunded_to_card_minor"],
            done["destination"]["returned_to_wallet_minor"]) == (500, 800)  # fmt: skip
    assert shop.wallet(buyer["id"]) == (1_300, 0)
    assert issuer_view(shop.server, older)["refunded_minor"] == 500
    assert issuer_view(shop.server, newer)["refunded_minor"] == 0
    assert events_of(shop, done["id"]) == ["withdrawal.partially_settled", "withdrawal.created"]


def test_more_than_the_cards_can_take_back_is_refused_and_changes_nothing(shop: Shop) -> None:
    """The wallet holds more than the card paid in (a bank-paid order was refunded to it too),
    so only the per-capture bound can refuse: no more goes back to a card than it paid in."""
    buyer = shop.buyer()
    # 5.00 of bank money: an order paid by bank transfer and refunded to the wallet (first:
    # an order waiting for a transfer is paid from whatever the wallet already holds).
    bank_order, _ = pay_by_bank_transfer(shop, buyer, 500)
    refunded = shop.http.post(f"/v1/orders/{bank_order['id']}/refunds", json={})
    assert refunded.status_code == 201 and refunded.json()["destination"] == "wallet"
    _cards, [order], token = card_funded(shop, buyer["id"], 1_200)
    assert shop.wallet(buyer["id"]) == (1_700, 0)
    stranger = shop.buyer()  # never paid by card
    stranger_token = token_of(shop, stranger["id"])
    before = wallet_transfers(shop, buyer["id"])
    card_refunds_before = shop.http.get("/v1/card_refunds", params={"order": order["id"]}).json()

    over = {"amount_minor": 1_201, "currency": "EUR", "destination": TO_CARD}
    error = assert_error(withdraw(shop, token, over), 409, "withdrawal_exceeds_card_refundable")
    assert "1200" in error["message"] and error["param"] == "amount_minor"
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        # shape: an explicit, closed destination; no bank account named with the card
        (token, {**over, "amount_minor": 100, "destination": "card"}, 400, "parameter_invalid"),
        (token, {**over, "amount_minor": 100, "destination": None}, 400, "parameter_invalid"),
        (token, {**over, "amount_minor": 100, "card": "4111111111111111"}, 400,
         "parameter_invalid"),
        (token, {**over, "amount_minor": 100, "source_topup": "top_0000000000000000"}, 400,
         "payments_input_invalid"),
        (token, {**over, "amount_minor": 0}, 400, "parameter_invalid"),
        # references: no wallet in that currency; no card paid in
        (token, {**over, "amount_minor": 100, "currency": "GBP"}, 400, "payments_input_invalid"),
        (stranger_token, {**over, "amount_minor": 1}, 409, "withdrawal_no_source"),
    ]  # fmt: skip
    for target, body, status, code in cases:
        assert_error(withdraw(shop, target, body), status, code)

    # Nothing was written: no withdrawal, no card refund, no transfer, no event.
    for who in (buyer, stranger):
        assert shop.http.get("/v1/withdrawals", params={"buyer": who["id"]}).json()["data"] == []
    assert wallet_transfers(shop, buyer["id"]) == before
    assert shop.http.get("/v1/card_refunds", params={"order": order["id"]}).json() == (
        card_refunds_before)  # fmt: skip
    assert shop.wallet(buyer["id"]) == (1_700, 0)
    created = [e for e in events_typed(shop, "withdrawal.created")
               if e["data"]["object"]["buyer"] in (buyer["id"], stranger["id"])]  # fmt: skip
    assert created == []
    # Exactly what the card paid in may go back to it; the bank money stays for its account.
    ok = withdraw(shop, token, {**over, "amount_minor": 1_200})
    assert ok.status_code == 201, ok.text
    assert_error(withdraw(shop, token, {**over, "amount_minor": 1}), 409,
                 "withdrawal_exceeds_card_refundable")  # fmt: skip
    settled(shop, ok.json()["id"], "settled")
    assert shop.wallet(buyer["id"]) == (500, 0)


def test_only_the_buyer_withdraws_and_others_only_read(shop: Shop) -> None:
    buyer = shop.buyer()
    _cards, _orders, token = card_funded(shop, buyer["id"], 600)
    other = shop.buyer()
    other_token = token_of(shop, other["id"])
    body = {"amount_minor": 600, "currency": "EUR", "destination": TO_CARD}
    # Another buyer's session, none, the merchant's own API key: refused, nothing moves.
    assert_error(withdraw(shop, token, body, session=False, headers=shop.as_buyer(other_token)),
                 401, "buyer_authentication_required")  # fmt: skip
    assert_error(withdraw(shop, token, body, session=False), 401,
                 "buyer_authentication_required")  # fmt: skip
    assert_error(shop.http.post(f"/v1/checkout/{token}/withdrawals", json=body), 401,
                 "buyer_authentication_required")  # fmt: skip
    assert_error(shop.operator.post(f"/v1/checkout/{token}/withdrawals", json=body), 401,
                 "buyer_authentication_required")  # fmt: skip
    assert shop.wallet(buyer["id"]) == (600, 0)
    assert shop.http.get("/v1/withdrawals", params={"buyer": buyer["id"]}).json()["data"] == []
    # A refusal is not stored under the key: the buyer's retry with a session goes through.
    key = f"wd-{uuid.uuid4()}"
    assert_error(withdraw(shop, token, body, key=key, session=False), 401,
                 "buyer_authentication_required")  # fmt: skip
    created = withdraw(shop, token, body, key=key)
    assert created.status_code == 201, created.text
    withdrawal_id = created.json()["id"]
    [part] = created.json()["destination"]["card_refunds"]
    # Its merchant and the operator read it; another merchant sees nothing of it.
    assert shop.http.get(f"/v1/withdrawals/{withdrawal_id}").status_code == 200
    assert shop.operator.get(f"/v1/withdrawals/{withdrawal_id}").status_code == 200
    stranger = Shop.open(shop.server)
    try:
        assert_error(stranger.http.get(f"/v1/withdrawals/{withdrawal_id}"), 404,
                     "resource_missing")  # fmt: skip
        assert_error(stranger.http.get(f"/v1/card_refunds/{part['id']}"), 404,
                     "resource_missing")  # fmt: skip
        for path, params in (("/v1/card_refunds", {"withdrawal": withdrawal_id}),
                             ("/v1/events", {"object": withdrawal_id})):  # fmt: skip
            assert stranger.http.get(path, params=params).json()["data"] == []
    finally:
        stranger.close()
    settled(shop, withdrawal_id, "settled")
    assert shop.wallet(buyer["id"]) == (0, 0)


def test_requests_at_once_cannot_share_one_capture(shop: Shop) -> None:
    """The wallet covers two withdrawals (bank money is in it too) but the card paid in only
    one's worth: only the captures' room — read and reserved under a lock on the buyer, with
    the withdrawal's card refunds in one transaction — can refuse the others."""
    buyer = shop.buyer()
    bank_order, _ = pay_by_bank_transfer(shop, buyer, 1_000)
    assert shop.http.post(f"/v1/orders/{bank_order['id']}/refunds", json={}).status_code == 201
    _cards, _orders, token = card_funded(shop, buyer["id"], 1_200)
    headers = shop.as_buyer(token)  # signed in before the race
    body = {"amount_minor": 1_000, "currency": "EUR", "destination": TO_CARD}

    def attempt(_: int) -> httpx.Response:
        with shop.server.client() as client:
            return client.post(f"/v1/checkout/{token}/withdrawals", json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=RACERS) as pool:
        answers = list(pool.map(attempt, range(RACERS)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] + [409] * (RACERS - 1), [a.text for a in answers]
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {
        "withdrawal_exceeds_card_refundable"
    }
    [won] = [a.json() for a in answers if a.status_code == 201]
    assert shop.http.get("/v1/withdrawals", params={"buyer": buyer["id"]}).json()["data"] == [
        shop.http.get(f"/v1/withdrawals/{won['id']}").json()]  # fmt: skip
    settled(shop, won["id"], "settled")
    assert shop.wallet(buyer["id"]) == (1_200, 0)


def test_a_request_that_dies_before_its_commit_leaves_nothing(shop: Shop) -> None:
    """The withdrawal, both of its card refunds and both reservations are one transaction: when
    its last write (the ``withdrawal.created`` event) fails, none of it is there — no money
    reserved, no card refund for the workers to send."""
    buyer = shop.buyer()
    _cards, orders, token = card_funded(shop, buyer["id"], 1_000, 800)
    before = wallet_transfers(shop, buyer["id"])
    refunds_before = [
        shop.http.get("/v1/card_refunds", params={"order": o["id"]}).json() for o in orders
    ]
    body = {"amount_minor": 1_300, "currency": "EUR", "destination": TO_CARD}
    settings = server_settings(shop.server)
    refuse_inserts(settings, "payments_events", on=True)
    try:
        died = withdraw(shop, token, body)
        assert died.status_code == 500, died.text
        assert died.json()["error"]["type"] == "api_error"
    finally:
        refuse_inserts(settings, "payments_events", on=False)
    assert shop.http.get("/v1/withdrawals", params={"buyer": buyer["id"]}).json()["data"] == []
    assert wallet_transfers(shop, buyer["id"]) == before
    assert [
        shop.http.get("/v1/card_refunds", params={"order": o["id"]}).json() for o in orders
    ] == refunds_before
    assert shop.wallet(buyer["id"]) == (1_800, 0)
    # The same request, now that the database takes it, goes through whole.
    created = withdraw(shop, token, body)
    assert created.status_code == 201, created.text
    assert len(created.json()["destination"]["card_refunds"]) == 2
    settled(shop, created.json()["id"], "settled")
    assert shop.wallet(buyer["id"]) == (500, 0)
