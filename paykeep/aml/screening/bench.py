"""Screening benchmark: throughput and latency against a full list, beside a baseline.

``run_screening_bench`` builds the index of a list file, then screens every row of the given
people CSVs (``full_name[,date_of_birth,nationality,gender]``) one at a time, timing each.
The baseline, measured in the same run on the same queries, is what the cheapest possible
screen costs: normalise the name (uncached) and look it up in a dictionary of the list's
normalised names -- exact matching only, no fuzziness, no evidence.

Caches are cleared (name normalisation, token similarity), then ``warmup`` queries spread
over the set are screened untimed: one-time costs (anyascii's per-script tables, the title,
legal-form and country tables) are not counted, and the figures are not flattered by having
seen every query before (the normalisation cache is cleared again; the token-similarity cache
keeps what the warm-up put in it, as a running service would).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paykeep.aml.screening import model
from paykeep.aml.screening.defaults import DEFAULT_SOURCES
from paykeep.aml.screening.errors import ListFileUnreadable
from paykeep.aml.screening.evaluate import query_from_row
from paykeep.aml.screening.model import PERSON, MatchConfig, ScreeningIndex
from paykeep.aml.screening.service import freeze_long_lived_objects
from paykeep.aml.screening.sources import parse_list
from paykeep.clock import monotonic_s


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    position = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[position]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ListFileUnreadable(f"cannot read {path}: {exc.strerror}") from None


def run_screening_bench(
    list_file: Path,
    query_files: Sequence[Path],
    *,
    list_format: str = "ofac-csv",
    max_queries: int | None = None,
    warmup: int = 100,
    config: MatchConfig = model.DEFAULT_CONFIG,
) -> dict[str, Any]:
    """Screen the rows of ``query_files`` against ``list_file``; return JSON-able figures."""
    started = monotonic_s()
    entities = parse_list(_read(list_file), list_format, DEFAULT_SOURCES.get(list_format, "list"))
    parsed_s = monotonic_s() - started
    started = monotonic_s()
    index = ScreeningIndex.build(entities)
    freeze_long_lived_objects()
    index_s = monotonic_s() - started

    rows: list[dict[str, str]] = []
    for path in query_files:
        rows.extend(csv.DictReader(io.StringIO(_read(path).decode("utf-8-sig"), newline="")))
    queries = [query_from_row(r) for r in rows][:max_queries]
    if not queries:
        raise ValueError("no query rows to benchmark")

    model.normalise_name.cache_clear()
    model._token_similarity.cache_clear()
    for query in queries[:: max(1, len(queries) // max(1, warmup))][:warmup]:
        index.screen(query, config)
    model.normalise_name.cache_clear()

    latencies: list[float] = []
    hits = 0
    run_started = monotonic_s()
    for query in queries:
        t0 = monotonic_s()
        matches = index.screen(query, config)
        latencies.append(monotonic_s() - t0)
        hits += 1 if matches else 0
    run_s = monotonic_s() - run_started

    # Baseline: the same queries, normalised without the cache, looked up exactly.
    exact: dict[str, str] = {}
    for entity in index.entities:
        for name in entity.names:
            exact.setdefault(" ".join(sorted(model.normalise_name(name, entity.schema))), "")
    normalise = model.normalise_name.__wrapped__
    baseline_started = monotonic_s()
    baseline_hits = 0
    for query in queries:
        if " ".join(sorted(normalise(query.name, PERSON))) in exact:
            baseline_hits += 1
    baseline_s = monotonic_s() - baseline_started

    latencies.sort()
    screenings_per_s = len(queries) / run_s
    baseline_per_s = len(queries) / baseline_s
    return {
        "list_file": list_file.name,
        "list_entities": len(index),
        "list_names": index.name_count,
        "list_parse_s": round(parsed_s, 3),
        "index_build_s": round(index_s, 3),
        "queries": len(queries),
        "threshold": config.threshold,
        "screenings_per_s": round(screenings_per_s, 1),
        "latency_ms_p50": round(_percentile(latencies, 0.50) * 1000, 3),
        "latency_ms_p99": round(_percentile(latencies, 0.99) * 1000, 3),
        "latency_ms_max": round(latencies[-1] * 1000, 3),
        "latency_ms_mean": round(statistics.fmean(latencies) * 1000, 3),
        "queries_with_hit": hits,
        "baseline": "normalise name (uncached) + exact dict lookup of normalised list names",
        "baseline_lookups_per_s": round(baseline_per_s, 1),
        "baseline_queries_with_hit": baseline_hits,
        "ratio": round(screenings_per_s / baseline_per_s, 4),
    }
