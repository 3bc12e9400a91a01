"""Bad files: each gets its own typed error and changes nothing in the database."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paykeep import limits
from paykeep.db import Database
from paykeep.gateway.statements import EntryStatus, parse
from paykeep.gateway.statements.service import StatementService
from paykeep.security.fields import FieldCipher
from tests.gateway.statements.builder import NS02, NS08, Line, camt053, wrap_with_header
from tests.gateway.statements.samples import CAMT, MT940

GOOD = camt053([Line(1000, "E2E-1"), Line(-250, "E2E-2")], opening_minor=5000)
FI = (CAMT / "moov_FI_camt_053_sample.xml").read_bytes()
ABN = (MT940 / "jejik_abnamro.sta").read_bytes()
BETTERPLACE = (MT940 / "betterplace_sepa_mt9401.sta").read_bytes()

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE Document [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"><BkToCstmrStmt>
<GrpHdr><MsgId>&lol4;</MsgId></GrpHdr></BkToCstmrStmt></Document>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE Document [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"><BkToCstmrStmt>
<GrpHdr><MsgId>&xxe;</MsgId></GrpHdr></BkToCstmrStmt></Document>"""

EXTERNAL_DTD = (
    b'<?xml version="1.0"?><!DOCTYPE Document SYSTEM "http://127.0.0.1:9/x.dtd">' + GOOD[38:]
)


def _betterplace_cut() -> bytes:
    # Cut after a :61: line of the last message: its :62F: closing balance never comes.
    return BETTERPLACE[: BETTERPLACE.rindex(b":62F:")]


#: (case, file bytes, expected code). One row per rule; the code names the broken rule.
CASES: list[tuple[str, Callable[[], bytes], str]] = [
    ("empty", lambda: b"", "statement_format_unknown"),
    ("csv", lambda: b"date,amount\n2026-01-01,10.00\n", "statement_format_unknown"),
    ("oversized", lambda: b" " * (limits.STATEMENT_FILE_BYTES_MAX + 1), "statement_file_too_large"),
    ("truncated xml", lambda: FI[: len(FI) // 2], "statement_truncated"),
    ("truncated mt940", _betterplace_cut, "statement_truncated"),
    ("not well-formed", lambda: GOOD.replace(b"</Stmt>", b"</Stm>"), "statement_malformed"),
    ("wrong namespace", lambda: GOOD.replace(b"camt.053.001.02", b"camt.053.001.99"),
     "statement_namespace_unsupported"),
    ("pain.001", lambda: GOOD.replace(b"camt.053.001.02", b"pain.001.001.03"),
     "statement_namespace_unsupported"),
    ("no namespace", lambda: GOOD.replace(b' xmlns="' + NS02.encode() + b'"', b""),
     "statement_namespace_unsupported"),
    ("header mismatch", lambda: wrap_with_header(GOOD, "camt.053.001.08"),
     "statement_header_mismatch"),
    ("billion laughs", lambda: BILLION_LAUGHS, "statement_xml_forbidden"),
    ("external entity", lambda: EXTERNAL_ENTITY, "statement_xml_forbidden"),
    ("external dtd", lambda: EXTERNAL_DTD, "statement_xml_forbidden"),
    ("unbalanced camt", lambda: camt053([Line(1000, "A")], opening_minor=0, closing_minor=999),
     "statement_unbalanced"),
    ("unbalanced mt940", lambda: ABN, "statement_unbalanced"),
    ("too many decimals", lambda: GOOD.replace(b">10.00<", b">10.001<"),
     "statement_amount_invalid"),
    ("JPY with decimals", lambda: camt053([Line(150, "A")], currency="JPY", exponent=2),
     "statement_amount_invalid"),
    ("negative amount", lambda: GOOD.replace(b">10.00<", b">-10.00<"), "statement_amount_invalid"),
    ("unknown currency", lambda: GOOD.replace(b'Ccy="EUR"', b'Ccy="XYZ"').replace(
        b"<Ccy>EUR</Ccy>", b"<Ccy>XYZ</Ccy>"), "statement_currency_invalid"),
    ("mixed currencies", lambda: GOOD.replace(b'<Amt Ccy="EUR">2.50', b'<Amt Ccy="USD">2.50'),
     "statement_currency_invalid"),
    ("bad indicator", lambda: GOOD.replace(b">DBIT</CdtDbtInd>", b">X</CdtDbtInd>"),
     "statement_malformed"),
    ("unknown status", lambda: GOOD.replace(b"<Sts>BOOK</Sts>", b"<Sts>WHAT</Sts>"),
     "statement_malformed"),
    ("long reference", lambda: camt053([Line(1, "R" * 200)]), "statement_field_too_long"),
]  # fmt: skip


def test_every_case_has_a_distinct_name() -> None:
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "make", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_file_is_refused_with_its_code(name: str, make: Callable[[], bytes], code: str) -> None:
    with pytest.raises(Exception) as caught:
        parse(make())
    assert getattr(caught.value, "code", None) == code, caught.value


@pytest.mark.parametrize(
    ("name", "make", "code"),
    [c for c in CASES if c[0] in ("truncated xml", "billion laughs", "unbalanced camt",
                                  "wrong namespace", "external entity", "truncated mt940")],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_bad_file_changes_nothing(
    cipher: FieldCipher, database: Database, name: str, make: Callable[[], bytes], code: str
) -> None:
    service = StatementService(database, cipher=cipher)
    service.import_file(GOOD)
    before = service.row_counts()
    head = service.ledger.head()
    with pytest.raises(Exception) as caught:
        service.import_file(make())
    assert getattr(caught.value, "code", None) == code
    assert service.row_counts() == before
    assert service.ledger.head() == head


def test_wrapped_camt053_v08_with_business_application_header() -> None:
    document = camt053(
        [Line(1234, "E2E-9", creditor_reference="RF18539007547034")],
        namespace=NS08,
        opening_minor=100,
    )
    plain = parse(document)
    wrapped = parse(wrap_with_header(document, "camt.053.001.08"))
    assert plain == wrapped
    (s,) = wrapped
    assert s.format == "camt.053.001.08"
    assert (s.opening_booked_minor, s.closing_booked_minor) == (100, 1334)
    (e,) = s.entries
    assert (e.end_to_end_id, e.reference, e.status) == (
        "E2E-9", "RF18539007547034", EntryStatus.BOOKED,
    )  # fmt: skip


def test_filename_does_not_decide_the_format() -> None:
    assert parse(BETTERPLACE, filename="statement.xml") == parse(BETTERPLACE)


# ------------------------------------------------------------------ property: round trip

_lines = st.lists(
    st.builds(
        Line,
        amount_minor=st.integers(-(10**12), 10**12),
        end_to_end_id=st.one_of(st.none(), st.from_regex(r"[A-Z0-9]{1,35}", fullmatch=True)),
        creditor_reference=st.one_of(st.none(), st.from_regex(r"RF[0-9]{2}[A-Z0-9]{1,20}",
                                                                fullmatch=True)),
        booking_date=st.dates().map(lambda d: d.isoformat()),
        value_date=st.dates().map(lambda d: d.isoformat()),
        status=st.sampled_from(["BOOK", "BOOK", "BOOK", "PDNG", "INFO"]),
    ),
    max_size=12,
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=_lines,
    opening=st.integers(-(10**13), 10**13),
    currency=st.sampled_from([("EUR", 2), ("JPY", 0), ("KWD", 3), ("CHF", 2)]),
)
def test_generated_camt053_round_trips_with_balances_intact(
    lines: list[Line], opening: int, currency: tuple[str, int]
) -> None:
    code, exponent = currency
    data = camt053(lines, currency=code, exponent=exponent, opening_minor=opening)
    (s,) = parse(data)
    assert s.currency == code
    assert s.opening_booked_minor == opening
    booked = sum(line.amount_minor for line in lines if line.status == "BOOK")
    assert s.closing_booked_minor == opening + booked
    assert s.opening_booked_minor + s.booked_sum_minor == s.closing_booked_minor
    assert [e.amount_minor for e in s.entries] == [line.amount_minor for line in lines]
    assert [e.end_to_end_id for e in s.entries] == [line.end_to_end_id for line in lines]
    assert [e.reference for e in s.entries] == [line.creditor_reference for line in lines]
    assert [e.booking_date.isoformat() for e in s.entries if e.booking_date] == [
        line.booking_date for line in lines
    ]
    assert [e.value_date.isoformat() for e in s.entries if e.value_date] == [
        line.value_date for line in lines
    ]
    # Any change of one booked amount breaks the balance, by exactly that change.
    if any(line.status == "BOOK" for line in lines):
        with pytest.raises(Exception) as caught:
            parse(camt053(lines, currency=code, exponent=exponent, opening_minor=opening,
                          closing_minor=opening + booked + 1))  # fmt: skip
        assert getattr(caught.value, "code", None) == "statement_unbalanced"
        assert caught.value.difference_minor == 1  # type: ignore[attr-defined]
