"""Typed errors of the ledger.

Batch calls report per-item result codes as values (``CreateTransferResult``); single-item calls
raise the matching :class:`TransferRejected` subclass, whose ``code`` is that result's value.
"""

from __future__ import annotations

from typing import ClassVar

from paykeep.errors import Conflict, InvalidInput, NotFound, PaykeepError
from paykeep.ledger.model import CreateAccountResult, CreateTransferResult


class BatchTooLarge(InvalidInput):
    code = "batch_too_large"


class InvalidCursor(InvalidInput):
    code = "invalid_cursor"


class AccountNotFound(NotFound):
    code = "account_not_found"


class TransferNotFound(NotFound):
    code = "transfer_not_found"


class LedgerBusy(PaykeepError):
    """The group-commit queue is full or a request waited too long: retry with the same id."""

    code = "ledger_busy"
    type = "rate_limit"


class LedgerConflict(Conflict):
    """A unique constraint refused a write even after the engine's own checks (a race the
    retry could not resolve). Nothing was written; the same request may be retried."""

    code = "ledger_conflict"


class TransferRejected(PaykeepError):
    """Family of single-transfer rejections; ``result`` is the engine's result code."""

    result: ClassVar[CreateTransferResult]


class AccountRejected(PaykeepError):
    result: ClassVar[CreateAccountResult]


_SHAPE_END = CreateTransferResult.METADATA_INVALID
_IDEMPOTENCY_END = CreateTransferResult.EXISTS
_REFERENCES_END = CreateTransferResult.PENDING_TRANSFER_NOT_FOUND
_ORDER = list(CreateTransferResult)


def _transfer_error_type(result: CreateTransferResult) -> str:
    position = _ORDER.index(result)
    if result in (
        CreateTransferResult.EXCEEDS_CREDITS,
        CreateTransferResult.EXCEEDS_DEBITS,
    ):
        return "insufficient_funds"
    if position <= _ORDER.index(_SHAPE_END):
        return "invalid_request"
    if position <= _ORDER.index(_IDEMPOTENCY_END):
        return "conflict"
    if result is CreateTransferResult.REFERENCE_ALREADY_USED:
        return "conflict"
    if position <= _ORDER.index(_REFERENCES_END):
        return "not_found"
    return "unprocessable"


def _class_name(value: str, suffix: str) -> str:
    return "".join(part.capitalize() for part in value.split("_")) + suffix


TRANSFER_ERRORS: dict[CreateTransferResult, type[TransferRejected]] = {
    result: type(
        _class_name(result.value, "Error"),
        (TransferRejected,),
        {"code": result.value, "type": _transfer_error_type(result), "result": result},
    )
    for result in CreateTransferResult
    if result is not CreateTransferResult.OK and result is not CreateTransferResult.EXISTS
}

ACCOUNT_ERRORS: dict[CreateAccountResult, type[AccountRejected]] = {
    result: type(
        _class_name(result.value, "AccountError"),
        (AccountRejected,),
        {
            "code": f"account_{result.value}",
            "type": "conflict"
            if result.value.startswith(("exists", "name_already"))
            else "invalid_request",
            "result": result,
        },
    )
    for result in CreateAccountResult
    if result is not CreateAccountResult.OK and result is not CreateAccountResult.EXISTS
}


def transfer_error(result: CreateTransferResult, transfer_id: object) -> TransferRejected:
    return TRANSFER_ERRORS[result](f"transfer {transfer_id}: {result.value.replace('_', ' ')}")


def account_error(result: CreateAccountResult, account_id: object) -> AccountRejected:
    return ACCOUNT_ERRORS[result](f"account {account_id}: {result.value.replace('_', ' ')}")
