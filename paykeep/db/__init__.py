"""Storage: one SQLAlchemy engine per process, migrations, and the unit of work."""

from paykeep.db.engine import Database, open_database

__all__ = ["Database", "open_database"]
