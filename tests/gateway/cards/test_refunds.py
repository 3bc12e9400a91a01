"""Card refunds through the gateway, against a real banksim over TCP, on SQLite and
PostgreSQL: money moves in the ledger (wallet -> clearing) exactly once and only on approval;
declines move nothing; a timeout is reversed; a crash between persisting and the answer is
recovered by the sweep; refunds never total more than was captured."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import sqlalchemy as sa

from paykeep.config import Settings
from paykeep.gateway.cards import iso8583 as wire
from paykeep.gateway.cards.errors import (
    CardDebitAccountInvalid,
    CardPaymentNotRefundable,
    CardRefundExceedsCapture,
    CardRefundIdReused,
)
from paykeep.gateway.cards.model import CardOutcome, CardRefundState
from paykeep.ledger.model import NewTransfer, TransferFlags
from tests.gateway.cards.conftest import CALL_TIMEOUT_S, Rig

R, O = CardRefundState, CardOutcome  # noqa: E741
DELAY_S = CALL_TIMEOUT_S + 0.6


def sold(rig: Rig, amount: int = 5_000, balance: int = 10_000) -> tuple[str, str]:
    """(pan, payment id) of a fresh card charged ``amount`` into the rig's wallet."""
    pan, token = rig.new_card(balance)
    payment_id = f"sale-{pan[-8:]}"
    result = rig.gateway.sale(token, amount, "EUR", payment_id=payment_id,
                              credit_account_id=rig.wallet.id)  # fmt: skip
    assert result.approved
    return pan, payment_id


def wallet_debits(rig: Rig) -> int:
    return rig.ledger.account(rig.wallet.id).debits_posted


def clearing_credits(rig: Rig) -> int:
    return rig.ledger.account(rig.gateway.clearing_account_id()).credits_posted


def test_an_approved_refund_credits_the_card_and_moves_the_money_once(rig: Rig) -> None:
    pan, payment_id = sold(rig)
    clearing_before = clearing_credits(rig)
    result = rig.gateway.refund("rf-1", payment_id, 2_000, "EUR", rig.wallet.id)
    assert (result.state, result.outcome, result.response_code) == (R.REFUNDED, O.APPROVED, "00")
    assert (result.payment_id, result.last4) == (payment_id, pan[-4:])
    assert rig.issuer(pan)["balance_minor"] == 10_000 - 5_000 + 2_000
    assert wallet_debits(rig) == 2_000
    assert clearing_credits(rig) - clearing_before == 2_000
    assert result.ledger_transfer_id is not None
    transfer = rig.ledger.transfer(result.ledger_transfer_id)
    assert (transfer.debit_account_id, transfer.credit_account_id, transfer.amount_minor) == (
        rig.wallet.id, rig.gateway.clearing_account_id(), 2_000)  # fmt: skip
    seen = len(rig.seen(pan))
    # A replay returns the stored result: nothing sent, nothing moved again.
    assert rig.gateway.refund("rf-1", payment_id, 2_000, "EUR", rig.wallet.id) == result
    assert len(rig.seen(pan)) == seen
    assert wallet_debits(rig) == 2_000
    with pytest.raises(CardRefundIdReused):
        rig.gateway.refund("rf-1", payment_id, 2_001, "EUR", rig.wallet.id)
    trail = rig.gateway.refund_messages("rf-1")
    assert [(m.direction.value, m.mti) for m in trail] == [("out", "0200"), ("in", "0200")]


def test_refunds_never_total_more_than_was_captured(rig: Rig) -> None:
    pan, payment_id = sold(rig, 5_000)
    assert rig.gateway.refund("rf-b1", payment_id, 3_000, "EUR", rig.wallet.id).approved
    seen = len(rig.seen(pan))
    with pytest.raises(CardRefundExceedsCapture):
        rig.gateway.refund("rf-b2", payment_id, 2_001, "EUR", rig.wallet.id)
    assert len(rig.seen(pan)) == seen  # refused before anything was sent
    assert rig.gateway.refund("rf-b3", payment_id, 2_000, "EUR", rig.wallet.id).approved
    with pytest.raises(CardRefundExceedsCapture):
        rig.gateway.refund("rf-b4", payment_id, 1, "EUR", rig.wallet.id)
    assert wallet_debits(rig) == 5_000
    assert rig.issuer(pan)["balance_minor"] == 10_000


def test_only_a_captured_payment_can_be_refunded(rig: Rig) -> None:
    _pan, token = rig.new_card(10_000)
    rig.gateway.authorise(token, 1_000, "EUR", payment_id="auth-nr")
    with pytest.raises(CardPaymentNotRefundable):
        rig.gateway.refund("rf-nr", "auth-nr", 1_000, "EUR", rig.wallet.id)


def test_a_declined_refund_moves_nothing(rig: Rig) -> None:
    pan, payment_id = sold(rig)
    # The issuer no longer has the sale (reversed behind the gateway's back): it answers 25.
    sale = rig.gateway.messages(payment_id)[0]
    answer = rig.client.call({
        "t": "0400", "3": "000000", "4": f"{5_000:012d}", "7": "0102030405",
        "11": rig.client.next_stan(), "41": "PAYKEEP1", "42": "PAYKEEPMERCH001", "49": "978",
        "90": wire.original_data_elements(sale.mti, sale.stan, sale.transmitted),
    })  # fmt: skip
    assert answer["39"] == "00"
    result = rig.gateway.refund("rf-d", payment_id, 1_000, "EUR", rig.wallet.id)
    assert (result.state, result.outcome, result.response_code) == (R.DECLINED, O.DECLINED, "25")
    assert wallet_debits(rig) == 0
    assert rig.issuer(pan)["balance_minor"] == 10_000  # only the behind-the-back reversal


def test_an_unavailable_issuer_moves_nothing(rig: Rig) -> None:
    pan, payment_id = sold(rig)
    rig.faults({"kind": "unavailable", "next": 1, "card": rig.issuer_tokens[pan]})
    result = rig.gateway.refund("rf-u", payment_id, 1_000, "EUR", rig.wallet.id)
    assert (result.state, result.outcome) == (R.UNAVAILABLE, O.UNAVAILABLE)
    assert wallet_debits(rig) == 0
    # Not counted against the bound: the whole sale can still be refunded.
    assert rig.gateway.refund("rf-u2", payment_id, 5_000, "EUR", rig.wallet.id).approved


@pytest.mark.parametrize("kind", ["lost", "delay"])
def test_a_refund_without_an_answer_is_reversed(rig: Rig, kind: str) -> None:
    pan, payment_id = sold(rig)
    rule: dict[str, object] = {"kind": kind, "next": 1, "card": rig.issuer_tokens[pan],
                               "mtis": ["0200"]}  # fmt: skip
    if kind == "delay":
        rule["delay_s"] = DELAY_S
    rig.faults(rule)
    result = rig.gateway.refund("rf-t", payment_id, 2_000, "EUR", rig.wallet.id)
    assert (result.state, result.outcome) == (R.REVERSED, O.TIMED_OUT_REVERSED)
    effects = [s["effect"] for s in rig.seen(pan)]
    assert effects[-2:] == ["credit", "refund_reversal"]
    assert rig.issuer(pan)["balance_minor"] == 5_000  # credited, then taken back
    assert wallet_debits(rig) == 0
    trail = [(m.direction.value, m.mti) for m in rig.gateway.refund_messages("rf-t")]
    assert trail[:2] == [("out", "0200"), ("timeout", "0200")]
    assert trail[-2:] == [("out", "0400"), ("in", "0400")]
    time.sleep(DELAY_S)  # a late answer to the refund matches nothing
    assert rig.gateway.refund("rf-t2", payment_id, 5_000, "EUR", rig.wallet.id).approved


def test_a_refund_posts_the_callers_reserving_hold(rig: Rig) -> None:
    _pan, payment_id = sold(rig)
    hold_id = rig.ledger.ids.next_id()
    rig.ledger.create_transfer(
        NewTransfer(id=hold_id, debit_account_id=rig.wallet.id,
                    credit_account_id=rig.gateway.clearing_account_id(), amount_minor=1_500,
                    currency="EUR", code=32, flags=int(TransferFlags.PENDING))
    )  # fmt: skip
    with pytest.raises(CardDebitAccountInvalid):  # the hold is for 1,500, not 1,000
        rig.gateway.refund("rf-h0", payment_id, 1_000, "EUR", rig.wallet.id,
                           pending_transfer_id=hold_id)  # fmt: skip
    result = rig.gateway.refund("rf-h", payment_id, 1_500, "EUR", rig.wallet.id,
                                pending_transfer_id=hold_id)  # fmt: skip
    assert result.state is R.REFUNDED
    wallet = rig.ledger.account(rig.wallet.id)
    assert (wallet.debits_posted, wallet.debits_pending) == (1_500, 0)


def test_the_refund_trail_is_append_only(rig: Rig) -> None:
    _pan, payment_id = sold(rig)
    rig.gateway.refund("rf-ao", payment_id, 100, "EUR", rig.wallet.id)
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), rig.database.write() as conn:
        conn.execute(sa.text("UPDATE card_refund_messages SET amount_minor = 1"))


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

    data_dir, url, port = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
    payment_id, wallet = sys.argv[4], int(sys.argv[5])
    database = open_database(Settings(Path(data_dir), url))
    client = CardNetworkClient("127.0.0.1", port, timeout_s=60)
    gateway = CardGateway(database, Ledger(database), CardVault.open(database, Path(data_dir)),
                          client, timeout_s=60)
    gateway.refund("rf-crash", payment_id, 2_500, "EUR", wallet)
    """
)


def test_a_refund_left_in_flight_by_a_crash_is_reversed_by_the_sweep(
    rig: Rig, settings: Settings
) -> None:
    pan, payment_id = sold(rig)
    rig.faults({"kind": "delay", "delay_s": 30, "next": 1, "card": rig.issuer_tokens[pan],
                "mtis": ["0200"]})  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(settings.data_dir), settings.database_url or "",
         str(rig.banksim.card_port), payment_id, str(rig.wallet.id)],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if rig.issuer(pan)["balance_minor"] == 7_500:
                break  # the issuer credited the card; the answer is being held back
            time.sleep(0.05)
        else:
            raise AssertionError("the refund never reached the issuer")
        child.kill()
    finally:
        child.wait(timeout=10)
    assert [m.direction.value for m in rig.gateway.refund_messages("rf-crash")] == ["out"]
    assert rig.gateway.recover(min_age_s=3600).refunds_reversed == 0  # too young
    report = rig.gateway.recover(min_age_s=0)
    assert report.refunds_reversed == 1
    result = rig.gateway.card_refund("rf-crash")
    assert (result.state, result.outcome) == (R.REVERSED, O.TIMED_OUT_REVERSED)
    assert rig.issuer(pan)["balance_minor"] == 5_000
    assert wallet_debits(rig) == 0
