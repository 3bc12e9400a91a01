"""The card vault: tokenise a card number, look a token up, hand the number to the acquirer.

- The PAN is Luhn-checked, encrypted with AES-256-GCM under the active key, a fresh 96-bit
  nonce per encryption, and associated data ``paykeep-vault|<token>|<key id>`` so a ciphertext
  moved to another row, or relabelled with another key id, fails to decrypt.
- ``fingerprint = HMAC-SHA256(fingerprint key, PAN)`` (a separate key) maps one card to one
  token without storing the PAN in clear.
- Lookups return only :class:`CardView` (token, brand, last four, expiry). ``pan_for_network``
  is for the acquirer client alone: it returns the number to put in field 2 of a message.
- Security codes never reach the vault.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from paykeep import limits
from paykeep.clock import Clock, SystemClock
from paykeep.db import Database
from paykeep.gateway.vault.errors import VaultIntegrityError, VaultTokenNotFound
from paykeep.gateway.vault.keys import VaultKeys
from paykeep.gateway.vault.model import (
    TOKEN_PATTERN,
    TOKEN_PREFIX,
    CardView,
    brand_of,
    check_expiry,
    check_pan,
)
from paykeep.gateway.vault.repository import VaultRepository, VaultRow

_NONCE_BYTES = 12


def _aad(token: str, key_id: str) -> bytes:
    return f"paykeep-vault|{token}|{key_id}".encode()


def _view(row: VaultRow) -> CardView:
    return CardView(row.token, row.brand, row.last4, row.exp_month, row.exp_year)


class CardVault:
    def __init__(self, database: Database, keys: VaultKeys, clock: Clock | None = None) -> None:
        self.database = database
        self.keys = keys
        self.clock = clock or SystemClock()

    @classmethod
    def open(cls, database: Database, data_dir: Path, clock: Clock | None = None) -> CardVault:
        return cls(database, VaultKeys.load(data_dir), clock)

    def _fingerprint(self, pan: str) -> str:
        return hmac.new(self.keys.fingerprint_key, pan.encode(), hashlib.sha256).hexdigest()

    def _encrypt(self, token: str, pan: str) -> tuple[str, bytes]:
        key_id = self.keys.active_key_id
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = AESGCM(self.keys.key(key_id)).encrypt(nonce, pan.encode(), _aad(token, key_id))
        return key_id, nonce + sealed

    def _decrypt(self, row: VaultRow) -> str:
        key = self.keys.key(row.key_id)
        nonce, sealed = row.ciphertext[:_NONCE_BYTES], row.ciphertext[_NONCE_BYTES:]
        try:
            plain = AESGCM(key).decrypt(nonce, sealed, _aad(row.token, row.key_id))
        except InvalidTag:
            raise VaultIntegrityError(f"vault entry {row.token} failed authentication") from None
        return plain.decode("ascii")

    def tokenize(self, pan: str, exp_month: int, exp_year: int) -> CardView:
        """The token of this card number: the existing one for a card already in the vault
        (its expiry updated to the one given), else a new one."""
        check_pan(pan)
        exp_month, exp_year = check_expiry(exp_month, exp_year)
        fingerprint = self._fingerprint(pan)
        for _attempt in range(2):
            try:
                with self.database.write() as conn:
                    repo = VaultRepository(conn)
                    now = self.clock.now_ns()
                    found = repo.by_fingerprint(fingerprint)
                    if found is not None:
                        if (found.exp_month, found.exp_year) != (exp_month, exp_year):
                            repo.update_expiry(found.token, exp_month, exp_year, now)
                        return CardView(found.token, found.brand, found.last4, exp_month,
                                        exp_year)  # fmt: skip
                    token = TOKEN_PREFIX + secrets.token_urlsafe(18)
                    key_id, ciphertext = self._encrypt(token, pan)
                    row = VaultRow(token, fingerprint, key_id, ciphertext, brand_of(pan),
                                   pan[-4:], exp_month, exp_year)  # fmt: skip
                    repo.insert(row, now)
                    return _view(row)
            except sa.exc.IntegrityError:
                continue  # a concurrent tokenize of the same card won: read its token
        raise VaultIntegrityError("the card could not be stored: concurrent conflicting writes")

    def _row(self, token: str) -> VaultRow:
        if not isinstance(token, str) or not TOKEN_PATTERN.fullmatch(token):
            raise VaultTokenNotFound("no such card token", param="card_token")
        with self.database.read() as conn:
            row = VaultRepository(conn).by_token(token)
        if row is None:
            raise VaultTokenNotFound("no such card token", param="card_token")
        return row

    def card(self, token: str) -> CardView:
        return _view(self._row(token))

    def pan_for_network(self, token: str) -> str:
        """The card number, decrypted, for field 2 of an ISO 8583 message. Nothing else."""
        return self._decrypt(self._row(token))

    def reencrypt(self, limit: int = limits.VAULT_REENCRYPT_BATCH) -> int:
        """Move up to ``limit`` rows to the active key; returns how many moved (0: done)."""
        active = self.keys.active_key_id
        moved = 0
        with self.database.read() as conn:
            rows = VaultRepository(conn).not_under(active, limit)
        for row in rows:
            pan = self._decrypt(row)
            key_id, ciphertext = self._encrypt(row.token, pan)
            with self.database.write() as conn:
                if VaultRepository(conn).update_ciphertext(
                    row.token, row.key_id, key_id, ciphertext, self.clock.now_ns()
                ):
                    moved += 1
        return moved

    def key_usage(self) -> dict[str, int]:
        """Rows per key id (to know when an old key can be retired)."""
        with self.database.read() as conn:
            return VaultRepository(conn).key_ids()
