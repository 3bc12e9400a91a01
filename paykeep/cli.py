"""``paykeep``: the command line. Thin: parses options, calls services, prints results."""

from __future__ import annotations

import sys

import typer

from paykeep.aml.cli import aml_app

app = typer.Typer(
    name="paykeep",
    help="Paykeep: escrow payments for e-commerce marketplaces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: print JSON figures with a same-run baseline.")
app.add_typer(aml_app, name="aml")
app.add_typer(bench_app, name="bench")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("paykeep: interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
