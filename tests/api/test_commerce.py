"""/v1 commerce routes over a real ``paykeep serve`` (SQLite and PostgreSQL): merchants and
their keys, API keys, buyers, orders (errors, pagination, idempotency), checkout sessions.

Shipping, carrier webhooks and the authorisation matrix are in ``test_commerce_shipping.py``;
the pure parts (signatures, event times, in-memory pages) in ``test_commerce_pure.py``.
"""

from __future__ import annotations

import itertools
import json
from types import EllipsisType
from typing import Any

import httpx
import pytest

from tests.serverproc import ServerProcess

ERROR_FIELDS = {"type", "code", "message", "param", "request_id"}
_counter = itertools.count()


# -- helpers (also used by the other commerce test modules) ---------------------------------


def assert_error(
    response: httpx.Response,
    status: int,
    code: str,
    param: str | EllipsisType | None = ...,
) -> dict[str, Any]:
    """The one error shape, with the request id of the response; returns ``error``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert set(document) == {"error"}
    error: dict[str, Any] = document["error"]
    assert set(error) == ERROR_FIELDS
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    if response.headers.get("Idempotent-Replayed") != "true":
        assert error["request_id"] == response.headers["Request-Id"]
    else:  # a replay is the first answer, word for word
        assert error["request_id"].startswith("req_")
    if param is not ...:
        assert error["param"] == param, error
    return error


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}"


def new_buyer(client: httpx.Client, name: str = "Ada Buyer") -> dict[str, Any]:
    response = client.post(
        "/v1/buyers", json={"name": name, "email": f"{unique('ada')}@example.com"}
    )
    assert response.status_code == 201, response.text
    buyer: dict[str, Any] = response.json()
    return buyer


def new_order(client: httpx.Client, buyer_id: str, amount_minor: int = 1250) -> dict[str, Any]:
    response = client.post(
        "/v1/orders",
        json={
            "buyer": buyer_id,
            "items": [
                {"description": "Green tea 250 g", "quantity": 1, "unit_amount_minor": amount_minor}
            ],
            "merchant_reference": unique("A"),
        },
    )
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


def new_session(client: httpx.Client, order_id: str) -> dict[str, Any]:
    response = client.post("/v1/checkout_sessions", json={"order": order_id})
    assert response.status_code == 201, response.text
    session: dict[str, Any] = response.json()
    return session


def pay_by_card(server: ServerProcess, session_url: str) -> dict[str, Any]:
    """The buyer pays the session's order with banksim's approving test card (the checkout
    JSON endpoint: the token is the last segment of the URL)."""
    token = session_url.rsplit("/", 1)[1]
    with server.client() as buyer:
        response = buyer.post(
            f"/v1/checkout/{token}/pay",
            json={
                "method": "card",
                "card": {"number": "4111111111111111", "exp_month": 12, "exp_year": 2029,
                         "cvc": "123"},
            },
        )  # fmt: skip
    assert response.status_code == 200, response.text
    paid: dict[str, Any] = response.json()
    assert paid["order"]["state"] == "awaiting_shipment"
    return paid


def all_pages(client: httpx.Client, path: str, limit: int, **params: str) -> list[list[str]]:
    """The ids of every page of a list, following ``starting_after`` while ``has_more``."""
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        query: dict[str, str | int] = {"limit": limit, **params}
        if cursor is not None:
            query["starting_after"] = cursor
        response = client.get(path, params=query)
        assert response.status_code == 200, response.text
        document = response.json()
        assert document["object"] == "list" and document["url"] == path
        ids = [row["id"] for row in document["data"]]
        assert len(ids) <= limit
        pages.append(ids)
        if not document["has_more"]:
            return pages
        assert len(ids) == limit
        cursor = ids[-1]


def merchant_body(**extra: Any) -> dict[str, Any]:
    return {"legal_name": unique("Bicycle Parts BV"), "country": "NL", **extra}


# -- merchants ------------------------------------------------------------------------------


def test_operator_creates_a_merchant_whose_key_works_once(server: ServerProcess) -> None:
    body = merchant_body(
        payout_iban="NL91ABNA0417164300",
        fee_plan={"percent_bp": 150},
        escrow_timers={"ship_by_s": 3600},
    )
    headers = {"Idempotency-Key": unique("merchant")}
    with server.client(server.operator_key) as op:
        created = op.post("/v1/merchants", json=body, headers=headers)
        assert created.status_code == 201, created.text
        merchant = created.json()
        assert merchant["object"] == "merchant" and merchant["id"].startswith("mer_")
        assert merchant["payout_iban"] == "****4300" and not merchant["payout_iban_verified"]
        # Partial fee plan and timers: the rest are the defaults.
        assert merchant["fee_plan"]["percent_bp"] == 150
        assert merchant["fee_plan"]["fixed_minor"] == 30
        assert merchant["escrow_timers"]["ship_by_s"] == 3600
        assert merchant["escrow_timers"]["unpaid_close_s"] == 1800
        key = merchant["api_key"]
        assert key.startswith("sk_test_")

        replay = op.post("/v1/merchants", json=body, headers=headers)
        assert replay.status_code == 201
        assert replay.headers["Idempotent-Replayed"] == "true"
        again = replay.json()
        assert again["id"] == merchant["id"] and again["api_key"] is None
        assert {k: v for k, v in again.items() if k != "api_key"} == {
            k: v for k, v in merchant.items() if k != "api_key"
        }
        keys = op.get("/v1/api_keys", params={"merchant": merchant["id"]}).json()["data"]
        assert len(keys) == 1  # the replay made no second key
        assert merchant["api_key"].startswith(keys[0]["prefix"])

    with server.client(key) as m:
        me = m.get("/v1/whoami").json()
        assert me["role"] == "merchant" and me["merchant"] == merchant["id"]
        assert m.get(f"/v1/merchants/{merchant['id']}").json()["legal_name"] == body["legal_name"]


def test_merchant_cannot_create_or_list_merchants(server: ServerProcess) -> None:
    body = merchant_body()
    with server.client(server.merchant(0)["api_key"]) as m:
        assert_error(m.post("/v1/merchants", json=body), 403, "operator_only")
        assert_error(m.get("/v1/merchants"), 403, "operator_only")
    with server.client(server.operator_key) as op:
        names = {row["legal_name"] for row in op.get("/v1/merchants?limit=100").json()["data"]}
    assert body["legal_name"] not in names


def test_merchant_bodies_are_checked(server: ServerProcess) -> None:
    with server.client(server.operator_key) as op:
        assert_error(
            op.post("/v1/merchants", json=merchant_body(status="verified")),
            400, "parameter_invalid", "status",
        )  # fmt: skip
        assert_error(
            op.post("/v1/merchants", json=merchant_body(fee_plan={"percent_bp": 1.5})),
            400, "parameter_invalid", "fee_plan.percent_bp",
        )  # fmt: skip
        assert_error(
            op.post("/v1/merchants", json=merchant_body(country="Netherlands")),
            400, "payments_input_invalid", "country",
        )  # fmt: skip
        assert_error(
            op.post("/v1/merchants", json=merchant_body(payout_iban="NL00BANK0000000000")),
            400, "payments_input_invalid", "payout_iban",
        )  # fmt: skip


def test_merchants_list_paginates_newest_first(server: ServerProcess) -> None:
    with server.client(server.operator_key) as op:
        made = [op.post("/v1/merchants", json=merchant_body()).json()["id"] for _ in range(3)]
        pages = all_pages(op, "/v1/merchants", limit=2)
    ids = [i for page in pages for i in page]
    assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))
    assert ids[:3] == made[::-1]
    assert {server.merchant(i)["id"] for i in range(3)} <= set(ids)


def test_merchant_changes_its_timers_but_not_its_fee_plan(server: ServerProcess) -> None:
    with server.client(server.operator_key) as op:
        created = op.post("/v1/merchants", json=merchant_body()).json()
    merchant_id, key = created["id"], created["api_key"]
    with server.client(key) as m:
        updated = m.post(
            f"/v1/merchants/{merchant_id}", json={"escrow_timers": {"confirm_after_delivery_s": 5}}
        )
        assert updated.status_code == 200, updated.text
        timers = updated.json()["escrow_timers"]
        assert timers == {**created["escrow_timers"], "confirm_after_delivery_s": 5}
        assert_error(
            m.post(f"/v1/merchants/{merchant_id}", json={"fee_plan": {"percent_bp": 0}}),
            403, "operator_only", "fee_plan",
        )  # fmt: skip
        assert_error(
            m.post(f"/v1/merchants/{merchant_id}", json={"escrow_timers": {"ship_by_s": 0}}),
            400, "payments_input_invalid", "ship_by_s",
        )  # fmt: skip
        assert m.get(f"/v1/merchants/{merchant_id}").json()["fee_plan"] == created["fee_plan"]
    with server.client(server.operator_key) as op:
        changed = op.post(f"/v1/merchants/{merchant_id}", json={"fee_plan": {"fixed_minor": 0}})
        assert changed.status_code == 200
        assert changed.json()["fee_plan"] == {**created["fee_plan"], "fixed_minor": 0}
        assert changed.json()["escrow_timers"]["confirm_after_delivery_s"] == 5


def test_a_new_payout_iban_needs_the_operators_verification(server: ServerProcess) -> None:
    with server.client(server.operator_key) as op:
        created = op.post("/v1/merchants", json=merchant_body()).json()
        merchant_id = created["id"]
        # No IBAN yet: nothing to verify.
        assert_error(
            op.post(f"/v1/merchants/{merchant_id}/verify_payout_iban"), 409, "illegal_transition"
        )
        with server.client(created["api_key"]) as m:
            changed = m.post(
                f"/v1/merchants/{merchant_id}", json={"payout_iban": "GB29NWBK60161331926819"}
            )
            assert changed.json()["payout_iban"] == "****6819"
            assert changed.json()["payout_iban_verified"] is False
            assert_error(
                m.post(f"/v1/merchants/{merchant_id}/verify_payout_iban"), 403, "operator_only"
            )
        verified = op.post(f"/v1/merchants/{merchant_id}/verify_payout_iban")
        assert verified.status_code == 200 and verified.json()["payout_iban_verified"] is True


# -- API keys -------------------------------------------------------------------------------


def test_api_keys_create_list_and_revoke(server: ServerProcess) -> None:
    merchant = server.merchant(1)
    headers = {"Idempotency-Key": unique("key")}
    with server.client(merchant["api_key"]) as m:
        created = m.post("/v1/api_keys", json={"label": "checkout server"}, headers=headers)
        assert created.status_code == 201, created.text
        key = created.json()
        assert key["merchant_id"] == merchant["id"] and key["role"] == "merchant"
        assert key["secret"].startswith(key["prefix"]) and key["label"] == "checkout server"
        replay = m.post("/v1/api_keys", json={"label": "checkout server"}, headers=headers)
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json() == {**key, "secret": None}
        other = m.post("/v1/api_keys", json={"label": "other"}, headers=headers)
        assert_error(other, 409, "idempotency_key_reused")

        listed = m.get("/v1/api_keys").json()["data"]
        assert [k["id"] for k in listed].count(key["id"]) == 1
        assert all("secret" not in k for k in listed)
        assert {k["merchant_id"] for k in listed} == {merchant["id"]}
        assert_error(m.get("/v1/api_keys", params={"starting_after": "key_nope"}), 400,
                     "parameter_invalid", "starting_after")  # fmt: skip
        # A merchant asking for another merchant's keys sees none.
        assert (
            m.get("/v1/api_keys", params={"merchant": server.merchant(0)["id"]}).json()["data"]
            == []
        )

    with server.client(key["secret"]) as fresh:
        assert fresh.get("/v1/whoami").json()["merchant"] == merchant["id"]
        revoked = fresh.post(f"/v1/api_keys/{key['id']}/revoke")
        assert revoked.status_code == 200 and revoked.json()["revoked"] is not None
        # The serving process forgets the key at once.
        assert_error(fresh.get("/v1/whoami"), 401, "api_key_invalid")
    with server.client(merchant["api_key"]) as m:
        again = m.post(f"/v1/api_keys/{key['id']}/revoke")  # idempotent
        assert again.status_code == 200 and again.json()["revoked"] == revoked.json()["revoked"]


def test_the_operator_creates_keys_for_a_merchant_only(server: ServerProcess) -> None:
    with server.client(server.operator_key) as op:
        assert_error(op.post("/v1/api_keys", json={}), 400, "parameter_invalid", "merchant")
        assert_error(
            op.post("/v1/api_keys", json={"merchant": "mer_0000000000000000"}),
            404, "resource_missing", "merchant",
        )  # fmt: skip
        made = op.post("/v1/api_keys", json={"merchant": server.merchant(2)["id"]})
        assert made.status_code == 201
        operator_keys = op.get("/v1/api_keys").json()["data"]
        assert {k["role"] for k in operator_keys} == {"operator"}
    with server.client(made.json()["secret"]) as m:
        assert m.get("/v1/whoami").json()["merchant"] == server.merchant(2)["id"]


# -- buyers ---------------------------------------------------------------------------------


def test_a_buyer_belongs_to_the_merchant_that_created_it(server: ServerProcess) -> None:
    a, b = server.merchant(0), server.merchant(1)
    with server.client(a["api_key"]) as ma, server.client(b["api_key"]) as mb:
        buyer = new_buyer(ma, "Grace Hopper")
        assert buyer["merchant"] == a["id"] and buyer["email"].startswith("a***@")
        assert "Grace" not in str(buyer)  # the name is never shown, the email masked
        assert ma.get(f"/v1/buyers/{buyer['id']}").json() == buyer
        hidden = mb.get(f"/v1/buyers/{buyer['id']}")
        unknown = mb.get("/v1/buyers/buy_0000000000000000")
        assert_error(hidden, 404, "resource_missing")
        assert_error(unknown, 404, "resource_missing")
        assert buyer["id"] not in [x["id"] for x in mb.get("/v1/buyers?limit=100").json()["data"]]
        assert buyer["id"] in [x["id"] for x in ma.get("/v1/buyers?limit=100").json()["data"]]
        assert_error(
            mb.post("/v1/orders", json={"buyer": buyer["id"], "items": [
                {"description": "x", "quantity": 1, "unit_amount_minor": 1}]}),
            404, "resource_missing", "buyer",
        )  # fmt: skip
    with server.client(server.operator_key) as op:
        assert op.get(f"/v1/buyers/{buyer['id']}").json() == buyer
        own = op.post("/v1/buyers", json={"name": "Platform Buyer", "email": "p@example.com"})
        assert own.status_code == 201 and own.json()["merchant"] is None


# -- orders ---------------------------------------------------------------------------------

_ITEM = {"description": "Green tea 250 g", "quantity": 2, "unit_amount_minor": 1250}
#: (case, body changes, status, code, param): each bad body, one broken rule at a time.
BAD_ORDER_BODIES: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    ("extra field", {"amount_minor": 1}, 400, "parameter_invalid", "amount_minor"),
    ("extra item field", {"items": [{**_ITEM, "amount_minor": 1}]}, 400, "parameter_invalid",
     "items.0.amount_minor"),
    ("float amount", {"items": [{**_ITEM, "unit_amount_minor": 12.5}]}, 400,
     "parameter_invalid", "items.0.unit_amount_minor"),
    ("integral float amount", {"items": [{**_ITEM, "unit_amount_minor": 1250.0}]}, 400,
     "parameter_invalid", "items.0.unit_amount_minor"),
    ("string quantity", {"items": [{**_ITEM, "quantity": "2"}]}, 400, "parameter_invalid",
     "items.0.quantity"),
    ("missing items", {"items": None}, 400, "parameter_invalid", "items"),
    ("no items", {"items": []}, 400, "payments_input_invalid", "items"),
    ("zero quantity", {"items": [{**_ITEM, "quantity": 0}]}, 400, "payments_input_invalid",
     "items.0.quantity"),
    ("negative amount", {"items": [{**_ITEM, "unit_amount_minor": -5}]}, 400,
     "payments_input_invalid", "items.0.unit_amount_minor"),
    ("bad currency", {"currency": "XXY"}, 400, "payments_input_invalid", "currency"),
    ("unknown buyer", {"buyer": "buy_0000000000000000"}, 404, "resource_missing", "buyer"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "status", "code", "param"),
    [case[1:] for case in BAD_ORDER_BODIES],
    ids=[case[0] for case in BAD_ORDER_BODIES],
)
def test_bad_order_bodies(
    server: ServerProcess, changes: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    with server.client(server.merchant(0)["api_key"]) as m:
        buyer = new_buyer(m)
        body = {"buyer": buyer["id"], "items": [_ITEM], **changes}
        body = {k: v for k, v in body.items() if v is not None}
        before = m.get("/v1/orders", params={"buyer": buyer["id"]}).json()["data"]
        assert_error(m.post("/v1/orders", json=body), status, code, param)
        assert m.get("/v1/orders", params={"buyer": buyer["id"]}).json()["data"] == before == []


def test_a_body_that_is_not_a_json_object(server: ServerProcess) -> None:
    with server.client(server.merchant(0)["api_key"]) as m:
        assert_error(
            m.post("/v1/orders", content=b"{", headers={"content-type": "application/json"}),
            400, "body_invalid_json",
        )  # fmt: skip
        assert_error(m.post("/v1/orders", json=[1, 2]), 400, "parameter_invalid")


def test_orders_list_newest_first_with_filters_and_pages(server: ServerProcess) -> None:
    with server.client(server.merchant(0)["api_key"]) as m:
        buyer = new_buyer(m)
        made = [new_order(m, buyer["id"], amount_minor=100 + i)["id"] for i in range(5)]
        pages = all_pages(m, "/v1/orders", limit=2, buyer=buyer["id"])
        assert pages == [made[4:2:-1], made[2:0:-1], made[0:1]]
        first = m.get("/v1/orders", params={"buyer": buyer["id"], "limit": 5}).json()
        assert first["has_more"] is False
        assert [o["amount_minor"] for o in first["data"]] == [104, 103, 102, 101, 100]
        # List rows carry their items like the single object.
        assert first["data"][0] == m.get(f"/v1/orders/{made[4]}").json()
        assert first["data"][0]["items"][0]["amount_minor"] == 104
        created = m.get("/v1/orders", params={"buyer": buyer["id"], "state": "created"}).json()
        assert len(created["data"]) == 5
        none = m.get("/v1/orders", params={"buyer": buyer["id"], "state": "completed"}).json()
        assert none["data"] == [] and none["has_more"] is False
        assert_error(m.get("/v1/orders", params={"state": "lost"}), 400, "parameter_invalid",
                     "state")  # fmt: skip
        assert_error(m.get("/v1/orders", params={"limit": 0}), 400, "parameter_invalid", "limit")
        assert_error(m.get("/v1/orders", params={"limit": 101}), 400, "parameter_invalid")
    with server.client(server.merchant(1)["api_key"]) as other:
        assert other.get("/v1/orders", params={"buyer": buyer["id"]}).json()["data"] == []


def test_order_creation_is_idempotent(server: ServerProcess) -> None:
    with server.client(server.merchant(0)["api_key"]) as m:
        buyer = new_buyer(m)
        body = {"buyer": buyer["id"], "items": [_ITEM], "description": "two teas"}
        headers = {"Idempotency-Key": unique("order")}
        first = m.post("/v1/orders", json=body, headers=headers)
        assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
        # Same key, same body (keys in another order): the same order, replayed.
        reordered = dict(reversed(list(body.items())))
        second = m.post("/v1/orders", json=reordered, headers=headers)
        assert second.status_code == 201
        assert second.headers["Idempotent-Replayed"] == "true"
        assert second.json() == first.json()
        other = m.post("/v1/orders", json={**body, "description": "three teas"}, headers=headers)
        assert_error(other, 409, "idempotency_key_reused", "Idempotency-Key")
        listed = m.get("/v1/orders", params={"buyer": buyer["id"]}).json()["data"]
        assert [o["id"] for o in listed] == [first.json()["id"]]
        # A failed request's answer is replayed too (its effect never happened).
        bad_headers = {"Idempotency-Key": unique("order")}
        bad = {**body, "buyer": "buy_0000000000000000"}
        assert_error(m.post("/v1/orders", json=bad, headers=bad_headers), 404, "resource_missing")
        replayed = m.post("/v1/orders", json=bad, headers=bad_headers)
        assert_error(replayed, 404, "resource_missing")
        assert replayed.headers["Idempotent-Replayed"] == "true"


def test_only_a_merchant_creates_orders_and_sessions(server: ServerProcess) -> None:
    with server.client(server.merchant(0)["api_key"]) as m:
        order = new_order(m, new_buyer(m)["id"])
    with server.client(server.operator_key) as op:
        buyer = op.post("/v1/buyers", json={"name": "Op Buyer", "email": "o@example.com"}).json()
        assert_error(
            op.post("/v1/orders", json={"buyer": buyer["id"], "items": [_ITEM]}),
            403, "merchant_key_required",
        )  # fmt: skip
        assert_error(
            op.post("/v1/checkout_sessions", json={"order": order["id"]}),
            403, "merchant_key_required",
        )  # fmt: skip
        # The operator reads every merchant's orders.
        assert op.get(f"/v1/orders/{order['id']}").json() == order


def test_operator_confirm_needs_a_shipped_order(server: ServerProcess) -> None:
    with server.client(server.merchant(0)["api_key"]) as m:
        order = new_order(m, new_buyer(m)["id"])
        assert_error(m.post(f"/v1/orders/{order['id']}/confirm"), 403, "operator_only")
        assert_error(
            m.post(f"/v1/orders/{order['id']}/ship",
                   json={"carrier": "demo-post", "tracking_number": "UNPAID-0001"}),
            409, "illegal_transition",
        )  # fmt: skip
    with server.client(server.operator_key) as op:
        assert_error(op.post(f"/v1/orders/{order['id']}/confirm"), 409, "illegal_transition")
        assert op.get(f"/v1/orders/{order['id']}").json()["state"] == "created"


# -- checkout sessions ----------------------------------------------------------------------


def test_a_checkout_sessions_url_is_shown_once(server: ServerProcess) -> None:
    with server.client(server.merchant(0)["api_key"]) as m:
        order = new_order(m, new_buyer(m)["id"])
        headers = {"Idempotency-Key": unique("session")}
        body = {"order": order["id"], "success_url": "https://shop.example/thanks"}
        created = m.post("/v1/checkout_sessions", json=body, headers=headers)
        assert created.status_code == 201, created.text
        session = created.json()
        assert session["url"].startswith(f"{server.url}/checkout/cs_")
        assert session["state"] == "open" and session["order"] == order["id"]
        replay = m.post("/v1/checkout_sessions", json=body, headers=headers)
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json() == {**session, "url": None}
        fetched = m.get(f"/v1/checkout_sessions/{session['id']}").json()
        assert fetched == {**session, "url": None}
        listed = m.get("/v1/checkout_sessions", params={"order": order["id"]}).json()["data"]
        assert [s["id"] for s in listed] == [session["id"]]
        assert all(s["url"] is None for s in listed)
        # The buyer's page answers at the URL (its token was never stored in plain text).
        with server.client() as browser:
            assert browser.get(session["url"]).status_code == 200
        assert_error(
            m.post("/v1/checkout_sessions", json={"order": order["id"], "success_url": "ftp://x"}),
            400, "payments_input_invalid", "success_url",
        )  # fmt: skip
        pay_by_card(server, session["url"])
        assert_error(m.post("/v1/checkout_sessions", json={"order": order["id"]}), 409,
                     "illegal_transition")  # fmt: skip
        payments = m.get("/v1/payments", params={"order": order["id"]}).json()["data"]
        assert len(payments) == 1 and payments[0]["state"] == "succeeded"
        assert payments[0]["card"] == {"brand": "visa", "last4": "1111"}
        assert m.get(f"/v1/payments/{payments[0]['id']}").json() == payments[0]
        assert m.get(f"/v1/checkout_sessions/{session['id']}").json()["state"] == "complete"


# -- the OpenAPI document -------------------------------------------------------------------


def test_every_commerce_route_is_documented(server: ServerProcess) -> None:
    from fastapi.routing import APIRoute

    from paykeep.api.routes.commerce import router

    with server.client() as anonymous:
        document = anonymous.get("/openapi.json").json()
    operations = {
        (method, route.path): document["paths"][route.path][method.lower()]
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    assert len(operations) == 28  # 27 + the operator's end of a buyer's sessions
    for (method, path), operation in operations.items():
        assert operation.get("summary"), (method, path)
        assert "422" not in operation["responses"], (method, path)
        secured = "security" in operation
        assert secured == (path != "/v1/carriers/{carrier}/events"), (method, path)
    carrier = operations[("POST", "/v1/carriers/{carrier}/events")]
    assert "Paykeep-Signature" in carrier["description"]
    assert "application/json" in carrier["requestBody"]["content"]
    assert [p["name"] for p in carrier["parameters"]].count("Paykeep-Signature") == 1
    assert json.dumps(document)  # no $ref to a schema that was never defined:
    refs = {ref for ref in _refs(document) if ref.startswith("#/components/schemas/")}
    assert {ref.rsplit("/", 1)[1] for ref in refs} <= set(document["components"]["schemas"])


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []
