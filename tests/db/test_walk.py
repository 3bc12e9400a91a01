"""``OpenItemsWalk``: a page of open items per pass, and every open item read in time.

The invariant, as a Hypothesis state machine over a table whose items open and close between
passes: no pass reads more than its page, or an item twice, or an item that is not open; and
an item is never left unread for more passes than it takes to read, a page at a time, every
item that was open meanwhile (``ceil(those items / page) + 1``) — however many other items
stay open all along (the case a "newest N" or "oldest N" window gets wrong)."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from paykeep.db.walk import OpenItemsWalk


class Table:
    """Open items by id (fixed-width ids sort like the database's time-ordered ones)."""

    def __init__(self) -> None:
        self.open: set[str] = set()
        self.reads = 0

    def read(self, after: str, limit: int) -> list[str]:
        self.reads += 1
        return sorted(i for i in self.open if i > after)[:limit]


def item(n: int) -> str:
    return f"po_{n:016x}"


def test_one_page_per_pass_wrapping_at_the_end() -> None:
    table = Table()
    table.open = {item(n) for n in range(5)}
    walk = OpenItemsWalk[str](lambda i: i)
    assert walk.page(table.read, 2) == [item(0), item(1)]
    assert walk.page(table.read, 2) == [item(2), item(3)]
    # The end: the last one, then from the start again up to where this page began.
    assert walk.page(table.read, 2) == [item(4), item(0)]
    assert walk.page(table.read, 2) == [item(1), item(2)]
    table.open = {item(1)}
    assert walk.page(table.read, 2) == [item(1)]  # fewer open than a page: all of them
    assert walk.page(table.read, 2) == [item(1)]
    table.open = set()
    assert walk.page(table.read, 2) == []


def test_items_that_stay_open_never_hide_the_others() -> None:
    """Ten records open for days (accepted, waiting for the bank) and one behind them whose
    state changed: a window of the first page only would never reach it."""
    table = Table()
    table.open = {item(n) for n in range(11)}
    walk = OpenItemsWalk[str](lambda i: i)
    seen = [walk.page(table.read, 4) for _ in range(3)]
    assert item(10) in seen[2]
    assert [len(p) for p in seen] == [4, 4, 4]


def test_a_page_is_at_least_one() -> None:
    with pytest.raises(ValueError):
        OpenItemsWalk[str](lambda i: i).page(Table().read, 0)


class WalkMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = Table()
        self.page_size = 1
        self.walk = OpenItemsWalk[str](lambda i: i)
        self.next_id = 0
        #: Open item -> (passes in a row it has been open without being read, the items that
        #: were open at those passes).
        self.unread_for: dict[str, tuple[int, set[str]]] = {}

    @rule(page_size=st.integers(1, 5))
    @precondition(lambda self: self.next_id == 0)
    def choose_page(self, page_size: int) -> None:
        self.page_size = page_size

    @rule(count=st.integers(1, 6))
    def open_items(self, count: int) -> None:
        for _ in range(count):
            new = item(self.next_id)
            self.next_id += 1
            self.table.open.add(new)
            self.unread_for[new] = (0, set())

    @rule(data=st.data())
    @precondition(lambda self: bool(self.table.open))
    def close_one(self, data: st.DataObject) -> None:
        gone = data.draw(st.sampled_from(sorted(self.table.open)))
        self.table.open.discard(gone)
        del self.unread_for[gone]

    @rule()
    def a_pass(self) -> None:
        page = self.walk.page(self.table.read, self.page_size)
        assert len(page) <= self.page_size
        assert len(page) == len(set(page))
        assert set(page) <= self.table.open
        assert len(page) == min(self.page_size, len(self.table.open))
        for open_item in self.table.open:
            if open_item in page:
                self.unread_for[open_item] = (0, set())
            else:
                passes, seen = self.unread_for[open_item]
                self.unread_for[open_item] = (passes + 1, seen | self.table.open)

    @invariant()
    def every_open_item_is_read_in_time(self) -> None:
        for open_item, (passes, seen) in self.unread_for.items():
            bound = math.ceil(len(seen) / self.page_size) + 1
            assert passes < bound or passes == 0, (open_item, passes, bound)


TestWalkMachine = WalkMachine.TestCase
TestWalkMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
