"""Building ``paykeep``'s command tree imports neither the matchers nor the data libraries.

Every ``paykeep`` invocation -- ``--help``, a ledger command -- imports ``paykeep.cli``, which
registers the screening and graph commands; their heavy imports happen inside the commands.
"""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from paykeep.aml.graph import cli as graph_cli
from paykeep.aml.graph.io import INPUT_FORMATS
from paykeep.aml.screening import sources
from paykeep.aml.screening.defaults import DEFAULT_THRESHOLD, FORMATS
from paykeep.aml.screening.model import DEFAULT_CONFIG
from paykeep.cli import app

#: Modules that cost tens to hundreds of milliseconds each, or load name tables.
HEAVY = (
    "polars", "numpy", "lightgbm", "sklearn", "rustworkx", "rapidfuzz", "anyascii", "jellyfish",
    "nameparser", "pycountry", "cleanco", "defusedxml",
    "paykeep.aml.screening.model", "paykeep.aml.screening.service",
    "paykeep.aml.screening.sources", "paykeep.aml.graph.io", "paykeep.aml.graph.model",
    "paykeep.aml.graph.service",
)  # fmt: skip


def test_importing_the_cli_imports_no_heavy_module() -> None:
    script = f"import sys, paykeep.cli\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == []


def test_help_texts_name_the_same_values_as_the_modules() -> None:
    assert DEFAULT_CONFIG.threshold == DEFAULT_THRESHOLD
    assert graph_cli._INPUT_FORMATS_HELP == INPUT_FORMATS
    assert set(FORMATS) == set(sources._PARSERS)
    result = CliRunner().invoke(app, ["aml", "lists", "import", "--help"])
    assert result.exit_code == 0 and "ofac-csv" in result.stdout
    result = CliRunner().invoke(app, ["aml", "scan", "--help"])
    assert result.exit_code == 0 and "amlworld" in result.stdout and "amlsim" in result.stdout
