"""Identifiers: time-ordered 63-bit integers for ledger objects, prefixed tokens for secrets."""

from __future__ import annotations

import hashlib
import secrets
import threading

from paykeep.clock import Clock, SystemClock

_RANDOM_BITS = 22
_RANDOM_MASK = (1 << _RANDOM_BITS) - 1


class IdGenerator:
    """Positive, strictly increasing (per generator) 63-bit ids: milliseconds << 22 | entropy.

    Time-ordered ids keep B-tree inserts at the right edge; the low bits start random so that
    two processes minting ids in the same millisecond almost never collide (and the ledger's
    idempotency check turns a collision into a typed error, never a silent merge).
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._last = 0
        self._lock = threading.Lock()

    def next_id(self) -> int:
        with self._lock:
            candidate = ((self._clock.now_ns() // 1_000_000) << _RANDOM_BITS) | (
                secrets.randbits(_RANDOM_BITS)
            )
            self._last = max(candidate, self._last + 1)
            return self._last


_default = IdGenerator()


def new_id() -> int:
    return _default.next_id()


def new_token(prefix: str, nbytes: int = 24) -> str:
    """A secret token with a readable prefix, e.g. ``pk_test_`` + 32 url-safe characters."""
    return prefix + secrets.token_urlsafe(nbytes)


def derived_id(*parts: str) -> int:
    """A positive 63-bit id derived from ``parts``: the ledger transfer of a step that must
    happen once (a payout's request, an order's hold). A retry after a crash names the same
    transfer, and the ledger answers ``exists`` instead of moving the money twice."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return (int.from_bytes(digest[:8], "big") & (2**63 - 1)) or 1
