"""A process killed while its authorisation is on the wire: the recovery sweep reverses it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from paykeep.config import Settings
from paykeep.gateway.cards.model import CardOutcome, CardPaymentState
from tests.gateway.cards.conftest import Rig

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from paykeep.config import Settings
    from paykeep.db import open_database
    from paykeep.gateway.cards.client import CardNetworkClient
    from paykeep.gateway.cards.service import CardGateway
    from paykeep.gateway.vault.service import CardVault
    from paykeep.ledger.service import Ledger

    data_dir, url, port, token = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]), sys.argv[4]
    database = open_database(Settings(Path(data_dir), url))
    client = CardNetworkClient("127.0.0.1", port, timeout_s=60)
    gateway = CardGateway(database, Ledger(database), CardVault.open(database, Path(data_dir)),
                          client, timeout_s=60)
    gateway.authorise(token, 2_500, "EUR", payment_id="crash-1")
    """
)


def test_a_payment_left_in_flight_is_reversed_by_the_sweep(rig: Rig, settings: Settings) -> None:
    pan, token = rig.new_card(10_000)
    rig.faults({"kind": "delay", "delay_s": 30, "next": 1, "card": rig.issuer_tokens[pan]})
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(settings.data_dir), settings.database_url or "",
         str(rig.banksim.card_port), token],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if rig.issuer(pan)["held_minor"] == 2_500:
                break  # the issuer applied it; the answer is being held back
            time.sleep(0.05)
        else:
            raise AssertionError("the authorisation never reached the issuer")
        child.kill()
    finally:
        child.wait(timeout=10)
    stuck = rig.gateway.messages("crash-1")
    assert [m.direction.value for m in stuck] == ["out"]
    assert rig.gateway.recover(min_age_s=3600).reversed == 0  # too young: left alone
    report = rig.gateway.recover(min_age_s=0)
    assert report.reversed == 1
    result = rig.gateway.payment("crash-1")
    assert (result.state, result.outcome) == (CardPaymentState.REVERSED,
                                              CardOutcome.TIMED_OUT_REVERSED)  # fmt: skip
    view = rig.issuer(pan)
    assert (view["balance_minor"], view["held_minor"]) == (10_000, 0)
    assert rig.wallet_credits() == 0
