"""Every order state × every buyer/merchant action, through real HTTP (both databases): the
legal ones move the order as the escrow table says, every other one is ``409
illegal_transition`` and changes nothing (state, amounts, version stamp, balances)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_money_routes import Shop, card, wait_for
from tests.serverproc import ServerProcess

STATES = ("created", "awaiting_shipment", "awaiting_receipt", "completed", "refunded",
          "partially_refunded", "closed")  # fmt: skip
#: Written out from the design's escrow flow (not computed from the code under test).
LEGAL = {
    ("created", "pay"): "awaiting_shipment",
    ("awaiting_shipment", "ship"): "awaiting_receipt",
    ("awaiting_shipment", "refund"): "partially_refunded",
    ("awaiting_receipt", "confirm"): "completed",
    ("awaiting_receipt", "refund"): "partially_refunded",
}
ACTIONS = ("pay", "ship", "confirm", "refund")


@pytest.fixture
def shop(server: ServerProcess) -> Iterator[Shop]:
    opened = Shop.open(server)
    yield opened
    opened.close()


def _order_in(shop: Shop, buyer_id: str, state: str) -> tuple[dict[str, Any], str]:
    if state in ("created", "closed"):
        return shop.order(buyer_id, 3_000)
    order, token = shop.paid_order(buyer_id, 3_000)
    if state in ("awaiting_receipt", "completed", "partially_refunded"):
        shop.ship(order["id"])
    if state == "completed":
        shop.confirm(token).raise_for_status()
    if state == "refunded":
        shop.http.post(f"/v1/orders/{order['id']}/refunds", json={}).raise_for_status()
    if state == "partially_refunded":
        shop.http.post(
            f"/v1/orders/{order['id']}/refunds", json={"amount_minor": 1_000}
        ).raise_for_status()
    return order, token


def _act(shop: Shop, action: str, order_id: str, token: str) -> httpx.Response:
    calls: dict[str, Callable[[], httpx.Response]] = {
        "pay": lambda: shop.pay(token, card()),
        "ship": lambda: shop.http.post(
            f"/v1/orders/{order_id}/ship",
            json={"carrier": "demo-post", "tracking_number": f"TX{time.time_ns() % 10**12}"},
        ),
        "confirm": lambda: shop.confirm(token),
        "refund": lambda: shop.http.post(
            f"/v1/orders/{order_id}/refunds", json={"amount_minor": 500}
        ),
    }
    return calls[action]()


def test_every_state_and_action(shop: Shop, server: ServerProcess) -> None:
    buyer = shop.buyer()
    orders = {s: _order_in(shop, buyer["id"], s) for s in STATES if s != "closed"}
    # "closed": the unpaid timer of a second shop closes its order.
    quick = Shop.open(server)
    try:
        quick.http.post(
            f"/v1/merchants/{quick.id}", json={"escrow_timers": {"unpaid_close_s": 1}}
        ).raise_for_status()
        quick_buyer = quick.buyer()
        closed = quick.order(quick_buyer["id"], 3_000)
        wait_for("the unpaid order to close",
                 lambda: quick.get_order(closed[0]["id"])["state"] == "closed")  # fmt: skip
        for state, (order, _token) in orders.items():
            assert shop.get_order(order["id"])["state"] == state
        outcomes = []
        for state in STATES:
            for action in ACTIONS:
                owner = quick if state == "closed" else shop
                order, token = closed if state == "closed" else orders[state]
                if (state, action) in LEGAL:
                    # A fresh order in that state: the legal move is checked on it.
                    order, token = _order_in(owner, buyer["id"] if owner is shop else
                                             quick_buyer["id"], state)  # fmt: skip
                before = owner.get_order(order["id"])
                balance = owner.balance()
                response = _act(owner, action, order["id"], token)
                after = owner.get_order(order["id"])
                expected = LEGAL.get((state, action))
                if expected is None:
                    assert response.status_code == 409, (state, action, response.text)
                    assert response.json()["error"]["code"] == "illegal_transition"
                    assert after == before, (state, action)
                    assert owner.balance() == balance, (state, action)
                else:
                    assert response.status_code in (200, 201), (state, action, response.text)
                    assert after["state"] == expected, (state, action)
                outcomes.append((state, action, response.status_code))
        assert len(outcomes) == len(STATES) * len(ACTIONS)
    finally:
        quick.close()
