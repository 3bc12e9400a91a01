"""The benchmark function returns the figures the lead's `paykeep bench aml` reports."""

from __future__ import annotations

import json

from paykeep.aml.screening.bench import run_screening_bench

from .conftest import NEGATIVES, POSITIVES, SDN_SAMPLE


def test_bench_figures_are_json_and_consistent() -> None:
    figures = run_screening_bench(SDN_SAMPLE, [POSITIVES, NEGATIVES], warmup=10)
    json.dumps(figures)  # JSON-able
    for key in ("screenings_per_s", "latency_ms_p50", "latency_ms_p99",
                "baseline_lookups_per_s", "ratio", "list_entities"):  # fmt: skip
        assert key in figures
    assert figures["list_entities"] == 244 and figures["queries"] == 230
    assert 0 < figures["latency_ms_p50"] <= figures["latency_ms_p99"] <= figures["latency_ms_max"]
    expected_ratio = figures["screenings_per_s"] / figures["baseline_lookups_per_s"]
    assert abs(figures["ratio"] - expected_ratio) < 1e-3
    # Fuzzy screening finds at least what exact lookup finds.
    assert figures["queries_with_hit"] >= figures["baseline_queries_with_hit"] >= 47
