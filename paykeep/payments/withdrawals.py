"""Buyer withdrawals, the pure part: the state machines, the return-to-source bounds and how
a withdrawal to the card is split over the card payments it goes back to. No database, clock
or randomness here.

Why "return to source": a wallet that pays out to any account the buyer names is a
layering tool (money in from one account, out to another, through a payment platform). A
buyer's withdrawal may only go back where their money came from, at most as much:

- **to a bank account** (``source_bank_account``): an IBAN their money came from — the
  counterparty IBAN of a credited top-up — and, per IBAN, the withdrawals still standing (not
  ``returned`` or ``failed``) never add up to more than the credited top-ups from that IBAN;
- **to the card** (``source_card``): refunds to the buyer's captured card payments in the
  currency, newest first, each at most what its capture has left to refund (captured less
  every refund to it that has not failed: orders' card refunds and earlier withdrawals
  alike), so what goes back to a card never exceeds what came from it
  (:func:`allocate_card_refunds`).

The wallet's balance is the other bound (the ledger enforces it; it is checked after the
source for a typed error).

A bank withdrawal's life (the gateway's payout states after ``requested``)::

    pending --gateway payout made--> requested --> batched --> accepted --> settled
       \\--wallet no longer covers it (recovery)--> failed
    batched --the bank rejects the file--> returned
    settled --the buyer's bank sends it back (an account closed, ...)--> returned

``returned``: the money is back in the wallet (less a fee the buyer's bank kept, when it sent
a settled withdrawal back short) and the source's headroom is free again.

``pending`` is the reservation of the bound: written, under a lock on the buyer, before the
gateway is asked, so two concurrent requests cannot both use the same headroom. The states
after ``requested`` are copied from the gateway, which may move several steps between two
syncs: a transition goes to any state reachable from the current one.

A withdrawal to the card is ``pending`` from the transaction that writes it, its card refunds
and their reservations (pending ledger transfers wallet -> ``clearing:card``) until the last
of its card refunds has an outcome; then one step to its final state::

    pending --every card refund succeeded--> settled
       |----some succeeded, some failed----> partially_settled  (the failed part is back in
       \\----every card refund failed------> failed              the wallet, the buyer's)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from paykeep import limits
from paykeep.payments.errors import (
    IllegalTransition,
    InsufficientFunds,
    PaymentsInputInvalid,
    WithdrawalExceedsCardRefundable,
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


class WithdrawalDestination(StrEnum):
    """Where a withdrawal goes: always back to where the money came from."""

    SOURCE_BANK_ACCOUNT = "source_bank_account"
    SOURCE_CARD = "source_card"


class WithdrawalState(StrEnum):
    PENDING = "pending"
    REQUESTED = "requested"
    BATCHED = "batched"
    ACCEPTED = "accepted"
    SETTLED = "settled"
    RETURNED = "returned"
    FAILED = "failed"
    #: A withdrawal to the card whose card refunds partly succeeded: the rest is back in the
    #: wallet (final).
    PARTIALLY_SETTLED = "partially_settled"


W = WithdrawalState

#: A bank withdrawal: state -> the states it may move to next (one step).
WITHDRAWAL_TRANSITIONS: Final[Mapping[WithdrawalState, frozenset[WithdrawalState]]] = {
    W.PENDING: frozenset({W.REQUESTED, W.FAILED}),
    W.REQUESTED: frozenset({W.BATCHED}),
    W.BATCHED: frozenset({W.ACCEPTED, W.RETURNED}),
    W.ACCEPTED: frozenset({W.SETTLED}),
    # The buyer's bank may send a settled withdrawal back (an R-transaction).
    W.SETTLED: frozenset({W.RETURNED}),
    W.RETURNED: frozenset(),
    W.FAILED: frozenset(),
    W.PARTIALLY_SETTLED: frozenset(),  # never a bank withdrawal's
}
#: A withdrawal to the card: one step, when the last of its card refunds has an outcome.
CARD_WITHDRAWAL_TRANSITIONS: Final[Mapping[WithdrawalState, frozenset[WithdrawalState]]] = {
    state: frozenset() for state in W
} | {W.PENDING: frozenset({W.SETTLED, W.PARTIALLY_SETTLED, W.FAILED})}
TRANSITIONS: Final = {
    WithdrawalDestination.SOURCE_BANK_ACCOUNT: WITHDRAWAL_TRANSITIONS,
    WithdrawalDestination.SOURCE_CARD: CARD_WITHDRAWAL_TRANSITIONS,
}
#: Withdrawals whose money has not (all) come back: a bank withdrawal's use up their source's
#: headroom.
STANDING: Final = frozenset(
    {W.PENDING, W.REQUESTED, W.BATCHED, W.ACCEPTED, W.SETTLED, W.PARTIALLY_SETTLED}
)
#: States the worker still follows at the gateway.
OPEN: Final = frozenset({W.PENDING, W.REQUESTED, W.BATCHED, W.ACCEPTED})


def _reachable(
    state: WithdrawalState, table: Mapping[WithdrawalState, frozenset[WithdrawalState]]
) -> frozenset[WithdrawalState]:
    seen: set[WithdrawalState] = set()
    todo = list(table[state])
    while todo:
        nxt = todo.pop()
        if nxt not in seen:
            seen.add(nxt)
            todo.extend(table[nxt])
    return frozenset(seen)


def withdrawal_transition(
    current: WithdrawalState,
    target: WithdrawalState,
    destination: WithdrawalDestination = WithdrawalDestination.SOURCE_BANK_ACCOUNT,
) -> WithdrawalState:
    """``target`` if the destination's table reaches it from ``current`` (the gateway may have
    moved a bank withdrawal more than one step since the last sync), else
    :class:`IllegalTransition`."""
    if target not in _reachable(current, TRANSITIONS[destination]):
        raise IllegalTransition(f"a {current} withdrawal cannot become {target}", param="state")
    return target


def card_withdrawal_outcome(card_refund_states: Iterable[str]) -> WithdrawalState:
    """What a withdrawal to the card has become, from its card refunds' states (``pending``,
    ``succeeded``, ``failed``): ``pending`` while any is, else ``settled`` (all succeeded),
    ``failed`` (all failed) or ``partially_settled``."""
    states = set(card_refund_states)
    assert states and states <= {"pending", "succeeded", "failed"}, states
    if "pending" in states:
        return W.PENDING
    if states == {"succeeded"}:
        return W.SETTLED
    if states == {"failed"}:
        return W.FAILED
    return W.PARTIALLY_SETTLED


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


@dataclass(frozen=True, slots=True)
class CardCapture:
    """One captured card payment of the buyer (a sale that credited their wallet), as a
    withdrawal to the card sees it."""

    payment_id: str
    captured_at_ns: int
    captured_minor: int
    #: Refunds to this capture that have not failed (``pending`` or ``succeeded``): orders'
    #: card refunds and earlier withdrawals' alike.
    refunded_minor: int

    @property
    def refundable_minor(self) -> int:
        return max(self.captured_minor - self.refunded_minor, 0)


def allocate_card_refunds(
    amount_minor: int,
    captures: Iterable[CardCapture],
    wallet_available: int,
    *,
    refunds_max: int = limits.CARD_WITHDRAWAL_REFUNDS_MAX,
) -> list[tuple[str, int]]:
    """Split a withdrawal to the card over the buyer's captures: ``(payment id, amount)``
    pairs, newest capture first (by capture time, then id), each at most what that capture
    has left to refund, summing exactly to ``amount_minor``; a capture takes something only
    once every newer one is full. At most ``refunds_max`` captures (the newest that have
    something left) share one withdrawal: a larger amount is asked for again.

    The limits, in order: a capture exists (:class:`WithdrawalNoSource`), the captures can
    take it all (:class:`WithdrawalExceedsCardRefundable`), the wallet's balance
    (:class:`InsufficientFunds`)."""
    listed = list(captures)
    if not listed:
        raise WithdrawalNoSource(
            "this buyer has paid no card in this currency: nothing can go back to a card",
            param="destination",
        )
    open_ = sorted(
        (c for c in listed if c.refundable_minor > 0),
        key=lambda c: (c.captured_at_ns, c.payment_id),
        reverse=True,
    )[:refunds_max]
    room = sum(c.refundable_minor for c in open_)
    if amount_minor > room:
        raise WithdrawalExceedsCardRefundable(
            f"at most {room} more can go back to the cards this buyer paid with",
            param="amount_minor",
        )
    if amount_minor > wallet_available:
        raise InsufficientFunds("the wallet's balance does not cover this withdrawal",
                                param="amount_minor")  # fmt: skip
    parts: list[tuple[str, int]] = []
    left = amount_minor
    for capture in open_:
        if left == 0:
            break
        take = min(left, capture.refundable_minor)
        parts.append((capture.payment_id, take))
        left -= take
    assert left == 0 and sum(a for _, a in parts) == amount_minor
    return parts
