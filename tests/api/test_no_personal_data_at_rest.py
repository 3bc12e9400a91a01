"""No personal datum in clear at rest, over a real flow against a real ``paykeep serve`` (API,
workers, banksim's bank) on SQLite and PostgreSQL.

The flow puts people's names and bank accounts everywhere the platform keeps them: a merchant
with a payout IBAN paid out through a pain.001 batch; a buyer whose bank transfer arrives on an
imported camt.053 statement (the line names the payer and their IBAN, with a free remittance
text); that buyer withdrawing wallet money back to the account it came from (a second pain.001
batch, paying the buyer's own account). Then every text and binary column of every table of
the platform's database is scanned for those values, as written and in lower-case, compact and
grouped spellings: none may appear. banksim, the simulated bank, keeps its own data elsewhere
and is outside the scan (a real bank holds these in clear). The server's log is scanned too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.api.test_money_routes import SAFEGUARDING_IBAN, Shop, pay_by_bank_transfer, wait_for
from tests.api.test_withdrawals import checkout_of, state_of, topups, withdraw
from tests.serverproc import ServerProcess
from tests.support import scan, server_settings, spellings

MERCHANT_IBAN = "GB33BUKB20201555555555"
BUYER_IBAN = "DE44500105175407324931"
BUYER_BANK_NAME = "Ottilie Quensel-Marbach"
REMITTANCE_WORDS = "rent share for Ottilie flat 3b"


@pytest.fixture
def shop(server: ServerProcess) -> Iterator[Shop]:
    opened = Shop.open(server, iban=MERCHANT_IBAN)
    yield opened
    opened.close()


def test_no_name_iban_or_remittance_is_stored_in_clear(shop: Shop) -> None:
    # A buyer pays an order by bank transfer (the payer named on the statement line)...
    buyer = shop.buyer()
    order, token = pay_by_bank_transfer(shop, buyer, 10_000)
    # ...and tops up the wallet from their own account, with words of their own.
    before = {t["id"] for t in topups(shop, buyer["id"])}
    sent = httpx.post(
        f"{shop.server.info['banksim_url']}/bank/accounts/{SAFEGUARDING_IBAN}/incoming",
        json={"amount_minor": 2_500, "debtor_name": BUYER_BANK_NAME, "debtor_iban": BUYER_IBAN,
              "remittance": f"{buyer['payment_reference']} {REMITTANCE_WORDS}"},
        timeout=10,
    )  # fmt: skip
    assert sent.status_code < 300, sent.text
    wait_for(
        "the top-up to be credited",
        lambda: any(
            t["state"] == "credited" for t in topups(shop, buyer["id"]) if t["id"] not in before
        ),
        timeout_s=20,
    )
    # The merchant ships, the buyer confirms, the merchant is paid out to their IBAN.
    shop.ship(order["id"])
    shop.confirm(token).raise_for_status()
    key = {"Idempotency-Key": f"payout-{uuid.uuid4()}"}
    created = shop.http.post("/v1/payouts", json={"amount_minor": 5_000}, headers=key)
    assert created.status_code == 201, created.text
    payout_id = created.json()["id"]
    # The buyer takes the top-up back to the account it came from (the newest source).
    wd = withdraw(shop, checkout_of(shop, buyer["id"]), {"amount_minor": 2_000, "currency": "EUR"},
                  key=f"wd-{uuid.uuid4()}")  # fmt: skip
    assert wd.status_code == 201, wd.text
    assert wd.json()["destination"]["iban_last4"] == BUYER_IBAN[-4:]

    def paid_out() -> bool:
        payout = shop.http.get(f"/v1/payouts/{payout_id}").json()["state"]
        return payout == "settled" and state_of(shop, wd.json()["id"]) == "settled"

    wait_for("the payout and the withdrawal to settle", paid_out, timeout_s=40)

    needles = {
        "merchant payout IBAN": spellings(MERCHANT_IBAN),
        "buyer's IBAN (statement, withdrawal)": spellings(BUYER_IBAN),
        "buyer's IBAN of the order's transfer": spellings("NL91ABNA0417164300"),
        "payer's name on the statement": spellings(BUYER_BANK_NAME),
        "payer's name of the order's transfer": spellings("Ada Buyer"),
        "remittance text": spellings(REMITTANCE_WORDS),
        "buyer's name": spellings(buyer["name"]) if buyer.get("name") else set(),
        "buyer's email": spellings(shop.emails[buyer["id"]]),
    }
    needles = {what: forms for what, forms in needles.items() if forms}
    assert scan(server_settings(shop.server), needles) == []
    log = shop.server.log()
    assert [what for what, forms in needles.items() if any(f in log for f in forms)] == []
