"""SWIFT MT940 (statement) and MT942 (interim report) -> :class:`ParsedStatement`, through the
``mt-940`` library (WoLpH).

The library reads a whole file into one ``Transactions`` object, so a multi-statement file
would have its balances overwritten by the last statement. Each message starts with field
``:20:``, so the file is cut at those lines first and every message is parsed on its own.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Any, Final

from paykeep import limits
from paykeep.gateway.statements.errors import (
    StatementAmountInvalid,
    StatementCurrencyInvalid,
    StatementFieldTooLong,
    StatementMalformed,
    StatementTooLarge,
    StatementTruncated,
)
from paykeep.gateway.statements.model import (
    Entry,
    EntryStatus,
    ParsedStatement,
    check_entry_currency,
)
from paykeep.money import AmountPrecisionExceeded, InvalidAmount, Money, UnknownCurrency

_MESSAGE_START: Final = re.compile(r"^:20:", re.MULTILINE)
_BALANCE_TAG: Final = re.compile(r"^:6[02][FM]?:", re.MULTILINE)
_NO_REFERENCE: Final = frozenset({"NONREF", "NOTPROVIDED", ""})
#: ``:61:`` debit/credit marks: RC (reversal of a credit) is a debit, RD a credit. The
#: library only negates ``D``, so the sign is taken from the mark here.
_DEBIT_MARKS: Final = frozenset({"D", "RC"})
_CREDIT_MARKS: Final = frozenset({"C", "RD"})


def looks_like_mt94x(text: str) -> bool:
    return _MESSAGE_START.search(text) is not None


def decode(data: bytes) -> str:
    """SWIFT text is ASCII; banks send UTF-8 or Latin-1 national characters."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def split_messages(text: str) -> list[str]:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    starts = [m.start() for m in _MESSAGE_START.finditer(text)]
    if len(starts) > limits.STATEMENTS_PER_FILE_MAX:
        raise StatementTooLarge(f"more than {limits.STATEMENTS_PER_FILE_MAX} statements in a file")
    return [
        text[s : (starts[i + 1] if i + 1 < len(starts) else None)] for i, s in enumerate(starts)
    ]


def parse_mt94x(data: bytes) -> list[ParsedStatement]:
    import mt940

    messages = split_messages(decode(data))
    out: list[ParsedStatement] = []
    entries_seen = 0
    for number, message in enumerate(messages, 1):
        transactions = mt940.models.Transactions()
        try:
            transactions.parse(message)
        except Exception as exc:  # the library raises bare exceptions on malformed fields
            raise StatementMalformed(
                f"message {number}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            ) from None
        statement = _statement(transactions, message, number)
        entries_seen += len(statement.entries)
        if entries_seen > limits.STATEMENT_ENTRIES_MAX:
            raise StatementTooLarge(f"more than {limits.STATEMENT_ENTRIES_MAX} entries in a file")
        out.append(statement)
    return out


def _statement(transactions: Any, message: str, number: int) -> ParsedStatement:
    data: dict[str, Any] = transactions.data
    account = _text(data.get("account_identification"), f"message {number} :25:")
    if account is None:
        raise StatementMalformed(f"message {number} has no account (:25:)")
    reference = _text(data.get("transaction_reference"), f"message {number} :20:") or ""
    statement_number = _text(data.get("statement_number"), f"message {number} :28C:")
    sequence_number = _text(data.get("sequence_number"), f"message {number} :28C:")
    # :20: alone is not unique (banks reuse it across accounts and pages); with :28C: it is.
    statement_id = reference
    if statement_number is not None:
        statement_id += f"/{statement_number}"
        if sequence_number is not None:
            statement_id += f"/{sequence_number}"
    if not statement_id:
        raise StatementMalformed(f"message {number} has neither :20: nor :28C:")
    opening = data.get("final_opening_balance") or data.get("intermediate_opening_balance")
    closing = data.get("final_closing_balance") or data.get("intermediate_closing_balance")
    has_balance_tags = _BALANCE_TAG.search(message) is not None
    is_942 = not has_balance_tags
    if opening is not None and closing is None:
        raise StatementTruncated(
            f"statement {account} {statement_id}: opening balance but no closing balance (:62:)"
        )
    if has_balance_tags and (opening is None or closing is None):
        raise StatementMalformed(f"statement {account} {statement_id}: unreadable balance")
    currency = None
    if opening is not None:
        currency = opening.amount.currency
    else:
        for key in ("floor_limit", "d_floor_limit", "c_floor_limit"):
            limit = data.get(key)
            if limit is not None and getattr(limit, "currency", None):
                currency = limit.currency
                break
    raw_entries = [t for t in transactions.transactions if t.data.get("amount") is not None]
    if currency is None and raw_entries:
        currency = raw_entries[0].data["amount"].currency
    if currency is None:
        raise StatementMalformed(f"statement {account} {statement_id}: no currency")
    where = f"statement {account} {statement_id}"
    _exponent(currency, where)
    opening_minor = None if opening is None else _balance_minor(opening, currency, where)
    closing_minor = None if closing is None else _balance_minor(closing, currency, where)
    entries = tuple(_entry(t.data, where, i) for i, t in enumerate(raw_entries, 1))
    check_entry_currency(currency, entries, where)
    return ParsedStatement(
        account=account,
        currency=currency,
        statement_id=statement_id,
        sequence=statement_number,
        created_at=None,
        opening_booked_minor=opening_minor,
        closing_booked_minor=closing_minor,
        entries=entries,
        format="mt942" if is_942 else "mt940",
        closing_date=None if closing is None else _date(closing.date),
    )


def _balance_minor(balance: Any, currency: str, where: str) -> int:
    if balance.amount.currency != currency:
        raise StatementCurrencyInvalid(
            f"{where}: balances in {balance.amount.currency} and {currency}"
        )
    value: Decimal = balance.amount.amount
    minor = _minor(abs(value), currency, where)
    return -minor if value < 0 else minor


def _entry(t: dict[str, Any], where: str, index: int) -> Entry:
    at = f"{where} line {index}"
    amount = t["amount"]
    mark = str(t.get("status") or "")
    magnitude = _minor(abs(amount.amount), amount.currency, at)
    if mark in _DEBIT_MARKS:
        signed = -magnitude
    elif mark in _CREDIT_MARKS:
        signed = magnitude
    else:
        raise StatementMalformed(f"{at}: unknown debit/credit mark {mark!r}")
    value_date = _date(t.get("date"))
    entry_date = _date(t.get("guessed_entry_date") or t.get("entry_date"))
    raw_reference = t.get("customer_reference")
    customer_reference = None
    if isinstance(raw_reference, str):
        # mt-940 appends the :86: KREF+ (customer reference) to :61:'s reference on a new
        # line ("NONREF\nPK-7F3A"): keep the last real one, the payer's when both are there.
        kept = [
            part
            for part in raw_reference.splitlines()
            if part.strip() and part.strip().upper() not in _NO_REFERENCE
        ]
        customer_reference = _text(kept[-1], at) if kept else None
    end_to_end = _text(t.get("end_to_end_reference"), at)
    details = t.get("transaction_details") or t.get("purpose")
    remittance = _text(details, at, limit=limits.STATEMENT_TEXT_LENGTH_MAX)
    name = _text(t.get("applicant_name"), at, limit=limits.STATEMENT_TEXT_LENGTH_MAX)
    iban = _text(t.get("applicant_iban"), at)
    return Entry(
        amount_minor=signed,
        currency=amount.currency,
        # SWIFT: the entry date is given only when it differs from the value date.
        booking_date=entry_date or value_date,
        value_date=value_date,
        status=EntryStatus.BOOKED,
        bank_reference=_text(t.get("bank_reference"), at),
        end_to_end_id=end_to_end,
        reference=customer_reference,
        remittance_info=remittance,
        counterparty_name=name,
        counterparty_iban=iban,
    )


def _exponent(currency: str, where: str) -> None:
    try:
        Money(0, currency)
    except UnknownCurrency as exc:
        raise StatementCurrencyInvalid(f"{where}: {exc.message}") from None


def _minor(value: Decimal, currency: str, where: str) -> int:
    _exponent(currency, where)
    try:
        minor = Money.parse(value, currency).amount_minor
    except (AmountPrecisionExceeded, InvalidAmount):
        raise StatementAmountInvalid(
            f"{where}: {value} has more decimals than {currency} allows"
        ) from None
    if minor > limits.AMOUNT_MAX_MINOR:
        raise StatementAmountInvalid(f"{where}: {value} {currency} exceeds the amount limit")
    return minor


def _date(value: Any) -> date | None:
    if value is None:
        return None
    return date(value.year, value.month, value.day)


def _text(
    value: Any, where: str, *, limit: int = limits.STATEMENT_REFERENCE_LENGTH_MAX
) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    if not text:
        return None
    if len(text) > limit:
        raise StatementFieldTooLong(f"{where}: a field is longer than {limit} characters")
    return text
