"""The only place Paykeep reads the wall clock. Everything else is handed a :class:`Clock`."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Protocol

NS_PER_S = 1_000_000_000


class Clock(Protocol):
    def now_ns(self) -> int:
        """Nanoseconds since the Unix epoch, UTC."""
        ...


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()


class FakeClock:
    """A clock that moves only when told to: for deterministic tests and simulations."""

    def __init__(self, start_ns: int = 1_767_225_600 * NS_PER_S) -> None:  # 2026-01-01
        self._now_ns = start_ns
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._now_ns

    def advance(self, seconds: float = 0, *, ns: int = 0) -> int:
        with self._lock:
            self._now_ns += int(seconds * NS_PER_S) + ns
            return self._now_ns

    def set(self, now_ns: int) -> None:
        with self._lock:
            self._now_ns = now_ns


def monotonic_s() -> float:
    """A monotonic reading for measuring durations (timeouts, benchmarks), never for records."""
    return time.monotonic()


def ns_to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / NS_PER_S, tz=UTC)


def datetime_to_ns(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("naive datetime: Paykeep times are always timezone-aware")
    return int(value.timestamp()) * NS_PER_S + value.microsecond * 1_000
