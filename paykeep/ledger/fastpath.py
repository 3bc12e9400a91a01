"""The compiled core of the plain-transfer hot path, when it is built; else nothing.

``paykeep/ledger/_fastpath.c`` (an optional C extension, built by ``pip install -e .`` where a
C compiler, the Python headers and OpenSSL's headers exist) decides a batch whose items are
ALL plain transfers — flags 0, no pending id, timeout, reference or metadata — and would ALL
be decided ``ok``: it applies them to the working balances, seals the journal rows into the
hash chain (SHA-256 from OpenSSL) and returns what the writer needs. For any other batch it
returns None having changed nothing, and ``model.plan_transfers`` and ``model.seal`` decide
it, exactly as they do when the extension is absent. The pure-Python engine is the
reference: ``tests/ledger/test_compiled_core.py`` checks both give identical results, rows,
hashes, balances and head.

``PAYKEEP_LEDGER_PURE=1`` in the environment (read at import) forces the pure path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

from paykeep import limits
from paykeep.ledger.model import (
    AccountFlags,
    Balances,
    CreateTransferResult,
    JournalHead,
    JournalRow,
    LedgerInvariantBroken,
    NewTransfer,
    SealedBatch,
    Transfer,
    TransferResult,
)
from paykeep.money import is_currency

_core: ModuleType | None
try:
    from paykeep.ledger import _fastpath as _core
except ImportError:  # not built here (no compiler or headers): the pure path runs
    _core = None

if _core is not None:
    _core.configure(
        NewTransfer,
        Balances,
        TransferResult,
        CreateTransferResult.OK,
        is_currency,
        LedgerInvariantBroken,
    )

#: What the extension's ``plan_plain`` returns (see ``_fastpath.pyi``).
_core_result = (
    tuple[list[Any], list[list[object]], list[Any], list[int], list[Any], int, int, str]
    | list[int]
    | None
)

#: The extension is importable.
AVAILABLE: Final = _core is not None
#: The service uses it: available and not switched off by ``PAYKEEP_LEDGER_PURE=1``.
ENABLED: bool = AVAILABLE and os.environ.get("PAYKEEP_LEDGER_PURE", "") != "1"
#: Journal rows per SQLite multi-row INSERT of plain rows (``repository._PLAIN_GROUP`` checks
#: it): 110 x 9 variable columns = 990 variables, within the 999 of SQLite before 3.32.
INSERT_GROUP_ROWS: Final = 110
#: The fields of a journal row (``model.JournalRow``) a plain row varies in, in row order:
#: seq, id, debit, credit, amount, currency, code, timestamp, hash. The others (flags,
#: pending id, timeout, expiry, reference, metadata) are the same in every plain row.
PLAIN_COLUMNS: Final = (0, 1, 2, 3, 4, 5, 6, 13, 14)

_DMNEC: Final = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CMNED: Final = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)


def engine_core() -> str:
    """``"compiled"`` or ``"pure-python"``: which engine decides plain batches here."""
    return "compiled" if ENABLED else "pure-python"


@dataclass(frozen=True, slots=True)
class PlainBatch:
    """An all-plain batch, decided ``ok``, applied to the working balances and sealed."""

    sealed: SealedBatch
    #: ``sealed.rows`` in whole groups of ``group_rows``, each flattened to the row's
    #: ``PLAIN_COLUMNS`` (SQLite's multi-row INSERTs; the remainder goes row by row).
    insert_groups: list[list[object]]
    group_rows: int
    #: (debits_pending, debits_posted, credits_pending, credits_posted, id) per account.
    balance_rows: list[tuple[int, int, int, int, int]]
    touched_ids: list[int]
    results: list[TransferResult]


def plan_plain(
    batch: Sequence[NewTransfer],
    accounts: Mapping[int, Balances],
    stored: Mapping[int, Transfer],
    head: JournalHead,
    now_ns: int,
    *,
    load: Callable[[set[int]], Mapping[int, Balances]] | None = None,
) -> PlainBatch | None:
    """The compiled decision of ``batch``, or None (nothing changed): not built, or some
    item is not plain or would not be ``ok`` — the pure path then decides the batch.

    ``accounts``: the working balances (mutated when the batch is applied). When every item
    is plain but names accounts not in it, ``load(ids)`` is asked for them once and returns
    the mapping to use (``WriteTx.lock_accounts``); without ``load``, or if some are still
    absent (unknown accounts), the answer is None.

    Raises ``LedgerInvariantBroken`` if the applied batch broke double entry (checked from
    the balances as stored, against sums taken before), like the pure path.
    """
    if _core is None:
        return None
    out = _call(batch, accounts, stored, head, now_ns)
    if type(out) is list:
        if load is None:
            return None
        out = _call(batch, load(set(out)), stored, head, now_ns)
    if not isinstance(out, tuple):
        return None
    rows, groups, balance_rows, touched_ids, results, seq, ts, digest = out
    rows_typed: list[JournalRow] = rows
    return PlainBatch(
        SealedBatch(rows_typed, JournalHead(seq, ts, digest), []),
        groups,
        INSERT_GROUP_ROWS,
        balance_rows,
        touched_ids,
        results,
    )


def _call(
    batch: Sequence[NewTransfer],
    accounts: Mapping[int, Balances],
    stored: Mapping[int, Transfer],
    head: JournalHead,
    now_ns: int,
) -> _core_result:
    assert _core is not None
    out: _core_result = _core.plan_plain(
        batch, accounts, stored, head.last_seq, head.last_timestamp_ns, head.last_hash,
        now_ns, limits.ID_MAX, limits.AMOUNT_MAX_MINOR, limits.CODE_MAX,
        limits.BALANCE_MAX_MINOR, _DMNEC, _CMNED, INSERT_GROUP_ROWS,
    )  # fmt: skip
    return out


def counters() -> tuple[int, int]:
    """(batches the compiled core applied, batches it declined) in this process."""
    return (0, 0) if _core is None else _core.counters()
