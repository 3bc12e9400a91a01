"""The rules benchmark returns the figures the lead wires into ``paykeep bench aml``."""

from __future__ import annotations

import pytest

from paykeep.aml.rules.bench import run_rules_bench


def test_rules_bench_figures() -> None:
    figures = run_rules_bench(decisions=300, history_size=3_000, parties=50, seed=3)
    for key in (
        "decisions_per_s",
        "decision_ms_p50",
        "decision_ms_p99",
        "baseline_lookups_per_s",
        "ratio",
        "rules",
        "history_size",
    ):
        assert key in figures
    assert figures["rules"] == 8 and figures["shadow_rules"] == 1
    assert figures["history_size"] == 3_000
    assert 0 < figures["decision_ms_p50"] <= figures["decision_ms_p99"]
    assert sum(figures["outcomes"].values()) == 300
    assert figures["ratio"] == pytest.approx(
        figures["decisions_per_s"] / figures["baseline_lookups_per_s"], rel=1e-2
    )
    with pytest.raises(ValueError):
        run_rules_bench(decisions=0)
