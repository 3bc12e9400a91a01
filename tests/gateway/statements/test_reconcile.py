"""Persistence and reconciliation on both databases: matches post linked ledger legs, every
other line is a break with its reason, re-imports and retries never post twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paykeep.config import Settings
from paykeep.db import Database
from paykeep.gateway.statements import ExpectedMovement, Leg
from paykeep.gateway.statements.errors import (
    BankAccountConflict,
    BankAccountInvalid,
    BankAccountNotFound,
    ExpectationConflict,
    ExpectationInvalid,
    LedgerAccountNotFound,
    StatementAccountCurrencyMismatch,
    StatementConflict,
)
from paykeep.gateway.statements.service import StatementService
from paykeep.ledger.model import AccountFlags, NewAccount
from paykeep.security.fields import FieldCipher
from tests.gateway.statements.builder import Line, camt053
from tests.gateway.statements.samples import CAMT
from tests.support import paykeep

IBAN = "DE89370400440532013000"
BANK = "bank:safeguarding:x"
CHART = {
    BANK: 0,
    "clearing:bank-in": 0,
    "clearing:payout": 0,
    "buyer:42:wallet": int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
}


def _service(database: Database, cipher: FieldCipher) -> StatementService:
    service = StatementService(database, cipher=cipher)
    service.ledger.create_accounts(
        [NewAccount(i + 1, "EUR", 1, flags, name=n) for i, (n, flags) in enumerate(CHART.items())]
    )
    service.add_account(IBAN, "EUR", BANK)
    return service


def _topup(reference: str = "BUYER42") -> ExpectedMovement:
    return ExpectedMovement(
        reference=reference, iban=IBAN, direction="credit", amount_minor=None, currency="EUR",
        standing=True,
        legs=(Leg(BANK, "clearing:bank-in", 1), Leg("clearing:bank-in", "buyer:42:wallet", 1)),
    )  # fmt: skip


def _payout(reference: str, amount: int) -> ExpectedMovement:
    return ExpectedMovement(
        reference=reference, iban=IBAN, direction="debit", amount_minor=amount, currency="EUR",
        legs=(Leg("clearing:payout", BANK, 2),),
    )  # fmt: skip


def _net(service: StatementService, name: str) -> int:
    a = service.ledger.account_by_name(name)
    return a.debits_posted - a.credits_posted


STATEMENT = [
    Line(10_000, remittance="buyer42"),  # 1 standing top-up, typed by the payer
    Line(5_000, "BUYER42"),  # 2 the same standing reference again: matches again
    Line(-5_000, "PAYOUT-1"),  # 3 payout confirmation
    Line(-5_000, "PAYOUT-1"),  # 4 the same one-shot reference again: duplicate
    Line(1_000, creditor_reference="RF00UNKNOWN"),  # 5 unknown
    Line(-2_000, "BUYER42"),  # 6 wrong direction
    Line(3_100, "INV-9"),  # 7 amount mismatch (30.00 expected)
    Line(700),  # 8 no reference at all
    Line(999, "BUYER42", status="PDNG"),  # 9 pending: recorded, neither matched nor broken
]
EXPECTED_BREAKS = [
    (4, "duplicate"),
    (5, "unknown_reference"),
    (6, "wrong_direction"),
    (7, "amount_mismatch"),
    (8, "no_reference"),
]


def test_matching_posts_legs_and_breaks_the_rest(cipher: FieldCipher, database: Database) -> None:
    service = _service(database, cipher)
    service.expect(_topup())
    payout_id = service.expect(_payout("PAYOUT-1", 5_000))
    service.expect(ExpectedMovement("INV-9", IBAN, "credit", 3_000, "EUR", legs=_topup().legs))
    data = camt053(STATEMENT, opening_minor=50_000)
    report = service.import_file(data)
    (s,) = report.statements
    assert (s.status, s.entries, s.matched) == ("imported", 9, 3)
    assert (s.opening_booked_minor, s.closing_booked_minor) == (50_000, 50_000 + 7_800)
    assert [(b["line"], b["reason"]) for b in s.breaks] == EXPECTED_BREAKS
    assert s.breaks[0]["expectation_id"] == payout_id
    assert _net(service, BANK) == 10_000 + 5_000 - 5_000
    assert _net(service, "clearing:bank-in") == 0  # in transit, and back to zero
    assert _net(service, "buyer:42:wallet") == -15_000  # a liability: credit balance
    assert _net(service, "clearing:payout") == 5_000
    # Re-import: reported as already imported, nothing posted or written again.
    counts, head = service.row_counts(), service.ledger.head()
    (again,) = service.import_file(data).statements
    assert (again.status, again.matched) == ("already_imported", 3)
    assert service.row_counts() == counts and service.ledger.head() == head
    # Same account and statement id, other content: a conflict, nothing changes.
    with pytest.raises(StatementConflict):
        service.import_file(camt053(STATEMENT[:3], opening_minor=50_000))
    assert service.row_counts() == counts and service.ledger.head() == head
    # The breaks are listed as open.
    assert [(b.line, b.reason) for b in service.open_breaks()] == EXPECTED_BREAKS


def test_a_one_shot_expectation_is_consumed_across_statements(
    cipher: FieldCipher, database: Database
) -> None:
    service = _service(database, cipher)
    service.expect(_payout("PAYOUT-7", 1_200))
    first = service.import_file(camt053([Line(-1_200, "PAYOUT-7")], statement_id="S1"))
    second = service.import_file(camt053([Line(-1_200, "PAYOUT-7")], statement_id="S2"))
    assert first.statements[0].matched == 1 and first.statements[0].breaks == []
    assert [b["reason"] for b in second.statements[0].breaks] == ["duplicate"]
    assert _net(service, "clearing:payout") == 1_200


def test_crash_after_recording_is_finished_once(
    cipher: FieldCipher, database: Database, settings: Settings
) -> None:
    service = _service(database, cipher)
    service.expect(_topup())
    data = camt053([Line(2_500, "BUYER42"), Line(100, "BUYER42")])
    from paykeep.gateway.statements import parse

    # Step 1 only (as if the process died before posting): nothing is in the ledger yet.
    service._record(parse(data))
    assert _net(service, "buyer:42:wallet") == 0
    # Post one chain by hand (as if it died after posting, before settling).
    with database.read() as conn:
        from paykeep.gateway.statements.repository import StatementRepository

        repo = StatementRepository(conn)
        row_id = repo.posting_statements()[0]
        stored = repo.statement_by_row(row_id)
        first = repo.matches(row_id)[0]
    service._submit([(first, service._chain(stored.statement_id, row_id, first))])
    assert _net(service, "buyer:42:wallet") == -2_500
    # A new process re-imports the same file: it finishes the statement, never posts twice.
    from paykeep.db import open_database

    other = StatementService(open_database(settings), cipher=cipher)
    (s,) = other.import_file(data).statements
    assert (s.status, s.matched) == ("already_imported", 2)
    assert _net(other, "buyer:42:wallet") == -2_600
    assert other.recover() == 0


def test_ledger_refusal_becomes_a_break(cipher: FieldCipher, database: Database) -> None:
    service = _service(database, cipher)
    # A withdrawal from an empty wallet: the wallet may not go below zero.
    service.expect(
        ExpectedMovement("WD-1", IBAN, "debit", 900, "EUR",
                         legs=(Leg("buyer:42:wallet", BANK, 3),))
    )  # fmt: skip
    head = service.ledger.head()
    (s,) = service.import_file(camt053([Line(-900, "WD-1")], opening_minor=5_000)).statements
    assert s.matched == 0
    assert [(b["reason"], b["detail"]) for b in s.breaks] == [
        ("ledger_rejected", "the ledger refused the legs: exceeds_credits")
    ]
    assert service.ledger.head() == head


def test_unregistered_account_lines_are_breaks(cipher: FieldCipher, database: Database) -> None:
    service = StatementService(database, cipher=cipher)
    (s,) = service.import_file((CAMT / "moov_FI_camt_053_sample.xml").read_bytes()).statements
    assert (s.account, s.entries, s.matched) == ("FI7433010001222090", 10, 0)
    assert {b["reason"] for b in s.breaks} == {"account_not_registered"}
    assert len(s.breaks) == 10


def test_statement_currency_must_be_the_accounts(cipher: FieldCipher, database: Database) -> None:
    service = _service(database, cipher)
    before = service.row_counts()
    with pytest.raises(StatementAccountCurrencyMismatch):
        service.import_file(camt053([Line(100, "A")], currency="CHF"))
    assert service.row_counts() == before


def test_registry_and_expectation_errors(cipher: FieldCipher, database: Database) -> None:
    service = _service(database, cipher)
    assert service.add_account(IBAN, "EUR", BANK).iban == IBAN  # idempotent
    with pytest.raises(BankAccountConflict):
        service.add_account(IBAN, "EUR", "clearing:payout")
    with pytest.raises(BankAccountInvalid):
        service.add_account("DE00370400440532013000", "EUR", BANK)
    with pytest.raises(LedgerAccountNotFound):
        service.add_account("GB82WEST12345698765432", "EUR", "bank:nowhere")
    first = service.expect(_topup())
    assert service.expect(_topup()) == first  # idempotent
    with pytest.raises(ExpectationConflict):
        service.expect(_payout("BUYER42", 100))
    with pytest.raises(BankAccountNotFound):
        service.expect(
            ExpectedMovement("X", "GB82WEST12345698765432", "credit", None, "EUR",
                             legs=_topup().legs)
        )  # fmt: skip
    with pytest.raises(LedgerAccountNotFound):
        service.expect(
            ExpectedMovement("Y", IBAN, "credit", 1, "EUR", legs=(Leg(BANK, "nope", 1),))
        )
    for bad in (
        ExpectedMovement("", IBAN, "credit", 1, "EUR", legs=_topup().legs),
        ExpectedMovement("Z", IBAN, "sideways", 1, "EUR", legs=_topup().legs),  # type: ignore[arg-type]
        ExpectedMovement("Z", IBAN, "credit", 0, "EUR", legs=_topup().legs),
        ExpectedMovement("Z", IBAN, "credit", 1, "EUR", legs=()),
        ExpectedMovement("Z", IBAN, "credit", 1, "EUR", legs=(Leg(BANK, BANK, 1),)),
    ):
        with pytest.raises(ExpectationInvalid):
            service.expect(bad)


# ------------------------------------------------------------------------------------- CLI


def test_cli_import_json_and_bad_file(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    sample = CAMT / "moov_FI_camt_053_sample.xml"
    done = paykeep("statements", "import", str(sample), "--json", "--data-dir", data_dir)
    assert done.returncode == 0, done.stderr
    (s,) = json.loads(done.stdout)["statements"]
    assert {"account", "currency", "opening_booked_minor", "closing_booked_minor", "entries",
            "matched", "breaks"} <= set(s)  # fmt: skip
    assert (s["account"], s["currency"], s["entries"], s["matched"]) == (
        "FI7433010001222090", "EUR", 10, 0,
    )  # fmt: skip
    assert (s["opening_booked_minor"], s["closing_booked_minor"]) == (1_000_000, 2_364_483)
    bad = tmp_path / "cut.xml"
    bad.write_bytes(sample.read_bytes()[:3000])
    refused = paykeep("statements", "import", str(bad), "--data-dir", data_dir)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "statement_truncated" in refused.stderr
    assert "Traceback" not in refused.stderr
    listed = paykeep("statements", "breaks", "--json", "--data-dir", data_dir)
    assert listed.returncode == 0
    assert len(json.loads(listed.stdout)["breaks"]) == 10
    added = paykeep("statements", "accounts", "add", "GB82WEST12345698765432", "--currency", "EUR",
                 "--ledger-account", "bank:none", "--data-dir", data_dir)  # fmt: skip
    assert added.returncode == 2 and "statement_ledger_account_not_found" in added.stderr


def test_statement_bench_runs_small() -> None:
    from paykeep.gateway.statements.bench import run_statement_bench

    figures = run_statement_bench(lines=200)
    assert figures["statement_lines"] == figures["statement_parsed_entries"] == 200
    assert figures["statement_matched"] == 20 and figures["statement_breaks"] == 180
    assert (
        figures["statement_parse_lines_per_s"] > 0 and figures["statement_import_lines_per_s"] > 0
    )


def test_a_reference_among_the_words_of_a_remittance_matches(
    cipher: FieldCipher, database: Database
) -> None:
    """Payers type our reference among other words. A whole word equal to a registered
    reference is evidence; words naming two expectations are a break, never a choice."""
    service = _service(database, cipher)
    service.expect(_topup("PK-7F3A"))
    service.expect(_topup("PK-99QX"))
    lines = [
        Line(2_500, remittance="Order 42 / pk-7f3a, thanks"),  # 1 one word names PK-7F3A
        Line(1_000, remittance="PK-7F3A and PK-99QX"),  # 2 two expectations: ambiguous
        Line(1_000, remittance="PK-7F3AX"),  # 3 not a whole word: unknown
    ]
    (s,) = service.import_file(camt053(lines, opening_minor=0)).statements
    assert s.matched == 1
    assert [(b["line"], b["reason"]) for b in s.breaks] == [
        (2, "ambiguous_reference"),
        (3, "unknown_reference"),
    ]
    assert _net(service, "buyer:42:wallet") == -2_500


def test_an_mt940_customer_reference_after_nonref_matches(
    cipher: FieldCipher, database: Database
) -> None:
    """mt-940 reports ``:61:`` NONREF and the ``:86:`` KREF+ together; the reference is KREF."""
    service = _service(database, cipher)
    service.expect(_topup("PK-7F3A"))
    mt940 = (
        ":20:STMT1\r\n:25:DE89370400440532013000\r\n:28C:1/1\r\n:60F:C260102EUR100,00\r\n"
        ":61:2601020102C50,00NTRFNONREF//BANKREF1\r\n"
        ":86:166?00GUTSCHRIFT?20KREF+PK-7F3A?21SVWZ+Order 42?32Jane Doe\r\n"
        ":62F:C260102EUR150,00\r\n-\r\n"
    )
    (s,) = service.import_file(mt940.encode()).statements
    assert (s.entries, s.matched, s.breaks) == (1, 1, [])
    assert _net(service, "buyer:42:wallet") == -5_000


def test_reports_and_notifications_are_recorded_but_only_statements_move_money(
    cipher: FieldCipher,
    database: Database,
) -> None:
    """A camt.054 notification and the camt.053 statement describe the same booking; only the
    statement of record posts, so a standing top-up reference is credited once."""
    import dataclasses

    from paykeep.gateway.statements import parse

    service = _service(database, cipher)
    service.expect(_topup())
    (statement,) = parse(camt053([Line(4_000, "BUYER42")], opening_minor=0))
    notification = dataclasses.replace(statement, format="camt.054.001.08")
    assert (notification.kind, notification.of_record) == ("camt.054", False)
    (noted,) = service.import_statements([notification]).statements
    assert (noted.status, noted.matched, noted.breaks) == ("imported", 0, [])
    assert _net(service, "buyer:42:wallet") == 0
    # The statement under the same id is another document, not a conflict, and it posts.
    (booked,) = service.import_statements([statement]).statements
    assert (booked.status, booked.matched) == ("imported", 1)
    assert _net(service, "buyer:42:wallet") == -4_000


def test_a_report_and_a_notification_may_share_an_id(
    cipher: FieldCipher, database: Database
) -> None:
    service = _service(database, cipher)
    report = service.import_file((CAMT / "genkgo_camt052.v8.xml").read_bytes())
    notification = service.import_file((CAMT / "genkgo_camt054.v8-with-UETR.xml").read_bytes())
    (a,), (b,) = report.statements, notification.statements
    assert a.statement_id == b.statement_id and (a.status, b.status) == ("imported", "imported")


def test_a_break_is_resolved_once_by_a_note_or_by_naming_the_expectation(
    cipher: FieldCipher,
    database: Database,
) -> None:
    from paykeep.gateway.statements.errors import (
        BreakAlreadyResolved,
        BreakNotFound,
        BreakResolutionInvalid,
    )

    service = _service(database, cipher)
    service.expect(_topup("PK-7F3A"))
    service.expect(_payout("PAYOUT-9", 2_000))
    lines = [
        Line(3_000, remittance="PK-7F3B"),  # 1 the payer's typo: unknown reference
        Line(1_200, remittance="bank fee refund"),  # 2 nothing to match: explained
        Line(-2_000, "BUYER42"),  # 3 wrong direction: never matched by hand
        Line(2_500, remittance="PK 7F3A?"),  # 4 no whole word is a reference: left open
    ]
    (s,) = service.import_file(camt053(lines, opening_minor=10_000)).statements
    ids = {b["line"]: b["id"] for b in s.breaks}
    assert sorted(ids) == [1, 2, 3, 4]
    before = service.row_counts(), service.ledger.head()
    bad_inputs: list[tuple[int, dict[str, str], type[Exception]]] = [
        (ids[3], {"match_reference": "BUYER42"}, BreakResolutionInvalid),  # wrong direction
        (ids[1], {"match_reference": "NOPE"}, BreakResolutionInvalid),  # nothing expected
        (ids[1], {"match_reference": "PAYOUT-9"}, BreakResolutionInvalid),  # a debit
        (ids[1], {"actor": " "}, BreakResolutionInvalid),
        (ids[1], {"note": "x" * 5_000}, BreakResolutionInvalid),
        (999_999, {}, BreakNotFound),
    ]
    for break_id, changes, error in bad_inputs:
        kwargs: dict[str, str] = {"actor": "ops-1", "note": "checked", **changes}
        with pytest.raises(error):
            service.resolve_break(break_id, **kwargs)  # type: ignore[arg-type]
    assert (service.row_counts(), service.ledger.head()) == before  # nothing changed
    # The typo'd top-up: matched by hand, posted exactly as an import would.
    done = service.resolve_break(
        ids[1], actor="ops-1", note="buyer 42 mistyped", match_reference="pk-7f3a"
    )
    assert done.id == ids[1]
    assert _net(service, "buyer:42:wallet") == -3_000
    assert _net(service, "clearing:bank-in") == 0
    service.resolve_break(ids[2], actor="ops-1", note="bank's own fee refund, booked by finance")
    assert {b.line for b in service.open_breaks()} == {3, 4}
    with pytest.raises(BreakAlreadyResolved):
        service.resolve_break(ids[1], actor="ops-2", note="again", match_reference="PK-7F3A")
    assert _net(service, "buyer:42:wallet") == -3_000  # posted once
    # A re-import of the statement changes nothing and does not reopen anything.
    (again,) = service.import_file(camt053(lines, opening_minor=10_000)).statements
    assert again.status == "already_imported"
    assert _net(service, "buyer:42:wallet") == -3_000


def test_cli_resolve(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    sample = CAMT / "moov_FI_camt_053_sample.xml"
    assert paykeep("statements", "import", str(sample), "--data-dir", data_dir).returncode == 0
    listed = json.loads(paykeep("statements", "breaks", "--json", "--data-dir", data_dir).stdout)
    first = listed["breaks"][0]["id"]
    done = paykeep("statements", "resolve", str(first), "--actor", "ops-1", "--note", "known",
                "--json", "--data-dir", data_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["resolved"]["id"] == first and out["matched"] is False
    again = paykeep("statements", "resolve", str(first), "--actor", "ops-1", "--note", "known",
                 "--data-dir", data_dir)  # fmt: skip
    assert again.returncode == 2 and "statement_break_already_resolved" in again.stderr
    matched = paykeep("statements", "resolve", str(listed["breaks"][1]["id"]), "--actor", "ops-1",
                   "--note", "n", "--match", "X", "--data-dir", data_dir)  # fmt: skip
    assert matched.returncode == 2 and "statement_break_resolution_invalid" in matched.stderr
    left = json.loads(paykeep("statements", "breaks", "--json", "--data-dir", data_dir).stdout)
    assert len(left["breaks"]) == len(listed["breaks"]) - 1
