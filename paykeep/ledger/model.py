"""The pure core of the ledger: records, result codes and the batch engine.

No I/O, no clock, no SQL. The engine is handed everything it may read (account balances,
already-stored transfers it needs, which holds are resolved) and the time, and returns what
to write. That is what lets the same code run on SQLite and PostgreSQL, and what lets a
Hypothesis state machine check it against an independent reference model.

Semantics follow TigerBeetle's accounts and transfers:

- a transfer moves ``amount_minor`` from ``debit_account_id`` to ``credit_account_id``, both in
  the transfer's currency;
- ``PENDING`` reserves the amount (``debits_pending`` / ``credits_pending``) until a later
  transfer with ``POST_PENDING`` posts all or part of it (the rest is released) or one with
  ``VOID_PENDING`` releases it; a hold is resolved exactly once, and a hold with a timeout
  expires (the sweep writes the void, flagged ``EXPIRY``);
- ``LINKED`` chains a transfer to the next one in the batch: the chain succeeds or fails as one.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import IntFlag, StrEnum
from itertools import count
from typing import Any, Final

from paykeep import limits
from paykeep.money import is_currency

# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------


class AccountFlags(IntFlag):
    NONE = 0
    #: debits_pending + debits_posted <= credits_posted (a customer liability cannot go negative).
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 1
    #: credits_pending + credits_posted <= debits_posted (an asset we cannot owe).
    CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 2


class TransferFlags(IntFlag):
    NONE = 0
    LINKED = 1 << 0
    PENDING = 1 << 1
    POST_PENDING = 1 << 2
    VOID_PENDING = 1 << 3
    #: Set only by the ledger on the void its expiry sweep writes; clients may not use it.
    EXPIRY = 1 << 4


_DMNEC: Final = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CMNED: Final = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
ACCOUNT_FLAGS_ALLOWED: Final = _DMNEC | _CMNED

_LINKED: Final = int(TransferFlags.LINKED)
_PENDING: Final = int(TransferFlags.PENDING)
_POST: Final = int(TransferFlags.POST_PENDING)
_VOID: Final = int(TransferFlags.VOID_PENDING)
_EXPIRY: Final = int(TransferFlags.EXPIRY)
_RESOLVING: Final = _POST | _VOID
TRANSFER_FLAGS_CLIENT: Final = _LINKED | _PENDING | _POST | _VOID

# ---------------------------------------------------------------------------------------------
# Result codes: a closed set. The declaration order IS the check order (shape, idempotency,
# references, state, limits); ``tests/ledger/test_result_precedence.py`` pins it.
# ---------------------------------------------------------------------------------------------


class CreateTransferResult(StrEnum):
    OK = "ok"
    LINKED_EVENT_FAILED = "linked_event_failed"
    LINKED_EVENT_CHAIN_OPEN = "linked_event_chain_open"
    # -- shape ------------------------------------------------------------------------------
    ID_INVALID = "id_invalid"
    RESERVED_FLAG = "reserved_flag"
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = "flags_are_mutually_exclusive"
    DEBIT_ACCOUNT_ID_INVALID = "debit_account_id_invalid"
    CREDIT_ACCOUNT_ID_INVALID = "credit_account_id_invalid"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    AMOUNT_INVALID = "amount_invalid"
    AMOUNT_MUST_BE_POSITIVE = "amount_must_be_positive"
    AMOUNT_EXCEEDS_MAXIMUM = "amount_exceeds_maximum"
    CURRENCY_INVALID = "currency_invalid"
    CODE_INVALID = "code_invalid"
    PENDING_ID_MUST_BE_ZERO = "pending_id_must_be_zero"
    PENDING_ID_INVALID = "pending_id_invalid"
    PENDING_ID_MUST_BE_DIFFERENT = "pending_id_must_be_different"
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = "timeout_reserved_for_pending_transfer"
    TIMEOUT_INVALID = "timeout_invalid"
    REFERENCE_INVALID = "reference_invalid"
    METADATA_INVALID = "metadata_invalid"
    # -- idempotency ------------------------------------------------------------------------
    EXISTS_WITH_DIFFERENT_FLAGS = "exists_with_different_flags"
    EXISTS_WITH_DIFFERENT_PENDING_ID = "exists_with_different_pending_id"
    EXISTS_WITH_DIFFERENT_TIMEOUT = "exists_with_different_timeout"
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = "exists_with_different_debit_account_id"
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = "exists_with_different_credit_account_id"
    EXISTS_WITH_DIFFERENT_AMOUNT = "exists_with_different_amount"
    EXISTS_WITH_DIFFERENT_CURRENCY = "exists_with_different_currency"
    EXISTS_WITH_DIFFERENT_CODE = "exists_with_different_code"
    EXISTS_WITH_DIFFERENT_REFERENCE = "exists_with_different_reference"
    EXISTS_WITH_DIFFERENT_METADATA = "exists_with_different_metadata"
    EXISTS = "exists"
    # -- references -------------------------------------------------------------------------
    REFERENCE_ALREADY_USED = "reference_already_used"
    DEBIT_ACCOUNT_NOT_FOUND = "debit_account_not_found"
    CREDIT_ACCOUNT_NOT_FOUND = "credit_account_not_found"
    PENDING_TRANSFER_NOT_FOUND = "pending_transfer_not_found"
    # -- state ------------------------------------------------------------------------------
    ACCOUNTS_MUST_HAVE_THE_SAME_CURRENCY = "accounts_must_have_the_same_currency"
    TRANSFER_MUST_HAVE_THE_SAME_CURRENCY_AS_ACCOUNTS = (
        "transfer_must_have_the_same_currency_as_accounts"
    )
    PENDING_TRANSFER_NOT_PENDING = "pending_transfer_not_pending"
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = (
        "pending_transfer_has_different_debit_account_id"
    )
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = (
        "pending_transfer_has_different_credit_account_id"
    )
    PENDING_TRANSFER_HAS_DIFFERENT_CURRENCY = "pending_transfer_has_different_currency"
    PENDING_TRANSFER_HAS_DIFFERENT_CODE = "pending_transfer_has_different_code"
    EXCEEDS_PENDING_TRANSFER_AMOUNT = "exceeds_pending_transfer_amount"
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = "pending_transfer_has_different_amount"
    PENDING_TRANSFER_ALREADY_POSTED = "pending_transfer_already_posted"
    PENDING_TRANSFER_ALREADY_VOIDED = "pending_transfer_already_voided"
    PENDING_TRANSFER_EXPIRED = "pending_transfer_expired"
    #: Only the expiry sweep can ask for this: its void names a hold whose journal row has no
    #: timeout, or one not yet due. The sweep trusts the journal, never the ``ledger_holds``
    #: index alone (a tampered index must not void a live hold).
    PENDING_TRANSFER_NOT_EXPIRED = "pending_transfer_not_expired"
    # -- limits -----------------------------------------------------------------------------
    OVERFLOWS_DEBITS_PENDING = "overflows_debits_pending"
    OVERFLOWS_CREDITS_PENDING = "overflows_credits_pending"
    OVERFLOWS_DEBITS_POSTED = "overflows_debits_posted"
    OVERFLOWS_CREDITS_POSTED = "overflows_credits_posted"
    OVERFLOWS_DEBITS = "overflows_debits"
    OVERFLOWS_CREDITS = "overflows_credits"
    EXCEEDS_CREDITS = "exceeds_credits"
    EXCEEDS_DEBITS = "exceeds_debits"


class CreateAccountResult(StrEnum):
    OK = "ok"
    # -- shape ------------------------------------------------------------------------------
    ID_INVALID = "id_invalid"
    RESERVED_FLAG = "reserved_flag"
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = "flags_are_mutually_exclusive"
    CURRENCY_INVALID = "currency_invalid"
    CODE_INVALID = "code_invalid"
    NAME_INVALID = "name_invalid"
    METADATA_INVALID = "metadata_invalid"
    # -- idempotency ------------------------------------------------------------------------
    EXISTS_WITH_DIFFERENT_FLAGS = "exists_with_different_flags"
    EXISTS_WITH_DIFFERENT_CURRENCY = "exists_with_different_currency"
    EXISTS_WITH_DIFFERENT_CODE = "exists_with_different_code"
    EXISTS_WITH_DIFFERENT_NAME = "exists_with_different_name"
    EXISTS_WITH_DIFFERENT_METADATA = "exists_with_different_metadata"
    EXISTS = "exists"
    # -- references -------------------------------------------------------------------------
    NAME_ALREADY_USED = "name_already_used"


TRANSFER_RESULT_ORDER: Final = {code: i for i, code in enumerate(CreateTransferResult)}

# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------

Metadata = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class NewAccount:
    id: int
    currency: str
    code: int
    flags: int = 0
    #: Optional unique chart-of-accounts key, e.g. ``merchant:42:available``.
    name: str | None = None
    metadata: Metadata | None = None


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    currency: str
    code: int
    flags: int
    name: str | None
    metadata: Metadata | None
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    timestamp_ns: int

    @property
    def balance_posted(self) -> int:
        """credits_posted - debits_posted: what a liability account owes its holder."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """Posted credit balance less pending debits (what may still be spent)."""
        return self.credits_posted - self.debits_posted - self.debits_pending


@dataclass(frozen=True, slots=True)
class NewTransfer:
    """A transfer as a client asks for it.

    For ``POST_PENDING`` / ``VOID_PENDING``, ``debit_account_id``, ``credit_account_id``,
    ``currency`` and ``code`` may be left ``None`` to take the pending transfer's; a post with
    ``amount_minor=None`` posts the whole pending amount.
    """

    id: int
    debit_account_id: int | None = None
    credit_account_id: int | None = None
    amount_minor: int | None = None
    currency: str | None = None
    code: int | None = None
    flags: int = 0
    pending_id: int | None = None
    timeout_s: int = 0
    reference: str | None = None
    metadata: Metadata | None = None


@dataclass(frozen=True, slots=True)
class Transfer:
    """A stored, immutable journal row."""

    id: int
    debit_account_id: int
    credit_account_id: int
    amount_minor: int
    currency: str
    code: int
    flags: int
    pending_id: int  # 0: none
    timeout_s: int
    expires_at_ns: int  # 0: never
    reference: str | None
    metadata_json: str | None
    timestamp_ns: int
    seq: int
    hash: str

    @property
    def metadata(self) -> Metadata | None:
        return None if self.metadata_json is None else json.loads(self.metadata_json)


@dataclass(frozen=True, slots=True)
class TransferResult:
    index: int
    id: object
    result: CreateTransferResult
    timestamp_ns: int = 0

    @property
    def ok(self) -> bool:
        return self.result is CreateTransferResult.OK

    @property
    def applied_or_exists(self) -> bool:
        return self.result is CreateTransferResult.OK or self.result is CreateTransferResult.EXISTS


#: Slot setters of ``TransferResult``, in field order, for ``transfer_results``.
_TRANSFER_RESULT_SETTERS: Final[tuple[Any, ...]] = tuple(
    getattr(TransferResult, f.name).__set__ for f in fields(TransferResult)
)
assert [f.name for f in fields(TransferResult)] == ["index", "id", "result", "timestamp_ns"]


def transfer_results(
    ids: Iterable[object], codes: Sequence[CreateTransferResult], stamps: Iterable[int]
) -> list[TransferResult]:
    """``TransferResult(i, ids[i], codes[i], stamps[i])`` for every i.

    A batch builds one result per transfer; a frozen dataclass's ``__init__`` sets each field
    through ``object.__setattr__``, so the objects are built here by setting their slots
    directly: the same objects (equal, immutable) at half the cost. ``tests/ledger`` checks
    they equal the ones the constructor builds.
    """
    new = object.__new__
    cls = TransferResult
    set_index, set_id, set_result, set_ts = _TRANSFER_RESULT_SETTERS
    out: list[TransferResult] = []
    append = out.append
    for i, tid, code, stamp in zip(count(), ids, codes, stamps):
        result = new(cls)
        set_index(result, i)
        set_id(result, tid)
        set_result(result, code)
        set_ts(result, stamp)
        append(result)
    if len(out) != len(codes):
        raise ValueError("transfer_results: ids, codes and stamps must have the same length")
    return out


@dataclass(frozen=True, slots=True)
class AccountResult:
    index: int
    id: object
    result: CreateAccountResult


@dataclass(slots=True)
class Balances:
    """Mutable working copy of an account's balances during one batch."""

    currency: str
    flags: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int


@dataclass(frozen=True, slots=True)
class JournalHead:
    last_seq: int
    last_timestamp_ns: int
    last_hash: str


GENESIS_HASH: Final = "0" * 64

# ---------------------------------------------------------------------------------------------
# Canonical encoding and the hash chain
# ---------------------------------------------------------------------------------------------


def canonical_metadata(metadata: Metadata | None) -> str | None:
    """Metadata as canonical JSON text (sorted keys, no spaces), or None when empty."""
    if not metadata:
        return None
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


#: The fixed-width part of a journal row's encoding, big-endian, in column order: seq, id,
#: debit, credit, amount, code, flags, pending id, timeout, expiry, timestamp. Every value is
#: non-negative and within its width by the engine's own checks; a tampered row that is not
#: cannot be encoded and is reported as not matching its hash.
_ROW_FIXED: Final = struct.Struct(">QQQQQHIQIQQ")
_NO_TEXT: Final = b"\x00\x00\x00\x00"


def _plain_row_packer(currency: str) -> tuple[Callable[..., bytes], bytes]:
    """``(pack, tail)``: ``pack(prev_digest, *fixed, tail)`` gives the bytes ``row_digest``
    hashes for a row with this currency and neither reference nor metadata — the previous
    32-byte digest, the ``_ROW_FIXED`` integers, then the constant text part ``tail``. One
    call on the hot path (``seal``) instead of a pack and three concatenations."""
    tail = _text_bytes(currency) + _NO_TEXT + _NO_TEXT
    layout = struct.Struct(f">32s{_ROW_FIXED.format.lstrip('>')}{len(tail)}s")
    return layout.pack, tail


def _text_bytes(value: str | None) -> bytes:
    """A string, length-prefixed (4 bytes, big-endian) so no text can run into the next."""
    if not value:
        return _NO_TEXT
    data = value.encode()
    return len(data).to_bytes(4, "big") + data


def row_digest(
    prev_hash: str,
    seq: int,
    transfer_id: int,
    debit_account_id: int,
    credit_account_id: int,
    amount_minor: int,
    currency: str,
    code: int,
    flags: int,
    pending_id: int,
    timeout_s: int,
    expires_at_ns: int,
    reference: str | None,
    metadata_json: str | None,
    timestamp_ns: int,
) -> str:
    """SHA-256 over the previous row's digest and every field of the row, unambiguously
    encoded: fixed-width integers, then currency, reference and metadata length-prefixed.

    Raises ``ValueError`` for a row no engine could have written (a negative or oversized
    number, text that is not encodable): such a row cannot match any hash.
    """
    try:
        fixed = _ROW_FIXED.pack(
            seq, transfer_id, debit_account_id, credit_account_id, amount_minor, code, flags,
            pending_id, timeout_s, expires_at_ns, timestamp_ns,
        )  # fmt: skip
        text = _text_bytes(currency) + _text_bytes(reference) + _text_bytes(metadata_json)
    except (struct.error, UnicodeEncodeError, TypeError) as exc:
        raise ValueError(f"journal row seq {seq!r} cannot be encoded: {exc}") from None
    return hashlib.sha256(bytes.fromhex(prev_hash) + fixed + text).hexdigest()


def transfer_digest(prev_hash: str, t: Transfer) -> str:
    return row_digest(
        prev_hash,
        t.seq,
        t.id,
        t.debit_account_id,
        t.credit_account_id,
        t.amount_minor,
        t.currency,
        t.code,
        t.flags,
        t.pending_id,
        t.timeout_s,
        t.expires_at_ns,
        t.reference,
        t.metadata_json,
        t.timestamp_ns,
    )


# ---------------------------------------------------------------------------------------------
# Shape validation helpers
# ---------------------------------------------------------------------------------------------


def _is_id(value: object) -> bool:
    return type(value) is int and 0 < value <= limits.ID_MAX


def _metadata_ok(metadata: object) -> str | bool | None:
    """Canonical JSON for valid metadata, None for empty, False when invalid."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping) or len(metadata) > limits.METADATA_KEYS_MAX:
        return False
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or len(key) > 64:
            return False
        # Scalars only: metadata is a label, not a document store. Floats are banned so no
        # amount can hide in metadata as a float.
        if value is not None and type(value) not in (str, int, bool):
            return False
    try:
        text = canonical_metadata(metadata)
        size = 0 if text is None else len(text.encode())
    except (TypeError, ValueError):  # UnicodeEncodeError (lone surrogates) is a ValueError
        return False
    if size > limits.METADATA_BYTES_MAX:
        return False
    return text


def reference_ok(reference: object) -> bool:
    return reference is None or (
        isinstance(reference, str)
        and 0 < len(reference) <= limits.REFERENCE_LENGTH_MAX
        and reference.isprintable()
    )


def name_ok(name: object) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name) <= limits.ACCOUNT_NAME_LENGTH_MAX
        and name.isprintable()
    )


def _code_ok(code: object) -> bool:
    return type(code) is int and 0 < code <= limits.CODE_MAX


# ---------------------------------------------------------------------------------------------
# Accounts
# ---------------------------------------------------------------------------------------------


def validate_new_account(
    new: NewAccount,
    existing: Account | None,
    name_owner: int | None,
) -> tuple[CreateAccountResult, str | None]:
    """Result code for one account and its canonical metadata. ``name_owner`` is the id of
    the account already holding ``new.name``, if any."""
    r = CreateAccountResult
    if not _is_id(new.id):
        return r.ID_INVALID, None
    if type(new.flags) is not int and not isinstance(new.flags, int):
        return r.RESERVED_FLAG, None
    flags = int(new.flags)
    if flags & ~ACCOUNT_FLAGS_ALLOWED:
        return r.RESERVED_FLAG, None
    if flags & _DMNEC and flags & _CMNED:
        return r.FLAGS_ARE_MUTUALLY_EXCLUSIVE, None
    if not is_currency(new.currency):
        return r.CURRENCY_INVALID, None
    if not _code_ok(new.code):
        return r.CODE_INVALID, None
    if new.name is not None and not name_ok(new.name):
        return r.NAME_INVALID, None
    meta = _metadata_ok(new.metadata)
    if meta is False:
        return r.METADATA_INVALID, None
    meta_text = meta if isinstance(meta, str) else None
    if existing is not None:
        if existing.flags != flags:
            return r.EXISTS_WITH_DIFFERENT_FLAGS, meta_text
        if existing.currency != new.currency:
            return r.EXISTS_WITH_DIFFERENT_CURRENCY, meta_text
        if existing.code != new.code:
            return r.EXISTS_WITH_DIFFERENT_CODE, meta_text
        if existing.name != new.name:
            return r.EXISTS_WITH_DIFFERENT_NAME, meta_text
        if canonical_metadata(existing.metadata) != meta_text:
            return r.EXISTS_WITH_DIFFERENT_METADATA, meta_text
        return r.EXISTS, meta_text
    if name_owner is not None and name_owner != new.id:
        return r.NAME_ALREADY_USED, meta_text
    return r.OK, meta_text


# ---------------------------------------------------------------------------------------------
# Transfers: the batch engine
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PlannedTransfer:
    """A transfer the batch will write; seq, timestamp and hash are assigned by ``seal``."""

    index: int
    id: int
    debit_account_id: int
    credit_account_id: int
    amount_minor: int
    currency: str
    code: int
    flags: int
    pending_id: int
    timeout_s: int
    reference: str | None
    metadata_json: str | None
    #: For a post/void: the pending amount it releases (to undo and to audit).
    released_minor: int = 0


@dataclass(slots=True)
class BatchPlan:
    results: list[CreateTransferResult]
    planned: list[PlannedTransfer] = field(default_factory=list)
    #: Every account whose balances changed (they are the ``Balances`` objects passed in).
    touched: set[int] = field(default_factory=set)
    #: Holds opened (pending transfer ids) and resolved (pending ids) by this batch.
    holds_opened: list[int] = field(default_factory=list)
    holds_resolved: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StoredPending:
    """What the engine needs of a stored pending transfer."""

    id: int
    debit_account_id: int
    credit_account_id: int
    amount_minor: int
    currency: str
    code: int
    flags: int
    expires_at_ns: int


class LedgerInvariantBroken(AssertionError):
    """A programmer error: the engine computed something that breaks double entry."""


def plan_transfers(
    batch: Sequence[NewTransfer],
    *,
    accounts: Mapping[int, Balances],
    stored: Mapping[int, Transfer],
    pendings: Mapping[int, StoredPending],
    resolutions: Mapping[int, int],
    references: Mapping[str, int],
    now_ns: int,
    segment_ends: Sequence[int] = (),
    sweeping: bool = False,
) -> BatchPlan:
    """Decide every transfer of ``batch`` in order and apply the effects to ``accounts``.

    - ``accounts``: working balances of every account the batch may touch (mutated in place);
    - ``stored``: already-stored transfers whose ids appear in the batch (for idempotency);
    - ``pendings``: stored pending transfers referenced by ``pending_id``;
    - ``resolutions``: pending id -> flags of the stored transfer that resolved it;
    - ``references``: reference -> id of the stored transfer that owns it;
    - ``segment_ends``: indexes after which a linked chain must end (group commit joins
      several callers' batches; a chain never crosses from one caller into another);
    - ``sweeping``: the ledger's own expiry sweep, the only caller allowed the ``EXPIRY`` flag.

    Returns one result per item. Linked chains are all-or-nothing.
    """
    r = CreateTransferResult
    results: list[CreateTransferResult] = [r.OK] * len(batch)
    plan = BatchPlan(results=results)
    created: dict[int, PlannedTransfer] = {}  # id -> planned (this batch)
    created_refs: dict[str, int] = {}
    # pending id -> flags of its resolving transfer in this batch
    created_resolutions: dict[int, int] = {}

    allowed_flags = TRANSFER_FLAGS_CLIENT | (_EXPIRY if sweeping else 0)
    ends = set(segment_ends)
    ends.add(len(batch) - 1)
    chain_start = -1
    chain_failed = False
    # Undo log for the open chain: (planned transfer, debit, credit, released pending)
    undo: list[tuple[PlannedTransfer, Balances, Balances, StoredPending | None]] = []

    # Fast path for the common case: a plain posted transfer (no flags, no pending id,
    # timeout, reference or metadata) outside any linked chain. It applies the transfer only
    # when every check of ``_plan_one`` would pass; anything else (a rejection, a replay, an
    # unusual value) falls through to ``_plan_one``, which then decides the exact result
    # code. Such an item never opens a chain, so it needs no undo entry. The checks below are
    # those of ``_plan_one`` for this shape (``tests/ledger`` compares results both ways).
    id_max = limits.ID_MAX
    amount_max = limits.AMOUNT_MAX_MINOR
    code_max = limits.CODE_MAX
    bmax = limits.BALANCE_MAX_MINOR
    # Currencies already found valid by ``is_currency`` in this batch (exact ``str`` only).
    known_currencies: set[str] = set()
    accounts_get = accounts.get
    planned_append = plan.planned.append
    touched_add = plan.touched.add

    for index, item in enumerate(batch):
        flags_value = item.flags
        if chain_start < 0 and type(flags_value) is int and not flags_value:
            tid = item.id
            debit_id = item.debit_account_id
            credit_id = item.credit_account_id
            amount = item.amount_minor
            currency = item.currency
            transfer_code = item.code
            timeout = item.timeout_s
            if (
                type(tid) is int
                and 0 < tid <= id_max
                and type(debit_id) is int
                and 0 < debit_id <= id_max
                and type(credit_id) is int
                and 0 < credit_id <= id_max
                and debit_id != credit_id
                and type(amount) is int
                and 0 < amount <= amount_max
                and type(currency) is str
                and (currency in known_currencies or is_currency(currency))
                and type(transfer_code) is int
                and 0 < transfer_code <= code_max
                and item.pending_id is None
                and type(timeout) is int
                and not timeout
                and item.reference is None
                and item.metadata is None
                and tid not in created
                and tid not in stored
            ):
                known_currencies.add(currency)
                debit = accounts_get(debit_id)
                credit = accounts_get(credit_id)
                if (
                    debit is not None
                    and credit is not None
                    and debit.currency == currency
                    and credit.currency == currency
                ):
                    dp = debit.debits_pending
                    cp = credit.credits_pending
                    dpo = debit.debits_posted + amount
                    cpo = credit.credits_posted + amount
                    if (
                        dp <= bmax
                        and cp <= bmax
                        and dpo <= bmax
                        and cpo <= bmax
                        and dp + dpo <= bmax
                        and cp + cpo <= bmax
                        and not (debit.flags & _DMNEC and dp + dpo > debit.credits_posted)
                        and not (credit.flags & _CMNED and cp + cpo > credit.debits_posted)
                    ):
                        debit.debits_posted = dpo
                        credit.credits_posted = cpo
                        planned = PlannedTransfer(
                            index, tid, debit_id, credit_id, amount, currency, transfer_code,
                            0, 0, 0, None, None, 0,
                        )  # fmt: skip
                        created[tid] = planned
                        planned_append(planned)
                        touched_add(debit_id)
                        touched_add(credit_id)
                        continue  # results[index] is already OK
        linked = isinstance(flags_value, int) and flags_value & _LINKED
        if chain_start < 0:
            chain_start = index
            chain_failed = False
            undo.clear()

        if chain_failed:
            results[index] = r.LINKED_EVENT_FAILED
        else:
            code = _plan_one(
                index,
                item,
                accounts,
                stored,
                pendings,
                resolutions,
                references,
                created,
                created_refs,
                created_resolutions,
                now_ns,
                plan,
                undo,
                allowed_flags,
            )
            results[index] = code
            failed = code is not r.OK and code is not r.EXISTS
            if failed and (linked or index != chain_start):
                chain_failed = True

        chain_ends_here = not linked or index in ends
        if linked and index in ends:
            # A chain left open at the end of a caller's batch fails whole.
            chain_failed = True
            results[index] = r.LINKED_EVENT_CHAIN_OPEN
        if chain_ends_here:
            if chain_failed:
                for i in range(chain_start, index + 1):
                    if results[i] is r.OK or results[i] is r.EXISTS:
                        results[i] = r.LINKED_EVENT_FAILED
                _undo_chain(undo, plan, created, created_refs, created_resolutions)
            chain_start = -1
            undo.clear()

    return plan


def _plan_one(
    index: int,
    item: NewTransfer,
    accounts: Mapping[int, Balances],
    stored: Mapping[int, Transfer],
    pendings: Mapping[int, StoredPending],
    resolutions: Mapping[int, int],
    references: Mapping[str, int],
    created: dict[int, PlannedTransfer],
    created_refs: dict[str, int],
    created_resolutions: dict[int, int],
    now_ns: int,
    plan: BatchPlan,
    undo: list[tuple[PlannedTransfer, Balances, Balances, StoredPending | None]],
    allowed_flags: int,
) -> CreateTransferResult:
    r = CreateTransferResult
    # ---- shape -------------------------------------------------------------------------
    tid = item.id
    if type(tid) is not int or not 0 < tid <= limits.ID_MAX:
        return r.ID_INVALID
    flags = item.flags
    if not isinstance(flags, int) or flags < 0 or flags & ~allowed_flags:
        return r.RESERVED_FLAG
    flags = int(flags)
    resolving = flags & _RESOLVING
    if resolving == _RESOLVING or (resolving and flags & _PENDING):
        return r.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    if flags & _EXPIRY and not flags & _VOID:
        return r.FLAGS_ARE_MUTUALLY_EXCLUSIVE
    debit_id = item.debit_account_id
    credit_id = item.credit_account_id
    amount = item.amount_minor
    currency = item.currency
    code = item.code
    pending_id = item.pending_id
    if resolving:
        if debit_id is not None and not _is_id(debit_id):
            return r.DEBIT_ACCOUNT_ID_INVALID
        if credit_id is not None and not _is_id(credit_id):
            return r.CREDIT_ACCOUNT_ID_INVALID
    else:
        if type(debit_id) is not int or not 0 < debit_id <= limits.ID_MAX:
            return r.DEBIT_ACCOUNT_ID_INVALID
        if type(credit_id) is not int or not 0 < credit_id <= limits.ID_MAX:
            return r.CREDIT_ACCOUNT_ID_INVALID
    if debit_id is not None and debit_id == credit_id:
        return r.ACCOUNTS_MUST_BE_DIFFERENT
    if amount is not None or not resolving:
        if type(amount) is not int:
            return r.AMOUNT_INVALID
        if amount <= 0:
            return r.AMOUNT_MUST_BE_POSITIVE
        if amount > limits.AMOUNT_MAX_MINOR:
            return r.AMOUNT_EXCEEDS_MAXIMUM
    if (currency is not None or not resolving) and not is_currency(currency):
        return r.CURRENCY_INVALID
    if (code is not None or not resolving) and not _code_ok(code):
        return r.CODE_INVALID
    if resolving:
        if type(pending_id) is not int or not 0 < pending_id <= limits.ID_MAX:
            return r.PENDING_ID_INVALID
        if pending_id == tid:
            return r.PENDING_ID_MUST_BE_DIFFERENT
    elif pending_id is not None and pending_id != 0:
        return r.PENDING_ID_MUST_BE_ZERO
    timeout = item.timeout_s
    if timeout:
        if not flags & _PENDING:
            return r.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if type(timeout) is not int or not 0 < timeout <= limits.HOLD_TIMEOUT_MAX_S:
            return r.TIMEOUT_INVALID
    elif type(timeout) is not int:
        return r.TIMEOUT_INVALID
    reference = item.reference
    if reference is not None and not reference_ok(reference):
        return r.REFERENCE_INVALID
    if item.metadata is None:
        meta_text: str | None = None
    else:
        checked = _metadata_ok(item.metadata)
        if checked is False:
            return r.METADATA_INVALID
        meta_text = checked if isinstance(checked, str) else None

    # ---- idempotency -------------------------------------------------------------------
    previous = created.get(tid)
    if previous is not None:
        return _compare_existing(
            item, flags, meta_text, previous.flags, previous.pending_id, previous.timeout_s,
            previous.debit_account_id, previous.credit_account_id, previous.amount_minor,
            previous.currency, previous.code, previous.reference, previous.metadata_json,
            previous.released_minor,
        )  # fmt: skip
    stored_transfer = stored.get(tid)
    if stored_transfer is not None:
        released = 0
        if stored_transfer.flags & _RESOLVING:
            pend = pendings.get(stored_transfer.pending_id)
            released = pend.amount_minor if pend is not None else stored_transfer.amount_minor
        t = stored_transfer
        return _compare_existing(
            item, flags, meta_text, t.flags, t.pending_id, t.timeout_s, t.debit_account_id,
            t.credit_account_id, t.amount_minor, t.currency, t.code, t.reference,
            t.metadata_json, released,
        )  # fmt: skip

    # ---- references --------------------------------------------------------------------
    if reference is not None and (reference in references or reference in created_refs):
        return r.REFERENCE_ALREADY_USED
    pending: StoredPending | None = None
    if resolving:
        assert pending_id is not None
        pending = pendings.get(pending_id)
        if pending is None:
            in_batch = created.get(pending_id)
            if in_batch is not None:
                pending = StoredPending(
                    in_batch.id, in_batch.debit_account_id, in_batch.credit_account_id,
                    in_batch.amount_minor, in_batch.currency, in_batch.code, in_batch.flags,
                    0 if not in_batch.timeout_s else now_ns + in_batch.timeout_s * 1_000_000_000,
                )  # fmt: skip
        if debit_id is None:
            debit_id = pending.debit_account_id if pending is not None else None
        if credit_id is None:
            credit_id = pending.credit_account_id if pending is not None else None
    debit = accounts.get(debit_id) if debit_id is not None else None
    if debit is None and (debit_id is not None or pending is not None):
        return r.DEBIT_ACCOUNT_NOT_FOUND
    credit = accounts.get(credit_id) if credit_id is not None else None
    if credit is None and (credit_id is not None or pending is not None):
        return r.CREDIT_ACCOUNT_NOT_FOUND
    if resolving and pending is None:
        return r.PENDING_TRANSFER_NOT_FOUND
    assert debit is not None and credit is not None and debit_id is not None
    assert credit_id is not None

    # ---- state -------------------------------------------------------------------------
    if debit.currency != credit.currency:
        return r.ACCOUNTS_MUST_HAVE_THE_SAME_CURRENCY
    if currency is not None and currency != debit.currency:
        return r.TRANSFER_MUST_HAVE_THE_SAME_CURRENCY_AS_ACCOUNTS
    released = 0
    if pending is not None:
        if not pending.flags & _PENDING:
            return r.PENDING_TRANSFER_NOT_PENDING
        if debit_id != pending.debit_account_id:
            return r.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
        if credit_id != pending.credit_account_id:
            return r.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
        if currency is not None and currency != pending.currency:
            return r.PENDING_TRANSFER_HAS_DIFFERENT_CURRENCY
        if code is not None and code != pending.code:
            return r.PENDING_TRANSFER_HAS_DIFFERENT_CODE
        if flags & _POST:
            if amount is not None and amount > pending.amount_minor:
                return r.EXCEEDS_PENDING_TRANSFER_AMOUNT
        elif amount is not None and amount != pending.amount_minor:
            return r.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        resolved_by = created_resolutions.get(pending.id)
        if resolved_by is None:
            resolved_by = resolutions.get(pending.id)
        if resolved_by is not None:
            if resolved_by & _EXPIRY:
                return r.PENDING_TRANSFER_EXPIRED
            if resolved_by & _POST:
                return r.PENDING_TRANSFER_ALREADY_POSTED
            return r.PENDING_TRANSFER_ALREADY_VOIDED
        due = bool(pending.expires_at_ns) and pending.expires_at_ns <= now_ns
        if due and not flags & _EXPIRY:
            return r.PENDING_TRANSFER_EXPIRED
        if flags & _EXPIRY and not due:
            return r.PENDING_TRANSFER_NOT_EXPIRED
        released = pending.amount_minor
        if amount is None:
            amount = released
        currency = pending.currency
        code = pending.code
    assert amount is not None and currency is not None and code is not None

    # ---- limits ------------------------------------------------------------------------
    posted = 0 if flags & (_PENDING | _VOID) else amount
    held = amount if flags & _PENDING else 0
    dp = debit.debits_pending + held - released
    dpo = debit.debits_posted + posted
    cp = credit.credits_pending + held - released
    cpo = credit.credits_posted + posted
    bmax = limits.BALANCE_MAX_MINOR
    if dp > bmax:
        return r.OVERFLOWS_DEBITS_PENDING
    if cp > bmax:
        return r.OVERFLOWS_CREDITS_PENDING
    if dpo > bmax:
        return r.OVERFLOWS_DEBITS_POSTED
    if cpo > bmax:
        return r.OVERFLOWS_CREDITS_POSTED
    if dp + dpo > bmax:
        return r.OVERFLOWS_DEBITS
    if cp + cpo > bmax:
        return r.OVERFLOWS_CREDITS
    if debit.flags & _DMNEC and dp + dpo > debit.credits_posted:
        return r.EXCEEDS_CREDITS
    if credit.flags & _CMNED and cp + cpo > credit.debits_posted:
        return r.EXCEEDS_DEBITS

    # ---- apply -------------------------------------------------------------------------
    debit.debits_pending = dp
    debit.debits_posted = dpo
    credit.credits_pending = cp
    credit.credits_posted = cpo
    planned = PlannedTransfer(
        index, tid, debit_id, credit_id, amount, currency, code, flags,
        pending_id or 0, timeout or 0, reference, meta_text, released,
    )  # fmt: skip
    created[tid] = planned
    if reference is not None:
        created_refs[reference] = tid
    plan.planned.append(planned)
    plan.touched.add(debit_id)
    plan.touched.add(credit_id)
    if flags & _PENDING:
        plan.holds_opened.append(tid)
    elif pending is not None:
        created_resolutions[pending.id] = flags
        plan.holds_resolved.append(pending.id)
    undo.append((planned, debit, credit, pending))
    return r.OK


def _compare_existing(
    item: NewTransfer,
    flags: int,
    meta_text: str | None,
    e_flags: int,
    e_pending_id: int,
    e_timeout: int,
    e_debit: int,
    e_credit: int,
    e_amount: int,
    e_currency: str,
    e_code: int,
    e_reference: str | None,
    e_metadata: str | None,
    e_released: int,
) -> CreateTransferResult:
    """``exists`` when the replay asks for exactly what was done, else the first difference.

    Fields a post/void may omit are compared with what they resolved to when first applied.
    """
    r = CreateTransferResult
    if flags != e_flags:
        return r.EXISTS_WITH_DIFFERENT_FLAGS
    if (item.pending_id or 0) != e_pending_id:
        return r.EXISTS_WITH_DIFFERENT_PENDING_ID
    if (item.timeout_s or 0) != e_timeout:
        return r.EXISTS_WITH_DIFFERENT_TIMEOUT
    if item.debit_account_id is not None and item.debit_account_id != e_debit:
        return r.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
    if item.credit_account_id is not None and item.credit_account_id != e_credit:
        return r.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
    amount = item.amount_minor
    if amount is None and flags & _POST:
        amount = e_released  # "post everything": equal only if the first post did too
    if amount is not None and amount != e_amount:
        return r.EXISTS_WITH_DIFFERENT_AMOUNT
    if item.currency is not None and item.currency != e_currency:
        return r.EXISTS_WITH_DIFFERENT_CURRENCY
    if item.code is not None and item.code != e_code:
        return r.EXISTS_WITH_DIFFERENT_CODE
    if item.reference != e_reference:
        return r.EXISTS_WITH_DIFFERENT_REFERENCE
    if meta_text != e_metadata:
        return r.EXISTS_WITH_DIFFERENT_METADATA
    return r.EXISTS


def _undo_chain(
    undo: list[tuple[PlannedTransfer, Balances, Balances, StoredPending | None]],
    plan: BatchPlan,
    created: dict[int, PlannedTransfer],
    created_refs: dict[str, int],
    created_resolutions: dict[int, int],
) -> None:
    """Reverse the effects of a failed linked chain, newest first."""
    for planned, debit, credit, pending in reversed(undo):
        flags = planned.flags
        amount = planned.amount_minor
        released = planned.released_minor
        posted = 0 if flags & (_PENDING | _VOID) else amount
        held = amount if flags & _PENDING else 0
        debit.debits_pending -= held - released
        debit.debits_posted -= posted
        credit.credits_pending -= held - released
        credit.credits_posted -= posted
        del created[planned.id]
        if planned.reference is not None:
            created_refs.pop(planned.reference, None)
        removed = plan.planned.pop()
        assert removed is planned
        if flags & _PENDING:
            plan.holds_opened.pop()
        elif pending is not None:
            created_resolutions.pop(pending.id, None)
            plan.holds_resolved.pop()
        # ``touched`` may keep the accounts: rewriting unchanged balances is harmless.


#: A journal row ready to write, in column order (see ``repository.TRANSFER_COLUMNS``);
#: absent values are 0 / "" (the repository maps them to NULL).
JournalRow = tuple[int, int, int, int, int, str, int, int, int, int, int, str, str, int, str]


@dataclass(frozen=True, slots=True)
class SealedBatch:
    rows: list[JournalRow]
    head: JournalHead
    #: (pending transfer id, expires_at_ns or 0) for every hold the batch opens.
    holds_opened: list[tuple[int, int]]


def batch_timestamps(
    size: int, planned: Sequence[PlannedTransfer], sealed: SealedBatch
) -> Sequence[int]:
    """The timestamp assigned to each item of a batch of ``size`` items (0: not written).

    ``sealed.rows`` are ``planned`` in order, so row k is item ``planned[k].index``. When
    every item was written, item k is row k and the timestamps are consecutive.
    """
    rows = sealed.rows
    if len(rows) == size and size:
        first, last = rows[0][13], rows[-1][13]
        if last - first == size - 1:
            return range(first, last + 1)
    stamps = [0] * size
    for p, row in zip(planned, rows, strict=True):
        stamps[p.index] = row[13]
    return stamps


def seal(planned: Sequence[PlannedTransfer], head: JournalHead, now_ns: int) -> SealedBatch:
    """Assign seq, a strictly increasing timestamp and the chained hash to each row.

    This is the per-transfer hot path of every batch, so the encoding of ``row_digest`` is
    inlined here; ``tests/test_journal_hash.py`` checks both produce the same hashes.
    """
    rows: list[JournalRow] = []
    opened: list[tuple[int, int]] = []
    seq = head.last_seq
    ts = max(now_ns, head.last_timestamp_ns)
    prev = head.last_hash
    prev_bytes = bytes.fromhex(prev)
    sha256 = hashlib.sha256
    pack = _ROW_FIXED.pack
    append = rows.append
    currencies: dict[str, bytes] = {}
    #: currency -> ``pack`` of a struct laying out the previous digest, ``_ROW_FIXED`` and
    #: the whole text part of a row without reference or metadata (the currency's bytes
    #: length-prefixed, then two empty texts) as one constant field.
    plain_packs: dict[str, tuple[Callable[..., bytes], bytes]] = {}
    # "32s" would pad or cut a previous digest of another length (only a malformed head can
    # give one); such a first row takes the general branch, which hashes it as it is.
    digest_sized = len(prev_bytes) == 32
    for p in planned:
        seq += 1
        ts += 1
        flags = p.flags
        timeout = p.timeout_s
        ref = p.reference or ""
        meta = p.metadata_json or ""
        currency = p.currency
        if not flags and not timeout and not ref and not meta and digest_sized:
            # The common row: the same bytes as below, with the constant parts precomputed
            # and the previous digest packed with the integers (one concatenation, not four).
            packer = plain_packs.get(currency)
            if packer is None:
                packer = plain_packs[currency] = _plain_row_packer(currency)
            pack_plain, tail = packer
            tid = p.id
            debit = p.debit_account_id
            credit = p.credit_account_id
            amount = p.amount_minor
            code = p.code
            pending_id = p.pending_id
            prev_bytes = sha256(
                pack_plain(prev_bytes, seq, tid, debit, credit, amount, code, 0, pending_id, 0,
                           0, ts, tail)
            ).digest()  # fmt: skip
            prev = prev_bytes.hex()
            append(
                (seq, tid, debit, credit, amount, currency, code, 0, pending_id, 0, 0, "", "",
                 ts, prev)
            )  # fmt: skip
            continue
        expires = ts + timeout * 1_000_000_000 if timeout else 0
        currency_bytes = currencies.get(currency)
        if currency_bytes is None:
            currency_bytes = currencies[currency] = _text_bytes(currency)
        digest = sha256(
            prev_bytes
            + pack(seq, p.id, p.debit_account_id, p.credit_account_id, p.amount_minor, p.code,
                   flags, p.pending_id, timeout, expires, ts)
            + currency_bytes
            + (_text_bytes(ref) if ref else _NO_TEXT)
            + (_text_bytes(meta) if meta else _NO_TEXT)
        ).digest()  # fmt: skip
        prev_bytes = digest
        prev = digest.hex()
        digest_sized = True
        append(
            (seq, p.id, p.debit_account_id, p.credit_account_id, p.amount_minor, currency,
             p.code, flags, p.pending_id, timeout, expires, ref, meta, ts, prev)
        )  # fmt: skip
        if flags & _PENDING:
            opened.append((p.id, expires))
    new_head = JournalHead(seq, ts, prev) if rows else head
    return SealedBatch(rows, new_head, opened)


def net_by_currency(balances: Iterable[Balances]) -> dict[str, list[int]]:
    """Per currency: [sum of (debits - credits) pending, sum of (debits - credits) posted]."""
    out: dict[str, list[int]] = {}
    for b in balances:
        t = out.get(b.currency)
        if t is None:
            t = out[b.currency] = [0, 0]
        t[0] += b.debits_pending - b.credits_pending
        t[1] += b.debits_posted - b.credits_posted
    return out


def assert_zero_sum(before: dict[str, list[int]], after: dict[str, list[int]]) -> None:
    """Double entry, checked independently of the engine's arithmetic: over the same set of
    accounts, net debits minus credits per currency (pending and posted separately) must be
    unchanged by a batch. A failure is a programmer error, never a user error."""
    if before != after:
        raise LedgerInvariantBroken(f"batch broke double entry: before {before}, after {after}")
