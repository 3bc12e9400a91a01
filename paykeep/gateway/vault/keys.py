"""Vault keys: never in the database.

Either files in ``<data dir>/keys/`` (directory 0700, files 0600, refused when group- or
world-readable): ``vault-enc-<key id>.key`` (AES-256-GCM keys, raw 32 bytes), ``vault-active``
(the key id new ciphertexts use) and ``vault-fingerprint.key`` (the HMAC-SHA256 key);
or the environment: ``PAYKEEP_VAULT_KEY`` = ``<key id>:<base64 key>[,<key id>:<base64 key>...]``
(the first is active, the others still decrypt) and ``PAYKEEP_VAULT_FINGERPRINT_KEY`` (base64),
which defaults to a key derived from the first encryption key with HKDF under its own label.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from paykeep import limits
from paykeep.gateway.vault.errors import VaultKeyInsecure, VaultKeyMissing

ENV_KEY = "PAYKEEP_VAULT_KEY"
ENV_FINGERPRINT_KEY = "PAYKEEP_VAULT_FINGERPRINT_KEY"
KEY_ID_PATTERN = re.compile(r"[a-z0-9]{1,16}")
_ACTIVE = "vault-active"
_FINGERPRINT = "vault-fingerprint.key"


@dataclass(frozen=True)
class VaultKeys:
    active_key_id: str
    encryption_keys: dict[str, bytes]
    fingerprint_key: bytes
    directory: Path | None = None  # None: keys from the environment (no rotation from here)

    def key(self, key_id: str) -> bytes:
        try:
            return self.encryption_keys[key_id]
        except KeyError:
            raise VaultKeyMissing(f"vault key {key_id!r} is not available") from None

    @classmethod
    def load(cls, data_dir: Path) -> VaultKeys:
        """From the environment when ``PAYKEEP_VAULT_KEY`` is set, else from ``data_dir/keys``
        (created on first use)."""
        if os.environ.get(ENV_KEY):
            return cls.from_environment()
        return cls.from_directory(data_dir / "keys", create=True)

    @classmethod
    def from_environment(cls) -> VaultKeys:
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for item in os.environ.get(ENV_KEY, "").split(","):
            key_id, sep, encoded = item.strip().partition(":")
            if not sep or not KEY_ID_PATTERN.fullmatch(key_id):
                raise VaultKeyMissing(f"{ENV_KEY} entries are <key id>:<base64 key>")
            keys[key_id] = _decode_key(encoded, ENV_KEY)
            order.append(key_id)
        fingerprint_env = os.environ.get(ENV_FINGERPRINT_KEY)
        if fingerprint_env:
            fingerprint = _decode_key(fingerprint_env, ENV_FINGERPRINT_KEY)
        else:
            fingerprint = HKDF(
                algorithm=hashes.SHA256(),
                length=limits.VAULT_KEY_BYTES,
                salt=None,
                info=b"paykeep vault card fingerprint v1",
            ).derive(keys[order[0]])
        return cls(order[0], keys, fingerprint)

    @classmethod
    def from_directory(cls, directory: Path, *, create: bool = False) -> VaultKeys:
        if create and not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
        active_path = directory / _ACTIVE
        if create and not active_path.exists():
            _write_secret(directory / _FINGERPRINT, secrets.token_bytes(limits.VAULT_KEY_BYTES))
            key_id = _new_key_id()
            _write_secret(_key_path(directory, key_id), secrets.token_bytes(limits.VAULT_KEY_BYTES))
            _write_secret(active_path, key_id.encode())
        if not active_path.exists():
            raise VaultKeyMissing(f"no vault keys in {directory}")
        active = _read_secret(active_path, None).decode().strip()
        keys = {}
        for path in sorted(directory.glob("vault-enc-*.key")):
            key_id = path.name.removeprefix("vault-enc-").removesuffix(".key")
            keys[key_id] = _read_secret(path, limits.VAULT_KEY_BYTES)
        if active not in keys:
            raise VaultKeyMissing(f"the active vault key {active!r} has no key file")
        fingerprint = _read_secret(directory / _FINGERPRINT, limits.VAULT_KEY_BYTES)
        return cls(active, keys, fingerprint, directory)

    def rotate(self) -> VaultKeys:
        """A new active encryption key (files only); old keys stay to decrypt old rows until
        ``CardVault.reencrypt`` has moved every row."""
        if self.directory is None:
            raise VaultKeyMissing(f"keys from {ENV_KEY} rotate by changing the environment")
        key_id = _new_key_id()
        _write_secret(
            _key_path(self.directory, key_id), secrets.token_bytes(limits.VAULT_KEY_BYTES)
        )
        tmp = self.directory / f"{_ACTIVE}.tmp"
        _write_secret(tmp, key_id.encode())
        tmp.replace(self.directory / _ACTIVE)
        return VaultKeys.from_directory(self.directory)

    def retire(self, key_id: str) -> VaultKeys:
        """Delete an old key file (after re-encryption). The active key cannot be retired."""
        if self.directory is None or key_id == self.active_key_id:
            raise VaultKeyMissing("only an inactive key file can be retired")
        _key_path(self.directory, key_id).unlink()
        return VaultKeys.from_directory(self.directory)


def _new_key_id() -> str:
    return "k" + secrets.token_hex(6)


def _key_path(directory: Path, key_id: str) -> Path:
    return directory / f"vault-enc-{key_id}.key"


def _decode_key(encoded: str, name: str) -> bytes:
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise VaultKeyMissing(f"{name} is not base64") from None
    if len(raw) != limits.VAULT_KEY_BYTES:
        raise VaultKeyInsecure(f"{name} must hold {limits.VAULT_KEY_BYTES} bytes")
    return raw


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_secret(path: Path, size: int | None) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise VaultKeyMissing(f"missing vault key file {path.name}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise VaultKeyInsecure(f"{path.name} is readable by others: chmod 600 it")
    data = path.read_bytes()
    if size is not None and len(data) != size:
        raise VaultKeyInsecure(f"{path.name} must hold {size} bytes")
    return data
