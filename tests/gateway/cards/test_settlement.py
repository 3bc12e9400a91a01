"""The acquirer's settlement closes the card loop: banksim credits what its network captured
to the safeguarding account, Paykeep checks the report against its own captures, expects the
credit, and the statement line empties ``clearing:card:<acquirer>``."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from paykeep.bench.gateway import BanksimProcess
from paykeep.config import Settings
from paykeep.db import Database
from paykeep.gateway.cards.errors import CardSettlementMismatch
from paykeep.gateway.cards.model import CardPaymentState as S
from paykeep.gateway.statements.service import StatementService
from paykeep.ledger.model import NewAccount
from paykeep.security.fields import FieldCipher
from tests.banksim.bank.helpers import close_day, open_account, statement
from tests.gateway.cards.conftest import Rig
from tests.support import paykeep

BANK = "bank:safeguarding:sim"


@pytest.fixture
def own_rig(tmp_path: Path, database: Database, settings: Settings) -> Iterator[Rig]:
    """A banksim of its own: settlement sums everything its network captured."""
    with BanksimProcess(tmp_path / "banksim") as banksim:
        rig = Rig(banksim, database, settings.data_dir)
        yield rig
        rig.client.close()


def _net(rig: Rig, name: str) -> int:
    a = rig.ledger.account_by_name(name)
    return a.debits_posted - a.credits_posted


def test_settlement_empties_card_clearing(
    cipher: FieldCipher, own_rig: Rig, database: Database
) -> None:
    rig = own_rig
    rig.ledger.create_account(NewAccount(rig.ledger.ids.next_id(), "EUR", 1, name=BANK))
    statements = StatementService(database, rig.ledger, cipher=cipher)
    with rig.banksim.http() as http:
        iban = open_account(http, balance=0)
    statements.add_account(iban, "EUR", BANK)

    _, token = rig.new_card(10_000)
    assert rig.gateway.authorise(token, 3_000, "EUR", payment_id="s-a").state is S.AUTHORISED
    assert rig.gateway.capture("s-a", 2_500, credit_account_id=rig.wallet.id).state is S.CAPTURED
    sale = rig.gateway.sale(token, 1_500, "EUR", payment_id="s-b", credit_account_id=rig.wallet.id)
    assert sale.state is S.CAPTURED
    rig.gateway.authorise(token, 700, "EUR", payment_id="s-c")
    rig.gateway.reverse("s-c")  # released, never settled
    clearing = rig.gateway.clearing_account_name
    assert _net(rig, clearing) == 2_500 + 1_500  # an asset: owed by the acquirer

    with rig.banksim.http() as http:
        report = http.post("/settlements/cards", json={"iban": iban, "currency": "EUR"}).json()
    assert (report["amount_minor"], report["count"]) == (4_000, 2)

    # A report that disagrees with Paykeep's captures is refused, and nothing changes.
    before = statements.row_counts()
    for amount, count in ((4_001, 2), (4_000, 3)):
        with pytest.raises(CardSettlementMismatch):
            rig.gateway.expect_settlement(
                statements, reference=report["reference"], amount_minor=amount, count=count,
                iban=iban, bank_account_name=BANK,
            )  # fmt: skip
    assert statements.row_counts() == before
    expected = rig.gateway.expect_settlement(
        statements, reference=report["reference"], amount_minor=4_000, count=2,
        iban=iban, bank_account_name=BANK,
    )  # fmt: skip
    again = rig.gateway.expect_settlement(
        statements, reference=report["reference"], amount_minor=4_000, count=2,
        iban=iban, bank_account_name=BANK,
    )  # fmt: skip
    assert again == expected  # a replay of the same report

    with rig.banksim.http() as http:
        closed = close_day(http, iban)
        data = statement(http, closed["statement_id"], "camt053")
    (outcome,) = statements.import_file(data).statements
    assert (outcome.matched, outcome.breaks) == (1, [])
    assert _net(rig, clearing) == 0  # the card money in transit has arrived
    assert _net(rig, BANK) == 4_000
    # Nothing more is owed: a second settlement pays nothing.
    with rig.banksim.http() as http:
        empty = http.post("/settlements/cards", json={"iban": iban, "currency": "EUR"}).json()
    assert (empty["amount_minor"], empty["count"]) == (0, 0)


def test_a_failed_settlement_credit_leaves_the_captures_owed(own_rig: Rig) -> None:
    rig = own_rig
    _, token = rig.new_card(10_000)
    rig.gateway.sale(token, 900, "EUR", payment_id="f-a", credit_account_id=rig.wallet.id)
    with rig.banksim.http() as http:
        refused = http.post(
            "/settlements/cards", json={"iban": "DE89370400440532013000", "currency": "EUR"}
        )
        assert refused.status_code >= 400  # no such account at the bank
        iban = open_account(http, balance=0)
        report = http.post("/settlements/cards", json={"iban": iban, "currency": "EUR"}).json()
    assert (report["amount_minor"], report["count"]) == (900, 1)


def test_cli_expect_settlement(
    cipher: FieldCipher, own_rig: Rig, database: Database, settings: Settings
) -> None:
    rig = own_rig
    rig.ledger.create_account(NewAccount(rig.ledger.ids.next_id(), "EUR", 1, name=BANK))
    with rig.banksim.http() as http:
        iban = open_account(http, balance=0)
    StatementService(database, rig.ledger, cipher=cipher).add_account(iban, "EUR", BANK)
    _, token = rig.new_card(10_000)
    rig.gateway.sale(token, 1_200, "EUR", payment_id="c-a", credit_account_id=rig.wallet.id)
    with rig.banksim.http() as http:
        report = http.post("/settlements/cards", json={"iban": iban, "currency": "EUR"}).json()

    def cli(amount: int) -> subprocess.CompletedProcess[str]:
        return paykeep(
            "cards", "expect-settlement", "--reference", report["reference"],
            "--amount", str(amount), "--count", "1", "--iban", iban, "--bank-account", BANK,
            "--json", settings=settings,
        )  # fmt: skip

    refused = cli(1_199)
    assert refused.returncode == 2 and "card_settlement_mismatch" in refused.stderr
    done = cli(1_200)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reference"] == report["reference"]


def test_settlement_nets_refunds_out_and_still_empties_card_clearing(
    cipher: FieldCipher, own_rig: Rig, database: Database
) -> None:
    rig = own_rig
    rig.ledger.create_account(NewAccount(rig.ledger.ids.next_id(), "EUR", 1, name=BANK))
    statements = StatementService(database, rig.ledger, cipher=cipher)
    with rig.banksim.http() as http:
        iban = open_account(http, balance=0)
    statements.add_account(iban, "EUR", BANK)
    _, token = rig.new_card(10_000)
    rig.gateway.sale(token, 3_000, "EUR", payment_id="n-a", credit_account_id=rig.wallet.id)
    rig.gateway.sale(token, 1_000, "EUR", payment_id="n-b", credit_account_id=rig.wallet.id)
    assert rig.gateway.refund("n-r1", "n-a", 1_200, "EUR", rig.wallet.id).approved
    assert rig.gateway.refund("n-r2", "n-b", 300, "EUR", rig.wallet.id).approved
    clearing = rig.gateway.clearing_account_name
    assert _net(rig, clearing) == 4_000 - 1_500  # refunds came out of what the acquirer owes
    with rig.banksim.http() as http:
        report = http.post("/settlements/cards", json={"iban": iban, "currency": "EUR"}).json()
    assert (report["amount_minor"], report["count"]) == (2_500, 4)  # 2 sales, 2 refunds, net
    with pytest.raises(CardSettlementMismatch):  # gross is not what the acquirer pays
        rig.gateway.expect_settlement(
            statements, reference=report["reference"], amount_minor=4_000, count=4,
            iban=iban, bank_account_name=BANK,
        )  # fmt: skip
    rig.gateway.expect_settlement(
        statements, reference=report["reference"], amount_minor=2_500, count=4,
        iban=iban, bank_account_name=BANK,
    )  # fmt: skip
    with rig.banksim.http() as http:
        closed = close_day(http, iban)
        data = statement(http, closed["statement_id"], "camt053")
    (outcome,) = statements.import_file(data).statements
    assert (outcome.matched, outcome.breaks) == (1, [])
    assert _net(rig, clearing) == 0
    assert _net(rig, BANK) == 2_500


def test_refunds_after_their_sale_settled_are_collected_by_a_debit(
    cipher: FieldCipher, own_rig: Rig, database: Database
) -> None:
    rig = own_rig
    rig.ledger.create_account(NewAccount(rig.ledger.ids.next_id(), "EUR", 1, name=BANK))
    statements = StatementService(database, rig.ledger, cipher=cipher)
    with rig.banksim.http() as http:
        iban = open_account(http, balance=0)
    statements.add_account(iban, "EUR", BANK)
    clearing = rig.gateway.clearing_account_name

    def settle(amount: int, count: int) -> None:
        with rig.banksim.http() as http:
            report = http.post("/settlements/cards", json={"iban": iban, "currency": "EUR"})
        assert (report.json()["amount_minor"], report.json()["count"]) == (amount, count)
        rig.gateway.expect_settlement(
            statements, reference=report.json()["reference"], amount_minor=amount,
            count=count, iban=iban, bank_account_name=BANK,
        )  # fmt: skip
        with rig.banksim.http() as http:
            closed = close_day(http, iban)
            data = statement(http, closed["statement_id"], "camt053")
        (outcome,) = statements.import_file(data).statements
        assert (outcome.matched, outcome.breaks) == (1, [])

    _, token = rig.new_card(10_000)
    rig.gateway.sale(token, 1_000, "EUR", payment_id="d-a", credit_account_id=rig.wallet.id)
    settle(1_000, 1)
    assert rig.gateway.refund("d-r", "d-a", 400, "EUR", rig.wallet.id).approved
    assert _net(rig, clearing) == -400  # Paykeep owes the acquirer what it credited the card
    settle(-400, 1)  # the acquirer collects it: a debit on the safeguarding account
    assert _net(rig, clearing) == 0
    assert _net(rig, BANK) == 600
