"""The batch engine's hot-path shortcuts decide exactly what the general code decides.

- ``plan_transfers`` takes a fast path for plain transfers outside linked chains; for a batch
  without linked items it must equal deciding each item in turn with ``_plan_one`` (results,
  planned rows, balances), over values at and around every bound the checks use;
- ``seal`` hashes plain rows through a precomputed encoding: equal to ``row_digest``, also
  when the head's hash is malformed;
- ``transfer_results`` builds results without the dataclass constructor: equal objects;
- SQLite writes journal rows in multi-row INSERTs: a batch larger than one group reads back
  exactly and verifies (on both backends).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from paykeep import limits
from paykeep.clock import FakeClock
from paykeep.db import Database
from paykeep.ledger.audit import verify
from paykeep.ledger.model import (
    GENESIS_HASH,
    Balances,
    BatchPlan,
    CreateAccountResult,
    CreateTransferResult,
    JournalHead,
    NewAccount,
    NewTransfer,
    PlannedTransfer,
    StoredPending,
    Transfer,
    TransferFlags,
    TransferResult,
    _plan_one,
    batch_timestamps,
    plan_transfers,
    row_digest,
    seal,
    transfer_results,
)
from paykeep.ledger.service import Ledger

DMNEC = 2
CMNED = 4
BMAX = limits.BALANCE_MAX_MINOR
ACCOUNT_IDS = [1, 2, 3, 4, 5, limits.ID_MAX]


class Text(str):
    """A ``str`` subclass equal to a valid currency: the engine must not take it for one."""


def _balances(draw: st.DrawFn) -> dict[int, Balances]:
    near = st.sampled_from([0] * 6 + [1, 100, 10**6, BMAX // 2, BMAX - 100, BMAX - 1, BMAX])
    out = {}
    for aid in ACCOUNT_IDS:
        if draw(st.integers(0, 9)) == 0:
            continue  # an unknown account
        out[aid] = Balances(
            draw(st.sampled_from(["EUR"] * 9 + ["JPY"])),
            draw(st.sampled_from([0, 0, DMNEC, CMNED])),
            draw(near),
            draw(near),
            draw(near),
            draw(near),
        )
    return out


#: Per field: usual values, and values at or beyond the bounds (and of the wrong type).
_FIELDS: dict[str, tuple[list[Any], list[Any]]] = {
    "id": (list(range(7, 30)), [0, -1, limits.ID_MAX, limits.ID_MAX + 1, True, 3.0, None]),
    "debit_account_id": (ACCOUNT_IDS, [6, 0, -2, limits.ID_MAX + 1, 1.0, True, None, "1"]),
    "credit_account_id": (ACCOUNT_IDS, [6, 0, -2, limits.ID_MAX + 1, 1.0, True, None, "1"]),
    "amount_minor": (
        [1, 5, 100],
        [0, -1, limits.AMOUNT_MAX_MINOR, limits.AMOUNT_MAX_MINOR + 1, 2.5, True, None],
    ),
    "currency": (["EUR"] * 9 + ["JPY"], ["XXZ", "eur", Text("EUR"), None, 5]),
    "code": ([1, 2], [limits.CODE_MAX, limits.CODE_MAX + 1, 0, True, None, 1.0]),
    "flags": (
        [0],
        [
            False,
            TransferFlags.NONE,
            int(TransferFlags.PENDING),
            int(TransferFlags.POST_PENDING),
            int(TransferFlags.VOID_PENDING),
        ],
    ),
    "timeout_s": ([0], [0.0, False, 5]),
    "pending_id": ([None], [0, 7, 9]),
    "reference": ([None], ["r-0", "r-1", ""]),
    "metadata": ([None], [{}, {"k": "v"}]),
}


@st.composite
def _transfer(draw: st.DrawFn) -> NewTransfer:
    fields: dict[str, Any] = {}
    for name, (usual, edges) in _FIELDS.items():
        unusual = draw(st.integers(0, 15)) == 0
        fields[name] = draw(st.sampled_from(edges if unusual else usual))
    return NewTransfer(**fields)


def _stored(draw: st.DrawFn) -> dict[int, Transfer]:
    out: dict[int, Transfer] = {}
    if draw(st.booleans()):
        out[8] = Transfer(8, 1, 2, 5, "EUR", 1, 0, 0, 0, 0, None, None, 1, 1, GENESIS_HASH)
    return out


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_plan_fast_path_equals_deciding_one_by_one(data: st.DataObject) -> None:
    accounts = data.draw(st.composite(lambda draw: _balances(draw))())
    stored = data.draw(st.composite(lambda draw: _stored(draw))())
    pendings = {9: StoredPending(9, 1, 2, 50, "EUR", 1, int(TransferFlags.PENDING), 0)}
    batch = data.draw(st.lists(_transfer(), min_size=1, max_size=12))
    now = 10**18

    fast_accounts = copy.deepcopy(accounts)
    plan = plan_transfers(
        batch,
        accounts=fast_accounts,
        stored=stored,
        pendings=pendings,
        resolutions={},
        references={"r-0": 99},
        now_ns=now,
    )

    slow_accounts = copy.deepcopy(accounts)
    expected = BatchPlan(results=[])
    created: dict[int, PlannedTransfer] = {}
    created_refs: dict[str, int] = {}
    created_resolutions: dict[int, int] = {}
    client_flags = int(
        TransferFlags.LINKED
        | TransferFlags.PENDING
        | TransferFlags.POST_PENDING
        | TransferFlags.VOID_PENDING
    )
    for index, item in enumerate(batch):
        expected.results.append(
            _plan_one(
                index, item, slow_accounts, stored, pendings, {}, {"r-0": 99}, created,
                created_refs, created_resolutions, now, expected, [], client_flags,
            )
        )  # fmt: skip

    assert plan.results == expected.results
    assert plan.planned == expected.planned
    assert plan.touched == expected.touched
    assert plan.holds_opened == expected.holds_opened
    assert plan.holds_resolved == expected.holds_resolved
    assert fast_accounts == slow_accounts


def _plan_fresh(batch: list[NewTransfer], accounts: dict[int, Balances]) -> Any:
    """``plan_transfers`` for a batch with nothing stored, pending or referenced before it."""
    return plan_transfers(
        batch,
        accounts=accounts,
        stored={},
        pendings={},
        resolutions={},
        references={},
        now_ns=1,
    )


def test_fast_path_takes_plain_transfers() -> None:
    """The bench's shape is the one the fast path serves (and is decided ``ok``)."""
    accounts = {1: Balances("EUR", 0, 0, 0, 0, 0), 2: Balances("EUR", DMNEC, 0, 0, 0, 0)}
    plan = _plan_fresh(
        [NewTransfer(10, 1, 2, 5, "EUR", 1), NewTransfer(11, 2, 1, 6, "EUR", 1)], accounts
    )
    assert plan.results == [CreateTransferResult.OK, CreateTransferResult.EXCEEDS_CREDITS]
    assert accounts[1].debits_posted == 5 and accounts[2].credits_posted == 5
    assert accounts[2].debits_posted == 0


def test_fast_path_does_not_take_a_str_subclass_for_a_known_currency() -> None:
    accounts = {1: Balances("EUR", 0, 0, 0, 0, 0), 2: Balances("EUR", 0, 0, 0, 0, 0)}
    batch = [NewTransfer(10, 1, 2, 5, "EUR", 1), NewTransfer(11, 1, 2, 5, Text("EUR"), 1)]
    plan = _plan_fresh(batch, accounts)
    assert plan.results == [CreateTransferResult.OK, CreateTransferResult.CURRENCY_INVALID]


@given(
    st.lists(
        st.tuples(
            st.integers(1, 2**63 - 1),
            st.integers(1, 2**63 - 1),
            st.integers(1, 10**15),
            st.sampled_from(["EUR", "JPY"]),
            st.integers(1, 65535),
            st.sampled_from([0, 0, 0, 2]),
            st.sampled_from([0, 0, 5]),
            st.sampled_from([None, None, "r"]),
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([GENESIS_HASH, "ab" * 32, "ab" * 16, "", "ab" * 40]),
)
def test_sealed_plain_rows_equal_the_reference_digest(
    rows: list[tuple[int, int, int, str, int, int, int, str | None]], head_hash: str
) -> None:
    planned = [
        PlannedTransfer(i, 1000 + i, d, c, a, cur, code, flags, 0, timeout, ref, None)
        for i, (d, c, a, cur, code, flags, timeout, ref) in enumerate(rows)
    ]
    head = JournalHead(3, 5, head_hash)
    sealed = seal(planned, head, 100)
    prev = head_hash
    for row in sealed.rows:
        seq, tid, debit, credit, amount, currency, code, flags, pending_id, timeout_s, expires, \
            ref, meta, ts, digest = row  # fmt: skip
        assert digest == row_digest(
            prev, seq, tid, debit, credit, amount, currency, code, flags, pending_id,
            timeout_s, expires, ref or None, meta or None, ts,
        )  # fmt: skip
        prev = digest


@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(), st.none(), st.text()),
            st.sampled_from(list(CreateTransferResult)),
        ),
        max_size=20,
    ),
    st.lists(st.integers(0, 2**63), min_size=20, max_size=20),
)
def test_transfer_results_equal_the_constructor(
    items: list[tuple[object, CreateTransferResult]], stamps: list[int]
) -> None:
    built = transfer_results([i for i, _ in items], [c for _, c in items], stamps)
    expected = [TransferResult(i, tid, code, stamps[i]) for i, (tid, code) in enumerate(items)]
    assert built == expected
    assert [repr(r) for r in built] == [repr(r) for r in expected]
    for r in built:
        try:
            r.index = 5  # type: ignore[misc]
        except dataclasses.FrozenInstanceError:
            pass
        else:
            raise AssertionError("a built result must stay immutable")


@given(st.lists(st.booleans(), min_size=0, max_size=8), st.integers(0, 2**40))
def test_batch_timestamps_name_each_items_row(written: list[bool], now_ns: int) -> None:
    """Item i gets the timestamp of the row written for it, 0 when none was."""
    planned = [
        PlannedTransfer(i, 100 + i, 1, 2, 5, "EUR", 1, 0, 0, 0, None, None)
        for i, w in enumerate(written)
        if w
    ]
    sealed = seal(planned, JournalHead(0, 0, GENESIS_HASH), now_ns)
    by_index = {p.index: row[13] for p, row in zip(planned, sealed.rows, strict=True)}
    stamps = batch_timestamps(len(written), planned, sealed)
    assert list(stamps) == [by_index.get(i, 0) for i in range(len(written))]


def test_a_large_mixed_batch_is_stored_as_decided(database: Database) -> None:
    """More rows than one multi-row INSERT holds (SQLite groups them), with every optional
    column both present and absent: each row reads back as the engine decided it, and the
    whole journal verifies."""
    ledger = Ledger(database, clock=FakeClock())
    created = ledger.create_accounts([NewAccount(1, "EUR", 1), NewAccount(2, "EUR", 1)])
    assert {r.result for r in created} == {CreateAccountResult.OK}
    batch = []
    for i in range(2 * 64 + 5):
        kind = i % 4
        batch.append(
            NewTransfer(
                1000 + i,
                1 + i % 2,
                2 - i % 2,
                1 + i,
                "EUR",
                1 + i % 3,
                flags=int(TransferFlags.PENDING) if kind == 1 else 0,
                timeout_s=30 if kind == 1 else 0,
                reference=f"ref-{i}" if kind == 2 else None,
                metadata={"n": i} if kind == 3 else None,
            )
        )
    results = ledger.create_transfers(batch)
    assert {r.result for r in results} == {CreateTransferResult.OK}
    stored = ledger.lookup_transfers([t.id for t in batch])
    for item, result in zip(batch, results, strict=True):
        row = stored[item.id]
        assert (row.debit_account_id, row.credit_account_id, row.amount_minor, row.code) == (
            item.debit_account_id,
            item.credit_account_id,
            item.amount_minor,
            item.code,
        )
        assert (row.flags, row.timeout_s, row.pending_id) == (item.flags, item.timeout_s, 0)
        assert row.reference == item.reference
        assert row.metadata == item.metadata
        assert row.timestamp_ns == result.timestamp_ns
        assert (row.expires_at_ns > 0) == bool(item.timeout_s)
    seqs = sorted(t.seq for t in stored.values())
    assert [stored[t.id].seq for t in batch] == seqs  # batch order is journal order
    report = verify(database)
    assert report.ok, report.problems
