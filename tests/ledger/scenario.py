"""A small, fixed chart of accounts and journal that the table tests build their rows on.

Accounts (all code 1)::

    1, 2  EUR, no limits            5, 6  JPY, no limits
    3     EUR, debits must not exceed credits, funded with 1,000
    4     EUR, credits must not exceed debits, debited 1,000
    7     EUR, debits must not exceed credits, empty
    8     EUR, debits must not exceed credits, funded 1,000 then fully drained by 108

Transfers::

    100  1 -> 2  50 EUR, reference "ref-100", metadata {"order": "o-100"}
    101  1 -> 2  100 EUR pending, no timeout (open hold)
    102  1 -> 2  100 EUR pending, posted in full by 103
    104  1 -> 2  100 EUR pending, voided by 105
    107  1 -> 2  100 EUR pending, timeout 5 s, expired and swept
    106  1 -> 2  100 EUR pending, timeout 10 s, expired but not yet swept
    108  8 -> 1  1,000 EUR (drains 8)
    109  1 -> 2  100 EUR pending, posted partially (30) by 110
"""

from __future__ import annotations

from dataclasses import dataclass

from paykeep.clock import FakeClock
from paykeep.db import Database
from paykeep.ledger.model import AccountFlags, NewAccount, NewTransfer, TransferFlags
from paykeep.ledger.service import Ledger

DMNEC = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
CMNED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
LINKED = int(TransferFlags.LINKED)
PENDING = int(TransferFlags.PENDING)
POST = int(TransferFlags.POST_PENDING)
VOID = int(TransferFlags.VOID_PENDING)
EXPIRY = int(TransferFlags.EXPIRY)

#: Requests as they were first sent (replays are built from these).
T100 = NewTransfer(100, 1, 2, 50, "EUR", 1, reference="ref-100", metadata={"order": "o-100"})
T103 = NewTransfer(103, flags=POST, pending_id=102)
T106 = NewTransfer(106, 1, 2, 100, "EUR", 1, flags=PENDING, timeout_s=10)
T108 = NewTransfer(108, 8, 1, 1_000, "EUR", 1)
T110 = NewTransfer(110, flags=POST, pending_id=109, amount_minor=30)


@dataclass
class Scenario:
    ledger: Ledger
    clock: FakeClock


def build(database: Database) -> Scenario:
    clock = FakeClock()
    ledger = Ledger(database, clock=clock)
    results = ledger.create_accounts(
        [
            NewAccount(1, "EUR", 1),
            NewAccount(2, "EUR", 1),
            NewAccount(3, "EUR", 1, flags=DMNEC),
            NewAccount(4, "EUR", 1, flags=CMNED),
            NewAccount(5, "JPY", 1),
            NewAccount(6, "JPY", 1),
            NewAccount(7, "EUR", 1, flags=DMNEC),
            NewAccount(8, "EUR", 1, flags=DMNEC),
        ]
    )
    assert all(r.result.value == "ok" for r in results), results

    def ok(batch: list[NewTransfer]) -> None:
        got = ledger.create_transfers(batch)
        assert [r.result.value for r in got] == ["ok"] * len(batch), got

    ok(
        [
            NewTransfer(90, 1, 3, 1_000, "EUR", 1),
            NewTransfer(91, 4, 1, 1_000, "EUR", 1),
            NewTransfer(92, 1, 8, 1_000, "EUR", 1),
            T100,
            NewTransfer(101, 1, 2, 100, "EUR", 1, flags=PENDING),
            NewTransfer(102, 1, 2, 100, "EUR", 1, flags=PENDING),
            T103,
            NewTransfer(104, 1, 2, 100, "EUR", 1, flags=PENDING),
            NewTransfer(105, flags=VOID, pending_id=104),
            NewTransfer(107, 1, 2, 100, "EUR", 1, flags=PENDING, timeout_s=5),
            T108,
            NewTransfer(109, 1, 2, 100, "EUR", 1, flags=PENDING),
            T110,
        ]
    )
    clock.advance(6)
    assert ledger.expire_holds() == 1  # 107
    ok([T106])
    clock.advance(11)  # 106 is now past its timeout, and no sweep has run
    return Scenario(ledger, clock)


def snapshot(ledger: Ledger) -> tuple[object, ...]:
    """Every account's balances and the journal head: what a rejected request must not change."""
    accounts = ledger.lookup_accounts(list(range(1, 9)))
    return (
        tuple(
            (a.id, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
            for a in sorted(accounts.values(), key=lambda a: a.id)
        ),
        ledger.head(),
    )
