"""Fixtures for the ledger tests (the shared ones live in ``tests/conftest.py``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    """``tests/conftest.py`` names templates by xdist's ``worker_id``; with ``-p no:xdist`` that
    fixture does not exist, so provide the same value xdist would."""
    workerinput = getattr(request.config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else "master"
