"""Crash safety: a writer killed with SIGKILL mid-stream loses nothing it acknowledged.

A writer subprocess (``crash_writer.py``) streams batches with linked chains (one that must
fail as a whole every other batch), holds and their posts/voids, and acknowledges each batch
on stdout only after ``create_transfers`` returned. The test kills it at a random moment,
starts another writer that resends the batch that may have been in flight (it must get all
``ok`` or all ``exists``, never a mix) and continues, then checks: every acknowledged transfer
is stored exactly once, no linked chain is half-applied, every account's balances equal the
journal's recomputation, and ``paykeep audit verify`` passes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paykeep.clock import FakeClock
from paykeep.config import Settings
from paykeep.db import Database
from paykeep.ledger.model import NewAccount
from paykeep.ledger.service import Ledger
from tests.ledger.crash_writer import PENDING, POST, VOID, batch_for

WRITER = Path(__file__).with_name("crash_writer.py")
CYCLES = 3  # writers killed
TIMEOUT_S = 120
#: Batches a restarted writer found already committed (a coverage aid for debugging).
REPLAYED: list[int] = []


def _writer(
    settings: Settings, start: int, count: int, ack_delay: float = 0.0
) -> subprocess.Popen[str]:
    args = [sys.executable, str(WRITER), "--from", str(start), "--count", str(count)]
    args += ["--ack-delay", str(ack_delay)]
    args += ["--data-dir", str(settings.data_dir)]
    if settings.database_url:
        args += ["--database-url", settings.database_url]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _acks(lines: list[str]) -> list[dict[str, object]]:
    acks = []
    for line in lines:
        try:
            acks.append(json.loads(line))
        except json.JSONDecodeError:
            assert line is lines[-1], "only the very last line may be cut by the kill"
    return acks


def _check_batch(ack: dict[str, object], first_after_restart: bool) -> None:
    k = ack["k"]
    assert isinstance(k, int)
    items, expected, _ = batch_for(k)
    results = ack["results"]
    assert isinstance(results, list)
    assert [r[0] for r in results] == [t.id for t in items]
    got = [r[1] for r in results]
    if first_after_restart and got != expected:
        REPLAYED.append(k)
        # the batch was committed by the killed writer: every applied item is now a replay
        replay = ["exists" if e == "ok" else e for e in expected]
        assert got == replay, (k, got)
    else:
        assert got == expected, (k, got)


@pytest.mark.slow
def test_sigkill_mid_stream_loses_nothing_acknowledged(
    database: Database, settings: Settings
) -> None:
    ledger = Ledger(database, clock=FakeClock())
    ledger.create_accounts([NewAccount(1, "EUR", 1), NewAccount(3, "EUR", 1)])
    rng = random.Random()
    acknowledged: list[dict[str, object]] = []
    next_k = 0
    for cycle in range(CYCLES):
        # the last cycle acknowledges slowly, so its kill most likely lands between a
        # batch's commit and its acknowledgement
        slow = cycle == CYCLES - 1
        proc = _writer(settings, next_k, 100_000, ack_delay=0.2 if slow else 0.0)
        assert proc.stdout is not None
        lines: list[str] = []
        stop_after = rng.randint(2, 12)
        deadline = time.monotonic() + TIMEOUT_S
        while len(lines) < stop_after:
            line = proc.stdout.readline()
            assert line, f"writer died early: {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line.rstrip("\n"))
            assert time.monotonic() < deadline
        # somewhere inside the next batch, its commit, or the wait before its acknowledgement
        time.sleep(0.1 if slow else rng.random() * 0.03)
        proc.send_signal(signal.SIGKILL)
        rest, _err = proc.communicate(timeout=TIMEOUT_S)
        assert proc.returncode == -signal.SIGKILL
        lines += [x for x in rest.split("\n") if x]
        acks = _acks(lines)
        assert [a["k"] for a in acks] == list(range(next_k, next_k + len(acks)))
        for i, ack in enumerate(acks):
            _check_batch(ack, first_after_restart=(i == 0 and next_k > 0))
        acknowledged += acks
        next_k += len(acks)  # the in-flight batch (if any) is resent by the next writer
    final = _writer(settings, next_k, 5)
    out, err = final.communicate(timeout=TIMEOUT_S)
    assert final.returncode == 0, err
    acks = _acks([x for x in out.split("\n") if x])
    assert [a["k"] for a in acks] == list(range(next_k, next_k + 5))
    for i, ack in enumerate(acks):
        _check_batch(ack, first_after_restart=(i == 0))
    acknowledged += acks
    last_k = next_k + 4

    # every acknowledged transfer exactly once
    applied = [
        r[0]
        for a in acknowledged
        for r in a["results"]  # type: ignore[attr-defined]
        if r[1] in ("ok", "exists")
    ]
    with database.read() as conn:
        rows = conn.exec_driver_sql(
            "SELECT id, debit_account_id, credit_account_id, amount_minor, flags, pending_id "
            "FROM ledger_transfers ORDER BY seq"
        ).all()
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids))
    assert set(applied) <= set(ids)
    # nothing beyond the batches that were sent
    sent = {t.id for k in range(last_k + 1) for t in batch_for(k)[0]}
    assert set(ids) <= sent
    # no chain half-applied
    stored = set(ids)
    for k in range(last_k + 1):
        for chain in batch_for(k)[2]:
            present = [tid in stored for tid in chain]
            assert all(present) or not any(present), (k, chain, present)
    # and the chains that must fail, never
    failing = [c for k in range(last_k + 1) for c in batch_for(k)[2][1:]]
    assert failing and not any(tid in stored for chain in failing for tid in chain)
    # balances equal the journal's recomputation
    amounts = {r[0]: r[3] for r in rows}
    balances: dict[int, list[int]] = {1: [0, 0, 0, 0], 3: [0, 0, 0, 0]}
    for _tid, debit, credit, amount, flags, pending_id in rows:
        held = amount if flags & PENDING else 0
        released = amounts[pending_id] if flags & (POST | VOID) else 0
        posted = 0 if flags & (PENDING | VOID) else amount
        balances[debit][0] += held - released
        balances[debit][1] += posted
        balances[credit][2] += held - released
        balances[credit][3] += posted
    for aid, expected in balances.items():
        a = ledger.account(aid)
        assert [a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted] == expected
    # the audit, as an operator would run it
    args = [
        sys.executable,
        "-m",
        "paykeep.cli",
        "audit",
        "verify",
        "--data-dir",
        str(settings.data_dir),
    ]
    if settings.database_url:
        args += ["--database-url", settings.database_url]
    args += ["--json"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # The index survived the kills consistent: checked against the journal, not rebuilt.
    assert json.loads(done.stdout)["postings_index_rebuilt"] is False
    print(f"batches a restarted writer found committed: {REPLAYED}")
