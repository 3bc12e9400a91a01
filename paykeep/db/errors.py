from __future__ import annotations

from paykeep.errors import InvalidInput, PaykeepError


class DatabaseUrlInvalid(InvalidInput):
    code = "database_url_invalid"


class DatabaseUnavailable(PaykeepError):
    code = "database_unavailable"
    type = "api_error"


class SchemaOutOfDate(PaykeepError):
    code = "schema_out_of_date"
    type = "api_error"
