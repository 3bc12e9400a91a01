"""``paykeep aml simulate | scan | eval``: thin wrappers over :mod:`.service`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

import typer

from paykeep.aml.graph.errors import InvalidGraphParameter, UnknownInputFormat
from paykeep.cli_support import (
    DatabaseUrlOption,
    DataDirOption,
    JsonOption,
    print_json,
    settings_from,
    typed_errors,
)

# Everything that needs polars, numpy or lightgbm (io, service, simulate, train) is imported
# inside the commands: every ``paykeep`` invocation builds this module's command tree.
#: ``io.INPUT_FORMATS``, repeated for the help text so that it does not import io (polars);
#: the commands validate against io's own tuple.
_INPUT_FORMATS_HELP: Final = ("amlworld", "amlsim", "paykeep")

FormatOption = Annotated[
    str,
    typer.Option(
        "--format", help=f"Input format: {', '.join(_INPUT_FORMATS_HELP)}.", show_default=False
    ),
]
InputsArgument = Annotated[
    list[Path], typer.Argument(help="Input CSV files (AMLSim: transactions.csv [nodes.csv]).")
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for simulation and training.")]


def _check_format(input_format: str) -> str:
    from paykeep.aml.graph.io import INPUT_FORMATS

    if input_format not in INPUT_FORMATS:
        raise UnknownInputFormat(
            f"unknown format {input_format!r} (expected one of {', '.join(INPUT_FORMATS)})"
        )
    return input_format


def simulate_command(
    transactions: Annotated[
        int, typer.Option("--transactions", help="Number of transactions to generate.")
    ],
    out: Annotated[Path, typer.Option("--out", help="AMLworld CSV to write (patterns beside).")],
    seed: SeedOption = 0,
    days: Annotated[int, typer.Option("--days", help="Length of the history in days.")] = 16,
    laundering_share: Annotated[
        float, typer.Option("--laundering-share", help="Share of laundering transactions.")
    ] = 0.002,
    accounts_from: Annotated[
        Path | None,
        typer.Option(
            "--accounts-from",
            help="Patterns file whose accounts join the simulated population "
            "(so a real attempt can be embedded in background traffic).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Generate marketplace and bank traffic with the eight typologies injected."""
    from paykeep.aml.graph.io import read_amlworld
    from paykeep.aml.graph.simulate import SimulationConfig, simulate, write_amlworld

    with typed_errors():
        extra: tuple[str, ...] = ()
        if accounts_from is not None:
            patterns = read_amlworld([accounts_from])
            extra = tuple(patterns.accounts.to_list())
        sim = simulate(
            SimulationConfig(
                transactions=transactions,
                seed=seed,
                days=days,
                laundering_share=laundering_share,
                extra_accounts=extra,
            )
        )
        patterns_out = write_amlworld(sim, out)
        summary = {
            "transactions": sim.transactions.frame.height,
            "laundering": int(sim.transactions.frame["label"].sum()),
            "attempts": len(sim.attempts),
            "accounts": sim.transactions.accounts.len(),
            "out": str(out),
            "patterns": str(patterns_out),
        }
    if as_json:
        print_json(summary)
    else:
        typer.echo(
            f"wrote {summary['transactions']} transactions ({summary['laundering']} laundering, "
            f"{summary['attempts']} attempts) to {out} and {patterns_out}"
        )


def scan_command(
    input_format: FormatOption,
    inputs: InputsArgument,
    out: Annotated[Path, typer.Option("--out", help="Alerts CSV to write.")],
    model_file: Annotated[
        Path | None, typer.Option("--model", help="Model file [default: data dir's model].")
    ] = None,
    seed: SeedOption = 0,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Flag transactions (accounts for AMLSim) with typology, score and explanation."""
    from paykeep.aml.graph.io import read_transactions
    from paykeep.aml.graph.service import (
        model_for,
        scan_accounts,
        scan_transactions,
        write_alerts,
    )
    from paykeep.aml.graph.train import load_model

    with typed_errors():
        _check_format(input_format)
        txs = read_transactions(input_format, inputs)
        level = "account" if input_format == "amlsim" else "transaction"
        if model_file is not None:
            model, source = load_model(model_file), str(model_file)
        else:
            settings = settings_from(data_dir, database_url)
            model, source = model_for(level, settings.data_dir, seed=seed)
        if model.level != level:
            raise InvalidGraphParameter(f"model {source} is {model.level}-level, need {level}")
        alerts = scan_accounts(txs, model) if level == "account" else scan_transactions(txs, model)
        write_alerts(alerts, out)
        summary = {
            "scanned": txs.frame.height,
            "level": level,
            "alerts": alerts.height,
            "out": str(out),
            "model": source,
        }
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"{summary['alerts']} alerts from {summary['scanned']} transactions -> {out}")


def eval_command(
    input_format: FormatOption,
    inputs: InputsArgument,
    patterns: Annotated[
        Path | None,
        typer.Option("--patterns", help="IBM-style patterns file for per-typology recall."),
    ] = None,
    seed: SeedOption = 0,
    transfer: Annotated[
        bool,
        typer.Option(
            "--transfer",
            help="Also score every row with a model trained on a seeded simulation "
            "(per-typology recall over all pattern rows).",
        ),
    ] = False,
    save_model: Annotated[
        bool, typer.Option("--save-model", help="Keep the trained model in the data dir.")
    ] = False,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Minority-class precision, recall, F1 on a time-ordered 60/20/20 split."""
    from paykeep.aml.graph.io import read_patterns, read_transactions
    from paykeep.aml.graph.service import (
        evaluate_accounts,
        evaluate_transactions,
        train_default_model,
    )
    from paykeep.aml.graph.train import model_path
    from paykeep.aml.graph.train import save_model as save

    with typed_errors():
        _check_format(input_format)
        if input_format == "paykeep":
            raise InvalidGraphParameter("the paykeep format carries no labels: nothing to evaluate")
        attempts = read_patterns(patterns) if patterns is not None else None
        txs = read_transactions(input_format, inputs)
        if input_format == "amlsim":
            if attempts is not None:
                raise InvalidGraphParameter("AMLSim labels are per account: --patterns is unused")
            report, model = evaluate_accounts(txs, seed=seed)
        else:
            transfer_model = (
                train_default_model("transaction", seed=seed) if transfer and attempts else None
            )
            report, model = evaluate_transactions(
                txs, attempts, seed=seed, transfer_model=transfer_model
            )
        if save_model:
            settings = settings_from(data_dir, database_url)
            report["saved_model"] = str(save(model, model_path(settings.data_dir, model.level)))
    if as_json:
        print_json(report)
        return
    test = report["test"]
    typer.echo(
        f"{report['level']}-level test: precision {test['precision']:.4f} "
        f"recall {test['recall']:.4f} F1 {test['f1']:.4f} ({test['positives']} positives)"
    )
    for typology, figures in report.get("typology_recall", {}).items():
        typer.echo(
            f"  {typology}: model recall {figures['model_recall']} on {figures['test_rows']} "
            f"test rows; detector recall {figures['detector_recall']}"
        )


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``paykeep aml``."""
    app.command("simulate")(simulate_command)
    app.command("scan")(scan_command)
    app.command("eval")(eval_command)
