"""Shipping over a real ``paykeep serve`` (SQLite and PostgreSQL): ship, the merchant's
tracking events, the carrier's signed webhook, the operator's confirmation — and the
authorisation matrix of every commerce object route (another merchant's id is answered
exactly like an unknown one)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from paykeep.api.routes.commerce import SIGNATURE_TOLERANCE_S, signature_header
from paykeep.clock import NS_PER_S, SystemClock
from tests.api.test_commerce import (
    assert_error,
    new_buyer,
    new_order,
    new_session,
    pay_by_card,
    unique,
)
from tests.serverproc import ServerProcess

LONG_S = 3600
_CLOCK = SystemClock()


def now_s() -> int:
    return _CLOCK.now_ns() // NS_PER_S


@pytest.fixture(scope="module")
def merchant_a(server: ServerProcess) -> Iterator[httpx.Client]:
    """Merchant 0 with timers long enough that no worker moves an order during a test."""
    merchant = server.merchant(0)
    with server.client(merchant["api_key"]) as client:
        names = ("unpaid_close_s", "ship_by_s", "confirm_after_delivery_s",
                 "confirm_after_shipping_s")  # fmt: skip
        timers = dict.fromkeys(names, LONG_S)
        changed = client.post(f"/v1/merchants/{merchant['id']}", json={"escrow_timers": timers})
        assert changed.status_code == 200, changed.text
        yield client


def paid_order(server: ServerProcess, client: httpx.Client) -> tuple[dict[str, Any], str]:
    """(order, session id) of an order its buyer has paid by card."""
    order = new_order(client, new_buyer(client)["id"])
    session = new_session(client, order["id"])
    pay_by_card(server, session["url"])
    return order, session["id"]


def tracking() -> str:
    return unique("DP").replace("-", "X") + "Q"


def ship(client: httpx.Client, order_id: str, tracking_number: str) -> dict[str, Any]:
    response = client.post(
        f"/v1/orders/{order_id}/ship",
        json={"carrier": "demo-post", "tracking_number": tracking_number},
    )
    assert response.status_code == 200, response.text
    shipped: dict[str, Any] = response.json()
    return shipped


def carrier_post(
    server: ServerProcess, body: bytes, header: str | None, carrier: str = "demo-post"
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if header is not None:
        headers["Paykeep-Signature"] = header
    with server.client() as anonymous:
        return anonymous.post(f"/v1/carriers/{carrier}/events", content=body, headers=headers)


def events_of(client: httpx.Client, shipment_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/shipments/{shipment_id}/events", params={"limit": 100})
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["data"]
    return events


def test_ship_track_deliver_by_carrier_and_confirm(
    server: ServerProcess, merchant_a: httpx.Client
) -> None:
    m = merchant_a
    order, _ = paid_order(server, m)
    number = tracking()
    shipped = ship(m, order["id"], number)
    assert shipped["id"] == order["id"] and shipped["state"] == "awaiting_receipt"
    assert shipped["timer"]["kind"] == "confirm_after_shipping"
    shipment = shipped["shipment"]
    assert shipment["tracking_number"] == number and shipment["state"] == "label_created"
    assert m.get(f"/v1/shipments/{shipment['id']}").json() == shipment
    listed = m.get("/v1/shipments", params={"order": order["id"]}).json()["data"]
    assert [s["id"] for s in listed] == [shipment["id"]]
    # The same tracking number cannot ship a second order.
    other, _ = paid_order(server, m)
    assert_error(
        m.post(f"/v1/orders/{other['id']}/ship",
               json={"carrier": "demo-post", "tracking_number": number}),
        400, "payments_input_invalid", "tracking_number",
    )  # fmt: skip

    # The merchant's own event; the same external id again records nothing new.
    for _ in range(2):
        picked = m.post(
            f"/v1/shipments/{shipment['id']}/events",
            json={"kind": "picked_up", "external_id": "scan-1"},
        )
        assert picked.status_code == 200 and picked.json()["state"] == "picked_up"
    assert [(e["kind"], e["source"]) for e in events_of(m, shipment["id"])] == [
        ("picked_up", "merchant")
    ]

    secret = server.info["carrier"]["secret"]
    body = json.dumps(
        {"tracking_number": number, "kind": "delivered", "event_id": "evt-delivered-1"}
    ).encode()
    t = now_s()
    wrong = [
        signature_header("csec_not-the-secret", t, body),  # another secret
        signature_header(secret, t, body + b" "),  # another body
        signature_header(secret, t - SIGNATURE_TOLERANCE_S - 5, body),  # too old
        signature_header(secret, t + SIGNATURE_TOLERANCE_S + 5, body),  # too far ahead
        f"t={t}",  # no signature
        "v1=" + signature_header(secret, t, body).split("v1=")[1],  # no timestamp
        "garbage",
        None,  # no header
    ]
    answers = []
    for header in wrong:
        answers.append(assert_error(carrier_post(server, body, header), 401,
                                    "carrier_signature_invalid"))  # fmt: skip
    # An unknown carrier (even with a valid signature of the real secret) looks the same.
    for carrier in ("no-such-carrier", "Bad%20Name"):
        unknown = carrier_post(server, body, signature_header(secret, t, body), carrier)
        answers.append(assert_error(unknown, 401, "carrier_signature_invalid"))
    assert len({(a["type"], a["message"], a["param"]) for a in answers}) == 1
    # Nothing changed.
    assert m.get(f"/v1/shipments/{shipment['id']}").json()["state"] == "picked_up"
    assert len(events_of(m, shipment["id"])) == 1
    assert m.get(f"/v1/orders/{order['id']}").json()["timer"]["kind"] == "confirm_after_shipping"

    header = signature_header(secret, t, body)
    delivered = carrier_post(server, body, header)
    assert delivered.status_code == 200, delivered.text
    assert delivered.json() == {"object": "carrier_event", "event_id": "evt-delivered-1",
                                "tracking_number": number, "state": "delivered"}  # fmt: skip
    after = m.get(f"/v1/orders/{order['id']}").json()
    assert after["state"] == "awaiting_receipt" and after["delivered_at"] is not None
    assert after["timer"]["kind"] == "confirm_after_delivery"
    assert abs(after["timer"]["due"] - (after["delivered_at"] + LONG_S)) <= 1
    events = events_of(m, shipment["id"])
    assert [(e["kind"], e["source"], e["external_id"]) for e in events] == [
        ("delivered", "carrier", "evt-delivered-1"), ("picked_up", "merchant", "scan-1")
    ]  # fmt: skip
    # The carrier retries the same event: accepted, nothing recorded twice.
    assert carrier_post(server, body, header).status_code == 200
    assert len(events_of(m, shipment["id"])) == 2
    assert m.get(f"/v1/orders/{order['id']}").json() == after
    # A late, older event is recorded but the state only moves forward.
    late = json.dumps(
        {"tracking_number": number, "kind": "in_transit", "event_id": "evt-2"}
    ).encode()
    moved = carrier_post(server, late, signature_header(secret, now_s(), late))
    assert moved.status_code == 200 and moved.json()["state"] == "delivered"
    assert len(events_of(m, shipment["id"])) == 3

    with server.client(server.operator_key) as op:
        confirmed = op.post(f"/v1/orders/{order['id']}/confirm")
        assert confirmed.status_code == 200, confirmed.text
        done = confirmed.json()
        assert done["state"] == "completed" and done["timer"] is None
        assert done["released_minor"] == order["amount_minor"] and done["fee_minor"] > 0
        assert_error(op.post(f"/v1/orders/{order['id']}/confirm"), 409, "illegal_transition")


def test_carrier_bodies_are_checked_after_the_signature(
    server: ServerProcess, merchant_a: httpx.Client
) -> None:
    secret = server.info["carrier"]["secret"]

    def signed(body: bytes) -> httpx.Response:
        return carrier_post(server, body, signature_header(secret, now_s(), body))

    assert_error(signed(b"{not json"), 400, "body_invalid_json")
    good = {"tracking_number": "NOPE-0000", "kind": "delivered", "event_id": "e-1"}
    assert_error(signed(json.dumps({**good, "extra": 1}).encode()), 400, "parameter_invalid",
                 "extra")  # fmt: skip
    assert_error(signed(json.dumps({**good, "kind": "lost"}).encode()), 400,
                 "parameter_invalid", "kind")  # fmt: skip
    assert_error(signed(json.dumps({**good, "occurred_at": 1.5}).encode()), 400,
                 "parameter_invalid", "occurred_at")  # fmt: skip
    assert_error(signed(json.dumps(good).encode()), 404, "resource_missing", "tracking_number")
    # An unsigned bad body is refused for its signature, before it is even parsed.
    assert_error(carrier_post(server, b"{not json", None), 401, "carrier_signature_invalid")


def test_event_times_stay_within_the_shipments_life(
    server: ServerProcess, merchant_a: httpx.Client
) -> None:
    m = merchant_a
    order, _ = paid_order(server, m)
    shipment = ship(m, order["id"], tracking())["shipment"]
    path = f"/v1/shipments/{shipment['id']}/events"
    for occurred_at in (shipment["created"] - 3600, now_s() + 3600, 0):
        assert_error(
            m.post(path, json={"kind": "delivered", "occurred_at": occurred_at}),
            400, "parameter_invalid", "occurred_at",
        )  # fmt: skip
    assert_error(m.post(path, json={"kind": "delivered", "occurred_at": 1.0 * now_s()}), 400,
                 "parameter_invalid", "occurred_at")  # fmt: skip
    assert_error(m.post(path, json={"kind": "teleported"}), 400, "parameter_invalid", "kind")
    assert m.get(f"/v1/orders/{order['id']}").json()["delivered_at"] is None
    stamped = now_s() - 10
    ok = m.post(path, json={"kind": "delivered", "occurred_at": stamped})
    assert ok.status_code == 200 and ok.json()["state"] == "delivered"
    after = m.get(f"/v1/orders/{order['id']}").json()
    assert after["delivered_at"] == stamped
    assert after["timer"] == {"kind": "confirm_after_delivery", "due": stamped + LONG_S}
    with server.client(server.operator_key) as op:
        assert_error(op.post(path, json={"kind": "delivered"}), 403, "merchant_key_required")


# -- the authorisation matrix ---------------------------------------------------------------

_ITEMS = [{"description": "Tea", "quantity": 1, "unit_amount_minor": 100}]
#: (method, path, body, expected status for both A's id and an unknown id, expected code).
#: ``{kind}`` in path or body is the id of merchant A's object of that kind.
MATRIX: list[tuple[str, str, dict[str, Any] | None, int, str]] = [
    ("GET", "/v1/merchants/{merchant}", None, 404, "resource_missing"),
    ("POST", "/v1/merchants/{merchant}", {"escrow_timers": {"ship_by_s": 7}}, 404,
     "resource_missing"),
    ("POST", "/v1/merchants/{merchant}/verify_payout_iban", None, 403, "operator_only"),
    ("GET", "/v1/api_keys/{api_key}", None, 404, "resource_missing"),
    ("POST", "/v1/api_keys/{api_key}/revoke", None, 404, "resource_missing"),
    ("POST", "/v1/api_keys", {"merchant": "{merchant}"}, 404, "resource_missing"),
    ("GET", "/v1/buyers/{buyer}", None, 404, "resource_missing"),
    ("POST", "/v1/orders", {"buyer": "{buyer}", "items": _ITEMS}, 404, "resource_missing"),
    ("GET", "/v1/orders/{order}", None, 404, "resource_missing"),
    ("POST", "/v1/orders/{order}/ship", {"carrier": "demo-post", "tracking_number": "MTX-0001"},
     404, "resource_missing"),
    ("POST", "/v1/orders/{order}/confirm", None, 403, "operator_only"),
    ("POST", "/v1/checkout_sessions", {"order": "{created_order}"}, 404, "resource_missing"),
    ("GET", "/v1/checkout_sessions/{session}", None, 404, "resource_missing"),
    ("GET", "/v1/payments/{payment}", None, 404, "resource_missing"),
    ("GET", "/v1/shipments/{shipment}", None, 404, "resource_missing"),
    ("GET", "/v1/shipments/{shipment}/events", None, 404, "resource_missing"),
    ("POST", "/v1/shipments/{shipment}/events", {"kind": "delivered"}, 404, "resource_missing"),
]  # fmt: skip
#: Well-formed ids that exist nowhere.
UNKNOWN = {
    "merchant": "mer_0000000000000000", "api_key": "key_AAAAAAAAAAAAAAAA",
    "buyer": "buy_0000000000000000", "order": "ord_0000000000000000",
    "created_order": "ord_0000000000000001", "session": "cs_0000000000000000",
    "payment": "pay_0000000000000000", "shipment": "shp_0000000000000000",
}  # fmt: skip
#: List filters of merchant B naming A's objects: always an empty list.
FILTERS = [
    ("/v1/orders", "buyer", "buyer"),
    ("/v1/payments", "order", "order"),
    ("/v1/checkout_sessions", "order", "order"),
    ("/v1/shipments", "order", "shipped_order"),
    ("/v1/api_keys", "merchant", "merchant"),
]


def _fill(template: Any, ids: dict[str, str]) -> Any:
    if isinstance(template, str):
        return template.format(**ids)
    if isinstance(template, dict):
        return {k: _fill(v, ids) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, ids) for v in template]
    return template


def _shape(error: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    """The error without what must differ: its request id and the id it names."""
    message = error["message"]
    for value in ids.values():
        message = message.replace(value, "<id>")
    return {"type": error["type"], "code": error["code"], "param": error["param"],
            "message": message}  # fmt: skip


@pytest.fixture(scope="module")
def objects_of_a(server: ServerProcess, merchant_a: httpx.Client) -> dict[str, str]:
    m = merchant_a
    order, session_id = paid_order(server, m)
    shipped, _ = paid_order(server, m)
    shipment = ship(m, shipped["id"], tracking())["shipment"]
    key = m.post("/v1/api_keys", json={"label": "matrix"}).json()
    created = new_order(m, order["buyer"])
    payment = m.get("/v1/payments", params={"order": order["id"]}).json()["data"][0]
    return {
        "merchant": server.merchant(0)["id"], "api_key": key["id"], "buyer": order["buyer"],
        "order": order["id"], "created_order": created["id"], "session": session_id,
        "payment": payment["id"], "shipment": shipment["id"], "shipped_order": shipped["id"],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    MATRIX,
    ids=[f"{m} {p}" + (" (body)" if b else "") for m, p, b, _, _ in MATRIX],
)
def test_another_merchants_object_is_answered_like_an_unknown_one(
    server: ServerProcess,
    objects_of_a: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    code: str,
) -> None:
    real_ids, unknown_ids = objects_of_a, {**UNKNOWN, "shipped_order": UNKNOWN["order"]}
    with server.client(server.merchant(2)["api_key"]) as b:
        answers, headers = [], []
        for ids in (real_ids, unknown_ids):
            response = b.request(method, _fill(path, ids), json=_fill(body, ids))
            answers.append(_shape(assert_error(response, status, code), ids))
            headers.append(set(response.headers) - {"date", "request-id", "content-length"})
        assert answers[0] == answers[1]
        assert headers[0] == headers[1]
    with server.client(server.merchant(0)["api_key"]) as a:
        if method == "GET":  # A itself sees the object: the 404 above is about B, not the id
            assert a.get(_fill(path, real_ids)).status_code == 200
        assert_unchanged(a, objects_of_a)


def test_another_merchants_ids_as_filters_match_nothing(
    server: ServerProcess, objects_of_a: dict[str, str]
) -> None:
    with server.client(server.merchant(2)["api_key"]) as b, \
            server.client(server.merchant(0)["api_key"]) as a:  # fmt: skip
        for path, name, kind in FILTERS:
            params = {name: objects_of_a[kind]}
            assert b.get(path, params=params).json()["data"] == [], path
            assert a.get(path, params=params).json()["data"] != [], path


def assert_unchanged(a: httpx.Client, objects_of_a: dict[str, str]) -> None:
    """Merchant B's refused requests changed nothing of A's."""
    assert a.get(f"/v1/orders/{objects_of_a['order']}").json()["state"] == "awaiting_shipment"
    assert a.get(f"/v1/api_keys/{objects_of_a['api_key']}").json()["revoked"] is None
    merchant = a.get(f"/v1/merchants/{objects_of_a['merchant']}").json()
    assert merchant["escrow_timers"]["ship_by_s"] == LONG_S
    assert a.get(f"/v1/shipments/{objects_of_a['shipment']}").json()["state"] == "label_created"
    assert events_of(a, objects_of_a["shipment"]) == []
    assert (
        a.get("/v1/checkout_sessions", params={"order": objects_of_a["created_order"]}).json()[
            "data"
        ]
        == []
    )
