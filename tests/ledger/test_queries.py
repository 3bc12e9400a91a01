"""Queries: pagination of an account's transfers, balances as of a past time, lookups."""

from __future__ import annotations

import random

import pytest

from paykeep import limits
from paykeep.clock import FakeClock
from paykeep.db import Database
from paykeep.ledger.errors import AccountNotFound, InvalidCursor, TransferNotFound
from paykeep.ledger.model import NewAccount, NewTransfer
from paykeep.ledger.service import Ledger
from tests.ledger.scenario import DMNEC, PENDING, POST, VOID

#: How many journal rows stay out of the per-account index before a write merges them: every
#: query must give the same answer whether a row is in the index, in the tail, or split.
TAILS = [1, 4, limits.POSTINGS_TAIL_MAX]


@pytest.fixture(params=TAILS, ids=[f"tail{t}" for t in TAILS])
def ledger(database: Database, request: pytest.FixtureRequest) -> Ledger:
    led = Ledger(database, clock=FakeClock(), postings_tail_max=request.param)
    led.create_accounts(
        [
            NewAccount(1, "EUR", 1, name="merchant:1:available"),
            NewAccount(2, "EUR", 1, name="bank:eur"),
            NewAccount(3, "EUR", 1),
            NewAccount(4, "EUR", 1, flags=DMNEC),
        ]
    )
    return led


def _ok(ledger: Ledger, batch: list[NewTransfer]) -> None:
    results = ledger.create_transfers(batch)
    assert [r.result.value for r in results] == ["ok"] * len(batch), results


def test_pagination_walks_every_transfer_once_newest_first(ledger: Ledger) -> None:
    rng = random.Random(7)
    batch: list[NewTransfer] = []
    mine: list[int] = []
    for i in range(1, 61):
        debit, credit = rng.choice([(1, 2), (2, 1), (2, 3), (3, 1), (3, 2)])
        batch.append(NewTransfer(1_000 + i, debit, credit, i, "EUR", 1))
        if 1 in (debit, credit):
            mine.append(1_000 + i)
    _ok(ledger, batch[:30])
    _ok(ledger, batch[30:])
    expected = list(reversed(mine))
    for limit in (1, 7, len(mine) - 1, len(mine), len(mine) + 1):
        seen: list[int] = []
        cursor: int | None = None
        while True:
            page = ledger.account_transfers(1, limit=limit, starting_after=cursor)
            assert len(page.items) <= limit
            seen += [t.id for t in page.items]
            if not page.has_more:
                break
            assert len(page.items) == limit
            cursor = page.items[-1].id
        assert seen == expected, limit
    first = ledger.account_transfers(1)
    assert [t.id for t in first.items] == expected[: limits.PAGE_SIZE_DEFAULT]
    assert first.has_more is (len(expected) > limits.PAGE_SIZE_DEFAULT)
    # after the last transfer: an empty page
    last = ledger.account_transfers(1, starting_after=expected[-1])
    assert (last.items, last.has_more) == ([], False)
    # an account with no transfers
    empty = ledger.account_transfers(4)
    assert (empty.items, empty.has_more) == ([], False)
    assert all(1 in (t.debit_account_id, t.credit_account_id) for t in first.items)


def test_page_size_bounds(ledger: Ledger) -> None:
    for limit in (0, -1, limits.PAGE_SIZE_MAX + 1, True, "5", 2.0, None):
        with pytest.raises(InvalidCursor):
            ledger.account_transfers(1, limit=limit)  # type: ignore[arg-type]
    assert ledger.account_transfers(1, limit=limits.PAGE_SIZE_MAX).items == []


def test_bad_cursors(ledger: Ledger) -> None:
    _ok(ledger, [NewTransfer(10, 1, 2, 5, "EUR", 1), NewTransfer(11, 2, 3, 5, "EUR", 1)])
    assert len(ledger.account_transfers(1, limit=limits.PAGE_SIZE_MAX).items) == 1
    for cursor in (999, 11, 0, -1):  # unknown, another account's transfer, malformed
        with pytest.raises(InvalidCursor) as raised:
            ledger.account_transfers(1, starting_after=cursor)
        assert raised.value.code == "invalid_cursor"


@pytest.mark.parametrize("tail", TAILS)
def test_balance_as_of_across_a_hold_its_partial_post_and_an_expiry(
    database: Database, tail: int
) -> None:
    clock = FakeClock()
    led = Ledger(database, clock=clock, postings_tail_max=tail)
    led.create_accounts([NewAccount(1, "EUR", 1), NewAccount(2, "EUR", 1, flags=DMNEC)])
    history: list[tuple[int, tuple[int, int, int, int]]] = []

    def mark() -> None:
        a = led.account(2)
        history.append(
            (
                led.head().last_timestamp_ns,
                (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted),
            )
        )

    start = led.head().last_timestamp_ns
    _ok(led, [NewTransfer(10, 1, 2, 1_000, "EUR", 1)])
    mark()
    clock.advance(5)
    _ok(led, [NewTransfer(11, 2, 1, 300, "EUR", 1, flags=PENDING)])
    mark()
    clock.advance(5)
    _ok(led, [NewTransfer(12, flags=POST, pending_id=11, amount_minor=120)])
    mark()
    clock.advance(5)
    _ok(led, [NewTransfer(13, 2, 1, 200, "EUR", 1, flags=PENDING, timeout_s=10)])
    mark()
    clock.advance(5)
    _ok(led, [NewTransfer(14, 2, 1, 50, "EUR", 1, flags=PENDING)])
    _ok(led, [NewTransfer(15, flags=VOID, pending_id=14)])
    mark()
    clock.advance(20)
    assert led.expire_holds() == 1
    mark()
    assert history[-1][1] == (0, 120, 0, 1_000)

    def as_of(ns: int) -> tuple[int, int, int, int]:
        b = led.balance_as_of(2, ns)
        assert (b.account_id, b.as_of_ns) == (2, ns)
        return b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted

    assert as_of(start) == (0, 0, 0, 0)
    for ts, expected in history:
        assert as_of(ts) == expected
        assert as_of(ts + 1_000_000) == expected  # nothing happened in between
    # one nanosecond before each step's first row: the state after the step before
    firsts = [led.transfer(i).timestamp_ns for i in (11, 12, 13, 14)]
    for first, (_, previous) in zip(firsts, history, strict=False):
        assert as_of(first - 1) == previous
    sweep_ts = history[-1][0]  # the expiry void is the sweep's (last) row
    assert as_of(sweep_ts - 1) == history[-2][1]
    with pytest.raises(AccountNotFound):
        led.balance_as_of(99, history[-1][0])


def test_lookups(ledger: Ledger) -> None:
    _ok(
        ledger,
        [
            NewTransfer(10, 2, 1, 5, "EUR", 1, reference="order-10", metadata={"order": "10"}),
            NewTransfer(11, 2, 1, 6, "EUR", 1, reference="order-11"),
        ],
    )
    t = ledger.transfer_by_reference("order-10")
    assert (t.id, t.amount_minor, t.metadata) == (10, 5, {"order": "10"})
    assert ledger.transfer_by_reference("order-11").id == 11
    with pytest.raises(TransferNotFound):
        ledger.transfer_by_reference("order-12")
    assert set(ledger.lookup_transfers([10, 11, 12])) == {10, 11}
    assert ledger.account_by_name("merchant:1:available").id == 1
    assert ledger.account_by_name("bank:eur").id == 2
    with pytest.raises(AccountNotFound):
        ledger.account_by_name("merchant:2:available")
    assert set(ledger.lookup_accounts([1, 2, 99])) == {1, 2}
    head = ledger.head()
    assert head.last_seq == 2
    assert head.last_hash == ledger.transfer(11).hash
    assert head.last_timestamp_ns == ledger.transfer(11).timestamp_ns
    assert ledger.transfer(10).seq == 1
