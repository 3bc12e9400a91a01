"""The pure part of the vault: card number checks, brands from BIN ranges, the public view."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from stdnum import luhn

from paykeep import limits
from paykeep.gateway.vault.errors import VaultCardNumberInvalid, VaultExpiryInvalid

TOKEN_PREFIX: Final = "tok_"  # noqa: S105 (a prefix, not a secret)
TOKEN_PATTERN: Final = re.compile(r"tok_[A-Za-z0-9_-]{24}")

#: (first digits low, high inclusive, brand), checked in order; prefixes compared on their
#: own length. Published IIN ranges of the schemes.
BIN_RANGES: Final = (
    ("34", "34", "amex"),
    ("37", "37", "amex"),
    ("4", "4", "visa"),
    ("51", "55", "mastercard"),
    ("2221", "2720", "mastercard"),
    ("6011", "6011", "discover"),
    ("644", "649", "discover"),
    ("65", "65", "discover"),
    ("622126", "622925", "discover"),
    ("3528", "3589", "jcb"),
    ("300", "305", "diners"),
    ("36", "36", "diners"),
    ("38", "39", "diners"),
    ("62", "62", "unionpay"),
)


def brand_of(pan: str) -> str:
    for low, high, brand in BIN_RANGES:
        prefix = pan[: len(low)]
        if len(prefix) == len(low) and low <= prefix <= high:
            return brand
    return "unknown"


def check_pan(pan: object) -> str:
    """Digits only, 12-19 long, Luhn-valid. The error never quotes the number."""
    if (
        not isinstance(pan, str)
        or not limits.PAN_LENGTH_MIN <= len(pan) <= limits.PAN_LENGTH_MAX
        or not pan.isascii()
        or not pan.isdigit()
    ):
        raise VaultCardNumberInvalid(
            f"a card number is {limits.PAN_LENGTH_MIN}-{limits.PAN_LENGTH_MAX} digits",
            param="pan",
        )
    if not luhn.is_valid(pan):
        raise VaultCardNumberInvalid("the card number fails the Luhn check", param="pan")
    return pan


def check_expiry(exp_month: object, exp_year: object) -> tuple[int, int]:
    if type(exp_month) is not int or not 1 <= exp_month <= 12:
        raise VaultExpiryInvalid("exp_month is 1-12", param="exp_month")
    if type(exp_year) is not int or not 2000 <= exp_year <= 2099:
        raise VaultExpiryInvalid("exp_year is a 4-digit year 2000-2099", param="exp_year")
    return exp_month, exp_year


@dataclass(frozen=True, slots=True)
class CardView:
    """All the vault ever gives back about a card."""

    token: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int

    @property
    def expiry_yymm(self) -> str:
        return f"{self.exp_year % 100:02d}{self.exp_month:02d}"

    def to_json(self) -> dict[str, object]:
        return {
            "token": self.token,
            "brand": self.brand,
            "last4": self.last4,
            "exp_month": self.exp_month,
            "exp_year": self.exp_year,
        }
