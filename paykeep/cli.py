"""``paykeep``: the command line. Thin: parses options, calls services, prints results."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from paykeep.aml.cli import aml_app
from paykeep.cli_support import (
    DatabaseUrlOption,
    DataDirOption,
    JsonOption,
    fail,
    print_json,
    settings_from,
    typed_errors,
)
from paykeep.gateway.cards import cli as cards_cli
from paykeep.gateway.payouts.cli import payouts_app
from paykeep.gateway.statements.cli import statements_app
from paykeep.ledger.cli import audit_app, ledger_app

app = typer.Typer(
    name="paykeep",
    help="Paykeep: escrow payments for e-commerce marketplaces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: print JSON figures with a same-run baseline.")
db_app = typer.Typer(help="Database schema.")
app.add_typer(ledger_app, name="ledger")
app.add_typer(audit_app, name="audit")
app.add_typer(aml_app, name="aml")
app.add_typer(bench_app, name="bench")
app.add_typer(db_app, name="db")
app.add_typer(statements_app, name="statements")
app.add_typer(payouts_app, name="payouts")
cards_cli.register(app)


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDirOption = None, database_url: DatabaseUrlOption = None) -> None:
    """Migrate the database to the latest schema."""
    from paykeep.db import open_database
    from paykeep.db.migrate import current_revision

    with typed_errors():
        database = open_database(settings_from(data_dir, database_url))
        typer.echo(f"schema at revision {current_revision(database)}")


@app.command("demo")
def demo(
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """A short ledger demonstration: an escrow order told in journal entries, then an audit."""
    from rich.console import Console
    from rich.table import Table

    from paykeep.db import open_database
    from paykeep.ledger.demo import run_demo
    from paykeep.ledger.service import Ledger

    with typed_errors():
        settings = settings_from(data_dir, database_url)
        outcome = run_demo(Ledger(open_database(settings)))
    if as_json:
        print_json(
            {
                "steps": [{"what": s.what, "results": s.results} for s in outcome.steps],
                "balances": outcome.balances,
                "audit": outcome.audit.to_json(),
            }
        )
    else:
        console = Console()
        where = settings.database_url or str(settings.data_dir)
        console.print(f"[bold]Paykeep ledger demonstration[/bold] (data: {where})")
        for step in outcome.steps:
            console.print(f"• {step.what}: [cyan]{', '.join(step.results)}[/cyan]")
        table = Table("account", "balance")
        for name, value in outcome.balances.items():
            table.add_row(name, value)
        console.print(table)
        audit = outcome.audit
        console.print(
            f"audit: {'[green]OK[/green]' if audit.ok else '[red]FAILED[/red]'} — "
            f"{audit.transfers_checked} journal rows re-derived, head {audit.head_hash[:16]}…"
        )
    if not outcome.audit.ok:
        fail("audit failed after the demonstration", code=1)


@bench_app.command("ledger")
def bench_ledger(
    backend: Annotated[str, typer.Option(help="sqlite or postgres")] = "sqlite",
    database_url: DatabaseUrlOption = None,
    transfers: Annotated[int, typer.Option(min=1, max=10_000_000)] = 100_000,
    batch_size: Annotated[int, typer.Option(min=1, max=8_190)] = 1_000,
    concurrency: Annotated[int, typer.Option(min=1, max=512)] = 1,
    accounts: Annotated[int, typer.Option(min=2, max=1_000_000)] = 10_000,
    as_json: JsonOption = False,
) -> None:
    """Ledger throughput and batch latency, beside a same-run raw-insert baseline.

    Runs in a scratch database (a temporary SQLite file, or a temporary PostgreSQL database on
    the server --database-url names) that is removed afterwards.
    """
    from paykeep.bench.ledger import run_ledger_bench

    if backend not in ("sqlite", "postgres"):
        fail(f"unknown backend {backend!r}: use sqlite or postgres")
    with typed_errors():
        figures = run_ledger_bench(
            backend=backend,
            database_url=database_url,
            transfers=transfers,
            batch_size=batch_size,
            concurrency=concurrency,
            accounts=accounts,
        )
    if as_json:
        print_json(figures)
    else:
        for key, value in figures.items():
            typer.echo(f"{key}: {value}")


@bench_app.command("aml")
def bench_aml(
    part: Annotated[
        list[str] | None,
        typer.Option(help="screening, rules or graph; repeat for several (default: all three)"),
    ] = None,
    sanctions_list: Annotated[
        Path | None, typer.Option(help="The full list to screen against (e.g. the OFAC SDN CSV).")
    ] = None,
    list_format: Annotated[str, typer.Option(help="ofac-csv, un-xml or ftm")] = "ofac-csv",
    queries: Annotated[
        list[Path] | None,
        typer.Option(help="People CSV(s) to screen: full_name[,date_of_birth,nationality,...]"),
    ] = None,
    transactions: Annotated[int, typer.Option(help="Size of the generated history.")] = 5_000_000,
    decisions: Annotated[int, typer.Option(min=1, max=1_000_000)] = 5_000,
    as_json: JsonOption = False,
) -> None:
    """Screenings/s and p99, rule decision p99, graph scan time and memory, with baselines."""
    from paykeep.bench.aml import PARTS, run_aml_bench

    with typed_errors():
        figures = run_aml_bench(
            parts=part or PARTS,
            sanctions_list=sanctions_list,
            list_format=list_format,
            queries=queries or (),
            transactions=transactions,
            decisions=decisions,
        )
    if as_json:
        print_json(figures)
    else:
        for key, value in figures.items():
            typer.echo(f"{key}: {value}")


@bench_app.command("gateway")
def bench_gateway(
    authorisations: Annotated[int, typer.Option(min=1, max=1_000_000)] = 2_000,
    concurrency: Annotated[int, typer.Option(min=1, max=256)] = 8,
    statement_lines: Annotated[int, typer.Option(min=1, max=10_000_000)] = 10_000,
    as_json: JsonOption = False,
) -> None:
    """Card authorisations per second over ISO 8583 to a real banksim, p50/p99 latency, beside
    a same-run 0800/0810 echo baseline (ratio), and statement lines imported per second."""
    from paykeep.bench.gateway import run_gateway_bench

    with typed_errors():
        figures = run_gateway_bench(authorisations, concurrency, statement_lines=statement_lines)
    if as_json:
        print_json(figures)
    else:
        for key, value in figures.items():
            typer.echo(f"{key}: {value}")


@app.command("serve")
def serve_command(
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    host: Annotated[str, typer.Option(help="Listen address of the API.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65_535, help="0: a free port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="API processes.")] = 1,
    bank_cycle: Annotated[
        float, typer.Option(min=0.5, max=86_400, help="Seconds between bank day cycles.")
    ] = 5.0,
    as_json: JsonOption = False,
) -> None:
    """Run Paykeep: the API, the checkout pages, the workers and a banksim child process.

    The first start against a database seeds a demo marketplace and prints the operator key;
    URL and keys are kept in <data dir>/serve.json for `paykeep demo`.
    """
    from paykeep.serve import serve

    with typed_errors():
        serve(
            settings_from(data_dir, database_url),
            host=host,
            port=port,
            workers=workers,
            as_json=as_json,
            bank_cycle_s=bank_cycle,
        )


@app.command("banksim")
def banksim(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="banksim's own state directory")],
    host: Annotated[str, typer.Option(help="card network listen address")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(min=0, max=65_535, help="0: a free port")] = 0,
    card_port: Annotated[int, typer.Option(min=0, max=65_535, help="0: a free port")] = 0,
    faults: Annotated[Path | None, typer.Option(help="JSON fault configuration")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of fault probabilities")] = None,
) -> None:
    """Run the simulated card network and bank (prints its ports as one JSON line)."""
    import os

    # The simulator is the other side of the wire: it runs as its own program, never imported.
    argv = [sys.executable, "-m", "paykeep.banksim", "--data-dir", str(data_dir)]
    argv += ["--host", host, "--http-port", str(http_port), "--card-port", str(card_port)]
    if faults is not None:
        argv += ["--faults", str(faults)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    sys.stdout.flush()
    os.execv(sys.executable, argv)  # noqa: S606 - fixed argv, no shell


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("paykeep: interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
