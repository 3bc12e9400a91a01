"""``paykeep bench aml``: the three AML figures of issue 5 in one run, each beside its baseline.

- screening: screenings per second and p99 latency against a full list (the SDN list), beside
  a plain dictionary lookup of the same normalised names (``aml.screening.bench``);
- rules: the real-time decision p99 beside a plain dictionary lookup (``aml.rules.bench``);
- graph: the scan of a generated history (5,000,000 transactions by default) beside a plain
  ``polars`` group-by over the same data, with the scan's peak memory
  (``aml.graph.bench``, which scans in a child process so the peak is the scan's own).

Each part is imported only when it runs: the graph part needs polars and LightGBM, the
screening part the name tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paykeep.errors import InvalidInput

PARTS = ("screening", "rules", "graph")
#: What issue 5 asks of each figure; printed beside the measurement, never used to pass/fail.
TARGETS = {
    "screening": {"screenings_per_s_min": 2_000},
    "rules": {"decision_latency_ms_p99_max": 10.0},
    "graph": {"transactions": 5_000_000, "scan_s_max": 120.0, "peak_memory_mb_max": 8_192},
}


class BenchInputInvalid(InvalidInput):
    code = "bench_input_invalid"


def run_aml_bench(
    *,
    parts: Sequence[str] = PARTS,
    sanctions_list: Path | None = None,
    list_format: str = "ofac-csv",
    queries: Sequence[Path] = (),
    transactions: int = 5_000_000,
    decisions: int = 5_000,
    seed: int = 0,
) -> dict[str, Any]:
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise BenchInputInvalid(f"parts must be some of {', '.join(PARTS)}; got {unknown}")
    if "screening" in parts and (sanctions_list is None or not queries):
        raise BenchInputInvalid(
            "the screening part needs --sanctions-list FILE and at least one --queries FILE "
            "(a CSV with full_name[,date_of_birth,nationality,gender]); or leave it out with "
            "--part rules --part graph",
            param="sanctions_list",
        )
    if "graph" in parts:
        from paykeep.aml.graph.simulate import SIMULATE_TRANSACTIONS_MAX

        if not 1_000 <= transactions <= SIMULATE_TRANSACTIONS_MAX:
            raise BenchInputInvalid(
                f"--transactions must be 1000..{SIMULATE_TRANSACTIONS_MAX}", param="transactions"
            )
    out: dict[str, Any] = {"parts": list(parts)}
    if "screening" in parts:
        from paykeep.aml.screening.bench import run_screening_bench

        assert sanctions_list is not None
        out["screening"] = run_screening_bench(sanctions_list, queries, list_format=list_format)
        out["screening"]["target"] = TARGETS["screening"]
    if "rules" in parts:
        from paykeep.aml.rules.bench import run_rules_bench

        out["rules"] = run_rules_bench(decisions=decisions, seed=seed + 7)
        out["rules"]["target"] = TARGETS["rules"]
    if "graph" in parts:
        from paykeep.aml.graph.bench import run_graph_bench

        out["graph"] = run_graph_bench(transactions, seed=seed)
        out["graph"]["target"] = TARGETS["graph"]
    return out
