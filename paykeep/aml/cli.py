"""``paykeep aml ...``: each part of the AML context registers its own commands here."""

from __future__ import annotations

import typer

from paykeep.aml.cases import cli as cases_cli
from paykeep.aml.graph import cli as graph_cli
from paykeep.aml.rules import cli as rules_cli
from paykeep.aml.screening import cli as screening_cli

aml_app = typer.Typer(
    help="Financial crime: screening, real-time rules, cases, typologies, evaluation."
)
screening_cli.register(aml_app)
graph_cli.register(aml_app)
rules_cli.register(aml_app)
cases_cli.register(aml_app)
