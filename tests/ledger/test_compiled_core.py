"""The compiled core (``paykeep/ledger/_fastpath.c``) decides exactly what the pure engine does.

- it is built wherever a compiler exists (CI sets ``CI``: there it must be importable);
- on random batches — all plain, plain with one bad item anywhere, mixtures, duplicate ids,
  replays, balances at the limits, accounts with both limit flags, several currencies — it
  either returns exactly the pure engine's rows (hashes included), results, balances and
  head, or returns None having changed nothing; and it returns None only when the pure
  engine does not decide every item a plain ``ok``;
- through the service, on both databases, the same batches give the same results, journal,
  balances and head with the core on and off, and the core really ran.
"""

from __future__ import annotations

import copy
import os
import random
import shutil
import sys
import sysconfig
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from paykeep import limits
from paykeep.clock import FakeClock
from paykeep.config import SQLITE_FILE_NAME, Settings
from paykeep.db import Database, open_database
from paykeep.ledger import fastpath
from paykeep.ledger.model import (
    GENESIS_HASH,
    Balances,
    CreateAccountResult,
    CreateTransferResult,
    JournalHead,
    NewAccount,
    NewTransfer,
    Transfer,
    TransferFlags,
    batch_timestamps,
    plan_transfers,
    seal,
    transfer_results,
)
from paykeep.ledger.service import Ledger

OK = CreateTransferResult.OK
DMNEC = 2
CMNED = 4
BMAX = limits.BALANCE_MAX_MINOR
ACCOUNT_IDS = [1, 2, 3, 4, 5, 6, limits.ID_MAX]

POSTGRES_URL = os.environ.get(
    "PAYKEEP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _can_build() -> bool:
    """Whether this machine has what ``setup.py`` needs: a C compiler, the Python headers and
    OpenSSL's (CI always does)."""
    include = Path(sysconfig.get_paths()["include"])
    return bool(
        os.environ.get("CI")
        or (
            shutil.which(os.environ.get("CC", "cc"))
            and (include / "Python.h").exists()
            and Path("/usr/include/openssl/evp.h").exists()
        )
    )


requires_core = pytest.mark.skipif(
    not fastpath.AVAILABLE and not _can_build(),
    reason="the compiled core cannot be built here (no C compiler or headers)",
)


def test_the_compiled_core_is_built_where_it_can_be() -> None:
    """Where a compiler and the headers exist (and always in CI) an extension that silently
    failed to build must fail the run."""
    if _can_build():
        assert fastpath.AVAILABLE, "paykeep.ledger._fastpath did not build"
    assert fastpath.engine_core() == (
        "compiled"
        if fastpath.AVAILABLE and os.environ.get("PAYKEEP_LEDGER_PURE") != "1"
        else "pure-python"
    )


# ---------------------------------------------------------------------------------------------
# The engine: compiled versus pure, from identical starting states
# ---------------------------------------------------------------------------------------------

_small = st.sampled_from([0, 0, 0, 1, 5, 100, 10**6])
_big = st.sampled_from(
    [0, 5, 10**6, 10**16, 10**17] * 3 + [BMAX // 2, BMAX - 10**15, BMAX - 1, BMAX]
)
#: Account id -> its usual currency (accounts of one currency, mostly, so that batches are
#: often wholly applicable and the limits decide).
_CURRENCY = {1: "EUR", 2: "EUR", 3: "EUR", 4: "EUR", 5: "JPY", 6: "JPY", limits.ID_MAX: "EUR"}


@st.composite
def _accounts(draw: st.DrawFn) -> dict[int, Balances]:
    # Half the time a healthy ledger (every account known, in its usual currency, with room
    # under the limits), so that whole batches are applicable; else anything goes.
    healthy = draw(st.booleans())
    big = st.sampled_from([10**16, 10**17, 10**18]) if healthy else _big
    out = {}
    for aid, usual in _CURRENCY.items():
        if not healthy and draw(st.integers(0, 15)) == 0:
            continue  # unknown
        out[aid] = Balances(
            usual if healthy or draw(st.integers(0, 15)) else "KWD",
            draw(st.sampled_from([0] * 6 + [DMNEC, CMNED, DMNEC | CMNED])),
            draw(_small),
            draw(big),
            draw(_small),
            draw(big),
        )
    return out


@st.composite
def _plain(draw: st.DrawFn) -> NewTransfer:
    currency = draw(st.sampled_from(["EUR"] * 4 + ["JPY"]))
    same = [a for a, c in _CURRENCY.items() if c == currency]
    pool = same if draw(st.integers(0, 15)) else list(_CURRENCY)
    debit, credit = draw(st.permutations(pool))[:2]
    return NewTransfer(
        draw(st.integers(100, 160)),
        debit,
        credit,
        draw(st.sampled_from([1, 5, 100, 10**6, 10**12, limits.AMOUNT_MAX_MINOR])),
        currency,
        draw(st.sampled_from([1, 2, limits.CODE_MAX])),
    )


class Text(str):
    """Equal to a currency code, but not a ``str``: never taken for one."""


_ODD: dict[str, list[Any]] = {
    "id": [0, -1, limits.ID_MAX + 1, True, 8, limits.ID_MAX],
    "debit_account_id": [99, 0, limits.ID_MAX + 1, True, None],
    "credit_account_id": [99, 0, limits.ID_MAX + 1, True, None],
    "amount_minor": [0, -5, limits.AMOUNT_MAX_MINOR + 1, True, None],
    "currency": ["XXZ", "eur", Text("EUR"), None, "USD"],
    "code": [0, limits.CODE_MAX + 1, True],
    "flags": [False, TransferFlags.NONE, int(TransferFlags.PENDING), int(TransferFlags.LINKED)],
    "timeout_s": [False, 5],
    "pending_id": [0, 9],
    "reference": ["r-1"],
    "metadata": [{}, {"k": "v"}],
}


@st.composite
def _odd(draw: st.DrawFn) -> NewTransfer:
    """A plain transfer with one field changed to an unusual value."""
    base = draw(_plain())
    name = draw(st.sampled_from(sorted(_ODD)))
    fields = {f: getattr(base, f) for f in _ODD}
    fields[name] = draw(st.sampled_from(_ODD[name]))
    return NewTransfer(**fields)


@st.composite
def _batch(draw: st.DrawFn) -> list[NewTransfer]:
    kind = draw(st.sampled_from(["plain"] * 3 + ["one-odd", "mixed"]))
    if kind == "mixed":
        return draw(st.lists(st.one_of(_plain(), _odd()), min_size=1, max_size=10))
    items = draw(st.lists(_plain(), min_size=1, max_size=8, unique_by=lambda t: t.id))
    if kind == "one-odd":
        items[draw(st.integers(0, len(items) - 1))] = draw(_odd())
    elif draw(st.integers(0, 4)) == 0 and len(items) > 1:  # a duplicate id
        i, j = draw(st.integers(0, len(items) - 1)), draw(st.integers(0, len(items) - 1))
        items[j] = NewTransfer(items[i].id, *dataclass_fields(items[j])[1:])
    return items


def dataclass_fields(t: NewTransfer) -> list[Any]:
    return [t.id, t.debit_account_id, t.credit_account_id, t.amount_minor, t.currency, t.code]


def _is_plain(t: NewTransfer) -> bool:
    return (
        type(t.flags) is int
        and t.flags == 0
        and t.pending_id is None
        and type(t.timeout_s) is int
        and t.timeout_s == 0
        and t.reference is None
        and t.metadata is None
    )


def _snapshot(accounts: dict[int, Balances]) -> list[tuple[int, int, Balances, list[int]]]:
    """Each Balances object, a copy of it and the identities of its values."""
    return [
        (aid, id(b), copy.copy(b), [id(getattr(b, f)) for f in Balances.__slots__])
        for aid, b in accounts.items()
    ]


def _assert_untouched(
    accounts: dict[int, Balances], snap: list[tuple[int, int, Balances, list[int]]]
) -> None:
    assert len(accounts) == len(snap)
    for aid, obj_id, before, value_ids in snap:
        b = accounts[aid]
        assert id(b) == obj_id and b == before
        assert [id(getattr(b, f)) for f in Balances.__slots__] == value_ids


def _pure(
    batch: list[NewTransfer],
    accounts: dict[int, Balances],
    stored: dict[int, Transfer],
    head: JournalHead,
    now: int,
) -> tuple[Any, Any, Any]:
    plan = plan_transfers(
        batch,
        accounts=accounts,
        stored=stored,
        pendings={},
        resolutions={},
        references={},
        now_ns=now,
    )
    sealed = seal(plan.planned, head, now)
    results = transfer_results(
        [t.id for t in batch], plan.results, batch_timestamps(len(batch), plan.planned, sealed)
    )
    return plan, sealed, results


@requires_core
@settings(max_examples=1000, deadline=None)
@given(
    _accounts(),
    _batch(),
    st.one_of(st.none(), st.none(), st.integers(0, 7)),
    st.sampled_from([GENESIS_HASH] * 4 + ["ab" * 32, "AB" * 32, "ab" * 16, ""]),
    st.integers(0, 2**40),
    st.integers(0, 2**40),
)
def test_compiled_equals_pure_or_changes_nothing(
    accounts: dict[int, Balances],
    batch: list[NewTransfer],
    replay: int | None,
    head_hash: str,
    head_ts: int,
    now: int,
) -> None:
    stored: dict[int, Transfer] = {}
    if replay is not None:  # one item's id is already stored: a replay, or a reused id
        tid = batch[replay % len(batch)].id
        if type(tid) is int:
            stored[tid] = Transfer(tid, 1, 2, 5, "EUR", 1, 0, 0, 0, 0, None, None, 1, 1, "0" * 64)
    head = JournalHead(7, head_ts, head_hash)

    compiled_accounts = copy.deepcopy(accounts)
    snap = _snapshot(compiled_accounts)
    applied_before = fastpath.counters()[0]
    out = fastpath.plan_plain(batch, compiled_accounts, stored, head, now)

    pure_accounts = copy.deepcopy(accounts)
    plan, sealed, results = _pure(batch, pure_accounts, stored, head, now)
    everything_plain_ok = (
        all(_is_plain(t) for t in batch)
        and all(code is OK for code in plan.results)
        and len(head_hash) == 64
        and all(c in "0123456789abcdefABCDEF" for c in head_hash)
    )

    if out is not None:
        event("compiled")
    else:
        event("declined: " + next((c.value for c in plan.results if c is not OK), "other"))
    if out is None:
        _assert_untouched(compiled_accounts, snap)
        assert not everything_plain_ok, "the core refused a batch the pure engine takes whole"
        return
    assert everything_plain_ok
    assert fastpath.counters()[0] == applied_before + 1
    assert out.sealed == sealed  # rows (hashes included), head, no holds
    assert [tuple(map(type, r)) for r in out.sealed.rows] == [
        tuple(map(type, r)) for r in sealed.rows
    ]
    assert out.results == results
    assert [repr(r) for r in out.results] == [repr(r) for r in results]
    assert compiled_accounts == pure_accounts
    assert set(out.touched_ids) == plan.touched
    assert len(out.touched_ids) == len(plan.touched)
    assert sorted(out.balance_rows, key=lambda r: r[4]) == sorted(
        (
            (b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted, aid)
            for aid, b in ((i, pure_accounts[i]) for i in plan.touched)
        ),
        key=lambda r: r[4],
    )
    size = fastpath.INSERT_GROUP_ROWS
    groups = [
        [row[f] for row in sealed.rows[start : start + size] for f in fastpath.PLAIN_COLUMNS]
        for start in range(0, len(sealed.rows) - len(sealed.rows) % size, size)
    ]
    assert out.insert_groups == groups


@requires_core
@pytest.mark.parametrize("size", [1, 109, 110, 111, 200, 1000])
def test_large_batches_group_and_chain_like_the_pure_engine(size: int) -> None:
    rng = random.Random(size)
    accounts = {aid: Balances("EUR", 0, 0, 0, 0, 0) for aid in range(1, 41)}
    accounts[41] = Balances("EUR", DMNEC, 0, 0, 0, 10**9)
    batch = []
    for n in range(size):
        debit, credit = rng.sample(range(1, 42), 2)
        batch.append(NewTransfer(10**6 + n, debit, credit, rng.randint(1, 1000), "EUR", 1))
    head = JournalHead(10, 5, "cd" * 32)
    compiled_accounts = copy.deepcopy(accounts)
    out = fastpath.plan_plain(batch, compiled_accounts, {}, head, 3)
    pure_accounts = copy.deepcopy(accounts)
    _plan, sealed, results = _pure(batch, pure_accounts, {}, head, 3)
    assert out is not None
    assert out.sealed == sealed and out.results == results
    assert compiled_accounts == pure_accounts
    group = fastpath.INSERT_GROUP_ROWS
    assert sum(len(g) for g in out.insert_groups) == (size - size % group) * 9


@requires_core
def test_a_refused_batch_leaves_every_balance_untouched() -> None:
    """The last item breaks a limit: everything before it was applicable, nothing changes."""
    accounts = {
        1: Balances("EUR", 0, 0, 0, 0, 0),
        2: Balances("EUR", DMNEC, 0, 0, 0, 10),
        3: Balances("EUR", 0, 0, 0, 0, 0),
    }
    batch = [NewTransfer(100 + i, 1, 3, 1, "EUR", 1) for i in range(70)]
    batch.append(NewTransfer(999, 2, 3, 11, "EUR", 1))  # 11 > credits_posted 10
    snap = _snapshot(accounts)
    declined_before = fastpath.counters()[1]
    assert fastpath.plan_plain(batch, accounts, {}, JournalHead(0, 0, GENESIS_HASH), 1) is None
    _assert_untouched(accounts, snap)
    assert fastpath.counters()[1] == declined_before + 1
    # Without the bad item the same batch is taken and applied.
    assert fastpath.plan_plain(batch[:-1], accounts, {}, JournalHead(0, 0, GENESIS_HASH), 1)
    assert accounts[1].debits_posted == 70 and accounts[3].credits_posted == 70


@requires_core
def test_the_same_balances_under_two_ids_are_left_to_the_pure_engine() -> None:
    shared = Balances("EUR", 0, 0, 0, 0, 0)
    accounts = {1: shared, 2: shared, 3: Balances("EUR", 0, 0, 0, 0, 0)}
    batch = [NewTransfer(10, 1, 3, 5, "EUR", 1), NewTransfer(11, 3, 2, 5, "EUR", 1)]
    assert fastpath.plan_plain(batch, accounts, {}, JournalHead(0, 0, GENESIS_HASH), 1) is None
    assert shared == Balances("EUR", 0, 0, 0, 0, 0)


# ---------------------------------------------------------------------------------------------
# The service, on both databases: core on versus off
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def twin_database(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Database]:
    """A second fresh database of the same backend (the ``database`` fixture's recipe)."""
    data_dir = tmp_path / "twin"
    data_dir.mkdir()
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copyfile(template, data_dir / SQLITE_FILE_NAME)
        db = open_database(Settings(data_dir=data_dir))
        yield db
        db.dispose()
        return
    template_name: str = request.getfixturevalue("postgres_template")
    name = f"paykeep_t_{uuid.uuid4().hex[:16]}"
    base = POSTGRES_URL.rpartition("/")[0]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
    db = open_database(Settings(data_dir=data_dir, database_url=f"{base}/{name}"))
    yield db
    db.dispose()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _scenario(seed: int) -> list[list[NewTransfer]]:
    """Batches over funded accounts: mostly plain and ok (some beyond one INSERT group),
    with limits hit, replays, duplicates, holds, references and bad items among them."""
    rng = random.Random(seed)
    customers = list(range(10, 30))
    next_id = iter(range(1_000, 10**6))
    batches: list[list[NewTransfer]] = [
        [NewTransfer(next(next_id), 1, c, 10_000, "EUR", 1) for c in customers]
        + [NewTransfer(next(next_id), 2, 40, 500, "JPY", 1)]
    ]
    for round_ in range(30):
        batch = []
        for _ in range(rng.choice([1, 5, 64, 130])):
            debit, credit = rng.sample(customers, 2)
            batch.append(NewTransfer(next(next_id), debit, credit, rng.randint(1, 900), "EUR", 1))
        twist = round_ % 9  # 0, 6, 7, 8: plain only
        at = rng.randrange(len(batch))
        if twist == 1:  # an overdraft somewhere
            batch[at] = NewTransfer(batch[at].id, 10, 11, 10**9, "EUR", 1)
        elif twist == 2:  # a replay of the first batch's first transfer
            batch[at] = batches[0][0]
        elif twist == 3:  # a hold and a reference among plain ones
            batch[at] = NewTransfer(
                batch[at].id, 12, 13, 5, "EUR", 1, flags=int(TransferFlags.PENDING), timeout_s=60
            )
            batch.append(NewTransfer(next(next_id), 14, 15, 5, "EUR", 1, reference=f"r{round_}"))
        elif twist == 4:  # a duplicate id within the batch
            batch.append(NewTransfer(batch[at].id, 16, 17, 7, "EUR", 1))
        elif twist == 5:  # a currency mismatch
            batch[at] = NewTransfer(batch[at].id, 10, 40, 5, "EUR", 1)
        batches.append(batch)
    return batches


def _run(database: Database, batches: list[list[NewTransfer]]) -> dict[str, Any]:
    clock = FakeClock()
    ledger = Ledger(database, clock=clock)
    accounts = [NewAccount(1, "EUR", 1), NewAccount(2, "JPY", 1), NewAccount(40, "JPY", 1)]
    accounts += [NewAccount(c, "EUR", 1, flags=DMNEC) for c in range(10, 30)]
    assert {r.result for r in ledger.create_accounts(accounts)} == {CreateAccountResult.OK}
    results = []
    for batch in batches:
        results.append(ledger.create_transfers(batch))
        clock.advance(ns=rng_step(len(results)))
    with database.engine.connect() as conn:
        raw = Database.driver_connection(conn)
        cur = raw.cursor()
        cur.execute("SELECT * FROM ledger_transfers ORDER BY seq")
        journal = [tuple(r) for r in cur.fetchall()]
        cur.execute(
            "SELECT id, debits_pending, debits_posted, credits_pending, credits_posted "
            "FROM ledger_accounts ORDER BY id"
        )
        balances = [tuple(r) for r in cur.fetchall()]
        cur.execute("SELECT * FROM ledger_holds ORDER BY transfer_id")
        holds = [tuple(r) for r in cur.fetchall()]
    return {
        "results": results,
        "journal": journal,
        "balances": balances,
        "holds": holds,
        "head": ledger.head(),
    }


def rng_step(n: int) -> int:
    """Clock steps that sometimes stay behind the journal's last timestamp (ts = head + 1)."""
    return [0, 1, 1_000, 0, 7][n % 5]


@requires_core
def test_the_service_writes_the_same_with_the_core_on_and_off(
    database: Database, twin_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = _scenario(3)
    monkeypatch.setattr(fastpath, "ENABLED", True)
    applied_before = fastpath.counters()[0]
    compiled = _run(database, batches)
    applied = fastpath.counters()[0] - applied_before
    monkeypatch.setattr(fastpath, "ENABLED", False)
    pure = _run(twin_database, batches)
    assert fastpath.counters()[0] - applied_before == applied  # the pure run never called it

    plain_ok = sum(
        1
        for batch, results in zip(batches, pure["results"], strict=True)
        if all(_is_plain(t) for t in batch) and all(r.result is OK for r in results)
    )
    assert plain_ok >= 8
    assert applied == plain_ok  # the core took every batch it could, and only those
    assert compiled["results"] == pure["results"]
    assert compiled["journal"] == pure["journal"]
    assert compiled["balances"] == pure["balances"]
    assert compiled["holds"] == pure["holds"]
    assert compiled["head"] == pure["head"]
    assert len(compiled["journal"]) > 500


@requires_core
def test_accounts_absent_from_the_working_set_are_loaded_once() -> None:
    """Every item plain, some accounts not yet loaded: ``load`` is asked for exactly those,
    once, and the batch is then decided; an account that stays absent (unknown) declines."""
    everything = {aid: Balances("EUR", 0, 0, 0, 0, 0) for aid in (1, 2, 3, 4)}
    working = {1: everything[1], 2: everything[2]}
    asked: list[set[int]] = []

    def load(ids: set[int]) -> dict[int, Balances]:
        asked.append(ids)
        working.update({i: everything[i] for i in ids if i in everything})
        return working

    batch = [NewTransfer(10, 1, 3, 5, "EUR", 1), NewTransfer(11, 4, 2, 5, "EUR", 1)]
    head = JournalHead(0, 0, GENESIS_HASH)
    out = fastpath.plan_plain(batch, working, {}, head, 1, load=load)
    assert out is not None and [r.result for r in out.results] == [OK, OK]
    assert asked == [{3, 4}]
    assert everything[3].credits_posted == 5 and everything[4].debits_posted == 5

    asked.clear()
    unknown = [NewTransfer(12, 1, 99, 5, "EUR", 1)]
    snap = _snapshot(working)
    assert fastpath.plan_plain(unknown, working, {}, head, 1, load=load) is None
    assert asked == [{99}]
    _assert_untouched(working, snap)
    # Not every item plain: nothing is loaded, the pure engine reads what it needs.
    asked.clear()
    odd = [NewTransfer(13, 1, 98, 5, "EUR", 1, reference="r")]
    assert fastpath.plan_plain(odd, working, {}, head, 1, load=load) is None
    assert asked == []


@requires_core
def test_broken_arithmetic_is_caught_by_the_zero_sum_check(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core checks double entry from the balances as stored, independently of the sums
    that applied the batch: one minor unit too many raises, and nothing is committed."""
    from paykeep.ledger import _fastpath
    from paykeep.ledger.model import LedgerInvariantBroken

    monkeypatch.setattr(fastpath, "ENABLED", True)
    ledger = Ledger(database, clock=FakeClock())
    ledger.create_accounts([NewAccount(1, "EUR", 1), NewAccount(2, "EUR", 1)])
    assert ledger.create_transfers([NewTransfer(10, 1, 2, 5, "EUR", 1)])[0].result is OK
    before = ledger.lookup_accounts([1, 2])
    head = ledger.head()
    _fastpath._inject_arithmetic_fault()
    with pytest.raises(LedgerInvariantBroken, match="double entry"):
        ledger.create_transfers([NewTransfer(11, 1, 2, 7, "EUR", 1)])
    assert ledger.lookup_accounts([1, 2]) == before
    assert ledger.head() == head
    # The writer's cache was dropped with the transaction: the next batch reads afresh.
    assert ledger.create_transfers([NewTransfer(11, 1, 2, 7, "EUR", 1)])[0].result is OK
    assert ledger.account(2).credits_posted == 12


@requires_core
def test_the_core_leaks_no_references_and_no_memory() -> None:
    """Every object the call keeps or makes is released with its result (refcounts of the
    inputs return to where they were; traced memory does not grow over repeated batches)."""
    head = JournalHead(0, 0, GENESIS_HASH)

    def fresh() -> tuple[list[NewTransfer], dict[int, Balances]]:
        accounts = {aid: Balances("EUR", 0, 0, 0, 0, 10**9) for aid in range(1, 30)}
        batch = [
            NewTransfer(10**6 + n, 1 + n % 29, 1 + (n + 1) % 29, 10**6 + n, "EUR", 7)
            for n in range(300)
        ]
        return batch, accounts

    fastpath.plan_plain(*fresh(), {}, head, 1)  # is_currency's own cache keeps "EUR" once
    batch, accounts = fresh()
    batch.append(NewTransfer(batch[0].id, 1, 2, 5, "EUR", 1))  # a repeated id: refused
    probes = [batch[0].id, batch[5].amount_minor, batch[0].currency, accounts[3]]
    counts = [sys.getrefcount(p) for p in probes]
    assert fastpath.plan_plain(batch, accounts, {}, head, 1) is None
    assert fastpath.plan_plain(batch[:10], {}, {}, head, 1) is None  # accounts missing
    assert [sys.getrefcount(p) for p in probes] == counts
    out = fastpath.plan_plain(batch[:-1], accounts, {}, head, 1)
    assert out is not None
    digest = out.sealed.rows[290][14]  # in no INSERT group, not the head's
    held = sys.getrefcount(digest)
    assert held == 3  # the row, this name, the call's argument
    del out, digest
    assert [sys.getrefcount(p) for p in probes] == counts

    for _ in range(3):  # warm the allocator's free lists
        fastpath.plan_plain(*fresh(), {}, head, 1)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            b, a = fresh()
            assert fastpath.plan_plain(b, a, {}, head, 1) is not None
            del b, a
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert grown < 64_000, f"{grown} bytes kept after 20 batches of 300"
