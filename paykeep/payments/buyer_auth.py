"""Buyer sign-in, the pure part: one-time codes and their state machine, the hourly limit,
buyer sessions. No database, clock or randomness here (time and values are passed in).

Why it exists: the checkout token (``cs_...``) is also in the merchant's hands, so it cannot
prove that the *buyer* acts. The three moves that would let a merchant take the buyer's money
— paying from the buyer's wallet, confirming receipt, withdrawing a refund request — need a
buyer session, obtained with a code sent to the buyer's email address (which only Paykeep can
read: it is sealed at rest).

A code's life::

    issued --verify, right code--> used
      |  \\--verify, wrong code (attempts reach BUYER_CODE_ATTEMPTS_MAX)--> exhausted
      |   \\-verify, wrong code (attempts left)--> issued (attempts + 1)
      \\--verify after expires_at--> expired

``used``, ``expired`` and ``exhausted`` are terminal. Only the newest code of a checkout is
ever checked: issuing a new one retires the older ones in effect.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from paykeep.payments.errors import IllegalTransition

#: Digits of a code (``secrets.randbelow(10**6)``, zero-padded).
BUYER_CODE_DIGITS: Final = 6
#: A code is good for this long after it was sent.
BUYER_CODE_TTL_S: Final = 10 * 60
#: Wrong guesses one code survives; the next wrong one kills it. With the hourly limit below a
#: guesser gets at most 25 tries an hour against 10^6 codes.
BUYER_CODE_ATTEMPTS_MAX: Final = 5
#: Codes sent to one buyer within :data:`BUYER_CODE_WINDOW_S` (mail bombing, guessing).
BUYER_CODES_PER_WINDOW_MAX: Final = 5
BUYER_CODE_WINDOW_S: Final = 3600
#: A buyer session lasts this long (a working day: the buyer comes back to confirm receipt).
BUYER_SESSION_TTL_S: Final = 12 * 3600
#: ``bs_`` + 43 url-safe characters (256 random bits).
BUYER_SESSION_PREFIX: Final = "bs_"
BUYER_SESSION_RANDOM_BYTES: Final = 32
BUYER_SESSION_CHARS_MAX: Final = 100
#: The request header of the API and the cookie of the hosted page.
BUYER_SESSION_HEADER: Final = "Paykeep-Buyer-Session"
BUYER_SESSION_COOKIE: Final = "paykeep_buyer_session"
#: Purpose label of the code's keyed hash (``FieldCipher.lookup``).
CODE_PURPOSE: Final = "buyer.sign_in_code"


class CodeState(StrEnum):
    ISSUED = "issued"
    USED = "used"
    EXPIRED = "expired"
    EXHAUSTED = "exhausted"


class CodeEvent(StrEnum):
    RIGHT_CODE = "right_code"
    WRONG_CODE = "wrong_code"
    LAST_WRONG_CODE = "last_wrong_code"
    TIME_PASSED = "time_passed"


#: The whole life of a code; anything else is :class:`IllegalTransition`.
CODE_TRANSITIONS: Final[dict[tuple[CodeState, CodeEvent], CodeState]] = {
    (CodeState.ISSUED, CodeEvent.RIGHT_CODE): CodeState.USED,
    (CodeState.ISSUED, CodeEvent.WRONG_CODE): CodeState.ISSUED,
    (CodeState.ISSUED, CodeEvent.LAST_WRONG_CODE): CodeState.EXHAUSTED,
    (CodeState.ISSUED, CodeEvent.TIME_PASSED): CodeState.EXPIRED,
}
TERMINAL_CODE_STATES: Final = frozenset({CodeState.USED, CodeState.EXPIRED, CodeState.EXHAUSTED})


def code_transition(state: CodeState, event: CodeEvent) -> CodeState:
    try:
        return CODE_TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"a {state.value} code cannot take {event.value}") from None


@dataclass(frozen=True, slots=True)
class CodeRecord:
    """A sent code as stored: its keyed hash, never the code."""

    id: str
    buyer_id: str
    checkout_session_id: str
    code_hmac: str
    state: CodeState
    attempts: int
    expires_at_ns: int
    created_at_ns: int


class Verdict(StrEnum):
    """What a verification attempt answers (each but ``signed_in`` is a typed error)."""

    SIGNED_IN = "signed_in"
    WRONG = "wrong"  # buyer_code_invalid, attempts left
    EXHAUSTED = "exhausted"  # buyer_code_attempts_exceeded (this attempt killed it, or earlier)
    EXPIRED = "expired"  # buyer_code_expired
    DEAD = "dead"  # used: buyer_code_invalid (a used code is as good as none)


def verify_step(record: CodeRecord, matches: bool, now_ns: int) -> tuple[CodeRecord, Verdict]:
    """One verification attempt against ``record``: the record as it must be stored after it,
    and the verdict. ``matches`` is the constant-time comparison of the keyed hashes."""
    if record.state is CodeState.USED:
        return record, Verdict.DEAD
    if record.state is CodeState.EXHAUSTED:
        return record, Verdict.EXHAUSTED
    if record.state is CodeState.EXPIRED:
        return record, Verdict.EXPIRED
    if now_ns >= record.expires_at_ns:
        # Checked before the code: a right code that arrives late is still late.
        return replace(record, state=code_transition(record.state, CodeEvent.TIME_PASSED)), (
            Verdict.EXPIRED
        )
    if matches:
        return replace(record, state=code_transition(record.state, CodeEvent.RIGHT_CODE)), (
            Verdict.SIGNED_IN
        )
    attempts = record.attempts + 1
    if attempts >= BUYER_CODE_ATTEMPTS_MAX:
        state = code_transition(record.state, CodeEvent.LAST_WRONG_CODE)
        return replace(record, state=state, attempts=attempts), Verdict.EXHAUSTED
    state = code_transition(record.state, CodeEvent.WRONG_CODE)
    return replace(record, state=state, attempts=attempts), Verdict.WRONG


def may_issue(recent_issued_at_ns: list[int], now_ns: int) -> bool:
    """Whether one more code may go to a buyer who was sent codes at these times."""
    window_start = now_ns - BUYER_CODE_WINDOW_S * 1_000_000_000
    return sum(1 for t in recent_issued_at_ns if t > window_start) < BUYER_CODES_PER_WINDOW_MAX


def format_code(number: int) -> str:
    """``42`` -> ``"000042"``."""
    assert 0 <= number < 10**BUYER_CODE_DIGITS, number
    return f"{number:0{BUYER_CODE_DIGITS}d}"


def is_code_shaped(text: object) -> bool:
    return (
        isinstance(text, str)
        and len(text) == BUYER_CODE_DIGITS
        and text.isascii()
        and text.isdigit()
    )


def code_message(buyer_id: str, checkout_session_id: str, code: str) -> str:
    """What the keyed hash covers: the code is bound to its buyer and its checkout."""
    return f"{buyer_id}|{checkout_session_id}|{code}"


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def is_session_shaped(text: object) -> bool:
    return (
        isinstance(text, str)
        and text.startswith(BUYER_SESSION_PREFIX)
        and len(text) <= BUYER_SESSION_CHARS_MAX
        and text.isascii()
    )


@dataclass(frozen=True, slots=True)
class BuyerSession:
    """A buyer signed in by a code: stored as the SHA-256 of its token, bound to the buyer."""

    id: str
    buyer_id: str
    code_id: str
    expires_at_ns: int
    created_at_ns: int

    def live(self, now_ns: int) -> bool:
        """A session has two states, live and expired, and only time moves it."""
        return now_ns < self.expires_at_ns

    def proves(self, buyer_id: str, now_ns: int) -> bool:
        """Whether this session shows that ``buyer_id`` is acting now."""
        return self.live(now_ns) and hmac.compare_digest(self.buyer_id, buyer_id)


__all__ = [
    "BUYER_CODES_PER_WINDOW_MAX",
    "BUYER_CODE_ATTEMPTS_MAX",
    "BUYER_CODE_DIGITS",
    "BUYER_CODE_TTL_S",
    "BUYER_CODE_WINDOW_S",
    "BUYER_SESSION_COOKIE",
    "BUYER_SESSION_HEADER",
    "BUYER_SESSION_TTL_S",
    "CODE_TRANSITIONS",
    "BuyerSession",
    "CodeEvent",
    "CodeRecord",
    "CodeState",
    "Verdict",
    "code_transition",
    "may_issue",
    "verify_step",
]
