"""The result codes' check order, pinned as tables (STYLE rule 7).

- ``test_declaration_order_is_pinned``: the enum's order is the check order, so it is golden;
- ``test_every_code_has_a_producing_input``: one row per code, an input that produces it;
- ``test_earlier_category_wins``: for pairs of violations from different categories (and some
  within one), each violation alone gives its own code and together the earlier one wins;
- overflow codes: at the pure-engine level with balances next to the ceiling, and end to end
  over thousands of maximal transfers (slow).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from paykeep import limits
from paykeep.db import Database
from paykeep.ledger.errors import TRANSFER_ERRORS, TransferRejected
from paykeep.ledger.model import (
    TRANSFER_RESULT_ORDER,
    Balances,
    CreateTransferResult,
    NewTransfer,
    StoredPending,
    plan_transfers,
)
from tests.ledger.scenario import (
    EXPIRY,
    LINKED,
    PENDING,
    POST,
    T100,
    T103,
    T106,
    T108,
    T110,
    VOID,
    build,
    snapshot,
)

R = CreateTransferResult
GOLDEN_ORDER = [
    "ok", "linked_event_failed", "linked_event_chain_open",
    # shape
    "id_invalid", "reserved_flag", "flags_are_mutually_exclusive", "debit_account_id_invalid",
    "credit_account_id_invalid", "accounts_must_be_different", "amount_invalid",
    "amount_must_be_positive", "amount_exceeds_maximum", "currency_invalid", "code_invalid",
    "pending_id_must_be_zero", "pending_id_invalid", "pending_id_must_be_different",
    "timeout_reserved_for_pending_transfer", "timeout_invalid", "reference_invalid",
    "metadata_invalid",
    # idempotency
    "exists_with_different_flags", "exists_with_different_pending_id",
    "exists_with_different_timeout", "exists_with_different_debit_account_id",
    "exists_with_different_credit_account_id", "exists_with_different_amount",
    "exists_with_different_currency", "exists_with_different_code",
    "exists_with_different_reference", "exists_with_different_metadata", "exists",
    # references
    "reference_already_used", "debit_account_not_found", "credit_account_not_found",
    "pending_transfer_not_found",
    # state
    "accounts_must_have_the_same_currency", "transfer_must_have_the_same_currency_as_accounts",
    "pending_transfer_not_pending", "pending_transfer_has_different_debit_account_id",
    "pending_transfer_has_different_credit_account_id", "pending_transfer_has_different_currency",
    "pending_transfer_has_different_code", "exceeds_pending_transfer_amount",
    "pending_transfer_has_different_amount", "pending_transfer_already_posted",
    "pending_transfer_already_voided", "pending_transfer_expired", "pending_transfer_not_expired",
    # limits
    "overflows_debits_pending", "overflows_credits_pending", "overflows_debits_posted",
    "overflows_credits_posted", "overflows_debits", "overflows_credits", "exceeds_credits",
    "exceeds_debits",
]  # fmt: skip
OVERFLOWS = {code for code in R if code.value.startswith("overflows_")}
#: Unreachable through the ledger: a post/void must name the pending transfer's accounts, and
#: an account's currency never changes, so a mismatching currency is always caught earlier by
#: ``transfer_must_have_the_same_currency_as_accounts``. Shown at the engine level instead.
ENGINE_ONLY = {R.PENDING_TRANSFER_HAS_DIFFERENT_CURRENCY}
#: Only the ledger's own expiry sweep may flag a void ``EXPIRY`` (a client gets
#: ``reserved_flag``); shown through the sweep's entry point below.
SWEEP_ONLY = {R.PENDING_TRANSFER_NOT_EXPIRED}


def test_declaration_order_is_pinned() -> None:
    assert [code.value for code in R] == GOLDEN_ORDER
    assert [TRANSFER_RESULT_ORDER[code] for code in R] == list(range(len(GOLDEN_ORDER)))


def plain(tid: int, **changes: Any) -> NewTransfer:
    return dataclasses.replace(NewTransfer(tid, 1, 2, 10, "EUR", 1), **changes)


def post(tid: int, pending_id: int, **changes: Any) -> NewTransfer:
    return dataclasses.replace(NewTransfer(tid, flags=POST, pending_id=pending_id), **changes)


# (expected code, batch, index of the item whose result is checked)
CODE_ROWS: list[tuple[R, list[NewTransfer], int]] = [
    (R.LINKED_EVENT_FAILED, [plain(200, flags=LINKED), plain(201, amount_minor=0)], 0),
    (R.LINKED_EVENT_CHAIN_OPEN, [plain(202, flags=LINKED)], 0),
    (R.ID_INVALID, [plain(0)], 0),
    (R.RESERVED_FLAG, [plain(203, flags=EXPIRY)], 0),
    (R.FLAGS_ARE_MUTUALLY_EXCLUSIVE, [post(204, 101, flags=POST | VOID)], 0),
    (R.DEBIT_ACCOUNT_ID_INVALID, [plain(205, debit_account_id=0)], 0),
    (R.CREDIT_ACCOUNT_ID_INVALID, [plain(206, credit_account_id=-1)], 0),
    (R.ACCOUNTS_MUST_BE_DIFFERENT, [plain(207, credit_account_id=1)], 0),
    (R.AMOUNT_INVALID, [plain(208, amount_minor="10")], 0),
    (R.AMOUNT_MUST_BE_POSITIVE, [plain(209, amount_minor=-1)], 0),
    (R.AMOUNT_EXCEEDS_MAXIMUM, [plain(210, amount_minor=limits.AMOUNT_MAX_MINOR + 1)], 0),
    (R.CURRENCY_INVALID, [plain(211, currency="XXX")], 0),
    (R.CODE_INVALID, [plain(212, code=limits.CODE_MAX + 1)], 0),
    (R.PENDING_ID_MUST_BE_ZERO, [plain(213, pending_id=101)], 0),
    (R.PENDING_ID_INVALID, [post(214, 0)], 0),
    (R.PENDING_ID_MUST_BE_DIFFERENT, [post(215, 215)], 0),
    (R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER, [plain(216, timeout_s=5)], 0),
    (
        R.TIMEOUT_INVALID,
        [plain(217, flags=PENDING, timeout_s=limits.HOLD_TIMEOUT_MAX_S + 1)],
        0,
    ),
    (R.REFERENCE_INVALID, [plain(218, reference="")], 0),
    (R.METADATA_INVALID, [plain(219, metadata={"fee": 0.5})], 0),
    (R.EXISTS_WITH_DIFFERENT_FLAGS, [dataclasses.replace(T100, flags=PENDING)], 0),
    (R.EXISTS_WITH_DIFFERENT_PENDING_ID, [dataclasses.replace(T103, pending_id=101)], 0),
    (R.EXISTS_WITH_DIFFERENT_TIMEOUT, [dataclasses.replace(T106, timeout_s=9)], 0),
    (R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID, [dataclasses.replace(T100, debit_account_id=3)], 0),
    (
        R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID,
        [dataclasses.replace(T100, credit_account_id=3)],
        0,
    ),
    (R.EXISTS_WITH_DIFFERENT_AMOUNT, [dataclasses.replace(T100, amount_minor=51)], 0),
    (R.EXISTS_WITH_DIFFERENT_CURRENCY, [dataclasses.replace(T100, currency="JPY")], 0),
    (R.EXISTS_WITH_DIFFERENT_CODE, [dataclasses.replace(T100, code=2)], 0),
    (R.EXISTS_WITH_DIFFERENT_REFERENCE, [dataclasses.replace(T100, reference="other")], 0),
    (R.EXISTS_WITH_DIFFERENT_METADATA, [dataclasses.replace(T100, metadata={"a": "b"})], 0),
    (R.EXISTS, [T100], 0),
    (R.REFERENCE_ALREADY_USED, [plain(220, reference="ref-100")], 0),
    (R.DEBIT_ACCOUNT_NOT_FOUND, [plain(221, debit_account_id=999)], 0),
    (R.CREDIT_ACCOUNT_NOT_FOUND, [plain(222, credit_account_id=999)], 0),
    (R.PENDING_TRANSFER_NOT_FOUND, [post(223, 999)], 0),
    (R.ACCOUNTS_MUST_HAVE_THE_SAME_CURRENCY, [plain(224, credit_account_id=5)], 0),
    (R.TRANSFER_MUST_HAVE_THE_SAME_CURRENCY_AS_ACCOUNTS, [plain(225, currency="JPY")], 0),
    (R.PENDING_TRANSFER_NOT_PENDING, [post(226, 100)], 0),
    (
        R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID,
        [post(227, 101, debit_account_id=3, credit_account_id=2)],
        0,
    ),
    (R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID, [post(228, 101, credit_account_id=3)], 0),
    (R.PENDING_TRANSFER_HAS_DIFFERENT_CODE, [post(229, 101, code=2)], 0),
    (R.EXCEEDS_PENDING_TRANSFER_AMOUNT, [post(230, 101, amount_minor=101)], 0),
    (
        R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT,
        [post(231, 101, flags=VOID, amount_minor=99)],
        0,
    ),
    (R.PENDING_TRANSFER_ALREADY_POSTED, [post(232, 102)], 0),
    (R.PENDING_TRANSFER_ALREADY_POSTED, [post(233, 109, amount_minor=10)], 0),
    (R.PENDING_TRANSFER_ALREADY_VOIDED, [post(234, 104, flags=VOID)], 0),
    (R.PENDING_TRANSFER_EXPIRED, [post(235, 107)], 0),  # swept
    (R.PENDING_TRANSFER_EXPIRED, [post(236, 106)], 0),  # due, not yet swept
    (R.PENDING_TRANSFER_EXPIRED, [post(237, 106, flags=VOID)], 0),
    (R.EXCEEDS_CREDITS, [plain(238, debit_account_id=7, amount_minor=1)], 0),
    (R.EXCEEDS_CREDITS, [plain(239, debit_account_id=3, amount_minor=1_001)], 0),
    (R.EXCEEDS_DEBITS, [plain(240, credit_account_id=4, amount_minor=1_001)], 0),
    (R.EXISTS, [T108], 0),  # a replay of a transfer that drained its limited account
    (R.EXISTS, [T103], 0),  # a replay of a post whose hold is now resolved
    (R.EXISTS, [T110], 0),  # ... a partial one
    (R.EXISTS, [plain(241, flags=LINKED), plain(241, flags=LINKED), plain(242)], 1),
    (R.OK, [plain(243)], 0),
]


def _result(scenario_ledger: Any, batch: list[NewTransfer], index: int) -> R:
    return scenario_ledger.create_transfers(batch)[index].result  # type: ignore[no-any-return]


def test_every_code_has_a_producing_input(database: Database, subtests: Any) -> None:
    s = build(database)
    seen: set[R] = set()
    for expected, batch, index in CODE_ROWS:
        with subtests.test(msg=expected.value, batch=batch):
            before = snapshot(s.ledger)
            got = s.ledger.create_transfers(batch)
            assert got[index].result is expected, got
            if all(r.result is not R.OK for r in got):
                assert snapshot(s.ledger) == before  # a rejection writes nothing
            if len(batch) == 1 and expected not in (R.OK, R.EXISTS):
                # The single-item call raises the typed error whose code is the result.
                with pytest.raises(TransferRejected) as raised:
                    s.ledger.create_transfer(batch[0])
                assert type(raised.value) is TRANSFER_ERRORS[expected]
                assert raised.value.code == expected.value
        seen.add(expected)
    missing = set(R) - seen - OVERFLOWS - ENGINE_ONLY - SWEEP_ONLY
    assert not missing, sorted(m.value for m in missing)


def test_the_sweep_expires_only_holds_the_journal_says_are_due(database: Database) -> None:
    s = build(database)
    s.ledger.create_transfers([plain(250, flags=PENDING, timeout_s=60)])
    before = snapshot(s.ledger)
    sweep = [
        NewTransfer(251, flags=VOID | EXPIRY, pending_id=101),  # no timeout at all
        NewTransfer(252, flags=VOID | EXPIRY, pending_id=250),  # due in 60 s
    ]
    got = s.ledger._create_transfers(sweep, range(len(sweep)), sweeping=True)
    assert [r.result for r in got] == [R.PENDING_TRANSFER_NOT_EXPIRED] * 2
    assert snapshot(s.ledger) == before
    s.clock.advance(61)  # the hold's own timestamp is a little after the clock read above
    got = s.ledger._create_transfers(sweep[1:], range(1), sweeping=True)
    assert [r.result for r in got] == [R.OK]


def rep(t: NewTransfer, **changes: Any) -> NewTransfer:
    return dataclasses.replace(t, **changes)


def new(t: NewTransfer, **changes: Any) -> NewTransfer:
    """The same request under an id never used: what it would get if it were not a replay."""
    return dataclasses.replace(t, id=t.id + 100_000, **changes)


# Pair rows: (A, B, input violating only A, input violating only B, input violating both).
# A comes earlier in the check order; each alone gives its own code, together A wins.
PAIRS: list[tuple[R, R, NewTransfer, NewTransfer, NewTransfer]] = [
    # shape beats idempotency
    (R.AMOUNT_MUST_BE_POSITIVE, R.EXISTS_WITH_DIFFERENT_CODE,
     new(T100, amount_minor=0, reference=None), rep(T100, code=2),
     rep(T100, amount_minor=0, code=2)),
    (R.REFERENCE_INVALID, R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID,
     new(T100, reference="x" * 129), rep(T100, debit_account_id=3),
     rep(T100, debit_account_id=3, reference="x" * 129)),
    # shape beats references
    (R.METADATA_INVALID, R.DEBIT_ACCOUNT_NOT_FOUND,
     plain(300, metadata={"n": [1]}), plain(300, debit_account_id=999),
     plain(300, metadata={"n": [1]}, debit_account_id=999)),
    (R.CODE_INVALID, R.REFERENCE_ALREADY_USED,
     plain(301, code=0), plain(301, reference="ref-100"), plain(301, code=0, reference="ref-100")),
    (R.PENDING_ID_MUST_BE_DIFFERENT, R.PENDING_TRANSFER_NOT_FOUND,
     post(302, 302), post(302, 999), post(999, 999)),
    # shape beats state
    (R.CURRENCY_INVALID, R.ACCOUNTS_MUST_HAVE_THE_SAME_CURRENCY,
     plain(303, currency="eur"), plain(303, credit_account_id=5),
     plain(303, currency="eur", credit_account_id=5)),
    (R.AMOUNT_INVALID, R.PENDING_TRANSFER_ALREADY_POSTED,
     post(304, 101, amount_minor=1.0), post(304, 102), post(304, 102, amount_minor=1.0)),
    # shape beats limits
    (R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER, R.EXCEEDS_CREDITS,
     plain(305, timeout_s=1), plain(305, debit_account_id=7),
     plain(305, timeout_s=1, debit_account_id=7)),
    # idempotency beats references
    (R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID, R.DEBIT_ACCOUNT_NOT_FOUND,
     rep(T100, debit_account_id=3), new(T100, debit_account_id=999, reference=None),
     rep(T100, debit_account_id=999)),
    (R.EXISTS_WITH_DIFFERENT_AMOUNT, R.REFERENCE_ALREADY_USED,
     rep(T100, amount_minor=1), new(T100), rep(T100, amount_minor=1)),
    # idempotency beats state
    (R.EXISTS_WITH_DIFFERENT_CURRENCY, R.TRANSFER_MUST_HAVE_THE_SAME_CURRENCY_AS_ACCOUNTS,
     rep(T100, currency="GBP"), new(T100, currency="JPY", reference=None),
     rep(T100, currency="JPY")),
    (R.EXISTS, R.PENDING_TRANSFER_ALREADY_POSTED, T103, new(T103), T103),
    (R.EXISTS, R.PENDING_TRANSFER_ALREADY_POSTED, T110, new(T110), T110),
    # idempotency beats limits
    (R.EXISTS, R.EXCEEDS_CREDITS, T108, new(T108), T108),
    (R.EXISTS_WITH_DIFFERENT_AMOUNT, R.EXCEEDS_CREDITS,
     rep(T100, amount_minor=1), new(T108, amount_minor=999), rep(T108, amount_minor=999)),
    # references beat state
    (R.REFERENCE_ALREADY_USED, R.ACCOUNTS_MUST_HAVE_THE_SAME_CURRENCY,
     plain(307, reference="ref-100"), plain(307, credit_account_id=5),
     plain(307, reference="ref-100", credit_account_id=5)),
    (R.PENDING_TRANSFER_NOT_FOUND, R.PENDING_TRANSFER_NOT_PENDING,
     post(308, 999), post(308, 100), post(308, 999, debit_account_id=1, credit_account_id=5)),
    # references beat limits
    (R.REFERENCE_ALREADY_USED, R.EXCEEDS_CREDITS,
     plain(309, reference="ref-100"), plain(309, debit_account_id=7),
     plain(309, reference="ref-100", debit_account_id=7)),
    (R.CREDIT_ACCOUNT_NOT_FOUND, R.EXCEEDS_CREDITS,
     plain(310, credit_account_id=999), plain(310, debit_account_id=7),
     plain(310, credit_account_id=999, debit_account_id=7)),
    # state beats limits
    (R.TRANSFER_MUST_HAVE_THE_SAME_CURRENCY_AS_ACCOUNTS, R.EXCEEDS_CREDITS,
     plain(311, currency="JPY"), plain(311, debit_account_id=7),
     plain(311, currency="JPY", debit_account_id=7)),
    (R.ACCOUNTS_MUST_HAVE_THE_SAME_CURRENCY, R.EXCEEDS_DEBITS,
     plain(312, debit_account_id=5), plain(312, credit_account_id=4, amount_minor=1_001),
     plain(312, debit_account_id=5, credit_account_id=4, amount_minor=1_001)),
    # within a category, the declaration order
    (R.ID_INVALID, R.AMOUNT_MUST_BE_POSITIVE,
     plain(0), plain(313, amount_minor=0), plain(0, amount_minor=0)),
    (R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID, R.EXISTS_WITH_DIFFERENT_AMOUNT,
     rep(T100, debit_account_id=3), rep(T100, amount_minor=51),
     rep(T100, debit_account_id=3, amount_minor=51)),
    (R.DEBIT_ACCOUNT_NOT_FOUND, R.CREDIT_ACCOUNT_NOT_FOUND,
     plain(314, debit_account_id=998), plain(314, credit_account_id=999),
     plain(314, debit_account_id=998, credit_account_id=999)),
    (R.PENDING_TRANSFER_HAS_DIFFERENT_CODE, R.EXCEEDS_PENDING_TRANSFER_AMOUNT,
     post(315, 101, code=2), post(315, 101, amount_minor=101),
     post(315, 101, code=2, amount_minor=101)),
    (R.EXCEEDS_PENDING_TRANSFER_AMOUNT, R.PENDING_TRANSFER_ALREADY_POSTED,
     post(316, 101, amount_minor=101), post(316, 102), post(316, 102, amount_minor=101)),
    (R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT, R.PENDING_TRANSFER_EXPIRED,
     post(317, 101, flags=VOID, amount_minor=1), post(317, 106, flags=VOID),
     post(317, 106, flags=VOID, amount_minor=1)),
    (R.EXCEEDS_CREDITS, R.EXCEEDS_DEBITS,
     plain(318, debit_account_id=7), plain(318, credit_account_id=4, amount_minor=1_001),
     plain(318, debit_account_id=7, credit_account_id=4, amount_minor=1_001)),
]  # fmt: skip


def test_earlier_category_wins(database: Database, subtests: Any) -> None:
    s = build(database)
    for first, second, only_a, only_b, both in PAIRS:
        assert TRANSFER_RESULT_ORDER[first] < TRANSFER_RESULT_ORDER[second]
        with subtests.test(msg=f"{first.value} before {second.value}"):
            before = snapshot(s.ledger)
            assert _result(s.ledger, [only_a], 0) is first
            assert _result(s.ledger, [only_b], 0) is second
            assert _result(s.ledger, [both], 0) is first
            assert snapshot(s.ledger) == before


# ---------------------------------------------------------------------------------------------
# Overflow codes
# ---------------------------------------------------------------------------------------------

MAX = limits.BALANCE_MAX_MINOR
HALF = MAX // 2


def _bal(dp: int = 0, dpo: int = 0, cp: int = 0, cpo: int = 0) -> Balances:
    return Balances("EUR", 0, dp, dpo, cp, cpo)


# (expected, debit balances, credit balances, flags): amount 10 each time
OVERFLOW_ROWS = [
    (R.OVERFLOWS_DEBITS_PENDING, _bal(dp=MAX - 5), _bal(), PENDING),
    (R.OVERFLOWS_CREDITS_PENDING, _bal(), _bal(cp=MAX - 5), PENDING),
    (R.OVERFLOWS_DEBITS_POSTED, _bal(dpo=MAX - 5), _bal(), 0),
    (R.OVERFLOWS_CREDITS_POSTED, _bal(), _bal(cpo=MAX - 5), 0),
    (R.OVERFLOWS_DEBITS, _bal(dp=HALF + 1, dpo=HALF), _bal(), 0),
    (R.OVERFLOWS_CREDITS, _bal(), _bal(cp=HALF, cpo=HALF + 1), PENDING),
    # precedence among them
    (R.OVERFLOWS_DEBITS_PENDING, _bal(dp=MAX - 5), _bal(cp=MAX - 5), PENDING),
    (R.OVERFLOWS_CREDITS_PENDING, _bal(dp=HALF + 1, dpo=HALF), _bal(cp=MAX - 5), PENDING),
    (R.OVERFLOWS_DEBITS_POSTED, _bal(dpo=MAX - 5), _bal(cpo=MAX - 5), 0),
    (R.OVERFLOWS_DEBITS, _bal(dp=HALF + 1, dpo=HALF), _bal(cp=HALF, cpo=HALF + 1), 0),
    # exactly at the ceiling is allowed
    (R.OK, _bal(dpo=MAX - 10), _bal(cpo=MAX - 10), 0),
]


@pytest.mark.parametrize(("expected", "debit", "credit", "flags"), OVERFLOW_ROWS)
def test_overflow_codes_in_the_engine(
    expected: R, debit: Balances, credit: Balances, flags: int
) -> None:
    plan = plan_transfers(
        [NewTransfer(1, 10, 20, 10, "EUR", 1, flags=flags)],
        accounts={10: debit, 20: credit},
        stored={},
        pendings={},
        resolutions={},
        references={},
        now_ns=1,
    )
    assert plan.results == [expected]
    if expected is not R.OK:
        assert plan.planned == []


def test_pending_transfer_has_different_currency_in_the_engine() -> None:
    # Only reachable if a stored pending's currency disagreed with its accounts' (the database
    # refuses that on PostgreSQL); the engine still has a rule for it, ordered after accounts.
    pending = StoredPending(5, 10, 20, 100, "USD", 1, PENDING, 0)
    plan = plan_transfers(
        [NewTransfer(6, flags=POST, pending_id=5, currency="EUR")],
        accounts={10: _bal(), 20: _bal()},
        stored={},
        pendings={5: pending},
        resolutions={},
        references={},
        now_ns=1,
    )
    assert plan.results == [R.PENDING_TRANSFER_HAS_DIFFERENT_CURRENCY]


def test_overflow_end_to_end(database: Database) -> None:
    """9,223 maximal transfers fill an account's debits to just under the BIGINT ceiling; the
    next one overflows debits_posted, and a hold overflows debits_pending + debits_posted."""
    s = build(database)
    amount = limits.AMOUNT_MAX_MINOR
    fits = MAX // amount  # 9,223
    first = [NewTransfer(10_000 + i, 5, 6, amount, "JPY", 1) for i in range(limits.BATCH_SIZE_MAX)]
    rest = [
        NewTransfer(20_000 + i, 5, 6, amount, "JPY", 1) for i in range(fits - limits.BATCH_SIZE_MAX)
    ]
    for batch in (first, rest):
        assert {r.result for r in s.ledger.create_transfers(batch)} == {R.OK}
    a = s.ledger.account(5)
    assert a.debits_posted == fits * amount
    over = s.ledger.create_transfers(
        [
            NewTransfer(30_000, 5, 6, amount, "JPY", 1),
            NewTransfer(30_001, 5, 6, amount, "JPY", 1, flags=PENDING),
            NewTransfer(30_002, 6, 5, amount, "JPY", 1),  # the other way is fine
        ]
    )
    assert [r.result for r in over] == [R.OVERFLOWS_DEBITS_POSTED, R.OVERFLOWS_DEBITS, R.OK]
    b = s.ledger.account(6)
    assert (b.credits_posted, b.debits_posted) == (fits * amount, amount)


def test_every_rejection_has_a_typed_error_in_its_family() -> None:
    """Each result but ok/exists has one error class with that code, in the family its category
    implies (what an API maps to a status: 400, 404, 409, 422, 402)."""
    order = list(R)
    shape_end = order.index(R.METADATA_INVALID)
    idempotency_end = order.index(R.EXISTS)
    references_end = order.index(R.PENDING_TRANSFER_NOT_FOUND)
    assert set(TRANSFER_ERRORS) == set(R) - {R.OK, R.EXISTS}
    for code, cls in TRANSFER_ERRORS.items():
        position = order.index(code)
        if code in (R.EXCEEDS_CREDITS, R.EXCEEDS_DEBITS):
            family = "insufficient_funds"
        elif position <= shape_end:
            family = "invalid_request"  # including the two linked-chain results
        elif position <= idempotency_end or code is R.REFERENCE_ALREADY_USED:
            family = "conflict"
        elif position <= references_end:
            family = "not_found"
        else:
            family = "unprocessable"
        assert (cls.code, cls.type, cls.result) == (code.value, family, code), cls
        assert issubclass(cls, TransferRejected)
    assert len({cls.__name__ for cls in TRANSFER_ERRORS.values()}) == len(TRANSFER_ERRORS)
