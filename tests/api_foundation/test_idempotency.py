"""Idempotency-Key over real HTTP (the counter route's effect is a row we can count) and the
storage functions against both databases."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paykeep.api.errors import IdempotencyKeyInvalid, IdempotencyKeyReused
from paykeep.api.idempotency import (
    IDEMPOTENCY_IN_FLIGHT_TIMEOUT_S,
    IDEMPOTENCY_TTL_S,
    IdempotentRequest,
    canonical_body,
    claim,
    complete,
    connection_of,
    purge_expired,
    request_fingerprint,
    run_idempotent,
    validate_key,
)
from paykeep.clock import FakeClock
from paykeep.db import Database
from paykeep.errors import Conflict
from paykeep.security.api_keys import Principal
from tests.api_foundation.conftest import ApiServer, unique


def _count(api_server: ApiServer, name: str) -> int:
    with api_server.database.read() as conn:
        seq = conn.execute(
            sa.text("SELECT seq FROM payments_outbox_cursor WHERE name = :n"), {"n": "ctr_" + name}
        ).scalar()
    return 0 if seq is None else int(seq)


def _post(
    http: httpx.Client, name: str, body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return http.post(f"/v1/counters/{name}/increment", json=body, headers=headers)


def test_a_replay_returns_the_first_answer_and_the_effect_happens_once(
    api_server: ApiServer,
) -> None:
    name, key = unique(), unique("idem-")
    with api_server.client(api_server.merchant_key()) as http:
        first = _post(http, name, {"by": 5, "sleep_ms": 0}, key)
        again = _post(http, name, {"by": 5, "sleep_ms": 0}, key)
        # The same JSON re-ordered and re-spaced is the same request.
        reordered = http.post(
            f"/v1/counters/{name}/increment",
            content=b'{ "sleep_ms": 0,\n  "by": 5 }',
            headers={"Idempotency-Key": key, "content-type": "application/json"},
        )
    assert first.status_code == 200 and first.json()["seq"] == 5
    assert "idempotent-replayed" not in first.headers
    for replay in (again, reordered):
        assert replay.status_code == 200
        assert replay.content == first.content
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.headers["request-id"] != first.headers["request-id"]
    assert _count(api_server, name) == 5


def test_without_a_key_every_request_has_its_effect(api_server: ApiServer) -> None:
    name = unique()
    with api_server.client(api_server.merchant_key()) as http:
        assert [_post(http, name, {"by": 2}).json()["seq"] for _ in range(3)] == [2, 4, 6]


def test_the_same_key_with_another_request_is_a_conflict(api_server: ApiServer) -> None:
    name, key = unique(), unique("idem-")
    with api_server.client(api_server.merchant_key()) as http:
        assert _post(http, name, {"by": 1}, key).status_code == 200
        other_body = _post(http, name, {"by": 2}, key)
        other_path = _post(http, unique(), {"by": 1}, key)
    for response in (other_body, other_path):
        assert response.status_code == 409
        error = response.json()["error"]
        assert error["code"] == "idempotency_key_reused" and error["param"] == "Idempotency-Key"
    assert _count(api_server, name) == 1


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("k", True),
        ("x" * 255, True),
        ("a key with spaces ~!", True),
        ("", False),
        ("x" * 256, False),
        ("tab\there", False),
        ("caf\xe9", False),
    ],
)
def test_key_syntax(api_server: ApiServer, key: str, ok: bool) -> None:
    name = unique()
    with api_server.client(api_server.merchant_key()) as http:
        response = http.post(
            f"/v1/counters/{name}/increment",
            json={"by": 1},
            headers=[(b"Idempotency-Key", key.encode("latin-1"))],
        )
    if ok:
        assert response.status_code == 200
    else:
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "idempotency_key_invalid"
        assert _count(api_server, name) == 0


def _race(api_server: ApiServer, plain: str, name: str, key: str) -> list[httpx.Response]:
    """Two requests with one key, released together, each inside a 300 ms transaction."""
    results: list[httpx.Response] = []
    barrier = threading.Barrier(2)

    def send() -> None:
        with api_server.client(plain) as http:
            barrier.wait()
            results.append(_post(http, name, {"by": 7, "sleep_ms": 300}, key))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_concurrent_requests_with_one_key_have_one_effect(api_server: ApiServer) -> None:
    plain = api_server.merchant_key()
    for _ in range(3):
        name, key = unique(), unique("idem-")
        results = _race(api_server, plain, name, key)
        # The second waits for the first's transaction (PostgreSQL: on its uncommitted insert
        # of the key; SQLite: for the writer lock), then replays its committed answer.
        assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
        assert results[0].content == results[1].content
        assert sorted(r.headers.get("idempotent-replayed", "") for r in results) == ["", "true"]
        assert _count(api_server, name) == 7


def test_a_typed_4xx_rolls_back_and_is_replayed(api_server: ApiServer) -> None:
    name, key = unique(), unique("idem-")
    body = {"by": 3, "fail_with": "not_found"}
    with api_server.client(api_server.merchant_key()) as http:
        first = _post(http, name, body, key)
        again = _post(http, name, body, key)
    assert first.status_code == 404 and first.json()["error"]["code"] == "not_found"
    assert again.status_code == 404 and again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["error"]["request_id"] == first.headers["request-id"]
    assert _count(api_server, name) == 0  # the bump before the error was rolled back


@pytest.mark.parametrize(("trap", "status"), [("database_unavailable", 503), ("crash", 500)])
def test_a_5xx_is_not_stored_and_the_retry_runs(
    api_server: ApiServer, trap: str, status: int
) -> None:
    name, key = unique(), unique("idem-")
    with api_server.client(api_server.merchant_key()) as http:
        http.post(f"/test/counters/{name}/arm", params={"trap": trap}).raise_for_status()
        failed = _post(http, name, {"by": 4}, key)
        assert failed.status_code == status
        assert _count(api_server, name) == 0
        retried = _post(http, name, {"by": 4}, key)
    assert retried.status_code == 200 and retried.json()["seq"] == 4
    assert "idempotent-replayed" not in retried.headers


def test_records_are_per_merchant_and_per_operator_key(api_server: ApiServer) -> None:
    merchant = api_server.new_merchant()
    key_a, key_b = api_server.merchant_key(merchant), api_server.merchant_key(merchant)
    stranger = api_server.merchant_key()
    op_1, op_2 = api_server.operator_key(), api_server.operator_key()
    name, key = unique(), unique("idem-")
    answers = []
    for plain in (key_a, key_b, stranger, op_1, op_2, op_1):
        with api_server.client(plain) as http:
            answers.append(_post(http, name, {"by": 1}, key))
    assert [a.status_code for a in answers] == [200] * 6
    replayed = [a.headers.get("idempotent-replayed") == "true" for a in answers]
    # key_b shares key_a's merchant; op_1's second request is its own replay.
    assert replayed == [False, True, False, False, False, True]
    assert answers[1].content == answers[0].content
    assert _count(api_server, name) == 4


def test_an_in_flight_key_is_refused_then_taken_over_after_the_timeout(
    api_server: ApiServer,
) -> None:
    merchant = api_server.new_merchant()
    plain = api_server.merchant_key(merchant)
    name, key = unique(), unique("idem-")
    path = f"/v1/counters/{name}/increment"
    body = json.dumps({"by": 9}).encode()
    in_flight = IdempotentRequest(key, "POST", path, request_fingerprint("POST", path, body))
    # A request that claimed the key in a transaction of its own and has not answered yet.
    with api_server.database.write() as conn:
        assert claim(conn, merchant, in_flight, api_server.now_ns()) is None
    with api_server.client(plain) as http:
        busy = _post(http, name, {"by": 9}, key)
        assert busy.status_code == 409
        assert busy.json()["error"]["code"] == "idempotency_key_in_use"
        assert _count(api_server, name) == 0
        api_server.advance(IDEMPOTENCY_IN_FLIGHT_TIMEOUT_S)
        taken_over = _post(http, name, {"by": 9}, key)
    assert taken_over.status_code == 200 and _count(api_server, name) == 9


def test_an_expired_record_no_longer_binds_its_key(api_server: ApiServer) -> None:
    name, key = unique(), unique("idem-")
    with api_server.client(api_server.merchant_key()) as http:
        assert _post(http, name, {"by": 1}, key).status_code == 200
        api_server.advance(IDEMPOTENCY_TTL_S)
        fresh = _post(http, name, {"by": 2}, key)  # another body: no longer a conflict
    assert fresh.status_code == 200 and fresh.json()["seq"] == 3


# -- in process, both databases ------------------------------------------------------------------

OPERATOR = Principal("key_op1", "operator", None)


def _req(key: str, body: bytes = b"{}") -> IdempotentRequest:
    return IdempotentRequest(key, "POST", "/x", request_fingerprint("POST", "/x", body))


def test_purge_deletes_expired_records_in_bounded_batches(database: Database) -> None:
    clock = FakeClock()
    for i in range(5):
        with database.write() as conn:
            assert claim(conn, "key_op1", _req(f"k{i}"), clock.now_ns()) is None
            complete(conn, "key_op1", f"k{i}", 200, b"{}")
        clock.advance(60)
    # Records k0..k4 expire 24 h after their creation, one minute apart.
    clock.advance(IDEMPOTENCY_TTL_S - 5 * 60 + 1)  # k0 has expired... and k1? not yet
    assert purge_expired(database, clock=clock) == 1
    clock.advance(3 * 60)  # k1, k2, k3 too
    assert purge_expired(database, clock=clock, batch=2) == 2
    assert purge_expired(database, clock=clock, batch=2) == 1
    assert purge_expired(database, clock=clock) == 0
    with database.read() as conn:
        left = conn.execute(sa.text("SELECT key FROM payments_idempotency_keys")).scalars().all()
    assert left == ["k4"]
    with pytest.raises(ValueError):
        purge_expired(database, clock=clock, batch=0)


def test_run_idempotent_with_a_transaction_object(database: Database) -> None:
    """The payments service's ``transaction()`` yields an object with ``.conn``."""

    @contextmanager
    def transaction() -> Iterator[SimpleNamespace]:
        with database.write() as conn:
            yield SimpleNamespace(conn=conn, now_ns=0)

    calls = []

    def operation(tx: SimpleNamespace) -> tuple[int, dict[str, int]]:
        assert connection_of(tx) is tx.conn
        calls.append(1)
        return 201, {"n": len(calls)}

    clock = FakeClock()
    first = run_idempotent(transaction, OPERATOR, _req("a"), operation, clock=clock)
    second = run_idempotent(transaction, OPERATOR, _req("a"), operation, clock=clock)
    assert first == (201, b'{"n":1}', False) and second == (201, b'{"n":1}', True)
    with pytest.raises(IdempotencyKeyReused):
        run_idempotent(transaction, OPERATOR, _req("a", b'{"x":1}'), operation, clock=clock)
    assert len(calls) == 1
    # Without a key the operation just runs, and a typed error propagates.
    no_key = IdempotentRequest(None, "POST", "/x", "")
    assert run_idempotent(transaction, OPERATOR, no_key, operation, clock=clock).body == b'{"n":2}'

    def refuse(tx: SimpleNamespace) -> tuple[int, dict[str, int]]:
        raise Conflict("no")

    with pytest.raises(Conflict):
        run_idempotent(transaction, OPERATOR, no_key, refuse, clock=clock)
    stored = run_idempotent(transaction, OPERATOR, _req("b"), refuse, clock=clock)
    assert stored.status == 409 and json.loads(stored.body)["error"]["code"] == "conflict"
    assert run_idempotent(transaction, OPERATOR, _req("b"), operation, clock=clock).replayed
    with pytest.raises(TypeError):
        connection_of(SimpleNamespace(conn="not a connection"))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(_json, st.randoms(use_true_random=False), st.sampled_from([None, 0, 2]))
def test_canonical_body_ignores_key_order_and_whitespace(
    document: Any, random: Any, indent: int | None
) -> None:
    def shuffled(value: Any) -> Any:
        if isinstance(value, dict):
            items = list(value.items())
            random.shuffle(items)
            return {k: shuffled(v) for k, v in items}
        if isinstance(value, list):
            return [shuffled(v) for v in value]
        return value

    plain = json.dumps(document).encode()
    other = json.dumps(shuffled(document), indent=indent, ensure_ascii=bool(indent)).encode()
    assert canonical_body(plain) == canonical_body(other)
    assert json.loads(canonical_body(plain)) == document


def test_canonical_body_keeps_non_json_bytes_and_distinguishes_values() -> None:
    assert canonical_body(b"\xff\x00not json") == b"\xff\x00not json"
    assert canonical_body(b"  ") == b""
    assert request_fingerprint("POST", "/a", b'{"a":1}') != request_fingerprint(
        "POST", "/a", b'{"a":2}'
    )
    assert request_fingerprint("POST", "/a", b"{}") != request_fingerprint("POST", "/b", b"{}")
    assert request_fingerprint("post", "/a", b"{}") == request_fingerprint("POST", "/a", b"{}")


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300))
def test_validate_key_accepts_exactly_printable_ascii_up_to_255(key: str) -> None:
    expected = 1 <= len(key) <= 255 and all(32 <= ord(ch) <= 126 for ch in key)
    if expected:
        assert validate_key(key) == key
    else:
        with pytest.raises(IdempotencyKeyInvalid):
            validate_key(key)
    assert validate_key(None) is None
