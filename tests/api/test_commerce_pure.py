"""The pure parts of the commerce routes: the carrier signature scheme, tracking event times
and in-memory pages (no server)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paykeep.api.errors import ParameterInvalid
from paykeep.api.pagination import PageParams
from paykeep.api.routes.commerce import (
    EVENT_CLOCK_SKEW_S,
    SIGNATURE_HEADER_LENGTH_MAX,
    SIGNATURE_TOLERANCE_S,
    carrier_signature,
    event_time_ns,
    page_after,
    signature_header,
    verify_carrier_signature,
)
from paykeep.clock import NS_PER_S

NOW_S = 1_767_225_600
secrets_ = st.text(min_size=1, max_size=64)
bodies = st.binary(max_size=512)
offsets = st.integers(-SIGNATURE_TOLERANCE_S, SIGNATURE_TOLERANCE_S)


def test_the_signature_is_hmac_sha256_of_t_dot_body() -> None:
    # A worked example a carrier can check its implementation against.
    secret, t, body = "csec_example", 1_767_225_600, b'{"kind":"delivered"}'
    expected = hmac.new(
        b"csec_example", b'1767225600.{"kind":"delivered"}', hashlib.sha256
    ).hexdigest()
    assert carrier_signature(secret, t, body) == expected
    assert signature_header(secret, t, body) == f"t=1767225600,v1={expected}"


@given(secrets_, bodies, offsets)
def test_a_signature_within_the_tolerance_verifies(secret: str, body: bytes, offset: int) -> None:
    header = signature_header(secret, NOW_S + offset, body)
    assert verify_carrier_signature(header, body, secret, NOW_S)


@given(secrets_, bodies, st.integers(SIGNATURE_TOLERANCE_S + 1, 10**6), st.sampled_from([-1, 1]))
def test_a_signature_outside_the_tolerance_fails(
    secret: str, body: bytes, distance: int, sign: int
) -> None:
    header = signature_header(secret, NOW_S + sign * distance, body)
    assert not verify_carrier_signature(header, body, secret, NOW_S)


@given(secrets_, bodies, bodies, offsets)
def test_another_body_fails(secret: str, body: bytes, other: bytes, offset: int) -> None:
    header = signature_header(secret, NOW_S + offset, body)
    assert verify_carrier_signature(header, other, secret, NOW_S) == (other == body)


@given(secrets_, secrets_, bodies)
def test_another_secret_fails(secret: str, other: str, body: bytes) -> None:
    header = signature_header(secret, NOW_S, body)
    assert verify_carrier_signature(header, body, other, NOW_S) == (other == secret)


@given(secrets_, bodies, st.integers(1, 200))
def test_a_changed_timestamp_fails(secret: str, body: bytes, shift: int) -> None:
    # The timestamp is signed: moving it (to dodge the tolerance) breaks the signature.
    signature = carrier_signature(secret, NOW_S - SIGNATURE_TOLERANCE_S - shift, body)
    assert not verify_carrier_signature(f"t={NOW_S},v1={signature}", body, secret, NOW_S)


@given(secrets_, bodies, st.lists(st.text(alphabet="0123456789abcdef", max_size=64), max_size=5))
def test_one_good_signature_among_several_suffices(
    secret: str, body: bytes, others: list[str]
) -> None:
    good = carrier_signature(secret, NOW_S, body)
    header = ",".join([f"t={NOW_S}", *(f"v1={o}" for o in others), f"v1={good}", "v0=old"])
    assert verify_carrier_signature(header, body, secret, NOW_S)


@given(st.text(max_size=300))
def test_arbitrary_headers_never_raise(header: str) -> None:
    assert verify_carrier_signature(header, b"{}", "csec_x", NOW_S) in (True, False)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "t=1767225600",
        "v1=00",
        "t=abc,v1=00",
        "t=1767225600,t=1767225600,v1={sig}",  # two timestamps
        "t=-1767225600,v1={sig}",
        "t=１７６７２２５６００,v1={sig}",  # non-ASCII digits
        "t=1767225600;v1={sig}",
        "t=1767225600,v1={sig}" + ",v1=00" * 8,  # too many signatures
        "t=1767225600,v1={sig}," + "x" * SIGNATURE_HEADER_LENGTH_MAX,  # too long
        "t=1767225600,v1={SIG}",  # the digest is compared as sent (lower-case hex)
    ],
)
def test_malformed_headers_fail(header: str | None) -> None:
    body = b"{}"
    sig = carrier_signature("csec_x", NOW_S, body)
    filled = None if header is None else header.format(sig=sig, SIG=sig.upper())
    assert not verify_carrier_signature(filled, body, "csec_x", NOW_S)
    assert verify_carrier_signature(f"t={NOW_S},v1={sig}", body, "csec_x", NOW_S)


# -- event times ----------------------------------------------------------------------------

CREATED_NS = (NOW_S - 3600) * NS_PER_S
NOW_NS = NOW_S * NS_PER_S


def test_an_event_without_a_time_happens_now() -> None:
    assert event_time_ns(None, CREATED_NS, NOW_NS) == NOW_NS


@given(st.integers(-(10**12), 10**12))
def test_event_times_are_bounded_by_the_shipments_life(occurred_at: int) -> None:
    low = CREATED_NS // NS_PER_S - EVENT_CLOCK_SKEW_S
    high = NOW_S + EVENT_CLOCK_SKEW_S
    if low <= occurred_at <= high:
        assert event_time_ns(occurred_at, CREATED_NS, NOW_NS) == occurred_at * NS_PER_S
    else:
        with pytest.raises(ParameterInvalid) as refused:
            event_time_ns(occurred_at, CREATED_NS, NOW_NS)
        assert refused.value.param == "occurred_at"


# -- in-memory pages ------------------------------------------------------------------------


@given(st.integers(1, 30), st.integers(1, 7))
def test_in_memory_pages_cover_the_list_once_in_order(size: int, limit: int) -> None:
    rows = [f"key_{i:04d}" for i in range(size)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = PageParams(limit=limit, starting_after=cursor, url="/v1/api_keys")
        fetched = page_after(rows, lambda r: r, page)
        assert len(fetched) <= page.fetch
        seen.extend(fetched[:limit])
        if len(fetched) <= limit:
            break
        cursor = fetched[limit - 1]
    assert seen == rows


def test_an_unknown_cursor_is_refused() -> None:
    page = PageParams(limit=2, starting_after="key_nope", url="/v1/api_keys")
    with pytest.raises(ParameterInvalid):
        page_after(["key_a", "key_b"], lambda r: r, page)
