"""Buyer sign-in over real HTTP against a real ``paykeep serve`` (SQLite and PostgreSQL).

The merchant creates the checkout session, so it holds the checkout token: with it alone it
must not pay from its buyer's wallet, confirm receipt (releasing the escrow to itself) or
withdraw its buyer's refund request. Each is refused (401 ``buyer_authentication_required``)
with nothing changed — balances, ledger, order, refund — with the token only, with a forged
session and with another buyer's session; then the buyer signs in (the code read from the
server's mail folder) and each works. Then the code's rules: wrong, reused, exhausted,
expired (a server with a one-second code lifetime), the hourly limit, idempotent retries,
and nothing of the code or the address in the server's log.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from paykeep.buyer_mailbox import latest_code, sign_in
from paykeep.payments.buyer_auth import (
    BUYER_CODE_ATTEMPTS_MAX,
    BUYER_CODES_PER_WINDOW_MAX,
    BUYER_SESSION_HEADER,
)
from tests.api.test_money_routes import Shop, assert_error, send_bank_transfer, wait_for
from tests.serverproc import ServerProcess

H = BUYER_SESSION_HEADER


@pytest.fixture
def shop(server: ServerProcess) -> Iterator[Shop]:
    opened = Shop.open(server)
    yield opened
    opened.close()


def funded_buyer(shop: Shop, amount: int) -> dict[str, Any]:
    """A buyer whose wallet holds ``amount`` (a bank transfer with the buyer's reference)."""
    buyer = shop.buyer()
    send_bank_transfer(shop.server, buyer["payment_reference"], amount)
    wait_for("the top-up", lambda: shop.wallet(buyer["id"]) == (amount, 0), timeout_s=30)
    return buyer


def snapshot(shop: Shop, buyer_id: str, order_id: str) -> tuple[Any, ...]:
    """What a refused move must leave as it was: the buyer's wallet, the merchant's balance,
    the ledger transfers on both, the order and its refunds."""
    order = shop.get_order(order_id)
    refunds = shop.http.get("/v1/refunds", params={"order": order_id}).json()["data"]
    return (
        shop.wallet(buyer_id),
        shop.balance(),
        shop.operator.get(
            "/v1/ledger/transfers", params={"account": f"buyer:{buyer_id}:wallet:EUR"}
        ).json(),
        shop.transfers(f"merchant:{shop.id}:available:EUR")["data"],
        order,
        [(r["id"], r["state"]) for r in refunds],
    )


def test_the_merchant_cannot_act_as_its_buyer(shop: Shop, server: ServerProcess) -> None:
    buyer = funded_buyer(shop, 5_000)
    order, token = shop.order(buyer["id"], 2_000)
    other = shop.buyer()
    _other_order, other_token = shop.order(other["id"], 100)
    foreign = shop.as_buyer(other_token)  # another buyer of the same merchant, signed in
    merchant = shop.http  # the merchant's own client: it knows the token from the session
    impostors: list[dict[str, str]] = [{}, {H: "bs_forged"}, foreign, {H: token}]

    def refused(path: str, body: dict[str, Any] | None = None) -> None:
        before = snapshot(shop, buyer["id"], order["id"])
        for headers in impostors:
            for client in (merchant, shop.buyer_http):
                answer = client.post(path, json=body or {}, headers=headers)
                error = assert_error(answer, 401, "buyer_authentication_required")
                assert error["type"] == "authentication_error"
                assert "Retry-After" not in answer.headers
        assert snapshot(shop, buyer["id"], order["id"]) == before

    # 1. paying from the buyer's wallet
    refused(f"/v1/checkout/{token}/pay", {"method": "wallet"})
    assert shop.wallet(buyer["id"]) == (5_000, 0)
    paid = shop.pay(token, {"method": "wallet"}, headers=shop.as_buyer(token))
    assert paid.status_code == 200, paid.text
    assert paid.json()["order"]["state"] == "awaiting_shipment"
    assert shop.wallet(buyer["id"]) == (3_000, 2_000)

    # 2. asking for a refund needs only the token; withdrawing it needs the buyer
    asked = shop.buyer_http.post(f"/v1/checkout/{token}/refunds", json={"reason": "late"})
    assert asked.status_code == 201, asked.text
    rid = asked.json()["id"]
    refused(f"/v1/checkout/{token}/refunds/{rid}/cancel")
    cancelled = shop.buyer_http.post(
        f"/v1/checkout/{token}/refunds/{rid}/cancel", headers=shop.as_buyer(token)
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"

    # 3. confirming receipt (the release of the escrow to the merchant)
    shop.ship(order["id"])
    refused(f"/v1/checkout/{token}/confirm")
    assert shop.balance()["pending_minor"] == 2_000
    confirmed = shop.confirm(token)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["state"] == "completed"
    assert shop.balance()["pending_minor"] == 0
    # nothing of the codes or the addresses reached the server's log
    log = server.log()
    assert buyer["payment_reference"] not in log
    for email in shop.emails.values():
        assert email not in log


def test_a_refused_move_is_not_stored_as_the_keys_answer(shop: Shop) -> None:
    """The 401 is answered before the Idempotency-Key is claimed: the buyer's retry with the
    same key and its session runs (a stored 401 would be replayed forever)."""
    buyer = funded_buyer(shop, 1_000)
    _order, token = shop.order(buyer["id"], 1_000)
    key = {"Idempotency-Key": f"wallet-{uuid.uuid4().hex}"}
    first = shop.pay(token, {"method": "wallet"}, headers=key)
    assert_error(first, 401, "buyer_authentication_required")
    second = shop.pay(token, {"method": "wallet"}, headers={**key, **shop.as_buyer(token)})
    assert second.status_code == 200, second.text
    assert "Idempotent-Replayed" not in second.headers
    third = shop.pay(token, {"method": "wallet"}, headers={**key, **shop.as_buyer(token)})
    assert third.headers.get("Idempotent-Replayed") == "true"
    assert third.json() == second.json()


def _mails_to(server: ServerProcess, address: str) -> int:
    import email
    from email import policy

    count = 0
    for path in server.mail_dir.glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        count += str(message["To"]) == address
    return count


def test_sign_in_answers_and_code_rules(shop: Shop, server: ServerProcess) -> None:
    buyer = shop.buyer()
    address = shop.emails[buyer["id"]]
    _order, token = shop.order(buyer["id"], 500)
    http = shop.buyer_http

    key = {"Idempotency-Key": f"sign-in-{uuid.uuid4().hex}"}
    sent = http.post(f"/v1/checkout/{token}/sign_in", headers=key)
    assert sent.status_code == 202, sent.text
    document = sent.json()
    assert document["object"] == "buyer_sign_in"
    assert document["email"] == address[0] + "***@example.com"
    assert 590 <= document["expires_at"] - time.time() <= 610
    assert _mails_to(server, address) == 1
    # a retry with the same key replays the answer and sends nothing
    again = http.post(f"/v1/checkout/{token}/sign_in", headers=key)
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json() == document
    assert _mails_to(server, address) == 1
    code = latest_code(server.mail_dir, address)
    assert code is not None
    wrong = f"{(int(code) + 1) % 10**6:06d}"

    verify = f"/v1/checkout/{token}/sign_in/verify"
    assert_error(http.post(verify, json={"code": "12345"}), 400, "parameter_invalid")
    assert_error(http.post(verify, json={"code": "abcdef"}), 400, "parameter_invalid")
    assert_error(http.post(verify, json={"code": wrong}), 400, "buyer_code_invalid")
    key = {"Idempotency-Key": f"verify-{uuid.uuid4().hex}"}
    signed = http.post(verify, json={"code": code}, headers=key)
    assert signed.status_code == 200, signed.text
    session = signed.json()
    assert session["object"] == "buyer_session" and session["buyer"] == buyer["id"]
    assert session["buyer_session"].startswith("bs_") and len(session["buyer_session"]) >= 46
    # the session token is shown once: a replay answers null
    replay = http.post(verify, json={"code": code}, headers=key)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["buyer_session"] is None
    # a used code is dead
    assert_error(http.post(verify, json={"code": code}), 400, "buyer_code_invalid")
    assert session["buyer_session"] not in server.log() and code not in server.log()

    # a new code: five wrong guesses kill it, the right one is then refused too
    assert http.post(f"/v1/checkout/{token}/sign_in").status_code == 202
    code = latest_code(server.mail_dir, address)
    assert code is not None
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(BUYER_CODE_ATTEMPTS_MAX - 1):
        assert_error(http.post(verify, json={"code": wrong}), 400, "buyer_code_invalid")
    assert_error(http.post(verify, json={"code": wrong}), 400, "buyer_code_attempts_exceeded")
    assert_error(http.post(verify, json={"code": code}), 400, "buyer_code_attempts_exceeded")

    # the hourly limit: 5 codes per buyer (two sent above), across the buyer's checkouts
    _order2, token2 = shop.order(buyer["id"], 600)
    for _ in range(BUYER_CODES_PER_WINDOW_MAX - 2):
        assert http.post(f"/v1/checkout/{token2}/sign_in").status_code == 202
    limited = http.post(f"/v1/checkout/{token}/sign_in")
    assert_error(limited, 429, "buyer_code_rate_limited")
    assert limited.headers.get("Retry-After")
    assert _mails_to(server, address) == BUYER_CODES_PER_WINDOW_MAX
    # an unknown checkout is 404 on both steps
    assert_error(http.post("/v1/checkout/cs_nope/sign_in"), 404, "resource_missing")
    assert_error(http.post("/v1/checkout/cs_nope/sign_in/verify", json={"code": "123456"}),
                 404, "resource_missing")  # fmt: skip


def test_a_session_works_on_every_checkout_of_its_buyer_only(shop: Shop) -> None:
    buyer = shop.buyer()
    order1, token1 = shop.order(buyer["id"], 700)
    order2, token2 = shop.order(buyer["id"], 800)
    headers = shop.as_buyer(token1)  # signed in through the first checkout
    for order, token in ((order1, token1), (order2, token2)):
        assert shop.pay(token).status_code == 200  # by card: no session needed
        shop.ship(order["id"])
        confirmed = shop.buyer_http.post(f"/v1/checkout/{token}/confirm", headers=headers)
        assert confirmed.status_code == 200, confirmed.text


def test_the_buyer_signs_out_here_or_everywhere(shop: Shop) -> None:
    buyer = shop.buyer()
    order, token = shop.order(buyer["id"], 600)
    assert shop.pay(token).status_code == 200
    shop.ship(order["id"])

    def new_session() -> dict[str, str]:
        return {H: sign_in(shop.buyer_http, shop.server.mail_dir, token, shop.emails[buyer["id"]])}

    def post(path: str, headers: dict[str, str], body: Any = None) -> httpx.Response:
        return shop.buyer_http.post(f"/v1/checkout/{token}/{path}", headers=headers, json=body)

    first, second = new_session(), new_session()
    other = shop.buyer()
    _other_order, other_token = shop.order(other["id"], 100)
    foreign = shop.as_buyer(other_token)
    # Neither the token alone nor another buyer's session signs this buyer out.
    for headers in ({}, foreign, {H: token}, {H: "bs_forged"}):
        assert_error(post("sign_out", headers), 401, "buyer_authentication_required")
    ended = post("sign_out", first)
    assert ended.status_code == 200, ended.text
    assert ended.json() == {"object": "buyer_sign_out", "sessions_ended": 1}
    assert_error(post("confirm", first), 401, "buyer_authentication_required")
    assert_error(post("sign_out", first), 401, "buyer_authentication_required")
    # `everywhere` ends every session of the buyer, the other buyer's stays.
    third = new_session()
    ended = post("sign_out", third, {"everywhere": True})
    assert ended.json()["sessions_ended"] == 2  # second and third
    for gone in (second, third):
        assert_error(post("confirm", gone), 401, "buyer_authentication_required")
    assert shop.get_order(order["id"])["state"] == "awaiting_receipt"  # nothing moved
    assert_error(post("sign_out", third, {"everywhere": "yes"}), 400, "parameter_invalid")
    assert shop.buyer_http.get(f"/v1/checkout/{other_token}").status_code == 200
    foreign_out = shop.buyer_http.post(f"/v1/checkout/{other_token}/sign_out", headers=foreign)
    assert foreign_out.json()["sessions_ended"] == 1  # it was still live
    # Signed in again, the buyer confirms.
    assert post("confirm", new_session()).status_code == 200


def test_openapi_documents_the_requirement(server: ServerProcess) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    for path in ("/v1/checkout/{token}/confirm", "/v1/checkout/{token}/refunds/{refund_id}/cancel",
                 "/v1/checkout/{token}/pay"):  # fmt: skip
        operation = spec["paths"][path]["post"]
        assert "Paykeep-Buyer-Session" in operation["description"]
        assert "401" in operation["responses"]
        assert any(p["name"] == BUYER_SESSION_HEADER for p in operation["parameters"])
    assert "/v1/checkout/{token}/sign_in" in spec["paths"]
    assert "/v1/checkout/{token}/sign_in/verify" in spec["paths"]
    sign_out = spec["paths"]["/v1/checkout/{token}/sign_out"]["post"]
    assert "401" in sign_out["responses"]


# -- a server whose codes live one second ------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def quick_codes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    from tests.api.conftest import serving

    with serving(request, tmp_path_factory, env={"PAYKEEP_BUYER_CODE_TTL_S": "1"}) as proc:
        yield proc


def test_an_expired_code_is_refused(quick_codes: ServerProcess) -> None:
    shop = Shop.open(quick_codes)
    try:
        buyer = shop.buyer()
        _order, token = shop.order(buyer["id"], 500)
        assert shop.buyer_http.post(f"/v1/checkout/{token}/sign_in").status_code == 202
        code = latest_code(quick_codes.mail_dir, shop.emails[buyer["id"]])
        assert code is not None
        time.sleep(1.2)
        late = shop.buyer_http.post(f"/v1/checkout/{token}/sign_in/verify", json={"code": code})
        assert_error(late, 400, "buyer_code_expired")
    finally:
        shop.close()


def test_the_operator_ends_a_buyers_sessions(shop: Shop) -> None:
    buyer = shop.buyer()
    order, token = shop.order(buyer["id"], 700)
    assert shop.pay(token).status_code == 200
    shop.ship(order["id"])

    def new_session() -> dict[str, str]:
        return {H: sign_in(shop.buyer_http, shop.server.mail_dir, token, shop.emails[buyer["id"]])}

    sessions = [new_session(), new_session()]
    other = shop.buyer()
    _other_order, other_token = shop.order(other["id"], 100)
    others = shop.as_buyer(other_token)
    path = f"/v1/buyers/{buyer['id']}/sessions/end"
    # Not the merchant's move (it could keep its buyer from ever confirming).
    assert_error(shop.http.post(path), 403, "operator_only")
    ended = shop.operator.post(path, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert ended.status_code == 200, ended.text
    assert ended.json() == {"object": "buyer_sessions_ended", "buyer": buyer["id"], "ended": 2}
    assert shop.operator.post(path).json()["ended"] == 0  # none left to end
    for gone in sessions:
        assert_error(shop.confirm(token, headers=gone), 401, "buyer_authentication_required")
    assert shop.get_order(order["id"])["state"] == "awaiting_receipt"  # nothing moved
    # Another buyer's session is untouched.
    signed_out = shop.buyer_http.post(f"/v1/checkout/{other_token}/sign_out", headers=others)
    assert signed_out.json()["sessions_ended"] == 1
    assert_error(shop.operator.post("/v1/buyers/buy_unknown/sessions/end"), 404,
                 "resource_missing")  # fmt: skip
    # Signed in again with a new code, the buyer confirms.
    assert shop.confirm(token, headers=new_session()).status_code == 200
