"""The banksim process: start-up line, clean SIGTERM, bad options, and isolation from the core."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from paykeep.bench.gateway import BanksimProcess


def test_prints_its_ports_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    process = BanksimProcess(tmp_path / "bs")
    with httpx.Client(base_url=process.base_url, timeout=5) as http:
        assert http.get("/health").json()["status"] == "ok"
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(timeout=10) == 0
    process.stop()


def test_the_paykeep_command_runs_the_same_process(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "paykeep.cli", "banksim", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())
        assert set(ports) == {"http_port", "card_port"}
        assert httpx.get(f"http://127.0.0.1:{ports['http_port']}/health", timeout=5).is_success
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_a_bad_faults_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"cards": [{"kind": "explode"}]}))
    result = subprocess.run(
        [sys.executable, "-m", "paykeep.banksim", "--data-dir", str(tmp_path),
         "--faults", str(faults)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "fault kind" in result.stderr


def test_a_faults_file_is_applied_at_start(tmp_path: Path) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text(
        json.dumps(
            {
                "cards": [{"kind": "unavailable", "next": 2}],
                "bank": {"unknown_reference_line": True},
            }
        )
    )
    with BanksimProcess(tmp_path / "bs", ["--faults", str(faults)]) as bank, bank.http() as http:
        rules = http.get("/faults/cards").json()["faults"]
        assert [(r["kind"], r["remaining"]) for r in rules] == [("unavailable", 2)]
        assert http.get("/bank/faults").json()["unknown_reference_line"] is True


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"bank": {"unknown_reference_line": "yes"}}, "bank faults"),
        ({"bank": {"explode": True}}, "bank faults"),
        ({"printer": {}}, "unknown sections"),
    ],
)
def test_a_bad_bank_section_is_one_line_and_exit_2(
    tmp_path: Path, document: dict[str, object], words: str
) -> None:
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps(document))
    result = subprocess.run(
        [sys.executable, "-m", "paykeep.banksim", "--data-dir", str(tmp_path),
         "--faults", str(faults)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and words in result.stderr


def test_nothing_outside_banksim_and_the_cli_imports_banksim() -> None:
    """Import every paykeep module except paykeep.banksim.* and paykeep.cli in a fresh
    interpreter: the simulator must not be among the loaded modules."""
    code = (
        "import importlib, pathlib, sys, paykeep\n"
        "root = pathlib.Path(paykeep.__file__).parent\n"
        "for path in sorted(root.rglob('*.py')):\n"
        "    parts = list(path.relative_to(root.parent).with_suffix('').parts)\n"
        "    if parts[-1] == '__init__':\n"
        "        parts.pop()\n"
        "    n = '.'.join(parts)\n"
        "    if n.startswith('paykeep.banksim') or n == 'paykeep.cli' or '.migrations' in n:\n"
        "        continue\n"
        "    importlib.import_module(n)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('paykeep.banksim'))\n"
        "print(len([m for m in sys.modules if m.startswith('paykeep.')]), loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    count = int(result.stdout.split()[0])
    assert count > 20  # the walk really imported the code base
