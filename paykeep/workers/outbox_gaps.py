"""When the outbox cursor may pass a gap in ``payments_events.seq`` on PostgreSQL.

PostgreSQL draws ``seq`` from a sequence before commit, so an event can become visible while
an earlier number is still missing. The missing number is either held by a transaction still
running (it will appear *behind* the cursor if the cursor passes it: the event would never be
delivered) or burned for good (its transaction rolled back, or its INSERT failed). Waiting a
fixed time cannot tell the two apart: a transaction slower than the wait loses its event, and
every rolled-back insert delays every later webhook by the whole wait.

The transaction ids tell them apart. A transaction that draws a number gets its transaction id
no later than the row it writes (microseconds after the draw; a subtransaction's parent gets
one first). So once a gap has been seen for ``settle_ns`` (by then whoever drew the number has
an id), the ``xmax`` of a snapshot taken then is an upper bound of that id: the **horizon**.
When a later snapshot's ``xmin`` reaches the horizon, every transaction that could hold the
number has ended; if it committed, its event is visible to any query issued after that
snapshot, so a gap still there is burned and the cursor passes it. The snapshot is taken
*before* the events are read for exactly that reason.

Nothing is skipped on time alone: a transaction left open holds the cursor (and is logged by
the caller) instead of losing its event. This module is the pure decision; the service takes
the snapshots and reads the events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

#: How long a gap must have been seen before a snapshot's ``xmax`` is taken as its horizon:
#: far longer than the moment between drawing a number and getting a transaction id.
GAP_SETTLE_NS: Final = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Snapshot:
    """``pg_current_snapshot()``'s bounds: every transaction id below ``xmin`` has ended; every
    id at or above ``xmax`` was not yet assigned when it was taken."""

    xmin: int
    xmax: int


@dataclass(frozen=True, slots=True)
class GapWatch:
    """The first missing ``seq`` after the cursor and what is known about it."""

    seq: int
    first_seen_ns: int
    #: ``xmax`` of a snapshot taken at least ``settle_ns`` after ``first_seen_ns`` (None
    #: until then).
    horizon: int | None = None


@dataclass(frozen=True, slots=True)
class GapDecision:
    #: How many of the events (a prefix) the cursor may move over.
    passable: int
    #: What to remember for the next call (None: no gap in the way).
    watch: GapWatch | None


def decide(
    seqs: Sequence[int],
    cursor_seq: int,
    snapshot: Snapshot,
    watch: GapWatch | None,
    now_ns: int,
    settle_ns: int = GAP_SETTLE_NS,
) -> GapDecision:
    """The prefix of ``seqs`` (ascending, all > ``cursor_seq``, read *after* ``snapshot`` was
    taken) the cursor may pass, and the gap to watch next.

    At most one gap is passed per call: each needs a horizon of its own, taken after it was
    first seen.
    """
    expected = cursor_seq + 1
    passed_gap = False
    for index, seq in enumerate(seqs):
        if seq == expected:
            expected = seq + 1
            continue
        # ``expected`` .. ``seq - 1`` are missing.
        if watch is None or watch.seq != expected or passed_gap:
            # A new gap (or a second one in this call): start watching it now.
            return GapDecision(index, GapWatch(expected, now_ns))
        if watch.horizon is not None and snapshot.xmin >= watch.horizon:
            # Everything that could hold the missing numbers has ended and they are still
            # missing: they are burned.
            passed_gap = True
            expected = seq + 1
            continue
        if watch.horizon is None and now_ns - watch.first_seen_ns >= settle_ns:
            return GapDecision(index, GapWatch(watch.seq, watch.first_seen_ns, snapshot.xmax))
        return GapDecision(index, watch)
    return GapDecision(len(seqs), None)
