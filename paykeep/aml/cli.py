"""``paykeep aml ...``: each part of the AML context registers its own commands here."""

from __future__ import annotations

import typer

from paykeep.aml.graph import cli as graph_cli
from paykeep.aml.screening import cli as screening_cli

aml_app = typer.Typer(help="Financial crime: screening, typologies, evaluation.")
screening_cli.register(aml_app)
graph_cli.register(aml_app)
