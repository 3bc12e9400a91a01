"""``paykeep ledger ...`` and ``paykeep audit ...``: thin commands over the ledger service."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from paykeep.cli_support import (
    EXIT_CHECK_FAILED,
    DatabaseUrlOption,
    DataDirOption,
    JsonOption,
    fail,
    print_json,
    settings_from,
    typed_errors,
)
from paykeep.clock import datetime_to_ns, ns_to_datetime
from paykeep.ledger.model import Account, NewAccount, NewTransfer, Transfer
from paykeep.money import Money

# The service, the audit and the database layer (SQLAlchemy) are imported by the commands
# that use them: this module is loaded by every ``paykeep`` invocation.
if TYPE_CHECKING:
    from paykeep.db import Database
    from paykeep.ledger.service import Ledger

ledger_app = typer.Typer(help="Accounts, transfers and balances of the double-entry ledger.")
audit_app = typer.Typer(help="Verify the ledger against its hash-chained journal.")


def _open_database(data_dir: Any, database_url: str | None) -> Database:
    from paykeep.db import open_database

    return open_database(settings_from(data_dir, database_url))


def _open_ledger(data_dir: Any, database_url: str | None) -> Ledger:
    from paykeep.ledger.service import Ledger

    return Ledger(_open_database(data_dir, database_url))


def account_json(a: Account) -> dict[str, Any]:
    return {
        **asdict(a),
        "balance_posted": Money(a.balance_posted, a.currency).format(),
        "created_at": ns_to_datetime(a.timestamp_ns).isoformat(),
    }


def transfer_json(t: Transfer) -> dict[str, Any]:
    out = asdict(t)
    out["metadata"] = t.metadata
    del out["metadata_json"]
    out["amount"] = Money(t.amount_minor, t.currency).format()
    out["created_at"] = ns_to_datetime(t.timestamp_ns).isoformat()
    return out


@ledger_app.command("create-account")
def create_account(
    account_id: Annotated[int, typer.Argument(help="Positive 63-bit id.")],
    currency: Annotated[str, typer.Argument(help="ISO 4217 code, e.g. EUR.")],
    code: Annotated[int, typer.Option(help="Account kind (1..65535).")] = 1,
    name: Annotated[str | None, typer.Option(help="Unique chart key.")] = None,
    no_overdraft: Annotated[
        bool, typer.Option("--no-overdraft", help="debits must not exceed credits")
    ] = False,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an account (idempotent)."""
    with typed_errors():
        ledger = _open_ledger(data_dir, database_url)
        flags = 2 if no_overdraft else 0
        account = ledger.create_account(NewAccount(account_id, currency, code, flags, name))
        if as_json:
            print_json(account_json(account))
        else:
            typer.echo(f"account {account.id} {account.currency} code={account.code}")


@ledger_app.command("transfer")
def transfer(
    transfer_id: Annotated[int, typer.Argument()],
    debit_account_id: Annotated[int, typer.Argument()],
    credit_account_id: Annotated[int, typer.Argument()],
    amount: Annotated[str, typer.Argument(help="Decimal amount in major units, e.g. 12.50.")],
    currency: Annotated[str, typer.Argument()],
    code: Annotated[int, typer.Option()] = 1,
    reference: Annotated[str | None, typer.Option()] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move money between two accounts of the same currency (idempotent per id)."""
    with typed_errors():
        money = Money.parse(amount, currency)
        ledger = _open_ledger(data_dir, database_url)
        t = ledger.create_transfer(
            NewTransfer(
                transfer_id, debit_account_id, credit_account_id, money.amount_minor,
                currency, code, reference=reference,
            )
        )  # fmt: skip
        if as_json:
            print_json(transfer_json(t))
        else:
            typer.echo(f"transfer {t.id} seq={t.seq} {Money(t.amount_minor, t.currency)}")


@ledger_app.command("balance")
def balance(
    account_id: Annotated[int, typer.Argument()],
    as_of: Annotated[
        datetime | None,
        typer.Option(help="A past moment (ISO 8601 with timezone): balances as they stood."),
    ] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show an account's balances, now or as of a past time."""
    with typed_errors():
        ledger = _open_ledger(data_dir, database_url)
        account = ledger.account(account_id)
        if as_of is not None:
            if as_of.tzinfo is None:
                fail("--as-of needs a timezone, e.g. 2026-11-25T12:00:00+00:00")
            past = ledger.balance_as_of(account_id, datetime_to_ns(as_of))
            doc: dict[str, Any] = {**asdict(past), "currency": account.currency}
        else:
            doc = account_json(account)
        if as_json:
            print_json(doc)
        else:
            typer.echo(
                " ".join(
                    f"{k}={doc[k]}"
                    for k in (
                        "debits_pending",
                        "debits_posted",
                        "credits_pending",
                        "credits_posted",
                    )
                )
            )


@ledger_app.command("transfers")
def transfers(
    account_id: Annotated[int, typer.Argument()],
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    starting_after: Annotated[int | None, typer.Option()] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """List an account's transfers, newest first (JSON)."""
    with typed_errors():
        ledger = _open_ledger(data_dir, database_url)
        page = ledger.account_transfers(account_id, limit=limit, starting_after=starting_after)
        print_json({"data": [transfer_json(t) for t in page.items], "has_more": page.has_more})


@ledger_app.command("sweep")
def sweep(
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Void every hold whose timeout has passed."""
    with typed_errors():
        ledger = _open_ledger(data_dir, database_url)
        total = 0
        while (voided := ledger.expire_holds()) > 0:
            total += voided
        if as_json:
            print_json({"expired": total})
        else:
            typer.echo(f"expired {total} holds")


@audit_app.command("verify")
def audit_verify(
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recompute every balance from the journal and check the hash chain (exit 1 on problems)."""
    with typed_errors():
        from paykeep.ledger.audit import verify

        report = verify(_open_database(data_dir, database_url))
    if as_json:
        print_json(report.to_json())
    else:
        for problem in report.problems:
            typer.echo(f"{problem.kind}: {problem.message}")
        typer.echo(
            f"{'OK' if report.ok else 'FAILED'}: {report.transfers_checked} transfers, "
            f"{report.accounts_checked} accounts, {report.problems_total} problems, "
            f"head seq {report.head_seq} hash {report.head_hash}"
        )
    if not report.ok:
        if not as_json:
            first = report.problems[0]
            typer.echo(f"paykeep: audit failed: {first.kind}: {first.message}", err=True)
        raise typer.Exit(EXIT_CHECK_FAILED)


@audit_app.command("head")
def audit_head(
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Print the journal head (seq and hash) to anchor outside the database."""
    with typed_errors():
        head = _open_ledger(data_dir, database_url).head()
    typer.echo(json.dumps(asdict(head)))
