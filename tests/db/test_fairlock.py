"""The process's SQLite writer lock serves waiting threads in arrival order, is re-entrant,
and a waiter that times out leaves the queue without blocking the ones behind it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from paykeep.db.fairlock import FairRLock


def _wait_until(predicate: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_waiters_get_the_lock_in_arrival_order_even_against_a_greedy_holder() -> None:
    lock = FairRLock()
    order: list[str] = []
    assert lock.acquire(timeout=1)

    def waiter(name: str) -> None:
        assert lock.acquire(timeout=10)
        order.append(name)
        lock.release()

    threads = []
    for name in ("a", "b", "c"):
        thread = threading.Thread(target=waiter, args=(name,))
        thread.start()
        threads.append(thread)
        queued = len(threads)
        _wait_until(lambda n=queued: len(lock._queue) == n)
    # The holder releases and asks again at once (what the group writer does): it queues
    # behind the three that were waiting.
    lock.release()
    assert lock.acquire(timeout=10)
    order.append("holder")
    lock.release()
    for thread in threads:
        thread.join(timeout=10)
    assert order == ["a", "b", "c", "holder"]


def test_it_is_reentrant_and_only_its_holder_may_release() -> None:
    lock = FairRLock()
    assert lock.acquire(timeout=1) and lock.acquire(timeout=1)
    lock.release()
    taken: list[bool] = []
    other = threading.Thread(target=lambda: taken.append(lock.acquire(timeout=0.05)))
    other.start()
    other.join()
    assert taken == [False]  # still held once
    with pytest.raises(RuntimeError):
        _release_from_another_thread(lock)
    lock.release()
    assert lock.acquire(timeout=1)
    lock.release()


def _release_from_another_thread(lock: FairRLock) -> None:
    failure: list[BaseException] = []

    def release() -> None:
        try:
            lock.release()
        except BaseException as exc:  # carried back to the test's thread
            failure.append(exc)

    thread = threading.Thread(target=release)
    thread.start()
    thread.join()
    raise failure[0]


def test_a_waiter_that_times_out_leaves_the_queue_and_the_next_still_gets_the_lock() -> None:
    lock = FairRLock()
    assert lock.acquire(timeout=1)
    results: dict[str, bool] = {}

    def wait(name: str, timeout: float) -> None:
        results[name] = lock.acquire(timeout=timeout)
        if results[name]:
            lock.release()

    impatient = threading.Thread(target=wait, args=("impatient", 0.05))
    impatient.start()
    _wait_until(lambda: len(lock._queue) == 1)
    patient = threading.Thread(target=wait, args=("patient", 10))
    patient.start()
    impatient.join(timeout=10)
    assert results == {"impatient": False}
    assert list(lock._queue) == [patient.ident]
    lock.release()
    patient.join(timeout=10)
    assert results == {"impatient": False, "patient": True}
    assert not lock._queue
