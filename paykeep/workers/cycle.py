"""The background work of ``paykeep serve``: escrow timers, reserves, bank-transfer
settlement, card recovery, payout batches and the bank's end-of-day cycle, webhooks, and the
purge of expired idempotency records.

Each loop calls idempotent service methods on an interval, so several worker processes may
run it at once (timers claim orders with ``SKIP LOCKED`` on PostgreSQL; every step names its
ledger transfers by a derived id). An error in one pass is logged and the loop goes on.
Within a pass, one item that fails unexpectedly is backed off and then parked instead of
failing the pass (``paykeep.db.quarantine``); the database being unavailable still fails it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import httpx

    from paykeep.api.runtime import Runtime
    from paykeep.workers.webhooks import DeliveryPump

log = logging.getLogger("paykeep.workers")

TIMERS_INTERVAL_S: Final = 0.5
BANK_CYCLE_INTERVAL_S: Final = 5.0
WEBHOOK_INTERVAL_S: Final = 0.25
#: How long one webhook pass keeps delivering while deliveries are due.
WEBHOOK_PASS_BUDGET_S: Final = 2.0
HOUSEKEEPING_INTERVAL_S: Final = 60.0
#: Purge batches per housekeeping pass (each is one short transaction).
HOUSEKEEPING_BATCHES_MAX: Final = 20
#: A settlement report naming a capture Paykeep is still recording is checked again.
SETTLEMENT_MATCH_ATTEMPTS: Final = 10
SETTLEMENT_MATCH_WAIT_S: Final = 0.3


@dataclass
class WorkerStats:
    passes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def count(self, table: dict[str, int], name: str) -> None:
        table[name] = table.get(name, 0) + 1


def _loop(
    name: str,
    interval_s: float,
    step: Callable[[], object],
    stop: threading.Event,
    stats: WorkerStats,
) -> None:
    while not stop.is_set():
        try:
            step()
            stats.count(stats.passes, name)
        except Exception:
            stats.count(stats.errors, name)
            log.exception("worker %s: pass failed", name)
        stop.wait(interval_s)


def escrow_pass(runtime: Runtime) -> None:
    payments = runtime.payments
    flush = getattr(payments.risk, "flush", None)
    if flush is not None:
        flush()  # risk decisions whose movement rolled back (blocks, held releases)
    payments.run_timers()
    payments.expire_claims()
    payments.credit_topups()
    payments.settle_bank_transfers()
    payments.release_reserves()
    payments.recover_card_payments()
    # Money refunded from card-paid orders goes back to the card: outside any transaction.
    payments.send_card_refunds()


def bank_cycle_pass(runtime: Runtime) -> None:
    """Take the acquirer's card settlement, batch requested payouts into a pain.001 for the
    bank, close the bank's day on the safeguarding account and import the statements it
    produced (top-ups credit wallets, card settlements empty the clearing account, payouts
    settle, payouts the payee's bank sent back return to where they came from — with the
    merchant's or buyer's record and event in that same transaction), then copy payout states
    onto the merchants' payouts and the buyers' withdrawals."""

    from paykeep.gateway.payouts.errors import PayoutNothingToBatch
    from paykeep.gateway.payouts.model import Debtor

    config = runtime.config
    if config.bank_url is None or config.bank_iban is None:
        return
    payouts = runtime.payouts
    debtor = Debtor("Paykeep Safeguarding", config.bank_iban, config.bank_name)
    bank = runtime.bank_http()
    # Card money first: the acquirer's credit must be at the bank before a payout file
    # spends it (a file the bank cannot cover is rejected whole, every payout in it).
    if runtime.cards is not None:
        settle_cards(runtime, bank)
    try:
        batch = payouts.batch(config.currency, debtor)
        payouts.submit(batch.batch_id, config.bank_url)
    except PayoutNothingToBatch:
        pass
    bank.post(f"/bank/accounts/{config.bank_iban}/close-day").raise_for_status()
    listed = bank.get(f"/bank/accounts/{config.bank_iban}/statements").json()
    ids = [s["id"] if isinstance(s, dict) else str(s) for s in listed.get("statements", [])]

    def fetch(statement_id: str) -> bytes:
        body = bank.get(f"/bank/statements/{statement_id}", params={"format": "camt053"})
        body.raise_for_status()
        return body.content

    # One file at a time: a refused or failing file stalls neither the others nor what
    # follows (the settle and sync passes).
    runtime.statements.import_new(ids, fetch)
    # resume() + mark settled what the statement confirmed + return what was sent back
    payouts.settle()
    runtime.payments.sync_payouts()
    # Buyers' withdrawals are gateway payouts too: the same pass copies their states (a
    # returned one's money is back in the wallet) and finishes reservations a crash left.
    runtime.payments.sync_withdrawals()
    runtime.payments.credit_topups()
    runtime.payments.settle_bank_transfers()


def settle_cards(runtime: Runtime, bank: httpx.Client) -> None:
    """The acquirer pays what its network captured into the safeguarding account; its report
    (with the retrieval reference numbers it pays) is checked against Paykeep's own captures
    and the credit expected, so the statement line empties ``clearing:card:<acquirer>``.
    A capture the network answered but Paykeep has not recorded yet makes the report
    disagree for a moment: it is checked again, briefly, before giving up (then the line is a
    break for a person to resolve, never a guess)."""
    from paykeep.gateway.cards.errors import CardSettlementMismatch
    from paykeep.gateway.cards.service import expect_card_settlement

    config = runtime.config
    assert config.bank_iban is not None and runtime.cards is not None
    answer = bank.post(
        "/settlements/cards", json={"iban": config.bank_iban, "currency": config.currency}
    )
    answer.raise_for_status()
    report = answer.json()
    if not report.get("count"):
        return
    for attempt in range(SETTLEMENT_MATCH_ATTEMPTS):
        try:
            expect_card_settlement(
                runtime.database,
                runtime.statements,
                acquirer=runtime.cards.acquirer,
                currency=config.currency,
                reference=report["reference"],
                amount_minor=int(report["amount_minor"]),
                count=int(report["count"]),
                iban=config.bank_iban,
                bank_account_name=f"bank:safeguarding:{config.bank_name}",
                rrns=report.get("rrns"),
            )
            return
        except CardSettlementMismatch:
            if attempt == SETTLEMENT_MATCH_ATTEMPTS - 1:
                log.warning("card settlement %s does not match our captures", report)
                return
            time.sleep(SETTLEMENT_MATCH_WAIT_S)


def housekeeping_pass(runtime: Runtime) -> None:
    """Idempotency records are kept 24 h: delete the expired ones, in bounded batches. Forget
    the worker items' failures not repeated for a week (parked ones stay)."""
    from paykeep.api.idempotency import IDEMPOTENCY_PURGE_BATCH, purge_expired

    runtime.payments.quarantine.purge_stale()
    for _ in range(HOUSEKEEPING_BATCHES_MAX):
        if purge_expired(runtime.database) < IDEMPOTENCY_PURGE_BATCH:
            return


def webhook_pass(runtime: Runtime, pump: DeliveryPump) -> None:
    """Fan events out and keep deliveries in flight through ``pump`` (record the attempts that
    ended, start what is due in the free slots: a slow endpoint holds only its own slots),
    coming round whenever an attempt ends, for at most ``WEBHOOK_PASS_BUDGET_S`` so the loop
    still notices a stop; returns early when there is nothing to do. Attempts still in flight
    at the end are recorded by a later pass. Failed deliveries are rescheduled, not retried
    here at once."""
    from paykeep.workers.webhook_model import FAN_OUT_BATCH_MAX

    deadline = time.monotonic() + WEBHOOK_PASS_BUDGET_S
    while time.monotonic() < deadline:
        fanned = runtime.webhooks.fan_out()
        worked = fanned + pump.pump()
        if fanned == FAN_OUT_BATCH_MAX:
            continue  # more events are waiting
        if not pump.in_flight and not worked:
            return
        # Until an attempt ends; a quarter-second at most, to claim what fell due meanwhile.
        pump.wait(WEBHOOK_INTERVAL_S)


def start_workers(
    runtime: Runtime, stop: threading.Event, *, bank_cycle_s: float = BANK_CYCLE_INTERVAL_S
) -> tuple[list[threading.Thread], WorkerStats]:
    from paykeep.workers.webhooks import DeliveryPump

    stats = WorkerStats()
    # Lives across passes (attempts outlast a pass). Never closed: on stop, what is in flight
    # is abandoned and delivered again after its lease (at least once, as always).
    pump = DeliveryPump(runtime.webhooks)
    plan: list[tuple[str, float, Callable[[], object]]] = [
        ("escrow", TIMERS_INTERVAL_S, lambda: escrow_pass(runtime)),
        ("webhooks", WEBHOOK_INTERVAL_S, lambda: webhook_pass(runtime, pump)),
        ("bank", bank_cycle_s, lambda: bank_cycle_pass(runtime)),
        ("housekeeping", HOUSEKEEPING_INTERVAL_S, lambda: housekeeping_pass(runtime)),
    ]
    threads = [
        threading.Thread(
            target=_loop,
            args=(name, interval, step, stop, stats),
            name=f"worker-{name}",
            daemon=True,
        )
        for name, interval, step in plan
    ]
    for thread in threads:
        thread.start()
    return threads, stats
