"""A short ledger demonstration: one escrow order, told in journal entries.

Runs until ``paykeep serve`` exists: it shows the flow Paykeep's payments use — a buyer's
bank top-up, a hold for an order, a release that posts the hold and takes the fee in one
linked batch, a partially refunded order, an expired hold — then audits the journal.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from paykeep.ledger.audit import AuditReport, verify
from paykeep.ledger.model import (
    AccountFlags,
    CreateTransferResult,
    NewAccount,
    NewTransfer,
    TransferFlags,
)
from paykeep.ledger.service import Ledger
from paykeep.money import Money, allocate

ASSET, LIABILITY, REVENUE = 1, 2, 4
LINKED, PENDING, POST, VOID = (
    int(TransferFlags.LINKED),
    int(TransferFlags.PENDING),
    int(TransferFlags.POST_PENDING),
    int(TransferFlags.VOID_PENDING),
)


@dataclass(frozen=True, slots=True)
class DemoStep:
    what: str
    results: list[str]


@dataclass(frozen=True, slots=True)
class DemoOutcome:
    steps: list[DemoStep]
    balances: dict[str, str]
    audit: AuditReport


def run_demo(ledger: Ledger, currency: str = "EUR") -> DemoOutcome:
    new = ledger.ids.next_id
    run = new()  # account names carry the run id, so the demo can run again on the same data
    chart = {
        "bank:safeguarding:demo-bank": (ASSET, AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS),
        "buyer:ada:wallet": (LIABILITY, AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
        "merchant:teashop:available": (LIABILITY, AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
        "platform:fees": (REVENUE, AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
    }
    ids = {name: new() for name in chart}
    ledger.create_accounts(
        [
            NewAccount(ids[name], currency, code, int(flags), name=f"{name}#{run}")
            for name, (code, flags) in chart.items()
        ]
    )
    bank, wallet = ids["bank:safeguarding:demo-bank"], ids["buyer:ada:wallet"]
    merchant, fees = ids["merchant:teashop:available"], ids["platform:fees"]
    steps: list[DemoStep] = []

    def apply(what: str, batch: list[NewTransfer]) -> None:
        steps.append(DemoStep(what, [r.result.value for r in ledger.create_transfers(batch)]))

    price = Money.parse("120.00", currency)
    fee_bp = 290  # 2.9 %
    apply(
        "Ada tops up her wallet by bank transfer (100.00 + 150.00)",
        [
            NewTransfer(new(), bank, wallet, 10_000, currency, 1, reference=f"topup-1-{run}"),
            NewTransfer(new(), bank, wallet, 15_000, currency, 1, reference=f"topup-2-{run}"),
        ],
    )
    order_1 = new()
    apply(
        "Order 1 paid: 120.00 held in escrow (pending transfer, 7-day timeout)",
        [NewTransfer(order_1, wallet, merchant, price.amount_minor, currency, 2,
                     flags=PENDING, timeout_s=7 * 86_400)],
    )  # fmt: skip
    fee = price.percent(fee_bp)
    apply(
        f"Order 1 delivered: hold posted and fee {fee} taken, as one linked batch",
        [
            NewTransfer(new(), flags=POST | LINKED, pending_id=order_1),
            NewTransfer(new(), merchant, fees, fee.amount_minor, currency, 3),
        ],
    )
    apply(
        "A second release of order 1 is refused: a hold is resolved exactly once",
        [NewTransfer(new(), flags=POST, pending_id=order_1)],
    )
    order_2 = new()
    apply(
        "Order 2 paid: 80.00 held",
        [NewTransfer(order_2, wallet, merchant, 8_000, currency, 2, flags=PENDING)],
    )
    keep, _refund = allocate(Money(8_000, currency), [3, 1])
    apply(
        f"Order 2 partially refunded: merchant keeps {keep}, the rest returns to Ada",
        [NewTransfer(new(), flags=POST, pending_id=order_2, amount_minor=keep.amount_minor)],
    )
    apply(
        "Ada tries to pay 1,000.00 with 110.00 in her wallet: refused, nothing moves",
        [NewTransfer(new(), wallet, merchant, 100_000, currency, 2, flags=PENDING)],
    )
    order_3 = new()
    apply(
        "Order 3 paid with a 1-second hold that nobody releases",
        [NewTransfer(order_3, wallet, merchant, 500, currency, 2, flags=PENDING, timeout_s=1)],
    )
    # Let the 1-second hold lapse, then run the sweep the workers run: the hold is voided and
    # the 5.00 returns to Ada's available balance.
    threading.Event().wait(1.1)
    expired = ledger.expire_holds()
    steps.append(DemoStep("Expiry sweep voids the lapsed hold of order 3", [f"expired {expired}"]))
    balances = {
        name: str(Money(_net(ledger, account_id, name), currency))
        for name, account_id in ids.items()
    }
    assert steps[2].results == [CreateTransferResult.OK.value] * 2
    return DemoOutcome(steps, balances, verify(ledger.database))


def _net(ledger: Ledger, account_id: int, name: str) -> int:
    a = ledger.account(account_id)
    # Assets are shown debit-positive, everything else credit-positive.
    if name.startswith("bank:"):
        return a.debits_posted - a.credits_posted
    return a.credits_posted - a.debits_posted
