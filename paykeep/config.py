"""Where Paykeep keeps its state: the data directory and the database URL."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

DATA_DIR_ENV = "PAYKEEP_DATA_DIR"
DATABASE_URL_ENV = "PAYKEEP_DATABASE_URL"
SQLITE_FILE_NAME = "paykeep.sqlite3"


def default_data_dir() -> Path:
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return Path(platformdirs.user_data_dir("paykeep", appauthor=False))


@dataclass(frozen=True, slots=True)
class Settings:
    """Resolved location of state. ``database_url`` None means the embedded SQLite file."""

    data_dir: Path
    database_url: str | None = None

    @classmethod
    def resolve(cls, data_dir: Path | None, database_url: str | None) -> Settings:
        url = database_url or os.environ.get(DATABASE_URL_ENV) or None
        return cls(data_dir=(data_dir or default_data_dir()).expanduser(), database_url=url)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / SQLITE_FILE_NAME}"
