"""/v1/aml/cases: the compliance officers' HTTP API over AML cases (``paykeep.aml.cases``),
the same use cases as ``paykeep aml cases ...`` (mounted by ``routes/__init__.py``).

**Operator only.** Every route takes :data:`OperatorPrincipal`: a merchant key is ``403
operator_only`` whatever it asks (cases are about merchants' buyers and merchants themselves;
that a case exists is never shown to one). The acting officer is the operator API key's id
(``principal.key_id``): it is what the decision trail records, so the four-eyes rule
(closing a high-risk case takes two distinct officers) is two distinct operator keys, and the
same key twice is ``409 case_second_approver_required``.

**Writes are POSTs with an Idempotency-Key**, run with the case command *inside* the key's
transaction (``assign_in``, ``add_note_in``, ``act_in``, ``export_in``): the command and the
key's stored answer commit together. A refused command (``409 case_illegal_transition``...)
writes nothing but its stored error, so a retry gets the same refusal.

**The suspicious activity report is a POST** (``/report``), not a GET: each export writes an
``exported`` event to the case's trail (who took the report out, when, in which format) — a
side effect a GET must not have (proxies, prefetchers and retries repeat GETs freely). With an
Idempotency-Key, a retry returns the same document, byte for byte, and records no second
export. The answer is the document itself (``application/xml``, ``application/json`` or
``text/html``), not JSON about it; errors keep the one JSON error shape.

Lists are newest first with ``limit`` / ``starting_after`` (a case id) / ``has_more``, as every
list of the API. The case file shows evidence as summaries (kind, reference, who added it);
one item's body is ``GET .../evidence/{evidence_id}`` (an item may hold up to 256 KiB, a case
up to 2,000 items). Nothing is shown that the case does not already hold: parties appear by
account id only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal, get_args

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from paykeep.aml.cases import limits
from paykeep.aml.cases.model import REPORT_FORMATS, Case, CaseAction, CaseEvent, CaseState
from paykeep.aml.cases.report import (
    RENTITY_ID_LENGTH_MAX,
    REPORTER_LENGTH_MAX,
    export_in,
)
from paykeep.aml.cases.repository import CaseRepository, Evidence, Note
from paykeep.aml.cases.service import act_in, add_note_in, assign_in
from paykeep.api.auth import OperatorPrincipal
from paykeep.api.errors import JSON_MEDIA_TYPE, ParameterInvalid, json_bytes
from paykeep.api.idempotency import (
    REPLAYED_HEADER,
    Body,
    IdempotencyMeta,
    IdempotentRequest,
    IdempotentResult,
    result_response,
    run_idempotent,
)
from paykeep.api.pagination import Page, page_response
from paykeep.api.runtime import Runtime, RuntimeDep
from paykeep.payments.service import Tx
from paykeep.security.api_keys import Principal

router = APIRouter(tags=["aml cases"])

#: Case ids are BIGINT: a path or cursor beyond this names no case.
CASE_ID_MAX: Final = 2**63 - 1
#: ``starting_after`` of the case list: a case id in decimal.
CASE_CURSOR_PATTERN: Final = r"^[1-9][0-9]{0,18}$"
#: The reporting entity's id at the FIU when the request names none (the CLI's default too).
DEFAULT_RENTITY_ID: Final = "PAYKEEP"
#: Media type and file extension of each report format.
REPORT_MEDIA: Final[Mapping[str, tuple[str, str]]] = {
    "goaml-xml": ("application/xml", "xml"),
    "goaml-json": ("application/json", "json"),
    "html": ("text/html; charset=utf-8", "html"),
}
#: The HTML report is self-contained (inline style, no script): the browser may load nothing
#: else from it, whatever a case's text holds (it is escaped as well).
REPORT_HTML_POLICY: Final = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'"

ReportFormat = Literal["goaml-xml", "goaml-json", "html"]
# Literals, not the enums: FastAPI hands the model parsed JSON, which strict mode would only
# accept as enum instances. The asserts keep them equal to the model's sets.
ActionName = Literal["investigate", "escalate", "report", "close_false_positive"]
assert set(get_args(ActionName)) == {a.value for a in CaseAction}, "ActionName is stale"
assert set(get_args(ReportFormat)) == set(REPORT_FORMATS) == set(REPORT_MEDIA)

CaseId = Annotated[
    int, Path(ge=1, le=CASE_ID_MAX, description="The case id (the number in CASE-000042).")
]
EvidenceId = Annotated[int, Path(ge=1, le=CASE_ID_MAX, description="The evidence item's id.")]


# -- request bodies -------------------------------------------------------------------------


class _Body(BaseModel):
    # strict: "42" is not a number and 42 is not text; unknown fields are refused.
    model_config = ConfigDict(extra="forbid", strict=True)


class AssignIn(_Body):
    officer: str = Field(
        min_length=1,
        max_length=limits.ACTOR_LENGTH_MAX,
        description="The officer the case goes to: letters, digits and `_.@:+-` — usually the "
        "officer's operator key id, the id the trail records for their actions.",
        examples=["key_0001a2b3c4d5e6f7"],
    )


class NoteIn(_Body):
    body: str = Field(
        min_length=1,
        max_length=limits.NOTE_LENGTH_MAX,
        description="The note (kept as written, trimmed; valid text, no NUL).",
        examples=["Called the merchant: the three refunds were for damaged parcels."],
    )


class TransitionIn(_Body):
    action: ActionName = Field(
        description="`investigate` (open → investigating), `escalate` (investigating → "
        "escalated), `report` (escalated → reported), `close_false_positive` (investigating "
        "or escalated → closed_false_positive; a high-risk case needs it from two officers)."
    )
    reason: str | None = Field(
        default=None,
        min_length=1,
        max_length=limits.REASON_LENGTH_MAX,
        description="Why (kept in the trail).",
    )


class ReportIn(_Body):
    format: ReportFormat = Field(
        default="goaml-xml",
        description="goAML XML or JSON (one document model), or HTML for people.",
    )
    rentity_id: str = Field(
        default=DEFAULT_RENTITY_ID,
        min_length=1,
        max_length=RENTITY_ID_LENGTH_MAX,
        description="The reporting entity's id at the FIU.",
    )
    reporter: str | None = Field(
        default=None,
        min_length=1,
        max_length=REPORTER_LENGTH_MAX,
        description="The reporting officer as 'First Last' (default: the operator key's id).",
    )


# -- rendering ------------------------------------------------------------------------------


def _ok(document: Any, status: int = 200) -> Response:
    return Response(json_bytes(document), status_code=status, media_type=JSON_MEDIA_TYPE)


def case_document(case: Case) -> dict[str, Any]:
    return {"object": "aml_case", **case.to_json()}


def evidence_summary(item: Evidence) -> dict[str, Any]:
    """An evidence item without its body (``GET .../evidence/{id}`` has it)."""
    document = item.to_json()
    del document["body"]
    return document


def note_document(case_id: int, note: Note) -> dict[str, Any]:
    return {"object": "aml_case_note", "case_id": case_id, **note.to_json()}


def transition_document(case: Case, event: CaseEvent) -> dict[str, Any]:
    return {"object": "aml_case_transition", "case": case_document(case), "event": event.to_json()}


_ERROR_REF: Final = {"$ref": "#/components/schemas/Error"}


def _errors(*cases: tuple[int, str, str]) -> dict[int | str, Any]:
    """OpenAPI responses for typed errors: ``(status, code, message)``; one example each."""
    responses: dict[int | str, Any] = {}
    for status, code, message in cases:
        example = {"type": "…", "code": code, "message": message, "param": None,
                   "request_id": "req_…"}  # fmt: skip
        entry = responses.setdefault(
            status,
            {"description": message, "content": {"application/json": {"schema": _ERROR_REF}}},
        )
        examples = entry["content"]["application/json"].setdefault("examples", {})
        examples[code] = {"value": {"error": example}}
    return responses


_FORBIDDEN: Final = (403, "operator_only", "Only an operator key may do this.")
_NOT_FOUND: Final = (404, "case_not_found", "No such case.")
_INPUT: Final = (400, "case_input_invalid", "An officer, note or reason out of bounds.")
_CLOSED: Final = (409, "case_closed", "The case is reported or closed.")
_REUSED: Final = (409, "idempotency_key_reused", "The key was used with another request.")
_CASE_EXAMPLE: Final = {
    "object": "aml_case", "case_id": 42, "reference": "CASE-000042",
    "title": "refund_abuse: buyer:buy_0001a2b3c4d5e6f9", "state": "investigating",
    "risk": "medium", "assignee": "key_0001a2b3c4d5e6f7", "close_requested_by": None,
    "subject_party_ids": ["buyer:buy_0001a2b3c4d5e6f9"], "source_event_id": "refund:rf_0001",
    "opened_at_ns": 1767225600000000000, "updated_at_ns": 1767229200000000000, "last_seq": 7,
}  # fmt: skip

_CASE_FILE_EXAMPLE: Final = {
    **_CASE_EXAMPLE,
    "trail": [{"seq": 1, "at_ns": 1767225600000000000, "actor": "aml:refund_abuse",
               "kind": "opened", "from_state": None, "to_state": "open", "detail": {}}],
    "notes": [],
    "evidence": [{"evidence_id": 7, "at_ns": 1767225600000000000, "kind": "alert",
                  "ref": "alert:refund_abuse:...", "added_by": "aml:refund_abuse"}],
}  # fmt: skip


def _example(description: str, example: Mapping[str, Any]) -> dict[int | str, Any]:
    return {
        200: {"description": description, "content": {"application/json": {"example": example}}}
    }


# -- running a command ------------------------------------------------------------------------


def _once(
    runtime: Runtime,
    principal: Principal,
    idem: IdempotentRequest,
    command: Callable[[CaseRepository, int], tuple[int, Body]],
) -> IdempotentResult:
    """``command(repo, at_ns)`` at most once per Idempotency-Key, in the transaction that
    stores the key's answer (the payments writer's: on SQLite it shares the group commit)."""
    payments = runtime.payments

    def operation(tx: Tx) -> tuple[int, Body]:
        return command(CaseRepository(tx.conn), runtime.cases.clock.now_ns())

    return run_idempotent(payments.transaction, principal, idem, operation, clock=payments.clock)


def _case_cursor(value: str | None) -> int:
    """``starting_after`` as a case id (0: the first page)."""
    if value is None:
        return 0
    if not value.isdigit() or not value.isascii() or not 1 <= int(value) <= CASE_ID_MAX:
        raise ParameterInvalid("starting_after: a case id (decimal digits)", param="starting_after")
    return int(value)


# -- routes ---------------------------------------------------------------------------------


@router.get(
    "/v1/aml/cases",
    summary="AML cases, newest first (operator).",
    description="Filter by `state` and by `assignee` (an officer's own queue). "
    "`starting_after` is the `case_id` of the last case of the previous page.",
    responses={**_errors(_FORBIDDEN, _INPUT)},
)
def list_cases(
    principal: OperatorPrincipal,
    runtime: RuntimeDep,
    page: Page,
    state: Annotated[CaseState | None, Query(description="Only cases in this state.")] = None,
    assignee: Annotated[
        str | None,
        Query(min_length=1, max_length=limits.ACTOR_LENGTH_MAX, description="Only theirs."),
    ] = None,
) -> Response:
    del principal  # authorisation only
    rows = runtime.cases.list(
        state,
        assignee=assignee,
        after_id=_case_cursor(page.starting_after),
        limit=page.fetch,
        newest_first=True,
    )
    return page_response(page, rows, case_document)


@router.get(
    "/v1/aml/cases/{case_id}",
    summary="A case file: the case, its decision trail, notes and evidence summaries.",
    description="`trail` is the append-only decision trail (`seq` from 1); `evidence` lists "
    "each item's kind, reference and who added it — its body is at "
    "`GET /v1/aml/cases/{case_id}/evidence/{evidence_id}`.",
    responses={
        **_example("The case file.", _CASE_FILE_EXAMPLE),
        **_errors(_FORBIDDEN, _NOT_FOUND),
    },
)
def get_case(case_id: CaseId, principal: OperatorPrincipal, runtime: RuntimeDep) -> Response:
    del principal
    case_file = runtime.cases.get(case_id)
    return _ok(
        {
            **case_document(case_file.case),
            "trail": [e.to_json() for e in case_file.events],
            "notes": [n.to_json() for n in case_file.notes],
            "evidence": [evidence_summary(e) for e in case_file.evidence],
        }
    )


@router.get(
    "/v1/aml/cases/{case_id}/evidence/{evidence_id}",
    summary="One evidence item of a case, with its body (an alert, a transaction, a graph).",
    responses=_errors(
        _FORBIDDEN, _NOT_FOUND, (404, "case_evidence_not_found", "The case holds no such item.")
    ),
)
def get_case_evidence(
    case_id: CaseId, evidence_id: EvidenceId, principal: OperatorPrincipal, runtime: RuntimeDep
) -> Response:
    del principal
    item = runtime.cases.evidence_item(case_id, evidence_id)
    return _ok({"object": "aml_case_evidence", "case_id": case_id, **item.to_json()})


@router.post(
    "/v1/aml/cases/{case_id}/assign",
    summary="Assign a case to an officer (operator).",
    description="Recorded in the trail with the acting operator key. A reported or closed "
    "case is `409 case_closed`.",
    responses={**_example("The case.", _CASE_EXAMPLE),
               **_errors(_INPUT, _FORBIDDEN, _NOT_FOUND, _CLOSED, _REUSED)},
)  # fmt: skip
def assign_case(
    case_id: CaseId,
    body: AssignIn,
    principal: OperatorPrincipal,
    idem: IdempotencyMeta,
    runtime: RuntimeDep,
) -> Response:
    def command(repo: CaseRepository, at_ns: int) -> tuple[int, Body]:
        case = assign_in(repo, case_id, body.officer, actor=principal.key_id, at_ns=at_ns)
        return 200, case_document(case)

    return result_response(_once(runtime, principal, idem, command))


@router.post(
    "/v1/aml/cases/{case_id}/notes",
    status_code=201,
    summary="Add a note to a case, in any state (operator).",
    responses=_errors(
        _INPUT, _FORBIDDEN, _NOT_FOUND, _REUSED,
        (409, "case_limit_reached", "The case holds as many notes as it may."),
    ),
)  # fmt: skip
def add_case_note(
    case_id: CaseId,
    body: NoteIn,
    principal: OperatorPrincipal,
    idem: IdempotencyMeta,
    runtime: RuntimeDep,
) -> Response:
    def command(repo: CaseRepository, at_ns: int) -> tuple[int, Body]:
        note = add_note_in(repo, case_id, body.body, actor=principal.key_id, at_ns=at_ns)
        return 201, note_document(case_id, note)

    return result_response(_once(runtime, principal, idem, command))


@router.post(
    "/v1/aml/cases/{case_id}/transition",
    summary="Move a case through its state machine (operator).",
    description="Answers the case and the trail event written. Closing a **high-risk** case "
    "as a false positive takes two operator keys: the first `close_false_positive` writes a "
    "`close_requested` event (the state does not change), the same action by another key "
    "closes it; the same key again is `409 case_second_approver_required`. An action the "
    "state does not allow is `409 case_illegal_transition` and writes nothing.",
    responses=_errors(
        _INPUT, _FORBIDDEN, _NOT_FOUND, _REUSED,
        (409, "case_illegal_transition", "The action is not allowed from the case's state."),
        (409, "case_second_approver_required", "A different officer must approve the closure."),
    ),
)  # fmt: skip
def transition_case(
    case_id: CaseId,
    body: TransitionIn,
    principal: OperatorPrincipal,
    idem: IdempotencyMeta,
    runtime: RuntimeDep,
) -> Response:
    def command(repo: CaseRepository, at_ns: int) -> tuple[int, Body]:
        case, event = act_in(
            repo,
            case_id,
            CaseAction(body.action),
            actor=principal.key_id,
            at_ns=at_ns,
            reason=body.reason,
        )
        return 200, transition_document(case, event)

    return result_response(_once(runtime, principal, idem, command))


@router.post(
    "/v1/aml/cases/{case_id}/report",
    summary="Export the case's suspicious activity report (goAML XML/JSON or HTML).",
    description="A POST because the export is recorded in the case's trail (an `exported` "
    "event naming the operator key and the format); with an `Idempotency-Key` a retry "
    "answers the same document and records nothing more. The answer is the report itself "
    "(`application/xml`, `application/json` or `text/html`, as an attachment). Parties "
    "appear by account id only; the filing officer completes persons from KYC records. A "
    "case without transaction evidence cannot be reported: `400 case_input_invalid`.",
    responses={
        200: {
            "description": "The report.",
            "content": {"application/xml": {}, "application/json": {}, "text/html": {}},
        },
        **_errors(_INPUT, _FORBIDDEN, _NOT_FOUND, _REUSED),
    },
)
def export_case_report(
    case_id: CaseId,
    principal: OperatorPrincipal,
    idem: IdempotencyMeta,
    runtime: RuntimeDep,
    report: ReportIn | None = None,
) -> Response:
    body = report or ReportIn()  # no body: goAML XML for the default reporting entity

    def command(repo: CaseRepository, at_ns: int) -> tuple[int, Body]:
        text = export_in(
            repo,
            case_id,
            body.format,
            actor=principal.key_id,
            rentity_id=body.rentity_id,
            reporter=body.reporter,
            at_ns=at_ns,
        )
        return 200, text.encode("utf-8")

    result = _once(runtime, principal, idem, command)
    if result.status >= 400:
        return result_response(result)  # the one JSON error shape, stored or fresh
    media_type, extension = REPORT_MEDIA[body.format]
    headers = {
        "Content-Disposition": f'attachment; filename="CASE-{case_id:06d}-sar.{extension}"',
        "X-Content-Type-Options": "nosniff",
    }
    if body.format == "html":
        headers["Content-Security-Policy"] = REPORT_HTML_POLICY
    if result.replayed:
        headers[REPLAYED_HEADER] = "true"
    return Response(result.body, status_code=result.status, headers=headers, media_type=media_type)
