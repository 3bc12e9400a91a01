"""Evaluation on labelled screening samples (``paykeep aml screening-eval``).

Positives are people known to be sanctioned (the UN sample, plain and typo-treated); negatives
are synthetic people who match no sanctioned entity. Figures at the configured threshold:

- ``recall``: share of positives with at least one hit;
- ``recall_matched_subset``: the same over positives whose lower-cased word set (regex ``\\w+``)
  equals the primary name of a list individual -- the only ones a list can be expected to
  find by name when it is not the list they were drawn from (OFAC SDN vs the UN sample);
- ``top1_correct_matched_subset``: share of that subset whose best hit is such an entity;
- ``false_positive_rate``: share of negatives with at least one hit.

A sweep over thresholds is included so a threshold is chosen on all files together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from paykeep.aml.screening.model import (
    PERSON,
    MatchConfig,
    Query,
    ScreeningIndex,
)

SWEEP_THRESHOLDS: Final = (0.70, 0.75, 0.80, 0.85, 0.90, 0.95)
_WORD: Final = re.compile(r"\w+")


def query_from_row(row: Mapping[str, str]) -> Query:
    """A person from a screening-sample row (``full_name`` required, the rest optional).

    Unvalidated on purpose: the typo-treated sample has impossible dates ("1974-01-32"), which
    the matcher ignores as it would any unparseable date.
    """
    dob = (row.get("date_of_birth") or "").strip()
    nationality = (row.get("nationality") or "").strip()
    return Query(
        name=row.get("full_name") or "",
        schema=PERSON,
        birth_dates=(dob,) if dob else (),
        countries=(nationality,) if nationality else (),
        gender=(row.get("gender") or "").strip() or None,
    )


def _word_set(name: str) -> frozenset[str]:
    return frozenset(_WORD.findall(name.lower()))


@dataclass(frozen=True, slots=True)
class _Scored:
    best_score: float
    best_entity_id: str | None
    matched: bool
    top1_correct: bool


def _score_rows(
    index: ScreeningIndex,
    rows: Sequence[Mapping[str, str]],
    config: MatchConfig,
    primary_words: Mapping[frozenset[str], frozenset[str]],
) -> list[_Scored]:
    scored: list[_Scored] = []
    for row in rows:
        query = query_from_row(row)
        matches = index.score_candidates(query, config)
        best = matches[0] if matches else None
        targets = primary_words.get(_word_set(query.name), frozenset())
        scored.append(
            _Scored(
                best_score=best.score if best else 0.0,
                best_entity_id=best.entity.entity_id if best else None,
                matched=bool(targets),
                top1_correct=best is not None and best.entity.entity_id in targets,
            )
        )
    return scored


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _summary(scored: Sequence[_Scored], threshold: float, positive: bool) -> dict[str, object]:
    hit = [s.best_score >= threshold for s in scored]
    out: dict[str, object] = {"rows": len(scored), "hits": sum(hit)}
    if positive:
        matched = [(s, h) for s, h in zip(scored, hit, strict=True) if s.matched]
        out["recall"] = _rate(sum(hit), len(scored))
        out["matched_subset_rows"] = len(matched)
        out["recall_matched_subset"] = _rate(sum(h for _, h in matched), len(matched))
        out["top1_correct_matched_subset"] = _rate(
            sum(1 for s, h in matched if h and s.top1_correct), len(matched)
        )
    else:
        out["false_positive_rate"] = _rate(sum(hit), len(scored))
    return out


def evaluate(
    index: ScreeningIndex,
    positives: Mapping[str, Sequence[Mapping[str, str]]],
    negatives: Mapping[str, Sequence[Mapping[str, str]]],
    config: MatchConfig,
) -> dict[str, object]:
    """Recall per positive file, false-positive rate per negative file, and a sweep."""
    primary: dict[frozenset[str], set[str]] = {}
    for entity in index.entities:
        if entity.schema == PERSON and entity.names:
            primary.setdefault(_word_set(entity.names[0]), set()).add(entity.entity_id)
    primary_words = {k: frozenset(v) for k, v in primary.items()}
    scored_pos = {
        name: _score_rows(index, rows, config, primary_words) for name, rows in positives.items()
    }
    scored_neg = {
        name: _score_rows(index, rows, config, primary_words) for name, rows in negatives.items()
    }
    sweep = []
    for threshold in sorted({*SWEEP_THRESHOLDS, config.threshold}):
        sweep.append(
            {
                "threshold": threshold,
                **{
                    f"recall[{name}]": _summary(s, threshold, True)["recall"]
                    for name, s in scored_pos.items()
                },
                **{
                    f"recall_matched_subset[{name}]": _summary(s, threshold, True)[
                        "recall_matched_subset"
                    ]
                    for name, s in scored_pos.items()
                },
                **{
                    f"false_positive_rate[{name}]": _summary(s, threshold, False)[
                        "false_positive_rate"
                    ]
                    for name, s in scored_neg.items()
                },
            }
        )
    return {
        "threshold": config.threshold,
        "list_entities": len(index),
        "list_names": index.name_count,
        "positives": {n: _summary(s, config.threshold, True) for n, s in scored_pos.items()},
        "negatives": {n: _summary(s, config.threshold, False) for n, s in scored_neg.items()},
        "sweep": sweep,
    }
