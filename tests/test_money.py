"""The money kernel: exponents per currency, parsing with explicit rounding, and allocation."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paykeep.errors import InvalidInput
from paykeep.money import (
    ROUNDING_MODES,
    AmountPrecisionExceeded,
    CurrencyMismatch,
    InvalidAmount,
    Money,
    UnknownCurrency,
    allocate,
    currency_exponent,
)

EXPONENTS = {"JPY": 0, "KRW": 0, "EUR": 2, "USD": 2, "KWD": 3, "BHD": 3, "TND": 3}
CURRENCIES = sorted(EXPONENTS)


@pytest.mark.parametrize(("currency", "exponent"), sorted(EXPONENTS.items()))
def test_exponents_come_from_iso_4217(currency: str, exponent: int) -> None:
    assert currency_exponent(currency) == exponent


@pytest.mark.parametrize(
    ("text", "currency", "minor", "formatted"),
    [
        ("1234", "JPY", 1234, "1234"),
        ("-7", "JPY", -7, "-7"),
        ("12.34", "EUR", 1234, "12.34"),
        ("12.3", "EUR", 1230, "12.30"),
        ("0.05", "EUR", 5, "0.05"),
        ("-0.05", "EUR", -5, "-0.05"),
        ("1.10", "EUR", 110, "1.10"),
        ("1.100", "EUR", 110, "1.10"),  # trailing zeros are not extra precision
        (" 3.00 ", "USD", 300, "3.00"),
        ("1.234", "KWD", 1234, "1.234"),
        ("0.001", "BHD", 1, "0.001"),
        ("-10.5", "BHD", -10500, "-10.500"),
        ("0", "KWD", 0, "0.000"),
        ("99999999999999.99", "EUR", 9_999_999_999_999_999, "99999999999999.99"),
    ],
)
def test_parse_and_format(text: str, currency: str, minor: int, formatted: str) -> None:
    money = Money.parse(text, currency)
    assert money == Money(minor, currency)
    assert type(money.amount_minor) is int
    assert money.format() == formatted
    assert Money.parse(money.format(), currency) == money
    assert str(money) == f"{formatted} {currency}"
    assert money.to_decimal() == Decimal(text.strip())


@given(
    currency=st.sampled_from(CURRENCIES),
    minor=st.integers(-(10**18), 10**18),
)
def test_format_parse_round_trip(currency: str, minor: int) -> None:
    money = Money(minor, currency)
    text = money.format()
    assert Money.parse(text, currency) == money
    assert Money.parse(money.to_decimal(), currency) == money
    digits = text.lstrip("-").partition(".")[2]
    assert len(digits) == EXPONENTS[currency]


@pytest.mark.parametrize(
    ("text", "currency", "rounding", "minor"),
    [
        ("0.125", "EUR", "ROUND_HALF_EVEN", 12),
        ("0.135", "EUR", "ROUND_HALF_EVEN", 14),
        ("0.125", "EUR", "ROUND_HALF_UP", 13),
        ("0.125", "EUR", "ROUND_HALF_DOWN", 12),
        ("-0.125", "EUR", "ROUND_HALF_EVEN", -12),
        ("-0.125", "EUR", "ROUND_HALF_UP", -13),
        ("0.121", "EUR", "ROUND_UP", 13),
        ("-0.121", "EUR", "ROUND_UP", -13),
        ("0.129", "EUR", "ROUND_DOWN", 12),
        ("-0.129", "EUR", "ROUND_DOWN", -12),
        ("-0.121", "EUR", "ROUND_FLOOR", -13),
        ("-0.129", "EUR", "ROUND_CEILING", -12),
        ("2.5", "JPY", "ROUND_HALF_EVEN", 2),
        ("3.5", "JPY", "ROUND_HALF_EVEN", 4),
        ("1.0005", "KWD", "ROUND_HALF_UP", 1001),
        ("1.0005", "BHD", "ROUND_HALF_EVEN", 1000),
    ],
)
def test_explicit_rounding_modes(text: str, currency: str, rounding: str, minor: int) -> None:
    assert Money.parse(text, currency, rounding=rounding) == Money(minor, currency)


def test_rounding_mode_names() -> None:
    assert {
        "ROUND_HALF_EVEN",
        "ROUND_HALF_UP",
        "ROUND_HALF_DOWN",
        "ROUND_UP",
        "ROUND_DOWN",
        "ROUND_CEILING",
        "ROUND_FLOOR",
    } == set(ROUNDING_MODES)
    with pytest.raises(InvalidInput):
        Money.parse("0.125", "EUR", rounding="ROUND_05UP")
    with pytest.raises(InvalidInput):
        Money.parse("0.125", "EUR", rounding="half-even")
    with pytest.raises(InvalidInput):
        Money(100, "EUR").percent(150, rounding="nearest")
    # an exact amount needs no rounding mode, even an unknown one is never consulted wrongly
    assert Money.parse("0.12", "EUR", rounding="ROUND_UP") == Money(12, "EUR")


@pytest.mark.parametrize(
    ("text", "currency"),
    [("1.001", "EUR"), ("0.5", "JPY"), ("1.0001", "KWD"), ("0.0001", "BHD"), ("-0.001", "USD")],
)
def test_precision_errors(text: str, currency: str) -> None:
    with pytest.raises(AmountPrecisionExceeded) as raised:
        Money.parse(text, currency)
    assert raised.value.code == "amount_precision_exceeded"


@pytest.mark.parametrize(
    "text", ["", "   ", "abc", "1_000", "1,00", "NaN", "Infinity", "-inf", "1" * 65, "0x10"]
)
def test_malformed_amount_text(text: str) -> None:
    with pytest.raises(InvalidAmount):
        Money.parse(text, "EUR")


@pytest.mark.parametrize("value", [1.5, 12, True, None, b"1.00", [1]])
def test_parse_takes_decimal_strings_only(value: object) -> None:
    with pytest.raises(InvalidAmount):
        Money.parse(value, "EUR")  # type: ignore[arg-type]


@pytest.mark.parametrize("currency", ["XXX", "XAU", "XAG", "XTS", "XDR", "eur", "Eur", "EURO",
                                      "", "ABC", None, 978, b"EUR"], ids=repr)  # fmt: skip
def test_unknown_currencies(currency: object) -> None:
    with pytest.raises(UnknownCurrency) as raised:
        currency_exponent(currency)  # type: ignore[arg-type]
    assert raised.value.code == "unknown_currency"
    with pytest.raises(UnknownCurrency):
        Money(1, currency)  # type: ignore[arg-type]
    with pytest.raises(UnknownCurrency):
        Money.parse("1", currency)  # type: ignore[arg-type]


def test_unhashable_currency_is_unknown() -> None:
    for currency in (["EUR"], {"EUR": 2}):
        with pytest.raises(UnknownCurrency):
            currency_exponent(currency)  # type: ignore[arg-type]
        with pytest.raises(UnknownCurrency):
            Money(1, currency)  # type: ignore[arg-type]
        with pytest.raises(UnknownCurrency):
            Money.parse("1", currency)  # type: ignore[arg-type]


@pytest.mark.parametrize("amount", [True, False, 1.0, 0.1, Decimal(1), "1", None, Fraction(1)])
def test_amounts_must_be_int(amount: object) -> None:
    with pytest.raises(InvalidAmount):
        Money(amount, "EUR")  # type: ignore[arg-type]


def test_arithmetic_keeps_currencies_apart() -> None:
    eur = Money(150, "EUR")
    assert eur + Money(50, "EUR") == Money(200, "EUR")
    assert eur - Money(200, "EUR") == Money(-50, "EUR")
    assert -eur == Money(-150, "EUR")
    assert Money(1, "EUR") < eur <= Money(150, "EUR")
    with pytest.raises(CurrencyMismatch):
        eur + Money(50, "USD")
    with pytest.raises(CurrencyMismatch):
        eur - Money(50, "JPY")
    with pytest.raises(CurrencyMismatch):
        _ = eur < Money(50, "USD")
    # a Money is exactly its two fields: same amount in another currency is not equal
    assert Money(150, "USD") != eur


@pytest.mark.parametrize(
    ("minor", "bp", "rounding", "expected"),
    [
        (1_000, 250, "ROUND_HALF_EVEN", 25),
        (1_001, 250, "ROUND_HALF_EVEN", 25),  # 25.025
        (1_002, 250, "ROUND_HALF_EVEN", 25),  # 25.05 -> 25 (even)
        (1_006, 250, "ROUND_HALF_EVEN", 25),  # 25.15 -> 25
        (1_006, 250, "ROUND_UP", 26),
        (-1_006, 250, "ROUND_FLOOR", -26),
        (999, 10_000, "ROUND_HALF_EVEN", 999),
    ],
)
def test_percent(minor: int, bp: int, rounding: str, expected: int) -> None:
    assert Money(minor, "EUR").percent(bp, rounding=rounding) == Money(expected, "EUR")


# ---------------------------------------------------------------------------------------------
# allocate
# ---------------------------------------------------------------------------------------------

weights_strategy = st.lists(st.integers(0, 10_000), min_size=1, max_size=12).filter(any)


@given(
    total=st.integers(-(10**15), 10**15),
    weights=weights_strategy,
    currency=st.sampled_from(CURRENCIES),
)
def test_allocate_never_loses_a_unit(total: int, weights: list[int], currency: str) -> None:
    parts = allocate(Money(total, currency), weights)
    assert len(parts) == len(weights)
    assert all(p.currency == currency and type(p.amount_minor) is int for p in parts)
    assert sum(p.amount_minor for p in parts) == total
    weight_sum = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        exact = Fraction(total * weight, weight_sum)
        assert abs(part.amount_minor - exact) < 1
        if weight == 0:
            assert part.amount_minor == 0
        # every part has the total's sign
        assert part.amount_minor * total >= 0
    # deterministic, and ties go to the earliest part
    assert allocate(Money(total, currency), weights) == parts
    for i in range(len(weights)):
        for j in range(i + 1, len(weights)):
            if weights[i] == weights[j]:
                assert abs(parts[i].amount_minor) >= abs(parts[j].amount_minor)
    # the negative total splits like its absolute value
    mirrored = allocate(Money(-total, currency), weights)
    assert [-p.amount_minor for p in mirrored] == [p.amount_minor for p in parts]


@given(total=st.integers(0, 10**9), weights=weights_strategy, data=st.data())
def test_allocate_is_order_stable(total: int, weights: list[int], data: st.DataObject) -> None:
    """Permuting the weights permutes the parts: a part depends on its weight, and on its
    position only to break a tie of remainders (the earliest part gets the unit)."""
    order = data.draw(st.permutations(range(len(weights))))
    parts = [p.amount_minor for p in allocate(Money(total, "EUR"), weights)]
    shuffled = [p.amount_minor for p in allocate(Money(total, "EUR"), [weights[i] for i in order])]
    weight_sum = sum(weights)
    remainder = {w: (total * w) % weight_sum for w in weights}
    tied = {w for w in weights if any(remainder[v] == remainder[w] for v in weights if v != w)}
    for w in set(weights) - tied:
        mine = sorted(p for p, v in zip(parts, weights, strict=True) if v == w)
        theirs = sorted(p for p, i in zip(shuffled, order, strict=True) if weights[i] == w)
        assert mine == theirs, (w, order)
    if not tied:
        assert sorted(shuffled) == sorted(parts)


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (100, [1, 1, 1], [34, 33, 33]),
        (-100, [1, 1, 1], [-34, -33, -33]),
        (5, [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]),
        (1_000, [70, 20, 10], [700, 200, 100]),
        (1, [3, 7], [0, 1]),
        (10, [0, 1], [0, 10]),
        (0, [1, 2], [0, 0]),
        (101, [1, 2, 2], [20, 41, 40]),
    ],
)
def test_allocate_examples(total: int, weights: list[int], expected: list[int]) -> None:
    assert [p.amount_minor for p in allocate(Money(total, "EUR"), weights)] == expected


@pytest.mark.parametrize("weights", [[], [0, 0], [1, -1], [True, 1], [1.5, 1], ["1"]])
def test_allocate_refuses_bad_weights(weights: list[object]) -> None:
    with pytest.raises(InvalidInput):
        allocate(Money(100, "EUR"), weights)  # type: ignore[arg-type]
