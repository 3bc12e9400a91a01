"""``paykeep cards payment|recover`` as a real subprocess against the session banksim."""

from __future__ import annotations

import json
import subprocess

from paykeep.config import Settings
from paykeep.gateway.cards.model import CardOutcome as O
from paykeep.gateway.cards.model import CardPaymentState as S
from tests.gateway.cards.conftest import Rig
from tests.support import paykeep


def cards(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return paykeep("cards", *args, "--json", settings=settings)


def test_the_sweep_command_reverses_what_a_silent_network_left(
    rig: Rig, settings: Settings
) -> None:
    pan, token = rig.new_card(10_000)
    card = rig.issuer_tokens[pan]
    with rig.banksim.http() as http:
        http.post("/faults/cards", json={"faults": [
            {"kind": "lost", "next": 1, "card": card, "mtis": ["0100"]},
            {"kind": "unavailable", "card": card, "mtis": ["0400"]},
        ]}).raise_for_status()  # fmt: skip
    result = rig.gateway.authorise(token, 1_000, "EUR", payment_id="cli-silent")
    assert result.state is S.REVERSING
    network = f"127.0.0.1:{rig.banksim.card_port}"
    # While the network still refuses reversals, the sweep reports them owed: exit 1.
    done = cards(settings, "recover", "--card-network", network, "--min-age-s", "0")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout) == {
        "reversed": 0, "reversal_pending": 1, "settled": 0,
        "refunds_reversed": 0, "refunds_reversal_pending": 0, "refunds_posted": 0,
    }  # fmt: skip
    rig.faults()
    done = cards(settings, "recover", "--card-network", network, "--min-age-s", "0")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reversed"] == 1
    assert rig.issuer(pan)["held_minor"] == 0
    shown = cards(settings, "payment", "cli-silent")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["outcome"] == O.TIMED_OUT_REVERSED.value and view["last4"] == pan[-4:]
    assert pan not in shown.stdout


def test_bad_input_exits_2(settings: Settings) -> None:
    done = cards(settings, "payment", "no-such-payment")
    assert done.returncode == 2 and "card_payment_not_found" in done.stderr
    done = cards(settings, "recover", "--card-network", "localhost")
    assert done.returncode == 2 and "HOST:PORT" in done.stderr
