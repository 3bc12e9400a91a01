"""Typed errors of the security context."""

from __future__ import annotations

from paykeep.errors import PaykeepError


class FieldDecryptionFailed(PaykeepError):
    """A sealed field did not authenticate: changed, moved to another row or another field."""

    code = "field_integrity_error"
    type = "api_error"
