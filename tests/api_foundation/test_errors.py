"""The one error shape, for every kind of failure, over real HTTP; and the status table."""

from __future__ import annotations

import importlib
import pkgutil
import re
import time
from collections.abc import Iterator

import httpx
import pytest

import paykeep
from paykeep.api.errors import STATUS_BY_CODE, STATUS_BY_TYPE, status_for
from paykeep.api.foundation import BODY_BYTES_MAX
from paykeep.errors import PaykeepError, registered_errors
from tests.api_foundation.conftest import ApiServer

ERROR_KEYS = {"type", "code", "message", "param", "request_id"}
#: The error modules the test server imports (GET /v1/raise/{code} raises any of them).
SERVER_ERROR_MODULES = {
    "paykeep.errors",
    "paykeep.db.errors",
    "paykeep.ledger.errors",
    "paykeep.gateway.payouts.errors",
    "paykeep.security.errors",
    "paykeep.security.api_keys",
    "paykeep.api.errors",
}


def _import_everything() -> None:
    root = paykeep.__path__
    for info in pkgutil.walk_packages(root, prefix="paykeep."):
        if ".migrations" in info.name:
            continue
        importlib.import_module(info.name)


def test_every_registered_error_type_has_a_status() -> None:
    _import_everything()
    registry = registered_errors()
    assert len(registry) > 50
    unmapped = {code: cls.type for code, cls in registry.items() if cls.type not in STATUS_BY_TYPE}
    assert not unmapped, f"add these types to paykeep.api.errors.STATUS_BY_TYPE: {unmapped}"
    assert set(STATUS_BY_CODE) <= set(registry)
    for code, cls in registry.items():
        assert 400 <= status_for(cls) <= 599, code


def test_status_for_an_unknown_type_is_500() -> None:
    class Odd(PaykeepError):
        type = "no_such_family"

    assert status_for(Odd("x")) == status_for(Odd) == 500


def assert_error(
    response: httpx.Response, status: int, code: str, param: str | None = None
) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    error: dict[str, object] = body["error"]
    assert error["code"] == code
    assert error["param"] == param
    assert re.fullmatch(r"req_[A-Za-z0-9_-]{16}", str(error["request_id"]))
    assert error["request_id"] == response.headers["request-id"]
    return error


def _server_codes() -> Iterator[tuple[str, type[PaykeepError]]]:
    import tests.api_foundation.app_for_tests  # noqa: F401  (registers what the server has)

    for code, cls in sorted(registered_errors().items()):
        if cls.__module__ in SERVER_ERROR_MODULES:
            yield code, cls


def test_typed_errors_map_by_type_over_http(api_server: ApiServer) -> None:
    seen_types = set()
    with api_server.client() as http:
        for code, cls in _server_codes():
            response = http.get(f"/v1/raise/{code}")
            error = assert_error(response, status_for(cls), code, "somewhere")
            assert error["type"] == cls.type and error["message"] == "raised on purpose"
            seen_types.add(cls.type)
    assert {"invalid_request", "not_found", "conflict", "rate_limit", "api_error"} <= seen_types
    assert {"insufficient_funds", "authentication_error", "permission_error"} <= seen_types
    assert "unprocessable" in seen_types


def test_validation_errors_name_the_dotted_field(api_server: ApiServer) -> None:
    with api_server.client() as http:
        nested = http.post(
            "/v1/echo",
            json={"reference": "r", "items": [{"description": "a", "quantity": 1},
                                             {"description": "b", "quantity": 0}]},
        )  # fmt: skip
        missing = http.post("/v1/echo", json={"items": []})
        wrong_type = http.post("/v1/echo", json={"reference": "r", "items": "many"})
        query = http.get("/v1/groups/g/counters", params={"limit": "ten"})
    assert_error(nested, 400, "parameter_invalid", "items.1.quantity")
    assert_error(missing, 400, "parameter_invalid", "reference")
    assert_error(wrong_type, 400, "parameter_invalid", "items")
    # Authentication runs before query validation on this route: it is a 401 first.
    assert query.status_code == 401


def test_malformed_json(api_server: ApiServer) -> None:
    with api_server.client() as http:
        response = http.post(
            "/v1/echo", content=b'{"reference": ', headers={"content-type": "application/json"}
        )
        not_json_type = http.post("/v1/echo", content=b'{"reference": "r", "items": []}')
    assert_error(response, 400, "body_invalid_json")
    assert_error(not_json_type, 400, "parameter_invalid")


def test_unknown_route_and_wrong_method(api_server: ApiServer) -> None:
    with api_server.client() as http:
        unknown = http.get("/v1/no/such/route")
        wrong_method = http.delete("/v1/echo")
    assert_error(unknown, 404, "route_not_found")
    error = assert_error(wrong_method, 405, "method_not_allowed")
    assert error["type"] == "invalid_request"
    assert wrong_method.headers["allow"] == "POST"


@pytest.mark.parametrize("path", ["/v1/echo", "/v1/echo-raw"])
def test_body_too_large(api_server: ApiServer, path: str) -> None:
    big = b'{"reference": "' + b"x" * BODY_BYTES_MAX + b'", "items": []}'
    with api_server.client() as http:
        declared = http.post(path, content=big, headers={"content-type": "application/json"})

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(big), 4096):
                yield big[start : start + 4096]

        # No Content-Length (chunked): only counting the bytes read can catch it.
        chunked = http.post(path, content=chunks(), headers={"content-type": "application/json"})
        just_fits = http.post("/v1/echo-raw", content=b"x" * BODY_BYTES_MAX)
    assert_error(declared, 413, "body_too_large")
    assert "content-length" not in chunked.request.headers
    assert_error(chunked, 413, "body_too_large")
    assert just_fits.status_code == 200 and just_fits.json() == {"bytes": BODY_BYTES_MAX}


def test_an_unexpected_exception_is_a_generic_500_logged_with_its_traceback(
    api_server: ApiServer,
) -> None:
    with api_server.client() as http:
        response = http.get("/v1/crash")
    error = assert_error(response, 500, "internal_error")
    assert error["type"] == "api_error"
    for leak in ("Traceback", "RuntimeError", "secret", "hunter2", "/srv/", ".py", "File "):
        assert leak not in response.text
    deadline = time.monotonic() + 10
    log = ""
    while time.monotonic() < deadline:
        log = api_server.log_path.read_text()
        if f"request {error['request_id']} failed" in log:
            break
        time.sleep(0.05)
    block = log[log.index(f"request {error['request_id']} failed") :]
    assert "Traceback (most recent call last)" in block and "RuntimeError: secret" in block


def test_every_response_has_its_own_request_id(api_server: ApiServer) -> None:
    with api_server.client() as http:
        responses = [http.get("/test/clock") for _ in range(5)] + [http.get("/nope")]
    ids = [r.headers["request-id"] for r in responses]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"req_[A-Za-z0-9_-]{16}", i) for i in ids)
    assert responses[0].headers["content-type"] == "application/json"
