"""The command line, run as a real subprocess: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from paykeep.config import SQLITE_FILE_NAME, Settings
from tests.support import paykeep


def test_demo_runs_and_audits_clean(settings: Settings) -> None:
    done = paykeep("ledger", "demo", "--json", settings=settings)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["audit"]["ok"] is True
    results = [r for step in outcome["steps"] for r in step["results"]]
    assert "pending_transfer_already_posted" in results
    assert "exceeds_credits" in results
    assert outcome["balances"]["platform:fees"] == "3.48 EUR"  # 2.9 % of 120.00, half-even
    # The demo can run again on the same data (fresh names and ids every run).
    again = paykeep("ledger", "demo", "--json", settings=settings)
    assert again.returncode == 0, again.stderr
    verify = paykeep("audit", "verify", "--json", settings=settings)
    assert verify.returncode == 0
    assert json.loads(verify.stdout)["transfers_checked"] == 2 * outcome["audit"]["head_seq"]


def test_ledger_commands_and_bad_input(settings: Settings) -> None:
    assert paykeep("ledger", "create-account", "1", "EUR", settings=settings).returncode == 0
    made = paykeep(
        "ledger", "create-account", "2", "EUR", "--no-overdraft", "--json", settings=settings
    )
    assert made.returncode == 0
    assert json.loads(made.stdout)["flags"] == 2
    moved = paykeep(
        "ledger", "transfer", "10", "1", "2", "12.34", "EUR", "--json", settings=settings
    )
    assert moved.returncode == 0, moved.stderr
    assert json.loads(moved.stdout)["amount_minor"] == 1234

    # Bad input: exit 2, one line on stderr, nothing moved.
    for args, needle in [
        (("ledger", "transfer", "11", "1", "2", "1.234", "EUR"), "amount_precision_exceeded"),
        (("ledger", "transfer", "11", "1", "2", "1.00", "XYZ"), "unknown_currency"),
        (("ledger", "transfer", "11", "2", "1", "99.00", "EUR"), "exceeds_credits"),
        (("ledger", "transfer", "11", "1", "3", "1.00", "EUR"), "credit_account_not_found"),
        (("ledger", "transfer", "10", "1", "2", "1.00", "EUR"), "exists_with_different_amount"),
        (("ledger", "balance", "999"), "account_not_found"),
    ]:
        done = paykeep(*args, settings=settings)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert needle in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert "Traceback" not in done.stderr
    balance = paykeep("ledger", "balance", "2", "--json", settings=settings)
    assert json.loads(balance.stdout)["credits_posted"] == 1234
    listed = paykeep("ledger", "transfers", "2", settings=settings)
    assert [t["id"] for t in json.loads(listed.stdout)["data"]] == [10]


def test_audit_verify_names_a_tampered_row(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert paykeep("ledger", "demo", settings=settings).returncode == 0
    with sqlite3.connect(tmp_path / SQLITE_FILE_NAME) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE ledger_transfers SET amount_minor = amount_minor + 1")
        # An attacker with write access to the file can drop the guard; the hash chain remains.
        conn.execute("DROP TRIGGER ledger_transfers_no_update")
        conn.execute("UPDATE ledger_transfers SET amount_minor = amount_minor + 1 WHERE seq = 2")
    done = paykeep("audit", "verify", "--json", settings=settings)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    kinds = {(p["kind"], p["seq"]) for p in report["problems"]}
    assert ("hash_mismatch", 2) in kinds
    plain = paykeep("audit", "verify", settings=settings)
    assert plain.returncode == 1
    assert "seq 2" in plain.stderr


def test_usage_errors_exit_2() -> None:
    done = paykeep("ledger", "transfer", "not-a-number")
    assert done.returncode == 2
    done = paykeep("bench", "ledger", "--backend", "oracle")
    assert done.returncode == 2
    assert "unknown backend" in done.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_bench_ledger_prints_figures_with_baseline(backend: str) -> None:
    done = paykeep(
        "bench", "ledger", "--backend", backend, "--transfers", "2000", "--batch-size", "500",
        "--accounts", "100", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["transfers_ok"] == 2000
    assert figures["transfers_per_s"] > 0 and figures["raw_insert_rows_per_s"] > 0
    assert figures["ratio"] == pytest.approx(
        figures["transfers_per_s"] / figures["raw_insert_rows_per_s"], rel=1e-2
    )
    assert 0 < figures["batch_latency_ms_p50"] <= figures["batch_latency_ms_p99"]
    assert "synchronous=" in figures["durability"]


def test_bench_group_commit_acknowledges_every_transfer() -> None:
    done = paykeep(
        "bench", "ledger", "--transfers", "640", "--batch-size", "1", "--concurrency", "16",
        "--accounts", "50", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["transfers_ok"] == 640
    # Coalescing happened: fewer database transactions than transfers.
    assert figures["database_commits"] < 640


SANCTIONS = Path(__file__).parent / "fixtures" / "sanctions"


def test_bench_aml_prints_each_part_beside_its_baseline() -> None:
    done = paykeep(
        "bench", "aml", "--sanctions-list", str(SANCTIONS / "sdn_sample.csv"),
        "--queries", str(SANCTIONS / "positives_un_untreated_head80.csv"),
        "--queries", str(SANCTIONS / "negatives_global_head150.csv"),
        "--transactions", "2000", "--decisions", "300", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["parts"] == ["screening", "rules", "graph"]
    screening, rules, graph = figures["screening"], figures["rules"], figures["graph"]
    assert screening["queries"] == 80 + 150
    assert screening["screenings_per_s"] > 0 and screening["baseline_lookups_per_s"] > 0
    assert screening["latency_ms_p50"] <= screening["latency_ms_p99"]
    assert rules["decisions"] == 300 and rules["baseline_lookups_per_s"] > 0
    assert rules["decision_ms_p50"] <= rules["decision_ms_p99"]
    assert graph["transactions"] == 2000
    assert all(part["target"] for part in (screening, rules, graph))


def test_bench_aml_refuses_a_screening_run_without_a_list() -> None:
    done = paykeep("bench", "aml", "--part", "screening", "--json")
    assert done.returncode == 2
    assert "bench_input_invalid" in done.stderr and "--sanctions-list" in done.stderr
    done = paykeep("bench", "aml", "--part", "ledger")
    assert done.returncode == 2 and "parts must be some of" in done.stderr
