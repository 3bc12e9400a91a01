"""Suspicious activity report export: goAML XML is well formed with the required elements in
the schema's order, the JSON carries the same document and round-trips, HTML escapes."""

from __future__ import annotations

import json
from typing import Any
from xml.etree.ElementTree import Element

import pytest
from defusedxml.ElementTree import fromstring

from paykeep.aml.cases.errors import CaseInputInvalid
from paykeep.aml.cases.model import CaseEventKind, EvidenceKind, RiskLevel
from paykeep.aml.cases.report import export_case
from paykeep.aml.cases.service import CaseService, NewEvidence
from paykeep.aml.rules.model import Outcome
from paykeep.aml.rules.service import DecisionEngine
from paykeep.clock import FakeClock
from paykeep.db import Database
from tests.aml.rules.helpers import T0, FakeSanctions, K, ev

REPORT_ORDER = [
    "rentity_id",
    "submission_code",
    "report_code",
    "entity_reference",
    "submission_date",
    "currency_code_local",
    "reporting_person",
    "reason",
    "action",
    "transaction",
    "report_indicators",
]


def _xml_to_data(element: Element) -> Any:
    """Leaves to strings, repeated children to lists: the JSON form of the document."""
    children = list(element)
    if not children:
        return element.text or ""
    data: dict[str, Any] = {}
    for child in children:
        value = _xml_to_data(child)
        if child.tag in data:
            if not isinstance(data[child.tag], list) or child.tag not in _REPEATED:
                data[child.tag] = [data[child.tag], value]
            else:
                data[child.tag].append(value)
        else:
            data[child.tag] = [value] if child.tag in _REPEATED else value
    return data


_REPEATED = {"transaction", "indicator", "party"}


@pytest.fixture
def reviewed_case(database: Database) -> tuple[CaseService, int]:
    clock = FakeClock(T0)
    engine = DecisionEngine(database, FakeSanctions(), clock)
    engine.decide(ev(K.PAYMENT, 12_345, -60, payer="buyer-1", payee="merchant-<7>"))
    decision = engine.decide(
        ev(
            K.PAYMENT,
            250_000,
            payer="buyer-1",
            payee="merchant-<7>",
            payer_age_s=600,
            event_id="order-42",
        )
    )
    assert decision.outcome is Outcome.REVIEW and decision.case_id is not None
    service = CaseService(database, clock)
    service.add_evidence(
        decision.case_id,
        NewEvidence(
            EvidenceKind.TRANSACTION,
            "topup-1",
            {
                "event_id": "topup-1",
                "kind": "top_up",
                "at_ns": T0 - 10**12,
                "amount_minor": 300_000,
                "currency": "EUR",
                "payer_id": None,
                "payee_id": "buyer-1",
            },
        ),
        actor="alice",
    )
    service.add_note(decision.case_id, "Buyer <script>alert(1)</script> & co", actor="alice")
    return service, decision.case_id


def test_goaml_xml_and_json(reviewed_case: tuple[CaseService, int]) -> None:
    service, case_id = reviewed_case
    xml = export_case(
        service, case_id, "goaml-xml", actor="alice", rentity_id="FIU-123", reporter="Alice Martin"
    )
    root = fromstring(xml.encode("utf-8"))
    assert root.tag == "report"
    tags = [child.tag for child in root]
    assert list(dict.fromkeys(tags)) == REPORT_ORDER  # schema order, nothing else
    assert set(REPORT_ORDER) <= set(tags) and tags.count("transaction") == 2
    assert root.findtext("report_code") == "SAR"
    assert root.findtext("entity_reference") == f"CASE-{case_id:06d}"
    assert root.findtext("reporting_person/first_name") == "Alice"
    assert root.findtext("reporting_person/last_name") == "Martin"
    assert "new_account_high_value" in (root.findtext("reason") or "")
    assert [i.text for i in root.iter("indicator")] == ["PAYKEEP-NEW_ACCOUNT_HIGH_VALUE"]
    # Oldest first: the top-up (one known side) then the order (bi-party).
    first, second = root.findall("transaction")
    assert first.findtext("involved_parties/party/account/account") == "buyer-1"
    assert first.findtext("involved_parties/party/role") == "to"
    assert second.findtext("transactionnumber") == "order-42"
    assert second.findtext("amount_local") == "2500.00"
    assert second.findtext("t_from_my_client/from_account/account") == "buyer-1"
    assert second.findtext("t_to_my_client/to_account/account") == "merchant-<7>"
    assert second.findtext("t_from_my_client/from_funds_code") == "E"

    document = json.loads(
        export_case(
            service,
            case_id,
            "goaml-json",
            actor="alice",
            rentity_id="FIU-123",
            reporter="Alice Martin",
        )
    )
    # The same document in both forms (the submission date is the export's own time).
    from_xml = {"report": _xml_to_data(root)}
    for doc in (document, from_xml):
        doc["report"].pop("submission_date")
        doc["report"].pop("action")  # the trail grew by one export between the two
    assert document == from_xml
    assert json.loads(json.dumps(document)) == document

    trail = service.get(case_id).events
    assert [e.detail["format"] for e in trail if e.kind is CaseEventKind.EXPORTED] == [
        "goaml-xml",
        "goaml-json",
    ]


def test_html_is_escaped_and_complete(reviewed_case: tuple[CaseService, int]) -> None:
    service, case_id = reviewed_case
    html = export_case(service, case_id, "html", actor="alice", rentity_id="FIU-123")
    assert html.startswith("<!DOCTYPE html>")
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html
    assert "merchant-&lt;7&gt;" in html
    for heading in (
        "Reason for suspicion",
        "Transactions",
        "Alerts",
        "Counterparty graph",
        "Notes",
        "Decision trail",
    ):
        assert f"<h2>{heading}</h2>" in html
    assert "2500.00" in html and "new_account_high_value" in html


def test_export_refusals_write_nothing(database: Database) -> None:
    service = CaseService(database, FakeClock())
    case = service.open_case(
        title="no money", risk=RiskLevel.LOW, subject_party_ids=["p"], actor="alice"
    )
    for report_format in ("pdf", "goaml-xml"):
        with pytest.raises(CaseInputInvalid):
            export_case(service, case.case_id, report_format, actor="alice", rentity_id="F")
    assert [e.kind for e in service.get(case.case_id).events] == [CaseEventKind.OPENED]
