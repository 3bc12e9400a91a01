"""The card network and issuing bank of banksim: ISO 8583 over TCP, in one asyncio loop.

Wire: each message is a 2-byte big-endian length followed by an ISO 8583 message in the
dialect of :mod:`paykeep.banksim.card_spec`. Requests and the issuer's answers:

- 0100 -> 0110 authorisation: checks the card, places a hold that really consumes its balance;
- 0200 -> 0210 financial: with field 90 the capture of a prior authorisation (the hold becomes
  a charge, any remainder is released), without it a one-step sale; with processing code
  (field 3) ``200000`` a refund (credit) of the capture or sale named in field 90 — never more
  in total than was captured;
- 0400 -> 0410 reversal of the original named in field 90: gives back whatever the original
  still takes (a refund's reversal takes its credit back off the card); an unknown original
  leaves a tombstone (a late original is then refused) and a repeated reversal changes
  nothing — both still answer 00;
- 0800 -> 0810 network management echo.

A retransmitted original (same terminal, STAN and transmission time) gets the stored answer
again and is never applied twice. Malformed frames get response code 30 when their MTI is
readable, a clean disconnect otherwise; nothing a client sends can stop the server.

State lives in memory: the network restarts empty (plus the built-in test cards). All state
changes happen on the event loop thread, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import iso8583
from iso4217 import Currency
from stdnum import luhn

from paykeep import limits
from paykeep.banksim.card_spec import SPEC
from paykeep.clock import Clock, SystemClock, ns_to_datetime

log = logging.getLogger("paykeep.banksim.cardnet")

#: Response codes (field 39) this issuer answers with, and what they mean.
RESPONSE_CODES: Final = {
    "00": "approved",
    "05": "do not honour",
    "13": "invalid amount",
    "14": "invalid card number",
    "25": "unable to locate original transaction",
    "30": "format error",
    "51": "insufficient funds",
    "54": "expired card",
    "91": "issuer unavailable",
}

REQUEST_MTIS: Final = {"0100": "0110", "0200": "0210", "0400": "0410", "0800": "0810"}
FaultKind = Literal["lost", "duplicate", "delay", "unavailable"]
FAULT_KINDS: Final = ("lost", "duplicate", "delay", "unavailable")
DEFAULT_FAULT_MTIS: Final = frozenset({"0100", "0200", "0400"})


@dataclass
class Card:
    token: str
    pan: str
    expiry: str  # YYMM
    cvv: str
    balance_minor: int
    currency: str
    forced_response: str | None = None

    @property
    def last4(self) -> str:
        return self.pan[-4:]


@dataclass(frozen=True)
class BuiltinCard:
    pan: str
    expiry: str
    cvv: str
    balance_minor: int
    outcome: str
    forced_response: str | None = None


#: The built-in test cards (EUR). Documented in README.md, "Card network".
BUILTIN_CARDS: Final = (
    BuiltinCard("4111111111111111", "2912", "123", 10_000_000, "00 approved (visa)"),
    BuiltinCard("5555555555554444", "2912", "123", 10_000_000, "00 approved (mastercard)"),
    BuiltinCard("378282246310005", "2912", "1234", 10_000_000, "00 approved (amex, 4-digit CID)"),
    BuiltinCard("4000000000000002", "2912", "123", 10_000_000, "05 do not honour", "05"),
    BuiltinCard("4000000000009995", "2912", "123", 1_000, "51 above 10.00 (balance 10.00)"),
    BuiltinCard("4000000000000069", "2001", "123", 10_000_000, "54 expired (01/20)"),
    BuiltinCard("4000000000000119", "2912", "123", 10_000_000, "91 issuer unavailable", "91"),
)
#: Cards that answer 14: a Luhn-invalid number, and a valid number this issuer never issued.
INVALID_TEST_PANS: Final = ("4242424242424241", "4012888888881881")


TxnKind = Literal["auth", "capture", "sale", "refund"]
TxnState = Literal["held", "captured", "sold", "refunded", "reversed", "declined"]
#: Field 3 of a refund (ISO 8583 processing code 20 = returns/refund, from/to default account).
PROCESSING_REFUND: Final = "200000"


@dataclass
class Txn:
    """An original message the issuer has seen and answered (applied or not)."""

    key: tuple[str, str, str]  # terminal (41), STAN (11), transmission time (7)
    kind: TxnKind
    state: TxnState
    card: Card | None
    amount_minor: int
    rrn: str
    auth_code: str
    response: dict[str, str]
    held_minor: int = 0
    captured_minor: int = 0
    auth: Txn | None = None  # for a capture: the authorisation it captured
    settled: bool = False  # paid out to the acquirer in a settlement credit
    #: For a capture or sale: what approved refunds (not reversed) have credited back.
    refunded_minor: int = 0
    original: Txn | None = None  # for a refund: the capture or sale it refunds

    @property
    def charged_minor(self) -> int:
        """What a capture or sale took from the card (what refunds may give back in total)."""
        if self.kind == "capture" and self.state == "captured":
            return self.captured_minor
        if self.kind == "sale" and self.state == "sold":
            return self.amount_minor
        return 0


@dataclass
class FaultRule:
    kind: FaultKind
    probability: float = 1.0
    remaining: int | None = None  # None: until removed
    card: str | None = None  # banksim card token or last four digits; None: every card
    mtis: frozenset[str] = DEFAULT_FAULT_MTIS
    delay_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "probability": self.probability,
            "remaining": self.remaining,
            "card": self.card,
            "mtis": sorted(self.mtis),
            "delay_s": self.delay_s,
        }


class FaultConfigInvalid(ValueError):
    """A fault rule that does not follow the documented shape."""


def parse_fault(raw: Mapping[str, Any]) -> FaultRule:
    """One fault rule from its JSON form (see README)."""
    if not isinstance(raw, Mapping):
        raise FaultConfigInvalid("a fault rule is a JSON object")
    unknown = set(raw) - {"kind", "probability", "next", "card", "mtis", "delay_s"}
    if unknown:
        raise FaultConfigInvalid(f"unknown fault keys: {sorted(unknown)}")
    kind = raw.get("kind")
    if kind not in FAULT_KINDS:
        raise FaultConfigInvalid(f"fault kind must be one of {FAULT_KINDS}")
    probability = raw.get("probability", 1.0)
    if type(probability) not in (int, float) or not 0 <= probability <= 1:
        raise FaultConfigInvalid("probability must be a number from 0 to 1")
    remaining = raw.get("next")
    if remaining is not None and (type(remaining) is not int or not 0 < remaining <= 10**9):
        raise FaultConfigInvalid("next must be a positive integer")
    card = raw.get("card")
    if card is not None and (not isinstance(card, str) or not 0 < len(card) <= 64):
        raise FaultConfigInvalid("card must be a banksim card token or last four digits")
    mtis = raw.get("mtis", sorted(DEFAULT_FAULT_MTIS))
    if not isinstance(mtis, list) or not mtis or any(m not in REQUEST_MTIS for m in mtis):
        raise FaultConfigInvalid(f"mtis must be a list of {sorted(REQUEST_MTIS)}")
    delay_s = raw.get("delay_s", 0.0)
    if type(delay_s) not in (int, float) or not 0 <= delay_s <= limits.BANKSIM_FAULT_DELAY_MAX_S:
        raise FaultConfigInvalid(
            f"delay_s must be from 0 to {limits.BANKSIM_FAULT_DELAY_MAX_S} seconds"
        )
    if kind == "delay" and delay_s == 0:
        raise FaultConfigInvalid("a delay fault needs delay_s > 0")
    return FaultRule(kind, probability, remaining, card, frozenset(mtis), delay_s)


class FormatError(ValueError):
    """A request whose fields do not follow the dialect: answered with response code 30."""


_DIGITS = frozenset("0123456789")


def _digits(value: object, length: int | None = None) -> bool:
    return (
        isinstance(value, str)
        and bool(value)
        and set(value) <= _DIGITS
        and (length is None or len(value) == length)
    )


def _cvv_from(field48: str | None) -> str | None:
    """The ``CV`` subelement of private field 48 (tag, two-digit length, value)."""
    if field48 is None:
        return None
    pos = 0
    while pos + 4 <= len(field48):
        tag, size = field48[pos : pos + 2], field48[pos + 2 : pos + 4]
        if not _digits(size):
            raise FormatError("field 48: bad subelement length")
        end = pos + 4 + int(size)
        if end > len(field48):
            raise FormatError("field 48: truncated subelement")
        if tag == "CV":
            return field48[pos + 4 : end]
        pos = end
    if pos != len(field48):
        raise FormatError("field 48: trailing bytes")
    return None


class CardNetwork:
    """The issuer's state and logic. ``handle`` maps one decoded request to its answer."""

    def __init__(self, clock: Clock | None = None, seed: int | None = None) -> None:
        self.clock = clock or SystemClock()
        self.cards: dict[str, Card] = {}  # by PAN
        self.by_token: dict[str, Card] = {}
        self.txns: dict[tuple[str, str, str], Txn] = {}
        self.tombstones: set[tuple[str, str, str]] = set()
        self.log: deque[dict[str, Any]] = deque(maxlen=limits.BANKSIM_AUTH_LOG_MAX)
        self.faults: list[FaultRule] = []
        self.random = random.Random(seed)
        self.seq = 0
        #: Bumped by every change of cards, holds or settlements: the snapshot writer's cue.
        self.version = 0
        self.stats = {"frames": 0, "format_errors": 0, "disconnects": 0}
        for builtin in BUILTIN_CARDS:
            self.add_card(
                builtin.pan,
                builtin.expiry,
                builtin.cvv,
                builtin.balance_minor,
                "EUR",
                builtin.forced_response,
            )

    # ------------------------------------------------------------------ cards

    def add_card(
        self,
        pan: str,
        expiry: str,
        cvv: str,
        balance_minor: int,
        currency: str,
        forced_response: str | None = None,
    ) -> Card:
        if pan in self.cards:
            card = self.cards[pan]
            card.expiry, card.cvv, card.currency = expiry, cvv, currency
            card.balance_minor, card.forced_response = balance_minor, forced_response
            return card
        if len(self.cards) >= limits.BANKSIM_CARDS_MAX:
            raise FaultConfigInvalid(f"banksim holds at most {limits.BANKSIM_CARDS_MAX} cards")
        card = Card(
            f"bsc_{secrets.token_hex(8)}", pan, expiry, cvv, balance_minor, currency,
            forced_response,
        )  # fmt: skip
        self.cards[pan] = card
        self.by_token[card.token] = card
        self.version += 1
        return card

    def find_cards(self, ref: str) -> list[Card]:
        """Cards by banksim token or by last four digits."""
        if ref in self.by_token:
            return [self.by_token[ref]]
        return [c for c in self.cards.values() if c.last4 == ref]

    def settle_captures(self, currency: str) -> list[Txn]:
        """What the acquirer is owed in ``currency``: every capture and sale not yet settled
        (and not reversed), now marked settled (``unsettle`` undoes it if the credit fails)."""
        due = [
            t
            for t in self.txns.values()
            if not t.settled
            and t.card is not None
            and t.card.currency == currency
            and (
                (t.kind == "auth" and t.state == "captured")
                or (t.kind == "sale" and t.state == "sold")
                or (t.kind == "refund" and t.state == "refunded")
            )
        ]
        for t in due:
            t.settled = True
        self.version += 1
        return due

    @staticmethod
    def settled_amount(txns: list[Txn]) -> int:
        """Captures and sales, less refunds: the acquirer pays the net (refunds it credited
        to cards come out of what it owes)."""
        return sum(
            -t.amount_minor
            if t.kind == "refund"
            else t.captured_minor
            if t.kind == "auth"
            else t.amount_minor
            for t in txns
        )

    def unsettle(self, txns: list[Txn]) -> None:
        for t in txns:
            t.settled = False
        self.version += 1

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """Cards, balances, holds, captures, settlements and reversal tombstones, as JSON
        data: what a restart must not forget (the message log and faults are not kept)."""
        return {
            "format": 1,
            "cards": [
                {"token": c.token, "pan": c.pan, "expiry": c.expiry, "cvv": c.cvv,
                 "balance_minor": c.balance_minor, "currency": c.currency,
                 "forced_response": c.forced_response}
                for c in self.cards.values()
            ],
            "txns": [
                {"key": list(t.key), "kind": t.kind, "state": t.state,
                 "card": t.card.token if t.card else None, "amount_minor": t.amount_minor,
                 "rrn": t.rrn, "auth_code": t.auth_code, "response": t.response,
                 "held_minor": t.held_minor, "captured_minor": t.captured_minor,
                 "auth": list(t.auth.key) if t.auth else None, "settled": t.settled,
                 "refunded_minor": t.refunded_minor,
                 "original": list(t.original.key) if t.original else None}
                for t in self.txns.values()
            ],
            "tombstones": [list(k) for k in sorted(self.tombstones)],
        }  # fmt: skip

    def restore(self, data: Mapping[str, Any]) -> None:
        """Load a :meth:`snapshot` (replacing the built-in cards' state with the saved one)."""
        if data.get("format") != 1:
            raise FaultConfigInvalid("banksim card state: unknown snapshot format")
        for c in data["cards"]:
            card = Card(c["token"], c["pan"], c["expiry"], c["cvv"], int(c["balance_minor"]),
                        c["currency"], c["forced_response"])  # fmt: skip
            old = self.cards.get(card.pan)
            if old is not None:
                self.by_token.pop(old.token, None)
            self.cards[card.pan] = card
            self.by_token[card.token] = card
        for t in data["txns"]:
            key = (str(t["key"][0]), str(t["key"][1]), str(t["key"][2]))
            self.txns[key] = Txn(
                key, t["kind"], t["state"], self.by_token.get(t["card"]) if t["card"] else None,
                int(t["amount_minor"]), t["rrn"], t["auth_code"], dict(t["response"]),
                int(t["held_minor"]), int(t["captured_minor"]), None, bool(t["settled"]),
            )  # fmt: skip
        for t in data["txns"]:
            key = (str(t["key"][0]), str(t["key"][1]), str(t["key"][2]))
            # Snapshots written before refunds existed have neither key.
            self.txns[key].refunded_minor = int(t.get("refunded_minor", 0))
            if t["auth"] is not None:  # captures point at the authorisation they captured
                auth = tuple(str(part) for part in t["auth"])
                self.txns[key].auth = self.txns.get(auth)  # type: ignore[arg-type]
            if t.get("original") is not None:  # refunds point at what they refund
                original = tuple(str(part) for part in t["original"])
                self.txns[key].original = self.txns.get(original)  # type: ignore[arg-type]
        self.tombstones = {(str(k[0]), str(k[1]), str(k[2])) for k in data["tombstones"]}

    def card_view(self, card: Card) -> dict[str, Any]:
        holds = [
            {"stan": t.key[1], "rrn": t.rrn, "amount_minor": t.held_minor, "auth_code": t.auth_code}
            for t in self.txns.values()
            if t.card is card and t.kind == "auth" and t.state == "held"
        ]
        return {
            "token": card.token,
            "last4": card.last4,
            "currency": card.currency,
            "balance_minor": card.balance_minor,
            "held_minor": sum(h["amount_minor"] for h in holds),
            "captured_minor": sum(
                t.captured_minor
                for t in self.txns.values()
                if t.card is card and t.kind == "auth" and t.state == "captured"
            )
            + sum(
                t.amount_minor
                for t in self.txns.values()
                if t.card is card and t.kind == "sale" and t.state == "sold"
            ),
            "refunded_minor": sum(
                t.amount_minor
                for t in self.txns.values()
                if t.card is card and t.kind == "refund" and t.state == "refunded"
            ),
            "holds": holds,
        }

    # ------------------------------------------------------------------ faults

    def set_faults(self, rules: Iterable[FaultRule], *, replace: bool = True) -> None:
        new = list(rules)
        combined = new if replace else self.faults + new
        if len(combined) > limits.BANKSIM_FAULTS_MAX:
            raise FaultConfigInvalid(f"at most {limits.BANKSIM_FAULTS_MAX} fault rules")
        self.faults = combined

    def fire_faults(self, mti: str, card: Card | None) -> list[FaultRule]:
        fired: list[FaultRule] = []
        for rule in list(self.faults):
            if mti not in rule.mtis:
                continue
            if rule.card is not None and (
                card is None or rule.card not in (card.token, card.last4)
            ):
                continue
            if rule.probability < 1 and self.random.random() >= rule.probability:
                continue
            fired.append(rule)
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self.faults.remove(rule)
        return fired

    # ------------------------------------------------------------------ messages

    def _record(self, request: Mapping[str, str], response: Mapping[str, str] | None,
                *, effect: str, card: Card | None, faults: list[str]) -> None:  # fmt: skip
        self.seq += 1
        self.version += 1
        self.log.append(
            {
                "seq": self.seq,
                "mti": request.get("t"),
                "stan": request.get("11"),
                "rrn": request.get("37"),
                "terminal_id": request.get("41"),
                "last4": card.last4 if card else None,
                "card_token": card.token if card else None,
                "amount_minor": int(request["4"]) if _digits(request.get("4")) else None,
                "currency": request.get("49"),
                "original": request.get("90"),
                "response_code": response.get("39") if response else None,
                "effect": effect,
                "faults": faults,
            }
        )

    def _now_yymm(self) -> str:
        return ns_to_datetime(self.clock.now_ns()).strftime("%y%m")

    def _answer(self, request: Mapping[str, str], code: str, **extra: str) -> dict[str, str]:
        response = {"t": REQUEST_MTIS[request["t"]], "39": code}
        for echo in ("2", "3", "4", "7", "11", "12", "13", "37", "41", "42", "49", "70", "90"):
            if echo in request:
                response[echo] = request[echo]
        response.update(extra)
        return response

    def _original_key(self, request: Mapping[str, str]) -> tuple[str, str, str, str]:
        field90 = request.get("90")
        if not _digits(field90, 42):
            raise FormatError("field 90 must be 42 digits")
        assert field90 is not None
        return field90[0:4], request.get("41", ""), field90[4:10], field90[10:20]

    def card_for(self, request: Mapping[str, str]) -> Card | None:
        """The card a request concerns (for fault matching), without side effects."""
        pan = request.get("2")
        if pan is not None:
            return self.cards.get(pan)
        if "90" in request and _digits(request.get("90"), 42):
            _mti, terminal, stan, sent = self._original_key(request)
            txn = self.txns.get((terminal, stan, sent))
            return txn.card if txn else None
        return None

    def handle(
        self, request: dict[str, str], faults: Sequence[str] | None = None
    ) -> dict[str, str]:
        """Apply one decoded request and return its answer (always one)."""
        faults = list(faults or [])
        mti = request["t"]
        try:
            if mti == "0800":
                response = self._answer(request, "00")
                self._record(request, response, effect="echo", card=None, faults=faults)
                return response
            for required in ("7", "11", "41"):
                if required not in request:
                    raise FormatError(f"field {required} is required")
            if not _digits(request["11"], 6) or not _digits(request["7"], 10):
                raise FormatError("fields 7 and 11 must be digits")
            if mti == "0400":
                return self._reverse(request, faults)
            key = (request["41"], request["11"], request["7"])
            if key in self.txns:
                # A retransmission: the stored answer again, nothing applied twice.
                response = dict(self.txns[key].response)
                self._record(request, response, effect="replay", card=self.txns[key].card,
                             faults=faults)  # fmt: skip
                return response
            if "unavailable" in faults:
                response = self._answer(request, "91")
                self._record(request, response, effect="none", card=self.card_for(request),
                             faults=faults)  # fmt: skip
                return response
            if mti == "0200" and request.get("3") == PROCESSING_REFUND:
                return self._refund(request, key, faults)
            if mti == "0200" and "90" in request:
                return self._capture(request, key, faults)
            return self._authorise(request, key, faults)
        except FormatError:
            self.stats["format_errors"] += 1
            response = {"t": REQUEST_MTIS[mti], "39": "30"}
            for echo in ("7", "11", "41"):
                if echo in request and isinstance(request[echo], str):
                    response[echo] = request[echo]
            self._record(request, response, effect="none", card=None, faults=faults)
            return response

    def _amount(self, request: Mapping[str, str]) -> int:
        if not _digits(request.get("4"), 12):
            raise FormatError("field 4 must be 12 digits")
        return int(request["4"])

    def _currency(self, request: Mapping[str, str]) -> str | None:
        numeric = request.get("49")
        if not _digits(numeric, 3):
            raise FormatError("field 49 must be a 3-digit ISO 4217 code")
        for currency in Currency:
            if f"{currency.number:03d}" == numeric:
                return str(currency.code)
        return None

    def _authorise(
        self, request: dict[str, str], key: tuple[str, str, str], faults: list[str]
    ) -> dict[str, str]:
        kind: TxnKind = "auth" if request["t"] == "0100" else "sale"
        for required in ("2", "3", "4", "14", "49"):
            if required not in request:
                raise FormatError(f"field {required} is required")
        amount = self._amount(request)
        currency = self._currency(request)
        pan, expiry = request["2"], request["14"]
        if not _digits(pan) or not _digits(expiry, 4):
            raise FormatError("fields 2 and 14 must be digits")
        cvv = _cvv_from(request.get("48"))
        card = self.cards.get(pan)
        rrn = request.get("37", "")
        code = "00"
        if key in self.tombstones:
            code = "05"  # reversed before it arrived: never apply it
        elif amount == 0:
            code = "13"
        elif not luhn.is_valid(pan) or card is None:
            code = "14"
        elif card.forced_response is not None:
            code = card.forced_response
        elif expiry != card.expiry or card.expiry < self._now_yymm():
            code = "54"
        elif (cvv is not None and cvv != card.cvv) or currency != card.currency:
            code = "05"
        elif amount > card.balance_minor:
            code = "51"
        auth_code = f"{self.random.randrange(1_000_000):06d}" if code == "00" else ""
        extra = {"38": auth_code} if auth_code else {}
        response = self._answer(request, code, **extra)
        txn = Txn(key, kind, "declined", card, amount, rrn, auth_code, response)
        if code == "00":
            assert card is not None
            card.balance_minor -= amount
            if kind == "auth":
                txn.state, txn.held_minor = "held", amount
            else:
                txn.state = "sold"
        self.txns[key] = txn
        effect = {"auth": "hold", "sale": "sale"}[kind] if code == "00" else "none"
        self._record(request, response, effect=effect, card=card, faults=faults)
        return response

    def _capture(
        self, request: dict[str, str], key: tuple[str, str, str], faults: list[str]
    ) -> dict[str, str]:
        amount = self._amount(request)
        _mti, terminal, stan, sent = self._original_key(request)
        auth = self.txns.get((terminal, stan, sent))
        code = "00"
        if key in self.tombstones:
            code = "05"  # reversed before it arrived: never apply it
        elif auth is None or auth.kind != "auth" or auth.state != "held":
            code = "25"
        elif amount == 0 or amount > auth.held_minor:
            code = "13"
        elif "2" in request and auth.card is not None and request["2"] != auth.card.pan:
            code = "05"
        card = auth.card if auth else None
        extra = {"38": auth.auth_code} if auth and code == "00" else {}
        response = self._answer(request, code, **extra)
        txn = Txn(key, "capture", "declined", card, amount, request.get("37", ""),
                  extra.get("38", ""), response, auth=auth)  # fmt: skip
        if code == "00":
            assert auth is not None and card is not None
            card.balance_minor += auth.held_minor - amount  # the rest of the hold is released
            auth.state, auth.captured_minor, auth.held_minor = "captured", amount, 0
            txn.state, txn.captured_minor = "captured", amount
        self.txns[key] = txn
        self._record(request, response, effect="capture" if code == "00" else "none",
                     card=card, faults=faults)  # fmt: skip
        return response

    def _refund(
        self, request: dict[str, str], key: tuple[str, str, str], faults: list[str]
    ) -> dict[str, str]:
        """0200 with processing code 200000: credit the card with part or all of a capture or
        sale named in field 90. Refunds of one original never exceed what it charged."""
        for required in ("2", "4", "49", "90"):
            if required not in request:
                raise FormatError(f"field {required} is required in a refund")
        amount = self._amount(request)
        currency = self._currency(request)
        if not _digits(request["2"]):
            raise FormatError("field 2 must be digits")
        _mti, terminal, stan, sent = self._original_key(request)
        original = self.txns.get((terminal, stan, sent))
        card = original.card if original is not None else None
        code = "00"
        if key in self.tombstones:
            code = "05"  # reversed before it arrived: never apply it
        elif original is None or original.charged_minor == 0:
            code = "25"  # unknown, declined, reversed, or not a capture or sale
        elif card is None or request["2"] != card.pan or currency != card.currency:
            code = "05"
        elif amount == 0 or original.refunded_minor + amount > original.charged_minor:
            code = "13"  # over-refund: the total would exceed what was charged
        extra = {"38": original.auth_code} if original is not None and code == "00" else {}
        response = self._answer(request, code, **extra)
        txn = Txn(key, "refund", "declined", card, amount, request.get("37", ""),
                  extra.get("38", ""), response, original=original)  # fmt: skip
        if code == "00":
            assert original is not None and card is not None
            card.balance_minor += amount
            original.refunded_minor += amount
            txn.state = "refunded"
        self.txns[key] = txn
        self._record(request, response, effect="credit" if code == "00" else "none",
                     card=card, faults=faults)  # fmt: skip
        return response

    def _reverse(self, request: dict[str, str], faults: list[str]) -> dict[str, str]:
        _mti, terminal, stan, sent = self._original_key(request)
        original = self.txns.get((terminal, stan, sent))
        if "unavailable" in faults:
            response = self._answer(request, "91")
            self._record(request, response, effect="none",
                         card=original.card if original else None, faults=faults)  # fmt: skip
            return response
        effect = "none"
        if original is None:
            self.tombstones.add((terminal, stan, sent))
            effect = "tombstone"
        elif original.kind == "refund":
            card = original.card
            if original.state == "refunded" and card is not None:
                # Take the credit back: the card owes it again (its balance may go below zero,
                # as an issuer's would), and the original may be refunded by that much again.
                refunded = original.original
                if refunded is None or refunded.charged_minor > 0:
                    card.balance_minor -= original.amount_minor
                # else the original was reversed meanwhile, giving back only what this refund
                # had not: the card keeps this credit, so it is whole either way.
                if refunded is not None:
                    refunded.refunded_minor -= original.amount_minor
                original.state = "reversed"
                effect = "refund_reversal"
        else:
            target = original.auth if original.kind == "capture" else original
            card = original.card
            if target is not None and card is not None:
                if target.state == "held":
                    card.balance_minor += target.held_minor
                    target.held_minor = 0
                    target.state = "reversed"
                    effect = "release"
                elif target.state == "captured":
                    # What refunds already credited back is not given twice.
                    card.balance_minor += target.captured_minor - original.refunded_minor
                    target.state = "reversed"
                    effect = "refund"
                elif target.state == "sold":
                    card.balance_minor += target.amount_minor - target.refunded_minor
                    target.state = "reversed"
                    effect = "refund"
            if original.kind == "capture" and original.state == "captured":
                original.state = "reversed"
        response = self._answer(request, "00")
        self._record(request, response, effect=effect,
                     card=original.card if original else None, faults=faults)  # fmt: skip
        return response


# ---------------------------------------------------------------------------------------------
# The TCP server
# ---------------------------------------------------------------------------------------------


def encode_frame(message: Mapping[str, str]) -> bytes:
    raw, _ = iso8583.encode(dict(message), SPEC)
    return len(raw).to_bytes(2, "big") + bytes(raw)


class CardServer:
    """Serves :class:`CardNetwork` over TCP with length-prefixed frames and fault injection."""

    def __init__(self, network: CardNetwork) -> None:
        self.network = network
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._serve, host, port)
        sockname = self.server.sockets[0].getsockname()
        return int(sockname[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.connections):
            writer.close()
        for task in list(self.tasks):
            task.cancel()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= limits.BANKSIM_CONNECTIONS_MAX:
            writer.close()
            return
        self.connections.add(writer)
        try:
            while True:
                header = await reader.readexactly(2)
                size = int.from_bytes(header, "big")
                if size == 0 or size > limits.CARD_FRAME_BYTES_MAX:
                    break  # cannot resynchronise a stream whose length is wrong: disconnect
                body = await reader.readexactly(size)
                self.network.stats["frames"] += 1
                if not self._on_frame(body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.network.stats["disconnects"] += 1
            self.connections.discard(writer)
            writer.close()

    def _on_frame(self, body: bytes, writer: asyncio.StreamWriter) -> bool:
        """Handle one frame; False closes the connection."""
        network = self.network
        try:
            decoded, _ = iso8583.decode(body, SPEC)
            request: dict[str, str] = {k: v for k, v in decoded.items() if k not in ("p", "1")}
        except (iso8583.DecodeError, KeyError, ValueError, TypeError, IndexError):
            mti = body[:4].decode("ascii", "replace")
            network.stats["format_errors"] += 1
            if mti in REQUEST_MTIS:
                self._send(writer, {"t": REQUEST_MTIS[mti], "39": "30"})
                return True
            return False
        if request.get("t") not in REQUEST_MTIS:
            network.stats["format_errors"] += 1
            return False
        card = network.card_for(request)
        fired = network.fire_faults(request["t"], card)
        kinds = [rule.kind for rule in fired]
        response = network.handle(request, kinds)
        if "unavailable" in kinds:
            self._send(writer, response)
            return True
        if "lost" in kinds:
            return True
        copies = 2 if "duplicate" in kinds else 1
        delay = max((rule.delay_s for rule in fired if rule.kind == "delay"), default=0.0)
        if delay > 0:
            task = asyncio.get_running_loop().create_task(
                self._send_later(writer, response, copies, delay)
            )
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            for _ in range(copies):
                self._send(writer, response)
        return True

    async def _send_later(
        self, writer: asyncio.StreamWriter, response: dict[str, str], copies: int, delay: float
    ) -> None:
        await asyncio.sleep(delay)
        for _ in range(copies):
            self._send(writer, response)

    @staticmethod
    def _send(writer: asyncio.StreamWriter, response: Mapping[str, str]) -> None:
        if writer.is_closing():
            return
        try:
            writer.write(encode_frame(response))
        except (iso8583.EncodeError, ValueError) as exc:  # a bug in this module, not input
            log.error("banksim could not encode a response: %s", exc)
        except ConnectionError:
            return


def fault_rules_from_json(document: Any) -> list[FaultRule]:
    """``{"cards": [rule, ...]}`` (the ``--faults`` file) or a bare list of rules."""
    rules = document.get("cards", []) if isinstance(document, Mapping) else document
    if not isinstance(rules, list):
        raise FaultConfigInvalid("faults: expected a list of rules under 'cards'")
    return [parse_fault(rule) for rule in rules]
