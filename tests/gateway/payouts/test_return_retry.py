"""A return to sender the bank does not carry out, on both databases, end to end through banksim:
real pain.001 files, the bank's pain.002-like verdicts (a file it cannot cover is rejected
AM04; the reject fault rejects AG01), and real camt.053 statements of what it booked —
including a return the payee's bank sent back.

The money of a failed return is back in ``suspense:unidentified`` in the transaction that
records the failure, the break waits for a person again (``return_failed``, with the bank's
reason, in ``statements breaks`` and its trail), and the operator may send it again (to a
corrected account), a bounded number of times, or match or explain it instead. Never two
returns of one break at once, never a return after the money left."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from lxml import etree

from paykeep import limits
from paykeep.bench.gateway import BanksimProcess
from paykeep.config import Settings
from paykeep.errors import PaykeepError
from paykeep.gateway.payouts.model import CLEARING_ACCOUNT, BatchState, PayoutState
from paykeep.gateway.payouts.service import PayoutService, ReturnedBreak
from paykeep.gateway.statements.errors import (
    BreakAlreadyResolved,
    BreakAlreadyReturned,
    BreakNotFound,
    BreakNotReturnable,
    BreakResolutionInvalid,
    BreakReturnAttemptsExhausted,
    BreakReturnInFlight,
)
from paykeep.gateway.statements.model import (
    SUSPENSE_ACCOUNT,
    BreakState,
    ExpectedMovement,
    Leg,
    suspense_release_transfer_id,
    suspense_transfer_id,
)
from paykeep.gateway.statements.service import StatementService
from paykeep.ids import derived_id
from paykeep.ledger.audit import verify
from paykeep.ledger.errors import AccountNotFound
from paykeep.ledger.service import Ledger
from tests.gateway.payouts.conftest import BANK_ACCOUNT, FUNDED_MINOR, MERCHANT, World
from tests.support import paykeep

SENDER_IBAN = "DE89370400440532013000"
SENDER_NAME = "Ada Lovelace"
CORRECTED_IBAN = "GB82WEST12345698765432"
CORRECTED_NAME = "Augusta Ada King"
AMOUNT = 4_250
PAIN = {"p": "urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"}


@dataclass
class Bank:
    """The safeguarding account at banksim, seen the way Paykeep sees it: files go in over
    HTTP, statements come back as camt.053 bytes and are imported."""

    world: World
    http: httpx.Client
    url: str

    @property
    def iban(self) -> str:
        return self.world.debtor.iban

    def receive(self, amount: int = AMOUNT, **fields: Any) -> None:
        body = {"amount_minor": amount, "remittance": "thanks XK-99Z",
                "debtor_name": SENDER_NAME, "debtor_iban": SENDER_IBAN, **fields}  # fmt: skip
        answer = self.http.post(f"/bank/accounts/{self.iban}/incoming", json=body)
        assert answer.status_code == 201, answer.text

    def close_day(self) -> Any:
        """The day's camt.053 from the bank, imported; the statement's outcome."""
        closed = self.http.post(f"/bank/accounts/{self.iban}/close-day").json()
        data = self.http.get(
            f"/bank/statements/{closed['statement_id']}", params={"format": "camt053"}
        ).content
        (outcome,) = self.world.statements.import_file(data).statements
        return outcome

    def pay_out(self) -> BatchState:
        """The next pain.001 batch, sent to the bank; the bank's verdict."""
        batch = self.world.payouts.batch("EUR", self.world.debtor)
        return self.world.payouts.submit(batch.batch_id, self.url).state

    def reject_files(self, on: bool) -> None:
        answer = self.http.post("/bank/faults", json={"reject_payment_files": on})
        assert answer.status_code == 200, answer.text

    def balance(self) -> int:
        return int(self.http.get(f"/bank/accounts/{self.iban}").json()["balance_minor"])


@pytest.fixture
def sim(world: World, bank: BanksimProcess, http: httpx.Client) -> Iterator[Bank]:
    opened = http.post(
        "/bank/accounts",
        json={"iban": world.debtor.iban, "currency": "EUR", "name": world.debtor.name,
              "opening_balance_minor": 0, "business_date": "2026-01-05"},
    )  # fmt: skip
    assert opened.status_code == 201, opened.text
    world.statements.add_account(world.debtor.iban, "EUR", BANK_ACCOUNT)
    simulated = Bank(world, http, bank.base_url)
    yield simulated
    simulated.reject_files(False)  # the bank process is shared by the session's tests


def _unidentified(sim: Bank) -> int:
    """A stranger's transfer arrives and its statement line becomes a break; its id."""
    sim.receive()
    outcome = sim.close_day()
    (b,) = outcome.breaks
    assert (b["reason"], b["amount_minor"], b["state"]) == ("unknown_reference", AMOUNT, "open")
    return int(b["id"])


def _failed_return(sim: Bank, break_id: int, **kwargs: Any) -> ReturnedBreak:
    """Return the break and have the bank reject the file (AG01)."""
    returned = sim.world.payouts.return_break(
        break_id, actor="ops-1", note="nobody expects XK-99Z", **kwargs
    )
    sim.reject_files(True)
    assert sim.pay_out() is BatchState.REJECTED
    sim.reject_files(False)
    return returned


def _suspense(world: World) -> int | None:
    try:
        return world.balance(SUSPENSE_ACCOUNT)
    except AccountNotFound:
        return None


def _rows(world: World, table: str) -> int:
    with world.database.read() as conn:
        return int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def _snapshot(world: World) -> tuple[object, ...]:
    """Everything a refused command must leave as it was."""
    return (
        world.ledger.head(),
        world.statements.row_counts(),
        _rows(world, "gateway_payouts"),
        world.statements.breaks(include_resolved=True),
    )


def _refused(fn: Callable[[], object], error: type[PaykeepError], world: World) -> PaykeepError:
    before = _snapshot(world)
    with pytest.raises(error) as caught:
        fn()
    assert caught.value.code == error.code
    assert _snapshot(world) == before
    return caught.value


def test_a_rejected_return_comes_back_to_suspense_and_the_retry_pays_the_sender(
    world: World, sim: Bank, settings: Settings
) -> None:
    break_id = _unidentified(sim)
    bank_before = world.balance(BANK_ACCOUNT)
    first = world.payouts.return_break(break_id, actor="ops-1", note="nobody expects XK-99Z")
    assert first.attempt == 1 and first.payout.request_id.startswith("statement-return:")
    # A merchant's payout in the same file is more than the bank holds: AM04, the whole file.
    world.request(request_id="merchant-1", amount=10_000)
    assert sim.pay_out() is BatchState.REJECTED
    payout = world.payouts.get(first.payout.payout_id)
    assert payout.state is PayoutState.RETURNED

    # The money is back where each payout came from: the merchant's account, and for the
    # return, suspense — by the ledger transfer the rejection posted (code 41).
    assert world.balance(MERCHANT) == FUNDED_MINOR
    assert (_suspense(world), world.balance(CLEARING_ACCOUNT)) == (AMOUNT, 0)
    back = world.ledger.transfer(derived_id("payout-return", str(payout.payout_id)))
    assert back.debit_account_id == world.ledger.account_by_name(CLEARING_ACCOUNT).id
    assert back.credit_account_id == world.ledger.account_by_name(SUSPENSE_ACCOUNT).id
    assert (back.amount_minor, back.code, payout.return_transfer_id) == (AMOUNT, 41, back.id)

    # The break waits for a person again, saying why; the bank's own words.
    failed = world.statements.get_break(break_id)
    assert failed.state is BreakState.RETURN_FAILED
    assert (failed.return_attempts, failed.return_payout_id) == (1, payout.payout_id)
    assert failed.return_failure is not None and "AM04" in failed.return_failure
    assert failed.resolution is None and failed.resolved_by is None
    assert [b.id for b in world.statements.open_breaks()] == [break_id]
    listed = paykeep("statements", "breaks", "--json", settings=settings)
    assert listed.returncode == 0, listed.stderr
    (shown,) = json.loads(listed.stdout)["breaks"]
    assert shown["id"] == break_id and shown["state"] == "return_failed"
    assert "AM04" in shown["return_failure"]
    assert (shown["return_attempts"], shown["return_attempts_max"]) == (1, 3)
    text = paykeep("statements", "breaks", settings=settings).stdout
    assert f"#{break_id} " in text and "[return failed, 1 of 3 attempts made: the bank" in text
    trail = json.loads(paykeep("statements", "show", str(break_id), "--json",
                               settings=settings).stdout)["trail"]  # fmt: skip
    assert [(e["from_state"], e["to_state"], e["actor"]) for e in trail] == [
        ("open", "returned", "ops-1"),
        ("returned", "return_failed", "paykeep"),
    ]
    assert "attempt 1 of 3" in trail[0]["detail"] and "AM04" in trail[1]["detail"]
    assert SENDER_IBAN not in json.dumps(trail) and SENDER_NAME not in json.dumps(trail)
    plain = paykeep("statements", "show", str(break_id), settings=settings).stdout
    assert "state: return_failed" in plain and "returned -> return_failed by paykeep" in plain
    missing = paykeep("statements", "show", "999999", settings=settings)
    assert missing.returncode == 2 and "statement_break_not_found" in missing.stderr

    # The operator sends it again, from the command line: a new payout from suspense.
    again = paykeep("statements", "return", str(break_id), "--actor", "ops-2", "--note",
                    "bank had no cover; again", "--json", settings=settings)  # fmt: skip
    assert again.returncode == 0, again.stderr
    retried = json.loads(again.stdout)
    assert (retried["attempt"], retried["break"]["state"]) == (2, "returned")
    second = world.payouts.get(retried["payout"]["payout_id"])
    assert second.payout_id != payout.payout_id
    assert second.request_id == f"{payout.request_id}:2"
    assert (second.debit_account_name, second.amount_minor) == (SUSPENSE_ACCOUNT, AMOUNT)
    assert (_suspense(world), world.balance(CLEARING_ACCOUNT)) == (0, AMOUNT)

    # It leaves in the next file, to where the first attempt went; the bank takes it.
    batch = world.payouts.batch("EUR", world.debtor)
    (tx,) = etree.fromstring(world.payouts.file(batch.batch_id)).findall(
        ".//p:CdtTrfTxInf", namespaces=PAIN
    )
    assert tx.findtext("p:CdtrAcct/p:Id/p:IBAN", namespaces=PAIN) == SENDER_IBAN
    assert tx.findtext("p:Cdtr/p:Nm", namespaces=PAIN) == SENDER_NAME
    assert world.payouts.submit(batch.batch_id, sim.url).state is BatchState.ACCEPTED
    outcome = sim.close_day()
    assert (outcome.matched, outcome.breaks) == (1, [])
    assert world.payouts.settle() == 1
    assert world.payouts.get(second.payout_id).state is PayoutState.SETTLED
    done = world.statements.get_break(break_id)
    assert (done.state, done.return_attempts, done.return_payout_id) == (
        BreakState.RETURNED, 2, second.payout_id,
    )  # fmt: skip
    assert world.statements.open_breaks() == []

    # Conserved: the money came in and went out once; the bank agrees; nothing in transit.
    assert (_suspense(world), world.balance(CLEARING_ACCOUNT)) == (0, 0)
    assert world.balance(BANK_ACCOUNT) == bank_before
    assert world.balance(MERCHANT) == FUNDED_MINOR
    assert sim.balance() == 0
    assert verify(world.database).ok
    audit = paykeep("audit", "verify", "--json", settings=settings)
    assert audit.returncode == 0 and json.loads(audit.stdout)["ok"] is True, audit.stderr


def _inject_fault(world: World, table: str, event: str) -> None:
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


def test_the_money_and_the_break_change_in_one_transaction(world: World, sim: Bank) -> None:
    """If the break cannot be reopened (a database trigger refuses, as a crash there would),
    the money does not move back either: the payout stays batched and clearing:payout keeps
    it, and resume backs it off (``paykeep.db.quarantine``). The next resume after the wait
    does all of it."""
    break_id = _unidentified(sim)
    returned = world.payouts.return_break(break_id, actor="ops-1", note="unknown payer")
    _inject_fault(world, "stmt_breaks", "UPDATE")
    sim.reject_files(True)
    assert sim.pay_out() is BatchState.REJECTED  # the bank's verdict is recorded all the same
    _heal(world, "stmt_breaks")
    payout = world.payouts.get(returned.payout.payout_id)
    (failure,) = world.payouts.quarantine.failures("gateway.payouts.resume")
    assert failure.item_id == str(payout.payout_id)
    assert failure.error_code.startswith("database_")  # the trigger's refusal
    assert (payout.state, payout.return_transfer_id) == (PayoutState.BATCHED, None)
    assert derived_id("payout-return", str(payout.payout_id)) not in (
        world.ledger.lookup_transfers([derived_id("payout-return", str(payout.payout_id))])
    )
    assert (_suspense(world), world.balance(CLEARING_ACCOUNT)) == (0, AMOUNT)
    assert world.statements.get_break(break_id).state is BreakState.RETURNED

    assert world.payouts.resume() == 0  # backed off
    world.clock.advance(limits.WORKER_ITEM_BACKOFF_S[0])
    assert world.payouts.resume() == 1
    assert world.payouts.get(payout.payout_id).state is PayoutState.RETURNED
    assert (_suspense(world), world.balance(CLEARING_ACCOUNT)) == (AMOUNT, 0)
    assert world.statements.get_break(break_id).state is BreakState.RETURN_FAILED
    assert world.payouts.resume() == 0


def test_a_retry_is_refused_while_one_is_in_flight_and_after_the_money_left(
    world: World, sim: Bank
) -> None:
    break_id = _unidentified(sim)
    _failed_return(sim, break_id)
    retry = world.payouts.return_break(break_id, actor="ops-2", note="again")
    assert retry.attempt == 2

    def again(**kwargs: Any) -> Callable[[], object]:
        return lambda: world.payouts.return_break(break_id, actor="ops-3", note="n", **kwargs)

    # Requested, then in the bank's hands: in flight, whatever the destination asked for.
    _refused(again(), BreakReturnInFlight, world)
    _refused(again(creditor_iban=CORRECTED_IBAN), BreakReturnInFlight, world)
    assert sim.pay_out() is BatchState.ACCEPTED
    _refused(again(), BreakReturnInFlight, world)
    # A returned break is resolved: no explaining or matching it either.
    _refused(
        lambda: world.statements.resolve_break(break_id, actor="ops-3", note="n"),
        BreakAlreadyResolved,
        world,
    )
    # The statement shows it leaving: returned for good.
    sim.close_day()
    assert world.payouts.settle() == 1
    error = _refused(again(), BreakAlreadyReturned, world)
    assert "left the bank" in error.message
    assert (_suspense(world), world.balance(CLEARING_ACCOUNT)) == (0, 0)
    assert _rows(world, "gateway_payouts") == 2


def _race(*calls: Callable[[], object]) -> list[object]:
    """Run ``calls`` at once on threads; each one's result or error."""
    start = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        start.wait(timeout=30)
        try:
            results[i] = calls[i]()
        except Exception as exc:  # the test sorts the outcomes out
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    return results


def _twin(world: World) -> tuple[PayoutService, StatementService]:
    """Second services on the same database, as a second operator's process would have."""
    ledger = Ledger(world.database, world.clock)
    statements = StatementService(world.database, ledger, world.clock, cipher=world.payouts.cipher)
    payouts = PayoutService(
        world.database, ledger, cipher=world.payouts.cipher, clock=world.clock,
        statements=statements,
    )  # fmt: skip
    return payouts, statements


def test_two_retries_at_once_make_one_payout(world: World, sim: Bank) -> None:
    """Two operators retry the same failed return at the same instant: one payout is made,
    the other is told the return is in flight; and a retry racing an explanation of the same
    break: exactly one of them happens, and suspense gives the money once."""
    twin, twin_statements = _twin(world)
    for n in range(4):
        break_id = _unidentified(sim)
        _failed_return(sim, break_id)
        payouts_before = _rows(world, "gateway_payouts")
        if n % 2 == 0:
            results = _race(
                lambda: world.payouts.return_break(break_id, actor="ops-a", note="a"),  # noqa: B023
                lambda: twin.return_break(break_id, actor="ops-b", note="b"),  # noqa: B023
            )
            won = [r for r in results if isinstance(r, ReturnedBreak)]
            lost = [r for r in results if not isinstance(r, ReturnedBreak)]
            assert len(won) == 1 and len(lost) == 1, results
            assert isinstance(lost[0], BreakReturnInFlight), lost
            assert _rows(world, "gateway_payouts") == payouts_before + 1
            assert world.statements.get_break(break_id).return_attempts == 2
        else:
            results = _race(
                lambda: world.payouts.return_break(break_id, actor="ops-a", note="a"),  # noqa: B023
                lambda: twin_statements.resolve_break(break_id, actor="ops-b", note="b"),  # noqa: B023
            )
            errors = [r for r in results if isinstance(r, Exception)]
            assert len(errors) == 1 and isinstance(errors[0], BreakAlreadyResolved), results
            state = world.statements.get_break(break_id).state
            assert state in (BreakState.RETURNED, BreakState.EXPLAINED)
            made = _rows(world, "gateway_payouts") - payouts_before
            assert made == (1 if state is BreakState.RETURNED else 0)
        # Whoever won, the money left suspense once: to a payout or back out of the ledger.
        assert _suspense(world) == 0
        if world.payouts.list(PayoutState.REQUESTED):
            assert sim.pay_out() is BatchState.ACCEPTED  # out of the next round's file
    assert verify(world.database).ok


def test_attempts_are_bounded_then_the_break_is_matched(world: World, sim: Bank) -> None:
    break_id = _unidentified(sim)
    _failed_return(sim, break_id)
    for attempt in range(2, limits.STATEMENT_RETURN_ATTEMPTS_MAX + 1):
        retried = world.payouts.return_break(break_id, actor="ops-1", note=f"try {attempt}")
        assert retried.attempt == attempt
        sim.reject_files(True)
        assert sim.pay_out() is BatchState.REJECTED
        sim.reject_files(False)
    failed = world.statements.get_break(break_id)
    assert (failed.state, failed.return_attempts) == (BreakState.RETURN_FAILED, 3)
    assert failed.return_failure is not None and "AG01" in failed.return_failure
    error = _refused(
        lambda: world.payouts.return_break(break_id, actor="ops-1", note="once more"),
        BreakReturnAttemptsExhausted,
        world,
    )
    assert "match it or explain it" in error.message
    assert _suspense(world) == AMOUNT

    # The sender writes in: it was their payment for the merchant's invoice XK-99Z.
    world.statements.expect(
        ExpectedMovement("XK-99Z", world.debtor.iban, "credit", AMOUNT, "EUR",
                         legs=(Leg(BANK_ACCOUNT, MERCHANT, 1),))
    )  # fmt: skip
    bank_before = world.balance(BANK_ACCOUNT)
    matched = world.statements.resolve_break(
        break_id, actor="ops-2", note="Ada's payment of XK-99Z", match_reference="xk-99z"
    )
    assert (matched.state, matched.resolution) == (BreakState.MATCHED, "matched")
    # The line left suspense (code 44) and was posted like any match: the merchant has it.
    release = world.ledger.transfer(
        suspense_release_transfer_id(world.debtor.iban, failed.statement_id, failed.line)
    )
    assert (release.amount_minor, release.code) == (AMOUNT, 44)
    assert _suspense(world) == 0
    assert world.balance(MERCHANT) == FUNDED_MINOR + AMOUNT
    assert world.balance(BANK_ACCOUNT) == bank_before
    assert world.balance(CLEARING_ACCOUNT) == 0
    trail = world.statements.break_trail(break_id)[1]
    assert [e["to_state"] for e in trail] == [
        "returned", "return_failed", "returned", "return_failed", "returned", "return_failed",
        "matched",
    ]  # fmt: skip
    assert verify(world.database).ok


def test_a_failed_return_explained_leaves_suspense(world: World, sim: Bank) -> None:
    break_id = _unidentified(sim)
    bank_before_line = world.balance(BANK_ACCOUNT)
    _failed_return(sim, break_id)
    assert _suspense(world) == AMOUNT
    explained = world.statements.resolve_break(
        break_id, actor="ops-2", note="the sender's bank reversed its own transfer"
    )
    assert explained.state is BreakState.EXPLAINED
    # Out of suspense and out of the ledger again, as any explained line is.
    assert _suspense(world) == 0
    assert world.balance(BANK_ACCOUNT) == bank_before_line
    _refused(
        lambda: world.payouts.return_break(break_id, actor="ops-1", note="n"),
        BreakAlreadyResolved,
        world,
    )
    assert verify(world.database).ok


def _every_value(world: World) -> Iterator[tuple[str, object]]:
    """Every value of every table (what a copy of the database would give away)."""
    with world.database.read() as conn:
        tables = sa.inspect(conn).get_table_names()
        for table in tables:
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")):
                for value in row:
                    yield table, value


def test_a_retry_may_go_to_a_corrected_account_sealed_at_rest(
    world: World, sim: Bank, settings: Settings
) -> None:
    break_id = _unidentified(sim)
    _failed_return(sim, break_id)
    done = paykeep("statements", "return", str(break_id), "--actor", "ops-2", "--note",
                   "sender gave a new account", "--iban", CORRECTED_IBAN, "--name",
                   CORRECTED_NAME, "--json", settings=settings)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["payout"]["creditor_iban"] == f"****{CORRECTED_IBAN[-4:]}"
    assert CORRECTED_IBAN not in done.stdout and CORRECTED_NAME not in done.stdout
    batch = world.payouts.batch("EUR", world.debtor)
    (tx,) = etree.fromstring(world.payouts.file(batch.batch_id)).findall(
        ".//p:CdtTrfTxInf", namespaces=PAIN
    )
    assert tx.findtext("p:CdtrAcct/p:Id/p:IBAN", namespaces=PAIN) == CORRECTED_IBAN
    assert tx.findtext("p:Cdtr/p:Nm", namespaces=PAIN) == CORRECTED_NAME
    trail = world.statements.break_trail(break_id)[1]
    assert trail[-1]["detail"].endswith(f"to ****{CORRECTED_IBAN[-4:]} (destination corrected)]")
    # Nowhere in clear: not in the payout, not in the trail, not in the batch's file copy.
    for secret in (CORRECTED_IBAN, CORRECTED_NAME):
        for table, value in _every_value(world):
            if isinstance(value, str):
                assert secret not in value, table
            elif isinstance(value, bytes | memoryview):
                assert secret.encode() not in bytes(value), table


def test_bad_retries_are_typed_and_change_nothing(world: World, sim: Bank) -> None:
    open_id = _unidentified(sim)
    failed_id = _unidentified(sim)
    _failed_return(sim, failed_id)

    def attempt(break_id: object, **changes: object) -> Callable[[], object]:
        kwargs: dict[str, object] = {"actor": "ops-1", "note": "send it back", **changes}
        return lambda: world.payouts.return_break(break_id, **kwargs)  # type: ignore[arg-type]

    cases: list[tuple[Callable[[], object], type[PaykeepError]]] = [
        (attempt(999_999), BreakNotFound),
        (attempt(0), BreakNotFound),
        (attempt(str(failed_id)), BreakNotFound),
        (attempt(failed_id, creditor_iban="DE00370400440532013000"), BreakResolutionInvalid),
        (attempt(failed_id, creditor_iban=""), BreakResolutionInvalid),
        (attempt(failed_id, creditor_name=" "), BreakResolutionInvalid),
        (attempt(failed_id, creditor_name="x" * 71), BreakResolutionInvalid),
        (attempt(failed_id, creditor_name="\U0001f4b6"), BreakResolutionInvalid),
        # a first return goes where the money came from
        (attempt(open_id, creditor_iban=CORRECTED_IBAN), BreakResolutionInvalid),
        # precedence: the destination's shape before the break's identity
        (attempt(999_999, creditor_iban="DE00"), BreakResolutionInvalid),
        (attempt(failed_id, actor=""), BreakResolutionInvalid),
    ]
    for call, error in cases:
        refused = _refused(call, error, world)
        assert "DE00370400440532013000" not in str(refused)
    assert world.statements.get_break(failed_id).state is BreakState.RETURN_FAILED
    assert _suspense(world) == AMOUNT


def test_a_return_the_payees_bank_sent_back_reopens_the_break(
    world: World, sim: Bank, settings: Settings
) -> None:
    """The bank executed the return; days later the sender's bank sends it back (the account
    is closed): a credit on our statement carrying the payout's end-to-end id. It is not new
    unidentified money to return once more — that would ping-pong it — but the return failing:
    its money joins suspense for the break, which is return_failed and may be retried."""
    break_id = _unidentified(sim)
    bank_before = world.balance(BANK_ACCOUNT)
    returned = world.payouts.return_break(break_id, actor="ops-1", note="unknown payer")
    assert sim.pay_out() is BatchState.ACCEPTED
    sim.close_day()
    assert world.payouts.settle() == 1
    payout = returned.payout
    sim.receive(remittance="RETURN AC04 account closed", end_to_end_id=payout.end_to_end_id)
    outcome = sim.close_day()
    (bounce,) = outcome.breaks
    assert bounce["reason"] == "duplicate" and bounce["reference"] == payout.end_to_end_id
    # Never sent "back" to the account that just refused it.
    with pytest.raises(BreakNotReturnable, match="one of our own payouts"):
        world.payouts.return_break(bounce["id"], actor="ops-1", note="n")

    world.payouts.settle()  # the worker's pass after each import
    came_back = world.statements.get_break(bounce["id"])
    assert came_back.state is BreakState.BOUNCED and came_back.resolved_by == "paykeep"
    reopened = world.statements.get_break(break_id)
    assert reopened.state is BreakState.RETURN_FAILED
    assert reopened.return_failure is not None
    assert f"sent return payout {payout.payout_id} back" in reopened.return_failure
    parked = world.ledger.transfer(
        suspense_transfer_id(world.debtor.iban, came_back.statement_id, came_back.line)
    )
    assert (parked.amount_minor, parked.code) == (AMOUNT, 43)
    assert (_suspense(world), world.balance(CLEARING_ACCOUNT)) == (AMOUNT, 0)
    assert world.balance(BANK_ACCOUNT) == bank_before - AMOUNT  # the money is at the bank
    assert [b.id for b in world.statements.open_breaks()] == [break_id]
    assert world.payouts.settle() == 0 and world.payouts.reclaim_bounced_returns() == 0

    # The operator retries to the account the sender now gives; the bank carries it out.
    retry = world.payouts.return_break(
        break_id, actor="ops-2", note="new account", creditor_iban=CORRECTED_IBAN,
        creditor_name=CORRECTED_NAME,
    )  # fmt: skip
    assert retry.attempt == 2 and _suspense(world) == 0
    assert sim.pay_out() is BatchState.ACCEPTED
    sim.close_day()
    assert world.payouts.settle() == 1
    assert world.statements.get_break(break_id).state is BreakState.RETURNED
    assert (_suspense(world), world.balance(CLEARING_ACCOUNT)) == (0, 0)
    assert world.balance(BANK_ACCOUNT) == bank_before
    assert sim.balance() == 0
    assert verify(world.database).ok
    shown = paykeep("statements", "breaks", "--all", "--json", settings=settings)
    states = {b["id"]: b["state"] for b in json.loads(shown.stdout)["breaks"]}
    assert states == {break_id: "returned", bounce["id"]: "bounced"}
