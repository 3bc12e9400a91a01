from __future__ import annotations

from paykeep.errors import InvalidInput, PaykeepError


class DatabaseUrlInvalid(InvalidInput):
    code = "database_url_invalid"


class DatabaseUnavailable(PaykeepError):
    """The database is busy or unreachable: the request may be retried (503, Retry-After)."""

    code = "database_unavailable"
    type = "unavailable"


class SchemaOutOfDate(PaykeepError):
    code = "schema_out_of_date"
    type = "api_error"


class MigrationNeedsFieldKeys(PaykeepError):
    """A migration must seal (or open) personal data already stored, and was given no field
    cipher: it refuses before changing anything rather than drop or keep the values in clear."""

    code = "migration_needs_field_keys"
    type = "api_error"
