"""Why a payment came back: camt's ``RtrInf/Rsn`` (an ISO code or the bank's own) is read into
the line's ``return_reason``, bounded, part of the statement's identity — and statements
without one keep the fingerprint they had before it was read, so re-importing an old
statement is still ``already_imported``."""

from __future__ import annotations

import pytest

from paykeep.gateway.statements import parse
from paykeep.gateway.statements.errors import StatementFieldTooLong, StatementMalformed
from tests.gateway.statements.builder import NS08, Line, camt053

PAYOUT = Line(1234, end_to_end_id="PO1", remittance="Payout 42", counterparty_name="Tea Shop",
              counterparty_iban="NL91ABNA0417164300")  # fmt: skip
OTHER = Line(-500, creditor_reference="RF18539007547034")
#: The fingerprint of ``camt053([PAYOUT, OTHER], closing_minor=734)`` as computed before the
#: return reason was read (commit c6b8816).
BEFORE = "c6f157f0ee34e88217d7741495bb8f6730518c8deba98305f90a4035397017be"


def test_a_statement_without_return_reasons_keeps_its_fingerprint() -> None:
    (statement,) = parse(camt053([PAYOUT, OTHER], closing_minor=734))
    assert [e.return_reason for e in statement.entries] == [None, None]
    assert statement.fingerprint() == BEFORE


@pytest.mark.parametrize("namespace", [None, NS08])
def test_the_return_reason_is_read(namespace: str | None) -> None:
    from dataclasses import replace

    lines = [replace(PAYOUT, return_reason="AC04"), replace(OTHER, return_reason_proprietary="X9")]
    extra = {} if namespace is None else {"namespace": namespace}
    (statement,) = parse(camt053(lines, closing_minor=734, **extra))
    assert [e.return_reason for e in statement.entries] == ["AC04", "X9"]
    assert statement.fingerprint() != BEFORE
    (other,) = parse(camt053([replace(PAYOUT, return_reason="AC01"), OTHER], closing_minor=734))
    assert other.fingerprint() not in (BEFORE, statement.fingerprint())


def test_a_return_reason_is_bounded_and_printable() -> None:
    from dataclasses import replace

    with pytest.raises(StatementFieldTooLong):
        parse(camt053([replace(PAYOUT, return_reason_proprietary="X" * 36)], closing_minor=1234))
    with pytest.raises(StatementMalformed):
        parse(camt053([replace(PAYOUT, return_reason_proprietary="A\u200bB")], closing_minor=1234))
