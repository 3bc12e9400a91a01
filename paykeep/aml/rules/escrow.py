"""The real-time rules as the payments context's risk check (its ``RiskCheck`` port).

Before a payment's hold, a release, a payout, a top-up, a refund and a buyer's withdrawal,
``decide(conn, kind, context)`` turns the movement into a :class:`MoneyEvent` (buyer →
merchant; merchant → buyer for a refund; a withdrawal is a payout whose payer is the buyer;
parties with how long they have been customers, names for screening only) and asks the
:class:`DecisionEngine` *inside the transaction that moves the money*, so a movement and its
decision commit together.

A refund is never refused (``model.NEVER_REFUSED``: its worst outcome is ``review``, which
opens or joins the buyer's case while the money goes back): its decision commits with the
refund. When a refund's transaction rolls back for another reason (a release held, funds
short), no money returned and nothing is kept to record: the refund's history must not count
a refund that did not happen.

A ``block`` or a held release rolls that transaction back — and the decision with it. Those
events are kept here and recorded again by :meth:`EscrowRisk.flush` (the workers call it) in
a transaction of their own: decisions are idempotent on the event id, so the record, the
alerts and — for a review — the case exist exactly once, and the next attempt at the same
release gets the recorded answer (held until an operator confirms the order).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Final

from paykeep.aml.rules.errors import RuleEventIdReused
from paykeep.aml.rules.model import EventKind, MoneyEvent, Outcome, Party
from paykeep.aml.rules.repository import RulesRepository
from paykeep.aml.rules.service import DecisionEngine
from paykeep.db.quarantine import Quarantine
from paykeep.money import Money

log = logging.getLogger("paykeep.aml.escrow")

#: Decisions waiting to be recorded after their transaction rolled back.
PENDING_RECORDS_MAX: Final = 10_000
#: The flush's name among the workers' passes (its items are event ids).
FLUSH_ITEMS: Final = "aml.flush"

KINDS: Final = {
    "top_up": EventKind.TOP_UP,
    "payment": EventKind.PAYMENT,
    "release": EventKind.RELEASE,
    "payout": EventKind.PAYOUT,
    # A buyer's withdrawal to the bank account their money came from is a payout whose payer
    # is the buyer: the rules on outflows (structuring, in-and-out velocity) see it as such.
    "withdrawal": EventKind.PAYOUT,
    "refund": EventKind.REFUND,
}
#: Kinds the payments code refuses (rolls its transaction back) on these outcomes.
REFUSED_ON: Final = {
    EventKind.PAYMENT: frozenset({Outcome.BLOCK}),
    EventKind.RELEASE: frozenset({Outcome.BLOCK, Outcome.REVIEW}),
    EventKind.PAYOUT: frozenset({Outcome.BLOCK, Outcome.REVIEW}),
    # A held top-up commits (recorded as held, decision included); a refund always settles.
    EventKind.TOP_UP: frozenset(),
    EventKind.REFUND: frozenset(),
}


def money_event(kind: str, context: dict[str, Any], at_ns: int) -> MoneyEvent:
    """The rules' view of one escrow movement."""
    merchant = (
        Party(
            f"merchant:{context['merchant']}",
            opened_at_ns=context.get("merchant_since_ns"),
            name=context.get("merchant_name"),
            country=context.get("merchant_country"),
        )
        if context.get("merchant")
        else None
    )
    buyer = (
        Party(f"buyer:{context['buyer']}", opened_at_ns=context.get("buyer_since_ns"))
        if context.get("buyer")
        else None
    )
    event_kind = KINDS[kind]
    payer: Party | None
    payee: Party | None
    if kind == "withdrawal":
        payer, payee = buyer, None  # money leaves the buyer's wallet for their own account
        event_id = str(context["event_id"])
    elif event_kind is EventKind.PAYOUT:
        payer, payee = merchant, None
        event_id = str(context["event_id"])
    elif event_kind is EventKind.REFUND:
        # Escrowed money back to the buyer: what answers it names the event (the refund, or
        # the order for the unshipped timer's refund), so a retry is the same event.
        payer, payee = merchant, buyer
        event_id = str(context["event_id"])
    elif event_kind is EventKind.TOP_UP:
        payer, payee = None, buyer  # money from outside into the buyer's wallet
        event_id = str(context["event_id"])
    else:
        payer, payee = buyer, merchant
        event_id = f"{kind}:{context['order']}"
    return MoneyEvent(
        kind=event_kind,
        event_id=event_id,
        at_ns=at_ns,
        amount=Money(int(context["amount_minor"]), str(context["currency"])),
        payer=payer,
        payee=payee,
    )


class EscrowRisk:
    def __init__(self, engine: DecisionEngine) -> None:
        self.engine = engine
        self._pending: dict[str, MoneyEvent] = {}
        self._lock = threading.Lock()
        self._quarantine = Quarantine(engine.database, engine.clock)

    def decide(self, conn: Any, kind: str, context: dict[str, Any]) -> str:
        event = money_event(kind, context, self.engine.clock.now_ns())
        try:
            if conn is None:
                decision = self.engine.decide(event)
            else:
                decision = self.engine.decide_within(conn, event)
        except RuleEventIdReused:
            # A later attempt at the same movement (a release retried after a review hold, a
            # payment retried after a decline): the recorded answer stands.
            return self._recorded(conn, event.event_id)
        outcome = decision.outcome
        # A blocked payment, or a held release or payout, rolls its transaction back, decision
        # included: kept for flush(). Top-ups and refunds commit with their decision.
        rolls_back = outcome in REFUSED_ON[event.kind]
        if rolls_back and conn is not None and not decision.replayed:
            with self._lock:
                if len(self._pending) < PENDING_RECORDS_MAX:
                    self._pending[event.event_id] = event
                else:
                    log.error("risk decisions to record: queue full; %s dropped", event.event_id)
        return outcome.value

    def _recorded(self, conn: Any, event_id: str) -> str:
        if conn is not None:
            stored = RulesRepository(conn).decision(event_id)
        else:
            with self.engine.database.read() as reader:
                stored = RulesRepository(reader).decision(event_id)
        assert stored is not None, "a reused event id names a recorded decision"
        return str(stored.outcome.value)

    def flush(self) -> int:
        """Record the decisions whose movement's transaction rolled back. One whose record
        fails unexpectedly is kept and tried again after a while (``paykeep.db.quarantine``),
        and dropped from the queue once parked (named in the log and in
        ``worker_item_failures``); the others are recorded meanwhile. The database being
        unavailable stops the flush: what is left waits for the next one."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        recorded = 0
        left = dict(pending)
        try:
            items = self._quarantine.open(FLUSH_ITEMS)
            for event_id, event in pending.items():
                if event_id in items.blocked:
                    if event_id in items.parked:
                        del left[event_id]
                    continue
                with items.isolated(event_id):
                    self.engine.decide(event)
                    recorded += 1
                if event_id not in items.failed or event_id in items.parked:
                    del left[event_id]
        finally:
            # What was not recorded (the database failed, or backed off) waits.
            if left:
                with self._lock:
                    for event_id, event in left.items():
                        self._pending.setdefault(event_id, event)
        return recorded
