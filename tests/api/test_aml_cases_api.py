"""The compliance officers' HTTP API over AML cases (``/v1/aml/cases``), through a real
``paykeep serve`` on both databases.

One case comes from the real rules (a buyer refunded again and again: ``refund_abuse``, as in
``test_e2e_refund_aml``); the others are opened with :class:`CaseService` on the server's
database, as the rules engine would, so each test has a case in the state it needs. A second
operator key (for the four-eyes close) is made with the key service on that database: no
route creates operator keys (``POST /v1/api_keys`` makes merchant keys only).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import defusedxml.ElementTree as SafeET
import httpx
import pytest

from paykeep.aml.cases.model import EvidenceKind, RiskLevel
from paykeep.aml.cases.service import CaseService, NewEvidence
from paykeep.config import Settings
from paykeep.db import Database, open_database
from paykeep.security.api_keys import ApiKeyService
from tests.api.test_commerce import assert_error
from tests.api.test_money_routes import Shop
from tests.serverproc import ServerProcess

CASES = "/v1/aml/cases"


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_db(server: ServerProcess) -> Iterator[Database]:
    """The server's own database, for what no route does: opening cases, operator keys."""
    url = server.info["database"]
    settings = Settings(data_dir=server.data_dir, database_url=None if url == "sqlite" else url)
    db = open_database(settings, migrate=False)
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def officer(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(server.operator_key) as client:
        yield client


@pytest.fixture(scope="module")
def second_officer(server: ServerProcess, server_db: Database) -> Iterator[httpx.Client]:
    plain, _view = ApiKeyService(server_db).create("operator", label="second compliance officer")
    with server.client(plain) as client:
        yield client


@pytest.fixture(scope="module")
def merchant(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(server.merchant(0)["api_key"]) as client:
        yield client


@pytest.fixture(scope="module")
def refund_case(server: ServerProcess, officer: httpx.Client) -> dict[str, Any]:
    """The case the real rules open about a buyer refunded three times for what they paid."""
    shop = Shop.open(server)
    try:
        buyer = shop.buyer()
        party = f"buyer:{buyer['id']}"
        for _ in range(3):
            order, _token = shop.paid_order(buyer["id"], 2_000)
            refunded = shop.http.post(f"/v1/orders/{order['id']}/refunds", json={"reason": "n/a"})
            assert refunded.status_code == 201, refunded.text
    finally:
        shop.close()
    listed = officer.get(CASES, params={"state": "open", "limit": 100})
    assert listed.status_code == 200, listed.text
    (case,) = [c for c in listed.json()["data"] if party in c["subject_party_ids"]]
    return case


def open_case(
    server_db: Database, risk: RiskLevel = RiskLevel.MEDIUM, *, transaction: bool = False
) -> int:
    """A case as the rules engine opens one (with a transaction to report, if asked)."""
    party = f"buyer:buy_{uuid.uuid4().hex[:16]}"
    evidence = []
    if transaction:
        event_id = f"payment:pay_{uuid.uuid4().hex[:12]}"
        body = {"event_id": event_id, "kind": "payment", "amount_minor": 90_000,
                "currency": "EUR", "at_ns": 1_767_225_600_000_000_000, "payer_id": party,
                "payee_id": "merchant:mer_0001", "outcome": "review"}  # fmt: skip
        evidence.append(NewEvidence(EvidenceKind.TRANSACTION, event_id, body))
    case = CaseService(server_db).open_case(
        title=f"test: {party}", risk=risk, subject_party_ids=[party], actor="aml:test",
        evidence=evidence,
    )  # fmt: skip
    return case.case_id


def case_file(client: httpx.Client, case_id: int) -> dict[str, Any]:
    response = client.get(f"{CASES}/{case_id}")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def post(
    client: httpx.Client, path: str, body: dict[str, Any] | None = None, key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key or uuid.uuid4().hex}
    return client.post(path, json=body, headers=headers)


def act(client: httpx.Client, case_id: int, action: str, **extra: Any) -> httpx.Response:
    return post(client, f"{CASES}/{case_id}/transition", {"action": action, **extra})


def key_id(client: httpx.Client) -> str:
    return str(client.get("/v1/whoami").json()["key"])


# -- the case from the real rules, worked through ---------------------------------------------


def test_an_officer_works_a_refund_abuse_case_and_exports_its_report(
    officer: httpx.Client, refund_case: dict[str, Any]
) -> None:
    case_id = refund_case["case_id"]
    assert (refund_case["object"], refund_case["state"], refund_case["risk"]) == (
        "aml_case", "open", "medium",
    )  # fmt: skip
    shown = case_file(officer, case_id)
    assert shown["reference"] == f"CASE-{case_id:06d}"
    assert shown["trail"][0]["kind"] == "opened"
    assert len(shown["trail"]) == shown["last_seq"]
    # Evidence as summaries; an item's body is its own route.
    kinds = {e["kind"] for e in shown["evidence"]}
    assert {"alert", "transaction"} <= kinds
    assert all("body" not in e for e in shown["evidence"])
    (alert,) = [e for e in shown["evidence"] if e["kind"] == "alert"]
    item = officer.get(f"{CASES}/{case_id}/evidence/{alert['evidence_id']}")
    assert item.status_code == 200, item.text
    assert item.json()["body"]["rule"] == "refund_abuse"
    assert item.json()["body"]["figures"]["refunds"] == 3

    me = key_id(officer)
    assigned = post(officer, f"{CASES}/{case_id}/assign", {"officer": me})
    assert assigned.status_code == 200, assigned.text
    assert assigned.json()["assignee"] == me
    mine = officer.get(CASES, params={"assignee": me, "limit": 100}).json()["data"]
    assert case_id in [c["case_id"] for c in mine]
    noted = post(officer, f"{CASES}/{case_id}/notes", {"body": "  Three refunds in a day.  "})
    assert noted.status_code == 201, noted.text
    assert (noted.json()["body"], noted.json()["author"]) == ("Three refunds in a day.", me)
    for action, state in (("investigate", "investigating"), ("escalate", "escalated")):
        moved = act(officer, case_id, action, reason=f"{action}: pattern confirmed")
        assert moved.status_code == 200, moved.text
        assert moved.json()["case"]["state"] == state
        assert moved.json()["event"]["kind"] == "transitioned"
        assert moved.json()["event"]["actor"] == me

    xml = post(officer, f"{CASES}/{case_id}/report", {"format": "goaml-xml"})
    assert xml.status_code == 200, xml.text
    assert xml.headers["content-type"].startswith("application/xml")
    assert f"CASE-{case_id:06d}-sar.xml" in xml.headers["content-disposition"]
    root = SafeET.fromstring(xml.content)
    assert root.tag == "report"
    assert root.findtext("entity_reference") == f"CASE-{case_id:06d}"
    assert root.findtext("report_code") == "SAR"
    assert root.findall("transaction")
    assert "PAYKEEP-REFUND_ABUSE" in [i.text for i in root.iter("indicator")]
    html = post(officer, f"{CASES}/{case_id}/report", {"format": "html"})
    assert html.status_code == 200, html.text
    assert html.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in html.headers["content-security-policy"]
    assert f"CASE-{case_id:06d}" in html.text
    as_json = post(officer, f"{CASES}/{case_id}/report", {"format": "goaml-json"})
    assert as_json.json()["report"]["entity_reference"] == f"CASE-{case_id:06d}"

    reported = act(officer, case_id, "report")
    assert reported.status_code == 200, reported.text
    assert reported.json()["case"]["state"] == "reported"
    final = case_file(officer, case_id)
    trail_kinds = [e["kind"] for e in final["trail"]]
    assert trail_kinds[trail_kinds.index("assigned") :] == [
        "assigned", "note_added", "transitioned", "transitioned",
        "exported", "exported", "exported", "transitioned",
    ]  # fmt: skip
    exports = [e for e in final["trail"] if e["kind"] == "exported"]
    assert [(e["actor"], e["detail"]["format"]) for e in exports] == [
        (me, "goaml-xml"), (me, "html"), (me, "goaml-json"),
    ]  # fmt: skip
    assert [n["body"] for n in final["notes"]] == ["Three refunds in a day."]
    # A reported case is final: no reassignment.
    assert_error(post(officer, f"{CASES}/{case_id}/assign", {"officer": me}), 409, "case_closed")


# -- lists ----------------------------------------------------------------------------------


def test_cases_list_newest_first_by_page_and_filter(
    officer: httpx.Client, server_db: Database
) -> None:
    ids = [open_case(server_db) for _ in range(3)]
    queue = f"officer-{uuid.uuid4().hex[:8]}"
    for case_id in ids:
        assert post(officer, f"{CASES}/{case_id}/assign", {"officer": queue}).status_code == 200
    first = officer.get(CASES, params={"assignee": queue, "limit": 2})
    assert first.status_code == 200, first.text
    page = first.json()
    assert (page["object"], page["url"], page["has_more"]) == ("list", CASES, True)
    assert [c["case_id"] for c in page["data"]] == [ids[2], ids[1]]
    after = officer.get(
        CASES, params={"assignee": queue, "limit": 2, "starting_after": str(ids[1])}
    ).json()
    assert ([c["case_id"] for c in after["data"]], after["has_more"]) == ([ids[0]], False)

    assert act(officer, ids[1], "investigate").status_code == 200
    investigating = officer.get(CASES, params={"assignee": queue, "state": "investigating"})
    assert [c["case_id"] for c in investigating.json()["data"]] == [ids[1]]
    still_open = officer.get(CASES, params={"assignee": queue, "state": "open"}).json()["data"]
    assert [c["case_id"] for c in still_open] == [ids[2], ids[0]]
    assert all(c["object"] == "aml_case" and "trail" not in c for c in still_open)


# -- four eyes --------------------------------------------------------------------------------


def test_closing_a_high_risk_case_takes_two_operator_keys(
    officer: httpx.Client, second_officer: httpx.Client, server_db: Database
) -> None:
    case_id = open_case(server_db, RiskLevel.HIGH)
    assert act(officer, case_id, "investigate").status_code == 200
    asked = act(officer, case_id, "close_false_positive", reason="known customer")
    assert asked.status_code == 200, asked.text
    assert asked.json()["event"]["kind"] == "close_requested"
    assert asked.json()["case"]["state"] == "investigating"
    assert asked.json()["case"]["close_requested_by"] == key_id(officer)
    before = case_file(officer, case_id)["last_seq"]
    # The same key again is not a second officer, and writes nothing.
    again = act(officer, case_id, "close_false_positive")
    assert_error(again, 409, "case_second_approver_required", "actor")
    assert case_file(officer, case_id)["last_seq"] == before
    closed = act(second_officer, case_id, "close_false_positive")
    assert closed.status_code == 200, closed.text
    assert closed.json()["case"]["state"] == "closed_false_positive"
    detail = closed.json()["event"]["detail"]
    assert (detail["requested_by"], detail["approved_by"]) == (
        key_id(officer), key_id(second_officer),
    )  # fmt: skip
    assert key_id(officer) != key_id(second_officer)


# -- refusals -------------------------------------------------------------------------------


def test_an_illegal_transition_is_409_and_writes_nothing(
    officer: httpx.Client, server_db: Database
) -> None:
    case_id = open_case(server_db)
    before = case_file(officer, case_id)
    refused = act(officer, case_id, "report")
    error = assert_error(refused, 409, "case_illegal_transition", "action")
    assert "investigate" in error["message"]  # what the state allows
    after = case_file(officer, case_id)
    assert (after["state"], len(after["trail"]), after["last_seq"]) == (
        "open", len(before["trail"]), before["last_seq"],
    )  # fmt: skip


def test_a_merchant_key_is_refused_on_every_route(
    merchant: httpx.Client, officer: httpx.Client, server_db: Database
) -> None:
    case_id = open_case(server_db, transaction=True)
    before = case_file(officer, case_id)
    calls = [
        merchant.get(CASES),
        merchant.get(f"{CASES}/{case_id}"),
        merchant.get(f"{CASES}/{case_id}/evidence/{before['evidence'][0]['evidence_id']}"),
        post(merchant, f"{CASES}/{case_id}/assign", {"officer": "mallory"}),
        post(merchant, f"{CASES}/{case_id}/notes", {"body": "hello"}),
        post(merchant, f"{CASES}/{case_id}/transition", {"action": "investigate"}),
        post(merchant, f"{CASES}/{case_id}/report", {"format": "html"}),
        merchant.get(f"{CASES}/999999999"),  # unknown or not: the same 403
    ]
    for response in calls:
        assert_error(response, 403, "operator_only")
    with httpx.Client(base_url=str(officer.base_url)) as anonymous:
        assert_error(anonymous.get(CASES), 401, "api_key_missing")
    assert case_file(officer, case_id) == before


def test_an_unknown_case_is_404_on_every_route(officer: httpx.Client, server_db: Database) -> None:
    unknown = 2**62
    calls = [
        officer.get(f"{CASES}/{unknown}"),
        officer.get(f"{CASES}/{unknown}/evidence/1"),
        post(officer, f"{CASES}/{unknown}/assign", {"officer": "alice"}),
        post(officer, f"{CASES}/{unknown}/notes", {"body": "hello"}),
        post(officer, f"{CASES}/{unknown}/transition", {"action": "investigate"}),
        post(officer, f"{CASES}/{unknown}/report", {"format": "goaml-xml"}),
    ]
    for response in calls:
        assert_error(response, 404, "case_not_found", "case_id")
    case_id = open_case(server_db)
    assert_error(
        officer.get(f"{CASES}/{case_id}/evidence/{unknown}"),
        404,
        "case_evidence_not_found",
        "evidence_id",
    )


def test_malformed_requests_are_typed_400s_and_write_nothing(
    officer: httpx.Client, server_db: Database
) -> None:
    case_id = open_case(server_db)
    before = case_file(officer, case_id)
    base = f"{CASES}/{case_id}"
    for path, body, code, param in [
        (f"{base}/assign", {"officer": "alice", "role": "admin"}, "parameter_invalid", "role"),
        (f"{base}/assign", {"officer": 42}, "parameter_invalid", "officer"),
        (f"{base}/assign", {}, "parameter_invalid", "officer"),
        (f"{base}/assign", {"officer": "alice smith"}, "case_input_invalid", "officer"),
        (f"{base}/assign", {"officer": "a" * 65}, "parameter_invalid", "officer"),
        (f"{base}/notes", {"body": "x" * 10_001}, "parameter_invalid", "body"),
        (f"{base}/notes", {"body": "   "}, "case_input_invalid", "note"),
        (f"{base}/notes", {"body": "nul \u0000 inside"}, "case_input_invalid", "note"),
        (f"{base}/notes", {"body": ["a list"]}, "parameter_invalid", "body"),
        (f"{base}/transition", {"action": "approve"}, "parameter_invalid", "action"),
        (f"{base}/transition", {"action": "investigate", "reason": "r" * 2_001},
         "parameter_invalid", "reason"),
        (f"{base}/transition", {"action": "investigate", "state": "reported"},
         "parameter_invalid", "state"),
        (f"{base}/report", {"format": "pdf"}, "parameter_invalid", "format"),
        (f"{base}/report", {"format": "html", "rentity_id": ""}, "parameter_invalid",
         "rentity_id"),
    ]:  # fmt: skip
        assert_error(post(officer, path, body), 400, code, param)
    not_json = officer.post(
        f"{base}/notes",
        content=b'{"body": ',
        headers={"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex},
    )
    assert_error(not_json, 400, "body_invalid_json")
    too_large = officer.post(
        f"{base}/notes",
        content=b'{"body": "' + b"x" * (65 * 1024) + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert_error(too_large, 413, "body_too_large")
    # A case without transaction evidence has no report to file.
    assert_error(post(officer, f"{base}/report", {}), 400, "case_input_invalid", "case_id")
    for params, param in [
        ({"state": "shelved"}, "state"),
        ({"starting_after": "abc"}, "starting_after"),
        ({"limit": 0}, "limit"),
        ({"assignee": "no spaces"}, "assignee"),
    ]:
        response = officer.get(CASES, params=params)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"]["param"] == param
    assert_error(officer.get(f"{CASES}/abc"), 400, "parameter_invalid", "case_id")
    assert case_file(officer, case_id) == before


# -- idempotency ------------------------------------------------------------------------------


def test_a_retried_post_replays_its_answer_and_acts_once(
    officer: httpx.Client, server_db: Database
) -> None:
    case_id = open_case(server_db, transaction=True)
    key = uuid.uuid4().hex
    first = post(officer, f"{CASES}/{case_id}/notes", {"body": "first"}, key=key)
    assert first.status_code == 201, first.text
    replay = post(officer, f"{CASES}/{case_id}/notes", {"body": "first"}, key=key)
    assert (replay.status_code, replay.content) == (201, first.content)
    assert replay.headers["Idempotent-Replayed"] == "true"
    other = post(officer, f"{CASES}/{case_id}/notes", {"body": "second"}, key=key)
    assert_error(other, 409, "idempotency_key_reused")
    assert [n["body"] for n in case_file(officer, case_id)["notes"]] == ["first"]

    # A refusal is the key's answer too: a retry gets it again and nothing is written.
    refused_key = uuid.uuid4().hex
    refused = post(officer, f"{CASES}/{case_id}/transition", {"action": "report"}, refused_key)
    assert_error(refused, 409, "case_illegal_transition")
    again = post(officer, f"{CASES}/{case_id}/transition", {"action": "report"}, refused_key)
    assert (again.status_code, again.content) == (409, refused.content)

    # The report: the same document byte for byte, one export in the trail.
    report_key = uuid.uuid4().hex
    exported = post(officer, f"{CASES}/{case_id}/report", {"format": "goaml-xml"}, report_key)
    assert exported.status_code == 200, exported.text
    replayed = post(officer, f"{CASES}/{case_id}/report", {"format": "goaml-xml"}, report_key)
    assert (replayed.status_code, replayed.content) == (200, exported.content)
    assert replayed.headers["content-type"].startswith("application/xml")
    assert replayed.headers["Idempotent-Replayed"] == "true"
    trail = case_file(officer, case_id)["trail"]
    assert [e["kind"] for e in trail].count("exported") == 1
    assert [e["kind"] for e in trail] == ["opened", "evidence_added", "note_added", "exported"]


# -- the OpenAPI document -------------------------------------------------------------------


def test_every_aml_case_route_is_documented_and_operator_only() -> None:
    from fastapi.routing import APIRoute

    from paykeep.api.auth import authenticate_operator
    from paykeep.api.foundation import build_app
    from paykeep.api.routes import aml, register_routes

    app = build_app("t", "1")
    register_routes(app)
    document = app.openapi()
    routes = [r for r in aml.router.routes if isinstance(r, APIRoute)]
    ours = {(method, route.path): route for route in routes for method in route.methods}
    # list, case file, evidence item; assign, notes, transition, report
    assert len(ours) == 7
    for (method, path), route in ours.items():
        assert path.startswith(CASES), path
        operation = document["paths"][path][method.lower()]
        assert operation.get("summary"), (method, path)
        assert operation["tags"] == ["aml cases"], (method, path)
        assert "security" in operation, (method, path)
        assert "422" not in operation["responses"], (method, path)
        assert operation["responses"]["403"], (method, path)
        # Operator-only by the route's own dependency, not by a check inside the handler.
        calls = [d.call for d in route.dependant.dependencies]
        assert authenticate_operator in calls, (method, path)
        if method == "POST":
            assert {"400", "404", "409"} <= set(operation["responses"]), (method, path)
    report = document["paths"][f"{CASES}/{{case_id}}/report"]["post"]
    assert {"application/xml", "text/html"} <= set(report["responses"]["200"]["content"])
    transition = document["components"]["schemas"]["TransitionIn"]
    assert set(transition["properties"]["action"]["enum"]) == {
        "investigate", "escalate", "report", "close_false_positive",
    }  # fmt: skip
    assert transition["additionalProperties"] is False
