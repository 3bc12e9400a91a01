"""End to end through a real ``paykeep serve`` (both databases), default rule configuration:
a buyer refunded again and again for what they paid. The refunds go ahead (the card is
credited), and the compliance operator finds the case about the buyer with the operator's
tool (``paykeep aml cases``) on the server's database. The same case through the HTTP API
(``/v1/aml/cases``) is ``test_aml_cases_api``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.test_money_routes import Shop, wait_for
from tests.serverproc import ServerProcess


@pytest.fixture
def shop(server: ServerProcess) -> Iterator[Shop]:
    opened = Shop.open(server)
    yield opened
    opened.close()


def _operator(server: ServerProcess, *args: str) -> Any:
    """``paykeep aml cases ARGS --json`` on the server's data, as an operator runs it."""
    argv = [sys.executable, "-m", "paykeep.cli", "aml", "cases", *args, "--json",
            "--data-dir", str(server.data_dir)]  # fmt: skip
    if server.info["database"] != "sqlite":  # serve.json names the PostgreSQL URL
        argv += ["--database-url", server.info["database"]]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _cases_about(server: ServerProcess, party: str) -> list[dict[str, Any]]:
    return [c for c in _operator(server, "list")["cases"] if party in c["subject_party_ids"]]


def test_an_operator_sees_the_case_of_a_buyer_refunded_again_and_again(
    server: ServerProcess, shop: Shop
) -> None:
    buyer = shop.buyer()
    party = f"buyer:{buyer['id']}"
    orders = [shop.paid_order(buyer["id"], 2_000)[0] for _ in range(3)]  # by card
    refund_ids = []
    for n, order in enumerate(orders, start=1):
        refunded = shop.http.post(f"/v1/orders/{order['id']}/refunds", json={"reason": "n/a"})
        assert refunded.status_code == 201, refunded.text
        assert refunded.json()["state"] == "completed"
        assert shop.get_order(order["id"])["state"] == "refunded"
        refund_ids.append(refunded.json()["id"])
        if n < 3:
            assert _cases_about(server, party) == []  # two refunds: under refunds_min
    # The third refund (60.00 of 60.00 paid) crossed refund_abuse's threshold: one case.
    (case,) = _cases_about(server, party)
    crossing = f"refund:{refund_ids[2]}"
    assert (case["state"], case["risk"], case["source_event_id"]) == ("open", "medium", crossing)
    shown = _operator(server, "show", str(case["case_id"]))
    alerts = [e["body"] for e in shown["evidence"] if e["kind"] == "alert"]
    assert [(a["rule"], a["party_id"]) for a in alerts] == [("refund_abuse", party)]
    assert (alerts[0]["figures"]["refunds"], alerts[0]["figures"]["refunded_minor"]) == (3, 6_000)
    # The review stopped no refund: each went back to the card that paid.

    def card_refunds() -> list[dict[str, Any]]:
        events = shop.http.get(
            "/v1/events", params={"type": "refund.card_refund_succeeded", "limit": 100}
        ).json()["data"]
        return [e["data"]["object"] for e in events if e["data"]["object"]["refund"] in refund_ids]

    wait_for("the three refunds to reach the card", lambda: len(card_refunds()) == 3)
    assert sorted(r["amount_minor"] for r in card_refunds()) == [2_000] * 3
    assert shop.wallet(buyer["id"]) == (0, 0)
