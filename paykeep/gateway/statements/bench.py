"""Statement import throughput: a generated camt.053 of ``lines`` lines, parsed alone and
parsed + imported (recorded, matched, posted) into a scratch SQLite database.

``paykeep bench gateway`` calls :func:`run_statement_bench`. One line in ten carries a
buyer's standing top-up reference and posts two ledger legs; the rest are unknown references
and become breaks, so both paths of the matcher are measured.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from paykeep.clock import monotonic_s

BENCH_IBAN = "DE89370400440532013000"
_NS = "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"


def camt053_document(
    *,
    iban: str,
    currency: str,
    statement_id: str,
    opening_minor: int,
    lines: list[tuple[int, str]],
    exponent: int = 2,
) -> bytes:
    """A camt.053.001.02 statement with one ``Ntry`` per (signed amount, end-to-end id)."""
    from lxml import etree  # type: ignore[import-untyped,unused-ignore]

    def el(parent: Any, tag: str, text: str | None = None, **attrs: str) -> Any:
        node = etree.SubElement(parent, f"{{{_NS}}}{tag}", **attrs)
        if text is not None:
            node.text = text
        return node

    def amount(minor: int) -> str:
        whole, frac = divmod(abs(minor), 10**exponent)
        return f"{whole}.{frac:0{exponent}d}" if exponent else str(whole)

    def balance(parent: Any, code: str, minor: int) -> None:
        bal = el(parent, "Bal")
        el(el(el(bal, "Tp"), "CdOrPrtry"), "Cd", code)
        el(bal, "Amt", amount(minor), Ccy=currency)
        el(bal, "CdtDbtInd", "CRDT" if minor >= 0 else "DBIT")
        el(el(bal, "Dt"), "Dt", "2026-01-02")

    root = etree.Element(f"{{{_NS}}}Document", nsmap={None: _NS})
    group = el(root, "BkToCstmrStmt")
    header = el(group, "GrpHdr")
    el(header, "MsgId", f"MSG-{statement_id}")
    el(header, "CreDtTm", "2026-01-02T18:00:00")
    stmt = el(group, "Stmt")
    el(stmt, "Id", statement_id)
    el(stmt, "CreDtTm", "2026-01-02T18:00:00")
    acct = el(stmt, "Acct")
    el(el(acct, "Id"), "IBAN", iban)
    el(acct, "Ccy", currency)
    balance(stmt, "OPBD", opening_minor)
    balance(stmt, "CLBD", opening_minor + sum(minor for minor, _ in lines))
    for minor, reference in lines:
        ntry = el(stmt, "Ntry")
        el(ntry, "Amt", amount(minor), Ccy=currency)
        el(ntry, "CdtDbtInd", "CRDT" if minor >= 0 else "DBIT")
        el(ntry, "Sts", "BOOK")
        el(el(ntry, "BookgDt"), "Dt", "2026-01-02")
        el(el(ntry, "ValDt"), "Dt", "2026-01-02")
        tx = el(el(ntry, "NtryDtls"), "TxDtls")
        el(el(tx, "Refs"), "EndToEndId", reference)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def run_statement_bench(lines: int = 20_000) -> dict[str, Any]:
    """Lines per second for parse only and for parse + import (SQLite, scratch directory)."""
    from paykeep.config import Settings
    from paykeep.db import field_cipher, open_database
    from paykeep.db.engine import SQLITE_SYNCHRONOUS
    from paykeep.gateway.statements.model import ExpectedMovement, Leg
    from paykeep.gateway.statements.parser import parse
    from paykeep.gateway.statements.service import StatementService
    from paykeep.ledger.model import NewAccount

    if not 1 <= lines <= 200_000:
        raise ValueError("lines must be within 1..200000")
    buyers = 100
    entries = [
        (1_000 + i % 977, f"TOPUP-{i % buyers}" if i % 10 == 0 else f"UNKNOWN-{i}")
        for i in range(lines)
    ]
    data = camt053_document(
        iban=BENCH_IBAN, currency="EUR", statement_id="BENCH-1", opening_minor=0, lines=entries
    )
    started = monotonic_s()
    parsed = parse(data)
    parse_s = monotonic_s() - started
    scratch = Path(tempfile.mkdtemp(prefix="paykeep-stmt-bench-"))
    try:
        settings = Settings(data_dir=scratch)
        database = open_database(settings)
        service = StatementService(database, cipher=field_cipher(settings))
        ledger = service.ledger
        names = ["bank:safeguarding:bench", "clearing:bank-in"] + [
            f"buyer:{b}:wallet" for b in range(buyers)
        ]
        ledger.create_accounts(
            [NewAccount(i + 1, "EUR", 1, name=name) for i, name in enumerate(names)]
        )
        service.add_account(BENCH_IBAN, "EUR", "bank:safeguarding:bench")
        for b in range(buyers):
            service.expect(
                ExpectedMovement(
                    reference=f"TOPUP-{b}", iban=BENCH_IBAN, direction="credit",
                    amount_minor=None, currency="EUR", standing=True,
                    legs=(Leg("bank:safeguarding:bench", "clearing:bank-in", 1),
                          Leg("clearing:bank-in", f"buyer:{b}:wallet", 1)),
                )
            )  # fmt: skip
        started = monotonic_s()
        report = service.import_file(data)
        import_s = monotonic_s() - started
        database.dispose()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    (outcome,) = report.statements
    return {
        "statement_lines": lines,
        "statement_file_bytes": len(data),
        "statement_parse_lines_per_s": round(lines / parse_s),
        "statement_import_lines_per_s": round(lines / (parse_s + import_s)),
        "statement_parse_s": round(parse_s, 3),
        "statement_import_s": round(parse_s + import_s, 3),
        "statement_matched": outcome.matched,
        "statement_breaks": len(outcome.breaks),
        "statement_parsed_entries": len(parsed[0].entries),
        "sqlite_synchronous": SQLITE_SYNCHRONOUS,
    }
