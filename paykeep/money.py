"""Money: an integer of minor units plus an ISO 4217 currency. Never a float.

Currency exponents come from the maintained ``iso4217`` package (the ISO 4217 table published by
SIX), not a hand-typed list. ``Decimal`` is used only to parse and format, always with an
explicit rounding mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import lru_cache

from iso4217 import Currency

from paykeep.errors import InvalidInput

#: Rounding modes callers may ask for (names of the ``decimal`` module's constants).
ROUNDING_MODES = frozenset(
    {
        "ROUND_HALF_EVEN",
        "ROUND_HALF_UP",
        "ROUND_HALF_DOWN",
        "ROUND_UP",
        "ROUND_DOWN",
        "ROUND_CEILING",
        "ROUND_FLOOR",
    }
)


class UnknownCurrency(InvalidInput):
    code = "unknown_currency"


class CurrencyMismatch(InvalidInput):
    code = "currency_mismatch"


class InvalidAmount(InvalidInput):
    code = "invalid_amount"


class AmountPrecisionExceeded(InvalidInput):
    """A decimal amount has more fractional digits than its currency and no rounding was asked."""

    code = "amount_precision_exceeded"


def currency_exponent(currency: object) -> int:
    """Number of minor-unit digits of an ISO 4217 currency (EUR 2, JPY 0, KWD 3).

    Codes without a minor unit in ISO 4217 (precious metals, XXX, XTS, SDR) are refused:
    they are not settlement currencies of a payment platform.
    """
    # Checked before the cache: an unhashable value (a list from a JSON body) must get the
    # typed error, not lru_cache's TypeError.
    if type(currency) is not str:
        raise UnknownCurrency(f"not an ISO 4217 code: {currency!r}", param="currency")
    return _currency_exponent(currency)


@lru_cache(maxsize=512)
def _currency_exponent(currency: str) -> int:
    if len(currency) != 3 or not currency.isupper():
        raise UnknownCurrency(f"not an ISO 4217 code: {currency!r}", param="currency")
    try:
        exponent = Currency(currency).exponent
    except ValueError:
        raise UnknownCurrency(f"unknown ISO 4217 currency {currency!r}", param="currency") from None
    if exponent is None:
        raise UnknownCurrency(f"{currency} has no minor unit in ISO 4217", param="currency")
    return int(exponent)


def is_currency(currency: object) -> bool:
    if type(currency) is not str:
        return False
    try:
        _currency_exponent(currency)
    except UnknownCurrency:
        return False
    return True


@dataclass(frozen=True, slots=True, order=False)
class Money:
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        # bool is an int subclass; True dollars is a bug, not an amount.
        if type(self.amount_minor) is not int:
            raise InvalidAmount(
                f"amount_minor must be an int, got {type(self.amount_minor).__name__}",
                param="amount_minor",
            )
        currency_exponent(self.currency)

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    @classmethod
    def parse(cls, text: str | Decimal, currency: str, rounding: str | None = None) -> Money:
        """Parse a decimal amount in major units, e.g. ``"12.34"`` EUR -> 1234 minor units.

        With ``rounding=None`` an amount finer than the currency allows is an error; otherwise
        it is rounded with the named ``decimal`` rounding mode.
        """
        exponent = currency_exponent(currency)
        if isinstance(text, Decimal):
            value = text
        elif isinstance(text, str):
            stripped = text.strip()
            if not stripped or len(stripped) > 64 or "_" in stripped:
                raise InvalidAmount(f"not a decimal amount: {text!r}", param="amount")
            try:
                value = Decimal(stripped)
            except InvalidOperation:
                raise InvalidAmount(f"not a decimal amount: {text!r}", param="amount") from None
        else:
            raise InvalidAmount("amount must be a decimal string", param="amount")
        if not value.is_finite():
            raise InvalidAmount(f"amount must be finite: {text!r}", param="amount")
        scaled = value.scaleb(exponent)
        integral = scaled.to_integral_value(rounding=ROUND_HALF_EVEN)
        if integral != scaled:
            if rounding is None:
                raise AmountPrecisionExceeded(
                    f"{text} has more than {exponent} decimal places for {currency}",
                    param="amount",
                )
            if rounding not in ROUNDING_MODES:
                raise InvalidInput(f"unknown rounding mode {rounding!r}", param="rounding")
            integral = scaled.to_integral_value(rounding=rounding)
        return cls(int(integral), currency)

    def to_decimal(self) -> Decimal:
        return Decimal(self.amount_minor).scaleb(-currency_exponent(self.currency))

    def format(self) -> str:
        """Plain decimal string in major units with exactly the currency's digits: ``"12.30"``."""
        exponent = currency_exponent(self.currency)
        sign = "-" if self.amount_minor < 0 else ""
        whole, fraction = divmod(abs(self.amount_minor), 10**exponent)
        if exponent == 0:
            return f"{sign}{whole}"
        return f"{sign}{whole}.{fraction:0{exponent}d}"

    def __str__(self) -> str:
        return f"{self.format()} {self.currency}"

    def _same_currency(self, other: Money) -> None:
        if self.currency != other.currency:
            raise CurrencyMismatch(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_minor, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount_minor < other.amount_minor

    def __le__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount_minor <= other.amount_minor

    def percent(self, basis_points: int, rounding: str = "ROUND_HALF_EVEN") -> Money:
        """``basis_points``/10,000 of this amount, rounded to a whole minor unit."""
        if rounding not in ROUNDING_MODES:
            raise InvalidInput(f"unknown rounding mode {rounding!r}", param="rounding")
        exact = Decimal(self.amount_minor) * Decimal(basis_points) / Decimal(10_000)
        return Money(int(exact.to_integral_value(rounding=rounding)), self.currency)


def allocate(total: Money, weights: Sequence[int]) -> list[Money]:
    """Split ``total`` in proportion to integer ``weights`` without losing a minor unit.

    Largest-remainder method: each part gets the floor of its exact share, and the units left
    over go one each to the parts with the largest remainders (ties to the earliest part). The
    parts always sum to ``total`` exactly; a negative total is split like its absolute value.
    """
    if not weights:
        raise InvalidInput("allocate needs at least one weight", param="weights")
    if any(type(w) is not int or w < 0 for w in weights):
        raise InvalidInput("weights must be non-negative integers", param="weights")
    weight_sum = sum(weights)
    if weight_sum == 0:
        raise InvalidInput("weights must not all be zero", param="weights")
    sign = -1 if total.amount_minor < 0 else 1
    magnitude = abs(total.amount_minor)
    shares = [divmod(magnitude * w, weight_sum) for w in weights]
    parts = [quotient for quotient, _ in shares]
    leftover = magnitude - sum(parts)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-shares[i][1], i))
    for i in by_remainder[:leftover]:
        parts[i] += 1
    return [Money(sign * p, total.currency) for p in parts]
