"""A merchant's payout and a buyer's withdrawal that the payee's bank sends back after they
settled, end to end over real HTTP against a real ``paykeep serve`` (API, workers, banksim's
bank) on SQLite and PostgreSQL. banksim's ``return_after_settlement`` fault has the payee's bank
send back what the bank paid while it was on: the next day's camt.053 carries the credit with
the payout's end-to-end id and an ISO reason, the server's bank cycle imports it and its settle
pass applies it — the merchant sees ``payout.returned`` on its webhook endpoint, the payout
object says why, the money is back in ``available`` (or the buyer's wallet, less what the
payee's bank kept), and an account the reason puts in doubt must be verified again before the
next payout goes to it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from paykeep.db import open_database
from paykeep.ledger.audit import verify
from paykeep.ledger.service import Ledger
from tests.api.test_money_routes import (
    Shop,
    assert_error,
    merchant_gets,
    pay_by_bank_transfer,
    wait_for,
)
from tests.api.test_money_webhooks import Receiver
from tests.api.test_withdrawals import checkout_of, events_of, state_of, top_up, withdraw
from tests.serverproc import ServerProcess
from tests.support import server_settings


@pytest.fixture
def shop(server: ServerProcess) -> Iterator[Shop]:
    opened = Shop.open(server)
    yield opened
    opened.close()
    payees_bank_returns(server, False)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def payees_bank_returns(server: ServerProcess, terms: dict[str, Any] | bool) -> None:
    """banksim: the payee's bank sends back what the bank pays from now on (False: stops)."""
    answer = httpx.post(
        f"{server.info['banksim_url']}/bank/faults",
        json={"return_after_settlement": terms},
        timeout=10,
    )
    answer.raise_for_status()


def payout_state(shop: Shop, payout_id: str) -> str:
    got = shop.http.get(f"/v1/payouts/{payout_id}")
    assert got.status_code == 200, got.text
    return str(got.json()["state"])


def paid_out_while_returning(shop: Shop, terms: dict[str, Any], request: Any) -> dict[str, Any]:
    """Make ``request()`` (a payout or a withdrawal) while the payee's bank sends payouts back
    on ``terms``, wait until the bank has paid it (its statement settled it), then stop."""
    payees_bank_returns(shop.server, terms)
    try:
        created: dict[str, Any] = request()
        wait_for("the bank to pay it", lambda: created["state_of"]() == "settled", timeout_s=40)
    finally:
        payees_bank_returns(shop.server, False)
    return created


def test_a_payout_sent_back_reaches_the_merchant_with_its_reason(
    shop: Shop, receiver: Receiver
) -> None:
    endpoint = shop.http.post(
        "/v1/webhook_endpoints",
        json={"url": receiver.url + "/payouts", "event_types": ["payout.returned"]},
    )
    assert endpoint.status_code == 201, endpoint.text
    buyer = shop.buyer()
    order, token = pay_by_bank_transfer(shop, buyer, 10_000)
    shop.ship(order["id"])
    shop.confirm(token).raise_for_status()
    available, _ = merchant_gets(10_000)
    assert shop.balance()["available_minor"] == available

    def request() -> dict[str, Any]:
        key = {"Idempotency-Key": f"payout-{uuid.uuid4()}"}
        created = shop.http.post("/v1/payouts", json={"amount_minor": 5_000}, headers=key)
        assert created.status_code == 201, created.text
        body: dict[str, Any] = created.json()
        assert body["return"] is None
        return {**body, "state_of": lambda: payout_state(shop, body["id"])}

    payout = paid_out_while_returning(shop, {"reason": "AC04"}, request)
    assert shop.balance()["available_minor"] == available - 5_000

    # The next day's statement brings it back; the server's settle pass applies it.
    wait_for("the payout to come back", lambda: payout_state(shop, payout["id"]) == "returned",
             timeout_s=40)  # fmt: skip
    shown = shop.http.get(f"/v1/payouts/{payout['id']}").json()
    assert shown["return"] == {
        "kind": "sent_back", "reason_code": "AC04", "reason": "AC04: the account is closed",
        "fee_minor": 0, "returned_minor": 5_000,
    }  # fmt: skip
    assert shop.balance()["available_minor"] == available
    events = shop.http.get("/v1/events", params={"object": payout["id"]}).json()["data"]
    assert events[0]["type"] == "payout.returned"
    assert [e["type"] for e in events].count("payout.returned") == 1
    # The merchant's endpoint hears it, signed, with the payout as the API shows it.
    delivered = wait_for("the webhook", lambda: receiver.at("/payouts"), timeout_s=30)
    (headers, body) = delivered[0]
    sent = json.loads(body)
    assert sent["type"] == "payout.returned" and headers["webhook-id"] == sent["id"]
    assert sent["data"]["object"]["id"] == payout["id"]
    assert sent["data"]["object"]["return"]["reason_code"] == "AC04"

    # A closed account: the payout IBAN is unverified, so the next payout is refused until
    # the operator verifies an account again.
    merchant = shop.http.get(f"/v1/merchants/{shop.id}").json()
    assert merchant["payout_iban_verified"] is False
    assert_error(shop.http.post("/v1/payouts", json={"amount_minor": 1_000}), 409,
                 "payout_not_allowed")  # fmt: skip
    verified = shop.operator.post(f"/v1/merchants/{shop.id}/verify_payout_iban")
    assert verified.status_code == 200, verified.text
    again = shop.http.post("/v1/payouts", json={"amount_minor": 1_000})
    assert again.status_code == 201, again.text
    wait_for("the new payout to settle",
             lambda: payout_state(shop, again.json()["id"]) == "settled", timeout_s=40)  # fmt: skip
    assert shop.balance()["available_minor"] == available - 1_000
    _books_balance(shop)


def test_a_withdrawal_sent_back_is_back_in_the_wallet_less_the_fee(shop: Shop) -> None:
    buyer = shop.buyer()
    token = checkout_of(shop, buyer["id"])
    top_up(shop, buyer, 2_000)

    def request() -> dict[str, Any]:
        created = withdraw(shop, token, {"amount_minor": 2_000, "currency": "EUR"})
        assert created.status_code == 201, created.text
        body: dict[str, Any] = created.json()
        return {**body, "state_of": lambda: state_of(shop, body["id"])}

    withdrawal = paid_out_while_returning(shop, {"reason": "AC01", "fee_minor": 200}, request)
    assert shop.wallet(buyer["id"]) == (0, 0)
    wait_for("the withdrawal to come back",
             lambda: state_of(shop, withdrawal["id"]) == "returned", timeout_s=40)  # fmt: skip
    shown = shop.http.get(f"/v1/withdrawals/{withdrawal['id']}").json()
    assert shown["return"] == {
        "kind": "sent_back", "reason_code": "AC01",
        "reason": "AC01: the account number is incorrect", "fee_minor": 200,
        "returned_minor": 1_800,
    }  # fmt: skip
    assert shop.wallet(buyer["id"]) == (1_800, 0)
    types = events_of(shop, withdrawal["id"])
    assert types[0] == "withdrawal.returned" and types.count("withdrawal.returned") == 1
    _books_balance(shop)


def _books_balance(shop: Shop) -> None:
    """``paykeep audit verify``'s check, and nothing left in transit for the bank."""
    database = open_database(server_settings(shop.server), migrate=False)
    try:
        report = verify(database)
        assert report.ok, report.to_json()
        clearing = Ledger(database).account_by_name("clearing:payout")
        assert clearing.debits_posted == clearing.credits_posted
    finally:
        database.dispose()
