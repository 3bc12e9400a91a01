"""Refunds of card-paid orders go back to the card, end to end: a real ``paykeep serve`` (API,
workers, banksim's card network and bank) on SQLite and PostgreSQL. The buyer's wallet ends
where it was before the card sale, the issuer credits the card exactly the refunded amount,
orders paid otherwise keep today's behaviour (the wallet), a card refund the network will not
take leaves the money in the wallet with an event saying so, and the ledger audits clean."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from stdnum import luhn

from paykeep.db import open_database
from paykeep.ledger.audit import verify
from paykeep.ledger.service import Ledger
from tests.api.test_money_routes import (
    Shop,
    assert_error,
    card,
    pay_by_bank_transfer,
    wait_for,
)
from tests.serverproc import ServerProcess
from tests.support import server_settings


@pytest.fixture
def shop(server: ServerProcess) -> Iterator[Shop]:
    opened = Shop.open(server)
    yield opened
    opened.close()


def issuer_card(server: ServerProcess, balance: int = 100_000) -> tuple[str, str]:
    """(pan, banksim token) of a fresh card at the issuer, this test's alone."""
    body = "4" + "".join(str(secrets.randbelow(10)) for _ in range(14))
    pan = body + luhn.calc_check_digit(body)
    added = httpx.post(f"{server.info['banksim_url']}/cards", timeout=10,
                       json={"pan": pan, "expiry": "2912", "cvv": "123",
                             "balance_minor": balance, "currency": "EUR"})  # fmt: skip
    assert added.status_code == 201, added.text
    return pan, str(added.json()["token"])


def issuer_view(server: ServerProcess, token: str) -> dict[str, Any]:
    view: dict[str, Any] = httpx.get(
        f"{server.info['banksim_url']}/cards/{token}", timeout=10
    ).json()
    return view


def settled_refund(shop: Shop, refund_id: str, status: str = "succeeded") -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        refund: dict[str, Any] = shop.http.get(f"/v1/refunds/{refund_id}").json()
        return refund if (refund["card_refund"] or {}).get("status") == status else None

    found: dict[str, Any] = wait_for(f"card refund {status}", probe)
    return found


def test_a_card_paid_order_refunded_in_full_goes_back_to_the_card(shop: Shop) -> None:
    pan, token = issuer_card(shop.server)
    buyer = shop.buyer()["id"]
    assert shop.wallet(buyer) == (0, 0)
    order, session = shop.order(buyer, 2_000)
    paid = shop.pay(session, card(pan))
    assert paid.status_code == 200, paid.text
    assert issuer_view(shop.server, token)["balance_minor"] == 98_000
    refund = shop.http.post(f"/v1/orders/{order['id']}/refunds", json={"reason": "no stock"})
    assert refund.status_code == 201, refund.text
    body = refund.json()
    assert body["destination"] == "card"
    assert body["card_refund"]["last4"] == pan[-4:]
    assert body["card_refund"]["status"] in ("pending", "succeeded")
    done = settled_refund(shop, body["id"])
    assert done["destination"] == "card"
    # The wallet is back where it was before the card sale; the card has its money back.
    assert shop.wallet(buyer) == (0, 0)
    view = issuer_view(shop.server, token)
    assert (view["balance_minor"], view["refunded_minor"]) == (100_000, 2_000)
    seen = httpx.get(f"{shop.server.info['banksim_url']}/authorisations",
                     params={"card": token}, timeout=10).json()["authorisations"]  # fmt: skip
    assert [s["effect"] for s in seen] == ["sale", "credit"]
    events = shop.http.get("/v1/events", params={"type": "refund.card_refund_succeeded",
                                                  "limit": 100}).json()["data"]  # fmt: skip
    [event] = [e for e in events if e["data"]["object"]["refund"] == body["id"]]
    card_refund = event["data"]["object"]
    assert (card_refund["object"], card_refund["status"], card_refund["amount_minor"]) == (
        "card_refund", "succeeded", 2_000)  # fmt: skip


def test_a_partial_refund_returns_exactly_the_refunded_part_to_the_card(shop: Shop) -> None:
    pan, token = issuer_card(shop.server)
    buyer = shop.buyer()["id"]
    order, session = shop.order(buyer, 3_000)
    assert shop.pay(session, card(pan)).status_code == 200
    shop.ship(order["id"])
    partial = shop.http.post(f"/v1/orders/{order['id']}/refunds", json={"amount_minor": 1_000})
    assert partial.status_code == 201, partial.text
    settled_refund(shop, partial.json()["id"])
    view = issuer_view(shop.server, token)
    assert (view["balance_minor"], view["refunded_minor"]) == (100_000 - 2_000, 1_000)
    assert shop.wallet(buyer) == (0, 0)
    assert shop.get_order(order["id"])["released_minor"] == 2_000


def test_a_dispute_decided_for_the_buyer_pays_the_share_back_to_the_card(shop: Shop) -> None:
    pan, token = issuer_card(shop.server)
    buyer = shop.buyer()["id"]
    order, session = shop.order(buyer, 2_500)
    assert shop.pay(session, card(pan)).status_code == 200
    rid = shop.buyer_http.post(f"/v1/checkout/{session}/refunds", json={}).json()["id"]
    shop.http.post(f"/v1/refunds/{rid}/refuse")
    shop.buyer_http.post(f"/v1/checkout/{session}/refunds/{rid}/escalate")
    disputes = shop.http.get("/v1/disputes", params={"state": "open"}).json()["data"]
    dispute = next(d for d in disputes if d["order"] == order["id"])
    decided = shop.operator.post(f"/v1/disputes/{dispute['id']}/decide",
                                 json={"buyer_share_bp": 4000})  # fmt: skip
    assert decided.status_code == 200, decided.text
    settled_refund(shop, rid)
    assert issuer_view(shop.server, token)["balance_minor"] == 100_000 - 2_500 + 1_000
    assert shop.wallet(buyer) == (0, 0)


def test_an_order_paid_by_bank_transfer_is_refunded_to_the_wallet(shop: Shop) -> None:
    buyer = shop.buyer()
    order, _ = pay_by_bank_transfer(shop, buyer, 1_500)
    refund = shop.http.post(f"/v1/orders/{order['id']}/refunds", json={})
    assert refund.status_code == 201, refund.text
    assert (refund.json()["destination"], refund.json()["card_refund"]) == ("wallet", None)
    assert shop.wallet(buyer["id"]) == (1_500, 0)


def test_a_card_refund_the_network_will_not_take_stays_in_the_wallet(shop: Shop) -> None:
    pan, token = issuer_card(shop.server)
    buyer = shop.buyer()["id"]
    order, session = shop.order(buyer, 1_200)
    assert shop.pay(session, card(pan)).status_code == 200
    # From now on the issuer is unavailable for this card (and this card only): every
    # attempt answers 91.
    rule = {"kind": "unavailable", "card": token, "mtis": ["0200"]}
    faults = f"{shop.server.info['banksim_url']}/faults/cards"
    httpx.post(faults, json={"faults": [rule], "mode": "append"}, timeout=10).raise_for_status()
    refund = shop.http.post(f"/v1/orders/{order['id']}/refunds", json={})
    assert refund.status_code == 201, refund.text
    failed = settled_refund(shop, refund.json()["id"], "failed")
    assert failed["destination"] == "wallet"
    assert shop.wallet(buyer) == (1_200, 0)  # the reservation was voided: the buyer's to spend
    assert issuer_view(shop.server, token)["balance_minor"] == 100_000 - 1_200
    events = shop.http.get("/v1/events", params={"type": "refund.card_refund_failed",
                                                  "limit": 100}).json()["data"]  # fmt: skip
    [event] = [e for e in events if e["data"]["object"]["refund"] == refund.json()["id"]]
    assert event["data"]["object"]["failure_reason"] == "unavailable"


def test_the_books_balance_and_card_clearing_empties_with_settlement(shop: Shop) -> None:
    """A sale and a partial refund to the card: the ledger audits clean, and once the acquirer
    settles (net of refunds, at the next bank cycle), clearing:card returns to zero."""
    pan, _token = issuer_card(shop.server)
    buyer = shop.buyer()["id"]
    order, session = shop.order(buyer, 4_000)
    assert shop.pay(session, card(pan)).status_code == 200
    refund = shop.http.post(f"/v1/orders/{order['id']}/refunds", json={"amount_minor": 1_500})
    settled_refund(shop, refund.json()["id"])
    database = open_database(server_settings(shop.server), migrate=False)
    try:
        report = verify(database)
        assert report.ok, report.to_json()
        ledger = Ledger(database)

        def clearing_empty() -> bool:
            account = ledger.account_by_name("clearing:card:banksim")
            pending = account.debits_pending + account.credits_pending
            return account.debits_posted == account.credits_posted and pending == 0

        wait_for("clearing:card to return to zero", clearing_empty, timeout_s=30)
    finally:
        database.dispose()


def test_the_operator_sends_a_failed_card_refund_again(shop: Shop) -> None:
    pan, token = issuer_card(shop.server)
    buyer = shop.buyer()["id"]
    order, session = shop.order(buyer, 1_400)
    assert shop.pay(session, card(pan)).status_code == 200
    rule = {"kind": "unavailable", "card": token, "mtis": ["0200"]}
    faults = f"{shop.server.info['banksim_url']}/faults/cards"
    httpx.post(faults, json={"faults": [rule], "mode": "append"}, timeout=10).raise_for_status()
    refund = shop.http.post(f"/v1/orders/{order['id']}/refunds", json={}).json()
    settled_refund(shop, refund["id"], "failed")
    # The merchant finds it among its card refunds; another merchant cannot see it.
    listed = shop.http.get("/v1/card_refunds", params={"order": order["id"]}).json()
    [failed] = listed["data"]
    assert (failed["object"], failed["status"], failed["refund"]) == (
        "card_refund", "failed", refund["id"])  # fmt: skip
    assert (failed["amount_minor"], failed["last4"], failed["retries"]) == (1_400, pan[-4:], 0)
    assert failed["id"] in {
        r["id"]
        for r in shop.http.get("/v1/card_refunds", params={"state": "failed"}).json()["data"]
    }
    path = f"/v1/card_refunds/{failed['id']}"
    assert shop.http.get(path).json() == failed
    stranger = Shop.open(shop.server)
    try:
        assert_error(stranger.http.get(path), 404, "resource_missing")
        assert stranger.http.get("/v1/card_refunds", params={"order": order["id"]}).json()[
            "data"] == []  # fmt: skip
    finally:
        stranger.close()
    # Sending it again is the operator's decision, not the merchant's.
    assert_error(shop.http.post(f"{path}/retry"), 403, "operator_only")
    httpx.post(faults, json={"faults": []}, timeout=10).raise_for_status()  # the issuer is back
    key = {"Idempotency-Key": secrets.token_hex(8)}
    retried = shop.operator.post(f"{path}/retry", headers=key)
    assert retried.status_code == 200, retried.text
    assert (retried.json()["status"], retried.json()["retries"]) == ("pending", 1)
    replayed = shop.operator.post(f"{path}/retry", headers=key)  # a retried request: same answer
    assert replayed.json() == retried.json()
    done = settled_refund(shop, refund["id"])
    assert done["destination"] == "card"
    view = issuer_view(shop.server, token)
    assert (view["balance_minor"], view["refunded_minor"]) == (100_000, 1_400)
    assert shop.wallet(buyer) == (0, 0)
    # Succeeded: nothing left to send again.
    assert_error(shop.operator.post(f"{path}/retry"), 409, "illegal_transition")
    types = [e["type"] for e in shop.http.get("/v1/events", params={"limit": 100}).json()["data"]
             if e["data"]["object"].get("id") == failed["id"]]  # fmt: skip
    assert types.count("refund.card_refund_retried") == 1
