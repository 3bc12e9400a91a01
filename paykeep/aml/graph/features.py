"""Per-transaction and per-account graph features (floats: statistics, not money).

Every feature is computed from the frame it is given and nothing else, so features of a
prefix of history never see what comes after it (the time-ordered split relies on this).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import polars as pl

from paykeep.aml.graph.io import unit_exponent
from paykeep.aml.graph.model import (
    DETECTED_TYPOLOGIES,
    SIGNAL_COLUMNS,
    Detection,
    DetectorConfig,
    detect_all,
)

#: Payment formats known to AMLworld; anything else is code -1.
PAYMENT_FORMATS: Final[tuple[str, ...]] = (
    "ACH",
    "Bitcoin",
    "Cash",
    "Cheque",
    "Credit Card",
    "Reinvestment",
    "Wire",
)
DAY_S: Final = 86_400.0

TRANSACTION_FEATURES: Final[tuple[str, ...]] = (
    "log_amount",
    "amount_z",
    "round_amount",
    "cross_currency",
    "self_transfer",
    "payment_format",
    "hour",
    "src_out_count",
    "src_out_distinct",
    "src_in_count",
    "src_in_distinct",
    "dst_out_count",
    "dst_out_distinct",
    "dst_in_count",
    "dst_in_distinct",
    "src_age_days",
    "dst_age_days",
    "pair_count",
    "reciprocal",
    "src_formats",
    "dst_formats",
    *(f"{t}_size" for t in DETECTED_TYPOLOGIES),
    "typologies_hit",
    "onward_hops",
    "inbound_hops",
    "src_flagged_share",
    "dst_flagged_share",
    "src_structured_share",
    "dst_structured_share",
    *SIGNAL_COLUMNS,
)

ACCOUNT_FEATURES: Final[tuple[str, ...]] = (
    "out_count",
    "in_count",
    "out_distinct",
    "in_distinct",
    "out_log_amount_mean",
    "in_log_amount_mean",
    "out_log_amount_std",
    "in_log_amount_std",
    "flow_balance",
    "active_days",
    "first_seen_days",
    "reciprocal_share",
    "self_share",
    *(f"{t}_{side}" for t in DETECTED_TYPOLOGIES for side in ("out_max", "in_max")),
    "typologies_hit",
    "onward_hops_max",
    "inbound_hops_max",
    "neighbor_structured_mean",
    "out_burst_max",
    "in_burst_max",
    "pass_through_share",
)

#: Detectors whose hits are rare enough to mark an account ("structured"); fans are not.
_STRUCTURED: Final[tuple[str, ...]] = ("cycle", "scatter_gather", "stack", "bipartite")


@dataclass(frozen=True, slots=True)
class FeatureSet:
    #: ``row`` + :data:`TRANSACTION_FEATURES`, one row per transaction, ordered by ``row``.
    transactions: pl.DataFrame
    detection: Detection


def _amount_major(frame: pl.DataFrame) -> pl.Expr:
    exponents = {c: unit_exponent(c) for c in frame["currency"].unique().to_list()}
    scale = pl.col("currency").replace_strict(
        {c: float(10**e) for c, e in exponents.items()}, return_dtype=pl.Float64
    )
    # A statistic in major units per currency; the money itself stays integer in the frame.
    return pl.col("amount_minor").cast(pl.Float64) / scale


def transaction_features(frame: pl.DataFrame, config: DetectorConfig | None = None) -> FeatureSet:
    """Detect typologies and compute :data:`TRANSACTION_FEATURES` for every row of ``frame``."""
    detection, hops = detect_all(frame, config)
    base = frame.select(
        "row", "ts", "src", "dst", "amount_minor", "currency", "received_currency", "payment_format"
    )
    major = _amount_major(frame)
    base = base.with_columns(log_amount=(major + 1.0).log())
    base = base.with_columns(
        amount_z=(
            (pl.col("log_amount") - pl.col("log_amount").mean().over("currency"))
            / pl.col("log_amount").std().over("currency").fill_null(1.0).clip(lower_bound=1e-6)
        ).fill_null(0.0),
        round_amount=((major % 100.0) == 0).cast(pl.Int8),
        cross_currency=(pl.col("currency") != pl.col("received_currency")).cast(pl.Int8),
        self_transfer=(pl.col("src") == pl.col("dst")).cast(pl.Int8),
        payment_format=pl.col("payment_format")
        .replace_strict({f: i for i, f in enumerate(PAYMENT_FORMATS)}, default=-1)
        .cast(pl.Int8),
        hour=((pl.col("ts") % 86_400) // 3_600).cast(pl.Int8),
    )
    # Account statistics on dense integer ids with numpy: bincount and gathers instead of
    # group-by + join, which dominated the scan time at five million rows.
    rows = base["row"].to_numpy()
    if len(rows) > 1 and not bool(np.all(rows[1:] > rows[:-1])):
        raise AssertionError("frame rows must be strictly increasing")
    src = base["src"].to_numpy().astype(np.int64)
    dst = base["dst"].to_numpy().astype(np.int64)
    ts = base["ts"].to_numpy()
    fmt = base["payment_format"].to_numpy().astype(np.int64) + 1
    n_acc = int(max(src.max(), dst.max())) + 1 if len(src) else 1
    out_count = np.bincount(src, minlength=n_acc)
    in_count = np.bincount(dst, minlength=n_acc)
    pair_key = src * n_acc + dst
    pairs, pair_inverse, pair_counts = np.unique(pair_key, return_inverse=True, return_counts=True)
    out_distinct = np.bincount(pairs // n_acc, minlength=n_acc)
    in_distinct = np.bincount(pairs % n_acc, minlength=n_acc)
    reverse = dst * n_acc + src
    at = np.minimum(np.searchsorted(pairs, reverse), len(pairs) - 1)
    reciprocal = (pairs[at] == reverse).astype(np.int8)
    first_seen = np.full(n_acc, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, src, ts)
    np.minimum.at(first_seen, dst, ts)
    formats = np.zeros(n_acc, dtype=np.int64)
    for side in (src, dst):
        acc_fmt = np.unique(side * 16 + fmt)
        formats = np.maximum(formats, np.bincount(acc_fmt // 16, minlength=n_acc))
    # Share of an account's transfers flagged by any detector / by a rare ("structured") one.
    hits = detection.hits
    flagged = np.zeros(len(rows), dtype=np.float64)
    structured = np.zeros(len(rows), dtype=np.float64)
    sizes: dict[str, np.ndarray] = {}
    for typology in DETECTED_TYPOLOGIES:
        part = hits.filter(pl.col("typology") == typology)
        position = np.searchsorted(rows, part["row"].to_numpy())
        size = np.zeros(len(rows), dtype=np.float32)
        size[position] = part["size"].to_numpy()
        sizes[f"{typology}_size"] = size
        flagged[position] = 1.0
        if typology in _STRUCTURED:
            structured[position] = 1.0
    touches = np.bincount(src, minlength=n_acc) + np.bincount(dst, minlength=n_acc)
    touches = np.maximum(touches, 1)
    flagged_share = (np.bincount(src, flagged, n_acc) + np.bincount(dst, flagged, n_acc)) / touches
    structured_share = (
        np.bincount(src, structured, n_acc) + np.bincount(dst, structured, n_acc)
    ) / touches
    onward = np.zeros(len(rows), dtype=np.float32)
    inbound = np.zeros(len(rows), dtype=np.float32)
    if hops.height:
        position = np.searchsorted(rows, hops["row"].to_numpy())
        onward[position] = hops["onward"].to_numpy()
        inbound[position] = hops["inbound"].to_numpy()
    size_matrix = np.stack([sizes[f"{t}_size"] for t in DETECTED_TYPOLOGIES])
    columns: dict[str, np.ndarray] = {
        "src_out_count": out_count[src],
        "src_out_distinct": out_distinct[src],
        "src_in_count": in_count[src],
        "src_in_distinct": in_distinct[src],
        "dst_out_count": out_count[dst],
        "dst_out_distinct": out_distinct[dst],
        "dst_in_count": in_count[dst],
        "dst_in_distinct": in_distinct[dst],
        "src_age_days": (ts - first_seen[src]) / DAY_S,
        "dst_age_days": (ts - first_seen[dst]) / DAY_S,
        "pair_count": pair_counts[pair_inverse],
        "reciprocal": reciprocal,
        "src_formats": formats[src],
        "dst_formats": formats[dst],
        **sizes,
        "typologies_hit": (size_matrix > 0).sum(axis=0),
        "onward_hops": onward,
        "inbound_hops": inbound,
        "src_flagged_share": flagged_share[src],
        "dst_flagged_share": flagged_share[dst],
        "src_structured_share": structured_share[src],
        "dst_structured_share": structured_share[dst],
    }
    own = [f for f in TRANSACTION_FEATURES if f not in columns and f not in SIGNAL_COLUMNS]
    out = base.select("row", *own)
    out = (
        out.with_columns(
            pl.Series(name, np.asarray(values, dtype=np.float32))
            for name, values in columns.items()
        )
        # Signals exist for transfers between two accounts; self transfers have none (NaN,
        # which LightGBM treats as missing).
        .join(detection.signals, on="row", how="left")
        .select("row", *(pl.col(f).cast(pl.Float32) for f in TRANSACTION_FEATURES))
    )
    return FeatureSet(out, detection)


def account_features(frame: pl.DataFrame, tx: FeatureSet) -> pl.DataFrame:
    """:data:`ACCOUNT_FEATURES` per account (``account`` column), from transaction features."""
    joined = frame.select("row", "ts", "src", "dst").join(tx.transactions, on="row", how="left")
    t_end = frame["ts"].max()
    t_start = frame["ts"].min()
    sides = []
    for side, me, other in (("out", "src", "dst"), ("in", "dst", "src")):
        agg = joined.group_by(me).agg(
            pl.len().alias(f"{side}_count"),
            pl.col(other).n_unique().alias(f"{side}_distinct"),
            pl.col("log_amount").mean().alias(f"{side}_log_amount_mean"),
            pl.col("log_amount").std().fill_null(0.0).alias(f"{side}_log_amount_std"),
            pl.col("log_amount").exp().sum().alias(f"{side}_volume"),
            pl.col("ts").min().alias(f"{side}_first"),
            pl.col("ts").max().alias(f"{side}_last"),
            pl.col("reciprocal").mean().alias(f"{side}_reciprocal"),
            pl.col("self_transfer").mean().alias(f"{side}_self"),
            pl.col("onward_hops").max().alias(f"{side}_onward"),
            pl.col("inbound_hops").max().alias(f"{side}_inbound"),
            pl.col(f"{'src' if side == 'out' else 'dst'}_structured_share")
            .first()
            .alias(f"{side}_structured"),
            pl.col(f"{'src_out' if side == 'out' else 'dst_in'}_burst")
            .max()
            .alias(f"{side}_burst_max"),
            (pl.col("next_out_ratio").is_between(0.8, 1.05) & (pl.col("next_out_hours") <= 96.0))
            .mean()
            .alias(f"{side}_pass_through"),
            *(pl.col(f"{t}_size").max().alias(f"{t}_{side}_max") for t in DETECTED_TYPOLOGIES),
        )
        sides.append(agg.rename({me: "account"}))
    accounts = sides[0].join(sides[1], on="account", how="full", coalesce=True)
    # Mean "structured" share of an account's counterparties: suspicion one hop away.
    neighbours = pl.concat(
        [
            frame.select(account="src", other="dst"),
            frame.select(account="dst", other="src"),
        ]
    ).unique()
    structured = accounts.select(
        other="account",
        share=pl.max_horizontal(
            pl.col("out_structured").fill_null(0.0), pl.col("in_structured").fill_null(0.0)
        ),
    )
    neighbour_mean = (
        neighbours.join(structured, on="other", how="left")
        .group_by("account")
        .agg(pl.col("share").mean().alias("neighbor_structured_mean"))
    )
    accounts = accounts.join(neighbour_mean, on="account", how="left")
    count_cols = ["out_count", "in_count", "out_distinct", "in_distinct"]
    accounts = accounts.with_columns(pl.col(*count_cols).fill_null(0)).with_columns(
        flow_balance=(
            (pl.col("out_volume").fill_null(0.0) - pl.col("in_volume").fill_null(0.0))
            / (pl.col("out_volume").fill_null(0.0) + pl.col("in_volume").fill_null(0.0) + 1.0)
        ),
        active_days=(
            pl.max_horizontal("out_last", "in_last") - pl.min_horizontal("out_first", "in_first")
        )
        / DAY_S,
        first_seen_days=(pl.min_horizontal("out_first", "in_first") - t_start) / DAY_S,
        reciprocal_share=pl.max_horizontal(
            pl.col("out_reciprocal").fill_null(0.0), pl.col("in_reciprocal").fill_null(0.0)
        ),
        self_share=pl.col("out_self").fill_null(0.0),
        # Share of the money an account received that it passed on almost whole, soon.
        pass_through_share=pl.col("in_pass_through").fill_null(0.0),
        onward_hops_max=pl.max_horizontal(
            pl.col("out_onward").fill_null(0), pl.col("in_onward").fill_null(0)
        ),
        inbound_hops_max=pl.max_horizontal(
            pl.col("out_inbound").fill_null(0), pl.col("in_inbound").fill_null(0)
        ),
        typologies_hit=pl.sum_horizontal(
            *(
                (pl.col(f"{t}_out_max").fill_null(0) + pl.col(f"{t}_in_max").fill_null(0) > 0).cast(
                    pl.Int8
                )
                for t in DETECTED_TYPOLOGIES
            )
        ),
    )
    del t_end
    return accounts.sort("account").select(
        pl.col("account").cast(pl.Int32),
        *(pl.col(f).fill_null(0).cast(pl.Float32) for f in ACCOUNT_FEATURES),
    )
