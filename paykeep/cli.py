"""``paykeep``: the command line. Thin: parses options, calls services, prints results."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

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
from paykeep.security.cli import keys_app

app = typer.Typer(
    name="paykeep",
    help="Paykeep: escrow payments for e-commerce marketplaces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: print JSON figures with a same-run baseline.")
db_app = typer.Typer(help="Database schema.")
worker_items_app = typer.Typer(
    help="Items the background passes could not handle: backed off, or parked for you."
)
app.add_typer(ledger_app, name="ledger")
app.add_typer(audit_app, name="audit")
app.add_typer(aml_app, name="aml")
app.add_typer(bench_app, name="bench")
app.add_typer(db_app, name="db")
app.add_typer(worker_items_app, name="worker-items")
app.add_typer(statements_app, name="statements")
app.add_typer(payouts_app, name="payouts")
app.add_typer(keys_app, name="keys")
cards_cli.register(app)


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDirOption = None, database_url: DatabaseUrlOption = None) -> None:
    """Migrate the database to the latest schema."""
    from paykeep.db import open_database
    from paykeep.db.migrate import current_revision

    with typed_errors():
        database = open_database(settings_from(data_dir, database_url))
        typer.echo(f"schema at revision {current_revision(database)}")


def _quarantine(data_dir: Path | None, database_url: str | None) -> Any:
    from paykeep.clock import SystemClock
    from paykeep.db import open_database
    from paykeep.db.quarantine import Quarantine

    return Quarantine(open_database(settings_from(data_dir, database_url)), SystemClock())


@worker_items_app.command("list")
def worker_items_list(
    pass_name: Annotated[
        str | None, typer.Option("--pass", help="Only this pass (e.g. payments.card_refunds).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1_000)] = 100,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Items whose handling failed unexpectedly: parked ones first (left alone until
    released), then those backed off (tried again by themselves)."""
    with typed_errors():
        failures = _quarantine(data_dir, database_url).failures(pass_name, limit=limit)
    if as_json:
        print_json([f.to_json() for f in failures])
        return
    for f in failures:
        state = "parked" if f.parked else "backed off"
        typer.echo(f"{f.pass_name}\t{f.item_id}\t{state}\t{f.failures}\t{f.error_code}")


@worker_items_app.command("release")
def worker_items_release(
    pass_name: Annotated[str, typer.Argument(help="The pass, as listed.")],
    item_id: Annotated[str, typer.Argument(help="The item, as listed.")],
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
) -> None:
    """The cause is fixed: the pass tries the item again on its next run."""
    with typed_errors():
        released = _quarantine(data_dir, database_url).release(pass_name, item_id)
    if not released:
        fail(f"no failure recorded for {item_id} in {pass_name}")
    typer.echo(f"released {item_id} ({pass_name})")


@app.command("demo")
def demo(
    data_dir: DataDirOption = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="A running server (default: the one `paykeep serve` runs from the data directory)."
        ),
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="The operator key for --url.")] = None,
    orders: Annotated[int, typer.Option(min=1, max=10_000)] = 24,
    seed: Annotated[int, typer.Option(help="Makes the day's choices repeatable.")] = 7,
    as_json: JsonOption = False,
) -> None:
    """Drive a marketplace day over HTTP against a running server, then reconcile.

    Buyers pay by card and bank transfer, merchants ship, carriers deliver, buyers confirm,
    timers close and refund and confirm, refunds, a dispute, payouts — then every balance is
    checked against the orders (exit 1 if one does not reconcile). Buyers sign in with the
    code the server wrote to <data-dir>/mail/ before confirming; with --url there is no mail
    folder to read, so the auto-confirm timer confirms for them.
    """  # fmt: skip
    from paykeep.demo_day import DemoFailed, run_demo_day

    with typed_errors():
        target = _demo_target(data_dir, url, api_key)
    try:
        if as_json:
            result = run_demo_day(**target, orders=orders, seed=seed)
        else:
            from rich.console import Console
            from rich.progress import Progress

            console = Console()
            console.print(f"[bold]Paykeep demo day[/bold] against {target['url']}")
            with Progress(console=console, transient=False) as bar:
                tasks: dict[str, object] = {}

                def progress(what: str, n: int) -> None:
                    if what not in tasks:
                        tasks[what] = bar.add_task(what, total=orders)
                    bar.advance(tasks[what], n)  # type: ignore[arg-type]

                result = run_demo_day(**target, orders=orders, seed=seed, progress=progress)
    except DemoFailed as exc:
        fail(f"demo failed: {exc}", code=1)
    except OSError as exc:
        fail(f"cannot reach the server: {exc}", code=1)
    if as_json:
        print_json(result.to_json())
        return
    from rich.table import Table

    table = Table("what", "value")
    for key in ("orders", "volume_minor", "fees_minor", "refunded_minor", "payouts_minor",
                "webhooks_delivered", "elapsed_s"):  # fmt: skip
        table.add_row(key, str(getattr(result, key)))
    table.add_row("order states", ", ".join(f"{k} {v}" for k, v in sorted(result.states.items())))
    console.print(table)
    for check in result.checks:
        console.print(f"[green]✓[/green] {check}")


def _demo_target(data_dir: Path | None, url: str | None, api_key: str | None) -> dict[str, Any]:
    from paykeep.config import Settings
    from paykeep.serve import read_serve_file

    if url is not None:
        if api_key is None:
            fail("--url needs --api-key (an operator key)")
        # No data directory: no mail folder to read the buyers' codes from (the day notes it).
        return {"url": url, "operator_key": api_key, "merchants": _demo_merchants(url, api_key),
                "carrier": None, "banksim_url": None, "mail_dir": None}  # fmt: skip
    settings = Settings.resolve(data_dir, None)
    served = read_serve_file(settings.data_dir)
    if served is None:
        fail(f"no server found in {settings.data_dir}: start `paykeep serve` first, or pass --url")
    assert served is not None
    return {"url": served["url"], "operator_key": served["operator_key"],
            "merchants": served["merchants"], "carrier": served.get("carrier"),
            "banksim_url": served.get("banksim_url"),
            "mail_dir": Path(served["mail_dir"]) if served.get("mail_dir") else None}  # fmt: skip


def _demo_merchants(url: str, api_key: str) -> list[dict[str, Any]]:
    """With --url: demo merchants created through the API (each response carries its key)."""
    import httpx

    made = []
    for name, country, iban in (("Demo Tea House", "DE", "DE89370400440532013000"),
                                ("Demo Cycle Shop", "NL", "NL91ABNA0417164300")):  # fmt: skip
        response = httpx.post(
            f"{url}/v1/merchants",
            json={"legal_name": name, "country": country, "currency": "EUR", "payout_iban": iban},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
        )
        if response.status_code != 201:
            fail(f"cannot create demo merchants: {response.status_code} {response.text[:200]}")
        body = response.json()
        httpx.post(f"{url}/v1/merchants/{body['id']}/verify_payout_iban",
                   headers={"Authorization": f"Bearer {api_key}"}, timeout=30)  # fmt: skip
        made.append({"id": body["id"], "name": name, "api_key": body["api_key"]})
    return made


@ledger_app.command("demo")
def ledger_demo(
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


@bench_app.command("api")
def bench_api(
    clients: Annotated[int, typer.Option(min=1, max=512)] = 32,
    seconds: Annotated[float, typer.Option(min=1, max=3_600)] = 10.0,
    database_url: DatabaseUrlOption = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="API processes.")] = 1,
    as_json: JsonOption = False,
) -> None:
    """Money-moving requests/s (pay, ship, confirm) from concurrent clients against a real
    `paykeep serve`, p50/p99, beside a same-run trivial authenticated GET baseline (ratio)."""
    from paykeep.bench.api import run_api_bench

    with typed_errors():
        figures = run_api_bench(
            clients=clients, seconds=seconds, database_url=database_url, workers=workers
        )
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
