"""Property: statements the bank writes parse back through Paykeep's importer intact.

Random incoming transfers (some after the cut-off) and payout files over a few business days;
every end-of-day statement, as camt.053.001.02, camt.053.001.08 and MT940, is read back by
``paykeep.gateway.statements.parse`` with its balances, dates, amounts and references as the
bank booked them (an independent record kept by the test).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paykeep.gateway.statements import parse
from tests.banksim.bank.helpers import close_day, incoming, open_account, payment_file, statement

REFERENCE = st.from_regex(r"[A-Z][A-Z0-9]{2,5}-[A-Za-z0-9]{1,12}", fullmatch=True)


@dataclass(frozen=True)
class Booked:
    amount_minor: int
    booking_date: dt.date
    value_date: dt.date
    end_to_end_id: str | None
    remittance: str


incoming_op = st.tuples(
    st.just("in"), st.integers(1, 5_000_000), REFERENCE, st.booleans(), st.booleans()
)
payout_op = st.tuples(st.just("out"), st.lists(st.integers(1, 300_000), min_size=1, max_size=4))
day = st.lists(st.one_of(incoming_op, payout_op), max_size=5)


def _next_business_day(d: dt.date) -> dt.date:
    d += dt.timedelta(days=1)
    while d.weekday() >= 5:
        d += dt.timedelta(days=1)
    return d


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(opening=st.integers(0, 2_000_000), days=st.lists(day, min_size=1, max_size=3))
def test_statements_round_trip_through_the_importer(
    http: httpx.Client, opening: int, days: list[list[tuple[object, ...]]]
) -> None:
    iban = open_account(http, balance=opening, business_date="2026-01-08")  # a Thursday
    balance = opening
    today = dt.date(2026, 1, 8)
    for operations in days:
        booked: list[Booked] = []
        for op in operations:
            if op[0] == "in":
                _, amount, reference, late, with_e2e = op
                assert isinstance(amount, int) and isinstance(reference, str)
                e2e = f"E2E{reference[-8:]}" if with_e2e else None
                incoming(http, iban, amount, reference, after_cutoff=bool(late),
                         end_to_end_id=e2e)  # fmt: skip
                value = _next_business_day(today) if late else today
                booked.append(Booked(amount, today, value, e2e, reference))
                balance += amount
            else:
                amounts = op[1]
                assert isinstance(amounts, list)
                _, document, e2e_ids = payment_file(iban, amounts)
                answer = http.post("/bank/payment-files", content=document).json()
                if sum(amounts) <= balance:
                    assert answer["group_status"] == "ACCP"
                    for i, (amount, e2e_id) in enumerate(zip(amounts, e2e_ids, strict=True)):
                        booked.append(Booked(-amount, today, today, e2e_id, f"Payout {i}"))
                    balance -= sum(amounts)
                else:
                    assert answer["reason"]["code"] == "AM04"
        closed = close_day(http, iban)
        assert closed["closing_booked_minor"] == balance
        for fmt, version in (("camt053", "02"), ("camt053", "08"), ("mt940", "02")):
            data = statement(http, closed["statement_id"], fmt, version)
            (parsed,) = parse(data)
            where = f"{fmt}.{version}"
            assert parsed.account == iban, where
            assert parsed.currency == "EUR", where
            assert parsed.statement_id.startswith(closed["statement_id"]), where
            assert parsed.opening_booked_minor == closed["opening_booked_minor"], where
            assert parsed.closing_booked_minor == closed["closing_booked_minor"], where
            assert len(parsed.entries) == len(booked), where
            for entry, expected in zip(parsed.entries, booked, strict=True):
                assert entry.amount_minor == expected.amount_minor, where
                assert entry.currency == "EUR", where
                assert entry.booking_date == expected.booking_date, where
                assert entry.value_date == expected.value_date, where
                assert entry.end_to_end_id in (expected.end_to_end_id, "NOTPROVIDED"), where
                if expected.end_to_end_id:
                    assert entry.end_to_end_id == expected.end_to_end_id, where
                if expected.amount_minor > 0:
                    # A received payment's remittance reference is the line's reference.
                    assert entry.reference == expected.remittance, where
                # MT940 carries the remittance text in :86: SVWZ+; camt.053 in RmtInf/Ustrd.
                assert entry.remittance_info == expected.remittance, where
        today = _next_business_day(today)
