"""The payout service on both databases, against a real banksim over HTTP: ledger balances,
batches, the bank's verdicts, returns, settlement from the statement, bad input."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from lxml import etree

from paykeep.bench.gateway import BanksimProcess
from paykeep.gateway.payouts.errors import (
    PayoutAccountNotFound,
    PayoutAmountInvalid,
    PayoutBankUnavailable,
    PayoutCurrencyUnsupported,
    PayoutFileInvalid,
    PayoutIbanInvalid,
    PayoutIllegalTransition,
    PayoutInputInvalid,
    PayoutInsufficientFunds,
    PayoutNothingToBatch,
    PayoutRequestIdReused,
)
from paykeep.gateway.payouts.model import (
    CLEARING_ACCOUNT,
    BatchState,
    Debtor,
    Payout,
    PayoutState,
)
from paykeep.gateway.payouts.service import BankAnswer
from tests.gateway.payouts.conftest import BANK_ACCOUNT, FUNDED_MINOR, MERCHANT, World

FIXTURES = Path(__file__).parents[2] / "fixtures" / "bank" / "pain001"


def _rows(world: World, table: str) -> int:
    with world.database.read() as conn:
        return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def _open_bank_account(http: httpx.Client, world: World, balance: int) -> None:
    response = http.post(
        "/bank/accounts",
        json={"iban": world.debtor.iban, "currency": "EUR", "name": world.debtor.name,
              "opening_balance_minor": balance, "business_date": "2026-01-05"},
    )  # fmt: skip
    assert response.status_code == 201, response.text


def test_a_request_moves_the_money_at_once(world: World) -> None:
    payout = world.request()
    assert isinstance(payout, Payout)
    assert payout.state is PayoutState.REQUESTED
    assert world.balance(MERCHANT) == FUNDED_MINOR - 12_345
    assert world.balance(CLEARING_ACCOUNT) == 12_345  # credit-positive: in transit out
    transfer = world.ledger.transfer(payout.request_transfer_id)
    assert transfer.amount_minor == 12_345 and transfer.reference == "payout:req-1"
    assert payout.end_to_end_id.startswith("PO") and len(payout.end_to_end_id) <= 16
    assert world.payouts.get(payout.payout_id) == payout


def test_a_replay_returns_the_original_and_moves_nothing(world: World) -> None:
    first = world.request()
    again = world.request(creditor_iban="NL91 ABNA 0417 1643 00")  # same after normalising
    assert again == first
    assert world.balance(MERCHANT) == FUNDED_MINOR - 12_345
    with pytest.raises(PayoutRequestIdReused):
        world.request(amount=1)
    assert world.balance(MERCHANT) == FUNDED_MINOR - 12_345
    assert _rows(world, "gateway_payouts") == 1


def test_a_crash_between_ledger_and_row_is_repaired_by_the_retry(world: World) -> None:
    """The ledger transfer of a request has an id derived from the request id: if the process
    died after the ledger moved the money but before the payout row was written, the retry
    finds the transfer (`exists`) and writes the row, without moving the money twice."""
    world.request(request_id="crash-1")
    with world.database.write() as conn:  # forget the row, as if it was never written
        conn.execute(sa.text("DELETE FROM gateway_payouts WHERE request_id = 'crash-1'"))
    payout = world.request(request_id="crash-1")
    assert payout.state is PayoutState.REQUESTED
    assert world.balance(MERCHANT) == FUNDED_MINOR - 12_345


BAD_REQUESTS = [
    ({"request_id": "has space"}, PayoutInputInvalid),
    ({"amount": 0}, PayoutAmountInvalid),
    ({"amount": 10_000_001}, PayoutAmountInvalid),
    ({"currency": "JPY"}, PayoutCurrencyUnsupported),
    ({"creditor_iban": "NL91ABNA0417164301"}, PayoutIbanInvalid),
    ({"debit_account_name": "merchant:nobody:available"}, PayoutAccountNotFound),
    ({"debit_account_name": "merchant:7:available"}, PayoutCurrencyUnsupported),
    ({"amount": FUNDED_MINOR + 1}, PayoutInsufficientFunds),
    # precedence: shape before references before limits before funds
    ({"creditor_iban": "x", "debit_account_name": "nope"}, PayoutIbanInvalid),
    ({"debit_account_name": "nope", "amount": 10_000_001}, PayoutAccountNotFound),
    ({"amount": 10_000_001}, PayoutAmountInvalid),
]


@pytest.mark.parametrize(("changes", "error"), BAD_REQUESTS)
def test_bad_input_is_typed_and_changes_nothing(
    world: World, changes: dict[str, object], error: type
) -> None:
    world.request(request_id="ok-1", amount=100)
    head = world.ledger.head()
    with pytest.raises(error):
        world.request(**{"request_id": "bad-1", **changes})  # type: ignore[arg-type]
    assert world.ledger.head() == head
    assert world.balance(MERCHANT) == FUNDED_MINOR - 100
    assert _rows(world, "gateway_payouts") == 1


def test_batch_writes_a_valid_file_and_marks_the_payouts(world: World) -> None:
    payouts = [world.request(request_id=f"r{i}", amount=1_000 + i) for i in range(3)]
    batch = world.payouts.batch("EUR", world.debtor, schema="pain.001.001.09")
    assert batch.state is BatchState.GENERATED
    assert (batch.payout_count, batch.control_sum_minor) == (3, 3_003)
    document = world.payouts.file(batch.batch_id)
    root = etree.fromstring(document)
    xsd = etree.XMLSchema(etree.parse(str(FIXTURES / "php-sepa-xml_pain.001.001.09.xsd")))
    assert xsd.validate(root), xsd.error_log
    ns = {"p": "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"}
    assert root.findtext(".//p:GrpHdr/p:MsgId", namespaces=ns) == batch.message_id
    assert root.findtext(".//p:GrpHdr/p:NbOfTxs", namespaces=ns) == "3"
    assert root.findtext(".//p:GrpHdr/p:CtrlSum", namespaces=ns) == "30.03"
    assert [e.text for e in root.iterfind(".//p:EndToEndId", ns)] == [
        p.end_to_end_id  # type: ignore[attr-defined]
        for p in payouts
    ]
    assert root.findtext(".//p:DbtrAcct/p:Id/p:IBAN", namespaces=ns) == world.debtor.iban
    assert {p.state for p in world.payouts.list()} == {PayoutState.BATCHED}
    trail = world.payouts.batch_file(batch.batch_id).events
    assert [(e["from_state"], e["to_state"]) for e in trail] == [
        (None, "open"), ("open", "generated")
    ]  # fmt: skip
    with pytest.raises(PayoutNothingToBatch):
        world.payouts.batch("EUR", world.debtor)


def test_message_ids_are_unique_and_batches_respect_the_limit(world: World) -> None:
    for i in range(5):
        world.request(request_id=f"r{i}", amount=100)
    batches = [world.payouts.batch("EUR", world.debtor, limit=2) for _ in range(3)]
    assert [b.payout_count for b in batches] == [2, 2, 1]
    assert len({b.message_id for b in batches}) == 3
    with world.database.write() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(
            sa.text("UPDATE gateway_payout_batches SET message_id = :m WHERE id = :i"),
            {"m": batches[0].message_id, "i": batches[1].batch_id},
        )
    with pytest.raises(PayoutInputInvalid):
        world.payouts.batch("EUR", world.debtor, limit=1_001)


def test_an_invalid_file_is_a_typed_error_and_nothing_is_marked(world: World) -> None:
    world.request()
    # sepaxml transliterates names to the SEPA character set; emoji alone leave nothing,
    # and an empty <Nm> fails the XSD.
    emoji = Debtor("\U0001f4b6\U0001f4b6", world.debtor.iban, "simbank")
    with pytest.raises(PayoutFileInvalid):
        world.payouts.batch("EUR", emoji)
    assert _rows(world, "gateway_payout_batches") == 0
    assert _rows(world, "gateway_payout_batch_events") == 0
    assert {p.state for p in world.payouts.list()} == {PayoutState.REQUESTED}
    assert world.payouts.batch("EUR", world.debtor).state is BatchState.GENERATED


def test_batch_needs_the_bank_ledger_account(world: World) -> None:
    world.request()
    with pytest.raises(PayoutAccountNotFound):
        world.payouts.batch("EUR", Debtor("Paykeep", world.debtor.iban, "otherbank"))
    with pytest.raises(PayoutIbanInvalid):
        world.payouts.batch("EUR", Debtor("Paykeep", "DE00", "simbank"))


@pytest.mark.parametrize("fmt", ["camt053", "mt940"])
def test_accepted_then_settled_by_the_statement(
    world: World, bank: BanksimProcess, http: httpx.Client, fmt: str
) -> None:
    _open_bank_account(http, world, balance=500_000)
    payouts = [world.request(request_id=f"r{i}", amount=2_000 * (i + 1)) for i in range(3)]
    batch = world.payouts.batch("EUR", world.debtor)
    accepted = world.payouts.submit(batch.batch_id, bank.base_url)
    assert accepted.state is BatchState.ACCEPTED and accepted.bank_status == "ACCP"
    assert {p.state for p in world.payouts.list()} == {PayoutState.ACCEPTED}
    assert world.payouts.settle() == 0  # nothing on a statement yet
    closed = http.post(f"/bank/accounts/{world.debtor.iban}/close-day").json()
    data = http.get(f"/bank/statements/{closed['statement_id']}", params={"format": fmt}).content
    report = world.statements.import_file(data)
    (outcome,) = report.statements
    assert outcome.matched == 3 and outcome.breaks == [], report.to_json()
    assert world.payouts.settle() == 3
    assert {p.state for p in world.payouts.list()} == {PayoutState.SETTLED}
    assert world.payouts.batch_file(batch.batch_id).batch.state is BatchState.SETTLED
    assert world.balance(CLEARING_ACCOUNT) == 0  # in transit no more
    assert world.balance(BANK_ACCOUNT) == -(FUNDED_MINOR - 12_000)  # an asset: debit-positive
    assert world.balance(MERCHANT) == FUNDED_MINOR - 12_000
    assert world.payouts.settle() == 0
    with pytest.raises(PayoutIllegalTransition):
        world.payouts.submit(batch.batch_id, bank.base_url)
    del payouts


def test_a_rejected_batch_returns_the_money(
    world: World, bank: BanksimProcess, http: httpx.Client
) -> None:
    _open_bank_account(http, world, balance=1_000)  # the bank holds too little: AM04
    world.request(request_id="a", amount=3_000)
    world.request(request_id="b", amount=4_000)
    batch = world.payouts.batch("EUR", world.debtor)
    rejected = world.payouts.submit(batch.batch_id, bank.base_url)
    assert rejected.state is BatchState.REJECTED
    assert rejected.bank_reason is not None and rejected.bank_reason.startswith("AM04")
    payouts = world.payouts.list()
    assert {p.state for p in payouts} == {PayoutState.RETURNED}
    assert all(p.return_transfer_id for p in payouts)
    assert world.balance(MERCHANT) == FUNDED_MINOR
    assert world.balance(CLEARING_ACCOUNT) == 0
    assert world.payouts.resume() == 0  # nothing left half done
    trail = [e["to_state"] for e in world.payouts.batch_file(batch.batch_id).events]
    assert trail == ["open", "generated", "submitted", "rejected"]


def test_an_unreachable_bank_leaves_the_batch_generated(
    world: World, bank: BanksimProcess, http: httpx.Client
) -> None:
    _open_bank_account(http, world, balance=100_000)
    world.request()
    batch = world.payouts.batch("EUR", world.debtor)
    with pytest.raises(PayoutBankUnavailable):
        world.payouts.submit(batch.batch_id, "http://127.0.0.1:9", timeout_s=2)
    assert world.payouts.batch_file(batch.batch_id).batch.state is BatchState.GENERATED
    assert world.payouts.submit(batch.batch_id, bank.base_url).state is BatchState.ACCEPTED


def test_a_lost_answer_is_recovered_from_the_duplicate(
    world: World, bank: BanksimProcess, http: httpx.Client
) -> None:
    """The file reached the bank but the answer was lost (or we crashed): submitting again gets
    `duplicate message id` with the bank's original verdict, and the money left only once."""
    _open_bank_account(http, world, balance=100_000)
    world.request()
    batch = world.payouts.batch("EUR", world.debtor)
    first = http.post("/bank/payment-files", content=world.payouts.file(batch.batch_id))
    assert first.json()["group_status"] == "ACCP"
    assert world.payouts.submit(batch.batch_id, bank.base_url).state is BatchState.ACCEPTED
    bank_account = http.get(f"/bank/accounts/{world.debtor.iban}").json()
    assert bank_account["balance_minor"] == 100_000 - 12_345


def test_written_to_a_directory_then_answered(world: World, tmp_path: Path) -> None:
    world.request()
    batch = world.payouts.batch("EUR", world.debtor)
    submitted = world.payouts.write_to(batch.batch_id, tmp_path / "out")
    assert submitted.state is BatchState.SUBMITTED
    written = tmp_path / "out" / f"{batch.message_id}.xml"
    assert written.read_bytes() == world.payouts.file(batch.batch_id)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [written.name]
    with pytest.raises(PayoutIllegalTransition):
        world.payouts.write_to(batch.batch_id, tmp_path / "out")
    with pytest.raises(PayoutInputInvalid):
        world.payouts.record_bank_answer(batch.batch_id, BankAnswer("MAYBE", None))
    done = world.payouts.record_bank_answer(batch.batch_id, BankAnswer("RJCT", "AC04: closed"))
    assert done.state is BatchState.REJECTED
    assert world.balance(MERCHANT) == FUNDED_MINOR


def test_the_batch_trail_is_append_only(world: World) -> None:
    world.request()
    world.payouts.batch("EUR", world.debtor)
    for statement in (
        "UPDATE gateway_payout_batch_events SET detail = 'x'",
        "DELETE FROM gateway_payout_batch_events",
    ):
        with pytest.raises(sa.exc.DBAPIError), world.database.write() as conn:
            conn.execute(sa.text(statement))
    assert _rows(world, "gateway_payout_batch_events") == 2
