"""Buyer withdrawals end to end over real HTTP against a real ``paykeep serve`` (API, workers,
banksim's bank) on SQLite and PostgreSQL: wallet money goes back only to the bank account it
came from (the sending IBAN of a credited top-up, as the imported camt.053 statement named it),
at most what that account sent, through the gateway's pain.001 batches; a returned payout puts
the money back in the wallet; bad requests and other principals move and write nothing; the
ledger audits clean.

Top-ups are real bank transfers at banksim (``/bank/accounts/<iban>/incoming``) that the
server's bank cycle imports from the statement; buyers sign in with the code from the server's
mail folder (``paykeep.buyer_mailbox``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from paykeep.db import field_cipher, open_database
from paykeep.gateway.payouts.service import PayoutService
from paykeep.ledger.audit import verify
from paykeep.ledger.service import Ledger
from paykeep.payments.buyer_auth import BUYER_SESSION_COOKIE, BUYER_SESSION_HEADER
from tests.api.test_money_routes import (
    SAFEGUARDING_IBAN,
    Shop,
    assert_error,
    pay_by_bank_transfer,
    wait_for,
)
from tests.serverproc import ServerProcess
from tests.support import refuse_inserts, server_settings

#: The buyers' own bank accounts (the debtors of their transfers in).
ADA_IBAN = "NL91ABNA0417164300"  # what pay_by_bank_transfer sends from
OTHER_IBAN = "DE44500105175407324931"
STRANGER_IBAN = "FR1420041010050500013M02606"
#: Concurrent requests in the race test.
RACERS = 6


@pytest.fixture
def shop(server: ServerProcess) -> Iterator[Shop]:
    opened = Shop.open(server)
    yield opened
    opened.close()


def top_up(shop: Shop, buyer: dict[str, Any], amount: int, iban: str = ADA_IBAN) -> str:
    """A transfer from ``iban`` carrying the buyer's reference; returns the credited top-up's
    id once the statement has been imported and the wallet credited."""
    before = {t["id"] for t in topups(shop, buyer["id"])}
    sent = httpx.post(
        f"{shop.server.info['banksim_url']}/bank/accounts/{SAFEGUARDING_IBAN}/incoming",
        json={"amount_minor": amount, "remittance": buyer["payment_reference"],
              "debtor_name": "Ada Buyer", "debtor_iban": iban},
        timeout=10,
    )  # fmt: skip
    assert sent.status_code < 300, sent.text

    def credited() -> str | None:
        new = [t for t in topups(shop, buyer["id"]) if t["id"] not in before]
        return str(new[0]["id"]) if new and new[0]["state"] == "credited" else None

    found: str = wait_for("the top-up to be credited", credited, timeout_s=20)
    return found


def topups(shop: Shop, buyer_id: str) -> list[dict[str, Any]]:
    listed = shop.http.get("/v1/topups", params={"buyer": buyer_id, "limit": 100})
    assert listed.status_code == 200, listed.text
    data: list[dict[str, Any]] = listed.json()["data"]
    return data


def withdraw(
    shop: Shop, token: str, body: dict[str, Any], *, key: str | None = None,
    session: bool = True, headers: dict[str, str] | None = None,
) -> httpx.Response:  # fmt: skip
    sent = dict(headers or {})
    if session:
        sent.update(shop.as_buyer(token))
    if key is not None:
        sent["Idempotency-Key"] = key
    return shop.buyer_http.post(f"/v1/checkout/{token}/withdrawals", json=body, headers=sent)


def checkout_of(shop: Shop, buyer_id: str) -> str:
    """A checkout token of the buyer (any checkout names the buyer for a withdrawal)."""
    _order, token = shop.order(buyer_id, 100)
    return token


def state_of(shop: Shop, withdrawal_id: str) -> str:
    got = shop.http.get(f"/v1/withdrawals/{withdrawal_id}")
    assert got.status_code == 200, got.text
    return str(got.json()["state"])


def wallet_transfers(shop: Shop, buyer_id: str) -> list[dict[str, Any]]:
    listed = shop.operator.get(
        "/v1/ledger/transfers", params={"account": f"buyer:{buyer_id}:wallet:EUR", "limit": 100}
    )
    assert listed.status_code == 200, listed.text
    data: list[dict[str, Any]] = listed.json()["data"]
    return data


def events_of(shop: Shop, object_id: str) -> list[str]:
    listed = shop.http.get("/v1/events", params={"object": object_id, "limit": 100})
    assert listed.status_code == 200, listed.text
    return [e["type"] for e in listed.json()["data"]]


def set_bank_faults(server: ServerProcess, **faults: bool) -> None:
    answer = httpx.post(f"{server.info['banksim_url']}/bank/faults", json=faults, timeout=10)
    answer.raise_for_status()


# -- the flow --------------------------------------------------------------------------------


def test_a_refunded_bank_transfer_goes_back_to_the_account_it_came_from(shop: Shop) -> None:
    buyer = shop.buyer()
    order, token = pay_by_bank_transfer(shop, buyer, 3_000)
    refund = shop.http.post(f"/v1/orders/{order['id']}/refunds", json={"reason": "no stock"})
    assert refund.status_code == 201, refund.text
    assert refund.json()["destination"] == "wallet"
    assert shop.wallet(buyer["id"]) == (3_000, 0)

    key = f"wd-{uuid.uuid4()}"
    created = withdraw(shop, token, {"amount_minor": 2_000, "currency": "EUR"}, key=key)
    assert created.status_code == 201, created.text
    withdrawal = created.json()
    [source] = topups(shop, buyer["id"])
    assert withdrawal["object"] == "withdrawal" and withdrawal["id"].startswith("wd_")
    assert (withdrawal["buyer"], withdrawal["merchant"]) == (buyer["id"], shop.id)
    assert (withdrawal["amount_minor"], withdrawal["currency"]) == (2_000, "EUR")
    assert withdrawal["state"] == "requested"
    assert withdrawal["destination"] == {
        "type": "source_bank_account",
        "source_topup": source["id"],
        "iban_last4": "4300",
    }
    assert ADA_IBAN not in created.text  # fmt: skip
    # The money left the wallet at once (into clearing:payout), exactly once.
    assert shop.wallet(buyer["id"]) == (1_000, 0)
    again = withdraw(shop, token, {"amount_minor": 2_000, "currency": "EUR"}, key=key)
    assert again.status_code == 201 and again.json()["id"] == withdrawal["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert_error(withdraw(shop, token, {"amount_minor": 1_000, "currency": "EUR"}, key=key),
                 409, "idempotency_key_reused")  # fmt: skip
    assert shop.wallet(buyer["id"]) == (1_000, 0)
    out = [
        t for t in wallet_transfers(shop, buyer["id"]) if t["credit_account"] == "clearing:payout"
    ]
    assert [t["amount_minor"] for t in out] == [2_000]

    # The bank cycle batches it into a pain.001, the bank accepts, the statement settles it.
    wait_for("the withdrawal to settle", lambda: state_of(shop, withdrawal["id"]) == "settled",
             timeout_s=40)  # fmt: skip
    types = events_of(shop, withdrawal["id"])
    assert types[-1] == "withdrawal.created" and types[0] == "withdrawal.settled"
    assert set(types) <= {"withdrawal.created", "withdrawal.batched", "withdrawal.accepted",
                          "withdrawal.settled"}  # fmt: skip
    listed = shop.http.get("/v1/withdrawals", params={"buyer": buyer["id"]}).json()
    assert [w["id"] for w in listed["data"]] == [withdrawal["id"]] and not listed["has_more"]
    as_operator = shop.operator.get(f"/v1/withdrawals/{withdrawal['id']}")
    assert as_operator.status_code == 200 and as_operator.json()["state"] == "settled"

    settings = server_settings(shop.server)
    database = open_database(settings, migrate=False)
    try:
        with database.read() as conn:
            row = conn.execute(
                sa.text("SELECT gateway_payout_id, iban_enc FROM payments_withdrawals "
                        "WHERE id = :id"), {"id": withdrawal["id"]},
            ).one()  # fmt: skip
        assert ADA_IBAN.encode() not in bytes(row[1])  # sealed at rest
        payouts = PayoutService(database, cipher=field_cipher(settings))
        payout = payouts.get(int(row[0]))
        assert payout.debit_account_name == f"buyer:{buyer['id']}:wallet:EUR"
        assert payout.batch_id is not None
        document = payouts.file(payout.batch_id).decode()
        # The pain.001 line pays the buyer's source account exactly the amount withdrawn.
        line = document[document.index(payout.end_to_end_id) :]
        line = line[: line.index("</CdtTrfTxInf>")]
        assert f"<IBAN>{ADA_IBAN}</IBAN>" in line
        assert ">20.00</InstdAmt>" in line
        report = verify(database)
        assert report.ok, report.to_json()
        clearing = Ledger(database).account_by_name("clearing:payout")
        assert clearing.debits_posted >= 2_000  # the statement's leg emptied what came in
    finally:
        database.dispose()
    assert ADA_IBAN not in shop.server.log()


def _withdraw_form(page: httpx.Response) -> dict[str, str]:
    """The hidden fields of the checkout page's withdrawal form, as the browser would post."""
    found = re.search(r'name="request" value="(p[0-9a-f]{32})"', page.text)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None and csrf is not None, "the page has no withdrawal form"
    return {"csrf": csrf.group(1), "request": found.group(1)}


def test_the_buyer_sends_their_balance_back_from_the_checkout_page(shop: Shop) -> None:
    buyer = shop.buyer()
    order, token = pay_by_bank_transfer(shop, buyer, 3_000)
    refund = shop.http.post(f"/v1/orders/{order['id']}/refunds", json={"reason": "no stock"})
    assert refund.status_code == 201, refund.text
    page_path = f"/checkout/{token}/result"
    withdraw_path = f"/checkout/{token}/withdraw"

    # Not signed in: the balance is shown with the way to sign in, and no form.
    anonymous = shop.buyer_http.get(page_path)
    assert anonymous.status_code == 200
    assert "30.00 EUR" in anonymous.text and f'action="{withdraw_path}"' not in anonymous.text
    assert "sign in with the code we email you" in anonymous.text

    session = shop.as_buyer(token)[BUYER_SESSION_HEADER]
    origin = str(shop.buyer_http.base_url).rstrip("/")
    # The signed-in buyer's browser: its session cookie, and the page's own origin on posts.
    with httpx.Client(
        base_url=origin, cookies={BUYER_SESSION_COOKIE: session}, headers={"Origin": origin}
    ) as browser:
        page = browser.get(page_path)
        assert f'action="{withdraw_path}"' in page.text
        form = _withdraw_form(page)

        def post(**fields: str) -> httpx.Response:
            return browser.post(withdraw_path, data={**form, **fields})

        # More than the account sent in, and a card that never paid in: the buyer's words,
        # and nothing moved.
        too_much = post(destination="source_bank_account", amount="40.00")
        assert too_much.status_code == 409, too_much.text
        assert "more than came from that bank account" in too_much.text
        no_card = post(destination="source_card", amount="5.00")
        assert no_card.status_code == 409
        assert "none of your money came from there" in no_card.text
        assert post(destination="the_moon", amount="5.00").status_code == 422
        assert shop.wallet(buyer["id"]) == (3_000, 0)

        sent = post(destination="source_bank_account", amount="20.00")
        assert sent.status_code == 303, sent.text
        assert sent.headers["location"] == f"{page_path}?done=withdrawn_to_bank"
        assert shop.wallet(buyer["id"]) == (1_000, 0)
        # The same rendered form posted again (a double click): still one withdrawal.
        assert post(destination="source_bank_account", amount="20.00").status_code == 303
        assert shop.wallet(buyer["id"]) == (1_000, 0)
        listed = shop.http.get("/v1/withdrawals", params={"buyer": buyer["id"]}).json()["data"]
        assert [(w["amount_minor"], w["destination"]["type"]) for w in listed] == [
            (2_000, "source_bank_account")
        ]
        done = browser.get(sent.headers["location"])
        assert "back to the bank account it came from" in done.text
        assert "10.00 EUR" in done.text  # what is left
        # A new page is a new form: an empty amount sends all that is left.
        rest = browser.post(
            withdraw_path,
            data={**_withdraw_form(done), "destination": "source_bank_account", "amount": ""},
        )
        assert rest.status_code == 303, rest.text
        assert shop.wallet(buyer["id"]) == (0, 0)
        assert f'action="{withdraw_path}"' not in browser.get(page_path).text
    # Without the session cookie the post is refused and moves nothing.
    signed_out = shop.buyer_http.post(
        withdraw_path,
        data={**form, "destination": "source_bank_account", "amount": "1.00"},
        headers={"Origin": origin},
    )
    assert signed_out.status_code == 401
    assert len(shop.http.get("/v1/withdrawals", params={"buyer": buyer["id"]}).json()["data"]) == 2
    assert ADA_IBAN not in shop.server.log()


def test_a_returned_withdrawal_puts_the_money_back_in_the_wallet(shop: Shop) -> None:
    buyer = shop.buyer()
    token = checkout_of(shop, buyer["id"])
    top_up(shop, buyer, 1_200)
    set_bank_faults(shop.server, reject_payment_files=True)  # the bank rejects the next file
    try:
        created = withdraw(shop, token, {"amount_minor": 1_200, "currency": "EUR"})
        assert created.status_code == 201, created.text
        withdrawal_id = created.json()["id"]
        assert shop.wallet(buyer["id"]) == (0, 0)
        wait_for("the withdrawal to be returned",
                 lambda: state_of(shop, withdrawal_id) == "returned", timeout_s=40)  # fmt: skip
    finally:
        set_bank_faults(shop.server, reject_payment_files=False)
    assert shop.wallet(buyer["id"]) == (1_200, 0)
    assert events_of(shop, withdrawal_id)[0] == "withdrawal.returned"
    # Returned money no longer counts against its source: it may go out again.
    again = withdraw(shop, token, {"amount_minor": 1_200, "currency": "EUR"})
    assert again.status_code == 201, again.text
    assert again.json()["id"] != withdrawal_id
    assert shop.wallet(buyer["id"]) == (0, 0)


def test_the_source_is_chosen_by_top_up_and_bounded_by_what_it_sent(shop: Shop) -> None:
    buyer = shop.buyer()
    token = checkout_of(shop, buyer["id"])
    older = top_up(shop, buyer, 1_000, ADA_IBAN)
    newer = top_up(shop, buyer, 700, OTHER_IBAN)
    assert shop.wallet(buyer["id"]) == (1_700, 0)
    # Default: the newest top-up's account, which sent only 7.00.
    assert_error(withdraw(shop, token, {"amount_minor": 800, "currency": "EUR"}), 409,
                 "withdrawal_exceeds_source")  # fmt: skip
    to_newer = withdraw(shop, token, {"amount_minor": 700, "currency": "EUR"})
    assert to_newer.status_code == 201, to_newer.text
    assert to_newer.json()["destination"]["iban_last4"] == OTHER_IBAN[-4:]
    assert to_newer.json()["destination"]["source_topup"] == newer
    assert_error(withdraw(shop, token, {"amount_minor": 1, "currency": "EUR",
                                        "source_topup": newer}), 409,
                 "withdrawal_exceeds_source")  # fmt: skip
    to_older = withdraw(shop, token, {"amount_minor": 800, "currency": "EUR",
                                      "source_topup": older})  # fmt: skip
    assert to_older.status_code == 201, to_older.text
    assert to_older.json()["destination"]["iban_last4"] == ADA_IBAN[-4:]
    assert shop.wallet(buyer["id"]) == (200, 0)


def test_requests_at_once_cannot_share_one_source(shop: Shop) -> None:
    """The wallet holds more than the source sent (a second account topped it up too), so only
    the source bound — read and reserved under a lock on the buyer — can refuse the others."""
    buyer = shop.buyer()
    token = checkout_of(shop, buyer["id"])
    source = top_up(shop, buyer, 1_500, ADA_IBAN)
    top_up(shop, buyer, 3_000, OTHER_IBAN)
    headers = shop.as_buyer(token)  # signed in before the race
    body = {"amount_minor": 1_000, "currency": "EUR", "source_topup": source}

    def attempt(_: int) -> httpx.Response:
        with shop.server.client() as client:
            return client.post(f"/v1/checkout/{token}/withdrawals", json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=RACERS) as pool:
        answers = list(pool.map(attempt, range(RACERS)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] + [409] * (RACERS - 1), [a.text for a in answers]
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {
        "withdrawal_exceeds_source"
    }
    assert shop.wallet(buyer["id"]) == (3_500, 0)
    listed = shop.http.get("/v1/withdrawals", params={"buyer": buyer["id"]}).json()["data"]
    assert len(listed) == 1


# -- refusals ---------------------------------------------------------------------------------


def test_bad_requests_are_typed_errors_and_write_nothing(shop: Shop) -> None:
    buyer = shop.buyer()
    token = checkout_of(shop, buyer["id"])
    source = top_up(shop, buyer, 1_500)
    # Part of the wallet is spent on an order (the signed-in buyer pays from the wallet), so
    # the source may take more than the wallet holds.
    _order, paying = shop.order(buyer["id"], 1_000)
    paid = shop.pay(paying, {"method": "wallet"}, headers=shop.as_buyer(paying))
    assert paid.status_code == 200, paid.text
    assert shop.wallet(buyer["id"]) == (500, 1_000)
    other_buyer = shop.buyer()
    other_token = checkout_of(shop, other_buyer["id"])
    other_source = top_up(shop, other_buyer, 300, STRANGER_IBAN)
    stranger = shop.buyer()  # signed in, never topped up
    stranger_token = checkout_of(shop, stranger["id"])
    before = wallet_transfers(shop, buyer["id"])

    ok = {"amount_minor": 100, "currency": "EUR"}
    bs = BUYER_SESSION_HEADER
    # headers: None a session of the buyer, "other" another buyer's session, else exactly these.
    cases: list[tuple[str, dict[str, Any], dict[str, str] | str | None, int, str]] = [
        # shape
        (token, {"amount_minor": "100", "currency": "EUR"}, None, 400, "parameter_invalid"),
        (token, {"amount_minor": 1.5, "currency": "EUR"}, None, 400, "parameter_invalid"),
        (token, {"amount_minor": 0, "currency": "EUR"}, None, 400, "parameter_invalid"),
        (token, {"amount_minor": -100, "currency": "EUR"}, None, 400, "parameter_invalid"),
        (token, {"amount_minor": 10_000_001, "currency": "EUR"}, None, 400, "parameter_invalid"),
        (token, {"amount_minor": 100}, None, 400, "parameter_invalid"),
        (token, {"amount_minor": 100, "currency": "eur"}, None, 400, "parameter_invalid"),
        # no mass assignment: the destination is never the caller's to name
        (token, {**ok, "iban": STRANGER_IBAN}, None, 400, "parameter_invalid"),
        (token, {**ok, "state": "settled"}, None, 400, "parameter_invalid"),
        # identity
        (token, ok, {}, 401, "buyer_authentication_required"),
        (token, ok, {bs: "bs_" + "A" * 43}, 401, "buyer_authentication_required"),
        (token, ok, "other", 401, "buyer_authentication_required"),
        ("cs_" + "x" * 40, ok, {}, 404, "resource_missing"),
        # references
        (token, {"amount_minor": 100, "currency": "GBP"}, None, 400, "payments_input_invalid"),
        (token, {**ok, "source_topup": other_source}, None, 404, "resource_missing"),
        (token, {**ok, "source_topup": "top_0000000000000000"}, None, 404, "resource_missing"),
        (stranger_token, ok, None, 409, "withdrawal_no_source"),
        # limits: over the source (1,500 sent in), then over the wallet (500 left)
        (token, {"amount_minor": 1_501, "currency": "EUR"}, None, 409,
         "withdrawal_exceeds_source"),
        (token, {"amount_minor": 501, "currency": "EUR", "source_topup": source}, None, 409,
         "insufficient_funds"),
    ]  # fmt: skip
    for target, body, headers, status, code in cases:
        if isinstance(headers, str):
            sent = withdraw(shop, target, body, session=False,
                            headers=shop.as_buyer(other_token))  # fmt: skip
        elif headers is None:
            sent = withdraw(shop, target, body)
        else:
            sent = withdraw(shop, target, body, session=False, headers=headers)
        assert_error(sent, status, code)
    # The merchant's own API key is not the buyer either.
    as_merchant = shop.http.post(f"/v1/checkout/{token}/withdrawals", json=ok)
    assert_error(as_merchant, 401, "buyer_authentication_required")

    # Nothing was written: no withdrawal, no ledger transfer, no event, the same balances.
    for who in (buyer, other_buyer, stranger):
        listed = shop.http.get("/v1/withdrawals", params={"buyer": who["id"]}).json()
        assert listed["data"] == [], who
    assert wallet_transfers(shop, buyer["id"]) == before
    assert shop.wallet(buyer["id"]) == (500, 1_000)
    assert shop.wallet(other_buyer["id"]) == (300, 0)
    types = shop.http.get("/v1/events", params={"type": "withdrawal.created"}).json()["data"]
    assert [e for e in types if e["data"]["object"]["buyer"] in
            {buyer["id"], other_buyer["id"], stranger["id"]}] == []  # fmt: skip
    # A refusal was not stored under the key: the same key with a session goes through.
    key = f"wd-{uuid.uuid4()}"
    assert_error(withdraw(shop, token, ok, key=key, session=False), 401,
                 "buyer_authentication_required")  # fmt: skip
    assert withdraw(shop, token, ok, key=key).status_code == 201


def test_another_merchant_sees_nothing_of_a_withdrawal(shop: Shop) -> None:
    buyer = shop.buyer()
    token = checkout_of(shop, buyer["id"])
    top_up(shop, buyer, 400)
    first = withdraw(shop, token, {"amount_minor": 150, "currency": "EUR"})
    created = withdraw(shop, token, {"amount_minor": 250, "currency": "EUR"})
    assert first.status_code == created.status_code == 201, (first.text, created.text)
    withdrawal_id = created.json()["id"]
    # Newest first; the cursor walks on without overlap.
    page = shop.http.get("/v1/withdrawals", params={"buyer": buyer["id"], "limit": 1}).json()
    assert [w["id"] for w in page["data"]] == [withdrawal_id] and page["has_more"] is True
    rest = shop.http.get(
        "/v1/withdrawals",
        params={"buyer": buyer["id"], "limit": 1, "starting_after": withdrawal_id},
    ).json()
    assert [w["id"] for w in rest["data"]] == [first.json()["id"]] and not rest["has_more"]
    other_merchant = shop.server.merchant(1)
    with shop.server.client(other_merchant["api_key"]) as other:
        theirs = other.get(f"/v1/withdrawals/{withdrawal_id}")
        unknown = other.get("/v1/withdrawals/wd_0000000000000000")
        assert theirs.status_code == unknown.status_code == 404
        seen, expected = theirs.json()["error"], unknown.json()["error"]
        for error in (seen, expected):
            error.pop("request_id")
        expected["message"] = expected["message"].replace("wd_0000000000000000", withdrawal_id)
        assert seen == expected and seen["code"] == "resource_missing"
        listed = other.get("/v1/withdrawals", params={"limit": 100}).json()["data"]
        assert withdrawal_id not in {w["id"] for w in listed}
        by_buyer = other.get("/v1/withdrawals", params={"buyer": buyer["id"]}).json()["data"]
        assert by_buyer == []
        events = other.get("/v1/events", params={"object": withdrawal_id}).json()["data"]
        assert events == []
    # Its own merchant and the operator see it.
    assert shop.http.get(f"/v1/withdrawals/{withdrawal_id}").status_code == 200
    listed = shop.operator.get("/v1/withdrawals", params={"limit": 100}).json()["data"]
    assert withdrawal_id in {w["id"] for w in listed}
    # The token without the buyer's session (what the merchant holds) moves nothing.
    assert_error(withdraw(shop, token, {"amount_minor": 1, "currency": "EUR"}, session=False),
                 401, "buyer_authentication_required")  # fmt: skip


def test_a_request_that_died_before_the_payout_is_finished_by_the_worker_pass(
    shop: Shop,
) -> None:
    """A reservation (``pending``) whose request died before the gateway's payout existed:
    it keeps its source's room (a second request is refused), moves no money, and the worker
    pass finishes it once it is old enough — ``requested``, then settled like any other."""
    from paykeep.api.runtime import RuntimeConfig, open_runtime

    buyer = shop.buyer()
    token = checkout_of(shop, buyer["id"])
    top_up(shop, buyer, 900)
    settings = server_settings(shop.server)
    refuse_inserts(settings, "gateway_payouts", on=True)
    try:
        died = withdraw(shop, token, {"amount_minor": 900, "currency": "EUR"})
        assert died.status_code == 500, died.text
        assert "Traceback" not in died.text and died.json()["error"]["type"] == "api_error"
        assert shop.wallet(buyer["id"]) == (900, 0)  # nothing moved
        [pending] = shop.http.get("/v1/withdrawals", params={"buyer": buyer["id"]}).json()["data"]
        assert pending["state"] == "pending"
        # The reservation holds the source's room: the same money cannot be asked for twice.
        assert_error(withdraw(shop, token, {"amount_minor": 900, "currency": "EUR"}), 409,
                     "withdrawal_exceeds_source")  # fmt: skip
    finally:
        refuse_inserts(settings, "gateway_payouts", on=False)
    # The worker pass (here with no minimum age; the server's own waits 30 s).
    runtime = open_runtime(RuntimeConfig(settings=settings), migrate=False)
    try:
        assert runtime.payments.sync_withdrawals(pending_age_s=0) == 1
    finally:
        runtime.database.dispose()
    assert state_of(shop, pending["id"]) == "requested"
    assert shop.wallet(buyer["id"]) == (0, 0)
    wait_for("the withdrawal to settle", lambda: state_of(shop, pending["id"]) == "settled",
             timeout_s=40)  # fmt: skip
    assert events_of(shop, pending["id"])[-1] == "withdrawal.created"
