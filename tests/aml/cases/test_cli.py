"""``paykeep aml cases ...`` and ``paykeep aml rules ...``: exit codes, one-line errors, JSON.

The commands are mounted the way the lead mounts them (``register(app)``) on a fresh app.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from paykeep.aml.cases import cli as cases_cli
from paykeep.aml.rules import cli as rules_cli
from paykeep.aml.rules.service import DecisionEngine
from paykeep.config import Settings
from paykeep.db import Database
from tests.aml.rules.helpers import FakeSanctions, K, ev

app = typer.Typer()
cases_cli.register(app)
rules_cli.register(app)


def run(settings: Settings, *args: str) -> tuple[int, str, str]:
    where = ["--data-dir", str(settings.data_dir)]
    if settings.database_url:
        where += ["--database-url", settings.database_url]
    result = CliRunner().invoke(app, [*args, *where])
    return result.exit_code, result.stdout, result.stderr


def refused(settings: Settings, needle: str, *args: str) -> None:
    code, _, err = run(settings, *args)
    assert code == 2, (args, err)
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cases_commands(settings: Settings, database: Database, tmp_path: Path) -> None:
    decision = DecisionEngine(database, FakeSanctions()).decide(
        ev(K.PAYMENT, 900_000, payer_age_s=60, event_id="order-1")
    )
    case_id = str(decision.case_id)

    code, out, _ = run(settings, "cases", "list", "--json")
    assert code == 0 and [c["case_id"] for c in json.loads(out)["cases"]] == [decision.case_id]
    assert run(settings, "cases", "list", "--state", "reported", "--json")[1].count("case_id") == 0
    assert run(settings, "cases", "assign", case_id, "alice", "--actor", "lead")[0] == 0
    assert run(settings, "cases", "note", case_id, "looked at it", "--actor", "alice")[0] == 0
    code, out, _ = run(
        settings, "cases", "transition", case_id, "investigate", "--actor", "alice", "--json"
    )
    assert code == 0 and json.loads(out)["case"]["state"] == "investigating"

    refused(
        settings,
        "case_illegal_transition",
        "cases",
        "transition",
        case_id,
        "report",
        "--actor",
        "alice",
    )
    refused(
        settings,
        "case_input_invalid",
        "cases",
        "transition",
        case_id,
        "approve",
        "--actor",
        "alice",
    )
    refused(settings, "case_input_invalid", "cases", "note", case_id, "x", "--actor", "a b")
    refused(settings, "case_not_found", "cases", "show", "999999")
    refused(
        settings,
        "case_input_invalid",
        "cases",
        "export",
        case_id,
        "--format",
        "pdf",
        "--actor",
        "alice",
    )

    target = tmp_path / "sar.xml"
    code, out, _ = run(
        settings, "cases", "export", case_id, "--actor", "alice", "--output", str(target), "--json"
    )
    assert code == 0 and json.loads(out)["bytes"] == len(target.read_bytes())
    assert target.read_text().startswith('<?xml version="1.0"')
    code, out, _ = run(
        settings, "cases", "export", case_id, "--actor", "alice", "--format", "goaml-json"
    )
    assert code == 0 and json.loads(out)["report"]["entity_reference"].startswith("CASE-")

    code, out, _ = run(settings, "cases", "show", case_id, "--json")
    shown = json.loads(out)
    assert (
        code == 0 and shown["assignee"] == "alice" and shown["notes"][0]["body"] == ("looked at it")
    )
    assert [e["kind"] for e in shown["trail"]][-4:] == [
        "note_added",
        "transitioned",
        "exported",
        "exported",
    ]
    code, out, _ = run(settings, "cases", "show", case_id)
    assert code == 0 and "trail:" in out


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_rules_commands(settings: Settings) -> None:
    code, out, _ = run(settings, "rules", "list", "--json")
    assert code == 0 and len(json.loads(out)["rules"]) == 8
    code, out, _ = run(
        settings,
        "rules",
        "set-config",
        "velocity",
        "count_max=5",
        "--shadow",
        "--actor",
        "alice",
        "--json",
    )
    assert code == 0
    made = json.loads(out)
    assert (made["version"], made["mode"], made["params"]["count_max"]) == (2, "shadow", 5)
    code, out, _ = run(settings, "rules", "show", "velocity", "--json")
    shown = json.loads(out)
    assert (shown["live"]["version"], shown["shadow"]["version"]) == (1, 2)
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    assert run(settings, "rules", "promote", "velocity", "--actor", "bob")[0] == 0
    refused(settings, "rule_no_shadow", "rules", "drop-shadow", "velocity", "--actor", "bob")
    refused(
        settings,
        "rule_config_invalid",
        "rules",
        "set-config",
        "velocity",
        "count_max=0",
        "--actor",
        "bob",
    )
    refused(
        settings,
        "rule_config_invalid",
        "rules",
        "set-config",
        "velocity",
        "count_max",
        "--actor",
        "bob",
    )
    refused(settings, "rule_not_found", "rules", "show", "nope")
    code, out, _ = run(settings, "rules", "list")
    assert code == 0 and "velocity" in out and "live v2" in out
