"""Invariants under random sequences, and under concurrency, on both databases.

- ``clearing:payout`` holds exactly the payouts in transit (requested, batched, accepted);
- merchant + clearing never changes (money only moves between them until the statement);
- every payout is in at most one batch, and a batch's control sum is its payouts' sum;
- two batchers at once never put one payout in two files; two identical requests at once
  move the money once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paykeep.gateway.payouts.errors import PayoutInsufficientFunds, PayoutNothingToBatch
from paykeep.gateway.payouts.model import CLEARING_ACCOUNT, BatchState, PayoutState
from paykeep.gateway.payouts.service import BankAnswer
from tests.gateway.payouts.conftest import FUNDED_MINOR, MERCHANT, World

IN_TRANSIT = {PayoutState.REQUESTED, PayoutState.BATCHED, PayoutState.ACCEPTED}

operation = st.one_of(
    st.tuples(st.just("request"), st.integers(1, 40_000)),
    st.tuples(st.just("batch"), st.integers(1, 3)),
    st.tuples(st.just("answer"), st.booleans()),
)


def _check(world: World) -> None:
    payouts = world.payouts.list(limit=1_000)
    in_transit = sum(p.amount_minor for p in payouts if p.state in IN_TRANSIT)
    assert world.balance(CLEARING_ACCOUNT) == in_transit
    assert world.balance(MERCHANT) + world.balance(CLEARING_ACCOUNT) == FUNDED_MINOR
    for batch in world.payouts.batches(limit=1_000):
        members = [p for p in payouts if p.batch_id == batch.batch_id]
        assert len(members) == batch.payout_count
        assert sum(p.amount_minor for p in members) == batch.control_sum_minor
        states = {p.state for p in members}
        expected = {
            BatchState.GENERATED: {PayoutState.BATCHED},
            BatchState.SUBMITTED: {PayoutState.BATCHED},
            BatchState.ACCEPTED: {PayoutState.ACCEPTED},
            BatchState.REJECTED: {PayoutState.RETURNED},
        }[batch.state]
        assert states == expected, (batch.state, states)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=st.lists(operation, max_size=12))
def test_money_is_conserved_through_any_sequence(
    world: World, tmp_path: Path, operations: list[tuple[str, object]]
) -> None:
    # The database lives across examples: request ids carry a per-example prefix.
    prefix = f"x{threading.get_ident() % 1000}-{len(world.payouts.list(limit=1_000))}"
    for number, (kind, value) in enumerate(operations):
        if kind == "request":
            assert isinstance(value, int)
            with contextlib.suppress(PayoutInsufficientFunds):
                world.request(request_id=f"{prefix}-{number}", amount=value)
        elif kind == "batch":
            assert isinstance(value, int)
            try:
                batch = world.payouts.batch("EUR", world.debtor, limit=value)
            except PayoutNothingToBatch:
                continue
            world.payouts.write_to(batch.batch_id, tmp_path)
        else:
            waiting = world.payouts.batches(BatchState.SUBMITTED, limit=1)
            if waiting:
                verdict = BankAnswer("ACCP", None) if value else BankAnswer("RJCT", "AM04: x")
                world.payouts.record_bank_answer(waiting[0].batch_id, verdict)
        _check(world)


def _race(n: int, work: Callable[[], object]) -> list[object]:
    barrier = threading.Barrier(n)
    results: list[object] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(work())
        except Exception as exc:  # collected and asserted on below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_concurrent_batchers_never_share_a_payout(world: World) -> None:
    for i in range(8):
        world.request(request_id=f"c{i}", amount=100)
    results = _race(4, lambda: world.payouts.batch("EUR", world.debtor, limit=3))
    batches = [r for r in results if not isinstance(r, Exception)]
    errors = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(r, PayoutNothingToBatch) for r in errors), errors
    assert sum(b.payout_count for b in batches) == 8  # type: ignore[attr-defined]
    ids = [p.batch_id for p in world.payouts.list()]
    assert None not in ids
    _check(world)


@pytest.mark.parametrize("n", [4])
def test_concurrent_identical_requests_move_the_money_once(world: World, n: int) -> None:
    results = _race(n, lambda: world.request(request_id="same", amount=700))
    assert not [r for r in results if isinstance(r, Exception)], results
    assert len({r.payout_id for r in results}) == 1  # type: ignore[attr-defined]
    assert world.balance(MERCHANT) == FUNDED_MINOR - 700
    _check(world)
