"""API keys: creation, storage (hash only), authentication, revocation, listing, the cache."""

from __future__ import annotations

import hashlib
import re

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from paykeep.clock import FakeClock
from paykeep.db import Database
from paykeep.security.api_keys import (
    AUTH_CACHE_TTL_S,
    ApiKeyInputInvalid,
    ApiKeyInvalid,
    ApiKeyMerchantUnknown,
    ApiKeyNotFound,
    ApiKeyService,
    Principal,
    hash_key,
    is_well_formed,
)
from tests.api_foundation.conftest import ApiServer


def _merchant(database: Database, merchant_id: str) -> str:
    with database.write() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO payments_merchants (id, legal_name, country, currency, "
                "payout_iban_verified, fee_percent_bp, fee_fixed_minor, reserve_percent_bp, "
                "reserve_hold_s, unpaid_close_s, ship_by_s, confirm_after_delivery_s, "
                "confirm_after_shipping_s, payment_reference, created_at_ns) VALUES (:id, "
                "'Shop', 'DE', 'EUR', false, 0, 0, 0, 0, 1, 1, 1, 1, :ref, 0)"
            ),
            {"id": merchant_id, "ref": "REF" + merchant_id},
        )
    return merchant_id


def test_keys_have_the_documented_shape_and_only_their_hash_is_stored(database: Database) -> None:
    service = ApiKeyService(database)
    merchant = _merchant(database, "mch_a")
    op_plain, op_view = service.create("operator", label="ops laptop")
    sk_plain, sk_view = service.create("merchant", merchant)
    assert re.fullmatch(r"op_test_[A-Za-z0-9_-]{32}", op_plain)
    assert re.fullmatch(r"sk_test_[A-Za-z0-9_-]{32}", sk_plain)
    assert re.fullmatch(r"key_[A-Za-z0-9_-]+", op_view.id) and len(op_view.id) <= 40
    assert op_view.prefix == op_plain[:12] and sk_view.prefix == sk_plain[:12]
    with database.read() as conn:
        rows = conn.execute(sa.text("SELECT * FROM payments_api_keys")).mappings().all()
    stored = {row["id"]: row for row in rows}
    assert stored[sk_view.id]["key_hash"] == hashlib.sha256(sk_plain.encode()).hexdigest()
    # The plain key (or its random part) appears in no column of any row.
    for row in rows:
        for value in row.values():
            for plain in (op_plain, sk_plain):
                assert plain[8:] not in str(value)
    assert "key_hash" not in op_view.as_api() and op_plain not in str(op_view.as_api())


def test_authenticate_returns_the_principal(database: Database) -> None:
    service = ApiKeyService(database)
    merchant = _merchant(database, "mch_b")
    op_plain, op_view = service.create("operator")
    sk_plain, sk_view = service.create("merchant", merchant)
    assert service.authenticate(op_plain) == Principal(op_view.id, "operator", None)
    principal = service.authenticate(sk_plain)
    assert principal == Principal(sk_view.id, "merchant", merchant)
    assert principal.id == sk_view.id


@pytest.mark.parametrize(
    "plain",
    [
        "",
        "sk_test_",
        "sk_test_" + "A" * 31,
        "sk_test_" + "A" * 33,
        "pk_test_" + "A" * 32,
        "sk_live_" + "A" * 32,
        "sk_test_" + "A" * 31 + "!",
        "sk_test_" + "A" * 31 + "é",
        " sk_test_" + "A" * 32,
    ],
)
def test_malformed_and_unknown_keys_are_invalid(database: Database, plain: str) -> None:
    service = ApiKeyService(database)
    with pytest.raises(ApiKeyInvalid) as caught:
        service.authenticate(plain)
    assert caught.value.code == "api_key_invalid" and caught.value.type == "authentication_error"


def test_an_unknown_well_formed_key_is_invalid(database: Database) -> None:
    with pytest.raises(ApiKeyInvalid):
        ApiKeyService(database).authenticate("sk_test_" + "A" * 32)


def test_revocation_is_immediate_in_the_revoking_process(database: Database) -> None:
    service = ApiKeyService(database)
    plain, view = service.create("operator")
    service.authenticate(plain)  # now cached
    revoked = service.revoke(view.id)
    assert revoked.revoked_at_ns is not None
    with pytest.raises(ApiKeyInvalid):
        service.authenticate(plain)
    assert service.revoke(view.id) == revoked  # idempotent


def test_another_process_honours_revocation_within_the_cache_ttl(database: Database) -> None:
    clock = FakeClock()
    revoker, other = ApiKeyService(database, clock), ApiKeyService(database, clock)
    plain, view = revoker.create("operator")
    other.authenticate(plain)
    revoker.revoke(view.id)
    clock.advance(AUTH_CACHE_TTL_S - 1)
    assert other.authenticate(plain).key_id == view.id  # the documented grace period
    clock.advance(1)
    with pytest.raises(ApiKeyInvalid):
        other.authenticate(plain)


def test_the_cache_is_bounded(database: Database) -> None:
    service = ApiKeyService(database, cache_size_max=3)
    plains = [service.create("operator")[0] for _ in range(5)]
    for plain in plains:
        service.authenticate(plain)
    assert service.cache_size == 3
    assert service.cached(plains[0]) is None and service.cached(plains[-1]) is not None


def test_create_refuses_bad_input(database: Database) -> None:
    service = ApiKeyService(database)
    merchant = _merchant(database, "mch_c")
    cases: list[tuple[dict[str, str | None], type[Exception], str]] = [
        ({"role": "admin"}, ApiKeyInputInvalid, "role"),
        ({"role": "merchant"}, ApiKeyInputInvalid, "merchant_id"),
        ({"role": "operator", "merchant_id": merchant}, ApiKeyInputInvalid, "merchant_id"),
        ({"role": "operator", "label": "x" * 81}, ApiKeyInputInvalid, "label"),
        ({"role": "operator", "label": "a\nb"}, ApiKeyInputInvalid, "label"),
        ({"role": "merchant", "merchant_id": "mch_nope"}, ApiKeyMerchantUnknown, "merchant_id"),
    ]
    for kwargs, error, param in cases:
        with pytest.raises(error) as caught:
            service.create(**kwargs)  # type: ignore[arg-type]
        assert getattr(caught.value, "param", None) == param, kwargs
    assert service.list(None) == []


def test_list_and_revoke_are_scoped_to_the_owner(database: Database) -> None:
    service = ApiKeyService(database, FakeClock())
    a, b = _merchant(database, "mch_d"), _merchant(database, "mch_e")
    _, a1 = service.create("merchant", a)
    service.clock.advance(1)  # type: ignore[attr-defined]
    _, a2 = service.create("merchant", a, label="second")
    _, b1 = service.create("merchant", b)
    _, op = service.create("operator")
    assert [v.id for v in service.list(a)] == [a2.id, a1.id]  # newest first
    assert [v.id for v in service.list(b)] == [b1.id]
    assert [v.id for v in service.list(None)] == [op.id]
    with pytest.raises(ApiKeyNotFound):
        service.revoke(b1.id, merchant_id=a)  # another merchant's key: not found
    with pytest.raises(ApiKeyNotFound):
        service.get(b1.id, merchant_id=a)
    with pytest.raises(ApiKeyNotFound):
        service.revoke("key_nope")
    assert service.get(b1.id).revoked_at_ns is None
    assert service.revoke(a1.id, merchant_id=a).revoked_at_ns is not None


@given(st.text(max_size=60))
def test_only_key_shaped_strings_are_well_formed(text: str) -> None:
    expected = re.fullmatch(r"(op_test_|sk_test_)[A-Za-z0-9_-]{32}", text) is not None
    assert is_well_formed(text) == expected
    assert len(hash_key(text)) == 64


# -- over HTTP, against the real server --------------------------------------------------------


def test_http_authentication_and_revocation(api_server: ApiServer) -> None:
    merchant = api_server.new_merchant()
    plain, view = api_server.keys.create("merchant", merchant)
    with api_server.client(plain) as http:
        me = http.get("/v1/whoami")
        assert me.status_code == 200
        assert me.json() == {
            "key_id": view.id,
            "role": "merchant",
            "merchant_id": merchant,
            "owner_filter": merchant,
        }
        api_server.keys.revoke(view.id)  # in this process: the server's cache still has it
        api_server.advance(AUTH_CACHE_TTL_S)
        refused = http.get("/v1/whoami")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "api_key_invalid"
    assert refused.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "api_key_missing"),
        ("", "api_key_missing"),
        ("Basic dXNlcjpwYXNz", "api_key_missing"),
        ("Bearer", "api_key_missing"),
        ("Bearer not-a-key", "api_key_invalid"),
        ("Bearer sk_test_" + "A" * 32, "api_key_invalid"),
    ],
)
def test_http_missing_and_invalid_keys(
    api_server: ApiServer, header: str | None, code: str
) -> None:
    headers = {} if header is None else {"Authorization": header}
    with api_server.client() as http:
        response = http.get("/v1/whoami", headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "authentication_error"
    assert error["request_id"] == response.headers["request-id"]
