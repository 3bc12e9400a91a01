"""A worker pass that loses a race on an item (a typed error marked ``transient``, such as
``concurrent_update``) neither records a failure nor forgets one: the item is read afresh by
the next pass, and a lost race never brings it closer to being parked. Real database, both
backends."""

from __future__ import annotations

from paykeep.clock import FakeClock
from paykeep.db import Database
from paykeep.db.quarantine import Quarantine
from paykeep.payments.errors import ConcurrentUpdate, IllegalTransition

PASS = "test.races"


def test_a_lost_race_is_neither_a_failure_nor_a_success(database: Database) -> None:
    clock = FakeClock()
    quarantine = Quarantine(database, clock)

    items = quarantine.open(PASS)
    with items.isolated("race-only"):
        raise ConcurrentUpdate("the order changed meanwhile; retry")
    assert items.failed == []
    assert quarantine.failures(PASS) == []

    # An item with a failure on record keeps it through a lost race (and is not pushed
    # towards parking by it)...
    with items.isolated("was-bad"):
        raise KeyError("order")
    [recorded] = quarantine.failures(PASS)
    assert (recorded.item_id, recorded.failures) == ("was-bad", 1)
    clock.advance(3_600)
    items = quarantine.open(PASS)
    with items.isolated("was-bad"):
        raise ConcurrentUpdate("the order changed meanwhile; retry")
    assert [(f.item_id, f.failures) for f in quarantine.failures(PASS)] == [("was-bad", 1)]
    # ...and a real success then forgets it.
    with items.isolated("was-bad"):
        pass
    assert quarantine.failures(PASS) == []


def test_a_conflict_that_is_not_a_race_is_still_the_items_failure(database: Database) -> None:
    quarantine = Quarantine(database, FakeClock())
    items = quarantine.open(PASS)
    with items.isolated("stuck"):
        raise IllegalTransition("no transition expects this state")
    assert items.failed == ["stuck"]
    assert [(f.item_id, f.error_code) for f in quarantine.failures(PASS)] == [
        ("stuck", "illegal_transition")
    ]
