"""Returning unidentified incoming transfers to their sender, on both databases: a real camt.053
in, a break, the return (suspense posting, payout, pain.001 file), the bank's statement of the
outgoing line, and every refusal writing nothing. Crashes are real: a database trigger makes
one step fail, as a process dying there would."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from lxml import etree

from paykeep.config import Settings
from paykeep.errors import PaykeepError
from paykeep.gateway.payouts.model import CLEARING_ACCOUNT, PayoutState
from paykeep.gateway.payouts.service import BankAnswer
from paykeep.gateway.statements.errors import (
    BreakAlreadyResolved,
    BreakNotFound,
    BreakNotReturnable,
    BreakResolutionInvalid,
    BreakReturnInFlight,
    BreakReturnPending,
)
from paykeep.gateway.statements.model import (
    SUSPENSE_ACCOUNT,
    ExpectedMovement,
    Leg,
    suspense_transfer_id,
)
from paykeep.ledger.audit import verify
from paykeep.ledger.errors import AccountNotFound
from tests.gateway.payouts.conftest import BANK_ACCOUNT, FUNDED_MINOR, MERCHANT, World
from tests.gateway.statements.builder import Line, camt053
from tests.support import paykeep

SENDER_IBAN = "DE89370400440532013000"
SENDER_NAME = "Ada Lovelace"
AMOUNT = 4_250
PAIN = {"p": "urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"}


def _stranger(**changes: object) -> Line:
    """A transfer in whose words name nothing anyone expects."""
    fields: dict[str, object] = {
        "amount_minor": AMOUNT,
        "remittance": "thanks XK-99Z",
        "counterparty_name": SENDER_NAME,
        "counterparty_iban": SENDER_IBAN,
        "bank_reference": "BANKREF-77",
    }
    fields.update(changes)
    return Line(**fields)  # type: ignore[arg-type]


def _import(world: World, lines: list[Line], statement_id: str = "STMT-IN-1") -> dict[int, int]:
    """Import a camt.053 on the safeguarding account; returns ``line -> break id``."""
    world.statements.add_account(world.debtor.iban, "EUR", BANK_ACCOUNT)
    data = camt053(lines, iban=world.debtor.iban, statement_id=statement_id, opening_minor=0)
    (outcome,) = world.statements.import_file(data).statements
    return {b["line"]: b["id"] for b in outcome.breaks}


def _rows(world: World, table: str) -> int:
    with world.database.read() as conn:
        return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def _suspense(world: World) -> int | None:
    try:
        return world.balance(SUSPENSE_ACCOUNT)
    except AccountNotFound:
        return None


def test_an_unidentified_transfer_goes_back_and_suspense_returns_to_zero(
    world: World, settings: Settings
) -> None:
    breaks = _import(world, [_stranger()])
    assert list(breaks) == [1]
    (open_break,) = world.statements.open_breaks()
    assert open_break.reason == "unknown_reference"
    bank_before = world.balance(BANK_ACCOUNT)

    returned = world.payouts.return_break(breaks[1], actor="ops-1", note="nobody expects XK-99Z")

    # The line entered the ledger, once, into suspense, under the id derived from the line.
    posted = world.ledger.transfer(returned.suspense_transfer_id)
    assert posted.id == suspense_transfer_id(world.debtor.iban, "STMT-IN-1", 1)
    assert posted.debit_account_id == world.ledger.account_by_name(BANK_ACCOUNT).id
    assert posted.credit_account_id == world.ledger.account_by_name(SUSPENSE_ACCOUNT).id
    assert posted.amount_minor == AMOUNT
    assert world.balance(BANK_ACCOUNT) == bank_before - AMOUNT  # an asset: debit-positive
    # ...and left it at once for clearing:payout, with the return payout.
    assert _suspense(world) == 0
    assert world.balance(CLEARING_ACCOUNT) == AMOUNT
    payout = returned.payout
    assert (payout.amount_minor, payout.currency) == (AMOUNT, "EUR")
    assert payout.debit_account_name == SUSPENSE_ACCOUNT
    assert payout.creditor_iban_last4 == SENDER_IBAN[-4:]
    # The remittance (the sender's own reference) is sealed: the payout does not carry it.
    assert "remittance" not in payout.to_json()
    assert payout.state is PayoutState.REQUESTED
    # The break is resolved `returned`, naming the payout; no break is open any more.
    assert world.statements.open_breaks() == []
    (done,) = world.statements.breaks(include_resolved=True)
    assert (done.resolution, done.resolved_by) == ("returned", "ops-1")
    assert done.resolution_note == f"nobody expects XK-99Z [return payout {payout.payout_id}]"

    # The next pain.001 batch pays the sender back: their IBAN, their name, the amount.
    batch = world.payouts.batch("EUR", world.debtor)
    root = etree.fromstring(world.payouts.file(batch.batch_id))
    (tx,) = root.findall(".//p:CdtTrfTxInf", namespaces=PAIN)
    assert tx.findtext("p:CdtrAcct/p:Id/p:IBAN", namespaces=PAIN) == SENDER_IBAN
    assert tx.findtext("p:Cdtr/p:Nm", namespaces=PAIN) == SENDER_NAME
    assert tx.findtext("p:Amt/p:InstdAmt", namespaces=PAIN) == "42.50"
    assert tx.findtext("p:PmtId/p:EndToEndId", namespaces=PAIN) == payout.end_to_end_id
    remittance = tx.findtext("p:RmtInf/p:Ustrd", namespaces=PAIN)
    assert remittance == "Return of unidentified transfer BANKREF-77"

    # The bank accepts; its next statement shows the return leaving; it reconciles like any
    # payout's line and empties clearing:payout. Suspense stays at zero.
    world.payouts.record_bank_answer(batch.batch_id, BankAnswer("ACCP", None))
    out = camt053(
        [Line(-AMOUNT, payout.end_to_end_id)],
        iban=world.debtor.iban,
        statement_id="STMT-OUT-1",
        opening_minor=AMOUNT,
    )
    (outcome,) = world.statements.import_file(out).statements
    assert (outcome.matched, outcome.breaks) == (1, [])
    assert world.payouts.settle() == 1
    assert world.payouts.get(payout.payout_id).state is PayoutState.SETTLED
    assert world.balance(CLEARING_ACCOUNT) == 0
    assert _suspense(world) == 0
    assert world.balance(BANK_ACCOUNT) == bank_before  # in and back out
    assert verify(world.database).ok
    audit = paykeep("audit", "verify", "--json", settings=settings)
    assert audit.returncode == 0, audit.stderr
    assert json.loads(audit.stdout)["ok"] is True


def test_returning_twice_pays_once(world: World) -> None:
    breaks = _import(world, [_stranger()])
    first = world.payouts.return_break(breaks[1], actor="ops-1", note="unknown payer")
    head = world.ledger.head()
    with pytest.raises(BreakReturnInFlight) as caught:
        world.payouts.return_break(breaks[1], actor="ops-2", note="again")
    assert caught.value.code == "statement_break_return_in_flight"
    assert world.ledger.head() == head
    assert _rows(world, "gateway_payouts") == 1
    assert world.payouts.list()[0].payout_id == first.payout.payout_id
    assert world.balance(CLEARING_ACCOUNT) == AMOUNT


def _inject_fault(world: World, table: str, event: str) -> None:
    """Make every ``event`` on ``table`` fail, as a crash at that step would."""
    with world.database.write() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(
                sa.text(
                    "CREATE FUNCTION inject_fault() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    "BEGIN RAISE EXCEPTION 'injected fault'; END $$"
                )
            )
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER inject_fault BEFORE {event} ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION inject_fault()"
                )
            )
        else:
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER inject_fault BEFORE {event} ON {table} "
                    "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
                )
            )


def _heal(world: World, table: str) -> None:
    with world.database.write() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text(f"DROP TRIGGER inject_fault ON {table}"))
            conn.execute(sa.text("DROP FUNCTION inject_fault()"))
        else:
            conn.execute(sa.text("DROP TRIGGER inject_fault"))


@pytest.mark.parametrize(
    ("table", "event"), [("gateway_payouts", "INSERT"), ("stmt_breaks", "UPDATE")]
)
def test_a_crash_anywhere_in_a_return_leaves_nothing_and_the_retry_does_it_all(
    world: World, table: str, event: str
) -> None:
    """A return is one transaction: the line entering suspense, the payout's transfer to
    clearing:payout, the payout row and the break marked returned. A failure at the payout
    row or at the break (as a process dying there would) leaves none of them; the break is
    still open and may be returned (or resolved another way), and the return does it all."""
    breaks = _import(world, [_stranger()])
    bank_before = world.balance(BANK_ACCOUNT)
    head = world.ledger.head()
    _inject_fault(world, table, event)
    with pytest.raises(sa.exc.DBAPIError, match="injected fault"):
        world.payouts.return_break(breaks[1], actor="ops-1", note="unknown payer")
    _heal(world, table)
    assert world.ledger.head() == head
    assert _rows(world, "gateway_payouts") == 0
    assert _rows(world, "stmt_break_events") == 0
    assert [b.id for b in world.statements.open_breaks()] == [breaks[1]]
    assert world.balance(BANK_ACCOUNT) == bank_before
    assert (_suspense(world), world.balance(CLEARING_ACCOUNT)) == (0, 0)

    returned = world.payouts.return_break(breaks[1], actor="ops-1", note="unknown payer")
    assert world.ledger.head().last_seq == head.last_seq + 2  # into suspense, on to clearing
    assert _rows(world, "gateway_payouts") == 1
    assert returned.payout.amount_minor == AMOUNT
    assert world.balance(BANK_ACCOUNT) == bank_before - AMOUNT
    assert (_suspense(world), world.balance(CLEARING_ACCOUNT)) == (0, AMOUNT)
    assert world.statements.open_breaks() == []
    assert returned.break_.state.value == "returned" and returned.break_.return_attempts == 1


def test_a_return_interrupted_before_0015_is_finished_by_the_retry(world: World) -> None:
    """Before migration 0015 a return was three transactions, and one could stop with the line
    already in suspense and no payout. Such a break cannot be explained away or matched while
    its money is in suspense (`statement_break_return_pending`); the return finishes it, the
    suspense posting answered `exists`."""
    breaks = _import(world, [_stranger()])
    b = world.statements.get_break(breaks[1])
    line = world.statements.returnable_line(b)
    world.statements.ensure_suspense_account("EUR")
    (parked,) = world.ledger.create_transfers([world.statements.park_transfer(line)])
    assert parked.applied_or_exists
    bank_before = world.balance(BANK_ACCOUNT)
    head = world.ledger.head()
    with pytest.raises(BreakReturnPending):
        world.statements.resolve_break(breaks[1], actor="ops-2", note="explained instead")
    assert world.ledger.head() == head and world.statements.open_breaks() != []

    returned = world.payouts.return_break(breaks[1], actor="ops-1", note="unknown payer")
    assert world.ledger.head().last_seq == head.last_seq + 1  # the payout's transfer only
    assert returned.suspense_transfer_id == line.suspense_transfer_id
    assert world.balance(BANK_ACCOUNT) == bank_before
    assert (_suspense(world), world.balance(CLEARING_ACCOUNT)) == (0, AMOUNT)
    assert world.statements.open_breaks() == []


def test_identified_but_unusable_credits_may_go_back_too(world: World) -> None:
    """A one-shot reference paid with the wrong amount is refused by the matcher and may not be
    matched by hand; returning it is the way the payer gets it back."""
    world.statements.add_account(world.debtor.iban, "EUR", BANK_ACCOUNT)
    world.statements.expect(
        ExpectedMovement(
            "INV-9", world.debtor.iban, "credit", 3_000, "EUR",
            legs=(Leg(BANK_ACCOUNT, MERCHANT, 1),),  # never posted
        )
    )  # fmt: skip
    breaks = _import(world, [_stranger(amount_minor=3_100, remittance="INV-9")])
    (b,) = world.statements.open_breaks()
    assert b.reason == "amount_mismatch"
    returned = world.payouts.return_break(breaks[1], actor="ops-1", note="paid 31.00 for 30.00")
    assert returned.payout.amount_minor == 3_100


def test_refusals_are_typed_and_write_nothing(world: World) -> None:
    lines = [
        _stranger(),  # 1 returnable
        _stranger(amount_minor=-1_000),  # 2 a debit: our money going out
        _stranger(counterparty_iban=None),  # 3 the bank did not say where it came from
        _stranger(counterparty_name=None),  # 4 nor who sent it
        _stranger(counterparty_iban="DE00370400440532013000"),  # 5 not a valid IBAN
        _stranger(amount_minor=2_000, remittance="PAYOUT-X"),  # 6 wrong direction
        _stranger(amount_minor=20_000_000),  # 7 above the payout limit
        _stranger(amount_minor=500),  # 8 explained first
    ]
    world.statements.add_account(world.debtor.iban, "EUR", BANK_ACCOUNT)
    world.statements.expect(
        ExpectedMovement(
            "PAYOUT-X", world.debtor.iban, "debit", 2_000, "EUR",
            legs=(Leg(MERCHANT, BANK_ACCOUNT, 42),),  # never posted
        )
    )  # fmt: skip
    breaks = _import(world, lines)
    assert sorted(breaks) == list(range(1, 9))
    world.statements.resolve_break(breaks[8], actor="ops-1", note="bank's own correction")
    cases: list[tuple[object, dict[str, str], type[PaykeepError]]] = [
        (999_999, {}, BreakNotFound),
        (0, {}, BreakNotFound),
        ("1", {}, BreakNotFound),
        (breaks[8], {}, BreakAlreadyResolved),
        (breaks[2], {}, BreakNotReturnable),
        (breaks[3], {}, BreakNotReturnable),
        (breaks[4], {}, BreakNotReturnable),
        (breaks[5], {}, BreakNotReturnable),
        (breaks[6], {}, BreakNotReturnable),
        (breaks[7], {}, BreakNotReturnable),
        (breaks[1], {"actor": ""}, BreakResolutionInvalid),
        (breaks[1], {"actor": "   "}, BreakResolutionInvalid),
        (breaks[1], {"note": ""}, BreakResolutionInvalid),
        (breaks[1], {"note": "x" * 5_000}, BreakResolutionInvalid),
        # precedence: shape before identity, identity before state
        (999_999, {"actor": ""}, BreakResolutionInvalid),
        (breaks[8], {"note": ""}, BreakResolutionInvalid),
    ]
    head, counts = world.ledger.head(), world.statements.row_counts()
    open_before = world.statements.open_breaks()
    for break_id, changes, error in cases:
        kwargs = {"actor": "ops-1", "note": "send it back", **changes}
        with pytest.raises(error) as caught:
            world.payouts.return_break(break_id, **kwargs)  # type: ignore[arg-type]
        assert caught.value.code == error.code, (break_id, changes)
        assert world.ledger.head() == head, (break_id, changes)
        assert _rows(world, "gateway_payouts") == 0
        assert _suspense(world) is None  # not even the suspense account was created
        assert world.statements.row_counts() == counts
        assert world.statements.open_breaks() == open_before
    # The IBAN is not echoed by the refusal of the invalid one.
    with pytest.raises(BreakNotReturnable) as invalid:
        world.payouts.return_break(breaks[5], actor="ops-1", note="n")
    assert "DE00370400440532013000" not in str(invalid.value)
    # The one good line still goes back.
    assert world.payouts.return_break(breaks[1], actor="ops-1", note="n").payout.amount_minor


def test_the_command_line_end_to_end(world: World, settings: Settings) -> None:
    breaks = _import(world, [_stranger(), _stranger(amount_minor=-700)])
    listed = paykeep("statements", "breaks", "--json", settings=settings)
    assert listed.returncode == 0, listed.stderr
    assert [b["id"] for b in json.loads(listed.stdout)["breaks"]] == [breaks[1], breaks[2]]

    done = paykeep("statements", "return", str(breaks[1]), "--actor", "ops-1", "--note",
                   "unknown payer", "--json", settings=settings)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["break"]["resolution"] == "returned"
    assert out["payout"]["amount_minor"] == AMOUNT
    assert out["payout"]["creditor_iban"] == f"****{SENDER_IBAN[-4:]}"
    assert SENDER_IBAN not in done.stdout and SENDER_NAME not in done.stdout
    assert world.balance(CLEARING_ACCOUNT) == AMOUNT

    for args, needle in [
        ((str(breaks[1]), "--actor", "ops-1", "--note", "n"), "statement_break_return_in_flight"),
        ((str(breaks[2]), "--actor", "ops-1", "--note", "n"), "statement_break_not_returnable"),
        (("999999", "--actor", "ops-1", "--note", "n"), "statement_break_not_found"),
        ((str(breaks[2]), "--actor", " ", "--note", "n"), "statement_break_resolution_invalid"),
    ]:
        refused = paykeep("statements", "return", *args, settings=settings)
        assert refused.returncode == 2, (args, refused.stderr)
        assert needle in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert _rows(world, "gateway_payouts") == 1
    assert world.balance(CLEARING_ACCOUNT) == AMOUNT

    everything = paykeep("statements", "breaks", "--all", "--json", settings=settings)
    shown = {b["id"]: b["resolution"] for b in json.loads(everything.stdout)["breaks"]}
    assert shown == {breaks[1]: "returned", breaks[2]: None}
    plain = paykeep("statements", "breaks", "--all", settings=settings)
    assert f"#{breaks[1]}" in plain.stdout and "[returned by ops-1:" in plain.stdout
    still_open = paykeep("statements", "breaks", settings=settings)
    assert f"#{breaks[1]} " not in still_open.stdout and f"#{breaks[2]} " in still_open.stdout
    assert world.balance(MERCHANT) == FUNDED_MINOR  # no merchant's money was touched
