"""Detectors: worked examples and the invariant that injected typologies are found."""

from __future__ import annotations

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paykeep.aml.graph.model import (
    DetectorConfig,
    detect_all,
    detect_cycles,
    detect_fan,
    temporal_cycles,
)
from paykeep.aml.graph.simulate import Simulation, SimulationConfig, simulate

T0 = 1_661_990_400  # 2022-09-01


def frame(edges: list[tuple[int, int, int]]) -> pl.DataFrame:
    """(src, dst, minutes after T0) -> the detectors' input columns."""
    return pl.DataFrame(
        {
            "row": list(range(len(edges))),
            "ts": [T0 + m * 60 for _, _, m in edges],
            "src": [s for s, _, _ in edges],
            "dst": [d for _, d, _ in edges],
        },
        schema={"row": pl.Int64, "ts": pl.Int64, "src": pl.Int32, "dst": pl.Int32},
    )


def test_fan_out_needs_min_degree_within_window() -> None:
    config = DetectorConfig(fan_degree_min=4)
    three = frame([(1, 10, 0), (1, 11, 5), (1, 12, 9)])
    assert detect_fan(three, config, direction="out").height == 0
    four = frame([(1, 10, 0), (1, 11, 5), (1, 12, 9), (1, 13, 12)])
    hits = detect_fan(four, config, direction="out")
    assert hits["row"].to_list() == [0, 1, 2, 3]
    assert set(hits["size"].to_list()) == {4}
    # The same four payees spread over far more than a window are no fan.
    spread = frame([(1, 10, 0), (1, 11, 60 * 24 * 9), (1, 12, 60 * 24 * 18), (1, 13, 60 * 24 * 27)])
    assert detect_fan(spread, config, direction="out").height == 0


def test_cycle_must_respect_time_order() -> None:
    config = DetectorConfig()
    forward = frame([(1, 2, 0), (2, 3, 10), (3, 1, 20)])
    hits, groups, _ = detect_cycles(forward, config)
    assert sorted(hits["row"].to_list()) == [0, 1, 2]
    assert groups["members"].to_list() == [[1, 2, 3]]
    # Same ring, but the middle hop happens before the first: no money could have gone round.
    backward = frame([(1, 2, 20), (2, 3, 0), (3, 1, 30)])
    hits, _, _ = detect_cycles(backward, config)
    assert hits.height == 0


def test_temporal_cycles_bounded_length_and_window() -> None:
    adjacency = {1: [(2, [50])], 2: [(3, [100])], 3: [(1, [10, 120])]}
    rings, truncated = temporal_cycles(adjacency, 3, 1_000, 10_000)
    assert (rings, truncated) == ([((1, 2, 3), 10)], False)  # 3->1 at 10 starts it
    assert temporal_cycles(adjacency, 2, 1_000, 10_000)[0] == []  # needs 3 hops
    assert temporal_cycles(adjacency, 3, 60, 10_000)[0] == []  # 90 s or 70 s: too slow
    assert temporal_cycles(adjacency, 3, 1_000, 1)[1] is True  # budget exhausted


def test_scatter_gather_and_bipartite_examples() -> None:
    sg = frame([(1, 10, 0), (1, 11, 1), (1, 12, 2), (10, 2, 30), (11, 2, 31), (12, 2, 32)])
    detection, hops = detect_all(sg)
    found = detection.hits.filter(pl.col("typology") == "scatter_gather")
    assert sorted(found["row"].to_list()) == [0, 1, 2, 3, 4, 5]
    assert hops.filter(pl.col("row") == 0)["onward"].to_list() == [1]
    bip = frame([(1, 10, 0), (1, 11, 1), (2, 10, 2), (2, 11, 3)])
    detection, _ = detect_all(bip)
    found = detection.hits.filter(pl.col("typology") == "bipartite")
    assert sorted(found["row"].to_list()) == [0, 1, 2, 3]


DETECTABLE = (
    "fan_out",
    "fan_in",
    "cycle",
    "scatter_gather",
    "gather_scatter",
    "stack",
    "bipartite",
)


LOOSE = ("fan_out", "fan_in", "gather_scatter")


def _recall_by_own_detector(sim: Simulation) -> dict[str, float]:
    detection, _ = detect_all(sim.transactions.frame)
    recall = {}
    for typology in DETECTABLE:
        rows = [r for a in sim.attempts if a.typology == typology for r in a.rows]
        own = set(detection.hits.filter(pl.col("typology") == typology)["row"].to_list())
        recall[typology] = sum(r in own for r in rows) / len(rows)
    return recall


def test_each_injected_typology_found_on_fixed_seed(small_sim: Simulation) -> None:
    assert {a.typology for a in small_sim.attempts} >= set(DETECTABLE) | {"random"}
    recall = _recall_by_own_detector(small_sim)
    # Fans and gather-scatter alert only on bursts / near-equal amounts / pass-through, so an
    # attempt drowned in its hub's own traffic may be missed; the rarer structures never are.
    assert all(recall[t] == 1.0 for t in DETECTABLE if t not in LOOSE), recall
    assert all(recall[t] >= 0.85 for t in LOOSE), recall


STRUCTURAL = ("cycle", "scatter_gather")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=0, max_value=10_000))
def test_structural_typologies_found_on_any_seed(seed: int) -> None:
    # Cycles and scatter-gathers are found from their shape alone, so a hub's own traffic
    # cannot hide them: every attempt, on every simulation. Stacks (layers of fan-out/fan-in)
    # are found whole on 60 of 61 seeds measured; on seed 3142 a layer drowned in its hubs'
    # traffic (recall 0.89), so stacks are held to 0.85 on any seed.
    sim = simulate(SimulationConfig(transactions=3_000, seed=seed, laundering_share=0.08))
    recall = _recall_by_own_detector(sim)
    assert all(recall[t] == 1.0 for t in STRUCTURAL), recall
    assert recall["stack"] >= 0.85, recall


def test_each_injected_typology_found_by_its_detector_over_seeds() -> None:
    # Fans, gather-scatter and bipartite alert on bursts, near-equal amounts, pass-through or a
    # dense block, which one small, dense history can occasionally hide (measured over 140
    # seeds: one simulation in ~20 drops a fan or a gather-scatter below 60%, one in ~150 misses
    # a bipartite edge). So these are judged over a pool of simulations, not one: pooled recall
    # over 140 seeds was fan-out 0.97, fan-in 0.99, gather-scatter 0.93, bipartite 1.00.
    found: dict[str, int] = dict.fromkeys(DETECTABLE, 0)
    total: dict[str, int] = dict.fromkeys(DETECTABLE, 0)
    for seed in range(1_000, 1_008):
        sim = simulate(SimulationConfig(transactions=3_000, seed=seed, laundering_share=0.08))
        detection, _ = detect_all(sim.transactions.frame)
        for typology in DETECTABLE:
            rows = [r for a in sim.attempts if a.typology == typology for r in a.rows]
            own = set(detection.hits.filter(pl.col("typology") == typology)["row"].to_list())
            found[typology] += sum(r in own for r in rows)
            total[typology] += len(rows)
    recall = {t: found[t] / total[t] for t in DETECTABLE}
    assert all(recall[t] == 1.0 for t in STRUCTURAL), recall
    assert recall["bipartite"] >= 0.95, recall
    assert recall["fan_out"] >= 0.85 and recall["fan_in"] >= 0.85, recall
    assert recall["gather_scatter"] >= 0.75, recall


def valued(edges: list[tuple[int, int, int, int]]) -> pl.DataFrame:
    """(src, dst, minutes after T0, US cents) -> the detectors' input with amounts."""
    base = frame([(s, d, m) for s, d, m, _ in edges])
    return base.with_columns(
        amount_minor=pl.Series([a for *_, a in edges], dtype=pl.Int64),
        currency=pl.lit("USD"),
    )


def test_steady_busy_payee_is_no_fan_but_a_burst_is() -> None:
    config = DetectorConfig()
    day = 60 * 24
    # A shop: six new customers every four days for 24 days, amounts all over the place.
    shop = [(100 + i, 1, (i // 6) * 4 * day + i, 1_000 * (1 + (i * 37) % 90)) for i in range(36)]
    hits = detect_fan(valued(shop), config, direction="in")
    assert hits.height == 0
    # An individual paid by one friend who, within one day, is paid by six strangers.
    quiet = [(50, 2, 0, 2_000)]
    burst = [(200 + i, 2, 20 * day + i * 60, 1_000 * (1 + (i * 37) % 90)) for i in range(6)]
    hits = detect_fan(valued(quiet + burst), config, direction="in")
    assert sorted(hits["row"].to_list()) == list(range(1, 7))


def test_near_equal_amounts_make_a_fan_out_of_a_busy_payer() -> None:
    config = DetectorConfig()
    day = 60 * 24
    # A payer with steady traffic (no burst) whose four payouts in one window are near-equal.
    steady = [(1, 300 + i, i * day, 500 + 900 * (i % 7)) for i in range(24)]
    fan = [(1, 10 + i, 30 * day + i, 100_000 + 3_000 * i) for i in range(4)]
    hits = detect_fan(valued(steady + fan), config, direction="out")
    assert set(range(24, 28)) <= set(hits["row"].to_list())
    spread = [(1, 10 + i, 30 * day + i, 100_000 * 4**i) for i in range(4)]
    hits = detect_fan(valued(steady + spread), config, direction="out")
    assert not set(range(24, 28)) & set(hits["row"].to_list())


def test_pass_through_chain_is_a_stack_layer_only_when_little_is_retained() -> None:
    # a -> b, then b pays on 90% a day later: a two-hop layer (IBM's STACK rows look so).
    kept = valued([(1, 2, 0, 100_000), (2, 3, 60 * 24, 90_000)])
    detection, _ = detect_all(kept)
    stack = detection.hits.filter(pl.col("typology") == "stack")
    assert sorted(stack["row"].to_list()) == [0, 1]
    signals = detection.signals.filter(pl.col("row") == 0)
    assert signals["next_out_hours"].to_list() == [24.0]
    assert abs(signals["next_out_ratio"][0] - 0.9) < 1e-6
    # Pays on only half: not a pass-through; a week later: outside the window.
    for edges in ([(1, 2, 0, 100_000), (2, 3, 60, 50_000)],
                  [(1, 2, 0, 100_000), (2, 3, 60 * 24 * 7, 100_000)]):  # fmt: skip
        detection, _ = detect_all(valued(edges))
        assert detection.hits.filter(pl.col("typology") == "stack").height == 0
