"""``paykeep payouts ...``: exit codes, one-line errors, JSON (in-process, on both databases)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from typer.testing import CliRunner

from paykeep.bench.gateway import BanksimProcess
from paykeep.cli import app
from paykeep.config import Settings
from paykeep.db import Database
from paykeep.ledger.model import AccountFlags, NewAccount, NewTransfer
from paykeep.ledger.service import Ledger
from tests.banksim.bank.helpers import new_iban

runner = CliRunner()


def run(settings: Settings, *args: str) -> tuple[int, str, str]:
    where = ["--data-dir", str(settings.data_dir)]
    if settings.database_url:
        where += ["--database-url", settings.database_url]
    result = runner.invoke(app, ["payouts", *args, *where])
    return result.exit_code, result.stdout, result.stderr


def _chart(database: Database) -> None:
    ledger = Ledger(database)
    ledger.create_accounts(
        [
            NewAccount(1, "EUR", 1, int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS),
                       name="bank:safeguarding:simbank"),
            NewAccount(2, "EUR", 2, int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                       name="merchant:42:available"),
        ]
    )  # fmt: skip
    ledger.create_transfer(NewTransfer(10, 1, 2, 50_000, "EUR", 1))


REQUEST = [
    "request", "--request-id", "cli-1", "--merchant-ref", "42", "--amount", "120.50",
    "--from", "merchant:42:available", "--creditor-name", "Tea Shop GmbH",
    "--creditor-iban", "NL91ABNA0417164300",
]  # fmt: skip


def test_request_batch_list(settings: Settings, database: Database, tmp_path: Path) -> None:
    _chart(database)
    code, out, err = run(settings, *REQUEST, "--json")
    assert code == 0, err
    payout = json.loads(out)
    assert payout["amount_minor"] == 12_050 and payout["state"] == "requested"
    code, out, _ = run(settings, *REQUEST)  # a replay: the same payout
    assert code == 0 and str(payout["payout_id"]) in out
    code, out, err = run(settings, "list", "--json")
    assert code == 0 and [p["request_id"] for p in json.loads(out)["payouts"]] == ["cli-1"]
    debtor = new_iban()
    code, out, err = run(
        settings, "batch", "--debtor-iban", debtor, "--debtor-name", "Paykeep",
        "--bank", "simbank", "--schema", "09", "--out-dir", str(tmp_path / "out"), "--json",
    )  # fmt: skip
    assert code == 0, err
    batch = json.loads(out)
    assert batch["state"] == "submitted" and batch["schema"] == "pain.001.001.09"
    assert (tmp_path / "out" / f"{batch['message_id']}.xml").is_file()
    code, out, _ = run(settings, "list", "--batches", "--state", "submitted")
    assert code == 0 and batch["message_id"] in out
    code, out, _ = run(settings, "settle", "--json")
    assert code == 0 and json.loads(out) == {"settled": 0}


def test_bad_input_exits_2_with_one_line(settings: Settings, database: Database) -> None:
    _chart(database)
    cases = [
        [*REQUEST[:-1], "NL91ABNA0417164301"],  # bad IBAN checksum
        [*REQUEST[:6], "12.345", *REQUEST[7:]],  # more decimals than EUR has
        [*REQUEST[:6], "999.00", *REQUEST[7:], "--currency", "JPY"],
        ["batch", "--debtor-iban", new_iban(), "--debtor-name", "P", "--bank", "simbank"],
        ["batch", "--debtor-iban", new_iban(), "--debtor-name", "P", "--bank", "simbank",
         "--schema", "02"],
        ["list", "--state", "lost"],
    ]  # fmt: skip
    for args in cases:
        code, out, err = run(settings, *args)
        assert code == 2, (args, out, err)
        assert err.startswith("paykeep: ") and err.count("\n") == 1, err
        assert "Traceback" not in err + out
    code, _, err = run(settings, *REQUEST[:6], "600.00", *REQUEST[7:])
    assert code == 2 and "payout_insufficient_funds" in err


def test_unreachable_bank_exits_1(settings: Settings, database: Database) -> None:
    _chart(database)
    assert run(settings, *REQUEST)[0] == 0
    code, _, err = run(
        settings, "batch", "--debtor-iban", new_iban(), "--debtor-name", "P", "--bank",
        "simbank", "--submit-url", "http://127.0.0.1:9",
    )  # fmt: skip
    assert code == 1 and "payout_bank_unavailable" in err


def test_batch_submitted_to_banksim(
    settings: Settings, database: Database, bank: BanksimProcess, http: httpx.Client
) -> None:
    _chart(database)
    debtor = new_iban()
    opened = http.post(
        "/bank/accounts",
        json={"iban": debtor, "currency": "EUR", "name": "Paykeep", "opening_balance_minor": 10**6},
    )
    assert opened.status_code == 201
    assert run(settings, *REQUEST)[0] == 0
    code, out, err = run(
        settings, "batch", "--debtor-iban", debtor, "--debtor-name", "Paykeep", "--bank",
        "simbank", "--submit-url", bank.base_url, "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["state"] == "accepted"
    assert http.get(f"/bank/accounts/{debtor}").json()["balance_minor"] == 10**6 - 12_050
    code, out, _ = run(settings, "list", "--state", "accepted", "--json")
    assert [p["request_id"] for p in json.loads(out)["payouts"]] == ["cli-1"]
