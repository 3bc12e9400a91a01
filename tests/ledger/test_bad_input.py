"""Malformed and invalid requests: each gets its typed result (or error) and changes nothing.

"Changes nothing" is checked by comparing every account's four balances and the journal head
before and after. The single-item ``create_transfer`` raises the typed error class whose
``code`` is the result value.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from paykeep import limits
from paykeep.db import Database
from paykeep.ledger.errors import (
    ACCOUNT_ERRORS,
    TRANSFER_ERRORS,
    AccountNotFound,
    AccountRejected,
    BatchTooLarge,
    InvalidCursor,
    TransferNotFound,
    TransferRejected,
)
from paykeep.ledger.model import (
    CreateAccountResult,
    CreateTransferResult,
    NewAccount,
    NewTransfer,
)
from paykeep.ledger.service import GroupCommitter
from tests.ledger.scenario import CMNED, DMNEC, EXPIRY, PENDING, POST, T100, VOID, build, snapshot

R = CreateTransferResult
A = CreateAccountResult
GOOD = NewTransfer(500, 1, 2, 10, "EUR", 1)
HUGE = 2**63  # one past BIGINT


def change(**kw: Any) -> NewTransfer:
    return dataclasses.replace(GOOD, **kw)


TRANSFER_ROWS: list[tuple[str, NewTransfer, R]] = [
    # ids
    ("id zero", change(id=0), R.ID_INVALID),
    ("id negative", change(id=-1), R.ID_INVALID),
    ("id past BIGINT", change(id=HUGE), R.ID_INVALID),
    ("id far past BIGINT", change(id=2**80), R.ID_INVALID),
    ("id str", change(id="500"), R.ID_INVALID),
    ("id None", change(id=None), R.ID_INVALID),
    ("id bool", change(id=True), R.ID_INVALID),
    ("id float", change(id=500.0), R.ID_INVALID),
    ("debit id zero", change(debit_account_id=0), R.DEBIT_ACCOUNT_ID_INVALID),
    ("debit id negative", change(debit_account_id=-2), R.DEBIT_ACCOUNT_ID_INVALID),
    ("debit id past BIGINT", change(debit_account_id=HUGE), R.DEBIT_ACCOUNT_ID_INVALID),
    ("debit id str", change(debit_account_id="1"), R.DEBIT_ACCOUNT_ID_INVALID),
    ("debit id None", change(debit_account_id=None), R.DEBIT_ACCOUNT_ID_INVALID),
    ("debit id bool", change(debit_account_id=True), R.DEBIT_ACCOUNT_ID_INVALID),
    ("credit id past BIGINT", change(credit_account_id=HUGE), R.CREDIT_ACCOUNT_ID_INVALID),
    ("credit id None", change(credit_account_id=None), R.CREDIT_ACCOUNT_ID_INVALID),
    ("credit id float", change(credit_account_id=2.0), R.CREDIT_ACCOUNT_ID_INVALID),
    ("pending id past BIGINT", change(flags=POST, pending_id=HUGE), R.PENDING_ID_INVALID),
    ("pending id str", change(flags=VOID, pending_id="101"), R.PENDING_ID_INVALID),
    ("pending id None on a post", change(flags=POST, pending_id=None), R.PENDING_ID_INVALID),
    ("pending id bool", change(flags=POST, pending_id=True), R.PENDING_ID_INVALID),
    # accounts
    ("unknown debit account", change(debit_account_id=999), R.DEBIT_ACCOUNT_NOT_FOUND),
    ("unknown credit account", change(credit_account_id=999), R.CREDIT_ACCOUNT_NOT_FOUND),
    ("same account twice", change(credit_account_id=1), R.ACCOUNTS_MUST_BE_DIFFERENT),
    # amounts
    ("amount zero", change(amount_minor=0), R.AMOUNT_MUST_BE_POSITIVE),
    ("amount negative", change(amount_minor=-10), R.AMOUNT_MUST_BE_POSITIVE),
    (
        "amount over maximum",
        change(amount_minor=limits.AMOUNT_MAX_MINOR + 1),
        R.AMOUNT_EXCEEDS_MAXIMUM,
    ),
    ("amount past BIGINT", change(amount_minor=HUGE), R.AMOUNT_EXCEEDS_MAXIMUM),
    ("amount bool", change(amount_minor=True), R.AMOUNT_INVALID),
    ("amount float", change(amount_minor=10.0), R.AMOUNT_INVALID),
    ("amount str", change(amount_minor="10"), R.AMOUNT_INVALID),
    ("amount None", change(amount_minor=None), R.AMOUNT_INVALID),
    ("post amount float", change(flags=POST, pending_id=101, amount_minor=1.5), R.AMOUNT_INVALID),
    # currencies
    (
        "currency of another account",
        change(currency="JPY"),
        R.TRANSFER_MUST_HAVE_THE_SAME_CURRENCY_AS_ACCOUNTS,
    ),
    (
        "accounts in two currencies",
        change(credit_account_id=5),
        R.ACCOUNTS_MUST_HAVE_THE_SAME_CURRENCY,
    ),
    ("currency XXX (no minor unit)", change(currency="XXX"), R.CURRENCY_INVALID),
    ("currency XAU (metal)", change(currency="XAU"), R.CURRENCY_INVALID),
    ("currency lower case", change(currency="eur"), R.CURRENCY_INVALID),
    ("currency unknown", change(currency="ABC"), R.CURRENCY_INVALID),
    ("currency None", change(currency=None), R.CURRENCY_INVALID),
    ("currency not a str", change(currency=978), R.CURRENCY_INVALID),
    ("currency bytes", change(currency=b"EUR"), R.CURRENCY_INVALID),
    # codes, flags, timeouts
    ("code zero", change(code=0), R.CODE_INVALID),
    ("code too big", change(code=limits.CODE_MAX + 1), R.CODE_INVALID),
    ("code bool", change(code=True), R.CODE_INVALID),
    ("flag EXPIRY from a client", change(flags=VOID | EXPIRY, pending_id=101), R.RESERVED_FLAG),
    ("unknown flag", change(flags=1 << 9), R.RESERVED_FLAG),
    ("negative flags", change(flags=-2), R.RESERVED_FLAG),
    ("flags not an int", change(flags="0"), R.RESERVED_FLAG),
    (
        "pending and post",
        change(flags=PENDING | POST, pending_id=101),
        R.FLAGS_ARE_MUTUALLY_EXCLUSIVE,
    ),
    ("post and void", change(flags=POST | VOID, pending_id=101), R.FLAGS_ARE_MUTUALLY_EXCLUSIVE),
    ("pending id on a plain transfer", change(pending_id=101), R.PENDING_ID_MUST_BE_ZERO),
    ("post of itself", change(id=501, flags=POST, pending_id=501), R.PENDING_ID_MUST_BE_DIFFERENT),
    ("timeout on a plain transfer", change(timeout_s=10), R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER),
    ("timeout negative", change(flags=PENDING, timeout_s=-1), R.TIMEOUT_INVALID),
    (
        "timeout too long",
        change(flags=PENDING, timeout_s=limits.HOLD_TIMEOUT_MAX_S + 1),
        R.TIMEOUT_INVALID,
    ),
    ("timeout float", change(flags=PENDING, timeout_s=1.5), R.TIMEOUT_INVALID),
    ("timeout None", change(timeout_s=None), R.TIMEOUT_INVALID),
    # references
    ("reference empty", change(reference=""), R.REFERENCE_INVALID),
    (
        "reference too long",
        change(reference="r" * (limits.REFERENCE_LENGTH_MAX + 1)),
        R.REFERENCE_INVALID,
    ),
    ("reference with a newline", change(reference="a\nb"), R.REFERENCE_INVALID),
    ("reference with NUL", change(reference="a\x00b"), R.REFERENCE_INVALID),
    ("reference lone surrogate", change(reference="a\ud800"), R.REFERENCE_INVALID),
    ("reference not a str", change(reference=123), R.REFERENCE_INVALID),
    ("reference already used", change(reference="ref-100"), R.REFERENCE_ALREADY_USED),
    # metadata
    ("metadata float value", change(metadata={"fee": 1.25}), R.METADATA_INVALID),
    ("metadata nested dict", change(metadata={"a": {"b": 1}}), R.METADATA_INVALID),
    ("metadata list value", change(metadata={"a": [1, 2]}), R.METADATA_INVALID),
    (
        "metadata too big",
        change(metadata={"a": "x" * limits.METADATA_BYTES_MAX}),
        R.METADATA_INVALID,
    ),
    ("metadata too big in UTF-8", change(metadata={"a": "é" * 1_100}), R.METADATA_INVALID),
    (
        "metadata too many keys",
        change(metadata={f"k{i}": i for i in range(limits.METADATA_KEYS_MAX + 1)}),
        R.METADATA_INVALID,
    ),
    ("metadata empty key", change(metadata={"": "x"}), R.METADATA_INVALID),
    ("metadata key too long", change(metadata={"k" * 65: "x"}), R.METADATA_INVALID),
    ("metadata int key", change(metadata={1: "x"}), R.METADATA_INVALID),
    ("metadata not a mapping", change(metadata=[("a", "b")]), R.METADATA_INVALID),
    ("metadata a str", change(metadata="{}"), R.METADATA_INVALID),
    ("metadata lone surrogate value", change(metadata={"k": "\ud800"}), R.METADATA_INVALID),
    ("metadata lone surrogate key", change(metadata={"\udcff": "v"}), R.METADATA_INVALID),
    ("metadata int too long to print", change(metadata={"k": 10**5_000}), R.METADATA_INVALID),
    # a reused id with other fields
    (
        "reused id, other amount",
        dataclasses.replace(T100, amount_minor=49),
        R.EXISTS_WITH_DIFFERENT_AMOUNT,
    ),
    (
        "reused id, other accounts",
        dataclasses.replace(T100, debit_account_id=2, credit_account_id=1),
        R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID,
    ),
    (
        "reused id, no reference",
        dataclasses.replace(T100, reference=None),
        R.EXISTS_WITH_DIFFERENT_REFERENCE,
    ),
    (
        "reused id, no metadata",
        dataclasses.replace(T100, metadata=None),
        R.EXISTS_WITH_DIFFERENT_METADATA,
    ),
    (
        "reused id, metadata int vs bool",
        dataclasses.replace(T100, metadata={"order": True}),
        R.EXISTS_WITH_DIFFERENT_METADATA,
    ),
    (
        "reused id, as a hold",
        dataclasses.replace(T100, flags=PENDING),
        R.EXISTS_WITH_DIFFERENT_FLAGS,
    ),
    (
        "reused id of a post, as a void",
        NewTransfer(103, flags=VOID, pending_id=102),
        R.EXISTS_WITH_DIFFERENT_FLAGS,
    ),
]  # fmt: skip


def test_bad_transfers_get_their_code_and_change_nothing(database: Database, subtests: Any) -> None:
    s = build(database)
    for name, item, expected in TRANSFER_ROWS:
        with subtests.test(msg=name):
            before = snapshot(s.ledger)
            # Alone, in a batch after a valid transfer (which is applied), and as a single call.
            (alone,) = s.ledger.create_transfers([item])
            assert alone.result is expected, alone
            assert snapshot(s.ledger) == before
            with pytest.raises(TransferRejected) as raised:
                s.ledger.create_transfer(item)
            assert type(raised.value) is TRANSFER_ERRORS[expected]
            assert raised.value.code == expected.value
            assert snapshot(s.ledger) == before


def test_a_bad_item_does_not_spoil_its_batch(database: Database) -> None:
    s = build(database)
    items = [row[1] for row in TRANSFER_ROWS if row[2] is not R.PENDING_ID_MUST_BE_DIFFERENT]
    good = [NewTransfer(600 + i, 1, 2, 1, "EUR", 1) for i in range(3)]
    batch = [good[0], *items, good[1], good[2]]
    results = s.ledger.create_transfers(batch)
    assert [r.result for r in results[1:-2]] == [
        row[2] for row in TRANSFER_ROWS if row[2] is not R.PENDING_ID_MUST_BE_DIFFERENT
    ]
    assert [results[0].result, results[-2].result, results[-1].result] == [R.OK] * 3
    assert [r.index for r in results] == list(range(len(batch)))
    assert s.ledger.account(2).credits_posted == 50 + 100 + 30 + 3  # 100, 103, 110, and these


ACCOUNT_ROWS: list[tuple[str, NewAccount, A]] = [
    ("id zero", NewAccount(0, "EUR", 1), A.ID_INVALID),
    ("id past BIGINT", NewAccount(HUGE, "EUR", 1), A.ID_INVALID),
    ("id str", NewAccount("50", "EUR", 1), A.ID_INVALID),  # type: ignore[arg-type]
    ("id bool", NewAccount(True, "EUR", 1), A.ID_INVALID),
    ("unknown flag", NewAccount(50, "EUR", 1, flags=1), A.RESERVED_FLAG),
    ("negative flags", NewAccount(50, "EUR", 1, flags=-2), A.RESERVED_FLAG),
    (
        "both limit flags",
        NewAccount(50, "EUR", 1, flags=DMNEC | CMNED),
        A.FLAGS_ARE_MUTUALLY_EXCLUSIVE,
    ),
    ("currency XXX", NewAccount(50, "XXX", 1), A.CURRENCY_INVALID),
    ("currency XAU", NewAccount(50, "XAU", 1), A.CURRENCY_INVALID),
    ("currency lower case", NewAccount(50, "eur", 1), A.CURRENCY_INVALID),
    ("code zero", NewAccount(50, "EUR", 0), A.CODE_INVALID),
    ("code bool", NewAccount(50, "EUR", True), A.CODE_INVALID),
    ("name empty", NewAccount(50, "EUR", 1, name=""), A.NAME_INVALID),
    ("name too long", NewAccount(50, "EUR", 1, name="n" * 129), A.NAME_INVALID),
    ("name with a newline", NewAccount(50, "EUR", 1, name="a\nb"), A.NAME_INVALID),
    ("name with NUL", NewAccount(50, "EUR", 1, name="a\x00b"), A.NAME_INVALID),
    ("name lone surrogate", NewAccount(50, "EUR", 1, name="a\ud800"), A.NAME_INVALID),
    ("metadata float", NewAccount(50, "EUR", 1, metadata={"rate": 0.1}), A.METADATA_INVALID),
    ("metadata surrogate", NewAccount(50, "EUR", 1, metadata={"k": "\ud800"}), A.METADATA_INVALID),
    ("reused id, other flags", NewAccount(3, "EUR", 1), A.EXISTS_WITH_DIFFERENT_FLAGS),
    ("reused id, other currency", NewAccount(1, "USD", 1), A.EXISTS_WITH_DIFFERENT_CURRENCY),
    ("reused id, other code", NewAccount(1, "EUR", 2), A.EXISTS_WITH_DIFFERENT_CODE),
    ("reused id, other name", NewAccount(1, "EUR", 1, name="x"), A.EXISTS_WITH_DIFFERENT_NAME),
    (
        "reused id, metadata",
        NewAccount(1, "EUR", 1, metadata={"a": "b"}),
        A.EXISTS_WITH_DIFFERENT_METADATA,
    ),
    ("reused id, same fields", NewAccount(1, "EUR", 1), A.EXISTS),
    ("name already used", NewAccount(51, "EUR", 1, name="main:eur"), A.NAME_ALREADY_USED),
]  # fmt: skip


def test_bad_accounts_get_their_code_and_change_nothing(database: Database, subtests: Any) -> None:
    s = build(database)
    assert s.ledger.create_accounts([NewAccount(9, "EUR", 1, name="main:eur")])[0].result is A.OK
    for name, item, expected in ACCOUNT_ROWS:
        with subtests.test(msg=name):
            before = snapshot(s.ledger)
            (result,) = s.ledger.create_accounts([item])
            assert result.result is expected, result
            assert snapshot(s.ledger) == before
            if type(item.id) is int and 0 < item.id < HUGE and item.id not in range(1, 10):
                with pytest.raises(AccountNotFound):
                    s.ledger.account(item.id)
            if expected is A.EXISTS:
                assert s.ledger.create_account(item).id == item.id
                continue
            with pytest.raises(AccountRejected) as raised:
                s.ledger.create_account(item)
            assert type(raised.value) is ACCOUNT_ERRORS[expected]
            assert raised.value.code == f"account_{expected.value}"


def test_batch_too_large(database: Database) -> None:
    s = build(database)
    before = snapshot(s.ledger)
    n = limits.BATCH_SIZE_MAX + 1
    with pytest.raises(BatchTooLarge) as raised:
        s.ledger.create_transfers([NewTransfer(10_000 + i, 1, 2, 1, "EUR", 1) for i in range(n)])
    assert raised.value.code == "batch_too_large"
    with pytest.raises(BatchTooLarge):
        s.ledger.create_accounts([NewAccount(10_000 + i, "EUR", 1) for i in range(n)])
    assert snapshot(s.ledger) == before
    assert s.ledger.lookup_accounts([10_000]) == {}
    with GroupCommitter(s.ledger, max_batch=4) as committer, pytest.raises(BatchTooLarge):
        committer.submit([NewTransfer(20_000 + i, 1, 2, 1, "EUR", 1) for i in range(5)])
    assert snapshot(s.ledger) == before
    # exactly at the bound is fine
    full = [NewTransfer(30_000 + i, 1, 2, 1, "EUR", 1) for i in range(limits.BATCH_SIZE_MAX)]
    assert {r.result for r in s.ledger.create_transfers(full)} == {R.OK}


def test_empty_batches(database: Database) -> None:
    s = build(database)
    before = snapshot(s.ledger)
    assert s.ledger.create_transfers([]) == []
    assert s.ledger.create_accounts([]) == []
    assert snapshot(s.ledger) == before


def test_lookups_of_malformed_ids_find_nothing(database: Database, subtests: Any) -> None:
    s = build(database)
    for bad in (0, -1, HUGE, -(2**63) - 1, 2**80):
        with subtests.test(msg=f"id {bad}"):
            assert s.ledger.lookup_accounts([bad]) == {}
            assert s.ledger.lookup_transfers([bad]) == {}
            with pytest.raises(AccountNotFound):
                s.ledger.account(bad)
            with pytest.raises(TransferNotFound):
                s.ledger.transfer(bad)
            with pytest.raises(InvalidCursor):
                s.ledger.account_transfers(1, starting_after=bad)
    for bad_text in ("", "a\x00b", "a\ud800", "x" * 200):
        with subtests.test(msg=f"reference/name {bad_text[:5]!r}"):
            with pytest.raises(TransferNotFound):
                s.ledger.transfer_by_reference(bad_text)
            with pytest.raises(AccountNotFound):
                s.ledger.account_by_name(bad_text)


def test_unhashable_currencies_are_currency_invalid(database: Database) -> None:
    """A currency that cannot be hashed (a list, a dict) is malformed input like any other: its
    own code, nothing written, and the rest of the batch unaffected."""
    s = build(database)
    before = snapshot(s.ledger)
    for currency in (["EUR"], {"EUR": 2}):
        (result,) = s.ledger.create_transfers([change(currency=currency)])
        assert result.result is R.CURRENCY_INVALID
        (account,) = s.ledger.create_accounts([NewAccount(50, currency, 1)])  # type: ignore[arg-type]
        assert account.result is A.CURRENCY_INVALID
    assert snapshot(s.ledger) == before
    results = s.ledger.create_transfers(
        [NewTransfer(700, 1, 2, 1, "EUR", 1), change(id=701, currency=["EUR"])]
    )
    assert [r.result for r in results] == [R.OK, R.CURRENCY_INVALID]
