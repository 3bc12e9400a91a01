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
            "returned), who resolved them and their note.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """List open reconciliation breaks (with --all, resolved ones too), oldest first."""
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
        resolved = (
            "" if b.resolution is None
            else f" [{b.resolution} by {b.resolved_by}: {b.resolution_note}]"
        )  # fmt: skip
        typer.echo(
            f"#{b.id} {b.account} {b.statement_id} line {b.line}: {b.reason} "
            f"{_minor(b.amount_minor, b.currency)} {b.currency} — {b.detail}{resolved}"
        )
        if texts.get(b.id):
            typer.echo(f"    remittance: {texts[b.id]}")
    if not breaks:
        typer.echo("no breaks" if show_all else "no open breaks")


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
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send an unidentified incoming transfer back to its sender: the line is posted to
    suspense:unidentified and paid back to the sender's IBAN by the next payout batch.
    Safe to run again after a failure: it finishes the return, never pays twice."""
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
        returned = payouts.return_break(break_id, actor=actor, note=note)
    if as_json:
        print_json(returned.to_json())
    else:
        p = returned.payout
        typer.echo(
            f"break #{returned.break_.id} returned: payout {p.payout_id} of "
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
