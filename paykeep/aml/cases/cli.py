"""``paykeep aml cases list|show|assign|note|transition|export``: thin wrappers over the service.

Exit statuses: 0 success; 2 bad input or a refused request (unknown case, illegal transition,
second approver required), with a one-line reason on stderr; 1 the run itself failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from paykeep.aml.cases.errors import CaseInputInvalid
from paykeep.aml.cases.model import REPORT_FORMATS as FORMATS
from paykeep.aml.cases.model import CaseAction, CaseEventKind, CaseState
from paykeep.cli_support import (
    DatabaseUrlOption,
    DataDirOption,
    JsonOption,
    print_json,
    settings_from,
    typed_errors,
)
from paykeep.clock import ns_to_datetime

if TYPE_CHECKING:
    from paykeep.aml.cases.service import CaseService

cases_app = typer.Typer(
    help="AML cases: investigation, decision trail, suspicious activity reports."
)

CaseIdArgument = Annotated[int, typer.Argument(help="The case id (the number in CASE-000042).")]
ActorOption = Annotated[
    str, typer.Option("--actor", help="The compliance officer acting (recorded in the trail).")
]


def _service(data_dir: Path | None, database_url: str | None) -> CaseService:
    from paykeep.aml.cases.service import CaseService
    from paykeep.db import open_database

    return CaseService(open_database(settings_from(data_dir, database_url)))


def _when(ns: int) -> str:
    return ns_to_datetime(ns).strftime("%Y-%m-%d %H:%M:%S")


@cases_app.command("list")
def cases_list(
    state: Annotated[
        str | None,
        typer.Option(
            "--state", help=f"Only cases in this state: {', '.join(s.value for s in CaseState)}."
        ),
    ] = None,
    after: Annotated[int, typer.Option("--after", help="Cases with an id above this.")] = 0,
    limit: Annotated[int, typer.Option("--limit", help="At most this many cases.")] = 50,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List cases, oldest first."""
    with typed_errors():
        wanted = None
        if state is not None:
            try:
                wanted = CaseState(state)
            except ValueError:
                raise CaseInputInvalid(f"unknown state {state!r}", param="state") from None
        found = _service(data_dir, database_url).list(wanted, after_id=after, limit=limit)
    if as_json:
        print_json({"cases": [c.to_json() for c in found]})
        return
    if not found:
        typer.echo("no case")
    for case in found:
        typer.echo(
            f"{case.reference}  {case.state.value:<22} {case.risk.value:<6} "
            f"{case.assignee or '-':<16} {_when(case.opened_at_ns)}  {case.title}"
        )


@cases_app.command("show")
def cases_show(
    case_id: CaseIdArgument,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a case: summary, evidence, notes and the decision trail."""
    with typed_errors():
        case_file = _service(data_dir, database_url).get(case_id)
    if as_json:
        print_json(case_file.to_json())
        return
    case = case_file.case
    typer.echo(f"{case.reference}: {case.title}")
    typer.echo(
        f"  state {case.state.value}, risk {case.risk.value}, assignee {case.assignee or '-'}"
    )
    if case.close_requested_by:
        typer.echo(f"  closure requested by {case.close_requested_by}; awaiting a second officer")
    typer.echo(f"  subjects: {', '.join(case.subject_party_ids) or '-'}")
    typer.echo(f"evidence ({len(case_file.evidence)}):")
    for item in case_file.evidence:
        typer.echo(f"  [{item.kind.value}] {item.ref}")
    typer.echo(f"notes ({len(case_file.notes)}):")
    for note in case_file.notes:
        typer.echo(f"  {_when(note.at_ns)} {note.author}: {note.body}")
    typer.echo("trail:")
    for event in case_file.events:
        move = (
            f" {event.from_state.value if event.from_state else ''}->{event.to_state.value}"
            if event.to_state
            else ""
        )
        typer.echo(f"  {event.seq:>3} {_when(event.at_ns)} {event.actor} {event.kind.value}{move}")


@cases_app.command("assign")
def cases_assign(
    case_id: CaseIdArgument,
    officer: Annotated[str, typer.Argument(help="The officer the case is assigned to.")],
    actor: ActorOption,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Assign a case to an officer."""
    with typed_errors():
        case = _service(data_dir, database_url).assign(case_id, officer, actor=actor)
    if as_json:
        print_json(case.to_json())
        return
    typer.echo(f"{case.reference} assigned to {case.assignee}")


@cases_app.command("note")
def cases_note(
    case_id: CaseIdArgument,
    text: Annotated[str, typer.Argument(help="The note.")],
    actor: ActorOption,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a note to a case (any state)."""
    with typed_errors():
        note = _service(data_dir, database_url).add_note(case_id, text, actor=actor)
    if as_json:
        print_json(note.to_json())
        return
    typer.echo(f"note {note.note_id} added")


@cases_app.command("transition")
def cases_transition(
    case_id: CaseIdArgument,
    action: Annotated[
        str, typer.Argument(help=f"One of: {', '.join(a.value for a in CaseAction)}.")
    ],
    actor: ActorOption,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept in the trail).")] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move a case through its state machine. Closing a high-risk case as a false positive
    takes two different officers: the first asks, the second approves."""
    with typed_errors():
        try:
            wanted = CaseAction(action)
        except ValueError:
            raise CaseInputInvalid(
                f"unknown action {action!r}; expected one of "
                f"{', '.join(a.value for a in CaseAction)}",
                param="action",
            ) from None
        case, event = _service(data_dir, database_url).act(
            case_id, wanted, actor=actor, reason=reason
        )
    if as_json:
        print_json({"case": case.to_json(), "event": event.to_json()})
        return
    if event.kind is CaseEventKind.CLOSE_REQUESTED:
        typer.echo(
            f"{case.reference}: closure requested by {actor}; a second compliance officer "
            "must run the same command to close this high-risk case"
        )
        return
    before = event.from_state.value if event.from_state else "?"
    typer.echo(f"{case.reference}: {before} -> {case.state.value}")


@cases_app.command("export")
def cases_export(
    case_id: CaseIdArgument,
    actor: ActorOption,
    report_format: Annotated[
        str, typer.Option("--format", help=f"One of: {', '.join(FORMATS)}.")
    ] = "goaml-xml",
    output: Annotated[
        Path | None, typer.Option("--output", help="Write here instead of standard output.")
    ] = None,
    rentity_id: Annotated[
        str, typer.Option("--rentity-id", help="The reporting entity's id at the FIU.")
    ] = "PAYKEEP",
    reporter: Annotated[
        str | None,
        typer.Option("--reporter", help="Reporting officer's 'First Last' [default: --actor]."),
    ] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export a suspicious activity report (goAML XML or JSON, or HTML); the export is
    recorded in the case's trail."""
    from paykeep.aml.cases.report import export_case

    with typed_errors():
        text = export_case(
            _service(data_dir, database_url),
            case_id,
            report_format,
            actor=actor,
            rentity_id=rentity_id,
            reporter=reporter,
        )
        if output is not None:
            output.write_text(text, encoding="utf-8")
    if output is None:
        typer.echo(text, nl=False)
    elif as_json:
        print_json(
            {
                "case_id": case_id,
                "format": report_format,
                "output": str(output),
                "bytes": len(text.encode("utf-8")),
            }
        )
    else:
        typer.echo(f"wrote {output}")


def register(app: typer.Typer) -> None:
    app.add_typer(cases_app, name="cases")
