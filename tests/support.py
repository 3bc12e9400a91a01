"""Helpers shared by tests of several contexts."""

from __future__ import annotations

import subprocess
import sys

from paykeep.config import Settings


def paykeep(*args: str, settings: Settings | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``paykeep ARGS`` as a real subprocess, against ``settings``' data dir / database."""
    extra: list[str] = []
    if settings is not None:
        extra = ["--data-dir", str(settings.data_dir)]
        if settings.database_url:
            extra += ["--database-url", settings.database_url]
    return subprocess.run(
        [sys.executable, "-m", "paykeep.cli", *args, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
