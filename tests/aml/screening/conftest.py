"""Shared fixtures: the small sanctions files under tests/fixtures/sanctions."""

from __future__ import annotations

from pathlib import Path

import pytest

from paykeep.aml.screening.model import ScreeningIndex
from paykeep.aml.screening.sources import parse_list

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sanctions"
SDN_SAMPLE = FIXTURES / "sdn_sample.csv"
UN_SAMPLE = FIXTURES / "un_sample.xml"
FTM_SAMPLE = FIXTURES / "ftm_sample.jsonl"
POSITIVES = FIXTURES / "positives_un_untreated_head80.csv"
POSITIVES_TREATED = FIXTURES / "positives_un_treated_head80.csv"
NEGATIVES = FIXTURES / "negatives_global_head150.csv"


@pytest.fixture(scope="session")
def sdn_index() -> ScreeningIndex:
    return ScreeningIndex.build(parse_list(SDN_SAMPLE.read_bytes(), "ofac-csv", "ofac-sdn"))


@pytest.fixture(scope="session")
def all_index() -> ScreeningIndex:
    entities = parse_list(SDN_SAMPLE.read_bytes(), "ofac-csv", "ofac-sdn")
    entities += parse_list(UN_SAMPLE.read_bytes(), "un-xml", "un-sc")
    entities += parse_list(FTM_SAMPLE.read_bytes(), "ftm", "ftm")
    return ScreeningIndex.build(entities)
