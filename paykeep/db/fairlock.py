"""A re-entrant lock that serves its waiters in arrival order.

``threading.RLock`` is not fair: a thread that releases it and asks again at once (the group
writer, committing group after group under load) usually wins over threads already waiting,
so the workers' own writes — webhook claims and results, escrow timers, the bank cycle — were
starved behind a busy API (deliveries fell minutes behind). Here a waiter queues; the lock
goes to the head of the queue when it is released; a waiter that times out leaves the queue.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class FairRLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[int] = deque()
        self._owner: int | None = None
        self._depth = 0

    def acquire(self, timeout: float) -> bool:
        """Take the lock within ``timeout`` seconds (re-entrant); False if it was not free."""
        me = threading.get_ident()
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            self._queue.append(me)
            while self._owner is not None or self._queue[0] != me:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    if self._owner is None and self._queue[0] == me:
                        break  # our turn came as the wait ran out
                    self._queue.remove(me)
                    self._cond.notify_all()  # the next in line may be free to go now
                    return False
            self._queue.popleft()
            self._owner, self._depth = me, 1
            return True

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a lock this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()
