"""Storage: one SQLAlchemy engine per process, migrations, and the unit of work."""

from paykeep.db.engine import Database, field_cipher, open_database

__all__ = ["Database", "field_cipher", "open_database"]
