"""The hash chain's encoding: the sealed (inlined) digest equals the reference ``row_digest``,
and the encoding is unambiguous."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from paykeep.ledger.model import (
    GENESIS_HASH,
    JournalHead,
    PlannedTransfer,
    row_digest,
    seal,
)

ids = st.integers(min_value=1, max_value=2**63 - 1)
texts = st.one_of(st.none(), st.text(min_size=1, max_size=20))


@st.composite
def planned(draw: st.DrawFn) -> list[PlannedTransfer]:
    out = []
    for index in range(draw(st.integers(min_value=1, max_value=5))):
        out.append(
            PlannedTransfer(
                index=index,
                id=draw(ids),
                debit_account_id=draw(ids),
                credit_account_id=draw(ids),
                amount_minor=draw(st.integers(min_value=1, max_value=10**15)),
                currency=draw(st.sampled_from(["EUR", "JPY", "KWD"])),
                code=draw(st.integers(min_value=1, max_value=65535)),
                flags=draw(st.sampled_from([0, 1, 2, 4, 8])),
                pending_id=draw(st.one_of(st.just(0), ids)),
                timeout_s=draw(st.integers(min_value=0, max_value=3600)),
                reference=draw(texts),
                metadata_json=draw(texts),
            )
        )
    return out


@given(
    planned(),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=2**62),
)
def test_sealed_hashes_equal_the_reference_digest(
    rows: list[PlannedTransfer], last_seq: int, now_ns: int
) -> None:
    head = JournalHead(last_seq, now_ns // 2, GENESIS_HASH)
    sealed = seal(rows, head, now_ns)
    prev = head.last_hash
    previous_ts = head.last_timestamp_ns
    for row, p in zip(sealed.rows, rows, strict=True):
        seq, tid, debit, credit, amount, currency, code, flags, pending_id, timeout_s, expires, \
            ref, meta, ts, digest = row  # fmt: skip
        assert (tid, debit, credit, amount) == (
            p.id, p.debit_account_id, p.credit_account_id, p.amount_minor,
        )  # fmt: skip
        assert ts > previous_ts and ts >= now_ns
        assert expires == (ts + timeout_s * 10**9 if timeout_s else 0)
        expected = row_digest(
            prev, seq, tid, debit, credit, amount, currency, code, flags, pending_id,
            timeout_s, expires, ref or None, meta or None, ts,
        )  # fmt: skip
        assert digest == expected
        prev, previous_ts = digest, ts
    assert sealed.head.last_hash == prev
    assert sealed.head.last_seq == last_seq + len(rows)


@given(st.text(max_size=10), st.text(max_size=10), st.text(max_size=10))
def test_reference_and_metadata_boundaries_are_unambiguous(a: str, b: str, c: str) -> None:
    """Moving characters between reference and metadata always changes the digest."""

    def digest(reference: str, metadata: str) -> str:
        return row_digest(GENESIS_HASH, 1, 1, 1, 2, 5, "EUR", 1, 0, 0, 0, 0,
                          reference or None, metadata or None, 1)  # fmt: skip

    if b:
        assert digest(a + b, c) != digest(a, b + c)
