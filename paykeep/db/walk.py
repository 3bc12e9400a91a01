"""Walk a table's open items a page per pass, so that every one of them is looked at.

A pass that follows open records at another system (payouts at the gateway, withdrawals at
the bank) cannot read "the newest N" or "the oldest N": records that stay open for days (a
payout the bank has accepted but not yet settled) would fill that window, and the ones behind
it would never be looked at — their state and events would stop following the gateway. With
many merchants paid every day that is not a rare case.

:class:`OpenItemsWalk` remembers where the last pass stopped (the last id it read; ids are
unique and ordered) and reads the next page after it; at the end it wraps around to the start
in the same pass. An item open for ``ceil(open items / page) + 1`` passes in a row is
therefore read at least once, whatever else is open, and no pass reads more than a page. The
position lives in the process: a restart begins again at the start, which only means some
items are read sooner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

#: ``read(after_id, limit)``: open items with an id above ``after_id`` ("" = from the start), in
#: id order, at most ``limit``.
ReadOpen = Callable[[str, int], Sequence[T]]


class OpenItemsWalk(Generic[T]):
    """One pass's position in its table of open items (see the module's text)."""

    def __init__(self, key: Callable[[T], str]) -> None:
        self._key = key
        self.after = ""

    def page(self, read: ReadOpen[T], limit: int) -> list[T]:
        """The next ``limit`` open items after the last page (fewer only when fewer are open),
        wrapping around to the start once the end is reached."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        key = self._key
        start = self.after
        first = list(read(start, limit))
        if len(first) == limit:
            self.after = key(first[-1])
            return first
        # The end of the table: go on from its start, up to where this page began.
        room = limit - len(first)
        wrapped = [item for item in read("", room) if key(item) <= start] if start else []
        # A full wrapped part may have stopped short of ``start``: continue after it next time.
        # Anything less means every open item has been read: begin again at the start.
        self.after = key(wrapped[-1]) if wrapped and len(wrapped) == room else ""
        return first + wrapped
