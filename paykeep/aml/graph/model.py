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
from dataclasses import dataclass, field
from typing import Final

import polars as pl
import rustworkx as rx

from paykeep.aml.graph.errors import InvalidGraphParameter

DAY_S: Final = 86_400
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

    def validate(self) -> None:
        if self.window_s <= 0 or self.gather_scatter_window_s <= 0:
            raise InvalidGraphParameter("windows must be positive")
        if self.fan_degree_min < 2 or self.gather_scatter_degree_min < 1:
            raise InvalidGraphParameter("fan degree must be at least 2")
        if not 2 <= self.cycle_length_max <= 64:
            raise InvalidGraphParameter("cycle length bound must be within 2..64")
        if self.scatter_width_min < 2 or self.bipartite_shared_min < 2:
            raise InvalidGraphParameter("scatter width and bipartite overlap must be >= 2")


@dataclass(frozen=True, slots=True)
class Detection:
    hits: pl.DataFrame
    groups: pl.DataFrame
    #: Counters about what was skipped or truncated (stated in explanations and reports).
    stats: dict[str, int] = field(default_factory=dict)


def empty_hits() -> pl.DataFrame:
    return pl.DataFrame(schema=HITS_SCHEMA)


def empty_groups() -> pl.DataFrame:
    return pl.DataFrame(schema=GROUPS_SCHEMA)


# --------------------------------------------------------------------------------------------
# Windows.


def windowed(frame: pl.DataFrame, window_s: int, t0: int) -> pl.DataFrame:
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


def _edges(frame: pl.DataFrame) -> pl.DataFrame:
    """Transfers between two different accounts (self transfers close no structure)."""
    return frame.select("row", "ts", "src", "dst").filter(pl.col("src") != pl.col("dst"))


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
# Fans and gather-scatter: degree counts per account and window.


def detect_fan(
    frame: pl.DataFrame, config: DetectorConfig, *, direction: str, t0: int | None = None
) -> pl.DataFrame:
    """``fan_out``: an account pays at least ``fan_degree_min`` distinct accounts within
    ``window_s``; ``fan_in``: an account is paid by that many. Flags those transfers."""
    if direction not in ("out", "in"):
        raise InvalidGraphParameter(f"fan direction must be 'out' or 'in', got {direction!r}")
    edges = _edges(frame)
    if edges.height == 0:
        return empty_hits()
    t0 = int(edges["ts"].min()) if t0 is None else t0  # type: ignore[arg-type]
    hub, other = ("src", "dst") if direction == "out" else ("dst", "src")
    # No explode here: each transfer lies in one even and one odd window, so both degrees
    # are window expressions over the flat frame (the fans run on every transfer).
    span = 2 * config.window_s
    even = (pl.col("ts") - t0) // span * 2
    odd = (pl.col("ts") - t0 + config.window_s) // span * 2 + 1
    degrees = edges.with_columns(w0=even, w1=odd).with_columns(
        d0=pl.col(other).n_unique().over(hub, "w0"),
        d1=pl.col(other).n_unique().over(hub, "w1"),
    )
    hits = (
        degrees.with_columns(
            size=pl.max_horizontal("d0", "d1"),
            win=pl.when(pl.col("d0") >= pl.col("d1")).then("w0").otherwise("w1"),
        )
        .filter(pl.col("size") >= config.fan_degree_min)
        .with_columns(hub=pl.col(hub), group_id=pl.lit(-1, pl.Int64))
    )
    return _finish_hits(hits, f"fan_{direction}", config.window_s, t0)


def detect_gather_scatter(
    frame: pl.DataFrame, config: DetectorConfig, *, t0: int | None = None
) -> pl.DataFrame:
    """An account gathers from at least ``gather_scatter_degree_min`` distinct senders and then
    scatters to as many distinct receivers, within ``gather_scatter_window_s``: the median
    incoming transfer precedes the median outgoing one. Flags the hub's in- and out-transfers."""
    edges = _edges(frame)
    if edges.height == 0:
        return empty_hits()
    t0 = int(edges["ts"].min()) if t0 is None else t0  # type: ignore[arg-type]
    window_s = config.gather_scatter_window_s
    w = windowed(edges, window_s, t0)
    k = config.gather_scatter_degree_min
    incoming = w.group_by("dst", "win").agg(
        pl.col("src").n_unique().alias("in_degree"), pl.col("ts").median().alias("in_median")
    )
    outgoing = w.group_by("src", "win").agg(
        pl.col("dst").n_unique().alias("out_degree"), pl.col("ts").median().alias("out_median")
    )
    hubs = (
        incoming.rename({"dst": "hub"})
        .join(outgoing.rename({"src": "hub"}), on=["hub", "win"], how="inner")
        .filter(
            (pl.col("in_degree") >= k)
            & (pl.col("out_degree") >= k)
            & (pl.col("in_median") <= pl.col("out_median"))
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
    hits = pl.concat([ins, outs]).with_columns(group_id=pl.lit(-1, pl.Int64))
    return _finish_hits(hits, "gather_scatter", window_s, t0)


# --------------------------------------------------------------------------------------------
# Path-based detectors.


def _degrees(w: pl.DataFrame) -> pl.DataFrame:
    """Distinct in-, out- and total counterparties per account and window."""
    out_deg = w.group_by("src", "win").agg(pl.col("dst").n_unique().alias("out_degree"))
    in_deg = w.group_by("dst", "win").agg(pl.col("src").n_unique().alias("in_degree"))
    return (
        out_deg.rename({"src": "account"})
        .join(in_deg.rename({"dst": "account"}), on=["account", "win"], how="full", coalesce=True)
        .with_columns(pl.col("out_degree").fill_null(0), pl.col("in_degree").fill_null(0))
    )


def _without_hubs(w: pl.DataFrame, degrees: pl.DataFrame, limit: int) -> pl.DataFrame:
    hubs = degrees.filter((pl.col("out_degree") + pl.col("in_degree")) > limit).select(
        "account", "win"
    )
    if hubs.height == 0:
        return w
    w = w.join(hubs, left_on=["src", "win"], right_on=["account", "win"], how="anti")
    return w.join(hubs, left_on=["dst", "win"], right_on=["account", "win"], how="anti")


def detect_scatter_gather(
    frame: pl.DataFrame, config: DetectorConfig, *, t0: int | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """A source pays at least ``scatter_width_min`` distinct intermediaries that each pay the
    same sink afterwards, all within ``window_s``. Intermediaries are low-degree accounts
    (``mule_degree_max``); source and sink are not hubs.

    Returns ``(hits, groups, hops)``; ``hops`` counts, per transfer, onward hops from its
    receiver (``onward``) and earlier hops into its sender (``inbound``) — pass-through
    evidence the model uses for the typologies without a detector (``random``).
    """
    edges = _edges(frame)
    if edges.height == 0:
        return (
            empty_hits(),
            empty_groups(),
            pl.DataFrame(schema={"row": pl.Int64, "onward": pl.UInt32, "inbound": pl.UInt32}),
        )
    t0 = int(edges["ts"].min()) if t0 is None else t0  # type: ignore[arg-type]
    w = windowed(edges, config.window_s, t0)
    degrees = _degrees(w)
    w = _without_hubs(w, degrees, config.hub_degree_max)
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
    frame: pl.DataFrame, config: DetectorConfig, *, t0: int | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Bipartite blocks: two senders that share at least ``bipartite_shared_min`` receivers
    within ``window_s`` (a K2,2 or denser), among accounts of at most
    ``bipartite_degree_max`` counterparties on the block side.

    Stacks: a bipartite block whose receivers pass money on, later, through another block —
    accounts that are receivers of one block and senders of another in the same window.

    Returns ``(bipartite_hits, stack_hits, groups)``.
    """
    edges = _edges(frame)
    if edges.height == 0:
        return empty_hits(), empty_hits(), empty_groups()
    t0 = int(edges["ts"].min()) if t0 is None else t0  # type: ignore[arg-type]
    w = windowed(edges, config.window_s, t0)
    degrees = _degrees(w)
    w = _without_hubs(w, degrees, config.hub_degree_max)
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
    frame: pl.DataFrame, config: DetectorConfig, *, t0: int | None = None
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
    edges = _edges(frame)
    if edges.height == 0:
        return empty_hits(), empty_groups(), stats
    t0 = int(edges["ts"].min()) if t0 is None else t0  # type: ignore[arg-type]
    w = windowed(edges, config.window_s, t0)
    w = _without_hubs(w, _degrees(w), config.hub_degree_max)
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
    """Run every detector. Returns the detection (hits of all typologies, groups with globally
    unique ids, stats) and the per-transfer pass-through hop counts."""
    config = config or DetectorConfig()
    config.validate()
    if frame.height == 0:
        return Detection(empty_hits(), empty_groups(), {}), pl.DataFrame(
            schema={"row": pl.Int64, "onward": pl.UInt32, "inbound": pl.UInt32}
        )
    t0 = int(frame["ts"].min())  # type: ignore[arg-type]
    fan_out = detect_fan(frame, config, direction="out", t0=t0)
    fan_in = detect_fan(frame, config, direction="in", t0=t0)
    gather = detect_gather_scatter(frame, config, t0=t0)
    sg_hits, sg_groups, hops = detect_scatter_gather(frame, config, t0=t0)
    bip_hits, stack_hits, bip_groups = detect_bipartite(frame, config, t0=t0)
    cyc_hits, cyc_groups, stats = detect_cycles(frame, config, t0=t0)
    # Group ids are offset per typology so that they are unique in one table.
    offset_sg = int(cyc_groups.height)
    offset_bip = offset_sg + int(sg_groups.height)
    sg_hits = _shift(sg_hits, offset_sg)
    sg_groups = sg_groups.with_columns(pl.col("group_id") + offset_sg)
    bip_hits = _shift(bip_hits, offset_bip)
    stack_hits = _shift(stack_hits, offset_bip)
    bip_groups = bip_groups.with_columns(pl.col("group_id") + offset_bip)
    hits = pl.concat([fan_out, fan_in, cyc_hits, sg_hits, gather, stack_hits, bip_hits])
    groups = pl.concat([cyc_groups, sg_groups, bip_groups])
    return Detection(hits, groups, stats), hops


def _shift(hits: pl.DataFrame, offset: int) -> pl.DataFrame:
    return hits.with_columns(
        pl.when(pl.col("group_id") >= 0)
        .then(pl.col("group_id") + offset)
        .otherwise(pl.col("group_id"))
    )
