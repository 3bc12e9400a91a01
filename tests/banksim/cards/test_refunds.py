"""Card refunds at the network (0200, processing code 200000, original in field 90), over real
TCP: the cumulative bound, unknown originals, retransmissions, reversals, faults. And a
property test of the bound against the network's own state, in process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paykeep.banksim.cardnet import PROCESSING_REFUND, CardNetwork
from paykeep.bench.gateway import BanksimProcess
from paykeep.gateway.cards import iso8583 as wire
from paykeep.gateway.cards.client import CardNetworkClient
from tests.banksim.cards.test_cardnet import add_card, card_view, request, token_of


@pytest.fixture
def client(banksim: BanksimProcess) -> Iterator[CardNetworkClient]:
    with CardNetworkClient("127.0.0.1", banksim.card_port, pool_size=1, timeout_s=3) as c:
        yield c


def original_of(message: dict[str, str]) -> str:
    return wire.original_data_elements(message["t"], message["11"], message["7"])


def refund(client: CardNetworkClient, pan: str, amount: int, original: dict[str, str]):  # type: ignore[no-untyped-def]
    message = {
        "t": "0200", "2": pan, "3": PROCESSING_REFUND, "4": f"{amount:012d}",
        "7": "0102030405", "11": client.next_stan(), "41": "TESTTERM",
        "42": "TESTACCEPTOR001", "49": "978", "90": original_of(original),
    }  # fmt: skip
    return message, client.call(message)


def test_refunds_of_a_sale_never_exceed_what_it_charged(
    banksim: BanksimProcess, client: CardNetworkClient
) -> None:
    pan = add_card(banksim, 10_000)
    sale, answer = request(client, "0200", pan, 5_000)
    assert answer["39"] == "00"
    _, first = refund(client, pan, 3_000, sale)
    assert (first["t"], first["39"], first["3"]) == ("0210", "00", PROCESSING_REFUND)
    assert card_view(banksim, pan)["balance_minor"] == 8_000
    _, over = refund(client, pan, 2_001, sale)
    assert over["39"] == "13"  # 3,000 + 2,001 > 5,000: declined, nothing credited
    assert card_view(banksim, pan)["balance_minor"] == 8_000
    _, rest = refund(client, pan, 2_000, sale)
    assert rest["39"] == "00"
    view = card_view(banksim, pan)
    assert (view["balance_minor"], view["refunded_minor"]) == (10_000, 5_000)
    _, more = refund(client, pan, 1, sale)
    assert more["39"] == "13"


def test_a_capture_is_refunded_up_to_the_captured_amount(
    banksim: BanksimProcess, client: CardNetworkClient
) -> None:
    pan = add_card(banksim, 10_000)
    auth, _ = request(client, "0100", pan, 4_000)
    capture, answer = request(client, "0200", pan, 2_500, **{"90": original_of(auth)})
    assert answer["39"] == "00"
    _, over = refund(client, pan, 2_501, capture)
    assert over["39"] == "13"
    _, ok = refund(client, pan, 2_500, capture)
    assert ok["39"] == "00"
    assert card_view(banksim, pan)["balance_minor"] == 10_000


def test_an_unknown_declined_or_reversed_original_is_not_found(
    banksim: BanksimProcess, client: CardNetworkClient
) -> None:
    pan = add_card(banksim, 1_000)
    never = {"t": "0200", "11": client.next_stan(), "7": "0102030405"}
    assert refund(client, pan, 100, never)[1]["39"] == "25"
    declined, answer = request(client, "0200", pan, 5_000)  # above the balance: 51
    assert answer["39"] == "51"
    assert refund(client, pan, 100, declined)[1]["39"] == "25"
    sale, _ = request(client, "0200", pan, 500)
    request(client, "0400", None, 500, **{"90": original_of(sale)})
    assert refund(client, pan, 100, sale)[1]["39"] == "25"
    auth, _ = request(client, "0100", pan, 300)  # an authorisation is not a charge
    assert refund(client, pan, 100, auth)[1]["39"] == "25"
    assert card_view(banksim, pan)["balance_minor"] == 700


def test_a_refund_to_another_card_is_refused(
    banksim: BanksimProcess, client: CardNetworkClient
) -> None:
    pan, other = add_card(banksim, 1_000), add_card(banksim, 1_000)
    sale, _ = request(client, "0200", pan, 500)
    assert refund(client, other, 500, sale)[1]["39"] == "05"
    assert card_view(banksim, other)["balance_minor"] == 1_000


def test_a_retransmitted_refund_is_answered_again_and_credited_once(
    banksim: BanksimProcess, client: CardNetworkClient
) -> None:
    pan = add_card(banksim, 10_000)
    sale, _ = request(client, "0200", pan, 4_000)
    message, first = refund(client, pan, 4_000, sale)
    again = client.call(message)
    assert first == again and first["39"] == "00"
    assert card_view(banksim, pan)["balance_minor"] == 10_000


def test_reversing_a_refund_takes_the_credit_back_once(
    banksim: BanksimProcess, client: CardNetworkClient
) -> None:
    pan = add_card(banksim, 10_000)
    sale, _ = request(client, "0200", pan, 4_000)
    message, _ = refund(client, pan, 4_000, sale)
    for _ in range(2):  # a repeated reversal changes nothing
        _, reversal = request(client, "0400", None, 4_000, **{"90": original_of(message)})
        assert reversal["39"] == "00"
        view = card_view(banksim, pan)
        assert (view["balance_minor"], view["refunded_minor"]) == (6_000, 0)
    # Reversed, the refund no longer counts against the bound: the sale can be refunded again.
    assert refund(client, pan, 4_000, sale)[1]["39"] == "00"
    assert card_view(banksim, pan)["balance_minor"] == 10_000


def test_reversing_a_refunded_sale_gives_back_only_the_rest(
    banksim: BanksimProcess, client: CardNetworkClient
) -> None:
    pan = add_card(banksim, 10_000)
    sale, _ = request(client, "0200", pan, 4_000)
    message, _ = refund(client, pan, 1_000, sale)
    request(client, "0400", None, 4_000, **{"90": original_of(sale)})
    assert card_view(banksim, pan)["balance_minor"] == 10_000
    # The refund's reversal then leaves the card whole (the sale's reversal did not repay it).
    request(client, "0400", None, 1_000, **{"90": original_of(message)})
    assert card_view(banksim, pan)["balance_minor"] == 10_000


def test_faults_apply_to_refunds(banksim: BanksimProcess, client: CardNetworkClient) -> None:
    pan = add_card(banksim, 10_000)
    sale, _ = request(client, "0200", pan, 4_000)
    with banksim.http() as http:
        http.post("/faults/cards", json={"faults": [
            {"kind": "unavailable", "next": 1, "card": token_of(pan), "mtis": ["0200"]}
        ]}).raise_for_status()  # fmt: skip
    assert refund(client, pan, 1_000, sale)[1]["39"] == "91"
    assert card_view(banksim, pan)["balance_minor"] == 6_000  # not applied
    with banksim.http() as http:
        seen = http.get("/authorisations", params={"card": token_of(pan)}).json()["authorisations"]
    assert seen[-1]["faults"] == ["unavailable"] and seen[-1]["effect"] == "none"


def test_a_reversal_before_its_refund_leaves_a_tombstone(
    banksim: BanksimProcess, client: CardNetworkClient
) -> None:
    pan = add_card(banksim, 10_000)
    sale, _ = request(client, "0200", pan, 4_000)
    late = {
        "t": "0200", "2": pan, "3": PROCESSING_REFUND, "4": f"{4_000:012d}", "7": "0102030405",
        "11": client.next_stan(), "41": "TESTTERM", "42": "TESTACCEPTOR001", "49": "978",
        "90": original_of(sale),
    }  # fmt: skip
    request(client, "0400", None, 4_000, **{"90": original_of(late)})
    assert client.call(late)["39"] == "05"
    assert card_view(banksim, pan)["balance_minor"] == 6_000


# --- the cumulative bound, as a property of the network's state ------------------------------

PAN = "4111111111111111"
STEP = st.one_of(
    st.tuples(st.just("refund"), st.integers(0, 6), st.integers(0, 3_000)),
    st.tuples(st.just("reverse"), st.integers(0, 40), st.just(0)),
    st.tuples(st.just("retransmit"), st.integers(0, 40), st.just(0)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    charges=st.lists(st.integers(1, 5_000), min_size=1, max_size=4),
    steps=st.lists(STEP, max_size=30),
)
def test_refunds_never_exceed_the_charge_and_the_balance_adds_up(
    charges: list[int], steps: list[tuple[str, int, int]]
) -> None:
    network = CardNetwork(seed=1)
    start = network.cards[PAN].balance_minor
    stan = 0

    def send(message: dict[str, str]) -> dict[str, str]:
        return network.handle(dict(message))

    def next_stan() -> str:
        nonlocal stan
        stan += 1
        return f"{stan:06d}"

    sales = []
    for amount in charges:
        sale = {"t": "0200", "2": PAN, "3": "000000", "4": f"{amount:012d}", "7": "0102030405",
                "11": next_stan(), "14": "2912", "41": "TESTTERM", "49": "978"}  # fmt: skip
        assert send(sale)["39"] == "00"
        sales.append(sale)
    refunds: list[dict[str, str]] = []
    for kind, index, amount in steps:
        if kind == "refund":
            sale = sales[index % len(sales)]
            message = {"t": "0200", "2": PAN, "3": PROCESSING_REFUND, "4": f"{amount:012d}",
                       "7": "0102030405", "11": next_stan(), "41": "TESTTERM", "49": "978",
                       "90": original_of(sale)}  # fmt: skip
            send(message)
            refunds.append(message)
        elif refunds and kind == "reverse":
            target = refunds[index % len(refunds)]
            send({"t": "0400", "4": target["4"], "7": "0102030405", "11": next_stan(),
                  "41": "TESTTERM", "49": "978", "90": original_of(target)})  # fmt: skip
        elif refunds:
            send(refunds[index % len(refunds)])  # a retransmission: never applied twice
        # The invariant, from the network's own records (the reference model is the sum).
        credited = 0
        for sale in sales:
            txn = network.txns[("TESTTERM", sale["11"], sale["7"])]
            live = sum(
                t.amount_minor
                for t in network.txns.values()
                if t.kind == "refund" and t.state == "refunded" and t.original is txn
            )
            assert live == txn.refunded_minor <= txn.amount_minor
            credited += live
        assert network.cards[PAN].balance_minor == start - sum(charges) + credited
