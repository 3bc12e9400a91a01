"""Typed errors of the card vault (codes prefixed ``vault_``). No message ever quotes a PAN."""

from __future__ import annotations

from paykeep.errors import InvalidInput, NotFound, PaykeepError


class VaultCardNumberInvalid(InvalidInput):
    """Not 12-19 digits, or the Luhn check digit is wrong."""

    code = "vault_card_number_invalid"


class VaultExpiryInvalid(InvalidInput):
    code = "vault_expiry_invalid"


class VaultTokenNotFound(NotFound):
    code = "vault_token_not_found"


class VaultIntegrityError(PaykeepError):
    """A stored ciphertext failed authentication: tampered, moved to another token, or
    encrypted under a key this process does not hold."""

    code = "vault_integrity_error"
    type = "api_error"


class VaultKeyMissing(PaykeepError):
    code = "vault_key_missing"
    type = "api_error"


class VaultKeyInsecure(PaykeepError):
    """A key file readable by group or others, or a key of the wrong size."""

    code = "vault_key_insecure"
    type = "api_error"
