"""API keys: who is calling. The plain key is shown once; only its SHA-256 is stored.

A key is ``op_test_`` (operator) or ``sk_test_`` (merchant) followed by 32 url-safe random
characters (192 bits from :func:`paykeep.ids.new_token`). The database keeps the hex SHA-256 of
the whole key (``key_hash``, unique) and its first 12 characters (``prefix``) so people can
tell keys apart; nothing in the database, the logs or an API response can be turned back into
a usable key.

Why SHA-256 and not a password hash (argon2, scrypt): those exist to slow down guessing of
*low-entropy* secrets chosen by people. A 192-bit random key cannot be guessed however fast
the hash is, so a slow hash would only cost every authenticated request milliseconds of CPU
without adding any security. Looking the key up by its hash also makes the comparison constant
time with respect to the secret: the database compares digests, never the key itself.

Successful look-ups are cached in-process for :data:`AUTH_CACHE_TTL_S` (bounded in size) so a
request whose key was seen recently costs no database round trip. Consequence, by design: a
revoked key keeps working for at most ``AUTH_CACHE_TTL_S`` seconds in *other* processes (the
revoking process clears its own cache at once).
"""

from __future__ import annotations

import builtins
import hashlib
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import sqlalchemy as sa

from paykeep.clock import NS_PER_S, Clock, SystemClock
from paykeep.db import Database
from paykeep.errors import InvalidInput, NotFound, PaykeepError
from paykeep.ids import new_token

Role = Literal["operator", "merchant"]
ROLES: Final[tuple[Role, ...]] = ("operator", "merchant")

#: Plain-key prefixes by role. ``_test_`` because this platform only ever moves simulated money
#: today; live keys will get their own prefixes so a test key can never move real money.
KEY_PREFIX_BY_ROLE: Final[dict[Role, str]] = {"operator": "op_test_", "merchant": "sk_test_"}
#: 24 random bytes = 32 url-safe base64 characters = 192 bits.
KEY_RANDOM_BYTES: Final = 24
KEY_RANDOM_CHARS: Final = 32
#: Characters of the plain key kept for display (``sk_test_AbCd``): 4 random characters, 24
#: bits, too few to help a guesser but enough to tell a merchant's keys apart.
KEY_DISPLAY_PREFIX_LENGTH: Final = 12
KEY_ID_PREFIX: Final = "key_"
KEY_ID_RANDOM_BYTES: Final = 12
LABEL_LENGTH_MAX: Final = 80
#: How long a successful look-up is trusted without asking the database, and how many are
#: kept. Revocation takes effect in every process within this many seconds.
AUTH_CACHE_TTL_S: Final = 2
AUTH_CACHE_SIZE_MAX: Final = 10_000
#: Keys listed for one owner at most (keys are few; this only bounds a runaway).
API_KEYS_LIST_MAX: Final = 1_000

_KEY_PATTERN: Final = re.compile(
    "(?:" + "|".join(re.escape(p) for p in KEY_PREFIX_BY_ROLE.values()) + ")"
    rf"[A-Za-z0-9_-]{{{KEY_RANDOM_CHARS}}}"
)


class ApiKeyInvalid(PaykeepError):
    """The key is unknown, revoked or not a key at all (one answer for all three)."""

    code = "api_key_invalid"
    type = "authentication_error"


class ApiKeyInputInvalid(InvalidInput):
    """A bad role, a missing or superfluous merchant id, an overlong or unprintable label."""

    code = "api_key_input_invalid"


class ApiKeyMerchantUnknown(InvalidInput):
    """A merchant key was requested for a merchant that does not exist."""

    code = "api_key_merchant_unknown"


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: one API key, its role and (for merchant keys) its merchant."""

    key_id: str
    role: Role
    merchant_id: str | None

    @property
    def id(self) -> str:
        return self.key_id

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


@dataclass(frozen=True, slots=True)
class ApiKeyView:
    """What may be shown about a key: never the key, never its hash."""

    id: str
    prefix: str
    role: Role
    merchant_id: str | None
    label: str | None
    created_at_ns: int
    revoked_at_ns: int | None

    def as_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "api_key",
            "prefix": self.prefix,
            "role": self.role,
            "merchant_id": self.merchant_id,
            "label": self.label,
            "created": self.created_at_ns // NS_PER_S,
            "revoked": None if self.revoked_at_ns is None else self.revoked_at_ns // NS_PER_S,
        }


def hash_key(plain: str) -> str:
    """The stored form of a key: hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(plain.encode()).hexdigest()


def is_well_formed(plain: str) -> bool:
    """True when ``plain`` has the shape of a key (checked before any hashing or database)."""
    return _KEY_PATTERN.fullmatch(plain) is not None


_COLUMNS = "id, prefix, role, merchant_id, label, created_at_ns, revoked_at_ns"
_INSERT = sa.text(
    "INSERT INTO payments_api_keys "
    "(id, prefix, key_hash, role, merchant_id, label, created_at_ns, revoked_at_ns) "
    "VALUES (:id, :prefix, :key_hash, :role, :merchant_id, :label, :created_at_ns, NULL)"
)
_BY_HASH = sa.text(
    "SELECT id, role, merchant_id, revoked_at_ns FROM payments_api_keys WHERE key_hash = :h"
)
_BY_ID = sa.text(f"SELECT {_COLUMNS} FROM payments_api_keys WHERE id = :id")
_REVOKE = sa.text(
    "UPDATE payments_api_keys SET revoked_at_ns = :now WHERE id = :id AND revoked_at_ns IS NULL"
)
_MERCHANT_EXISTS = sa.text("SELECT 1 FROM payments_merchants WHERE id = :id")
_LIST_MERCHANT = sa.text(
    f"SELECT {_COLUMNS} FROM payments_api_keys WHERE merchant_id = :merchant_id "
    "ORDER BY created_at_ns DESC, id DESC LIMIT :limit"
)
_LIST_OPERATOR = sa.text(
    f"SELECT {_COLUMNS} FROM payments_api_keys WHERE role = 'operator' "
    "ORDER BY created_at_ns DESC, id DESC LIMIT :limit"
)


def _view(row: Any) -> ApiKeyView:
    return ApiKeyView(
        id=row.id,
        prefix=row.prefix,
        role=cast(Role, row.role),
        merchant_id=row.merchant_id,
        label=row.label,
        created_at_ns=int(row.created_at_ns),
        revoked_at_ns=None if row.revoked_at_ns is None else int(row.revoked_at_ns),
    )


class _AuthCache:
    """key hash -> (principal, expiry). Bounded: the oldest entry goes first when full."""

    def __init__(self, ttl_ns: int, size_max: int) -> None:
        self._ttl_ns = ttl_ns
        self._size_max = size_max
        self._entries: OrderedDict[str, tuple[Principal, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key_hash: str, now_ns: int) -> Principal | None:
        with self._lock:
            entry = self._entries.get(key_hash)
            if entry is None:
                return None
            if entry[1] <= now_ns:
                del self._entries[key_hash]
                return None
            return entry[0]

    def put(self, key_hash: str, principal: Principal, now_ns: int) -> None:
        with self._lock:
            self._entries.pop(key_hash, None)
            while len(self._entries) >= self._size_max:
                self._entries.popitem(last=False)
            self._entries[key_hash] = (principal, now_ns + self._ttl_ns)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class ApiKeyService:
    """Create, authenticate, revoke and list API keys."""

    def __init__(
        self,
        database: Database,
        clock: Clock | None = None,
        *,
        cache_ttl_s: int = AUTH_CACHE_TTL_S,
        cache_size_max: int = AUTH_CACHE_SIZE_MAX,
    ) -> None:
        if not 0 <= cache_ttl_s <= AUTH_CACHE_TTL_S:
            raise ValueError(f"cache_ttl_s must be within 0..{AUTH_CACHE_TTL_S}")
        if cache_size_max < 1:
            raise ValueError("cache_size_max must be positive")
        self.database = database
        self.clock: Clock = clock or SystemClock()
        self._cache = _AuthCache(cache_ttl_s * NS_PER_S, cache_size_max)

    # -- create ------------------------------------------------------------------------------

    def create(
        self, role: str, merchant_id: str | None = None, label: str | None = None
    ) -> tuple[str, ApiKeyView]:
        """A new key. The plain key is in the result and nowhere else: show it once."""
        if role not in ROLES:
            raise ApiKeyInputInvalid(
                f"role must be one of {', '.join(ROLES)}, not {role!r}", param="role"
            )
        checked_role: Role = role
        if checked_role == "merchant" and not merchant_id:
            raise ApiKeyInputInvalid("a merchant key needs a merchant_id", param="merchant_id")
        if checked_role == "operator" and merchant_id is not None:
            raise ApiKeyInputInvalid("an operator key belongs to no merchant", param="merchant_id")
        if label is not None and (
            len(label) > LABEL_LENGTH_MAX or not label.isprintable() or not label.strip()
        ):
            raise ApiKeyInputInvalid(
                f"label must be 1-{LABEL_LENGTH_MAX} printable characters", param="label"
            )
        plain = new_token(KEY_PREFIX_BY_ROLE[checked_role], KEY_RANDOM_BYTES)
        assert is_well_formed(plain), "new_token changed its alphabet or length"
        view = ApiKeyView(
            id=new_token(KEY_ID_PREFIX, KEY_ID_RANDOM_BYTES),
            prefix=plain[:KEY_DISPLAY_PREFIX_LENGTH],
            role=checked_role,
            merchant_id=merchant_id,
            label=label,
            created_at_ns=self.clock.now_ns(),
            revoked_at_ns=None,
        )
        with self.database.write() as conn:
            if merchant_id is not None and (
                conn.execute(_MERCHANT_EXISTS, {"id": merchant_id}).first() is None
            ):
                raise ApiKeyMerchantUnknown(f"no merchant {merchant_id!r}", param="merchant_id")
            conn.execute(
                _INSERT,
                {
                    "id": view.id,
                    "prefix": view.prefix,
                    "key_hash": hash_key(plain),
                    "role": view.role,
                    "merchant_id": view.merchant_id,
                    "label": view.label,
                    "created_at_ns": view.created_at_ns,
                },
            )
        return plain, view

    # -- authenticate ------------------------------------------------------------------------

    def cached(self, plain: str) -> Principal | None:
        """The principal of ``plain`` if a look-up succeeded within the cache TTL; no I/O."""
        if not is_well_formed(plain):
            return None
        return self._cache.get(hash_key(plain), self.clock.now_ns())

    def authenticate(self, plain: str) -> Principal:
        """The principal of a live key; :class:`ApiKeyInvalid` for anything else."""
        if not is_well_formed(plain):
            raise ApiKeyInvalid("the API key is not valid")
        key_hash = hash_key(plain)
        now_ns = self.clock.now_ns()
        principal = self._cache.get(key_hash, now_ns)
        if principal is not None:
            return principal
        with self.database.read() as conn:
            row = conn.execute(_BY_HASH, {"h": key_hash}).first()
        if row is None or row.revoked_at_ns is not None:
            # Unknown and revoked get the same answer: a caller learns nothing about which.
            raise ApiKeyInvalid("the API key is not valid")
        principal = Principal(key_id=row.id, role=cast(Role, row.role), merchant_id=row.merchant_id)
        self._cache.put(key_hash, principal, now_ns)
        return principal

    # -- manage ------------------------------------------------------------------------------

    def get(self, key_id: str, *, merchant_id: str | None = None) -> ApiKeyView:
        """One key; with ``merchant_id``, only if it belongs to that merchant (else not found)."""
        with self.database.read() as conn:
            row = conn.execute(_BY_ID, {"id": key_id}).first()
        if row is None or (merchant_id is not None and row.merchant_id != merchant_id):
            raise ApiKeyNotFound(f"no API key {key_id!r}", param="id")
        return _view(row)

    def revoke(self, key_id: str, *, merchant_id: str | None = None) -> ApiKeyView:
        """Revoke a key (idempotent: revoking a revoked key returns it unchanged).

        With ``merchant_id``, another merchant's key is reported as not found. Other processes
        stop accepting the key within ``AUTH_CACHE_TTL_S`` seconds; this one at once.
        """
        with self.database.write() as conn:
            row = conn.execute(_BY_ID, {"id": key_id}).first()
            if row is None or (merchant_id is not None and row.merchant_id != merchant_id):
                raise ApiKeyNotFound(f"no API key {key_id!r}", param="id")
            conn.execute(_REVOKE, {"id": key_id, "now": self.clock.now_ns()})
            row = conn.execute(_BY_ID, {"id": key_id}).one()
        self._cache.clear()
        return _view(row)

    def list(self, merchant_id: str | None) -> builtins.list[ApiKeyView]:
        """A merchant's keys, or with ``None`` the operator keys; newest first, revoked too."""
        with self.database.read() as conn:
            if merchant_id is None:
                rows = conn.execute(_LIST_OPERATOR, {"limit": API_KEYS_LIST_MAX}).all()
            else:
                rows = conn.execute(
                    _LIST_MERCHANT, {"merchant_id": merchant_id, "limit": API_KEYS_LIST_MAX}
                ).all()
        return [_view(row) for row in rows]

    @property
    def cache_size(self) -> int:
        return len(self._cache)
