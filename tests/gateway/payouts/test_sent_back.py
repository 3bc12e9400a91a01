"""A settled payout the payee's bank sends back, on both databases, end to end through banksim:
real pain.001 files executed by the bank, real camt.053 (and MT940) statements of what it
booked — the payout's debit one day, the payee's bank's return the next (banksim's
``return_after_settlement`` fault: an ISO reason, perhaps less a fee) — imported, and the
payouts pass (``settle``, as the worker runs it after each import) applying it.

In one transaction the money goes back to the account the payout was drawn from (a fee the
payee's bank kept is charged there as its own transfer), the payout becomes ``returned`` with
the bank's reason, the statement line is matched and its break resolved by Paykeep, and the
payout's owners are told. Once: a second pass, a re-import, two passes at once change nothing.
A credit that is not the payout coming back whole or less a fee stays a break for a person."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from paykeep import limits
from paykeep.bench.gateway import BanksimProcess
from paykeep.config import Settings
from paykeep.gateway.payouts.errors import PayoutInputInvalid
from paykeep.gateway.payouts.model import (
    CLEARING_ACCOUNT,
    BatchState,
    Payout,
    PayoutState,
    ReturnKind,
)
from paykeep.gateway.payouts.repository import PayoutRepository
from paykeep.gateway.payouts.service import PayoutService, ReturnedPayout
from paykeep.gateway.statements.model import BreakState, transfer_id
from paykeep.gateway.statements.repository import StatementRepository
from paykeep.gateway.statements.service import StatementOutcome
from paykeep.ids import derived_id
from paykeep.ledger.audit import verify
from tests.gateway.payouts.conftest import BANK_ACCOUNT, FUNDED_MINOR, MERCHANT, World
from tests.support import paykeep

AMOUNT = 12_345


@dataclass
class Bank:
    """The safeguarding account at banksim, funded as the ledger says it is."""

    world: World
    http: httpx.Client
    url: str

    @property
    def iban(self) -> str:
        return self.world.debtor.iban

    def statement(self, fmt: str = "camt053") -> bytes:
        """The bank closes its day: that day's statement, as the bank sends it."""
        closed = self.http.post(f"/bank/accounts/{self.iban}/close-day").json()
        return self.http.get(
            f"/bank/statements/{closed['statement_id']}", params={"format": fmt}
        ).content

    def close_day(self, fmt: str = "camt053") -> StatementOutcome:
        (outcome,) = self.world.statements.import_file(self.statement(fmt)).statements
        return outcome

    def payees_bank_returns(self, **terms: Any) -> None:
        """From now on the payee's bank sends back what our bank pays (``False``: stops)."""
        value: Any = terms or False
        answer = self.http.post("/bank/faults", json={"return_after_settlement": value})
        assert answer.status_code == 200, answer.text

    def pay_out(self) -> BatchState:
        batch = self.world.payouts.batch("EUR", self.world.debtor)
        return self.world.payouts.submit(batch.batch_id, self.url).state

    def balance(self) -> int:
        return int(self.http.get(f"/bank/accounts/{self.iban}").json()["balance_minor"])

    def receive(self, amount: int, end_to_end_id: str) -> None:
        body = {"amount_minor": amount, "remittance": "Payout 42", "debtor_name": "Tea Shop GmbH",
                "debtor_iban": "NL91ABNA0417164300", "end_to_end_id": end_to_end_id}  # fmt: skip
        answer = self.http.post(f"/bank/accounts/{self.iban}/incoming", json=body)
        assert answer.status_code == 201, answer.text


@pytest.fixture
def sim(world: World, bank: BanksimProcess, http: httpx.Client) -> Iterator[Bank]:
    opened = http.post(
        "/bank/accounts",
        json={"iban": world.debtor.iban, "currency": "EUR", "name": world.debtor.name,
              "opening_balance_minor": FUNDED_MINOR, "business_date": "2026-01-05"},
    )  # fmt: skip
    assert opened.status_code == 201, opened.text
    world.statements.add_account(world.debtor.iban, "EUR", BANK_ACCOUNT)
    simulated = Bank(world, http, bank.base_url)
    yield simulated
    simulated.payees_bank_returns()  # the bank process is shared by the session's tests


@dataclass
class Heard:
    """What a payout owner listening on the service heard, and what it saw of the payout in
    the transaction it was told in."""

    returns: list[ReturnedPayout]
    seen: list[tuple[str, str | None]]

    def __call__(self, conn: Connection, returned: ReturnedPayout) -> None:
        self.returns.append(returned)
        inside = PayoutRepository(conn).payout(returned.payout.payout_id)
        assert inside is not None
        self.seen.append((inside.state.value, None if inside.return_kind is None else
                          inside.return_kind.value))  # fmt: skip


@pytest.fixture
def heard(world: World) -> Heard:
    listener = Heard([], [])
    world.payouts.on_returned(listener)
    return listener


def _settled_payout(world: World, sim: Bank, **terms: Any) -> Payout:
    """A payout of AMOUNT from the merchant, executed by the bank — while its payee's bank sends
    payouts back on ``terms``, if any — on that day's statement and settled."""
    payout = world.request(request_id="po-1", amount=AMOUNT)
    assert isinstance(payout, Payout)
    sim.payees_bank_returns(**terms)
    assert sim.pay_out() is BatchState.ACCEPTED
    sim.payees_bank_returns()  # what the bank executed meanwhile still comes back
    outcome = sim.close_day()
    assert (outcome.matched, outcome.breaks) == (1, [])
    assert world.payouts.settle() == 1
    settled = world.payouts.get(payout.payout_id)
    assert settled.state is PayoutState.SETTLED and settled.return_kind is None
    assert world.balance(MERCHANT) == FUNDED_MINOR - AMOUNT
    return settled


def _line_matched(world: World, statement_row_id: int, line: int) -> bool:
    with world.database.read() as conn:
        return StatementRepository(conn).line_matched(statement_row_id, line)


def test_a_payout_sent_back_goes_back_to_the_merchant_once(
    world: World, sim: Bank, heard: Heard, settings: Settings
) -> None:
    payout = _settled_payout(world, sim, reason="AC04")
    data = sim.statement()
    (outcome,) = world.statements.import_file(data).statements
    # The import alone leaves it a break (the payout's reference, already matched).
    (b,) = outcome.breaks
    assert (b["reason"], b["amount_minor"], b["reference"]) == (
        "duplicate", AMOUNT, payout.end_to_end_id,
    )  # fmt: skip
    assert b["state"] == "open" and heard.returns == []

    assert world.payouts.settle() == 0  # the worker's pass: nothing left to settle, one return
    returned = world.payouts.get(payout.payout_id)
    assert returned.state is PayoutState.RETURNED
    assert returned.return_kind is ReturnKind.SENT_BACK
    assert (returned.return_reason_code, returned.return_fee_minor) == ("AC04", 0)
    assert returned.return_reason == "AC04: the account is closed"
    shown = returned.to_json()["return"]
    assert shown == {"kind": "sent_back", "reason_code": "AC04",
                     "reason": "AC04: the account is closed", "fee_minor": 0}  # fmt: skip

    # The ledger: the line entered clearing:payout (code 45, the id an import gives the line's
    # first leg), the whole payout went back to the merchant (code 41, the one return id a
    # payout has). Nothing is in transit; the ledger's bank account is the bank's balance.
    came_back = world.statements.get_break(b["id"])
    enter = world.ledger.transfer(transfer_id(sim.iban, came_back.statement_id, came_back.line, 0))
    back = world.ledger.transfer(derived_id("payout-return", str(payout.payout_id)))
    bank_id = world.ledger.account_by_name(BANK_ACCOUNT).id
    clearing_id = world.ledger.account_by_name(CLEARING_ACCOUNT).id
    merchant_id = world.ledger.account_by_name(MERCHANT).id
    assert (enter.debit_account_id, enter.credit_account_id, enter.amount_minor, enter.code) == (
        bank_id, clearing_id, AMOUNT, 45,
    )  # fmt: skip
    assert (back.debit_account_id, back.credit_account_id, back.amount_minor, back.code) == (
        clearing_id, merchant_id, AMOUNT, 41,
    )  # fmt: skip
    assert returned.return_transfer_id == back.id
    assert world.balance(MERCHANT) == FUNDED_MINOR
    assert world.balance(CLEARING_ACCOUNT) == 0
    assert -world.balance(BANK_ACCOUNT) == sim.balance() == FUNDED_MINOR
    assert verify(world.database).ok

    # The statement: the line is matched, its break resolved by Paykeep with a trail.
    assert came_back.state is BreakState.MATCHED and came_back.resolved_by == "paykeep"
    assert came_back.resolution_note is not None
    assert f"payout {payout.payout_id}" in came_back.resolution_note
    assert "AC04" in came_back.resolution_note
    assert _line_matched(world, came_back.statement_row_id, came_back.line)
    _, trail = world.statements.break_trail(b["id"])
    assert [(e["from_state"], e["to_state"], e["actor"]) for e in trail] == [
        ("open", "matched", "paykeep")
    ]
    assert str(enter.id) in trail[0]["detail"] and str(back.id) in trail[0]["detail"]
    assert world.statements.open_breaks() == []
    # The owner heard it once, inside the transaction (it saw the payout returned there).
    assert [(r.payout.payout_id, r.kind, r.returned_minor, r.fee_minor) for r in heard.returns] == [
        (payout.payout_id, ReturnKind.SENT_BACK, AMOUNT, 0)
    ]
    assert heard.seen == [("returned", "sent_back")]
    assert (heard.returns[0].statement_id, heard.returns[0].line) == (
        came_back.statement_id, came_back.line,
    )  # fmt: skip
    # Its batch stays settled: the bank did pay every line of it.
    assert world.payouts.batch_file(payout.batch_id or 0).batch.state is BatchState.SETTLED

    # Once: another pass, the same statement again, the operator's settle command.
    head = world.ledger.head()
    assert world.payouts.settle() == 0 and world.payouts.return_sent_back_payouts() == 0
    (again,) = world.statements.import_file(data).statements
    assert again.status == "already_imported"
    done = paykeep("payouts", "settle", "--json", settings=settings)
    assert done.returncode == 0 and json.loads(done.stdout) == {"settled": 0}, done.stderr
    assert world.ledger.head() == head and len(heard.returns) == 1
    assert world.payouts.get(payout.payout_id) == returned
    audit = paykeep("audit", "verify", "--json", settings=settings)
    assert audit.returncode == 0 and json.loads(audit.stdout)["ok"] is True, audit.stderr
    shown_break = paykeep("statements", "show", str(b["id"]), "--json", settings=settings)
    assert json.loads(shown_break.stdout)["break"]["state"] == "matched"

    # The merchant pays out again (an operator's matter whether to the same account).
    world.request(request_id="po-2", amount=AMOUNT)
    assert sim.pay_out() is BatchState.ACCEPTED
    assert (sim.close_day().matched, world.payouts.settle()) == (1, 1)
    assert world.balance(MERCHANT) == FUNDED_MINOR - AMOUNT
    assert -world.balance(BANK_ACCOUNT) == sim.balance()


def test_a_fee_the_payees_bank_kept_is_charged_to_the_account_paid_from(
    world: World, sim: Bank, heard: Heard
) -> None:
    """The payee's bank kept 2.50 and the day's statement comes as MT940, which has no field
    for the return reason: the payout comes back less the fee, charged to the merchant as its
    own transfer; the reason is "none given"."""
    fee = 250
    payout = _settled_payout(world, sim, reason="AC01", fee_minor=fee)
    outcome = sim.close_day("mt940")
    (b,) = outcome.breaks
    assert (b["reason"], b["amount_minor"]) == ("duplicate", AMOUNT - fee)
    world.payouts.settle()

    returned = world.payouts.get(payout.payout_id)
    assert (returned.state, returned.return_kind) == (PayoutState.RETURNED, ReturnKind.SENT_BACK)
    assert (returned.return_reason_code, returned.return_fee_minor) == (None, fee)
    assert returned.return_reason == "the statement gave no reason"
    charged = world.ledger.transfer(derived_id("payout-return-fee", str(payout.payout_id)))
    merchant_id = world.ledger.account_by_name(MERCHANT).id
    clearing_id = world.ledger.account_by_name(CLEARING_ACCOUNT).id
    assert (charged.debit_account_id, charged.credit_account_id, charged.amount_minor,
            charged.code) == (merchant_id, clearing_id, fee, 46)  # fmt: skip
    came_back = world.statements.get_break(b["id"])
    enter = world.ledger.transfer(transfer_id(sim.iban, came_back.statement_id, came_back.line, 0))
    assert (enter.amount_minor, enter.code) == (AMOUNT - fee, 45)
    back = world.ledger.transfer(derived_id("payout-return", str(payout.payout_id)))
    assert (back.amount_minor, back.code) == (AMOUNT, 41)
    assert world.balance(MERCHANT) == FUNDED_MINOR - fee
    assert world.balance(CLEARING_ACCOUNT) == 0
    assert -world.balance(BANK_ACCOUNT) == sim.balance() == FUNDED_MINOR - fee
    assert came_back.state is BreakState.MATCHED
    assert [(r.returned_minor, r.fee_minor) for r in heard.returns] == [(AMOUNT - fee, fee)]
    assert verify(world.database).ok


def test_a_credit_that_is_not_the_payout_coming_back_stays_a_break(
    world: World, sim: Bank, heard: Heard
) -> None:
    """More than was paid is never a return to apply; short by more than a fee is not one
    either. Both stay breaks for a person; the payout stays settled, nothing moves."""
    too_much = _settled_payout(world, sim)
    sim.receive(AMOUNT + 1, too_much.end_to_end_id)
    sim.receive(AMOUNT - limits.PAYOUT_RETURN_FEE_MAX_MINOR - 1, too_much.end_to_end_id)
    outcome = sim.close_day()
    assert sorted(b["amount_minor"] for b in outcome.breaks) == [
        AMOUNT - limits.PAYOUT_RETURN_FEE_MAX_MINOR - 1, AMOUNT + 1,
    ]  # fmt: skip
    head = world.ledger.head()
    assert world.payouts.settle() == 0 and world.payouts.return_sent_back_payouts() == 0
    assert world.payouts.get(too_much.payout_id).state is PayoutState.SETTLED
    assert world.ledger.head() == head and heard.returns == []
    assert sorted(b.id for b in world.statements.open_breaks()) == sorted(
        b["id"] for b in outcome.breaks
    )
    assert world.balance(MERCHANT) == FUNDED_MINOR - AMOUNT

    # The bank's own credit with the whole amount is applied; the others stay breaks, also
    # now that the payout is returned (a payout comes back once).
    sim.receive(AMOUNT, too_much.end_to_end_id)
    sim.close_day()
    assert world.payouts.return_sent_back_payouts() == 1
    assert world.payouts.get(too_much.payout_id).state is PayoutState.RETURNED
    assert len(world.statements.open_breaks()) == 2
    assert world.payouts.return_sent_back_payouts() == 0
    assert world.balance(MERCHANT) == FUNDED_MINOR
    assert verify(world.database).ok


def test_all_of_it_or_nothing(world: World, sim: Bank, heard: Heard) -> None:
    """An owner that cannot record the return (a typed error) rolls all of it back: money,
    payout, statement line and break are as they were, and the next pass applies it."""
    payout = _settled_payout(world, sim, reason="MD07")
    sim.close_day()
    fails = PayoutService(world.database, world.ledger, cipher=world.payouts.cipher,
                          clock=world.clock, statements=world.statements)  # fmt: skip

    def refuse(conn: Connection, returned: ReturnedPayout) -> None:
        raise PayoutInputInvalid("the owner cannot record it")

    fails.on_returned(refuse)
    head = world.ledger.head()
    assert fails.return_sent_back_payouts() == 0
    assert world.ledger.head() == head
    assert world.payouts.get(payout.payout_id).state is PayoutState.SETTLED
    (b,) = world.statements.open_breaks()
    assert b.state is BreakState.OPEN and not _line_matched(world, b.statement_row_id, b.line)

    assert world.payouts.return_sent_back_payouts() == 1
    assert world.payouts.get(payout.payout_id).return_reason_code == "MD07"
    assert world.balance(MERCHANT) == FUNDED_MINOR


def test_two_passes_at_once_return_it_once(world: World, sim: Bank, heard: Heard) -> None:
    payout = _settled_payout(world, sim, reason="AC04")
    sim.close_day()
    other = PayoutService(world.database, world.ledger, cipher=world.payouts.cipher,
                          clock=world.clock, statements=world.statements)  # fmt: skip
    other.on_returned(heard)
    start = threading.Barrier(2)
    applied: list[int] = []

    def run(service: PayoutService) -> None:
        start.wait()
        applied.append(service.return_sent_back_payouts())

    threads = [threading.Thread(target=run, args=(s,)) for s in (world.payouts, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(applied) == [0, 1]
    assert len(heard.returns) == 1
    assert world.payouts.get(payout.payout_id).state is PayoutState.RETURNED
    assert world.balance(MERCHANT) == FUNDED_MINOR
    assert verify(world.database).ok


def test_a_rejected_payout_says_why_too(world: World, sim: Bank, heard: Heard) -> None:
    payout = world.request(request_id="po-1", amount=AMOUNT)
    assert isinstance(payout, Payout)
    assert sim.http.post("/bank/faults", json={"reject_payment_files": True}).status_code == 200
    try:
        assert sim.pay_out() is BatchState.REJECTED
    finally:
        sim.http.post("/bank/faults", json={"reject_payment_files": False})
    returned = world.payouts.get(payout.payout_id)
    assert (returned.state, returned.return_kind, returned.return_reason_code) == (
        PayoutState.RETURNED, ReturnKind.REJECTED, "AG01",
    )  # fmt: skip
    assert returned.return_reason is not None and returned.return_reason.startswith("AG01: ")
    assert returned.return_fee_minor == 0
    assert [(r.kind, r.returned_minor, r.statement_id) for r in heard.returns] == [
        (ReturnKind.REJECTED, AMOUNT, None)
    ]
    assert world.balance(MERCHANT) == FUNDED_MINOR


def test_the_return_reason_is_kept_with_the_statement_line(world: World, sim: Bank) -> None:
    _settled_payout(world, sim, reason="AC06")
    outcome = sim.close_day()
    with world.database.read() as conn:
        reasons = (
            conn.execute(
                sa.text(
                    "SELECT e.return_reason FROM stmt_entries e JOIN stmt_statements s "
                    "ON s.id = e.statement_row_id WHERE s.statement_id = :s"
                ),
                {"s": outcome.statement_id},
            )
            .scalars()
            .all()
        )
    assert reasons == ["AC06"]
