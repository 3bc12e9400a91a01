"""``parse(data)``: detect the format from the content and read every statement in it.

Pure: bytes in, :class:`ParsedStatement` values out, typed errors for anything wrong. The
checks run in a fixed order: size, format, syntax (truncation, DTDs), namespace, fields and
amounts, then balances per statement.
"""

from __future__ import annotations

from dataclasses import replace

from paykeep import limits
from paykeep.gateway.statements.camt import looks_like_xml, parse_camt
from paykeep.gateway.statements.errors import (
    StatementCurrencyInvalid,
    StatementFileTooLarge,
    StatementFormatUnknown,
    StatementUnbalanced,
)
from paykeep.gateway.statements.model import ParsedStatement, check_balanced
from paykeep.gateway.statements.mt94x import decode, looks_like_mt94x, parse_mt94x

#: Balance codes that are this account's booked balances; in another currency they refuse the
#: file (the available balances are informational and only noted).
_BOOKED_CODES = ("OPBD ", "PRCD ", "CLBD ")


def parse(
    data: bytes,
    *,
    filename: str | None = None,
    check: bool = True,
    accept_unbalanced: bool = False,
) -> list[ParsedStatement]:
    """Every statement in ``data`` (camt.052/053/054 XML, MT940 or MT942 text).

    ``filename`` only enriches error messages: the format comes from the content. With
    ``check`` (the default) each statement must balance — opening booked + booked lines =
    closing booked, when both balances are present — else :class:`StatementUnbalanced`;
    ``check=False`` returns them unchecked (for inspection and oracle tests, never import).
    """
    if not isinstance(data, bytes | bytearray):
        raise StatementFormatUnknown("statement data must be bytes")
    if len(data) > limits.STATEMENT_FILE_BYTES_MAX:
        raise StatementFileTooLarge(
            f"{filename or 'file'} has {len(data)} bytes; at most "
            f"{limits.STATEMENT_FILE_BYTES_MAX} are accepted"
        )
    data = bytes(data)
    if not data.strip():
        raise StatementFormatUnknown(f"{filename or 'file'} is empty")
    if looks_like_xml(data):
        statements = parse_camt(data)
    else:
        text = decode(data)
        if not looks_like_mt94x(text):
            raise StatementFormatUnknown(
                f"{filename or 'file'} is neither ISO 20022 camt XML nor MT940/MT942"
            )
        statements = parse_mt94x(data)
    if not check:
        return statements
    checked = []
    for statement in statements:
        # An operator's explicit choice (accept_unbalanced) keeps a statement whose balances
        # do not hold as evidence, flagged; by default it is refused.
        foreign = [n for n in statement.notes if n.startswith(_BOOKED_CODES)]
        if foreign:
            if not accept_unbalanced:
                raise StatementCurrencyInvalid(f"statement {statement.label}: {foreign[0]}")
            checked.append(replace(statement, untrusted=f"a booked balance: {foreign[0]}"))
            continue
        try:
            checked.append(check_balanced(statement))
        except StatementUnbalanced as exc:
            if not accept_unbalanced:
                raise
            checked.append(
                replace(
                    statement,
                    untrusted=f"opening + booked lines differ from closing by "
                    f"{exc.difference_minor} minor units",
                    imbalance_minor=exc.difference_minor,
                )
            )
    return checked
