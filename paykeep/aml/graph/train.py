"""The gradient-boosted model: time-ordered split, LightGBM, isotonic calibration, SHAP-style
explanations (LightGBM's own ``pred_contrib``), persistence as one JSON document.

Split (transactions): sort by time; the first 60% of rows train, the next 20% validate
(early stopping, calibration, threshold), the last 20% test. Cuts fall between timestamps,
never inside one, and features of each part are computed from history up to the end of
that part only — training never sees a feature value that depends on later transfers.

Split (accounts, AMLSim): accounts ordered by their first transfer, 60/20/20. Account
features use the whole observed graph (the transductive node-classification set-up of the
published AMLSim results); labels never enter a feature.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import lightgbm as lgb
import numpy as np
import polars as pl
from sklearn.isotonic import IsotonicRegression

from paykeep.aml.graph.errors import BadModelFile, InsufficientLabels, ModelNotFound
from paykeep.aml.graph.io import atomic_path
from paykeep.aml.graph.model import DetectorConfig

#: 2: strict fans, pass-through stacks and the detector signals as features.
MODEL_FORMAT_VERSION: Final = 2
BOOST_ROUNDS_MAX: Final = 400
EARLY_STOPPING_ROUNDS: Final = 40
EXPLAIN_TOP: Final = 3
SPLIT_FRACTIONS: Final = (0.6, 0.2, 0.2)


@dataclass(frozen=True, slots=True)
class Split:
    """Timestamp cuts: train ``ts <= train_end``, validation ``<= validation_end``, test after."""

    train_end: int
    validation_end: int


def time_split(ts: pl.Series, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> Split:
    """Cut sorted timestamps at 60% and 80% of rows (rows sharing a timestamp stay together)."""
    if ts.len() < 3:
        raise InsufficientLabels(f"a time-ordered split needs at least 3 rows, got {ts.len()}")
    ordered = ts.sort()
    n = ordered.len()
    first = int(ordered[max(0, round(n * fractions[0]) - 1)])
    second = int(ordered[max(0, round(n * (fractions[0] + fractions[1])) - 1)])
    return Split(first, max(first, second))


def params(seed: int) -> dict[str, Any]:
    return {
        "objective": "binary",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 10,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.9,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 2,
        "verbosity": -1,
    }


@dataclass(frozen=True, slots=True)
class Metrics:
    precision: float
    recall: float
    f1: float
    positives: int
    predicted_positives: int
    rows: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
            "positives": self.positives,
            "predicted_positives": self.predicted_positives,
            "rows": self.rows,
        }


def metrics(labels: np.ndarray, predicted: np.ndarray) -> Metrics:
    """Minority-class (label 1) precision, recall and F1."""
    y = labels.astype(bool)
    p = predicted.astype(bool)
    tp = int(np.sum(y & p))
    precision = tp / int(p.sum()) if p.any() else 0.0
    recall = tp / int(y.sum()) if y.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Metrics(precision, recall, f1, int(y.sum()), int(p.sum()), len(y))


@dataclass(frozen=True, slots=True)
class TrainedModel:
    level: str
    feature_names: tuple[str, ...]
    booster: lgb.Booster
    calibration_x: np.ndarray
    calibration_y: np.ndarray
    threshold: float
    detector_config: DetectorConfig
    #: Where calibration came from ("validation", or "train" when validation had no positive).
    calibrated_on: str
    trained_rows: int

    def raw_scores(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(features, raw_score=False), dtype=np.float64)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Calibrated probability of laundering."""
        raw = self.raw_scores(features)
        if len(self.calibration_x) < 2:
            return raw
        return np.asarray(np.interp(raw, self.calibration_x, self.calibration_y), np.float64)

    def explain(
        self, features: np.ndarray, top: int = EXPLAIN_TOP
    ) -> list[list[tuple[str, float, float]]]:
        """Per row, the ``top`` features pushing the score up: (name, contribution, value)."""
        if len(features) == 0:
            return []
        contributions = np.asarray(self.booster.predict(features, pred_contrib=True))
        result = []
        for row, contrib in zip(features, contributions, strict=True):
            order = np.argsort(-contrib[:-1])[:top]
            result.append(
                [
                    (self.feature_names[i], float(contrib[i]), float(row[i]))
                    for i in order
                    if contrib[i] > 0
                ]
            )
        return result

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": MODEL_FORMAT_VERSION,
            "level": self.level,
            "feature_names": list(self.feature_names),
            "booster": self.booster.model_to_string(),
            "calibration": {
                "x": self.calibration_x.tolist(),
                "y": self.calibration_y.tolist(),
            },
            "threshold": self.threshold,
            "detector_config": asdict(self.detector_config),
            "calibrated_on": self.calibrated_on,
            "trained_rows": self.trained_rows,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> TrainedModel:
        try:
            if document["format_version"] != MODEL_FORMAT_VERSION:
                raise BadModelFile(f"model format {document['format_version']} not supported")
            return cls(
                level=str(document["level"]),
                feature_names=tuple(document["feature_names"]),
                booster=lgb.Booster(model_str=document["booster"]),
                calibration_x=np.asarray(document["calibration"]["x"], dtype=np.float64),
                calibration_y=np.asarray(document["calibration"]["y"], dtype=np.float64),
                threshold=float(document["threshold"]),
                detector_config=DetectorConfig(**document["detector_config"]),
                calibrated_on=str(document["calibrated_on"]),
                trained_rows=int(document["trained_rows"]),
            )
        except (KeyError, TypeError, ValueError, lgb.basic.LightGBMError) as exc:
            raise BadModelFile(f"unreadable model file ({type(exc).__name__}: {exc})") from None


def fit(
    train_x: np.ndarray,
    train_y: np.ndarray,
    validation_x: np.ndarray,
    validation_y: np.ndarray,
    *,
    feature_names: Sequence[str],
    level: str,
    seed: int,
    detector_config: DetectorConfig,
) -> TrainedModel:
    """Train, early-stop and calibrate on validation, and pick the F1-best threshold there."""
    if train_y.sum() == 0 or train_y.sum() == len(train_y):
        raise InsufficientLabels(
            f"the training part needs both classes (positives {int(train_y.sum())} "
            f"of {len(train_y)})"
        )
    names = list(feature_names)
    train_set = lgb.Dataset(train_x, label=train_y, feature_name=names, free_raw_data=True)
    usable_validation = 0 < validation_y.sum() < len(validation_y)
    callbacks: list[Callable[..., Any]] = []
    valid_sets: list[lgb.Dataset] = []
    if usable_validation:
        valid_sets = [lgb.Dataset(validation_x, label=validation_y, reference=train_set)]
        callbacks = [lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)]
    booster = lgb.train(
        params(seed),
        train_set,
        num_boost_round=BOOST_ROUNDS_MAX,
        valid_sets=valid_sets,
        callbacks=callbacks,
    )
    if usable_validation:
        cal_x, cal_y, source = validation_x, validation_y, "validation"
    else:
        cal_x, cal_y, source = train_x, train_y, "train"
    raw = np.asarray(booster.predict(cal_x), dtype=np.float64)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(raw, cal_y)
    xs = np.asarray(iso.X_thresholds_, dtype=np.float64)
    ys = np.asarray(iso.y_thresholds_, dtype=np.float64)
    calibrated = np.interp(raw, xs, ys) if len(xs) >= 2 else raw
    threshold = best_threshold(cal_y, calibrated)
    return TrainedModel(
        level, tuple(names), booster, xs, ys, threshold, detector_config, source, len(train_y)
    )


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score cut with the best F1 on these labels (ties: the higher cut, fewer alerts)."""
    candidates = np.unique(scores)
    best_f1, best = -1.0, 0.5
    for cut in candidates[::-1]:
        f1 = metrics(labels, scores >= cut).f1
        if f1 > best_f1:
            best_f1, best = f1, float(cut)
    # Never alert on everything: a cut at the minimum score flags every row.
    return max(best, 1e-6)


# --------------------------------------------------------------------------------------------
# Persistence under <data_dir>/aml/models/.


def model_path(data_dir: Path, level: str) -> Path:
    return Path(data_dir) / "aml" / "models" / f"graph-{level}.json"


def save_model(model: TrainedModel, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(model.to_json()), encoding="utf-8")
    return path


def load_model(path: Path) -> TrainedModel:
    if not path.is_file():
        raise ModelNotFound(f"no model at {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BadModelFile(f"{path}: {exc}") from None
    if not isinstance(document, dict):
        raise BadModelFile(f"{path}: not a model document")
    return TrainedModel.from_json(document)
