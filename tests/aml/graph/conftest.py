from __future__ import annotations

from pathlib import Path

import pytest

from paykeep.aml.graph.simulate import Simulation, SimulationConfig, simulate

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "aml"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def small_sim() -> Simulation:
    # 6,000 transactions with a high laundering share: every typology appears several times.
    return simulate(SimulationConfig(transactions=6_000, seed=5, laundering_share=0.08))
