"""Simulation files, the time-ordered split, the model and its persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paykeep.aml.graph.errors import InsufficientLabels, ModelNotFound
from paykeep.aml.graph.features import TRANSACTION_FEATURES, transaction_features
from paykeep.aml.graph.io import pattern_labels, read_amlworld, read_patterns
from paykeep.aml.graph.model import DetectorConfig
from paykeep.aml.graph.service import evaluate_transactions, scan_transactions, split_parts
from paykeep.aml.graph.simulate import (
    Simulation,
    SimulationConfig,
    simulate,
    write_amlworld,
)
from paykeep.aml.graph.train import load_model, metrics, save_model, time_split


def test_simulation_is_deterministic() -> None:
    a = simulate(SimulationConfig(transactions=2_000, seed=3))
    b = simulate(SimulationConfig(transactions=2_000, seed=3))
    c = simulate(SimulationConfig(transactions=2_000, seed=4))
    assert a.transactions.frame.equals(b.transactions.frame)
    assert not a.transactions.frame.equals(c.transactions.frame)


def test_patterns_file_matches_csv_labels(small_sim: Simulation, tmp_path: Path) -> None:
    out = tmp_path / "sim_Trans.csv"
    patterns = write_amlworld(small_sim, out)
    assert patterns.name == "sim_Patterns.txt"
    txs = read_amlworld([out])
    # The written file reads back to the same history (amounts exact, minute timestamps).
    original = small_sim.transactions.frame
    assert txs.frame.select("ts", "amount_minor", "currency", "label").equals(
        original.select("ts", "amount_minor", "currency", "label")
    )
    attempts = read_patterns(patterns)
    assert len(attempts) == len(small_sim.attempts)
    matched = pattern_labels(txs, attempts)
    labelled = set(txs.frame.filter(pl.col("label") == 1)["row"].to_list())
    assert set(matched["row"].to_list()) == labelled
    assert {a.typology for a in attempts} == {
        "fan_out", "fan_in", "cycle", "scatter_gather", "gather_scatter", "stack", "bipartite",
        "random",
    }  # fmt: skip


@settings(max_examples=25, deadline=None)
@given(ts=st.lists(st.integers(min_value=0, max_value=500), min_size=3, max_size=200))
def test_time_split_is_ordered_and_keeps_ties_together(ts: list[int]) -> None:
    series = pl.Series(ts, dtype=pl.Int64)
    split = time_split(series)
    train = [t for t in ts if t <= split.train_end]
    validation = [t for t in ts if split.train_end < t <= split.validation_end]
    test = [t for t in ts if t > split.validation_end]
    assert len(train) + len(validation) + len(test) == len(ts)
    assert train, "the training part is never empty"
    if validation:
        assert max(train) < min(validation)
    if test:
        assert max(train + validation) < min(test)


def test_split_features_do_not_leak_the_future(small_sim: Simulation) -> None:
    frame = small_sim.transactions.frame
    labels = frame.select("row", label=pl.col("label"))
    split = time_split(frame["ts"])
    config = DetectorConfig()
    parts, _ = split_parts(frame, labels, split, config)
    # Rewire every test-period transfer (new counterparties, amounts): train and validation
    # features must not move, because they are computed on their own prefix only.
    future = pl.col("ts") > split.validation_end
    rewired = frame.with_columns(
        dst=pl.when(future).then(pl.col("src")).otherwise(pl.col("dst")),
        src=pl.when(future).then(pl.col("dst")).otherwise(pl.col("src")),
        amount_minor=pl.when(future)
        .then(pl.col("amount_minor") * 7)
        .otherwise(pl.col("amount_minor")),
    )
    parts_rewired, _ = split_parts(rewired, labels, split, config)
    assert parts_rewired["train"].equals(parts["train"])
    assert parts_rewired["validation"].equals(parts["validation"])
    assert not parts_rewired["test"].equals(parts["test"])
    assert parts["train"]["ts"].max() <= split.train_end < parts["validation"]["ts"].min()
    assert parts["validation"]["ts"].max() <= split.validation_end < parts["test"]["ts"].min()
    # Features of the whole history do see the future (hence the per-part computation).
    whole = transaction_features(frame, config).transactions
    whole_rewired = transaction_features(rewired, config).transactions
    train_rows = parts["train"].select("row")
    assert not whole.join(train_rows, on="row").equals(whole_rewired.join(train_rows, on="row"))


def test_metrics_minority_class() -> None:
    m = metrics(np.array([1, 1, 0, 0, 0]), np.array([1, 0, 1, 0, 0]))
    assert (m.precision, m.recall, round(m.f1, 4)) == (0.5, 0.5, 0.5)


def test_eval_train_scan_and_persist(small_sim: Simulation, tmp_path: Path) -> None:
    report, model = evaluate_transactions(small_sim.transactions, seed=0)
    test = report["test"]
    assert test["positives"] > 0
    assert 0.0 <= test["precision"] <= 1.0 and 0.0 <= test["recall"] <= 1.0
    # Better than chance on its own simulation.
    assert test["f1"] > 0.3, report
    path = save_model(model, tmp_path / "aml" / "models" / "graph-transaction.json")
    again = load_model(path)
    x = (
        transaction_features(small_sim.transactions.frame)
        .transactions.select(list(TRANSACTION_FEATURES))
        .to_numpy()
    )
    assert np.allclose(model.scores(x), again.scores(x))
    alerts = scan_transactions(small_sim.transactions, again)
    assert alerts.height > 0
    assert alerts["explanation"].str.len_chars().min() > 0  # type: ignore[operator]
    assert alerts["explanation"].str.contains("top features").all()
    assert set(alerts["typology"].str.split("|").explode().to_list()) <= {
        "cycle", "scatter_gather", "stack", "bipartite", "gather_scatter", "fan_out", "fan_in",
        "model",
    }  # fmt: skip
    flagged = set(alerts["row"].to_list())
    laundering = set(small_sim.transactions.frame.filter(pl.col("label") == 1)["row"].to_list())
    assert len(flagged & laundering) / len(laundering) > 0.5


def test_eval_needs_both_classes() -> None:
    clean = simulate(SimulationConfig(transactions=1_000, seed=2, laundering_share=0.0))
    with pytest.raises(InsufficientLabels):
        evaluate_transactions(clean.transactions)


def test_missing_model_is_typed(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        load_model(tmp_path / "none.json")
