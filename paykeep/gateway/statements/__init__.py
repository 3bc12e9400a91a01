"""Statement import and reconciliation: camt.052/053/054 and MT940/MT942 in, ledger legs or
reconciliation breaks out. See README.md for the invariants and the data flow.

Stable public surface (other contexts and banksim's tests use these names)::

    parse(data, *, filename=None) -> list[ParsedStatement]
    StatementService(database, ledger, cipher=cipher).expect(ExpectedMovement(...))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from paykeep.gateway.statements.model import (
    BalanceBasis,
    BreakReason,
    Entry,
    EntryStatus,
    ExpectedMovement,
    Leg,
    ParsedStatement,
)

if TYPE_CHECKING:
    from paykeep.gateway.statements.parser import parse
    from paykeep.gateway.statements.service import (
        BankAccount,
        ImportReport,
        StatementOutcome,
        StatementService,
    )

__all__ = [
    "BalanceBasis",
    "BankAccount",
    "BreakReason",
    "Entry",
    "EntryStatus",
    "ExpectedMovement",
    "ImportReport",
    "Leg",
    "ParsedStatement",
    "StatementOutcome",
    "StatementService",
    "parse",
]


def __getattr__(name: str) -> Any:
    # The parsers pull in lxml and mt-940, the service the database layer: both are imported
    # on first use, so that importing the package (the CLI does) stays cheap.
    if name == "parse":
        from paykeep.gateway.statements.parser import parse

        return parse
    if name in ("BankAccount", "ImportReport", "StatementOutcome", "StatementService"):
        from paykeep.gateway.statements import service

        return getattr(service, name)
    raise AttributeError(name)
