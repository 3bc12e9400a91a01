"""Per-transaction and per-account graph features (floats: statistics, not money).

Every feature is computed from the frame it is given and nothing else, so features of a
prefix of history never see what comes after it (the time-ordered split relies on this).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import polars as pl

from paykeep.aml.graph.io import unit_exponent
from paykeep.aml.graph.model import DETECTED_TYPOLOGIES, Detection, DetectorConfig, detect_all

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
    out_stats = base.group_by("src").agg(
        pl.len().alias("out_count"),
        pl.col("dst").n_unique().alias("out_distinct"),
        pl.col("ts").min().alias("out_first"),
        pl.col("payment_format").n_unique().alias("out_formats"),
    )
    in_stats = base.group_by("dst").agg(
        pl.len().alias("in_count"),
        pl.col("src").n_unique().alias("in_distinct"),
        pl.col("ts").min().alias("in_first"),
        pl.col("payment_format").n_unique().alias("in_formats"),
    )
    account = (
        out_stats.rename({"src": "account"})
        .join(in_stats.rename({"dst": "account"}), on="account", how="full", coalesce=True)
        .with_columns(
            pl.col("out_count", "out_distinct", "in_count", "in_distinct").fill_null(0),
            first_seen=pl.min_horizontal("out_first", "in_first"),
            formats=pl.max_horizontal(
                pl.col("out_formats").fill_null(0), pl.col("in_formats").fill_null(0)
            ),
        )
    )
    # Share of an account's transfers flagged by any detector / by a rare ("structured") one.
    hit_rows = detection.hits.select("row", "typology")
    row_flags = (
        base.select("row", "src", "dst")
        .join(
            hit_rows.group_by("row").agg(
                pl.len().alias("n_hits"),
                pl.col("typology").is_in(list(_STRUCTURED)).any().alias("structured"),
            ),
            on="row",
            how="left",
        )
        .with_columns(
            flagged=pl.col("n_hits").is_not_null().cast(pl.Float64),
            structured=pl.col("structured").fill_null(False).cast(pl.Float64),
        )
    )
    share = (
        pl.concat(
            [
                row_flags.select(account="src", flagged="flagged", structured="structured"),
                row_flags.select(account="dst", flagged="flagged", structured="structured"),
            ]
        )
        .group_by("account")
        .agg(
            pl.col("flagged").mean().alias("flagged_share"),
            pl.col("structured").mean().alias("structured_share"),
        )
    )
    account = account.join(share, on="account", how="left")
    pairs = base.group_by("src", "dst").agg(pl.len().alias("pair_count"))
    reverse = pairs.select(src="dst", dst="src", reciprocal=pl.lit(1, pl.Int8))
    sizes = (
        detection.hits.pivot(on="typology", index="row", values="size", aggregate_function="max")
        if detection.hits.height
        else pl.DataFrame(schema={"row": pl.Int64})
    )
    for typology in DETECTED_TYPOLOGIES:
        if typology not in sizes.columns:
            sizes = sizes.with_columns(pl.lit(None, pl.Int32).alias(typology))
    sizes = sizes.select("row", *(pl.col(t).alias(f"{t}_size") for t in DETECTED_TYPOLOGIES))
    src_side = account.select(
        src="account",
        src_out_count="out_count",
        src_out_distinct="out_distinct",
        src_in_count="in_count",
        src_in_distinct="in_distinct",
        src_first="first_seen",
        src_formats="formats",
        src_flagged_share="flagged_share",
        src_structured_share="structured_share",
    )
    dst_side = account.select(
        dst="account",
        dst_out_count="out_count",
        dst_out_distinct="out_distinct",
        dst_in_count="in_count",
        dst_in_distinct="in_distinct",
        dst_first="first_seen",
        dst_formats="formats",
        dst_flagged_share="flagged_share",
        dst_structured_share="structured_share",
    )
    out = (
        base.join(src_side, on="src", how="left")
        .join(dst_side, on="dst", how="left")
        .join(pairs, on=["src", "dst"], how="left")
        .join(reverse, on=["src", "dst"], how="left")
        .join(sizes, on="row", how="left")
        .join(
            hops.select("row", onward_hops="onward", inbound_hops="inbound"), on="row", how="left"
        )
        .with_columns(
            src_age_days=(pl.col("ts") - pl.col("src_first")) / DAY_S,
            dst_age_days=(pl.col("ts") - pl.col("dst_first")) / DAY_S,
            reciprocal=pl.col("reciprocal").fill_null(0),
            typologies_hit=pl.sum_horizontal(
                *(pl.col(f"{t}_size").is_not_null().cast(pl.Int8) for t in DETECTED_TYPOLOGIES)
            ),
        )
        .with_columns(
            pl.col(
                *(f"{t}_size" for t in DETECTED_TYPOLOGIES), "onward_hops", "inbound_hops"
            ).fill_null(0)
        )
        .sort("row")
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
