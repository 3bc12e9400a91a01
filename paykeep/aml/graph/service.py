"""Use cases: evaluate, train, scan. The CLI and the benchmark call only these."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl

from paykeep.aml.graph.errors import InsufficientLabels
from paykeep.aml.graph.features import (
    ACCOUNT_FEATURES,
    TRANSACTION_FEATURES,
    FeatureSet,
    account_features,
    transaction_features,
)
from paykeep.aml.graph.io import (
    PatternAttempt,
    Transactions,
    atomic_path,
    iso_timestamp,
    pattern_labels,
)
from paykeep.aml.graph.model import DetectorConfig
from paykeep.aml.graph.simulate import SimulationConfig, simulate
from paykeep.aml.graph.train import (
    Split,
    TrainedModel,
    fit,
    load_model,
    metrics,
    model_path,
    save_model,
    time_split,
)

#: Published reference figures (Egressy et al., "Provably Powerful Graph Neural Networks for
#: Directed Multigraphs", AAAI 2024; Multi-PNA + EU on AMLworld HI-Small), in percent.
PUBLISHED_HI_SMALL: Final = {
    "model": "Multi-PNA+EU (Egressy et al. 2024), HI-Small",
    "f1": 68.16,
    "typology_recall": {
        "fan_in": 85.4,
        "fan_out": 93.1,
        "cycle": 61.6,
        "scatter_gather": 93.7,
        "gather_scatter": 92.7,
        "bipartite": 54.6,
    },
}
#: Size of the seeded simulation a default model is trained on when none is saved.
DEFAULT_TRAINING_TRANSACTIONS: Final = 200_000
#: Order in which an alert names its typology when several detectors fired (rarest first).
TYPOLOGY_PRIORITY: Final[tuple[str, ...]] = (
    "cycle",
    "scatter_gather",
    "stack",
    "bipartite",
    "gather_scatter",
    "fan_out",
    "fan_in",
)
ALERT_COLUMNS_TRANSACTION: Final = (
    "row",
    "transfer_id",
    "timestamp",
    "debit_account",
    "credit_account",
    "amount_minor",
    "currency",
    "typology",
    "score",
    "accounts",
    "window_start",
    "window_end",
    "explanation",
)
ALERT_COLUMNS_ACCOUNT: Final = ("account", "typology", "score", "explanation")


def _matrix(frame: pl.DataFrame, names: Sequence[str]) -> np.ndarray:
    return frame.select(names).to_numpy().astype(np.float32, copy=False)


@dataclass(frozen=True, slots=True)
class LabelledRows:
    #: ``row`` and ``label`` for every transaction.
    labels: pl.DataFrame
    #: ``row`` and ``typology`` of rows that belong to a pattern attempt (may be empty).
    typologies: pl.DataFrame
    patterns_unmatched: int


def transaction_labels(
    txs: Transactions, attempts: Sequence[PatternAttempt] | None
) -> LabelledRows:
    """Label 1 when the input says so (``Is Laundering``) or the row is in a pattern attempt."""
    frame = txs.frame
    typologies = pl.DataFrame(schema={"row": pl.Int64, "typology": pl.String})
    unmatched = 0
    labels = frame.select("row", label=pl.col("label").fill_null(0))
    if attempts:
        matched = pattern_labels(txs, attempts)
        typologies = matched.select("row", "typology").unique("row", keep="first").sort("row")
        unmatched = sum(len(a.rows) for a in attempts) - matched["row"].n_unique()
        labels = labels.with_columns(
            label=pl.when(pl.col("row").is_in(typologies["row"].implode()))
            .then(1)
            .otherwise(pl.col("label"))
        )
    elif frame["label"].null_count() == frame.height:
        raise InsufficientLabels("the input carries no labels and no patterns file was given")
    return LabelledRows(labels.with_columns(pl.col("label").cast(pl.Int8)), typologies, unmatched)


def split_parts(
    frame: pl.DataFrame, labels: pl.DataFrame, split: Split, config: DetectorConfig
) -> tuple[dict[str, pl.DataFrame], FeatureSet]:
    """Train / validation / test rows with features computed on history up to the end of
    their own part only (no leakage from later transfers). Also returns the features of the
    whole history (those of the test part)."""
    parts: dict[str, pl.DataFrame] = {}
    whole: FeatureSet | None = None
    bounds = {
        "train": (None, split.train_end),
        "validation": (split.train_end, split.validation_end),
        "test": (split.validation_end, None),
    }
    for name, (after, upto) in bounds.items():
        prefix = frame if upto is None else frame.filter(pl.col("ts") <= upto)
        feats = transaction_features(prefix, config)
        if upto is None:
            whole = feats
        rows = prefix.select("row", "ts")
        if after is not None:
            rows = rows.filter(pl.col("ts") > after)
        parts[name] = rows.join(feats.transactions, on="row").join(labels, on="row")
    assert whole is not None
    return parts, whole


def evaluate_transactions(
    txs: Transactions,
    attempts: Sequence[PatternAttempt] | None = None,
    *,
    seed: int = 0,
    config: DetectorConfig | None = None,
    transfer_model: TrainedModel | None = None,
) -> tuple[dict[str, Any], TrainedModel]:
    """Time-ordered 60/20/20 evaluation at transaction level; per-typology recall on the test
    part when pattern attempts are given (plus each detector's own recall over all rows).

    ``transfer_model`` (trained elsewhere, e.g. on a simulation) is also scored on every row,
    so per-typology recall covers all pattern rows, not only those in the test part."""
    config = config or DetectorConfig()
    labelled = transaction_labels(txs, attempts)
    frame = txs.frame
    split = time_split(frame["ts"])
    parts, detection_all = split_parts(frame, labelled.labels, split, config)
    names = list(TRANSACTION_FEATURES)
    model = fit(
        _matrix(parts["train"], names),
        parts["train"]["label"].to_numpy(),
        _matrix(parts["validation"], names),
        parts["validation"]["label"].to_numpy(),
        feature_names=names,
        level="transaction",
        seed=seed,
        detector_config=config,
    )
    test = parts["test"]
    test_scores = model.scores(_matrix(test, names))
    flagged = test_scores >= model.threshold
    result = metrics(test["label"].to_numpy(), flagged)
    report: dict[str, Any] = {
        "level": "transaction",
        "rows": frame.height,
        "positives": int(labelled.labels["label"].sum()),
        "split": {
            "train_rows": parts["train"].height,
            "validation_rows": parts["validation"].height,
            "test_rows": test.height,
            "train_end": iso_timestamp(split.train_end),
            "validation_end": iso_timestamp(split.validation_end),
        },
        "test": result.as_dict(),
        "threshold": round(model.threshold, 6),
        "calibrated_on": model.calibrated_on,
    }
    if attempts:
        flagged_rows = test.filter(pl.lit(pl.Series(flagged))).select("row")
        typ = labelled.typologies
        per_typology: dict[str, dict[str, float | int | None]] = {}
        hits = detection_all.detection.hits
        for typology in sorted(typ["typology"].unique().to_list()):
            rows = typ.filter(pl.col("typology") == typology)
            in_test = rows.join(test.select("row"), on="row", how="semi")
            caught = in_test.join(flagged_rows, on="row", how="semi").height
            own = rows.join(hits.filter(pl.col("typology") == typology), on="row", how="semi")
            per_typology[typology] = {
                "test_rows": in_test.height,
                "model_recall": round(caught / in_test.height, 4) if in_test.height else None,
                "pattern_rows": rows.height,
                "detector_recall": round(own.height / rows.height, 4) if rows.height else None,
            }
        report["typology_recall"] = per_typology
        negatives = labelled.labels.filter(pl.col("label") == 0).select("row")
        report["detector_flag_rate_on_negatives"] = {
            t: round(
                negatives.join(hits.filter(pl.col("typology") == t), on="row", how="semi").height
                / max(1, negatives.height),
                4,
            )
            for t in sorted(hits["typology"].unique().to_list())
        }
        if transfer_model is not None:
            report["transfer"] = _transfer_report(transfer_model, detection_all, labelled, typ)
        report["pattern_rows_not_in_input"] = labelled.patterns_unmatched
        report["published"] = PUBLISHED_HI_SMALL
    return report, model


def _transfer_report(
    model: TrainedModel,
    feats: FeatureSet,
    labelled: LabelledRows,
    typologies: pl.DataFrame,
) -> dict[str, Any]:
    scores = model.scores(_matrix(feats.transactions, list(model.feature_names)))
    flagged = feats.transactions.select("row").filter(pl.lit(pl.Series(scores >= model.threshold)))
    labels = feats.transactions.select("row").join(labelled.labels, on="row")
    predicted = labels["row"].is_in(flagged["row"].implode()).to_numpy()
    recall: dict[str, float | None] = {}
    for typology in sorted(typologies["typology"].unique().to_list()):
        rows = typologies.filter(pl.col("typology") == typology)
        caught = rows.join(flagged, on="row", how="semi").height
        recall[typology] = round(caught / rows.height, 4) if rows.height else None
    return {
        "note": "model trained on a seeded simulation, scored on every input row",
        "all_rows": metrics(labels["label"].to_numpy(), predicted).as_dict(),
        "typology_recall": recall,
    }


def evaluate_accounts(
    txs: Transactions, *, seed: int = 0, config: DetectorConfig | None = None
) -> tuple[dict[str, Any], TrainedModel]:
    """Account-level evaluation (AMLSim): accounts ordered by first transfer, 60/20/20."""
    if txs.account_labels is None:
        raise InsufficientLabels("account-level evaluation needs nodes.csv (isFraud) as input")
    config = config or DetectorConfig()
    frame = txs.frame
    feats = transaction_features(frame, config)
    accounts = account_features(frame, feats)
    first = (
        pl.concat([frame.select(account="src", ts="ts"), frame.select(account="dst", ts="ts")])
        .group_by("account")
        .agg(pl.col("ts").min().alias("first_ts"))
    )
    table = (
        accounts.join(txs.account_labels, on="account", how="inner")
        .join(first, on="account", how="left")
        .sort("first_ts", "account")
    )
    n = table.height
    if n < 10:
        raise InsufficientLabels(f"account-level evaluation needs at least 10 accounts, got {n}")
    a, b = round(n * 0.6), round(n * 0.8)
    train, validation, test = table[:a], table[a:b], table[b:]
    names = list(ACCOUNT_FEATURES)
    model = fit(
        _matrix(train, names),
        train["label"].to_numpy(),
        _matrix(validation, names),
        validation["label"].to_numpy(),
        feature_names=names,
        level="account",
        seed=seed,
        detector_config=config,
    )
    scores = model.scores(_matrix(test, names))
    result = metrics(test["label"].to_numpy(), scores >= model.threshold)
    report = {
        "level": "account",
        "accounts": n,
        "positives": int(table["label"].sum()),
        "split": {
            "train_accounts": train.height,
            "validation_accounts": validation.height,
            "test_accounts": test.height,
            "order": "first transfer time",
        },
        "test": result.as_dict(),
        "threshold": round(model.threshold, 6),
        "calibrated_on": model.calibrated_on,
    }
    return report, model


# --------------------------------------------------------------------------------------------
# Default model and scanning.


def train_default_model(level: str, *, seed: int = 0) -> TrainedModel:
    """Train on a seeded simulation (used when no model was saved): deterministic."""
    sim = simulate(SimulationConfig(transactions=DEFAULT_TRAINING_TRANSACTIONS, seed=seed))
    txs = sim.transactions
    if level == "transaction":
        _, model = evaluate_transactions(txs, seed=seed)
        return model
    frame = txs.frame
    bad = pl.concat(
        [
            frame.filter(pl.col("label") == 1).select(account="src"),
            frame.filter(pl.col("label") == 1).select(account="dst"),
        ]
    ).unique()
    everyone = pl.concat([frame.select(account="src"), frame.select(account="dst")]).unique()
    labels = everyone.with_columns(
        label=pl.col("account").is_in(bad["account"].implode()).cast(pl.Int8)
    )
    with_labels = Transactions(frame, txs.accounts, labels, "amlworld")
    _, model = evaluate_accounts(with_labels, seed=seed)
    return model


def model_for(level: str, data_dir: Path, *, seed: int = 0) -> tuple[TrainedModel, str]:
    """The saved model of this level, or a default one trained now and saved for next time."""
    path = model_path(data_dir, level)
    if path.is_file():
        return load_model(path), str(path)
    model = train_default_model(level, seed=seed)
    save_model(model, path)
    return model, f"{path} (trained now on a seeded simulation)"


def _explanation_text(
    typologies: list[str],
    details: dict[str, str],
    top: list[tuple[str, float, float]],
) -> str:
    parts = [details[t] for t in typologies if t in details]
    if not parts:
        parts = ["no structural typology; flagged by the model alone"]
    features = ", ".join(
        f"{name}={value:g} (+{contribution:.2f})" for name, contribution, value in top
    )
    return "; ".join(parts) + (f"; top features: {features}" if features else "")


def scan_transactions(txs: Transactions, model: TrainedModel) -> pl.DataFrame:
    """Score every transaction; return alerts (score >= threshold) with explanations."""
    feats = transaction_features(txs.frame, model.detector_config)
    x = _matrix(feats.transactions, list(model.feature_names))
    scores = model.scores(x)
    alert_idx = np.flatnonzero(scores >= model.threshold)
    if len(alert_idx) == 0:
        return pl.DataFrame(schema=dict.fromkeys(ALERT_COLUMNS_TRANSACTION, pl.String))
    alerted = (
        feats.transactions[alert_idx].select("row").with_columns(score=pl.Series(scores[alert_idx]))
    )
    explanations = model.explain(x[alert_idx])
    frame = txs.frame.join(alerted, on="row", how="inner").sort("row")
    hits = feats.detection.hits.join(alerted.select("row"), on="row", how="semi")
    groups = feats.detection.groups
    names = txs.accounts
    detail_by_row: dict[int, dict[str, str]] = {}
    accounts_by_row: dict[int, set[str]] = {}
    window_by_row: dict[int, tuple[int, int]] = {}
    member_map = {
        int(g): [names[int(m)] for m in members]
        for g, members in groups.select("group_id", "members").iter_rows()
    }
    for row, typology, size, hub, start, end, group in hits.iter_rows():
        hub_name = names[int(hub)] if hub is not None else None
        members = member_map.get(int(group), [])
        window = f"{iso_timestamp(start)}..{iso_timestamp(end)}"
        if typology in ("fan_out", "fan_in", "gather_scatter"):
            text = f"{typology}: {hub_name} with {size} distinct counterparties in {window}"
        elif typology == "cycle":
            text = f"cycle of {size}: {' -> '.join([*members, members[0]])} in {window}"
        elif typology == "scatter_gather":
            text = (
                f"scatter_gather: {members[0]} -> {size} intermediaries -> {members[-1]} "
                f"in {window}"
            )
        else:
            text = f"{typology}: block {', '.join(members)} in {window}"
        detail_by_row.setdefault(int(row), {})[typology] = text
        accounts_by_row.setdefault(int(row), set()).update(members or [hub_name or ""])
        old = window_by_row.get(int(row))
        window_by_row[int(row)] = (min(old[0], start), max(old[1], end)) if old else (start, end)
    records = []
    explain_by_row = dict(zip(alerted["row"].to_list(), explanations, strict=True))
    for rec in frame.iter_rows(named=True):
        row = int(rec["row"])
        details = detail_by_row.get(row, {})
        typologies = [t for t in TYPOLOGY_PRIORITY if t in details]
        span = window_by_row.get(row)
        involved = accounts_by_row.get(row, set()) | {names[rec["src"]], names[rec["dst"]]}
        records.append(
            {
                "row": row,
                "transfer_id": rec["transfer_id"] or "",
                "timestamp": iso_timestamp(rec["ts"]),
                "debit_account": names[rec["src"]],
                "credit_account": names[rec["dst"]],
                "amount_minor": rec["amount_minor"],
                "currency": rec["currency"],
                "typology": "|".join(typologies) if typologies else "model",
                "score": round(float(rec["score"]), 6),
                "accounts": " ".join(sorted(a for a in involved if a)),
                "window_start": iso_timestamp(span[0]) if span else "",
                "window_end": iso_timestamp(span[1]) if span else "",
                "explanation": _explanation_text(typologies, details, explain_by_row[row]),
            }
        )
    return pl.DataFrame(records).select(ALERT_COLUMNS_TRANSACTION)


def scan_accounts(txs: Transactions, model: TrainedModel) -> pl.DataFrame:
    """Score every account (AMLSim); return alerts with explanations."""
    feats = transaction_features(txs.frame, model.detector_config)
    accounts = account_features(txs.frame, feats)
    x = _matrix(accounts, list(model.feature_names))
    scores = model.scores(x)
    idx = np.flatnonzero(scores >= model.threshold)
    if len(idx) == 0:
        return pl.DataFrame(schema=dict.fromkeys(ALERT_COLUMNS_ACCOUNT, pl.String))
    explanations = model.explain(x[idx])
    picked = accounts[idx]
    records = []
    for i, (rec, top) in enumerate(zip(picked.iter_rows(named=True), explanations, strict=True)):
        typologies = [
            t
            for t in TYPOLOGY_PRIORITY
            if rec.get(f"{t}_out_max", 0) > 0 or rec.get(f"{t}_in_max", 0) > 0
        ]
        details = {
            t: f"{t} (largest {int(max(rec[f'{t}_out_max'], rec[f'{t}_in_max']))})"
            for t in typologies
        }
        records.append(
            {
                "account": txs.accounts[int(rec["account"])],
                "typology": "|".join(typologies) if typologies else "model",
                "score": round(float(scores[idx[i]]), 6),
                "explanation": _explanation_text(typologies, details, top),
            }
        )
    return pl.DataFrame(records).select(ALERT_COLUMNS_ACCOUNT)


def write_alerts(alerts: pl.DataFrame, out: Path) -> None:
    with atomic_path(out) as tmp:
        alerts.write_csv(tmp)
