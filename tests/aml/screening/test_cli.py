"""``paykeep aml pairs|screen|lists|allow|screening-eval``: exit codes, outputs, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paykeep.cli import app

from .conftest import NEGATIVES, POSITIVES, POSITIVES_TREATED, SDN_SAMPLE, UN_SAMPLE

PAYKEEP = Path(sys.executable).with_name("paykeep")


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    code, _, err = run(
        "aml", "lists", "import", str(SDN_SAMPLE), "--format", "ofac-csv",
        "--data-dir", str(directory),
    )  # fmt: skip
    assert code == 0, err
    return directory


def test_pairs_writes_scores_and_matches(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "name1,name2,schema\n"
        '"SALEK, ABDULHAI",ABDULHAI SALEK,Person\n'
        "Acme Trading LLC,ACME TRADING LIMITED LIABILITY COMPANY,Company\n"
        "John Smith,Maria Gonzalez,\n",
        encoding="utf-8",
    )
    out = tmp_path / "out.csv"
    code, _, err = run("aml", "pairs", str(pairs), "--out", str(out))
    assert code == 0, err
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["match"] for r in rows] == ["true", "true", "false"]
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert rows[0]["name1"] == "SALEK, ABDULHAI" and rows[0]["schema"] == "Person"
    # Without --out the CSV goes to stdout.
    code, stdout, _ = run("aml", "pairs", str(pairs))
    assert code == 0
    assert list(csv.DictReader(io.StringIO(stdout))) == rows


def test_pairs_missing_column_is_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\nx,y\n", encoding="utf-8")
    code, _, err = run("aml", "pairs", str(bad))
    assert code == 2
    assert err.startswith("paykeep: screening_csv_invalid:") and err.count("\n") == 1


def test_screen_json_returns_explained_hits_and_exit_1(data_dir: Path) -> None:
    code, stdout, _ = run(
        "aml", "screen", "HAFIZ ABUDL SALAM BHUTTAVI", "--dob", "1940", "--country", "Pakistan",
        "--schema", "Person", "--json", "--data-dir", str(data_dir),
    )  # fmt: skip
    assert code == 1  # a hit is a failed check
    document = json.loads(stdout)
    assert document["hit"] is True and document["threshold"] == 0.8
    assert document["list_versions"][0].startswith("ofac-sdn@")
    top = document["matches"][0]
    assert top["matched_name"] == "BHUTTAVI, Hafiz Abdul Salam"
    features = {f["feature"]: f for f in top["explanation"]}
    assert set(features) >= {"name_similarity", "token_overlap", "phonetic", "date_of_birth"}
    assert features["date_of_birth"]["contribution"] > 0
    assert features["country"]["contribution"] > 0


def test_screen_no_hit_is_exit_0(data_dir: Path) -> None:
    code, stdout, _ = run("aml", "screen", "Greta Lindqvist", "--json", "--data-dir", str(data_dir))
    assert code == 0
    assert json.loads(stdout)["matches"] == []


@pytest.mark.parametrize(
    ("args", "code_prefix"),
    [
        (["aml", "screen", "X Y", "--dob", "31/12/1970"], "screening_query_invalid"),
        (["aml", "screen", "X Y", "--threshold", "2"], "screening_query_invalid"),
        (["aml", "screen"], "screening_query_invalid"),
        (["aml", "screen", "--input", "x.csv"], "screening_query_invalid"),
    ],
)
def test_screen_bad_usage_is_exit_2(data_dir: Path, args: list[str], code_prefix: str) -> None:
    code, _, err = run(*args, "--data-dir", str(data_dir))
    assert code == 2
    assert err.startswith(f"paykeep: {code_prefix}:") and err.count("\n") == 1


def test_screen_without_lists_is_exit_2(tmp_path: Path) -> None:
    code, _, err = run("aml", "screen", "Anyone", "--data-dir", str(tmp_path / "empty"))
    assert code == 2 and err.startswith("paykeep: screening_no_lists:")


def test_screen_input_file(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "hits.csv"
    code, stdout, _ = run(
        "aml", "screen", "--input", str(POSITIVES_TREATED), "--out", str(out), "--json",
        "--data-dir", str(data_dir),
    )  # fmt: skip
    assert code == 1
    summary = json.loads(stdout)
    assert summary["rows"] == 80 and summary["hits"] >= 40
    assert len(list(csv.DictReader(out.open(encoding="utf-8")))) == 80


def test_lists_show_marks_the_current_version(data_dir: Path) -> None:
    code, _, _ = run(
        "aml", "lists", "import", str(UN_SAMPLE), "--format", "un-xml", "--data-dir", str(data_dir)
    )
    assert code == 0
    code, stdout, _ = run("aml", "lists", "show", "--json", "--data-dir", str(data_dir))
    versions = json.loads(stdout)["versions"]
    assert code == 0 and len(versions) == 2 and all(v["current"] for v in versions)
    assert {v["source"] for v in versions} == {"ofac-sdn", "un-sc"}
    assert {v["entity_count"] for v in versions} == {244, 3}


def test_allow_add_and_show(data_dir: Path) -> None:
    args = ["--data-dir", str(data_dir)]
    code, stdout, _ = run("aml", "screen", "Bilal bin Marwan", "--json", *args)
    entity_id = json.loads(stdout)["matches"][0]["entity_id"]
    assert code == 1
    code, _, err = run(
        "aml", "allow", "add", "Bilal bin Marwan", entity_id, "--reason", "KYC", *args
    )
    assert code == 0, err
    code, stdout, _ = run("aml", "screen", "Bilal bin Marwan", "--json", *args)
    assert code == 0 and json.loads(stdout)["matches"][0]["allowed"] is True
    code, stdout, _ = run("aml", "allow", "show", "--json", *args)
    assert json.loads(stdout)["allow_list"][0]["entity_id"] == entity_id


def test_screening_eval_on_fixture_slices() -> None:
    code, stdout, err = run(
        "aml", "screening-eval", "--positives", str(POSITIVES), "--positives",
        str(POSITIVES_TREATED), "--negatives", str(NEGATIVES), "--list", str(SDN_SAMPLE),
        "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(stdout)
    plain = report["positives"]["positives_un_untreated_head80"]
    assert plain["matched_subset_rows"] == 47
    assert plain["recall_matched_subset"] == 1.0
    assert report["negatives"]["negatives_global_head150"]["false_positive_rate"] == 0.0
    assert [s["threshold"] for s in report["sweep"]][:2] == [0.7, 0.75]


# --- as a real process: exit statuses and the one-line stderr, no traceback ------------------


def _process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PAYKEEP), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_process_bad_list_files_exit_2_and_leave_no_trace(tmp_path: Path) -> None:
    data = tmp_path / "data"
    bomb = tmp_path / "bomb.xml"
    bomb.write_bytes(
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
        b"<CONSOLIDATED_LIST>&b;</CONSOLIDATED_LIST>"
    )
    latin1 = tmp_path / "sdn.csv"
    latin1.write_bytes('1,"JOSÉ",-0-,-0-,-0-,-0-,-0-,-0-,-0-,-0-,-0-,-0-\r\n'.encode("latin-1"))
    for path, fmt, code in [
        (bomb, "un-xml", "list_xml_unsafe"),
        (latin1, "ofac-csv", "list_file_not_utf8"),
        (tmp_path / "missing.csv", "ofac-csv", "list_file_unreadable"),
        (SDN_SAMPLE, "excel", "list_format_unknown"),
    ]:
        done = _process(
            "aml", "lists", "import", str(path), "--format", fmt, "--data-dir", str(data)
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"paykeep: {code}:") and done.stderr.count("\n") == 1
        assert "Traceback" not in done.stderr
    assert not data.exists() or not any(data.rglob("*.jsonl"))
