"""``paykeep statements import|breaks|resolve|return|accounts``: thin wrappers over the service.

Exit statuses: 0 success; 2 bad input (a bad or conflicting file, a break that cannot be
resolved or returned: nothing was written), with a one-line reason on stderr; 1 the run
itself failed (e.g. the database). Parsers and the database layer are imported inside the
commands so that ``paykeep --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from paykeep.cli_support import (
    DatabaseUrlOption,
    DataDirOption,
    JsonOption,
    fail,
    print_json,
    settings_from,
    typed_errors,
)

if TYPE_CHECKING:
    from paykeep.gateway.statements.repository import StoredBreak
    from paykeep.gateway.statements.service import StatementService

statements_app = typer.Typer(
    help="Bank statements: import camt.05x / MT940 / MT942, reconcile, list breaks."
)
accounts_app = typer.Typer(help="The platform's bank accounts that statements report on.")
statements_app.add_typer(accounts_app, name="accounts")


def _service(data_dir: Path | None, database_url: str | None) -> StatementService:
    from paykeep.db import field_cipher, open_database
    from paykeep.gateway.statements.service import StatementService

    settings = settings_from(data_dir, database_url)
    return StatementService(open_database(settings), cipher=field_cipher(settings))


def _minor(value: int | None, currency: str) -> str:
    from paykeep.money import Money

    return "-" if value is None else Money(value, currency).format()


@statements_app.command("import")
def import_statements(
    file: Annotated[Path, typer.Argument(help="A camt.052/053/054 XML or MT940/MT942 file.")],
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
    accept_unbalanced: Annotated[
        bool,
        typer.Option(
            help="Record a statement whose balances do not add up, with a statement_unbalanced "
            "break, instead of refusing the file; none of its lines is posted."
        ),
    ] = False,
) -> None:
    """Import every statement in FILE: check balances, match lines, report breaks."""
    from paykeep import limits

    with typed_errors():
        if not file.is_file():
            fail(f"no such file: {file}")
        if file.stat().st_size > limits.STATEMENT_FILE_BYTES_MAX:
            fail(
                f"statement_file_too_large: {file} is larger than "
                f"{limits.STATEMENT_FILE_BYTES_MAX} bytes"
            )
        data = file.read_bytes()
        report = _service(data_dir, database_url).import_file(
            data, filename=file.name, accept_unbalanced=accept_unbalanced
        )
    if as_json:
        print_json(report.to_json())
        return
    for s in report.statements:
        typer.echo(
            f"{s.account} {s.statement_id} [{s.status}]: {s.currency} opening "
            f"{_minor(s.opening_booked_minor, s.currency)} closing "
            f"{_minor(s.closing_booked_minor, s.currency)}, {s.entries} entries, "
            f"{s.matched} matched, {len(s.breaks)} breaks"
        )
        for b in s.breaks:
            typer.echo(
                f"  break line {b['line']}: {b['reason']} "
                f"{_minor(b['amount_minor'], b['currency'])} {b['currency']} — {b['detail']}"
            )


@statements_app.command("breaks")
def list_breaks(
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1_000)] = 1_000,
    remittance: Annotated[
        bool,
        typer.Option(
            "--remittance",
            help="Also show what the payer wrote on each line (opened from its sealed copy): "
            "what matching a break by hand needs.",
        ),
    ] = False,
    show_all: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Also list resolved breaks, with their resolution (explained, matched, "
            "returned, bounced), who resolved them and their note.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """List the reconciliation breaks waiting for a person — open, or return_failed (a
    return the bank rejected or sent back: its money is in suspense) — with --all the
    resolved ones too, oldest first."""
    from paykeep.gateway.statements.service import break_json

    with typed_errors():
        service = _service(data_dir, database_url)
        breaks = service.breaks(limit, include_resolved=show_all)
        texts = {
            b.id: service.line_remittance(b.statement_row_id, b.line)
            for b in breaks
            if remittance and b.line > 0
        }
    if as_json:
        print_json(
            {
                "breaks": [
                    {
                        **break_json(b),
                        **({"remittance_info": texts.get(b.id)} if remittance else {}),
                    }
                    for b in breaks
                ]
            }
        )
        return
    for b in breaks:
        typer.echo(
            f"#{b.id} {b.account} {b.statement_id} line {b.line}: {b.reason} "
            f"{_minor(b.amount_minor, b.currency)} {b.currency} — {b.detail}{_state_text(b)}"
        )
        if texts.get(b.id):
            typer.echo(f"    remittance: {texts[b.id]}")
    if not breaks:
        typer.echo("no breaks" if show_all else "no open breaks")


def _state_text(b: StoredBreak) -> str:
    """What a person reads after a break's line: nothing while it is plainly open."""
    from paykeep import limits
    from paykeep.gateway.statements.model import BreakState

    if b.state is BreakState.RETURN_FAILED:
        return (
            f" [return failed, {b.return_attempts} of {limits.STATEMENT_RETURN_ATTEMPTS_MAX} "
            f"attempts made: {b.return_failure}; money in suspense:unidentified]"
        )
    if b.resolution is None:
        return ""
    return f" [{b.resolution} by {b.resolved_by}: {b.resolution_note}]"


@statements_app.command("show")
def show_break(
    break_id: Annotated[int, typer.Argument(help="The break's id (see `statements breaks`).")],
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one break with its trail: every change of its state, when, by whom and why."""
    from paykeep.clock import ns_to_datetime
    from paykeep.gateway.statements.service import break_json

    with typed_errors():
        b, trail = _service(data_dir, database_url).break_trail(break_id)
    if as_json:
        print_json({"break": break_json(b), "trail": trail})
        return
    typer.echo(
        f"#{b.id} {b.account} {b.statement_id} line {b.line}: {b.reason} "
        f"{_minor(b.amount_minor, b.currency)} {b.currency} — {b.detail}"
    )
    typer.echo(f"state: {b.state.value}{_state_text(b)}")
    for event in trail:
        when = ns_to_datetime(event["at_ns"]).isoformat(timespec="seconds")
        typer.echo(
            f"  {when} {event['from_state'] or '-'} -> {event['to_state']} by {event['actor']}: "
            f"{event['detail']}"
        )


@statements_app.command("resolve")
def resolve_break(
    break_id: Annotated[int, typer.Argument(help="The break's id (see `statements breaks`).")],
    actor: Annotated[str, typer.Option(help="Who resolves it (an operator id).")],
    note: Annotated[str, typer.Option(help="Why, in words; kept with the break.")],
    match: Annotated[
        str | None,
        typer.Option(
            help="The reference of the expectation the line really was: the line is matched "
            "to it (same checks as an import) and its ledger legs are posted."
        ),
    ] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Resolve an open break once: explain it, or match its line to an expectation."""
    from paykeep.gateway.statements.service import break_json

    with typed_errors():
        resolved = _service(data_dir, database_url).resolve_break(
            break_id, actor=actor, note=note, match_reference=match
        )
    if as_json:
        print_json({"resolved": break_json(resolved), "matched": match is not None})
    else:
        how = f"matched to {match}" if match is not None else "explained"
        typer.echo(f"break #{resolved.id} resolved: {how}")


@statements_app.command("return")
def return_break(
    break_id: Annotated[int, typer.Argument(help="The break's id (see `statements breaks`).")],
    actor: Annotated[str, typer.Option(help="Who returns it (an operator id).")],
    note: Annotated[str, typer.Option(help="Why, in words; kept with the break.")],
    iban: Annotated[
        str | None,
        typer.Option(
            help="After a failed return only: the IBAN to send it to instead (the sender gave "
            "a corrected one). Sealed like every payout creditor; shown as its last four."
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="After a failed return only: the account holder's name instead."),
    ] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send an unidentified incoming transfer back to its sender: the line is posted to
    suspense:unidentified and paid back to the sender's IBAN by the next payout batch, in one
    transaction with the break marked returned. If the bank rejects it or sends it back, the
    money is back in suspense and the break is return_failed: run this again to retry (to the
    same account, or to --iban/--name), a bounded number of times."""
    from paykeep.db import field_cipher, open_database
    from paykeep.gateway.payouts.service import PayoutService
    from paykeep.gateway.statements.service import StatementService
    from paykeep.ledger.service import Ledger

    with typed_errors():
        settings = settings_from(data_dir, database_url)
        database = open_database(settings)
        ledger = Ledger(database)
        cipher = field_cipher(settings)
        payouts = PayoutService(
            database,
            ledger,
            cipher=cipher,
            statements=StatementService(database, ledger, cipher=cipher),
        )
        returned = payouts.return_break(
            break_id, actor=actor, note=note, creditor_iban=iban, creditor_name=name
        )
    if as_json:
        print_json(returned.to_json())
    else:
        from paykeep import limits

        p = returned.payout
        typer.echo(
            f"break #{returned.break_.id} returned (attempt {returned.attempt} of "
            f"{limits.STATEMENT_RETURN_ATTEMPTS_MAX}): payout {p.payout_id} of "
            f"{_minor(p.amount_minor, p.currency)} {p.currency} to ****{p.creditor_iban_last4} "
            f"({p.state.value}; leaves with the next payout batch)"
        )


@accounts_app.command("add")
def add_account(
    iban: Annotated[str, typer.Argument(help="The account's IBAN.")],
    currency: Annotated[str, typer.Option("--currency", help="ISO 4217 code, e.g. EUR.")],
    ledger_account: Annotated[
        str, typer.Option("--ledger-account", help="e.g. bank:safeguarding:<bank>")
    ],
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register a bank account (idempotent for identical terms)."""
    with typed_errors():
        account = _service(data_dir, database_url).add_account(iban, currency, ledger_account)
    if as_json:
        print_json(
            {
                "iban": account.iban,
                "currency": account.currency,
                "ledger_account": account.ledger_account_name,
            }
        )
    else:
        typer.echo(f"{account.iban} {account.currency} -> {account.ledger_account_name}")


@accounts_app.command("list")
def list_accounts(
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List registered bank accounts."""
    with typed_errors():
        accounts = _service(data_dir, database_url).accounts()
    if as_json:
        print_json(
            {
                "accounts": [
                    {"iban": a.iban, "currency": a.currency,
                     "ledger_account": a.ledger_account_name}
                    for a in accounts
                ]
            }
        )  # fmt: skip
        return
    for a in accounts:
        typer.echo(f"{a.iban} {a.currency} -> {a.ledger_account_name}")


def register(app: typer.Typer) -> None:
    app.add_typer(statements_app, name="statements")
