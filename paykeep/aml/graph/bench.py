"""Graph scan throughput beside a same-run baseline (a plain polars group-by).

Both sides read the same generated AMLworld CSV from disk:

- *scan*: read + parse (exact integer amounts) + every detector + features + model scoring +
  explanations of the alerts (the model is trained beforehand on a separate small simulation
  and that training is not timed);
- *baseline*: ``polars.read_csv`` of the same file + one group-by per paying account
  (count, distinct payees, summed amount text length as a cheap aggregate).

``ratio`` is ``scan_seconds / baseline_groupby_seconds``. The scan runs in a freshly spawned
process so that ``peak_rss_mb`` (its maximum resident set size) measures the scan alone, not
the generation of the data set.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from paykeep.aml.graph.errors import InvalidGraphParameter
from paykeep.aml.graph.io import read_amlworld
from paykeep.aml.graph.service import scan_transactions, train_default_model
from paykeep.aml.graph.simulate import (
    SIMULATE_TRANSACTIONS_MAX,
    SimulationConfig,
    simulate,
    write_amlworld,
)
from paykeep.aml.graph.train import load_model, save_model
from paykeep.clock import monotonic_s

TARGET_SECONDS_5M = 120.0
TARGET_PEAK_RSS_MB = 8_192


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


def _scan_in_child(csv_path: str, model_path: str, out: multiprocessing.Queue[Any]) -> None:
    model = load_model(Path(model_path))
    start = monotonic_s()
    txs = read_amlworld([Path(csv_path)])
    alerts = scan_transactions(txs, model)
    out.put(
        {
            "scan_seconds": monotonic_s() - start,
            "alerts": alerts.height,
            "peak_rss_mb": _peak_rss_mb(),
        }
    )


def run_graph_bench(
    transactions: int, *, seed: int = 0, workdir: Path | None = None
) -> dict[str, Any]:
    """Generate ``transactions`` rows, time the graph scan and the baseline; JSON-able dict."""
    if not 1_000 <= transactions <= SIMULATE_TRANSACTIONS_MAX:
        raise InvalidGraphParameter(
            f"benchmark size must be 1000..{SIMULATE_TRANSACTIONS_MAX}, got {transactions}"
        )
    model = train_default_model("transaction", seed=seed)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "bench_Trans.csv"
        sim = simulate(SimulationConfig(transactions=transactions, seed=seed + 1))
        write_amlworld(sim, path)
        del sim
        start = monotonic_s()
        baseline = (
            pl.read_csv(path, infer_schema=False)
            .group_by(pl.nth(1), pl.nth(2))
            .agg(
                pl.len().alias("count"),
                pl.nth(4).n_unique().alias("payees"),
                pl.nth(7).str.len_bytes().sum().alias("amount_chars"),
            )
        )
        baseline_s = monotonic_s() - start
        groups = baseline.height
        del baseline
        model_file = save_model(model, Path(tmp) / "model.json")
        context = multiprocessing.get_context("spawn")
        queue: multiprocessing.Queue[Any] = context.Queue()
        child = context.Process(target=_scan_in_child, args=(str(path), str(model_file), queue))
        child.start()
        figures = queue.get()
        child.join()
        scan_s = float(figures["scan_seconds"])
    return {
        "transactions": transactions,
        "scan_seconds": round(scan_s, 3),
        "transactions_per_s": round(transactions / scan_s, 1),
        "peak_rss_mb": round(float(figures["peak_rss_mb"]), 1),
        "baseline_groupby_seconds": round(baseline_s, 3),
        "ratio": round(scan_s / baseline_s, 2) if baseline_s > 0 else None,
        "alerts": int(figures["alerts"]),
        "baseline_groups": groups,
        "target": {"scan_seconds_5m": TARGET_SECONDS_5M, "peak_rss_mb": TARGET_PEAK_RSS_MB},
    }
