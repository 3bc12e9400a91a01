"""The card vault: Luhn and brand tables, tokens, tamper detection, key rotation, key files."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stdnum import luhn

from paykeep.config import Settings
from paykeep.db import Database
from paykeep.gateway.vault.errors import (
    VaultCardNumberInvalid,
    VaultExpiryInvalid,
    VaultIntegrityError,
    VaultKeyInsecure,
    VaultKeyMissing,
    VaultTokenNotFound,
)
from paykeep.gateway.vault.keys import ENV_KEY, VaultKeys
from paykeep.gateway.vault.model import brand_of, check_pan
from paykeep.gateway.vault.service import CardVault


@pytest.mark.parametrize(
    ("pan", "ok"),
    [
        ("4111111111111111", True),
        ("5555555555554444", True),
        ("378282246310005", True),
        ("6011111111111117", True),
        ("4111111111111112", False),  # check digit
        ("4242424242424241", False),
        ("41111111111", False),  # 11 digits
        ("41111111111111111111", False),  # 20 digits
        ("4111 1111 1111 1111", False),
        ("４１１１１１１１１１１１１１１１", False),  # full-width digits
        ("", False),
    ],
)
def test_luhn_table(pan: str, ok: bool) -> None:
    if ok:
        assert check_pan(pan) == pan
    else:
        with pytest.raises(VaultCardNumberInvalid) as info:
            check_pan(pan)
        assert pan.strip() == "" or pan not in str(info.value)


@pytest.mark.parametrize(
    ("pan", "brand"),
    [
        ("4111111111111111", "visa"),
        ("5555555555554444", "mastercard"),
        ("2223003122003222", "mastercard"),
        ("378282246310005", "amex"),
        ("6011111111111117", "discover"),
        ("6500000000000002", "discover"),
        ("3530111333300000", "jcb"),
        ("30569309025904", "diners"),
        ("6200000000000005", "unionpay"),
        ("9999999999999995", "unknown"),
    ],
)
def test_brand_table(pan: str, brand: str) -> None:
    assert brand_of(pan) == brand


def test_same_card_same_token_and_lookups_show_only_the_public_view(
    database: Database, settings: Settings
) -> None:
    vault = CardVault.open(database, settings.data_dir)
    first = vault.tokenize("4111111111111111", 12, 2029)
    again = vault.tokenize("4111111111111111", 1, 2031)  # reissued: same number, new expiry
    other = vault.tokenize("5555555555554444", 12, 2029)
    assert first.token == again.token != other.token
    assert first.token.startswith("tok_")
    view = vault.card(first.token)
    assert view.to_json() == {"token": first.token, "brand": "visa", "last4": "1111",
                              "exp_month": 1, "exp_year": 2031}  # fmt: skip
    assert vault.pan_for_network(first.token) == "4111111111111111"
    with pytest.raises(VaultTokenNotFound):
        vault.card("tok_" + "x" * 24)
    with pytest.raises(VaultExpiryInvalid):
        vault.tokenize("4111111111111111", 13, 2029)
    with database.read() as conn:
        rows = conn.execute(sa.text("SELECT * FROM card_vault")).all()
    assert "4111111111111111" not in repr(rows)


def test_tampering_is_detected(database: Database, settings: Settings) -> None:
    vault = CardVault.open(database, settings.data_dir)
    a = vault.tokenize("4111111111111111", 12, 2029).token
    b = vault.tokenize("5555555555554444", 12, 2029).token
    with database.write() as conn:
        blob_a = conn.execute(sa.text("SELECT ciphertext FROM card_vault WHERE token = :t"),
                              {"t": a}).scalar_one()  # fmt: skip
        flipped = bytes(blob_a[:-1]) + bytes([blob_a[-1] ^ 1])
        conn.execute(sa.text("UPDATE card_vault SET ciphertext = :c WHERE token = :t"),
                     {"c": flipped, "t": a})  # fmt: skip
    with pytest.raises(VaultIntegrityError):
        vault.pan_for_network(a)
    # A valid ciphertext moved to another token fails too: the token is associated data.
    with database.write() as conn:
        conn.execute(sa.text("UPDATE card_vault SET ciphertext = :c WHERE token = :t"),
                     {"c": bytes(blob_a), "t": b})  # fmt: skip
    with pytest.raises(VaultIntegrityError):
        vault.pan_for_network(b)


def test_rotation_reencrypts_and_old_keys_can_retire(
    database: Database, settings: Settings
) -> None:
    vault = CardVault.open(database, settings.data_dir)
    old = vault.tokenize("4111111111111111", 12, 2029).token
    first_key = vault.keys.active_key_id
    vault.keys = vault.keys.rotate()
    assert vault.keys.active_key_id != first_key
    new = vault.tokenize("5555555555554444", 12, 2029).token
    assert vault.key_usage() == {first_key: 1, vault.keys.active_key_id: 1}
    assert vault.pan_for_network(old) == "4111111111111111"
    assert vault.reencrypt() == 1
    assert vault.reencrypt() == 0
    vault.keys = vault.keys.retire(first_key)
    assert vault.pan_for_network(old) == "4111111111111111"
    assert vault.pan_for_network(new) == "5555555555554444"
    # Same card after rotation: still the same token (the fingerprint key does not rotate).
    assert vault.tokenize("4111111111111111", 12, 2029).token == old


def test_key_files_are_private_and_checked(tmp_path: Path) -> None:
    keys = VaultKeys.from_directory(tmp_path / "keys", create=True)
    for path in (tmp_path / "keys").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    key_file = next((tmp_path / "keys").glob("vault-enc-*.key"))
    key_file.chmod(0o644)
    with pytest.raises(VaultKeyInsecure):
        VaultKeys.from_directory(tmp_path / "keys")
    key_file.unlink()
    with pytest.raises(VaultKeyMissing):
        VaultKeys.from_directory(tmp_path / "keys")
    assert keys.active_key_id


def test_keys_from_the_environment(
    database: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    monkeypatch.setenv(ENV_KEY, f"env1:{key}")
    vault = CardVault.open(database, settings.data_dir)
    token = vault.tokenize("4111111111111111", 12, 2029).token
    assert vault.keys.active_key_id == "env1"
    assert not (settings.data_dir / "keys").exists()
    assert vault.pan_for_network(token) == "4111111111111111"
    monkeypatch.setenv(ENV_KEY, "env1:bm90LWEta2V5")
    with pytest.raises(VaultKeyInsecure):
        VaultKeys.load(settings.data_dir)
    monkeypatch.delenv(ENV_KEY)
    assert os.environ.get(ENV_KEY) is None


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(body=st.text(alphabet="0123456789", min_size=11, max_size=18))
def test_property_tokens_round_trip(database: Database, settings: Settings, body: str) -> None:
    pan = body + luhn.calc_check_digit(body)
    vault = CardVault.open(database, settings.data_dir)
    view = vault.tokenize(pan, 6, 2030)
    assert (view.last4, view.brand) == (pan[-4:], brand_of(pan))
    assert vault.pan_for_network(view.token) == pan
    assert vault.tokenize(pan, 6, 2030).token == view.token
