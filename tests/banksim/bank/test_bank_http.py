"""The bank over real HTTP: accounts, payment files, incoming transfers, statements, faults."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from lxml import etree

from paykeep.bench.gateway import BanksimProcess
from paykeep.gateway.statements import parse
from tests.banksim.bank.helpers import (
    FIXTURES,
    account,
    close_day,
    incoming,
    new_iban,
    open_account,
    payment_file,
    rewrite,
    statement,
)

CAMT02 = {"c": "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"}

# --------------------------------------------------------------------------------- accounts


def test_open_and_read_an_account(http: httpx.Client) -> None:
    iban = new_iban()
    body = {"iban": iban, "currency": "EUR", "name": "Safeguarding", "opening_balance_minor": 5}
    first = http.post("/bank/accounts", json=body)
    assert first.status_code == 201
    again = http.post("/bank/accounts", json=body)
    assert again.status_code == 200
    assert again.json() == first.json()
    other = http.post("/bank/accounts", json={**body, "opening_balance_minor": 6})
    assert other.status_code == 409
    assert other.json()["error"] == "account_exists"
    got = account(http, iban)
    assert got["balance_minor"] == 5 and got["currency"] == "EUR" and got["statements"] == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"iban": "DE89370400440532013001", "currency": "EUR", "name": "x"}, 400, "iban_invalid"),
        ({"iban": "DE89370400440532013000", "currency": "EUX", "name": "x"}, 400,
         "currency_invalid"),
        ({"iban": "DE89370400440532013000", "currency": "EUR", "name": ""}, 400,
         "request_invalid"),
        ({"iban": "DE89370400440532013000", "currency": "EUR", "name": "x",
          "opening_balance_minor": 1.5}, 400, "request_invalid"),
        ({"iban": "DE89370400440532013000", "currency": "EUR", "name": "x",
          "opening_balance_minor": -1}, 400, "request_invalid"),
        ({"iban": "DE89370400440532013000", "currency": "EUR", "name": "x", "extra": 1}, 400,
         "request_invalid"),
        ({"iban": "DE89370400440532013000", "currency": "EUR", "name": "x",
          "business_date": "2026-02-30"}, 400, "request_invalid"),
    ],
)  # fmt: skip
def test_bad_account_requests_are_refused(
    http: httpx.Client, body: dict[str, object], status: int, code: str
) -> None:
    response = http.post("/bank/accounts", json=body)
    assert response.status_code == status
    assert response.json()["error"] == code
    assert http.get(f"/bank/accounts/{body['iban']}").status_code in (400, 404)


def test_unknown_account_is_404(http: httpx.Client) -> None:
    assert http.get(f"/bank/accounts/{new_iban()}").status_code == 404
    assert http.post(f"/bank/accounts/{new_iban()}/close-day").status_code == 404


def test_not_json_is_refused(http: httpx.Client) -> None:
    response = http.post("/bank/accounts", content=b"{not json")
    assert response.status_code == 400 and response.json()["error"] == "request_invalid"


def test_state_survives_a_restart(tmp_path: Path) -> None:
    first = BanksimProcess(tmp_path / "bank")
    try:
        with httpx.Client(base_url=first.base_url, timeout=10) as http:
            iban = open_account(http, balance=1_000)
            incoming(http, iban, 250, "PK-RESTART")
    finally:
        first.stop()
    second: BanksimProcess = BanksimProcess(tmp_path / "bank")
    try:
        with httpx.Client(base_url=second.base_url, timeout=10) as http:
            assert account(http, iban)["balance_minor"] == 1_250
            assert close_day(http, iban)["entries"] == 1
    finally:
        second.stop()


# --------------------------------------------------------------------------- payment files


@pytest.mark.parametrize("schema", ["pain.001.001.03", "pain.001.001.09"])
def test_a_payment_file_is_executed(http: httpx.Client, schema: str) -> None:
    iban = open_account(http, balance=10_000)
    msg, document, e2e = payment_file(iban, [1_000, 250, 1], schema=schema)
    response = http.post("/bank/payment-files", content=document)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["group_status"] == "ACCP" and answer["message_id"] == msg
    assert answer["schema"] == schema
    assert answer["number_of_transactions"] == 3 and answer["control_sum_minor"] == 1_251
    assert [t["end_to_end_id"] for t in answer["transactions"]] == e2e
    assert {t["status"] for t in answer["transactions"]} == {"ACSC"}
    assert account(http, iban)["balance_minor"] == 10_000 - 1_251
    assert http.get(f"/bank/payment-files/{msg}").json() == answer
    closed = close_day(http, iban)
    assert closed["entries"] == 3
    assert (closed["opening_booked_minor"], closed["closing_booked_minor"]) == (10_000, 8_749)
    root = etree.fromstring(statement(http, closed["statement_id"], "camt053"))
    refs = [n.text for n in root.iterfind(".//c:Ntry//c:EndToEndId", CAMT02)]
    assert refs == e2e
    marks = {n.text for n in root.iterfind(".//c:Ntry/c:CdtDbtInd", CAMT02)}
    assert marks == {"DBIT"}


def test_a_duplicate_message_id_is_refused_and_books_nothing(http: httpx.Client) -> None:
    iban = open_account(http, balance=10_000)
    msg, document, _ = payment_file(iban, [700])
    assert http.post("/bank/payment-files", content=document).json()["group_status"] == "ACCP"
    _, other, _ = payment_file(iban, [300], message_id=msg)
    for body in (document, other):
        again = http.post("/bank/payment-files", content=body)
        assert again.status_code == 409
        assert again.json()["error"] == "duplicate_message_id"
        assert again.json()["original"]["group_status"] == "ACCP"
    assert account(http, iban)["balance_minor"] == 9_300


def _bomb() -> bytes:
    return (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03">&lol2;</Document>'
    )


def _external_entity() -> bytes:
    return (
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03">&x;</Document>'
    )


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d[: len(d) // 2], "FF01"),  # truncated
        (lambda d: b"", "FF01"),
        (lambda d: _bomb(), "FF01"),
        (lambda d: _external_entity(), "FF01"),
        (lambda d: d.replace(b"pain.001.001.03", b"pain.001.001.02"), "FF01"),
        (lambda d: rewrite(d, ".//p:GrpHdr/p:NbOfTxs", "x"), "FF01"),  # XSD: not a number
        (lambda d: rewrite(d, ".//p:GrpHdr/p:NbOfTxs", "3"), "AM18"),
        (lambda d: rewrite(d, ".//p:GrpHdr/p:CtrlSum", "9.99"), "AM10"),
        (lambda d: rewrite(d, ".//p:PmtInf/p:CtrlSum", "9.99"), "AM10"),
        (lambda d: rewrite(d, ".//p:InstdAmt", "1.001"), "AM03"),
        (lambda d: rewrite(d, ".//p:CdtrAcct/p:Id/p:IBAN", "DE89370400440532013001"), "AC01"),
        (lambda d: rewrite(d, ".//p:EndToEndId", "SAME"), "AM05"),
    ],
)
def test_an_invalid_file_is_refused_with_nothing_booked(
    http: httpx.Client, mutate: object, reason: str
) -> None:
    iban = open_account(http, balance=10_000)
    msg, document, _ = payment_file(iban, [100, 200])
    assert callable(mutate)
    response = http.post("/bank/payment-files", content=mutate(document))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["group_status"] == "RJCT" and body["reason"]["code"] == reason, body
    assert "Traceback" not in response.text
    assert account(http, iban)["balance_minor"] == 10_000
    # A refused file does not use up its message id: the corrected file goes through.
    assert http.post("/bank/payment-files", content=document).json()["group_status"] == "ACCP"
    assert http.get(f"/bank/payment-files/{msg}").status_code == 200


@pytest.mark.parametrize(
    ("setup", "reason"),
    [("poor", "AM04"), ("unknown_debtor", "AC01"), ("currency", "AM03"), ("fault", "AG01")],
)
def test_a_file_the_bank_cannot_execute_is_rejected_whole(
    http: httpx.Client, setup: str, reason: str
) -> None:
    iban = open_account(http, balance=150, currency="USD" if setup == "currency" else "EUR")
    debtor = new_iban() if setup == "unknown_debtor" else iban
    if setup == "fault":
        http.post("/bank/faults", json={"reject_payment_files": True})
    msg, document, _ = payment_file(debtor, [100, 100] if setup == "poor" else [100])
    answer = http.post("/bank/payment-files", content=document).json()
    assert answer["group_status"] == "RJCT" and answer["reason"]["code"] == reason, answer
    assert {t["status"] for t in answer["transactions"]} == {"RJCT"}
    assert account(http, iban)["balance_minor"] == 150  # the first 100 was not kept either
    assert close_day(http, iban)["entries"] == 0
    # The rejection is final for this message id.
    http.post("/bank/faults", json={"reject_payment_files": False})
    again = http.post("/bank/payment-files", content=document)
    assert again.status_code == 409 and again.json()["original"]["group_status"] == "RJCT"
    assert http.get(f"/bank/payment-files/{msg}").json()["group_status"] == "RJCT"


def test_third_party_sample_files_are_read(http: httpx.Client) -> None:
    """php-sepa-xml's samples (their debtor IBAN is not a valid Bulgarian IBAN) go through once
    their IBANs are replaced by valid ones."""
    for name in ("php-sepa-xml_pain.001.001.03.xml", "php-sepa-xml_pain.001.001.09.xml"):
        iban = open_account(http, balance=10_000)
        original = (FIXTURES / name).read_bytes()
        refused = http.post("/bank/payment-files", content=original).json()
        assert refused["reason"]["code"] == "AC01"
        document = rewrite(original, ".//p:DbtrAcct/p:Id/p:IBAN", iban)
        document = rewrite(document, ".//p:CdtrAcct/p:Id/p:IBAN", new_iban("NL"))
        document = rewrite(document, ".//p:GrpHdr/p:MsgId", f"S{iban[-12:]}")
        answer = http.post("/bank/payment-files", content=document).json()
        assert answer["group_status"] == "ACCP", answer
        assert account(http, iban)["balance_minor"] == 10_000 - 1_234


def test_an_oversized_body_is_refused(http: httpx.Client) -> None:
    response = http.post("/bank/payment-files", content=b" " * (5 * 1_048_576 + 1))
    assert response.status_code == 413


# ------------------------------------------------------------------- incoming and statements


def test_incoming_transfers_and_value_dates(http: httpx.Client) -> None:
    iban = open_account(http, balance=0, business_date="2026-01-09")  # a Friday
    early = incoming(http, iban, 1_000, "PK-EARLY")
    late = incoming(http, iban, 2_000, "PK-LATE", after_cutoff=True, end_to_end_id="E2E-LATE")
    assert early["booking_date"] == early["value_date"] == "2026-01-09"
    assert (late["booking_date"], late["value_date"]) == ("2026-01-09", "2026-01-12")
    first = close_day(http, iban)
    assert first["date"] == "2026-01-09" and first["next_business_date"] == "2026-01-12"
    assert (first["opening_booked_minor"], first["closing_booked_minor"]) == (0, 3_000)
    camt = etree.fromstring(statement(http, first["statement_id"], "camt053"))
    entries = camt.findall(".//c:Ntry", CAMT02)
    assert [e.findtext("c:ValDt/c:Dt", namespaces=CAMT02) for e in entries] == [
        "2026-01-09", "2026-01-12"
    ]  # fmt: skip
    assert [e.findtext(".//c:Ustrd", namespaces=CAMT02) for e in entries] == [
        "PK-EARLY", "PK-LATE"
    ]  # fmt: skip
    balances = {
        b.findtext("c:Tp/c:CdOrPrtry/c:Cd", namespaces=CAMT02): b.findtext(
            "c:Amt", namespaces=CAMT02
        )
        for b in camt.iterfind(".//c:Bal", CAMT02)
    }
    assert balances == {"OPBD": "0.00", "CLBD": "30.00"}
    # The next day's statement opens where this one closed; its sequence number follows.
    incoming(http, iban, 5, "PK-NEXT")
    second = close_day(http, iban)
    assert second["date"] == "2026-01-12" and second["sequence"] == first["sequence"] + 1
    assert (second["opening_booked_minor"], second["closing_booked_minor"]) == (3_000, 3_005)
    assert account(http, iban)["statements"] == [first["statement_id"], second["statement_id"]]
    empty = close_day(http, iban)
    assert empty["entries"] == 0 and empty["opening_booked_minor"] == 3_005


def test_mt940_is_strict_swift(http: httpx.Client) -> None:
    iban = open_account(http, balance=123_456, business_date="2026-01-05")
    incoming(http, iban, 99, "Zahlung für Bestellung 42: Müller & Söhne?", after_cutoff=True)
    _, document, e2e = payment_file(iban, [100_000])
    http.post("/bank/payment-files", content=document)
    closed = close_day(http, iban)
    text = statement(http, closed["statement_id"], "mt940").decode("ascii")
    assert text.endswith("\r\n-\r\n")
    lines = text.split("\r\n")[:-2]
    allowed = re.compile(r"^[A-Za-z0-9/\-?:().,'+ ]*$")
    assert all(allowed.match(line) and len(line) <= 65 + 5 for line in lines), lines
    assert lines[0] == f":20:{closed['statement_id']}" and len(lines[0]) <= 4 + 16
    assert lines[1] == f":25:{iban}"
    assert lines[2] == f":28C:{closed['sequence']}/1"
    assert lines[3] == ":60F:C260105EUR1234,56"
    assert lines[-1] == f":62F:C260105EUR{(123_456 + 99 - 100_000) // 100},55"
    sixty_one = [line for line in lines if line.startswith(":61:")]
    assert sixty_one[0].startswith(":61:2601060105C0,99NTRFNONREF//")
    assert sixty_one[1].startswith(f":61:2601050105D1000,00NTRF{e2e[0]}//")
    details = [line for line in lines if line.startswith(":86:")]
    assert "?20EREF+" + e2e[0] in details[1]


@pytest.mark.parametrize("version", ["02", "08"])
def test_camt053_versions(http: httpx.Client, version: str) -> None:
    iban = open_account(http, balance=500)
    incoming(http, iban, 700, "RF18539007547034")
    closed = close_day(http, iban)
    data = statement(http, closed["statement_id"], "camt053", version)
    root = etree.fromstring(data)
    ns = {"c": f"urn:iso:std:iso:20022:tech:xsd:camt.053.001.{version}"}
    assert root.findtext(".//c:Stmt/c:Id", namespaces=ns) == closed["statement_id"]
    assert root.findtext(".//c:Stmt/c:ElctrncSeqNb", namespaces=ns) == str(closed["sequence"])
    assert root.findtext(".//c:Acct/c:Id/c:IBAN", namespaces=ns) == iban
    status = root.findtext(".//c:Ntry/c:Sts/c:Cd" if version == "08" else ".//c:Ntry/c:Sts",
                           namespaces=ns)  # fmt: skip
    assert status == "BOOK"
    name_path = ".//c:Dbtr/c:Pty/c:Nm" if version == "08" else ".//c:Dbtr/c:Nm"
    assert root.findtext(name_path, namespaces=ns) == "Ada Lovelace"
    bad = http.get(f"/bank/statements/{closed['statement_id']}", params={"format": "pdf"})
    assert bad.status_code == 422
    assert http.get("/bank/statements/S000000999999").status_code == 404


def test_fault_unknown_reference_line(http: httpx.Client) -> None:
    iban = open_account(http, balance=1_000)
    incoming(http, iban, 10, "PK-KNOWN")
    assert http.post("/bank/faults", json={"unknown_reference_line": True}).json() == {
        "unknown_reference_line": True,
        "reject_payment_files": False,
        "return_after_settlement": False,
    }
    closed = close_day(http, iban)
    assert closed["entries"] == 2
    root = etree.fromstring(statement(http, closed["statement_id"], "camt053"))
    refs = [n.text for n in root.iterfind(".//c:Ustrd", CAMT02)]
    assert refs[0] == "PK-KNOWN" and refs[1].startswith("UNKNOWN-")
    extra = closed["closing_booked_minor"] - 1_010
    assert extra > 0 and account(http, iban)["balance_minor"] == closed["closing_booked_minor"]
    assert http.post("/bank/faults", json={"no_such_fault": True}).status_code == 400


@pytest.mark.parametrize("fee", [0, 250])
def test_fault_return_after_settlement(http: httpx.Client, fee: int) -> None:
    """The payee's bank sends back every credit transfer our bank executed while the fault was
    on: a business day after the statement that carried it, as a credit with the original
    end-to-end id and remittance, its ISO reason, less the fee it kept — in camt.053 (.02 and
    .08: PMNT/ICDT/RRTN, RtrInf, charges) and in MT940 (GVC 159, no field for the reason)."""
    iban = open_account(http, balance=100_000)
    terms = {"reason": "MD07", "fee_minor": fee}
    answer = http.post("/bank/faults", json={"return_after_settlement": terms})
    assert answer.status_code == 200 and answer.json()["return_after_settlement"] == terms
    _, document, sent_back = payment_file(iban, [4_000, 1_500])
    assert http.post("/bank/payment-files", content=document).json()["group_status"] == "ACCP"
    # Turned off: what was executed meanwhile still comes back, nothing executed after it.
    assert http.post("/bank/faults", json={"return_after_settlement": False}).status_code == 200
    _, later, kept = payment_file(iban, [500])
    assert http.post("/bank/payment-files", content=later).json()["group_status"] == "ACCP"

    settled = close_day(http, iban)
    assert settled["entries"] == 3  # the three payouts, on their day's statement
    returned = close_day(http, iban)
    assert returned["entries"] == 2
    back = [4_000 - fee, 1_500 - fee]
    assert returned["closing_booked_minor"] == returned["opening_booked_minor"] + sum(back)
    assert account(http, iban)["balance_minor"] == 100_000 - 500 - 2 * fee
    assert close_day(http, iban)["entries"] == 0  # each comes back once

    for version, ns in (("02", CAMT02), ("08", {"c": CAMT02["c"].replace(".02", ".08")})):
        data = statement(http, returned["statement_id"], "camt053", version)
        (parsed,) = parse(data)
        assert [(e.amount_minor, e.end_to_end_id, e.return_reason) for e in parsed.entries] == [
            (back[0], sent_back[0], "MD07"), (back[1], sent_back[1], "MD07")]  # fmt: skip
        assert [e.remittance_info for e in parsed.entries] == ["Payout 0", "Payout 1"]
        assert parsed.entries[0].counterparty_name == "Merchant 0"
        root = etree.fromstring(data)
        families = {n.text for n in root.iterfind(".//c:Fmly/c:SubFmlyCd", ns)}
        assert families == {"RRTN"}
        assert [n.text for n in root.iterfind(".//c:RtrInf/c:Rsn/c:Cd", ns)] == ["MD07"] * 2
        charges = [n.text for n in root.iterfind(".//c:Chrgs//c:Amt", ns)]
        instructed = [n.text for n in root.iterfind(".//c:InstdAmt/c:Amt", ns)]
        if fee:
            assert charges == ["2.50", "2.50"] and instructed == ["40.00", "15.00"]
        else:
            assert charges == instructed == []
    text = statement(http, returned["statement_id"], "mt940").decode("ascii")
    (parsed,) = parse(text.encode("ascii"))
    assert [(e.amount_minor, e.end_to_end_id, e.return_reason) for e in parsed.entries] == [
        (back[0], sent_back[0], None), (back[1], sent_back[1], None)]  # fmt: skip
    assert ":86:159?00RETOURE MD07?20EREF+" in text
    purposes = re.sub(r"\?2\d", "", text.replace("\r\n", ""))  # the ?20-?29 lines joined
    assert ("OAMT+40,00COAM+2,50SVWZ+Payout 0" in purposes) is bool(fee)
    # The payout executed without the fault never came back.
    assert kept[0] not in text


def test_the_return_fault_takes_only_its_terms(http: httpx.Client) -> None:
    on = http.post("/bank/faults", json={"return_after_settlement": True})
    assert on.json()["return_after_settlement"] == {"reason": "AC04", "fee_minor": 0}
    for bad in ({"reason": "ac04"}, {"reason": "AC0"}, {"fee_minor": -1}, {"fee_minor": "1"},
                {"other": 1}, "AC04", 1):  # fmt: skip
        refused = http.post("/bank/faults", json={"return_after_settlement": bad})
        assert refused.status_code == 400, bad
    assert http.get("/bank/faults").json()["return_after_settlement"] == {
        "reason": "AC04", "fee_minor": 0}  # fmt: skip
