"""Concurrent writers: processes on PostgreSQL, threads on both backends, group commit.

- many worker processes (spawned), each with its own ``Ledger``, drain one limited account
  with small transfers and holds (on PostgreSQL, and on SQLite too, where each process keeps
  its own balance cache that another writer's commit must invalidate): the limit is never
  broken, what left the account equals the sum of acknowledged transfers, ``exceeds_credits``
  only ever answered once the funds had run out, no deadlock (every worker finishes within a
  bound), and the audit passes;
- two threads debiting the same balance at the same moment: never both (STYLE rule 11);
- ``GroupCommitter`` with 64 threads: each transfer acknowledged exactly once, totals right,
  a failing or open linked chain of one caller never touches another caller's transfers.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from paykeep.clock import FakeClock
from paykeep.config import Settings
from paykeep.db import Database, open_database
from paykeep.ledger.audit import verify
from paykeep.ledger.model import CreateTransferResult, NewAccount, NewTransfer
from paykeep.ledger.service import GroupCommitter, Ledger
from tests.ledger.scenario import DMNEC, LINKED, PENDING, POST, VOID

R = CreateTransferResult
SOURCE, LIMITED, SINK = 1, 2, 3
FUNDS = 1_000
WORKERS = 4
OPS = 100
JOIN_TIMEOUT_S = 180


def _chart(ledger: Ledger, funds: int = FUNDS) -> None:
    ledger.create_accounts(
        [
            NewAccount(SOURCE, "EUR", 1),
            NewAccount(LIMITED, "EUR", 1, flags=DMNEC),
            NewAccount(SINK, "EUR", 1),
        ]
    )
    (r,) = ledger.create_transfers([NewTransfer(1, SOURCE, LIMITED, funds, "EUR", 1)])
    assert r.result is R.OK


def _worker(
    url: str,
    data_dir: str,
    index: int,
    phase_done: Any,
    phase_go: Any,
    out: Any,
) -> None:
    """Phase 1 (drain): plain debits, holds, full posts of own holds — the limited account's
    available balance never goes up. Phase 2 (release): every own open hold is voided or
    partially posted. Reports every (id, kind, amount, result)."""
    database = open_database(Settings(data_dir=Path(data_dir), database_url=url), migrate=False)
    ledger = Ledger(database, clock=FakeClock())
    rng = random.Random(index)
    next_id = (index + 1) * 1_000_000
    log: list[tuple[int, str, int, str]] = []
    holds: list[tuple[int, int]] = []

    def send(batch: list[tuple[NewTransfer, str, int]]) -> list[str]:
        results = ledger.create_transfers([t for t, _, _ in batch])
        codes = [r.result.value for r in results]
        assert [r.id for r in results] == [t.id for t, _, _ in batch]
        for (t, kind, amount), code in zip(batch, codes, strict=True):
            log.append((t.id, kind, amount, code))
        return codes

    try:
        for _ in range(OPS):
            batch: list[tuple[NewTransfer, str, int]] = []
            for _ in range(rng.randint(1, 3)):
                next_id += 1
                amount = rng.randint(1, 5)
                roll = rng.random()
                if roll < 0.55:
                    t = NewTransfer(next_id, LIMITED, SINK, amount, "EUR", 1)
                    batch.append((t, "plain", amount))
                elif roll < 0.85 or not holds:
                    t = NewTransfer(next_id, LIMITED, SINK, amount, "EUR", 1, flags=PENDING)
                    batch.append((t, "hold", amount))
                else:
                    pid, held = holds.pop(rng.randrange(len(holds)))
                    t = NewTransfer(next_id, flags=POST, pending_id=pid)
                    batch.append((t, "post", held))
            codes = send(batch)
            for (t, kind, amount), code in zip(batch, codes, strict=True):
                if kind == "hold" and code == "ok":
                    holds.append((t.id, amount))
        phase_done.wait(timeout=JOIN_TIMEOUT_S)
        phase_go.wait(timeout=JOIN_TIMEOUT_S)
        for pid, held in holds:
            next_id += 1
            if rng.random() < 0.5:
                send([(NewTransfer(next_id, flags=VOID, pending_id=pid), "void", 0)])
            else:
                part = rng.randint(1, held)
                t = NewTransfer(next_id, flags=POST, pending_id=pid, amount_minor=part)
                send([(t, "post", part)])
        out.put((index, log, None))
    except BaseException as exc:
        out.put((index, log, repr(exc)))
        raise
    finally:
        database.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_processes_drain_a_limited_account(settings: Settings, database: Database) -> None:
    _chart(Ledger(database, clock=FakeClock()))
    ctx = mp.get_context("spawn")
    phase_done = ctx.Barrier(WORKERS + 1)
    phase_go = ctx.Barrier(WORKERS + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(settings.database_url, str(settings.data_dir), i, phase_done, phase_go, out),
        )
        for i in range(WORKERS)
    ]
    for p in procs:
        p.start()
    try:
        phase_done.wait(timeout=JOIN_TIMEOUT_S)  # a deadlock would break this barrier
        ledger = Ledger(database, clock=FakeClock())
        drained = ledger.account(LIMITED)
        phase_go.wait(timeout=JOIN_TIMEOUT_S)
        logs: dict[int, list[tuple[int, str, int, str]]] = {}
        for _ in procs:
            index, log, error = out.get(timeout=JOIN_TIMEOUT_S)
            assert error is None, (index, error)
            logs[index] = log
        for p in procs:
            p.join(timeout=JOIN_TIMEOUT_S)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    entries = [e for log in logs.values() for e in log]
    codes = {code for *_, code in entries}
    assert codes <= {"ok", "exceeds_credits"}, codes
    # the funds did run out, and every refusal asked for more than what was left at the end
    # of the drain phase (available never rose during it)
    available = drained.credits_posted - drained.debits_posted - drained.debits_pending
    assert available >= 0
    refused = [amount for _, kind, amount, code in entries if code == "exceeds_credits"]
    assert refused, "the workload never exhausted the account"
    assert all(amount > available for amount in refused), (available, sorted(refused)[:5])
    assert {kind for _, kind, _, code in entries if code == "exceeds_credits"} <= {"plain", "hold"}
    # what left the account is exactly what was acknowledged
    final = ledger.account(LIMITED)
    plain = sum(a for _, kind, a, code in entries if kind == "plain" and code == "ok")
    posted = sum(a for _, kind, a, code in entries if kind == "post" and code == "ok")
    assert final.debits_pending == 0
    assert final.debits_posted == plain + posted
    assert final.debits_posted <= final.credits_posted == FUNDS
    assert ledger.account(SINK).credits_posted == plain + posted
    ids = [tid for tid, *_ in entries]
    ok_ids = [tid for tid, *_, code in entries if code == "ok"]
    assert len(ids) == len(set(ids))
    assert set(ledger.lookup_transfers(ok_ids)) == set(ok_ids)
    report = verify(database)
    assert report.ok, report.problems[:5]
    assert report.transfers_checked == len(ok_ids) + 1


# ---------------------------------------------------------------------------------------------
# Two threads, one balance (both backends)
# ---------------------------------------------------------------------------------------------


def _debit(
    ledger: Ledger, batch: list[NewTransfer], start: threading.Barrier, results: list[R]
) -> None:
    start.wait(timeout=30)
    (r,) = ledger.create_transfers(batch)
    results.append(r.result)  # list.append is atomic


def test_two_concurrent_debits_of_one_balance(database: Database) -> None:
    clock = FakeClock()
    ledgers = [Ledger(database, clock=clock), Ledger(database, clock=clock)]
    ledgers[0].create_accounts([NewAccount(SOURCE, "EUR", 1), NewAccount(SINK, "EUR", 1)])
    rounds = 15
    for n in range(rounds):
        account = 100 + n
        ledgers[0].create_accounts([NewAccount(account, "EUR", 1, flags=DMNEC)])
        (funded,) = ledgers[0].create_transfers(
            [NewTransfer(10_000 + n, SOURCE, account, 100, "EUR", 1)]
        )
        assert funded.result is R.OK
        start = threading.Barrier(2)
        results: list[R] = []
        flags = PENDING if n % 2 else 0  # plain debits and holds, alternately
        batches = [
            [NewTransfer(20_000 + 10 * n + i, account, SINK, 60, "EUR", 1, flags=flags)]
            for i in range(2)
        ]
        threads = [
            threading.Thread(target=_debit, args=(ledgers[i], batches[i], start, results))
            for i in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive()
        assert sorted(results) == sorted([R.OK, R.EXCEEDS_CREDITS]), (n, results)
        a = ledgers[1].account(account)
        assert a.debits_pending + a.debits_posted == 60
    assert verify(database).ok


# ---------------------------------------------------------------------------------------------
# Group commit with 64 threads (both backends)
# ---------------------------------------------------------------------------------------------

THREADS = 64
PER_THREAD = 8


@pytest.fixture
def committer(database: Database) -> Iterator[tuple[Ledger, GroupCommitter]]:
    ledger = Ledger(database, clock=FakeClock())
    _chart(ledger, funds=10**9)
    with GroupCommitter(ledger) as gc:
        yield ledger, gc


def test_group_commit_many_threads(committer: tuple[Ledger, GroupCommitter]) -> None:
    ledger, gc = committer
    errors: queue.Queue[BaseException] = queue.Queue()
    acks: dict[int, list[tuple[int, R]]] = {}
    expected_ok: dict[int, int] = {}  # id -> amount of every transfer that must succeed
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def caller(i: int) -> None:
        try:
            base = 1_000_000 * (i + 1)
            mine: list[tuple[int, R]] = []
            good: dict[int, int] = {}
            start.wait(timeout=60)
            for k in range(PER_THREAD):
                t = NewTransfer(base + k, LIMITED, SINK, 1 + (i + k) % 7, "EUR", 1)
                r = gc.submit_one(t)
                assert (r.index, r.id) == (0, t.id)
                mine.append((r.id, r.result))  # type: ignore[arg-type]
                good[t.id] = t.amount_minor  # type: ignore[assignment]
            # a chain that fails as a whole (its second transfer names no account)
            chain = [
                NewTransfer(base + 100, LIMITED, SINK, 5, "EUR", 1, flags=LINKED),
                NewTransfer(base + 101, LIMITED, 999, 5, "EUR", 1),
            ]
            # a batch whose last transfer leaves a chain open
            open_chain = [
                NewTransfer(base + 200, LIMITED, SINK, 3, "EUR", 1),
                NewTransfer(base + 201, LIMITED, SINK, 4, "EUR", 1, flags=LINKED),
            ]
            # a good chain
            good_chain = [
                NewTransfer(base + 300, LIMITED, SINK, 2, "EUR", 1, flags=LINKED),
                NewTransfer(base + 301, LIMITED, SINK, 2, "EUR", 1),
            ]
            batches = [chain, open_chain, good_chain] if i % 2 else [good_chain, open_chain]
            for batch in batches:
                results = gc.submit(batch)
                assert [(r.index, r.id) for r in results] == [
                    (j, t.id) for j, t in enumerate(batch)
                ]
                mine += [(r.id, r.result) for r in results]  # type: ignore[misc]
            good[base + 200] = 3
            good[base + 300] = 2
            good[base + 301] = 2
            with lock:
                acks[i] = mine
                expected_ok.update(good)
        except BaseException as exc:
            errors.put(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive()
    assert errors.empty(), errors.get()
    every = [pair for mine in acks.values() for pair in mine]
    ids = [tid for tid, _ in every]
    assert len(ids) == len(set(ids)), "a transfer was acknowledged twice"
    expected_count = THREADS * PER_THREAD + sum(6 if i % 2 else 4 for i in range(THREADS))
    assert len(ids) == expected_count
    by_id = dict(every)
    for i in range(THREADS):
        base = 1_000_000 * (i + 1)
        if i % 2:
            assert (by_id[base + 100], by_id[base + 101]) == (
                R.LINKED_EVENT_FAILED,
                R.CREDIT_ACCOUNT_NOT_FOUND,
            )
        assert (by_id[base + 200], by_id[base + 201]) == (R.OK, R.LINKED_EVENT_CHAIN_OPEN)
    assert {tid for tid, r in every if r is R.OK} == set(expected_ok)
    stored = ledger.lookup_transfers(ids)
    assert set(stored) == set(expected_ok)
    total = sum(expected_ok.values())
    assert ledger.account(SINK).credits_posted == total
    assert ledger.account(LIMITED).debits_posted == total
    assert gc.transfers_committed == expected_count
    assert verify(ledger.database).ok


def test_group_commit_isolates_a_malformed_request(
    committer: tuple[Ledger, GroupCommitter],
) -> None:
    """Two callers land in one group (the committer is held up until both are queued); one
    caller's malformed transfer gets its own result and the other caller's succeeds."""
    ledger, gc = committer
    outcomes: dict[str, object] = {}

    def call(name: str, batch: list[NewTransfer]) -> None:
        try:
            outcomes[name] = [r.result for r in gc.submit(batch)]
        except Exception as exc:  # the outcome under test
            outcomes[name] = exc

    bad = [NewTransfer(501, LIMITED, SINK, 5, ["EUR"], 1)]  # type: ignore[arg-type]
    good = [NewTransfer(502, LIMITED, SINK, 5, "EUR", 1)]
    plug = [NewTransfer(500, LIMITED, SINK, 1, "EUR", 1)]
    with ledger._write_lock:  # the committer's first group waits here...
        threads = [threading.Thread(target=call, args=("plug", plug))]
        threads[0].start()
        while gc._queue.qsize():  # ...once it has taken the plug
            threading.Event().wait(0.001)
        threading.Event().wait(0.05)
        for name, batch in (("bad", bad), ("good", good)):
            threads.append(threading.Thread(target=call, args=(name, batch)))
            threads[-1].start()
        while gc._queue.qsize() < 2:
            threading.Event().wait(0.001)
    for t in threads:
        t.join(timeout=60)
    assert outcomes["plug"] == [R.OK]
    assert outcomes["good"] == [R.OK], outcomes
    assert outcomes["bad"] == [R.CURRENCY_INVALID], outcomes
    assert set(ledger.lookup_transfers([500, 501, 502])) == {500, 502}
