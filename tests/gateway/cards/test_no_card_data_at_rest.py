"""A full authorise/capture with a known test card: the PAN and the security code are nowhere
in the database files (main file, WAL, shared memory) nor in the logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from paykeep.bench.gateway import BanksimProcess
from paykeep.config import SQLITE_FILE_NAME, Settings
from paykeep.db import open_database
from paykeep.gateway.cards.client import CardNetworkClient
from paykeep.gateway.cards.model import CardPaymentState
from paykeep.gateway.cards.service import CardGateway
from paykeep.gateway.vault.service import CardVault
from paykeep.ledger.model import NewAccount
from paykeep.ledger.service import Ledger

PAN = "378282246310005"  # built-in amex test card at banksim
CID = "1234"


def test_pan_and_security_code_are_never_at_rest(
    banksim: BanksimProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    data_dir = tmp_path / "data"
    database = open_database(Settings(data_dir=data_dir))
    ledger = Ledger(database)
    vault = CardVault.open(database, data_dir)
    wallet = ledger.create_account(NewAccount(ledger.ids.next_id(), "EUR", 2, name="buyer:w"))
    with CardNetworkClient("127.0.0.1", banksim.card_port) as client:
        gateway = CardGateway(database, ledger, vault, client)
        card = vault.tokenize(PAN, 12, 2029)
        auth = gateway.authorise(card.token, 990, "EUR", payment_id="pan-1", security_code=CID)
        done = gateway.capture("pan-1", credit_account_id=wallet.id)
        assert done.state is CardPaymentState.CAPTURED
        assert auth.approved
        assert gateway.authorise(card.token, 990, "EUR", payment_id="pan-1") == done
        # Keep the WAL un-checkpointed while we read it.
        files = sorted(data_dir.glob(SQLITE_FILE_NAME + "*"))
        assert any(f.name.endswith("-wal") for f in files)
        blobs = {f.name: f.read_bytes() for f in files}
    database.dispose()
    blobs.update(
        {f.name + "(closed)": f.read_bytes() for f in data_dir.glob(SQLITE_FILE_NAME + "*")}
    )
    out, err = capfd.readouterr()
    texts = {"logs": caplog.text, "stdout": out, "stderr": err, "result": repr(done)}
    for secret in (PAN, PAN[:6] + PAN[6:], f"CV04{CID}"):
        for name, blob in blobs.items():
            assert secret.encode() not in blob, f"{secret[:2]}… found in {name}"
            assert secret.encode("utf-16-le") not in blob, name
        for name, text in texts.items():
            assert secret not in text, f"found in {name}"
    assert CID not in caplog.text
    # The control: the same grep does find what we did store.
    assert any(card.token.encode() in blob for blob in blobs.values())
