"""``paykeep keys``: operator keys made on the machine that holds the database, as a real
subprocess on both databases — shown once, stored as a hash, listed, revoked."""

from __future__ import annotations

import json

import pytest

from paykeep.config import Settings
from paykeep.db import open_database
from paykeep.security.api_keys import ApiKeyInvalid, ApiKeyService, hash_key
from tests.support import paykeep


def test_operator_keys_are_created_once_listed_and_revoked(settings: Settings) -> None:
    made = []
    for officer in ("Alice Officer", "Bob Officer"):
        done = paykeep("keys", "create", "--label", officer, "--json", settings=settings)
        assert done.returncode == 0, done.stderr
        made.append(json.loads(done.stdout))
    alice, bob = made
    assert alice["role"] == bob["role"] == "operator"
    assert alice["key"].startswith("op_") and alice["key"] != bob["key"]
    database = open_database(settings, migrate=False)
    try:
        keys = ApiKeyService(database)
        # Two distinct officers: what the four-eyes close of an AML case tells apart.
        principals = [keys.authenticate(k["key"]) for k in made]
        assert [(p.role, p.key_id) for p in principals] == [
            ("operator", alice["id"]), ("operator", bob["id"])]  # fmt: skip
        with database.read() as conn:
            stored = conn.exec_driver_sql("SELECT key_hash FROM payments_api_keys").scalars().all()
        assert hash_key(alice["key"]) in stored and alice["key"] not in stored
        listed = paykeep("keys", "list", "--json", settings=settings)
        assert listed.returncode == 0, listed.stderr
        rows = {r["id"]: r for r in json.loads(listed.stdout)}
        assert {alice["id"], bob["id"]} <= rows.keys()
        assert all("key" not in r for r in rows.values())  # never shown again
        revoked = paykeep("keys", "revoke", alice["id"], "--json", settings=settings)
        assert revoked.returncode == 0, revoked.stderr
        assert json.loads(revoked.stdout)["revoked"] is not None
        with pytest.raises(ApiKeyInvalid):
            ApiKeyService(database).authenticate(alice["key"])
        assert ApiKeyService(database).authenticate(bob["key"]).key_id == bob["id"]
    finally:
        database.dispose()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("keys", "create", "--role", "root"), "role must be one of"),
        (("keys", "create", "--role", "merchant"), "needs a merchant_id"),
        (("keys", "create", "--role", "merchant", "--merchant", "mer_nobody"), "no merchant"),
        (("keys", "create", "--label", "\x07"), "label must be"),
        (("keys", "revoke", "key_unknown"), "no API key"),
    ],
)
def test_bad_input_is_refused_in_one_line(
    settings: Settings, args: tuple[str, ...], needle: str
) -> None:
    done = paykeep(*args, settings=settings)
    assert done.returncode == 2, done.stdout
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1
    listed = json.loads(paykeep("keys", "list", "--json", settings=settings).stdout)
    assert listed == []  # nothing was created
