"""An independent, deliberately naive reference model of the ledger, for the stateful test.

Written from the ledger's documented semantics (TigerBeetle's accounts and transfers), not from
the engine's code: plain dicts and lists, a whole-state snapshot per linked chain instead of an
undo log, a chain split computed up front instead of on the fly. It imports only the public
flag values and result names, never the engine's logic.

Check order (first failure wins): shape, idempotency, references, state, limits.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from iso4217 import Currency

from paykeep.ledger.model import NewTransfer

ID_MAX = 2**63 - 1
AMOUNT_MAX = 10**15
BALANCE_MAX = 2**63 - 1
CODE_MAX = 65_535
TIMEOUT_MAX_S = 30 * 24 * 3600
REFERENCE_MAX = 128
METADATA_BYTES_MAX = 2_048
METADATA_KEYS_MAX = 32
SWEEP_BATCH = 1_000
NS = 1_000_000_000

LINKED, PENDING, POST, VOID, EXPIRY = 1, 2, 4, 8, 16
CLIENT_FLAGS = LINKED | PENDING | POST | VOID
DMNEC, CMNED = 2, 4


def valid_currency(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 3 or not value.isupper():
        return False
    try:
        return Currency(value).exponent is not None
    except ValueError:
        return False


def is_id(value: object) -> bool:
    return type(value) is int and 1 <= value <= ID_MAX


def canonical(metadata: object) -> str | bool | None:
    """Canonical JSON of metadata; None when absent or empty; False when not acceptable."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        return False
    if len(metadata) > METADATA_KEYS_MAX:
        return False
    for key, value in metadata.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 64:
            return False
        if value is not None and type(value) not in (str, int, bool):
            return False
    if not metadata:
        return None
    try:
        text = json.dumps(dict(metadata), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError):
        return False
    return False if size > METADATA_BYTES_MAX else text


@dataclass
class MAccount:
    currency: str
    flags: int
    code: int
    # [debits_pending, debits_posted, credits_pending, credits_posted]
    bal: list[int] = field(default_factory=lambda: [0, 0, 0, 0])


@dataclass
class MTransfer:
    id: int
    debit: int
    credit: int
    amount: int
    currency: str
    code: int
    flags: int
    pending_id: int
    timeout: int
    reference: str | None
    meta: str | None
    released: int  # pending amount a post/void releases
    ts: int = 0
    expires_at: int = 0  # 0: never (or: not yet sealed)


@dataclass
class _State:
    accounts: dict[int, MAccount]
    transfers: dict[int, MTransfer]
    resolved: dict[int, int]  # pending id -> flags of the transfer that resolved it
    refs: dict[str, int]
    rows: list[MTransfer]  # rows the current batch will write, in order


class RefLedger:
    def __init__(self, last_ts: int) -> None:
        self.s = _State({}, {}, {}, {}, [])
        self.last_ts = last_ts

    # ------------------------------------------------------------------ accounts

    def add_account(self, account_id: int, currency: str, flags: int, code: int) -> None:
        self.s.accounts[account_id] = MAccount(currency, flags, code)

    @property
    def accounts(self) -> dict[int, MAccount]:
        return self.s.accounts

    @property
    def transfers(self) -> dict[int, MTransfer]:
        return self.s.transfers

    @property
    def resolved(self) -> dict[int, int]:
        return self.s.resolved

    def open_holds(self) -> list[MTransfer]:
        return [
            t for t in self.s.transfers.values() if t.flags & PENDING and t.id not in self.resolved
        ]

    # ------------------------------------------------------------------ transfers

    def create_transfers(self, batch: Sequence[NewTransfer], now: int) -> list[str]:
        """Result code (string) per item; applies what succeeds; stamps written rows."""
        results: list[str] = [""] * len(batch)
        self.s.rows = []
        for chain in _split_chains(batch):
            first, last, is_chain, is_open = chain
            if not is_chain:
                code = self._one(batch[first], now, sweeping=False)
                results[first] = code
                continue
            saved = _State(
                copy.deepcopy(self.s.accounts),
                dict(self.s.transfers),
                dict(self.s.resolved),
                dict(self.s.refs),
                list(self.s.rows),
            )
            failed_at = -1
            for i in range(first, last + 1):
                if failed_at >= 0:
                    results[i] = "linked_event_failed"
                    continue
                code = self._one(batch[i], now, sweeping=False)
                results[i] = code
                if code not in ("ok", "exists"):
                    failed_at = i
            if is_open:
                results[last] = "linked_event_chain_open"
            if failed_at >= 0 or is_open:
                for i in range(first, last + 1):
                    if results[i] in ("ok", "exists"):
                        results[i] = "linked_event_failed"
                self.s = saved
        self._seal(now)
        return results

    def expire(self, now: int) -> int:
        due = sorted(
            (t.expires_at, t.id) for t in self.open_holds() if t.expires_at and t.expires_at <= now
        )[:SWEEP_BATCH]
        self.s.rows = []
        for _expires, pending_id in due:
            p = self.s.transfers[pending_id]
            self.resolved[pending_id] = VOID | EXPIRY
            self._move(p.debit, p.credit, 0, 0, p.amount)
            # the sweep's void ids are chosen by the ledger; only its timestamps matter here
            self.s.rows.append(
                MTransfer(-1, p.debit, p.credit, p.amount, p.currency, p.code, VOID | EXPIRY,
                          p.id, 0, None, None, p.amount)
            )  # fmt: skip
        self._seal(now)
        return len(due)

    def _seal(self, now: int) -> None:
        ts = max(now, self.last_ts)
        for row in self.s.rows:
            ts += 1
            row.ts = ts
            row.expires_at = ts + row.timeout * NS if row.timeout else 0
        self.last_ts = ts
        self.s.rows = []

    def _move(self, debit: int, credit: int, held: int, posted: int, released: int) -> None:
        d = self.s.accounts[debit].bal
        c = self.s.accounts[credit].bal
        d[0] += held - released
        d[1] += posted
        c[2] += held - released
        c[3] += posted

    def _one(self, t: NewTransfer, now: int, *, sweeping: bool) -> str:
        s = self.s
        # ------------------------------------------------------------ shape
        if not is_id(t.id):
            return "id_invalid"
        allowed = CLIENT_FLAGS | (EXPIRY if sweeping else 0)
        if not isinstance(t.flags, int) or t.flags < 0 or t.flags & ~allowed:
            return "reserved_flag"
        flags = int(t.flags)
        resolving = bool(flags & (POST | VOID))
        if (flags & POST and flags & VOID) or (resolving and flags & PENDING):
            return "flags_are_mutually_exclusive"
        if resolving:
            if t.debit_account_id is not None and not is_id(t.debit_account_id):
                return "debit_account_id_invalid"
            if t.credit_account_id is not None and not is_id(t.credit_account_id):
                return "credit_account_id_invalid"
        else:
            if not is_id(t.debit_account_id):
                return "debit_account_id_invalid"
            if not is_id(t.credit_account_id):
                return "credit_account_id_invalid"
        if t.debit_account_id is not None and t.debit_account_id == t.credit_account_id:
            return "accounts_must_be_different"
        if t.amount_minor is not None or not resolving:
            if type(t.amount_minor) is not int:
                return "amount_invalid"
            if t.amount_minor <= 0:
                return "amount_must_be_positive"
            if t.amount_minor > AMOUNT_MAX:
                return "amount_exceeds_maximum"
        if (t.currency is not None or not resolving) and not valid_currency(t.currency):
            return "currency_invalid"
        code_given = t.code is not None or not resolving
        if code_given and (type(t.code) is not int or not 1 <= t.code <= CODE_MAX):
            return "code_invalid"
        if resolving:
            if not is_id(t.pending_id):
                return "pending_id_invalid"
            if t.pending_id == t.id:
                return "pending_id_must_be_different"
        elif t.pending_id not in (None, 0):
            return "pending_id_must_be_zero"
        if t.timeout_s:
            if not flags & PENDING:
                return "timeout_reserved_for_pending_transfer"
            if type(t.timeout_s) is not int or not 1 <= t.timeout_s <= TIMEOUT_MAX_S:
                return "timeout_invalid"
        elif type(t.timeout_s) is not int:
            return "timeout_invalid"
        if t.reference is not None and not (
            isinstance(t.reference, str)
            and 1 <= len(t.reference) <= REFERENCE_MAX
            and t.reference.isprintable()
        ):
            return "reference_invalid"
        meta = canonical(t.metadata)
        if meta is False:
            return "metadata_invalid"
        assert meta is None or isinstance(meta, str)

        # ------------------------------------------------------------ idempotency
        old = s.transfers.get(t.id)
        if old is not None:
            return _compare(t, flags, meta, old)

        # ------------------------------------------------------------ references
        if t.reference is not None and t.reference in s.refs:
            return "reference_already_used"
        pending = s.transfers.get(t.pending_id) if resolving else None  # type: ignore[arg-type]
        debit_id = t.debit_account_id
        credit_id = t.credit_account_id
        if pending is not None:
            debit_id = pending.debit if debit_id is None else debit_id
            credit_id = pending.credit if credit_id is None else credit_id
        if debit_id is not None and debit_id not in s.accounts:
            return "debit_account_not_found"
        if credit_id is not None and credit_id not in s.accounts:
            return "credit_account_not_found"
        if resolving and pending is None:
            return "pending_transfer_not_found"
        assert debit_id is not None and credit_id is not None
        debit = s.accounts[debit_id]
        credit = s.accounts[credit_id]

        # ------------------------------------------------------------ state
        if debit.currency != credit.currency:
            return "accounts_must_have_the_same_currency"
        if t.currency is not None and t.currency != debit.currency:
            return "transfer_must_have_the_same_currency_as_accounts"
        amount = t.amount_minor
        released = 0
        if pending is not None:
            if not pending.flags & PENDING:
                return "pending_transfer_not_pending"
            if debit_id != pending.debit:
                return "pending_transfer_has_different_debit_account_id"
            if credit_id != pending.credit:
                return "pending_transfer_has_different_credit_account_id"
            if t.currency is not None and t.currency != pending.currency:
                return "pending_transfer_has_different_currency"
            if t.code is not None and t.code != pending.code:
                return "pending_transfer_has_different_code"
            if flags & POST:
                if amount is not None and amount > pending.amount:
                    return "exceeds_pending_transfer_amount"
            elif amount is not None and amount != pending.amount:
                return "pending_transfer_has_different_amount"
            how = s.resolved.get(pending.id)
            if how is not None:
                if how & EXPIRY:
                    return "pending_transfer_expired"
                if how & POST:
                    return "pending_transfer_already_posted"
                return "pending_transfer_already_voided"
            if pending.expires_at and pending.expires_at <= now:
                return "pending_transfer_expired"
            released = pending.amount
            if amount is None:
                amount = pending.amount
        assert amount is not None
        currency = debit.currency
        code = pending.code if pending is not None else t.code
        assert isinstance(code, int)

        # ------------------------------------------------------------ limits
        held = amount if flags & PENDING else 0
        posted = amount if not flags & (PENDING | VOID) else 0
        dp = debit.bal[0] + held - released
        dpo = debit.bal[1] + posted
        cp = credit.bal[2] + held - released
        cpo = credit.bal[3] + posted
        for value, name in (
            (dp, "overflows_debits_pending"),
            (cp, "overflows_credits_pending"),
            (dpo, "overflows_debits_posted"),
            (cpo, "overflows_credits_posted"),
            (dp + dpo, "overflows_debits"),
            (cp + cpo, "overflows_credits"),
        ):
            if value > BALANCE_MAX:
                return name
        if debit.flags & DMNEC and dp + dpo > debit.bal[3]:
            return "exceeds_credits"
        if credit.flags & CMNED and cp + cpo > credit.bal[1]:
            return "exceeds_debits"

        # ------------------------------------------------------------ apply
        self._move(debit_id, credit_id, held, posted, released)
        row = MTransfer(
            t.id, debit_id, credit_id, amount, currency, code, flags,
            t.pending_id or 0, t.timeout_s or 0, t.reference, meta, released,
        )  # fmt: skip
        s.transfers[t.id] = row
        s.rows.append(row)
        if t.reference is not None:
            s.refs[t.reference] = t.id
        if pending is not None:
            s.resolved[pending.id] = flags
        return "ok"


def _split_chains(batch: Sequence[NewTransfer]) -> list[tuple[int, int, bool, bool]]:
    """(first, last, is_linked_chain, is_open) for each chain of the batch."""
    out: list[tuple[int, int, bool, bool]] = []
    start = 0
    for i, t in enumerate(batch):
        linked = isinstance(t.flags, int) and bool(t.flags & LINKED)
        if linked and i < len(batch) - 1:
            continue
        is_chain = i > start or linked
        out.append((start, i, is_chain, linked))
        start = i + 1
    return out


def _compare(t: NewTransfer, flags: int, meta: str | None, old: MTransfer) -> str:
    if flags != old.flags:
        return "exists_with_different_flags"
    if (t.pending_id or 0) != old.pending_id:
        return "exists_with_different_pending_id"
    if (t.timeout_s or 0) != old.timeout:
        return "exists_with_different_timeout"
    if t.debit_account_id is not None and t.debit_account_id != old.debit:
        return "exists_with_different_debit_account_id"
    if t.credit_account_id is not None and t.credit_account_id != old.credit:
        return "exists_with_different_credit_account_id"
    amount = t.amount_minor
    if amount is None and flags & POST:
        amount = old.released  # "post it all" replays equal only a full post
    if amount is not None and amount != old.amount:
        return "exists_with_different_amount"
    if t.currency is not None and t.currency != old.currency:
        return "exists_with_different_currency"
    if t.code is not None and t.code != old.code:
        return "exists_with_different_code"
    if t.reference != old.reference:
        return "exists_with_different_reference"
    if meta != old.meta:
        return "exists_with_different_metadata"
    return "exists"


def balances(account: MAccount) -> tuple[int, int, int, int]:
    dp, dpo, cp, cpo = account.bal
    return dp, dpo, cp, cpo


def describe(t: NewTransfer) -> dict[str, Any]:
    return {k: getattr(t, k) for k in NewTransfer.__dataclass_fields__}
