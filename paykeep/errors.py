"""The root of Paykeep's closed error taxonomy.

Every error a caller can see is a subclass of :class:`PaykeepError` with one stable ``code``.
Codes are registered at class-creation time, so two classes can never share a code and a
test can enumerate them all (for instance to check that each one maps to an HTTP status).
"""

from __future__ import annotations

from typing import ClassVar

_REGISTRY: dict[str, type[PaykeepError]] = {}


class PaykeepError(Exception):
    """Base of every typed error. ``code`` is stable forever; ``message`` is for people."""

    code: ClassVar[str] = "paykeep_error"
    #: The broad family, used by the API's error shape (``invalid_request``, ``conflict``...).
    type: ClassVar[str] = "api_error"
    #: A race lost to another writer, not a fault of the input or the item: the same call may
    #: well succeed a moment later (a worker pass just tries the item again next time).
    transient: ClassVar[bool] = False

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # Abstract family classes leave ``code`` inherited; only concrete codes register.
        if "code" in cls.__dict__:
            existing = _REGISTRY.get(cls.code)
            if existing is not None and existing is not cls:
                raise TypeError(f"error code {cls.code!r} already used by {existing.__name__}")
            _REGISTRY[cls.code] = cls

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidInput(PaykeepError):
    """Input that is malformed or violates a documented bound."""

    code = "invalid_input"
    type = "invalid_request"


class NotFound(PaykeepError):
    code = "not_found"
    type = "not_found"


class ResourceMissing(NotFound):
    """No such object — or another merchant's: the two answers are identical on purpose, so
    ids of other merchants' objects cannot even be probed. Shared by every context."""

    code = "resource_missing"

    @classmethod
    def of(cls, what: str, object_id: str) -> ResourceMissing:
        return cls(f"no such {what}: {object_id!r}", param="id")


class Conflict(PaykeepError):
    code = "conflict"
    type = "conflict"


def registered_errors() -> dict[str, type[PaykeepError]]:
    """Every concrete error code and its class (a copy)."""
    return dict(_REGISTRY)
