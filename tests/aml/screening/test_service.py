"""Use cases over a data directory: versions, idempotency, re-screening, allow-list, files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from paykeep.aml.screening.errors import (
    ListFormatInvalid,
    ListStoreCorrupt,
    ScreeningCsvInvalid,
    ScreeningNoLists,
    ScreeningPartiesInvalid,
    ScreeningQueryInvalid,
)
from paykeep.aml.screening.service import ScreeningService, make_query
from paykeep.clock import FakeClock

from .conftest import FTM_SAMPLE, NEGATIVES, POSITIVES, SDN_SAMPLE, UN_SAMPLE


def _service(data_dir: Path) -> ScreeningService:
    return ScreeningService(data_dir=data_dir, clock=FakeClock())


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_import_creates_an_immutable_version_and_is_idempotent(tmp_path: Path) -> None:
    service = _service(tmp_path)
    first = service.import_list(SDN_SAMPLE, "ofac-csv")
    assert first.created and first.version.entity_count == 244
    assert first.version.version_id.startswith("ofac-sdn@")
    before = _tree(tmp_path)
    again = service.import_list(SDN_SAMPLE, "ofac-csv")
    assert not again.created and again.version == first.version
    assert _tree(tmp_path) == before  # nothing rewritten, not even the manifest


def test_new_content_is_a_new_version_and_old_files_stay(tmp_path: Path) -> None:
    service = _service(tmp_path)
    v1 = service.import_list(SDN_SAMPLE, "ofac-csv").version
    v1_file = tmp_path / "aml/lists/versions" / v1.file_name
    v1_bytes = v1_file.read_bytes()
    smaller = tmp_path / "sdn_smaller.csv"
    smaller.write_bytes(b"\r\n".join(SDN_SAMPLE.read_bytes().split(b"\r\n")[:100]) + b"\r\n")
    v2 = service.import_list(smaller, "ofac-csv").version
    assert v2.version_id != v1.version_id and v2.entity_count == 100
    assert service.current_versions()["ofac-sdn"] == v2
    assert v1_file.read_bytes() == v1_bytes
    # Re-importing the first content re-activates its existing version.
    v1_again = service.import_list(SDN_SAMPLE, "ofac-csv")
    assert v1_again.created and v1_again.version == v1
    assert [h["version_id"] for h in service.repository.history()] == [
        v1.version_id,
        v2.version_id,
        v1.version_id,
    ]
    assert len(service.versions()) == 2


def test_a_bad_file_changes_nothing_on_disk(tmp_path: Path) -> None:
    service = _service(tmp_path)
    service.import_list(SDN_SAMPLE, "ofac-csv")
    before = _tree(tmp_path)
    truncated = tmp_path / "truncated.xml"
    truncated.write_bytes(UN_SAMPLE.read_bytes()[:500])
    before[str(truncated.relative_to(tmp_path))] = truncated.read_bytes()
    with pytest.raises(ListFormatInvalid):
        service.import_list(truncated, "un-xml")
    assert _tree(tmp_path) == before


def test_several_sources_are_screened_together(tmp_path: Path) -> None:
    service = _service(tmp_path)
    service.import_list(SDN_SAMPLE, "ofac-csv")
    service.import_list(UN_SAMPLE, "un-xml")
    service.import_list(FTM_SAMPLE, "ftm", source="opensanctions-test")
    assert sorted(service.current_versions()) == ["ofac-sdn", "opensanctions-test", "un-sc"]
    result = service.screen(make_query("Ildar Gabdullin", schema="Person", birth_dates=["1980"]))
    assert result.hit and result.top is not None
    assert result.top.entity.entity_id == "opensanctions-test:tst-person-1"


def test_tampered_version_file_is_detected(tmp_path: Path) -> None:
    service = _service(tmp_path)
    version = service.import_list(SDN_SAMPLE, "ofac-csv").version
    path = tmp_path / "aml/lists/versions" / version.file_name
    path.chmod(0o644)
    path.write_bytes(path.read_bytes().replace(b"AEROCARIBBEAN", b"AEROCARIBBEEN"))
    with pytest.raises(ListStoreCorrupt, match="checksum"):
        _service(tmp_path).index()


def test_screening_without_lists_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(ScreeningNoLists):
        _service(tmp_path).screen(make_query("Anyone"))


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"name": "  "}, "name"),
        ({"name": "x" * 301}, "name"),
        ({"name": "A B", "schema": "Spaceship"}, "schema"),
        ({"name": "A B", "birth_dates": ["03/04/1970"]}, "dob"),
    ],
)
def test_query_validation_order(kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(ScreeningQueryInvalid) as caught:
        make_query(**kwargs)  # type: ignore[arg-type]
    assert caught.value.param == param


def test_list_import_rescreens_parties_and_reports_only_new_hits(tmp_path: Path) -> None:
    service = _service(tmp_path)
    parties = tmp_path / "aml" / "parties.jsonl"
    parties.parent.mkdir(parents=True)
    parties.write_text(
        json.dumps({"party_id": "c-1", "name": "Qadir Zaman Hotakwal", "date_of_birth": "1971"})
        + "\n"
        + json.dumps({"party_id": "c-2", "name": "Bilal bin Marwan"})
        + "\n"
        + json.dumps({"party_id": "c-3", "name": "Greta Lindqvist", "nationality": "Sweden"})
        + "\n",
        encoding="utf-8",
    )
    first = service.import_list(SDN_SAMPLE, "ofac-csv")
    assert first.rescreen is not None
    assert [p for p, _ in first.rescreen.new_hits] == ["c-2"]
    second = service.import_list(UN_SAMPLE, "un-xml")
    assert second.rescreen is not None
    assert second.rescreen.new_hits == (("c-1", "un-sc:900001"),)  # c-2 is not new
    assert service.import_list(UN_SAMPLE, "un-xml").rescreen is None  # unchanged: no re-screen
    results = service.rescreen(service.repository.parties())
    assert [r.hit for r in results] == [True, True, False]


def test_bad_parties_file_is_a_typed_error(tmp_path: Path) -> None:
    service = _service(tmp_path)
    service.import_list(SDN_SAMPLE, "ofac-csv", rescreen=False)
    (tmp_path / "aml" / "parties.jsonl").write_text('{"party_id": "x"}\n', encoding="utf-8")
    with pytest.raises(ScreeningPartiesInvalid, match="line 1"):
        service.rescreen_report()


def test_allow_list_clears_a_false_positive(tmp_path: Path) -> None:
    service = _service(tmp_path)
    service.import_list(UN_SAMPLE, "un-xml")
    query = make_query("Qadir Zaman Hotakwal", schema="Person")
    assert service.screen(query).hit
    service.allow("QADIR HOTAKWAL, Zaman", "un-sc:900001", "different person: DOB 1990, KYC")
    cleared = _service(tmp_path).screen(query)
    assert not cleared.hit and cleared.matches[0].allowed
    with pytest.raises(ScreeningQueryInvalid, match="no entity"):
        service.allow("Someone", "un-sc:404", "typo")
    with pytest.raises(ScreeningQueryInvalid, match="reason"):
        service.allow("Someone", "un-sc:900001", " ")


def test_screen_file_adds_columns_and_keeps_input(tmp_path: Path) -> None:
    service = _service(tmp_path)
    service.import_list(SDN_SAMPLE, "ofac-csv")
    out = tmp_path / "hits.csv"
    results = service.screen_file(POSITIVES, out)
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with POSITIVES.open(encoding="utf-8", newline="") as handle:
        source_rows = list(csv.DictReader(handle))
    assert len(rows) == len(results) == len(source_rows) == 80
    assert list(rows[0])[-4:] == ["hit", "top_score", "top_match", "explanation"]
    assert [r["full_name"] for r in rows] == [r["full_name"] for r in source_rows]
    hit_rows = [r for r in rows if r["hit"] == "true"]
    assert len(hit_rows) >= 47  # the 47 rows whose names are on the sample SDN by word set
    assert all(0.8 <= float(r["top_score"]) <= 1.0 for r in hit_rows)
    assert all("name_similarity=" in r["explanation"] for r in hit_rows)


def test_screen_file_rejects_missing_columns_and_non_utf8(tmp_path: Path) -> None:
    service = _service(tmp_path)
    service.import_list(SDN_SAMPLE, "ofac-csv")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("name,dob\nJohn,1970\n", encoding="utf-8")
    with pytest.raises(ScreeningCsvInvalid, match="lacks column"):
        service.screen_file(wrong, tmp_path / "out.csv")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("full_name\nJosé\n".encode("latin-1"))
    with pytest.raises(ScreeningCsvInvalid, match="not UTF-8"):
        service.screen_file(latin1, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_negatives_sample_has_no_hit_at_default_threshold(tmp_path: Path) -> None:
    service = _service(tmp_path)
    service.import_list(SDN_SAMPLE, "ofac-csv")
    results = service.screen_file(NEGATIVES, tmp_path / "neg.csv")
    assert len(results) == 150 and not any(r.hit for r in results)


def test_screen_file_ignores_a_malformed_dob_with_a_warning(tmp_path: Path) -> None:
    service = _service(tmp_path)
    service.import_list(SDN_SAMPLE, "ofac-csv")
    people = tmp_path / "people.csv"
    people.write_text(
        "full_name,date_of_birth\nHAFIZ ABDUL SALAM BHUTTAVI,1940-13-45\n", encoding="utf-8"
    )
    (result,) = service.screen_file(people, tmp_path / "out.csv")
    assert result.hit and result.query.birth_dates == ()
    (row,) = csv.DictReader((tmp_path / "out.csv").open(encoding="utf-8"))
    assert row["explanation"].startswith("warning: date_of_birth '1940-13-45' ignored")
