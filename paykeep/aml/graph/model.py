"""Pure detection cores: one function per typology, over the internal transaction frame.

Every detector takes the frame (``row, ts, src, dst`` at least; see :mod:`.io`) and a
:class:`DetectorConfig`, reads no clock and no file, and returns *hits*: one row per flagged
transaction with the typology, the size of the structure (degree, length, width), the
central account when there is one, the window, and a group id that names the structure
(cycle, scatter-gather pair, bipartite block) in the separate *groups* table.

Time windows. A typology is looked for inside windows of width ``2 * window_s`` laid twice,
the second set shifted by ``window_s``; so any structure whose transactions all fall within
``window_s`` of each other lies wholly inside at least one window. Gather-scatter uses
``gather_scatter_window_s`` (its fan-in and fan-out follow each other).

Hubs. Path-based detectors (cycles, scatter-gather, bipartite, stack) skip accounts with more
than ``hub_degree_max`` distinct counterparties in a window: a marketplace escrow account
with 10,000 buyers closes every path in the graph and would swamp them. That is a stated
blind spot (a launderer hiding behind a hub), and degree features still reach the model.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

import polars as pl
import rustworkx as rx

from paykeep.aml.graph.errors import InvalidGraphParameter
from paykeep.aml.graph.io import APPROX_MAJOR_PER_USD, unit_exponent

DAY_S: Final = 86_400
FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)
#: Typologies with a structural detector (``random`` is left to the model).
DETECTED_TYPOLOGIES: Final[tuple[str, ...]] = (
    "fan_out",
    "fan_in",
    "cycle",
    "scatter_gather",
    "gather_scatter",
    "stack",
    "bipartite",
)

HITS_SCHEMA: Final[dict[str, pl.DataType]] = {
    "row": pl.Int64(),
    "typology": pl.String(),
    "size": pl.Int32(),
    "hub": pl.Int32(),
    "win_start": pl.Int64(),
    "win_end": pl.Int64(),
    "group_id": pl.Int64(),
}
#: Per-transfer measures behind the detectors (floats: statistics, never money).
SIGNAL_COLUMNS: Final[tuple[str, ...]] = (
    "src_out_degree_w",
    "dst_in_degree_w",
    "src_out_burst",
    "dst_in_burst",
    "src_out_value_cv",
    "dst_in_value_cv",
    "src_out_similar",
    "dst_in_similar",
    "next_out_hours",
    "next_out_ratio",
    "prev_in_hours",
    "prev_in_ratio",
)
SIGNALS_SCHEMA: Final[dict[str, pl.DataType]] = {
    "row": pl.Int64(),
    **{c: pl.Float32() for c in SIGNAL_COLUMNS},
}
GROUPS_SCHEMA: Final[dict[str, pl.DataType]] = {
    "group_id": pl.Int64(),
    "typology": pl.String(),
    "members": pl.List(pl.Int32),
}


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Thresholds and bounds of the detectors (each named once, TigerBeetle style)."""

    #: Longest span of one structure (IBM HI-Small: fan, cycle, stack, scatter-gather <= 4 d).
    window_s: int = 4 * DAY_S
    #: Gather-scatter is a fan-in followed by a fan-out: up to 8.4 days in HI-Small.
    gather_scatter_window_s: int = 8 * DAY_S
    #: Distinct counterparties within a window that make a fan.
    fan_degree_min: int = 4
    #: Distinct senders and receivers of a gather-scatter hub.
    gather_scatter_degree_min: int = 3
    #: Longest temporal cycle enumerated (IBM HI-Small: 12 hops).
    cycle_length_max: int = 12
    #: Strongly connected components larger than this are not enumerated (counted instead).
    cycle_component_nodes_max: int = 400
    #: Search steps per component for temporal cycles (a bound on work, not on results).
    cycle_steps_max: int = 200_000
    #: Accounts with more distinct counterparties in a window are skipped by path detectors.
    hub_degree_max: int = 64
    #: An intermediary of a scatter-gather has at most this many counterparties per side.
    mule_degree_max: int = 12
    #: Distinct intermediaries between one source and one sink that make a scatter-gather.
    scatter_width_min: int = 3
    #: Accounts in a bipartite block have at most this many counterparties on the block side.
    bipartite_degree_max: int = 12
    #: Receivers two senders must share (and vice versa) to form a bipartite block.
    bipartite_shared_min: int = 2
    #: A fan alerts only when it is a *burst*: its degree in the window is at least this many
    #: times the account's distinct counterparties per window outside it (merchants and
    #: employers, with the same degree every window, are not bursts) ...
    fan_burst_min: float = 3.0
    #: ... or when at least ``fan_degree_min`` of its counterparties, and at least half of
    #: them, got near-equal amounts (within one amount band of this width, as a ratio; two
    #: offset band sets are tried).
    fan_amount_band: float = 1.6
    #: Pass-through: the next outgoing transfer of the receiver, within ``window_s``, carries
    #: between these shares of the value received (little retained, little added).
    pass_through_ratio_min: float = 0.8
    pass_through_ratio_max: float = 1.05

    def validate(self) -> None:
        if self.window_s <= 0 or self.gather_scatter_window_s <= 0:
            raise InvalidGraphParameter("windows must be positive")
        if self.fan_degree_min < 2 or self.gather_scatter_degree_min < 1:
            raise InvalidGraphParameter("fan degree must be at least 2")
        if not 2 <= self.cycle_length_max <= 64:
            raise InvalidGraphParameter("cycle length bound must be within 2..64")
        if self.scatter_width_min < 2 or self.bipartite_shared_min < 2:
            raise InvalidGraphParameter("scatter width and bipartite overlap must be >= 2")
        if self.fan_burst_min <= 0 or self.fan_amount_band <= 1:
            raise InvalidGraphParameter("fan burst and amount spread bounds must be positive")
        if not 0 < self.pass_through_ratio_min <= 1 <= self.pass_through_ratio_max:
            raise InvalidGraphParameter("pass-through ratio bounds must bracket 1")


@dataclass(frozen=True, slots=True)
class Detection:
    hits: pl.DataFrame
    groups: pl.DataFrame
    #: Counters about what was skipped or truncated (stated in explanations and reports).
    stats: dict[str, int] = field(default_factory=dict)
    #: Per transfer (``row`` + :data:`SIGNAL_COLUMNS`): the raw degrees, bursts, amount
    #: spread and pass-through measures behind the detectors, for the model.
    signals: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=SIGNALS_SCHEMA))


def empty_hits() -> pl.DataFrame:
    return pl.DataFrame(schema=HITS_SCHEMA)


def empty_groups() -> pl.DataFrame:
    return pl.DataFrame(schema=GROUPS_SCHEMA)


# --------------------------------------------------------------------------------------------
# Windows, built once per history and shared by every detector.


def windowed(frame: FrameT, window_s: int, t0: int) -> FrameT:
    """Each transaction twice: in its window of the even set and of the odd (shifted) set.

    Window ``w`` spans ``[start, start + 2 * window_s)`` with
    ``start = t0 + (w // 2) * 2 * window_s - (w % 2) * window_s``.
    """
    span = 2 * window_s
    even = (pl.col("ts") - t0) // span * 2
    odd = (pl.col("ts") - t0 + window_s) // span * 2 + 1
    return frame.with_columns(win=pl.concat_list(even, odd)).explode("win")


def window_start(win: pl.Expr, window_s: int, t0: int) -> pl.Expr:
    return t0 + (win // 2) * 2 * window_s - (win % 2) * window_s


def value_usd(columns: Sequence[str], currencies: Sequence[str]) -> pl.Expr:
    """Approximate US-dollar value of each transfer, to *compare* amounts across currencies
    (a statistic from :data:`APPROX_MAJOR_PER_USD`; null when the frame has no amounts)."""
    if "amount_minor" not in columns or "currency" not in columns:
        return pl.lit(None, pl.Float64)
    scale = {
        c: float(10 ** unit_exponent(c)) * APPROX_MAJOR_PER_USD.get(c, 1.0) for c in currencies
    }
    return pl.col("amount_minor").cast(pl.Float64) / pl.col("currency").replace_strict(
        scale, return_dtype=pl.Float64
    )


@dataclass(frozen=True, slots=True)
class Windows:
    """The windowed edges and the per-window degree table of one history (built once)."""

    t0: int
    #: Transfers between two different accounts: ``row, ts, src, dst, value`` (self transfers
    #: close no structure).
    edges: pl.DataFrame
    #: ``edges`` (without ``value``) exploded into the windows of ``window_s``, hubs removed.
    core: pl.DataFrame
    #: ``account, win, out_degree, in_degree`` over all windowed edges (hubs included).
    degrees: pl.DataFrame


def build_windows(frame: pl.DataFrame, config: DetectorConfig, t0: int | None = None) -> Windows:
    currencies = frame["currency"].unique().to_list() if "currency" in frame.columns else []
    edges = frame.filter(pl.col("src") != pl.col("dst")).select(
        "row", "ts", "src", "dst", value=value_usd(frame.columns, currencies)
    )
    if t0 is None:
        t0 = int(edges["ts"].min()) if edges.height else 0  # type: ignore[arg-type]
    w = windowed(edges.select("row", "ts", "src", "dst"), config.window_s, t0)
    degrees = _degrees(w)
    core = _without_hubs(w, degrees, config.hub_degree_max)
    return Windows(t0, edges, core, degrees)


def _finish_hits(hits: pl.DataFrame, typology: str, window_s: int, t0: int) -> pl.DataFrame:
    """Keep, per row, the largest structure; add window bounds; cast to the hits schema."""
    if hits.height == 0:
        return empty_hits()
    best = (
        hits.sort(["size", "win"], descending=[True, False]).unique("row", keep="first").sort("row")
    )
    start = window_start(pl.col("win"), window_s, t0)
    return best.select(
        pl.col("row").cast(pl.Int64),
        pl.lit(typology).alias("typology"),
        pl.col("size").cast(pl.Int32),
        pl.col("hub").cast(pl.Int32),
        start.cast(pl.Int64).alias("win_start"),
        (start + 2 * window_s).cast(pl.Int64).alias("win_end"),
        pl.col("group_id").cast(pl.Int64),
    )


# --------------------------------------------------------------------------------------------
# Fans: degree, burst and amount spread per account and window, as window expressions.


def _fan_side(
    edges: pl.LazyFrame, hub: str, other: str, config: DetectorConfig, t0: int, t_end: int
) -> pl.LazyFrame:
    """Per transfer, the fan seen from ``hub``: degree in its busier window, the burst of that
    degree against the hub's counterparties outside it, the amount spread, the window."""
    span = 2 * config.window_s
    even = (pl.col("ts") - t0) // span * 2
    odd = (pl.col("ts") - t0 + config.window_s) // span * 2 + 1
    history = max(t_end - t0 + 1, 1)
    outside_scale = span / max(history - span, span)
    cv = pl.col("value").std() / pl.col("value").mean()
    # Amount bands (log scale) laid twice, the second shifted by half a band.
    band = pl.col("value").log() / math.log(config.fan_amount_band)
    first = pl.col("d0") >= pl.col("d1")
    return (
        edges.with_columns(w0=even, w1=odd, b0=band.floor(), b1=(band + 0.5).floor())
        .with_columns(
            d0=pl.col(other).n_unique().over(hub, "w0"),
            d1=pl.col(other).n_unique().over(hub, "w1"),
            cv0=cv.over(hub, "w0"),
            cv1=cv.over(hub, "w1"),
            s00=pl.col(other).n_unique().over(hub, "w0", "b0"),
            s01=pl.col(other).n_unique().over(hub, "w0", "b1"),
            s10=pl.col(other).n_unique().over(hub, "w1", "b0"),
            s11=pl.col(other).n_unique().over(hub, "w1", "b1"),
            total=pl.col(other).n_unique().over(hub),
        )
        .select(
            "row",
            hub=pl.col(hub),
            degree=pl.max_horizontal("d0", "d1"),
            win=pl.when(first).then("w0").otherwise("w1"),
            value_cv=pl.when(first).then("cv0").otherwise("cv1"),
            # Without amounts every transfer shares one band: no evidence, so null.
            similar=pl.when(pl.col("value").is_null())
            .then(None)
            .when(first)
            .then(pl.max_horizontal("s00", "s01"))
            .otherwise(pl.max_horizontal("s10", "s11")),
            outside=pl.col("total") - pl.max_horizontal("d0", "d1"),
        )
        .with_columns(
            burst=pl.col("degree") / (1.0 + pl.col("outside").cast(pl.Float64) * outside_scale)
        )
    )


def _fan_hits(side: pl.DataFrame, typology: str, config: DetectorConfig, t0: int) -> pl.DataFrame:
    hits = side.filter(
        (pl.col("degree") >= config.fan_degree_min)
        & (pl.col("degree") <= config.hub_degree_max)
        & (
            (pl.col("burst") >= config.fan_burst_min)
            | (
                (pl.col("similar") >= config.fan_degree_min)
                & (2 * pl.col("similar") >= pl.col("degree"))
            ).fill_null(False)
        )
    ).select("row", "win", size="degree", hub="hub", group_id=pl.lit(-1, pl.Int64))
    return _finish_hits(hits, typology, config.window_s, t0)


def detect_fan(
    frame: pl.DataFrame,
    config: DetectorConfig,
    *,
    direction: str,
    t0: int | None = None,
    windows: Windows | None = None,
) -> pl.DataFrame:
    """``fan_out``: an account pays at least ``fan_degree_min`` distinct accounts within
    ``window_s`` (``fan_in``: is paid by that many), as a burst (``fan_burst_min``) or with
    near-equal amounts (``fan_amount_band``); accounts above ``hub_degree_max`` are hubs,
    not fans. Flags those transfers."""
    if direction not in ("out", "in"):
        raise InvalidGraphParameter(f"fan direction must be 'out' or 'in', got {direction!r}")
    windows = windows or build_windows(frame, config, t0)
    edges = windows.edges
    if edges.height == 0:
        return empty_hits()
    t_end = int(edges["ts"].max())  # type: ignore[arg-type]
    hub, other = ("src", "dst") if direction == "out" else ("dst", "src")
    side = _fan_side(edges.lazy(), hub, other, config, windows.t0, t_end).collect()
    return _fan_hits(side, f"fan_{direction}", config, windows.t0)


def detect_gather_scatter(
    frame: pl.DataFrame,
    config: DetectorConfig,
    *,
    t0: int | None = None,
    windows: Windows | None = None,
) -> pl.DataFrame:
    """An account gathers from at least ``gather_scatter_degree_min`` distinct senders and then
    scatters to as many distinct receivers, within ``gather_scatter_window_s``: the median
    incoming transfer precedes the median outgoing one, the hub is no hub (at most
    ``hub_degree_max`` counterparties a side) and passes the money on: what it pays out is
    between a third and three times what it gathered (when amounts are known). Flags the
    hub's in- and out-transfers."""
    windows = windows or build_windows(frame, config, t0)
    edges = windows.edges
    if edges.height == 0:
        return empty_hits()
    t0 = windows.t0
    window_s = config.gather_scatter_window_s
    w = windowed(edges.lazy(), window_s, t0)
    k = config.gather_scatter_degree_min
    incoming = w.group_by("dst", "win").agg(
        pl.col("src").n_unique().alias("in_degree"),
        pl.col("ts").median().alias("in_median"),
        pl.col("value").sum().alias("in_value"),
    )
    outgoing = w.group_by("src", "win").agg(
        pl.col("dst").n_unique().alias("out_degree"),
        pl.col("ts").median().alias("out_median"),
        pl.col("value").sum().alias("out_value"),
    )
    ratio = pl.col("out_value") / pl.col("in_value")
    hubs = (
        incoming.filter(pl.col("in_degree").is_between(k, config.hub_degree_max))
        .rename({"dst": "hub"})
        .join(
            outgoing.filter(pl.col("out_degree").is_between(k, config.hub_degree_max)).rename(
                {"src": "hub"}
            ),
            on=["hub", "win"],
            how="inner",
        )
        .filter(
            (pl.col("in_median") <= pl.col("out_median"))
            & ratio.is_between(1 / 3, 3.0).fill_null(True)
        )
        .with_columns(size=pl.min_horizontal("in_degree", "out_degree"))
        .select("hub", "win", "size")
    )
    ins = w.join(hubs, left_on=["dst", "win"], right_on=["hub", "win"], how="inner").with_columns(
        hub=pl.col("dst")
    )
    outs = w.join(hubs, left_on=["src", "win"], right_on=["hub", "win"], how="inner").with_columns(
        hub=pl.col("src")
    )
    hits = (
        pl.concat([ins, outs])
        .select("row", "win", "size", "hub", group_id=pl.lit(-1, pl.Int64))
        .collect()
    )
    return _finish_hits(hits, "gather_scatter", window_s, t0)


# --------------------------------------------------------------------------------------------
# Pass-through: what an account does next with money it received.


def pass_through(edges: pl.DataFrame) -> pl.DataFrame:
    """Per transfer ``a -> b``: ``b``'s next outgoing transfer at or after it (``next_row``,
    gap ``next_out_s``, value ratio ``next_out_ratio``) and ``a``'s last incoming transfer at
    or before it (``prev_in_s``, ``prev_in_ratio``). Ratios are null without amounts."""
    ordered = edges.lazy().sort("ts")
    outs = ordered.select(account="src", out_ts="ts", next_row="row", out_value="value").sort(
        "out_ts"
    )
    ins = ordered.select(account="dst", in_ts="ts", in_value="value").sort("in_ts")
    nxt = ordered.join_asof(
        outs, left_on="ts", right_on="out_ts", by_left="dst", by_right="account",
        strategy="forward", check_sortedness=False,
    )  # fmt: skip
    both = nxt.join_asof(
        ins, left_on="ts", right_on="in_ts", by_left="src", by_right="account",
        strategy="backward", check_sortedness=False,
    )  # fmt: skip
    return both.select(
        "row",
        "next_row",
        next_out_s=pl.col("out_ts") - pl.col("ts"),
        next_out_ratio=pl.col("out_value") / pl.col("value"),
        prev_in_s=pl.col("ts") - pl.col("in_ts"),
        prev_in_ratio=pl.col("value") / pl.col("in_value"),
    ).collect()


def detect_chains(passes: pl.DataFrame, windows: Windows, config: DetectorConfig) -> pl.DataFrame:
    """Stack layers as IBM draws them: ``a -> b -> c`` where ``b`` pays on, within
    ``window_s``, between ``pass_through_ratio_min`` and ``_max`` of what it received, and
    ``b`` has at most ``mule_degree_max`` counterparties a side in the window. Flags both
    hops (size 2: a two-hop layer)."""
    if passes.height == 0:
        return empty_hits()
    mules = windows.degrees.filter(
        (pl.col("in_degree") <= config.mule_degree_max)
        & (pl.col("out_degree") <= config.mule_degree_max)
    ).select("account", "win")
    span = 2 * config.window_s
    chains = (
        passes.lazy()
        .filter(
            pl.col("next_out_s").is_between(0, config.window_s)
            & pl.col("next_out_ratio").is_between(
                config.pass_through_ratio_min, config.pass_through_ratio_max
            )
        )
        .join(windows.edges.lazy().select("row", "ts", "dst"), on="row")
        .with_columns(win=(pl.col("ts") - windows.t0) // span * 2)
        .join(mules.lazy(), left_on=["dst", "win"], right_on=["account", "win"], how="semi")
    )
    hits = pl.concat(
        [
            chains.select("row", "win", hub="dst"),
            chains.select(row="next_row", win="win", hub="dst"),
        ]
    ).with_columns(size=pl.lit(2, pl.Int32), group_id=pl.lit(-1, pl.Int64))
    return _finish_hits(hits.collect(), "stack", config.window_s, windows.t0)


# --------------------------------------------------------------------------------------------
# Path-based detectors.


def _degrees(w: pl.DataFrame) -> pl.DataFrame:
    """Distinct in-, out- and total counterparties per account and window."""
    lazy = w.lazy()
    out_deg = lazy.group_by("src", "win").agg(pl.col("dst").n_unique().alias("out_degree"))
    in_deg = lazy.group_by("dst", "win").agg(pl.col("src").n_unique().alias("in_degree"))
    return (
        out_deg.rename({"src": "account"})
        .join(in_deg.rename({"dst": "account"}), on=["account", "win"], how="full", coalesce=True)
        .with_columns(pl.col("out_degree").fill_null(0), pl.col("in_degree").fill_null(0))
        .collect()
    )


def _without_hubs(w: pl.DataFrame, degrees: pl.DataFrame, limit: int) -> pl.DataFrame:
    hubs = degrees.filter((pl.col("out_degree") + pl.col("in_degree")) > limit).select(
        "account", "win"
    )
    if hubs.height == 0:
        return w
    return (
        w.lazy()
        .join(hubs.lazy(), left_on=["src", "win"], right_on=["account", "win"], how="anti")
        .join(hubs.lazy(), left_on=["dst", "win"], right_on=["account", "win"], how="anti")
        .collect()
    )


def detect_scatter_gather(
    frame: pl.DataFrame,
    config: DetectorConfig,
    *,
    t0: int | None = None,
    windows: Windows | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """A source pays at least ``scatter_width_min`` distinct intermediaries that each pay the
    same sink afterwards, all within ``window_s``. Intermediaries are low-degree accounts
    (``mule_degree_max``); source and sink are not hubs.

    Returns ``(hits, groups, hops)``; ``hops`` counts, per transfer, onward hops from its
    receiver (``onward``) and earlier hops into its sender (``inbound``) — pass-through
    evidence the model uses for the typologies without a detector (``random``).
    """
    windows = windows or build_windows(frame, config, t0)
    if windows.edges.height == 0:
        return (
            empty_hits(),
            empty_groups(),
            pl.DataFrame(schema={"row": pl.Int64, "onward": pl.UInt32, "inbound": pl.UInt32}),
        )
    t0 = windows.t0
    w = windows.core
    degrees = windows.degrees
    mules = degrees.filter(
        (pl.col("in_degree") <= config.mule_degree_max)
        & (pl.col("out_degree") <= config.mule_degree_max)
        & (pl.col("in_degree") >= 1)
        & (pl.col("out_degree") >= 1)
    ).select("account", "win")
    first = w.join(mules, left_on=["dst", "win"], right_on=["account", "win"], how="semi")
    second = w.join(mules, left_on=["src", "win"], right_on=["account", "win"], how="semi")
    paths = (
        first.rename({"row": "row1", "ts": "ts1", "src": "source", "dst": "mid"})
        .join(
            second.rename({"row": "row2", "ts": "ts2", "src": "mid", "dst": "sink"}),
            on=["mid", "win"],
            how="inner",
        )
        .filter(
            (pl.col("ts2") >= pl.col("ts1"))
            & (pl.col("ts2") - pl.col("ts1") <= config.window_s)
            & (pl.col("sink") != pl.col("source"))
        )
    )
    hops = (
        pl.concat(
            [
                paths.group_by("row1")
                .agg(pl.col("row2").n_unique().alias("onward"))
                .rename({"row1": "row"}),
                paths.group_by("row2")
                .agg(pl.col("row1").n_unique().alias("inbound"))
                .rename({"row2": "row"}),
            ],
            how="diagonal",
        )
        .group_by("row")
        .agg(pl.col("onward").max().fill_null(0), pl.col("inbound").max().fill_null(0))
    )
    pairs = (
        paths.group_by("source", "sink", "win")
        .agg(pl.col("mid").unique().sort().alias("mids"))
        .with_columns(size=pl.col("mids").list.len())
        .filter(pl.col("size") >= config.scatter_width_min)
        .sort("source", "sink", "win")
        .with_row_index("group_id")
        .with_columns(pl.col("group_id").cast(pl.Int64))
    )
    if pairs.height == 0:
        return empty_hits(), empty_groups(), hops
    flagged = paths.join(
        pairs.select("source", "sink", "win", "size", "group_id"),
        on=["source", "sink", "win"],
        how="inner",
    )
    hits = pl.concat(
        [
            flagged.select(row="row1", win="win", size="size", hub="source", group_id="group_id"),
            flagged.select(row="row2", win="win", size="size", hub="source", group_id="group_id"),
        ]
    )
    groups = pairs.select(
        "group_id",
        pl.lit("scatter_gather").alias("typology"),
        pl.concat_list(pl.col("source"), pl.col("mids"), pl.col("sink"))
        .cast(pl.List(pl.Int32))
        .alias("members"),
    )
    return _finish_hits(hits, "scatter_gather", config.window_s, t0), groups, hops


def detect_bipartite(
    frame: pl.DataFrame,
    config: DetectorConfig,
    *,
    t0: int | None = None,
    windows: Windows | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Bipartite blocks: two senders that share at least ``bipartite_shared_min`` receivers
    within ``window_s`` (a K2,2 or denser), among accounts of at most
    ``bipartite_degree_max`` counterparties on the block side.

    Stacks: a bipartite block whose receivers pass money on, later, through another block —
    accounts that are receivers of one block and senders of another in the same window.

    Returns ``(bipartite_hits, stack_hits, groups)``.
    """
    windows = windows or build_windows(frame, config, t0)
    if windows.edges.height == 0:
        return empty_hits(), empty_hits(), empty_groups()
    t0 = windows.t0
    w = windows.core
    degrees = windows.degrees
    limit = config.bipartite_degree_max
    senders = degrees.filter(pl.col("out_degree").is_between(2, limit)).select("account", "win")
    receivers = degrees.filter(pl.col("in_degree").is_between(2, limit)).select("account", "win")
    cand = w.join(senders, left_on=["src", "win"], right_on=["account", "win"], how="semi").join(
        receivers, left_on=["dst", "win"], right_on=["account", "win"], how="semi"
    )
    distinct = cand.select("src", "dst", "win").unique()
    pairs = (
        distinct.join(distinct, on=["dst", "win"], how="inner", suffix="_b")
        .filter(pl.col("src") < pl.col("src_b"))
        .group_by("src", "src_b", "win")
        .agg(pl.col("dst").unique().sort().alias("shared"))
        .filter(pl.col("shared").list.len() >= config.bipartite_shared_min)
        .sort("src", "src_b", "win")
        .with_row_index("group_id")
        .with_columns(pl.col("group_id").cast(pl.Int64), size=pl.col("shared").list.len())
    )
    if pairs.height == 0:
        return empty_hits(), empty_hits(), empty_groups()
    block_edges = pl.concat(
        [
            pairs.select("group_id", "win", "size", sender="src", dst="shared"),
            pairs.select("group_id", "win", "size", sender="src_b", dst="shared"),
        ]
    ).explode("dst")
    flagged = cand.join(
        block_edges, left_on=["src", "dst", "win"], right_on=["sender", "dst", "win"], how="inner"
    ).with_columns(hub=pl.lit(None, pl.Int32))
    bip_hits = _finish_hits(flagged, "bipartite", config.window_s, t0)
    groups = pairs.select(
        "group_id",
        pl.lit("bipartite").alias("typology"),
        pl.concat_list(pl.col("src"), pl.col("src_b"), pl.col("shared"))
        .cast(pl.List(pl.Int32))
        .alias("members"),
    )
    # Stack: middle-layer accounts receive in one block and send in another, later.
    received = flagged.group_by("dst", "win").agg(pl.col("ts").min().alias("first_in"))
    sent = flagged.group_by("src", "win").agg(pl.col("ts").max().alias("last_out"))
    middle = (
        received.rename({"dst": "account"})
        .join(sent.rename({"src": "account"}), on=["account", "win"], how="inner")
        .filter(pl.col("last_out") >= pl.col("first_in"))
        .select("account", "win")
    )
    if middle.height == 0:
        return bip_hits, empty_hits(), groups
    into = flagged.join(middle, left_on=["dst", "win"], right_on=["account", "win"], how="semi")
    onward = flagged.join(middle, left_on=["src", "win"], right_on=["account", "win"], how="semi")
    stack = pl.concat([into, onward]).with_columns(size=pl.lit(3, pl.Int32))
    stack_hits = _finish_hits(stack, "stack", config.window_s, t0)
    return bip_hits, stack_hits, groups


def detect_cycles(
    frame: pl.DataFrame,
    config: DetectorConfig,
    *,
    t0: int | None = None,
    windows: Windows | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """Temporal cycles: money leaves an account and returns to it through 1..L-1 other
    accounts, each hop no earlier than the previous one, all within ``window_s``.

    Per window: hubs removed, then accounts that cannot lie on a cycle (no in- or no
    out-transfer left) are peeled away in polars; rustworkx finds the strongly connected
    components (busier accounts are shed until each has at most
    ``cycle_component_nodes_max`` accounts), and :func:`temporal_cycles` searches each one
    for time-respecting rings of at most ``cycle_length_max`` hops.
    """
    stats = {"cycle_components_too_large": 0, "cycle_components_truncated": 0}
    windows = windows or build_windows(frame, config, t0)
    if windows.edges.height == 0:
        return empty_hits(), empty_groups(), stats
    t0 = windows.t0
    w = windows.core
    pairs = w.group_by("src", "dst", "win").agg(pl.col("ts").sort().alias("times"))
    # Peel: an account with no remaining in- or out-edge in its window is on no cycle.
    # A few peeling rounds remove most dead ends; the SCC pass below handles the rest.
    for _ in range(4):
        has_out = pairs.select(account="src", win="win").unique()
        has_in = pairs.select(account="dst", win="win").unique()
        kept = pairs.join(has_in, left_on=["src", "win"], right_on=["account", "win"], how="semi")
        kept = kept.join(has_out, left_on=["dst", "win"], right_on=["account", "win"], how="semi")
        if kept.height == pairs.height:
            break
        pairs = kept
    cycles: list[tuple[int, tuple[int, ...], int]] = []  # (win, accounts, first ts)
    for (win,), part in pairs.partition_by("win", as_dict=True, maintain_order=True).items():
        cycles.extend(_window_cycles(int(win), part, config, stats))
    if not cycles:
        return empty_hits(), empty_groups(), stats
    # A cycle inside the overlap of two windows is found twice: keep its earliest window.
    cycles.sort()
    seen: set[tuple[int, ...]] = set()
    unique_cycles = []
    for cycle in cycles:
        if cycle[1] not in seen:
            seen.add(cycle[1])
            unique_cycles.append(cycle)
    cycles = unique_cycles
    rows: list[tuple[int, int, int, int, int]] = []  # src, dst, win, size, group
    members: list[list[int]] = []
    for group_id, (win, ring, _) in enumerate(cycles):
        members.append(list(ring))
        for a, b in itertools.pairwise((*ring, ring[0])):
            rows.append((a, b, win, len(ring), group_id))
    cycle_edges = pl.DataFrame(
        rows, schema=["src", "dst", "win", "size", "group_id"], orient="row"
    ).with_columns(
        pl.col("src").cast(pl.Int32), pl.col("dst").cast(pl.Int32), pl.col("win").cast(pl.Int64)
    )
    flagged = w.with_columns(pl.col("win").cast(pl.Int64)).join(
        cycle_edges, on=["src", "dst", "win"], how="inner"
    )
    # Shortest cycle first: the tightest explanation for a transfer.
    flagged = flagged.with_columns(size=-pl.col("size"), hub=pl.lit(None, pl.Int32))
    hits = _finish_hits(flagged, "cycle", config.window_s, t0).with_columns(pl.col("size").abs())
    groups = pl.DataFrame(
        {
            "group_id": list(range(len(members))),
            "typology": ["cycle"] * len(members),
            "members": members,
        },
        schema=GROUPS_SCHEMA,
    )
    return hits, groups, stats


def _window_cycles(
    win: int, part: pl.DataFrame, config: DetectorConfig, stats: dict[str, int]
) -> list[tuple[int, tuple[int, ...], int]]:
    nodes = pl.concat([part["src"], part["dst"]]).unique().sort()
    index = {int(a): i for i, a in enumerate(nodes.to_list())}
    graph = rx.PyDiGraph(multigraph=False)
    graph.add_nodes_from(nodes.to_list())
    times: dict[tuple[int, int], list[int]] = {}
    edge_list = []
    for src, dst, ts_list in part.select("src", "dst", "times").iter_rows():
        times[(int(src), int(dst))] = list(ts_list)
        edge_list.append((index[int(src)], index[int(dst)]))
    graph.add_edges_from_no_data(edge_list)
    outgoing: dict[int, list[tuple[int, list[int]]]] = {}
    for (src, dst), ts_list in times.items():
        outgoing.setdefault(src, []).append((dst, ts_list))
    found: list[tuple[int, tuple[int, ...], int]] = []
    for component in _small_components(graph, config, stats):
        members = {int(graph[i]) for i in component}
        adjacency = {
            a: [(b, ts) for b, ts in outgoing.get(a, []) if b in members] for a in sorted(members)
        }
        rings, truncated = temporal_cycles(
            adjacency, config.cycle_length_max, config.window_s, config.cycle_steps_max
        )
        if truncated:
            stats["cycle_components_truncated"] += 1
        found.extend((win, ring, first) for ring, first in rings)
    return found


def temporal_cycles(
    adjacency: dict[int, list[tuple[int, list[int]]]],
    length_max: int,
    window_s: int,
    steps_max: int,
) -> tuple[list[tuple[tuple[int, ...], int]], bool]:
    """Time-respecting simple cycles of at most ``length_max`` hops lasting ``window_s``.

    A walk may start at any transfer (money can enter a ring anywhere); rings are named by
    their rotation starting at the smallest account, so each is reported once with its
    earliest start. Each hop takes the earliest transfer no earlier than the previous hop
    (greedy is optimal for reachability). Bounded length and a step budget
    keep dense components from exploding, unlike unbounded enumeration (Johnson's algorithm
    lists long cycles first and never reaches short laundering rings in dense graphs).
    Returns ``(cycles as (ring, start time), truncated)``.
    """
    found: dict[tuple[int, ...], int] = {}
    steps = 0
    truncated = False

    def extend(root: int, path: list[int], now: int, start: int) -> None:
        nonlocal steps, truncated
        for nxt, ts_list in adjacency[path[-1]]:
            steps += 1
            if steps > steps_max:
                truncated = True
                return
            i = bisect.bisect_left(ts_list, now)
            if i == len(ts_list) or ts_list[i] - start > window_s:
                continue
            if nxt == root:
                ring = _canonical(tuple(path))
                if ring not in found or start < found[ring]:
                    found[ring] = start
            elif nxt not in path and len(path) < length_max:
                path.append(nxt)
                extend(root, path, ts_list[i], start)
                path.pop()
            if truncated:
                return

    for root in sorted(adjacency):
        for first, ts_list in adjacency[root]:
            for start in ts_list:
                extend(root, [root, first], start, start)
                if truncated:
                    return list(found.items()), True
    return list(found.items()), False


#: Degree caps tried, in turn, inside a component too large to enumerate: laundering rings
#: are made of accounts with few counterparties, so shedding busier ones splits the component.
_COMPONENT_DEGREE_CAPS: Final = (16, 8, 4)


def _small_components(
    graph: rx.PyDiGraph, config: DetectorConfig, stats: dict[str, int]
) -> list[list[int]]:
    """Strongly connected components of at most ``cycle_component_nodes_max`` nodes; larger
    ones are split by dropping their busier accounts, and counted when that fails."""
    result: list[list[int]] = []
    pending: list[tuple[list[int], int]] = [
        (list(c), 0) for c in rx.strongly_connected_components(graph)
    ]
    while pending:
        component, level = pending.pop()
        if len(component) < 2:
            continue
        if len(component) <= config.cycle_component_nodes_max:
            result.append(component)
            continue
        if level >= len(_COMPONENT_DEGREE_CAPS):
            stats["cycle_components_too_large"] += 1
            continue
        cap = _COMPONENT_DEGREE_CAPS[level]
        sub = graph.subgraph(component)
        keep = [i for i in sub.node_indices() if sub.in_degree(i) + sub.out_degree(i) <= cap]
        smaller = sub.subgraph(keep)
        # Map back to the indices of ``graph`` through the node payloads (account ids).
        position = {graph[i]: i for i in component}
        for part in rx.strongly_connected_components(smaller):
            pending.append(([position[smaller[i]] for i in part], level + 1))
    return result


def _canonical(ring: tuple[int, ...]) -> tuple[int, ...]:
    """Rotate so the smallest account comes first (one name per cycle)."""
    i = ring.index(min(ring))
    return ring[i:] + ring[:i]


# --------------------------------------------------------------------------------------------
# All detectors.


def detect_all(
    frame: pl.DataFrame, config: DetectorConfig | None = None
) -> tuple[Detection, pl.DataFrame]:
    """Run every detector over windows built once. Returns the detection (hits of all
    typologies, groups with globally unique ids, stats, per-transfer signals) and the
    per-transfer pass-through hop counts of scatter-gather paths."""
    config = config or DetectorConfig()
    config.validate()
    no_hops = pl.DataFrame(schema={"row": pl.Int64, "onward": pl.UInt32, "inbound": pl.UInt32})
    if frame.height == 0:
        return Detection(empty_hits(), empty_groups(), {}), no_hops
    windows = build_windows(frame, config, int(frame["ts"].min()))  # type: ignore[arg-type]
    if windows.edges.height == 0:
        return Detection(empty_hits(), empty_groups(), {}), no_hops
    t0 = windows.t0
    edges = windows.edges
    t_end = int(edges["ts"].max())  # type: ignore[arg-type]
    lazy = edges.lazy()
    out_side, in_side = pl.collect_all(
        [
            _fan_side(lazy, "src", "dst", config, t0, t_end),
            _fan_side(lazy, "dst", "src", config, t0, t_end),
        ]
    )
    fan_out = _fan_hits(out_side, "fan_out", config, t0)
    fan_in = _fan_hits(in_side, "fan_in", config, t0)
    gather = detect_gather_scatter(frame, config, windows=windows)
    sg_hits, sg_groups, hops = detect_scatter_gather(frame, config, windows=windows)
    bip_hits, block_stack_hits, bip_groups = detect_bipartite(frame, config, windows=windows)
    cyc_hits, cyc_groups, stats = detect_cycles(frame, config, windows=windows)
    passes = pass_through(edges)
    chain_hits = detect_chains(passes, windows, config)
    # Group ids are offset per typology so that they are unique in one table.
    offset_sg = int(cyc_groups.height)
    offset_bip = offset_sg + int(sg_groups.height)
    sg_hits = _shift(sg_hits, offset_sg)
    sg_groups = sg_groups.with_columns(pl.col("group_id") + offset_sg)
    bip_hits = _shift(bip_hits, offset_bip)
    block_stack_hits = _shift(block_stack_hits, offset_bip)
    bip_groups = bip_groups.with_columns(pl.col("group_id") + offset_bip)
    # A transfer in both a block stack and a pass-through chain keeps the block (size 3).
    stack_hits = (
        pl.concat([block_stack_hits, chain_hits])
        .sort("size", descending=True)
        .unique("row", keep="first")
        .sort("row")
    )
    hits = pl.concat([fan_out, fan_in, cyc_hits, sg_hits, gather, stack_hits, bip_hits])
    groups = pl.concat([cyc_groups, sg_groups, bip_groups])
    hours = 1.0 / 3_600
    signals = (
        edges.select("row")
        .with_columns(
            src_out_degree_w=out_side["degree"],
            src_out_burst=out_side["burst"],
            src_out_value_cv=out_side["value_cv"],
            dst_in_degree_w=in_side["degree"],
            dst_in_burst=in_side["burst"],
            dst_in_value_cv=in_side["value_cv"],
            src_out_similar=out_side["similar"],
            dst_in_similar=in_side["similar"],
        )
        .join(passes, on="row", how="left")
        .select(
            "row",
            *(pl.col(c) for c in SIGNAL_COLUMNS[:8]),
            next_out_hours=pl.col("next_out_s") * hours,
            next_out_ratio=pl.col("next_out_ratio"),
            prev_in_hours=pl.col("prev_in_s") * hours,
            prev_in_ratio=pl.col("prev_in_ratio"),
        )
        .select("row", *(pl.col(c).cast(pl.Float32) for c in SIGNAL_COLUMNS))
    )
    return Detection(hits, groups, stats, signals), hops


def _shift(hits: pl.DataFrame, offset: int) -> pl.DataFrame:
    return hits.with_columns(
        pl.when(pl.col("group_id") >= 0)
        .then(pl.col("group_id") + offset)
        .otherwise(pl.col("group_id"))
    )
