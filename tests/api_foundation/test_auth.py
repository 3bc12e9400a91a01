"""Roles and ownership over HTTP: operator-only routes, and "not yours" looks like "missing"."""

from __future__ import annotations

from typing import Any

import pytest

from paykeep.api.auth import check_owner, owner_filter, require_operator
from paykeep.api.errors import OperatorOnly, ResourceMissing
from paykeep.security.api_keys import Principal
from tests.api_foundation.conftest import ApiServer

OPERATOR = Principal("key_op", "operator", None)
MERCHANT = Principal("key_m", "merchant", "mch_1")


def test_the_pure_rules() -> None:
    assert owner_filter(OPERATOR) is None and owner_filter(MERCHANT) == "mch_1"
    assert require_operator(OPERATOR) is OPERATOR
    with pytest.raises(OperatorOnly):
        require_operator(MERCHANT)
    check_owner(OPERATOR, "mch_2", "order", "ord_1")
    check_owner(OPERATOR, None, "order", "ord_1")
    check_owner(MERCHANT, "mch_1", "order", "ord_1")
    for owner in ("mch_2", None):
        with pytest.raises(ResourceMissing) as caught:
            check_owner(MERCHANT, owner, "order", "ord_1")
        assert caught.value.code == "resource_missing" and caught.value.param == "id"


def test_operator_only_routes(api_server: ApiServer) -> None:
    with api_server.client(api_server.operator_key()) as http:
        assert http.get("/v1/operator-only").json() == {"ok": True}
    with api_server.client(api_server.merchant_key()) as http:
        refused = http.get("/v1/operator-only")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "operator_only"
    assert refused.json()["error"]["type"] == "permission_error"


def _without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body["error"].items() if k != "request_id"}


def test_another_merchants_object_is_indistinguishable_from_a_missing_one(
    api_server: ApiServer,
) -> None:
    mine, theirs = api_server.new_merchant(), api_server.new_merchant()
    with api_server.client(api_server.merchant_key(mine)) as http:
        assert http.get(f"/v1/things/{mine}/thg_1").status_code == 200
        foreign = http.get(f"/v1/things/{theirs}/thg_1")
        absent = http.get("/v1/things/nobody/thg_1")
    assert foreign.status_code == absent.status_code == 404
    assert _without_request_id(foreign.json()) == _without_request_id(absent.json())
    assert foreign.json()["error"]["code"] == "resource_missing"
    assert set(foreign.headers) - {"request-id", "date"} == set(absent.headers) - {
        "request-id",
        "date",
    }
    with api_server.client(api_server.operator_key()) as http:
        assert http.get(f"/v1/things/{theirs}/thg_1").status_code == 200
