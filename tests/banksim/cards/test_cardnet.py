"""The card network over real TCP: every response code, reversals, retransmissions, framing."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from stdnum import luhn

from paykeep.bench.gateway import BanksimProcess
from paykeep.gateway.cards import iso8583 as wire
from paykeep.gateway.cards.client import CardNetworkClient
from tests.banksim.cards.conftest import new_pan


@pytest.fixture
def client(banksim: BanksimProcess) -> Iterator[CardNetworkClient]:
    with CardNetworkClient("127.0.0.1", banksim.card_port, pool_size=1, timeout_s=3) as c:
        yield c


# Each card's banksim token, by card number. Tests look a card up by its token, never by its last
# four digits: a session's shared network holds hundreds of cards, so two of them can share those.
_TOKENS: dict[str, str] = {}


def token_of(pan: str) -> str:
    return _TOKENS[pan]


def add_card(banksim: BanksimProcess, balance: int = 10_000, **extra: object) -> str:
    pan = new_pan()
    with banksim.http() as http:
        response = http.post(
            "/cards",
            json={"pan": pan, "expiry": "3012", "cvv": "321", "balance_minor": balance,
                  "currency": "EUR", **extra},
        )  # fmt: skip
        assert response.status_code == 201, response.text
    _TOKENS[pan] = response.json()["token"]
    return pan


def card_view(banksim: BanksimProcess, pan: str) -> dict[str, object]:
    with banksim.http() as http:
        found: dict[str, object] = http.get(f"/cards/{token_of(pan)}").json()
        return found


def request(client: CardNetworkClient, mti: str, pan: str | None, amount: int, **fields: str):  # type: ignore[no-untyped-def]
    message = {
        "t": mti, "3": "000000", "4": f"{amount:012d}", "7": "0102030405",
        "11": client.next_stan(), "41": "TESTTERM", "42": "TESTACCEPTOR001", "49": "978",
        **fields,
    }  # fmt: skip
    if pan is not None:
        message.setdefault("2", pan)
        message.setdefault("14", "3012")
    return message, client.call(message)


@pytest.mark.parametrize(
    ("pan", "expiry", "cvv", "amount", "code"),
    [
        ("4111111111111111", "2912", "123", 500, "00"),
        ("5555555555554444", "2912", "123", 500, "00"),
        ("378282246310005", "2912", "1234", 500, "00"),
        ("4000000000000002", "2912", "123", 500, "05"),
        ("4111111111111111", "2912", "999", 500, "05"),  # wrong security code
        ("4000000000009995", "2912", "123", 1_001, "51"),
        ("4000000000000069", "2001", "123", 500, "54"),
        ("4111111111111111", "2711", "123", 500, "54"),  # expiry does not match the card
        ("4242424242424241", "2912", "123", 500, "14"),  # Luhn
        ("4012888888881881", "2912", "123", 500, "14"),  # not issued here
        ("4111111111111111", "2912", "123", 0, "13"),
        ("4000000000000119", "2912", "123", 500, "91"),
    ],
)
def test_every_response_code(
    client: CardNetworkClient, pan: str, expiry: str, cvv: str, amount: int, code: str
) -> None:
    message, response = request(
        client, "0100", pan, amount, **{"14": expiry, "48": wire.security_code_field(cvv)}
    )
    assert response["t"] == "0110"
    assert response["39"] == code
    assert response["11"] == message["11"]
    assert ("38" in response) == (code == "00")
    if code == "00":
        original = wire.original_data_elements("0100", message["11"], message["7"])
        request(client, "0400", None, amount, **{"90": original})


def test_format_errors_answer_30(banksim: BanksimProcess, client: CardNetworkClient) -> None:
    pan = add_card(banksim)
    _, response = request(client, "0100", pan, 100, **{"49": "97X"})
    assert response["39"] == "30"
    assert card_view(banksim, pan)["balance_minor"] == 10_000


def test_hold_capture_and_reversal_move_the_balance(
    banksim: BanksimProcess, client: CardNetworkClient
) -> None:
    pan = add_card(banksim, 10_000)
    auth, response = request(client, "0100", pan, 4_000)
    assert response["39"] == "00"
    view = card_view(banksim, pan)
    assert (view["balance_minor"], view["held_minor"]) == (6_000, 4_000)
    original = wire.original_data_elements("0100", auth["11"], auth["7"])
    _, captured = request(client, "0200", pan, 2_500, **{"90": original})
    assert captured["39"] == "00"
    view = card_view(banksim, pan)
    assert (view["balance_minor"], view["held_minor"], view["captured_minor"]) == (7_500, 0, 2_500)
    # A second capture of the same authorisation finds nothing left to capture.
    _, again = request(client, "0200", pan, 1, **{"90": original})
    assert again["39"] == "25"
    # Reversing the authorisation after capture gives the captured money back, once.
    for _ in range(2):
        _, reversed_ = request(client, "0400", None, 4_000, **{"90": original})
        assert reversed_["39"] == "00"
        assert card_view(banksim, pan)["balance_minor"] == 10_000


def test_a_retransmitted_original_is_answered_again_but_applied_once(
    banksim: BanksimProcess, client: CardNetworkClient
) -> None:
    pan = add_card(banksim, 10_000)
    message, first = request(client, "0100", pan, 3_000)
    second = client.call(message)
    assert first == second
    assert card_view(banksim, pan)["balance_minor"] == 7_000


def test_a_reversal_before_its_original_leaves_a_tombstone(
    banksim: BanksimProcess, client: CardNetworkClient
) -> None:
    pan = add_card(banksim, 10_000)
    stan = client.next_stan()
    _, reversal = request(
        client,
        "0400",
        None,
        3_000,
        **{"90": wire.original_data_elements("0100", stan, "0102030405")},
    )
    assert reversal["39"] == "00"
    late = {
        "t": "0100", "2": pan, "3": "000000", "4": f"{3_000:012d}", "7": "0102030405",
        "11": stan, "14": "3012", "41": "TESTTERM", "42": "TESTACCEPTOR001", "49": "978",
    }  # fmt: skip
    assert client.call(late)["39"] == "05"
    assert card_view(banksim, pan)["balance_minor"] == 10_000


def test_a_sale_debits_and_its_reversal_refunds(
    banksim: BanksimProcess, client: CardNetworkClient
) -> None:
    pan = add_card(banksim, 10_000)
    sale, response = request(client, "0200", pan, 1_234)
    assert response["39"] == "00"
    assert card_view(banksim, pan)["balance_minor"] == 10_000 - 1_234
    request(client, "0400", None, 1_234,
            **{"90": wire.original_data_elements("0200", sale["11"], sale["7"])})  # fmt: skip
    assert card_view(banksim, pan)["balance_minor"] == 10_000


def test_echo(client: CardNetworkClient) -> None:
    response = client.echo()
    assert (response["t"], response["39"], response["70"]) == ("0810", "00", "301")


def _raw(banksim: BanksimProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", banksim.card_port), timeout=5)


def _read_frame(sock: socket.socket) -> bytes:
    header = sock.recv(2)
    if not header:
        return b""
    size = int.from_bytes(header, "big")
    body = b""
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        if not chunk:
            break
        body += chunk
    return body


@pytest.mark.parametrize(
    ("frame", "answer"),
    [
        (b"0100\xff\xff", "30"),  # readable MTI, garbage after it
        (b"0200" + b"\x40" + b"\x00" * 7 + b"99", "30"),  # bitmap promises a PAN, too short
        (b"0100" + b"\x00" * 7 + b"\x01", "30"),  # field 64: not in the dialect
        (b"xxxxgarbage", None),  # no MTI: clean disconnect
        (b"0300" + b"\x00" * 8, None),  # an MTI this network does not serve
    ],
)
def test_malformed_frames_never_stop_the_server(
    banksim: BanksimProcess, client: CardNetworkClient, frame: bytes, answer: str | None
) -> None:
    with _raw(banksim) as sock:
        sock.sendall(len(frame).to_bytes(2, "big") + frame)
        body = _read_frame(sock)
        if answer is None:
            assert body == b""
        else:
            assert wire.decode(body)["39"] == answer
    assert client.echo()["39"] == "00"


@pytest.mark.parametrize("header", [b"\x00\x00", b"\xff\xff", b"\x10\x00"])
def test_bad_lengths_disconnect(
    banksim: BanksimProcess, client: CardNetworkClient, header: bytes
) -> None:
    with _raw(banksim) as sock:
        sock.sendall(header)
        assert sock.recv(16) == b""
    assert client.echo()["39"] == "00"


def test_control_api_validates_its_input(banksim: BanksimProcess) -> None:
    with banksim.http() as http:
        assert http.post("/cards", json={"pan": "12ab", "expiry": "3012", "cvv": "1",
                                         "balance_minor": -1}).status_code == 422  # fmt: skip
        assert http.get("/cards/0000000").status_code == 404
        bad = http.post("/faults/cards", json={"faults": [{"kind": "delay"}]})
        assert bad.status_code == 422 and "delay_s" in bad.text
        too_likely = {"faults": [{"kind": "lost", "probability": 2}]}
        assert http.post("/faults/cards", json=too_likely).status_code == 422
        assert http.get("/faults/cards").json() == {"faults": []}


def test_last_four_digits_shared_by_two_cards_are_refused_as_ambiguous(
    banksim: BanksimProcess,
) -> None:
    first = add_card(banksim, 1_000)
    second = new_pan()
    while second[-4:] != first[-4:] or second == first:  # same last four, another card
        second = new_pan()[:12] + first[-4:]
        second = second if luhn.is_valid(second) else first
    with banksim.http() as http:
        added = http.post("/cards", json={"pan": second, "expiry": "3012", "cvv": "321",
                                          "balance_minor": 2_000, "currency": "EUR"})  # fmt: skip
        assert added.status_code == 201, added.text
        ambiguous = http.get(f"/cards/{first[-4:]}")
        assert ambiguous.status_code == 409 and "token" in ambiguous.json()["detail"]
        by_token = http.get(f"/cards/{added.json()['token']}").json()
    assert (by_token["balance_minor"], by_token["last4"]) == (2_000, first[-4:])
    assert card_view(banksim, first)["balance_minor"] == 1_000


def test_authorisations_show_what_the_issuer_saw(
    banksim: BanksimProcess, client: CardNetworkClient
) -> None:
    pan = add_card(banksim, 10_000)
    request(client, "0100", pan, 700)
    with banksim.http() as http:
        seen = http.get("/authorisations", params={"card": token_of(pan)}).json()["authorisations"]
    assert [(a["mti"], a["amount_minor"], a["response_code"], a["effect"]) for a in seen] == [
        ("0100", 700, "00", "hold")
    ]
    assert pan not in str(seen)
