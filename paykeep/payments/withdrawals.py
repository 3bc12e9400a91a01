"""Buyer withdrawals, the pure part: the state machine and the return-to-source bound.
No database, clock or randomness here.

Why "return to source": a wallet that pays out to any account the buyer names is a
layering tool (money in from one account, out to another, through a payment platform). A
buyer's withdrawal may only go to an IBAN their money came from — the counterparty IBAN of a
credited top-up — and, per IBAN, the withdrawals still standing (not ``returned`` or
``failed``) never add up to more than the credited top-ups from that IBAN. The wallet's
balance is the other bound (the ledger enforces it; it is checked first for a typed error).

A withdrawal's life (the gateway's payout states after ``requested``)::

    pending --gateway payout made--> requested --> batched --> accepted --> settled
       \\--wallet no longer covers it (recovery)--> failed      \\--> returned (money back
                                                                      in the wallet)

``pending`` is the reservation of the bound: written, under a lock on the buyer, before the
gateway is asked, so two concurrent requests cannot both use the same headroom. The states
after ``requested`` are copied from the gateway, which may move several steps between two
syncs: a transition goes to any state reachable from the current one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Final

from paykeep.payments.errors import (
    IllegalTransition,
    InsufficientFunds,
    PaymentsInputInvalid,
    WithdrawalExceedsSource,
    WithdrawalNoSource,
)

#: The object id prefix (``wd_`` + 16 hex digits, time-ordered).
WITHDRAWAL_ID_PREFIX: Final = "wd"
#: Ledger-side the withdrawal is a gateway payout: the same per-payout ceiling.
WITHDRAWAL_AMOUNT_MAX_MINOR: Final = 10_000_000
#: A ``pending`` withdrawal older than this is finished (or failed) by the worker's sync: the
#: request that wrote it crashed between the reservation and the gateway.
WITHDRAWAL_PENDING_RECOVERY_S: Final = 30
#: Purpose label of the sealed destination IBAN (``FieldCipher.seal``).
IBAN_PURPOSE: Final = "withdrawal.iban"


class WithdrawalState(StrEnum):
    PENDING = "pending"
    REQUESTED = "requested"
    BATCHED = "batched"
    ACCEPTED = "accepted"
    SETTLED = "settled"
    RETURNED = "returned"
    FAILED = "failed"


W = WithdrawalState

#: state -> the states it may move to next (one step).
WITHDRAWAL_TRANSITIONS: Final[Mapping[WithdrawalState, frozenset[WithdrawalState]]] = {
    W.PENDING: frozenset({W.REQUESTED, W.FAILED}),
    W.REQUESTED: frozenset({W.BATCHED}),
    W.BATCHED: frozenset({W.ACCEPTED, W.RETURNED}),
    W.ACCEPTED: frozenset({W.SETTLED}),
    W.SETTLED: frozenset(),
    W.RETURNED: frozenset(),
    W.FAILED: frozenset(),
}
#: Withdrawals whose money has not come back: they use up their source's headroom.
STANDING: Final = frozenset({W.PENDING, W.REQUESTED, W.BATCHED, W.ACCEPTED, W.SETTLED})
#: States the worker still follows at the gateway.
OPEN: Final = frozenset({W.PENDING, W.REQUESTED, W.BATCHED, W.ACCEPTED})


def _reachable(state: WithdrawalState) -> frozenset[WithdrawalState]:
    seen: set[WithdrawalState] = set()
    todo = list(WITHDRAWAL_TRANSITIONS[state])
    while todo:
        nxt = todo.pop()
        if nxt not in seen:
            seen.add(nxt)
            todo.extend(WITHDRAWAL_TRANSITIONS[nxt])
    return frozenset(seen)


def withdrawal_transition(current: WithdrawalState, target: WithdrawalState) -> WithdrawalState:
    """``target`` if the table reaches it from ``current`` (the gateway may have moved more
    than one step since the last sync), else :class:`IllegalTransition`."""
    if target not in _reachable(current):
        raise IllegalTransition(f"a {current} withdrawal cannot become {target}", param="state")
    return target


def check_amount(amount_minor: object) -> int:
    """Shape of the requested amount: an int of minor units, 1..the per-payout ceiling."""
    if type(amount_minor) is not int or amount_minor <= 0:
        raise PaymentsInputInvalid("amount_minor is a positive integer", param="amount_minor")
    if amount_minor > WITHDRAWAL_AMOUNT_MAX_MINOR:
        raise PaymentsInputInvalid(
            f"a withdrawal is at most {WITHDRAWAL_AMOUNT_MAX_MINOR} minor units",
            param="amount_minor",
        )
    return amount_minor


def compact_iban(iban: str) -> str:
    """IBANs compare without spaces and case (statements may print them grouped)."""
    return "".join(iban.split()).upper()


def source_headroom(
    credited: Iterable[tuple[str, int]], standing: Iterable[tuple[str, int]]
) -> dict[str, int]:
    """IBAN -> what may still be withdrawn to it: credited top-ups from the IBAN (``(iban,
    amount)`` pairs) less the standing withdrawals to it. Never negative for a history this
    module allowed; an IBAN nothing came from is absent (no source at all)."""
    room: dict[str, int] = {}
    for iban, amount in credited:
        key = compact_iban(iban)
        room[key] = room.get(key, 0) + amount
    for iban, amount in standing:
        key = compact_iban(iban)
        # Conservative if the history were ever inconsistent: a standing withdrawal to an
        # IBAN with no credited top-up leaves it below zero, never with room.
        room[key] = room.get(key, 0) - amount
    return room


def check_withdrawal(
    amount_minor: int, iban: str | None, headroom: Mapping[str, int], wallet_available: int
) -> None:
    """The limits of one withdrawal, in order: a source exists, the source's headroom, the
    wallet's balance (what the ledger would refuse anyway). ``iban`` None: no top-up with a
    known IBAN was found for the buyer."""
    if iban is None or compact_iban(iban) not in headroom:
        raise WithdrawalNoSource(
            "no bank account this buyer's money came from is known: nothing can be returned "
            "to its source",
            param="source_topup",
        )
    left = headroom[compact_iban(iban)]
    if amount_minor > left:
        raise WithdrawalExceedsSource(
            f"at most {max(left, 0)} more can go back to the account ending "
            f"{compact_iban(iban)[-4:]}",
            param="amount_minor",
        )
    if amount_minor > wallet_available:
        raise InsufficientFunds("the wallet's balance does not cover this withdrawal",
                                param="amount_minor")  # fmt: skip
