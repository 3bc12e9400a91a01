"""Building payment files and reading statements for the bank tests."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from lxml import etree
from schwifty import IBAN

from paykeep.gateway.payouts import pain001
from paykeep.gateway.payouts.model import Debtor

FIXTURES = Path(__file__).parents[2] / "fixtures" / "bank" / "pain001"

#: A real bank code per country (schwifty checks the bank registry and the BBAN layout).
_RANDOM = random.SystemRandom()
_BANKS = {"DE": ("37040044", 10), "NL": ("ABNA", 10)}


def new_iban(country: str = "DE") -> str:
    """A fresh valid IBAN (random account number) so tests sharing a bank never collide."""
    bank_code, digits = _BANKS[country]
    # SystemRandom: Hypothesis reseeds the module-level generator for every example.
    account = str(_RANDOM.randrange(10 ** (digits - 1), 10**digits))
    return str(IBAN.generate(country, bank_code=bank_code, account_code=account).compact)


def open_account(
    http: httpx.Client,
    *,
    balance: int = 100_000,
    currency: str = "EUR",
    business_date: str = "2026-01-05",
    name: str = "Paykeep Safeguarding",
) -> str:
    iban = new_iban()
    response = http.post(
        "/bank/accounts",
        json={"iban": iban, "currency": currency, "name": name,
              "opening_balance_minor": balance, "business_date": business_date},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    return iban


def payment_file(
    debtor_iban: str,
    amounts: Sequence[int],
    *,
    schema: str = "pain.001.001.03",
    message_id: str | None = None,
    currency: str = "EUR",
    e2e_prefix: str = "E2E",
) -> tuple[str, bytes, list[str]]:
    """(message id, pain.001 bytes, end-to-end ids) paying ``amounts`` from ``debtor_iban``."""
    msg = message_id or f"T{uuid.uuid4().hex[:20].upper()}"
    e2e = [f"{e2e_prefix}{i}{uuid.uuid4().hex[:8].upper()}" for i in range(len(amounts))]
    document = pain001.build(
        schema=schema,
        message_id=msg,
        created_at=dt.datetime(2026, 1, 5, 9, 0, 0),
        execution_date=dt.date(2026, 1, 5),
        debtor=Debtor("Paykeep Safeguarding", debtor_iban, "simbank"),
        currency=currency,
        lines=[
            pain001.FileLine(e, a, f"Merchant {i}", new_iban("NL"), None, f"Payout {i}")
            for i, (e, a) in enumerate(zip(e2e, amounts, strict=True))
        ],
    )
    return msg, document, e2e


def rewrite(document: bytes, path: str, value: str) -> bytes:
    """Set the text of every element at ``path`` (``p:`` is the document namespace)."""
    root = etree.fromstring(document)
    ns = {"p": etree.QName(root).namespace}
    for node in root.iterfind(path, ns):
        node.text = value
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def account(http: httpx.Client, iban: str) -> dict[str, Any]:
    response = http.get(f"/bank/accounts/{iban}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def close_day(http: httpx.Client, iban: str) -> dict[str, Any]:
    response = http.post(f"/bank/accounts/{iban}/close-day")
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def statement(http: httpx.Client, statement_id: str, fmt: str, version: str = "02") -> bytes:
    response = http.get(
        f"/bank/statements/{statement_id}", params={"format": fmt, "version": version}
    )
    assert response.status_code == 200, response.text
    return response.content


def incoming(
    http: httpx.Client,
    iban: str,
    amount: int,
    remittance: str,
    *,
    after_cutoff: bool = False,
    end_to_end_id: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "amount_minor": amount,
        "remittance": remittance,
        "debtor_name": "Ada Lovelace",
        "debtor_iban": new_iban(),
        "after_cutoff": after_cutoff,
    }
    if end_to_end_id is not None:
        body["end_to_end_id"] = end_to_end_id
    response = http.post(f"/bank/accounts/{iban}/incoming", json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result
