"""Field encryption for personal data at rest (buyer names and emails, payout IBANs, secrets).

A sealed field is ``<key id>:`` + 12-byte nonce + AES-256-GCM ciphertext, with associated data
``paykeep-field|<purpose>|<row id>|<key id>``: a ciphertext copied to another row or another
column fails to open. Keys are the vault's (``<data dir>/keys`` or the environment), never in
the database; rotating the vault key rotates these too (old key ids still open).

``lookup`` is a keyed HMAC (HKDF-derived from the vault's fingerprint key under its own label)
for the few fields that must be found by value (a buyer's email) without storing it in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from paykeep.gateway.vault.keys import VaultKeys
from paykeep.security.errors import FieldDecryptionFailed

_NONCE_BYTES = 12


class FieldCipher:
    def __init__(self, keys: VaultKeys) -> None:
        self.keys = keys
        self._lookup_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"paykeep field lookup v1"
        ).derive(keys.fingerprint_key)
        self._aead = {key_id: AESGCM(key) for key_id, key in keys.encryption_keys.items()}

    def seal(self, plaintext: str, *, purpose: str, row_id: str) -> bytes:
        key_id = self.keys.active_key_id
        nonce = secrets.token_bytes(_NONCE_BYTES)
        aad = f"paykeep-field|{purpose}|{row_id}|{key_id}".encode()
        sealed = self._aead[key_id].encrypt(nonce, plaintext.encode(), aad)
        return key_id.encode() + b":" + nonce + sealed

    def open(self, sealed: bytes, *, purpose: str, row_id: str) -> str:
        key_id_bytes, sep, rest = bytes(sealed).partition(b":")
        key_id = key_id_bytes.decode("ascii", "replace")
        aead = self._aead.get(key_id)
        if not sep or aead is None or len(rest) <= _NONCE_BYTES:
            raise FieldDecryptionFailed(f"{purpose} of {row_id} cannot be opened")
        aad = f"paykeep-field|{purpose}|{row_id}|{key_id}".encode()
        try:
            return aead.decrypt(rest[:_NONCE_BYTES], rest[_NONCE_BYTES:], aad).decode()
        except (InvalidTag, UnicodeDecodeError):
            raise FieldDecryptionFailed(f"{purpose} of {row_id} failed to authenticate") from None

    def lookup(self, value: str, *, purpose: str) -> str:
        """A stable keyed digest of ``value`` (hex) for equality lookups."""
        message = f"{purpose}|{value}".encode()
        return hmac.new(self._lookup_key, message, hashlib.sha256).hexdigest()


def mask_email(email: str) -> str:
    """``ada.lovelace@example.com`` -> ``a***@example.com`` (what an API response may show)."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def mask_iban(iban_last4: str | None) -> str | None:
    return None if iban_last4 is None else f"****{iban_last4}"
