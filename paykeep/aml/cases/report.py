"""Suspicious activity report export: goAML-structured XML or JSON, and human-readable HTML.

The structure follows the goAML report schema's element names and order (``report`` with
``rentity_id``, ``submission_code``, ``report_code``, ``entity_reference``,
``submission_date``, ``currency_code_local``, ``reporting_person``, ``reason``, ``action``,
``transaction``\\* and ``report_indicators``). A transaction with both sides known is bi-party
(``t_from_my_client``/``t_to_my_client`` with ``from_account``/``to_account``); one with a
single known side lists it under ``involved_parties/party``. Code values (submission, funds,
transmode, indicators) are FIU-specific lookups: the tables below hold Paykeep's defaults.

Parties appear by their Paykeep account ids, never by name: the platform stores no personal
data with an alert; the reporting officer completes persons from KYC records at submission.
PDF output is not provided (HTML only; print the HTML to PDF if one is needed).

One document model (:func:`build_goaml`, nested dicts whose leaves are strings and whose
repeated elements are lists) is rendered both as XML and as JSON, so the two cannot drift.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from typing import Any, Final

from paykeep.aml.cases import limits
from paykeep.aml.cases.errors import CaseInputInvalid, CaseNotFound
from paykeep.aml.cases.model import (
    REPORT_FORMATS,
    EvidenceKind,
    check_actor,
    check_text,
    record_export,
)
from paykeep.aml.cases.repository import CaseRepository
from paykeep.aml.cases.service import CaseFile, CaseService
from paykeep.clock import ns_to_datetime
from paykeep.money import Money

FORMATS: Final = REPORT_FORMATS
SUBMISSION_CODE: Final = "E"  # electronic submission
REPORT_CODE: Final = "SAR"
FUNDS_CODE: Final = "E"  # electronic funds (FIU lookup)
TRANSMODE_CODES: Final[Mapping[str, str]] = {
    "payment": "EP",  # e-commerce payment
    "release": "EP",
    "refund": "RF",
    "top_up": "TU",
    "payout": "PO",
    "card_authorisation": "CA",
}
INSTITUTION_NAME: Final = "Paykeep"
#: The reporting entity's id at the FIU, and the reporting officer's "First Last".
RENTITY_ID_LENGTH_MAX: Final = 64
REPORTER_LENGTH_MAX: Final = 200


@dataclass(frozen=True, slots=True)
class ReportHeader:
    """Who files the report."""

    rentity_id: str
    reporter_first_name: str
    reporter_last_name: str
    submitted_at_ns: int


def _iso(ns: int) -> str:
    return ns_to_datetime(ns).strftime("%Y-%m-%dT%H:%M:%S")


def _account(party_id: str, currency: str, rentity_id: str) -> dict[str, Any]:
    return {
        "institution_name": INSTITUTION_NAME,
        "institution_code": rentity_id,
        "non_bank_institution": "true",
        "account": party_id,
        "currency_code": currency,
        "client_number": party_id,
    }


def _transaction(body: Mapping[str, Any], rentity_id: str) -> dict[str, Any]:
    currency = str(body["currency"])
    amount = Money(int(body["amount_minor"]), currency)
    kind = str(body["kind"])
    node: dict[str, Any] = {
        "transactionnumber": str(body["event_id"]),
        "internal_ref_number": str(body["event_id"]),
        "transaction_location": "online",
        "transaction_description": f"{kind} of {amount} ({body.get('outcome', 'recorded')})",
        "date_transaction": _iso(int(body["at_ns"])),
        "transmode_code": TRANSMODE_CODES.get(kind, "OT"),
        "amount_local": amount.format(),
    }
    payer, payee = body.get("payer_id"), body.get("payee_id")
    if payer and payee:
        t_from: dict[str, Any] = {
            "from_funds_code": FUNDS_CODE,
            "from_account": _account(str(payer), currency, rentity_id),
        }
        if body.get("payer_country"):
            t_from["from_country"] = str(body["payer_country"])
        t_to: dict[str, Any] = {
            "to_funds_code": FUNDS_CODE,
            "to_account": _account(str(payee), currency, rentity_id),
        }
        if body.get("payee_country"):
            t_to["to_country"] = str(body["payee_country"])
        node["t_from_my_client"] = t_from
        node["t_to_my_client"] = t_to
    else:
        role, party_id = ("from", payer) if payer else ("to", payee)
        party: dict[str, Any] = {
            "role": role,
            "account": _account(str(party_id), currency, rentity_id),
            "funds_code": FUNDS_CODE,
            "significance": "5",
        }
        node["involved_parties"] = {"party": [party]}
    node["comments"] = f"currency {currency}"
    return node


def build_goaml(case_file: CaseFile, header: ReportHeader) -> dict[str, Any]:
    """The report as nested dicts (leaves are strings, repeated elements are lists)."""
    case = case_file.case
    alerts = [e.body for e in case_file.evidence if e.kind is EvidenceKind.ALERT]
    transactions = [e.body for e in case_file.evidence if e.kind is EvidenceKind.TRANSACTION]
    if not transactions:
        raise CaseInputInvalid(
            f"{case.reference} holds no transaction evidence: a goAML transaction report "
            "needs at least one",
            param="case_id",
        )
    transactions = sorted(transactions, key=lambda t: (int(t["at_ns"]), str(t["event_id"])))
    transactions = transactions[: limits.REPORT_TRANSACTIONS_MAX]
    local = Counter(str(t["currency"]) for t in transactions).most_common(1)[0][0]
    reasons = [
        f"{a['rule']} v{a['version']} (score {a['score_bp'] / 10_000:.2f}): {a['explanation']}"
        for a in alerts
        if not a.get("shadow")
    ]
    reasons += [n.body for n in case_file.notes]
    actions = [
        f"{_iso(e.at_ns)} {e.actor}: {e.kind.value}"
        + (f" -> {e.to_state.value}" if e.to_state else "")
        for e in case_file.events
    ]
    indicators = sorted({f"PAYKEEP-{str(a['rule']).upper()}" for a in alerts})
    report: dict[str, Any] = {
        "rentity_id": header.rentity_id,
        "submission_code": SUBMISSION_CODE,
        "report_code": REPORT_CODE,
        "entity_reference": case.reference,
        "submission_date": _iso(header.submitted_at_ns),
        "currency_code_local": local,
        "reporting_person": {
            "first_name": header.reporter_first_name,
            "last_name": header.reporter_last_name,
        },
        "reason": "\n".join(reasons) or case.title,
        "action": "\n".join(actions),
        "transaction": [_transaction(t, header.rentity_id) for t in transactions],
    }
    if indicators:
        report["report_indicators"] = {"indicator": indicators}
    return {"report": report}


def _append(parent: ET.Element, tag: str, value: Any) -> None:
    if isinstance(value, list):
        for item in value:
            _append(parent, tag, item)
        return
    element = ET.SubElement(parent, tag)
    if isinstance(value, dict):
        for child_tag, child in value.items():
            _append(element, child_tag, child)
    else:
        assert isinstance(value, str), (tag, value)
        element.text = value


def to_xml(document: Mapping[str, Any]) -> str:
    ((tag, body),) = document.items()
    root = ET.Element(tag)
    for child_tag, child in body.items():
        _append(root, child_tag, child)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def to_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def to_html(case_file: CaseFile, header: ReportHeader) -> str:
    """A self-contained page for people: summary, reason, transactions, alerts, counterparty
    graph, notes and the full decision trail. Every value is escaped."""
    case = case_file.case
    document = build_goaml(case_file, header)["report"]
    e = escape

    def table(head: list[str], rows: list[list[str]]) -> str:
        cells = "".join(f"<th>{e(h)}</th>" for h in head)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"

    tx_rows = []
    for t in document["transaction"]:
        sides = t.get("t_from_my_client"), t.get("t_to_my_client")
        if sides[0] is not None and sides[1] is not None:
            source, target = sides[0]["from_account"]["account"], sides[1]["to_account"]["account"]
        else:
            party = t["involved_parties"]["party"][0]
            source = party["account"]["account"] if party["role"] == "from" else "(outside)"
            target = party["account"]["account"] if party["role"] == "to" else "(outside)"
        tx_rows.append(
            [
                t["transactionnumber"],
                t["date_transaction"],
                t["transmode_code"],
                t["amount_local"],
                t["comments"],
                source,
                target,
            ]
        )
    alert_rows = [
        [
            str(a.body["rule"]),
            str(a.body["version"]),
            f"{a.body['score_bp'] / 10_000:.2f}",
            "shadow" if a.body.get("shadow") else "live",
            str(a.body.get("party_id") or ""),
            str(a.body["explanation"]),
        ]
        for a in case_file.evidence
        if a.kind is EvidenceKind.ALERT
    ]
    edge_rows = [
        [
            str(edge["from"]),
            str(edge["to"]),
            str(edge["count"]),
            Money(int(edge["amount_minor"]), str(edge["currency"])).format(),
            str(edge["currency"]),
        ]
        for g in case_file.evidence
        if g.kind is EvidenceKind.GRAPH
        for edge in g.body.get("edges", [])
    ]
    note_rows = [[_iso(n.at_ns), n.author, n.body] for n in case_file.notes]
    trail_rows = [
        [
            str(ev.seq),
            _iso(ev.at_ns),
            ev.actor,
            ev.kind.value,
            ev.from_state.value if ev.from_state else "",
            ev.to_state.value if ev.to_state else "",
            json.dumps(dict(ev.detail), sort_keys=True),
        ]
        for ev in case_file.events
    ]
    summary = [
        ["Reference", case.reference],
        ["Title", case.title],
        ["State", case.state.value],
        ["Risk", case.risk.value],
        ["Assignee", case.assignee or "(unassigned)"],
        ["Subjects", ", ".join(case.subject_party_ids)],
        ["Reporting entity", header.rentity_id],
        ["Reporting officer", f"{header.reporter_first_name} {header.reporter_last_name}"],
        ["Submission date", document["submission_date"]],
        ["Indicators", ", ".join(document.get("report_indicators", {}).get("indicator", []))],
    ]
    reason = "".join(f"<li>{e(line)}</li>" for line in document["reason"].splitlines())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Suspicious activity report {e(case.reference)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #999; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }}
th {{ background: #eee; }}
</style></head><body>
<h1>Suspicious activity report {e(case.reference)}</h1>
<h2>Summary</h2>
{table(["Field", "Value"], summary)}
<h2>Reason for suspicion</h2>
<ul>{reason}</ul>
<h2>Transactions</h2>
{table(["Number", "Date", "Mode", "Amount", "Comments", "From", "To"], tx_rows)}
<h2>Alerts</h2>
{table(["Rule", "Version", "Score", "Mode", "Party", "Explanation"], alert_rows)}
<h2>Counterparty graph</h2>
{table(["From", "To", "Transactions", "Amount", "Currency"], edge_rows)}
<h2>Notes</h2>
{table(["Time", "Author", "Note"], note_rows)}
<h2>Decision trail</h2>
{table(["#", "Time", "Actor", "Event", "From", "To", "Detail"], trail_rows)}
</body></html>
"""


def render(case_file: CaseFile, header: ReportHeader, report_format: str) -> str:
    if report_format == "goaml-xml":
        return to_xml(build_goaml(case_file, header))
    if report_format == "goaml-json":
        return to_json(build_goaml(case_file, header))
    if report_format == "html":
        return to_html(case_file, header)
    raise CaseInputInvalid(
        f"unknown report format {report_format!r}; expected one of {', '.join(FORMATS)}",
        param="format",
    )


def export_case(
    service: CaseService,
    case_id: int,
    report_format: str,
    *,
    actor: str,
    rentity_id: str,
    reporter: str | None = None,
) -> str:
    """Render a case's report and record the export in its trail (one write transaction).

    ``reporter`` ("First Last") defaults to the acting officer's id. The format and the names
    are checked before anything is written; a case without transactions writes nothing.
    """
    check_export(report_format, actor=actor, rentity_id=rentity_id, reporter=reporter)
    with service.database.write() as conn:
        return export_in(
            CaseRepository(conn),
            case_id,
            report_format,
            actor=actor,
            rentity_id=rentity_id,
            reporter=reporter,
            at_ns=service.clock.now_ns(),
        )


def check_export(
    report_format: str, *, actor: str, rentity_id: str, reporter: str | None
) -> tuple[str, str, str]:
    """The shape of an export request (format, actor, names), checked before any lock is
    taken; returns ``(rentity_id, reporter's first name, last name)``."""
    if report_format not in FORMATS:
        render_check = f"unknown report format {report_format!r}; expected one of "
        raise CaseInputInvalid(render_check + ", ".join(FORMATS), param="format")
    check_actor(actor)
    rentity = check_text(rentity_id, "rentity_id", RENTITY_ID_LENGTH_MAX)
    first, _, last = check_text(reporter or actor, "reporter", REPORTER_LENGTH_MAX).rpartition(" ")
    return rentity, first or "-", last


def export_in(
    repo: CaseRepository,
    case_id: int,
    report_format: str,
    *,
    actor: str,
    rentity_id: str,
    reporter: str | None,
    at_ns: int,
) -> str:
    """:func:`export_case` inside the caller's transaction (the HTTP API's, which also holds
    the request's Idempotency-Key record)."""
    rentity, first, last = check_export(
        report_format, actor=actor, rentity_id=rentity_id, reporter=reporter
    )
    case = repo.get(case_id, for_update=True)
    if case is None:
        raise CaseNotFound(f"no case {case_id}", param="case_id")
    case, event = record_export(case, report_format, actor=actor, at_ns=at_ns)
    repo.save(case, event)
    case_file = CaseFile(
        case,
        tuple(repo.events(case_id)),
        tuple(repo.notes(case_id)),
        tuple(repo.evidence(case_id)),
    )
    header = ReportHeader(rentity, first, last, event.at_ns)
    # Rendering inside the transaction: a report that cannot be built records no export.
    return render(case_file, header, report_format)
