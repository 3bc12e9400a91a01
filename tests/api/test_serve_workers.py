"""``paykeep serve --workers 2``: several API processes over one database. The escrow flow
works through either process, and a release the risk controls hold — its transaction, the
decision with it, rolled back in the API process that decided — is still recorded: each API
process records its own rolled-back decisions (the serving process's workers cannot reach
another process's memory)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from paykeep.bench.serveproc import ServerProcess
from tests.api.conftest import serving
from tests.api.test_money_routes import Shop, wait_for

BIG = 250_000  # new_account_high_value's default floor is 200,000: a new buyer's release is held


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with serving(request, tmp_path_factory, "--workers", "2") as proc:
        yield proc


def _decisions(server: ServerProcess, event_id: str) -> list[str]:
    database = server.info["database"]
    url = (
        f"sqlite:///{server.log_path.parent / 'paykeep.sqlite3'}"
        if database == "sqlite"
        else database
    )
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT outcome FROM aml_decisions WHERE event_id = :e"), {"e": event_id}
            ).all()
        return [str(r[0]) for r in rows]
    finally:
        engine.dispose()


def test_a_held_release_is_recorded_by_the_api_process_that_decided(server: ServerProcess) -> None:
    shop = Shop.open(server)
    try:
        buyer = shop.buyer()
        order, token = shop.paid_order(buyer["id"], BIG)
        shop.ship(order["id"])
        held = shop.confirm(token)
        assert held.status_code == 409, held.text
        assert "compliance review" in held.json()["error"]["message"]
        assert shop.get_order(order["id"])["state"] == "awaiting_receipt"
        # Rolled back with the release, the decision is recorded by that process's flusher.
        outcomes = wait_for(
            "the held release's decision to be recorded",
            lambda: _decisions(server, f"release:{order['id']}"),
            timeout_s=20,
        )
        assert outcomes == ["review"]
        # The payment's own decision committed with it (review: it went ahead, case open).
        assert _decisions(server, f"payment:{order['id']}") == ["review"]
        # A retry gets the recorded answer; the operator's confirmation releases the money.
        again = shop.confirm(token)
        assert again.status_code == 409, again.text
        confirmed = shop.operator.post(f"/v1/orders/{order['id']}/confirm")
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["state"] == "completed"
    finally:
        shop.close()
