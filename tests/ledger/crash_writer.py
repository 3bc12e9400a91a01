"""A ledger writer for ``test_crash.py``: streams deterministic batches and acknowledges each.

Run as ``python crash_writer.py --from K --count N [--data-dir D] [--database-url U]``. Batch
``k`` is a pure function of ``k`` (see :func:`batch_for`), so a restarted writer can resend
the batch that was in flight when its predecessor was killed. After ``create_transfers``
returns for batch ``k`` (and only then), one JSON line ``{"k": k, "results": [[id, code], ...]}``
is written to stdout and flushed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from paykeep.config import Settings
from paykeep.db import open_database
from paykeep.ledger.model import NewTransfer, TransferFlags
from paykeep.ledger.service import Ledger

SOURCE, SINK = 1, 3
LINKED = int(TransferFlags.LINKED)
PENDING = int(TransferFlags.PENDING)
POST = int(TransferFlags.POST_PENDING)
VOID = int(TransferFlags.VOID_PENDING)


def _base(k: int) -> int:
    return 10_000_000 + 100 * k


def batch_for(k: int) -> tuple[list[NewTransfer], list[str], list[list[int]]]:
    """Batch ``k``, the result each item gets when the batch is first applied, and its
    linked chains (as id lists)."""
    rng = random.Random(k)
    b = _base(k)
    items: list[NewTransfer] = []
    expected: list[str] = []
    chains: list[list[int]] = []
    for i in range(3):
        items.append(NewTransfer(b + i, SOURCE, SINK, rng.randint(1, 100), "EUR", 1))
        expected.append("ok")
    chain = [
        NewTransfer(b + 10, SOURCE, SINK, rng.randint(1, 50), "EUR", 1, flags=LINKED),
        NewTransfer(b + 11, SINK, SOURCE, rng.randint(1, 50), "EUR", 1, flags=LINKED),
        NewTransfer(b + 12, SOURCE, SINK, rng.randint(1, 50), "EUR", 1),
    ]
    items += chain
    expected += ["ok", "ok", "ok"]
    chains.append([t.id for t in chain])
    if k % 2:
        failing = [
            NewTransfer(b + 20, SOURCE, SINK, 7, "EUR", 1, flags=LINKED),
            NewTransfer(b + 21, SINK, SOURCE, 7, "EUR", 1, flags=LINKED),
            NewTransfer(b + 22, SOURCE, 999, 7, "EUR", 1),  # no account 999
        ]
        items += failing
        expected += ["linked_event_failed", "linked_event_failed", "credit_account_not_found"]
        chains.append([t.id for t in failing])
    items.append(NewTransfer(b + 30, SOURCE, SINK, 50, "EUR", 1, flags=PENDING))
    expected.append("ok")
    if k > 0:
        previous_hold = _base(k - 1) + 30
        if k % 3 == 0:
            items.append(NewTransfer(b + 31, flags=VOID, pending_id=previous_hold))
        else:
            amount = None if k % 3 == 1 else rng.randint(1, 50)
            items.append(
                NewTransfer(b + 31, flags=POST, pending_id=previous_hold, amount_minor=amount)
            )
        expected.append("ok")
    return items, expected, chains


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--from", dest="start", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--database-url", default=None)
    # Seconds between a batch's commit and its acknowledgement: widens the window in which a
    # kill leaves a committed batch unacknowledged (a slow client, a lost response).
    parser.add_argument("--ack-delay", type=float, default=0.0)
    args = parser.parse_args()
    settings = Settings(data_dir=Path(args.data_dir), database_url=args.database_url)
    # A short postings tail: SQLite's indexer (its thread, or this writer past the hard bound)
    # runs mid-stream, so kills land in its transactions too.
    ledger = Ledger(open_database(settings, migrate=False), postings_tail_max=16)
    for k in range(args.start, args.start + args.count):
        items, _, _ = batch_for(k)
        results = ledger.create_transfers(items)
        if args.ack_delay:
            time.sleep(args.ack_delay)
        line = json.dumps({"k": k, "results": [[r.id, r.result.value] for r in results]})
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
