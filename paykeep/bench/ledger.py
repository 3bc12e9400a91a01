"""``paykeep bench ledger``: ledger throughput and latency beside a raw-insert baseline.

The baseline is measured in the same run on the same database: the same number of rows, of
the same width as a journal row, inserted plainly (``executemany`` on SQLite, ``COPY`` on
PostgreSQL — the same bulk path the ledger uses) into a scratch table without indexes, one
commit per batch of the same size. ``ratio`` = transfers_per_s / raw_insert_rows_per_s, a
figure that survives a noisy machine.

Work deferred past the last batch counts: the clock stops only once the per-account index has
caught up with the journal (SQLite indexes it in the background); ``postings_lag_rows`` is
how far behind it was when the last batch returned, ``postings_catch_up_ms`` the time spent
catching up inside ``elapsed_s``.
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

from paykeep.config import Settings
from paykeep.db import Database, open_database
from paykeep.db.engine import SQLITE_SYNCHRONOUS
from paykeep.ledger import fastpath
from paykeep.ledger.model import CreateTransferResult, NewAccount, NewTransfer
from paykeep.ledger.service import GroupCommitter, Ledger

ACCOUNT_ID_BASE = 1_000_000


@contextmanager
def scratch_database(backend: str, database_url: str | None) -> Iterator[Database]:
    """A brand-new database for one benchmark run, removed afterwards."""
    if backend == "sqlite":
        directory = Path(tempfile.mkdtemp(prefix="paykeep-bench-"))
        database = open_database(Settings(data_dir=directory))
        try:
            yield database
        finally:
            database.dispose()
            shutil.rmtree(directory, ignore_errors=True)
        return
    url = sa.engine.make_url(database_url or "postgresql://postgres@127.0.0.1:5432/postgres")
    admin_url = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"paykeep_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    database = open_database(
        Settings(
            data_dir=Path(tempfile.gettempdir()),
            database_url=url.set(database=name).render_as_string(hide_password=False),
        )
    )
    try:
        yield database
    finally:
        database.dispose()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _percentile_ms(samples_s: list[float], q: float) -> float:
    if not samples_s:
        return 0.0
    ordered = sorted(samples_s)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index] * 1000, 3)


def _raw_insert_rate(database: Database, rows: int, batch_size: int) -> float:
    """Plain rows per second into an index-free table shaped like a journal row."""
    digest = "0" * 64
    data = [
        (i, i, 1, 2, 100, "EUR", 1, 0, 0, 0, 0, "", "", 1_700_000_000_000_000_000 + i, digest)
        for i in range(1, rows + 1)
    ]
    columns = (
        "seq BIGINT, id BIGINT, debit_account_id BIGINT, credit_account_id BIGINT, "
        "amount_minor BIGINT, currency VARCHAR(3), code INTEGER, flags INTEGER, "
        "pending_id BIGINT, timeout_s INTEGER, expires_at_ns BIGINT, reference VARCHAR(128), "
        "metadata TEXT, timestamp_ns BIGINT, hash VARCHAR(64)"
    )
    with database.engine.connect() as conn:
        raw = Database.driver_connection(conn)
        cur = raw.cursor()
        cur.execute("DROP TABLE IF EXISTS bench_raw_insert")
        cur.execute(f"CREATE TABLE bench_raw_insert ({columns})")
        raw.commit()
        started = time.perf_counter()
        for start in range(0, rows, batch_size):
            chunk = data[start : start + batch_size]
            if database.is_sqlite:
                cur.execute("BEGIN IMMEDIATE")
                cur.executemany(
                    "INSERT INTO bench_raw_insert VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", chunk
                )
            else:
                with cur.copy("COPY bench_raw_insert FROM STDIN") as copy:
                    for row in chunk:
                        copy.write_row(row)
            raw.commit()
        elapsed = time.perf_counter() - started
        cur.execute("DROP TABLE bench_raw_insert")
        raw.commit()
    return rows / elapsed


def run_ledger_bench(
    *,
    backend: str,
    database_url: str | None,
    transfers: int,
    batch_size: int,
    concurrency: int,
    accounts: int,
    seed: int = 7,
) -> dict[str, Any]:
    rng = random.Random(seed)
    with scratch_database(backend, database_url) as database:
        ledger = Ledger(database)
        account_ids = [ACCOUNT_ID_BASE + i for i in range(accounts)]
        for start in range(0, accounts, 5_000):
            ledger.create_accounts(
                [NewAccount(aid, "EUR", 1) for aid in account_ids[start : start + 5_000]]
            )
        first_id = 1 << 40
        work: list[NewTransfer] = []
        for n in range(transfers):
            debit, credit = rng.sample(account_ids, 2)
            work.append(NewTransfer(first_id + n, debit, credit, rng.randint(1, 100_000), "EUR", 1))
        batches = [work[i : i + batch_size] for i in range(0, transfers, batch_size)]
        latencies: list[float] = []
        ok = 0
        commits = 0
        started = time.perf_counter()
        if concurrency <= 1:
            for batch in batches:
                t0 = time.perf_counter()
                results = ledger.create_transfers(batch)
                latencies.append(time.perf_counter() - t0)
                ok += sum(1 for r in results if r.result is CreateTransferResult.OK)
            commits = len(batches)
        else:
            ok, commits = _run_concurrent(ledger, batches, concurrency, latencies)
        # Work deferred past the last batch is still the run's: the per-account index must be
        # caught up before the clock stops (SQLite indexes in the background).
        writes_done = time.perf_counter()
        lag_rows = ledger.postings_lag_rows()
        ledger.index_postings()
        elapsed = time.perf_counter() - started
        catch_up_s = elapsed - (writes_done - started)
        raw_rate = _raw_insert_rate(database, transfers, batch_size)
        rate = transfers / elapsed
        out: dict[str, Any] = {
            "backend": backend,
            # Which engine decided plain batches: the compiled core or the pure-Python one.
            "engine_core": fastpath.engine_core(),
            "transfers": transfers,
            "accounts": accounts,
            "batch_size": batch_size,
            "concurrency": concurrency,
            "group_commit": concurrency > 1,
            "database_commits": commits,
            "transfers_ok": ok,
            "elapsed_s": round(elapsed, 3),
            "transfers_per_s": round(rate, 1),
            "raw_insert_rows_per_s": round(raw_rate, 1),
            "ratio": round(rate / raw_rate, 4),
            "batch_latency_ms_p50": _percentile_ms(latencies, 0.50),
            "batch_latency_ms_p99": _percentile_ms(latencies, 0.99),
            "batch_latency_ms_mean": round(statistics.fmean(latencies) * 1000, 3)
            if latencies
            else 0.0,
            # Journal rows not yet in the per-account index when the last batch returned, and
            # the time spent indexing them (inside elapsed_s).
            "postings_lag_rows": lag_rows,
            "postings_catch_up_ms": round(catch_up_s * 1000, 3),
        }
        if database.is_sqlite:
            out["durability"] = f"WAL, synchronous={SQLITE_SYNCHRONOUS}"
        else:
            out["durability"] = "PostgreSQL default (synchronous_commit=on, fsync=on)"
        return out


def _run_concurrent(
    ledger: Ledger, batches: list[list[NewTransfer]], concurrency: int, latencies: list[float]
) -> tuple[int, int]:
    """``concurrency`` threads, each submitting its share of batches through group commit."""
    ok_counts = [0] * concurrency
    per_thread: list[list[float]] = [[] for _ in range(concurrency)]
    with GroupCommitter(ledger) as committer:

        def worker(k: int) -> None:
            for batch in batches[k::concurrency]:
                t0 = time.perf_counter()
                results = committer.submit(batch)
                per_thread[k].append(time.perf_counter() - t0)
                ok_counts[k] += sum(1 for r in results if r.result is CreateTransferResult.OK)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        commits = committer.commits
    for samples in per_thread:
        latencies.extend(samples)
    return sum(ok_counts), commits
