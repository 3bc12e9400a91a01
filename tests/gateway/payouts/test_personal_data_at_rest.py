"""A payout's remittance text reaches the bank and is kept nowhere in clear, on both databases.

The remittance is free text (``paykeep payouts request --remittance``, a returned transfer's
bank reference) and may name a person: it is sealed like the creditor's name (migration 0013).
A payout carrying a distinctive text runs the whole way — request, pain.001 batch, real
banksim over HTTP, the bank's statement imported and matched, settled — then every table is
searched for the text: column by column, and below the columns (the SQLite file and its
write-ahead log byte for byte; PostgreSQL rows cast whole to text)."""

from __future__ import annotations

import json

import httpx
from lxml import etree

from paykeep.bench.gateway import BanksimProcess
from paykeep.config import Settings
from paykeep.gateway.payouts.model import BatchState, Payout, PayoutState
from tests.gateway.payouts.conftest import World
from tests.gateway.payouts.test_service import _open_bank_account
from tests.support import raw_traces, scan, spellings

PERSON = "Quirin Vandermolen"
# Plain ASCII: sepaxml transliterates to the SEPA character set, and this survives unchanged.
REMITTANCE = f"Invoice 4471 rent {PERSON} flat 2b"
PAIN = {"p": "urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"}
CAMT = {"c": "urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"}


def _remittances(document: bytes) -> dict[str, str]:
    """``end-to-end id -> remittance text`` of each line of a pain.001 file."""
    out = {}
    for tx in etree.fromstring(document).iterfind(".//p:CdtTrfTxInf", PAIN):
        end_to_end_id = tx.findtext("p:PmtId/p:EndToEndId", namespaces=PAIN)
        out[end_to_end_id] = tx.findtext("p:RmtInf/p:Ustrd", namespaces=PAIN)
    return out


def test_a_typed_remittance_reaches_the_bank_and_is_stored_nowhere_in_clear(
    world: World, bank: BanksimProcess, http: httpx.Client, settings: Settings
) -> None:
    _open_bank_account(http, world, balance=100_000)
    payout = world.request(request_id="rent-1", amount=2_000, remittance=REMITTANCE)
    other = world.request(request_id="plain-1", amount=1_000)  # Paykeep's own text
    assert isinstance(payout, Payout) and isinstance(other, Payout)
    # What a payout shows (the CLI's --json, a return's answer) does not carry it either.
    assert REMITTANCE not in json.dumps(world.payouts.get(payout.payout_id).to_json())

    batch = world.payouts.batch("EUR", world.debtor)
    # The file's lines carry the text opened from its seal (and the other payout's default).
    assert _remittances(world.payouts.file(batch.batch_id)) == {
        payout.end_to_end_id: REMITTANCE,
        other.end_to_end_id: "Payout 42",
    }
    accepted = world.payouts.submit(batch.batch_id, bank.base_url)
    assert accepted.state is BatchState.ACCEPTED

    # The bank booked the line from the file it received: its statement shows the text.
    closed = http.post(f"/bank/accounts/{world.debtor.iban}/close-day").json()
    data = http.get(f"/bank/statements/{closed['statement_id']}", params={"format": "camt053"})
    booked = etree.fromstring(data.content)
    assert REMITTANCE in [u.text for u in booked.iterfind(".//c:RmtInf/c:Ustrd", namespaces=CAMT)]
    (outcome,) = world.statements.import_file(data.content).statements
    assert (outcome.matched, outcome.breaks) == (2, [])
    assert world.payouts.settle() == 2
    assert world.payouts.get(payout.payout_id).state is PayoutState.SETTLED

    needles = {"remittance text": spellings(REMITTANCE), "the person it names": spellings(PERSON)}
    assert scan(settings, needles) == []
    assert raw_traces(settings, needles) == []
