"""`paykeep serve` end to end: it starts, seeds the demo marketplace once, authenticates."""

from __future__ import annotations

from paykeep.bench.serveproc import ServerProcess


def test_serve_seeds_and_authenticates(server: ServerProcess) -> None:
    with server.client(server.operator_key) as op:
        me = op.get("/v1/whoami")
        assert me.status_code == 200
        assert me.json()["role"] == "operator"
    merchant = server.merchant(0)
    with server.client(merchant["api_key"]) as m:
        assert m.get("/v1/whoami").json()["merchant"] == merchant["id"]
    with server.client() as anonymous:
        denied = anonymous.get("/v1/whoami")
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "api_key_missing"
    assert len(server.info["merchants"]) == 3
    assert server.info["operator_key"].startswith("op_test_")
