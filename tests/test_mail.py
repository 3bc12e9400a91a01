"""``paykeep.mail``: the directory backend (atomic .eml files), the SMTP backend against a real
SMTP server on 127.0.0.1 (aiosmtpd), URL parsing, typed failures; and a real ``paykeep serve``
sending a buyer's code through SMTP."""

from __future__ import annotations

import email
import os
import socket
import uuid
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

# A plain import, not importorskip: the SMTP tests run wherever the suite runs (aiosmtpd is in
# requirements/dev.txt, which ./dev installs).
import aiosmtpd.controller as aiosmtpd_controller
import pytest

from paykeep.buyer_mailbox import CODE_IN_MAIL, latest_code
from paykeep.clock import FakeClock
from paykeep.mail import (
    MAIL_BYTES_MAX,
    DirectoryMailer,
    MailConfigInvalid,
    MailUnavailable,
    OutgoingMail,
    SmtpMailer,
    mailer_from_env,
    parse_smtp_url,
)

MAIL = OutgoingMail("ada@example.com", "Your Paykeep sign-in code", "Your Paykeep code is 123456\n")


class Inbox:
    """An aiosmtpd handler keeping what it received."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = _free_port()
    controller = aiosmtpd_controller.Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


# -- the directory backend ---------------------------------------------------------------------


def test_directory_mailer_writes_one_complete_eml_per_message(tmp_path: Path) -> None:
    clock = FakeClock()
    mailer = DirectoryMailer(tmp_path / "mail", "Paykeep <codes@paykeep.test>", clock=clock)
    mailer.send(MAIL)
    mailer.send(OutgoingMail("bob@example.com", "Your Paykeep sign-in code",
                             "Your Paykeep code is 654321\n"))  # fmt: skip
    files = sorted((tmp_path / "mail").iterdir())
    assert [f.suffix for f in files] == [".eml", ".eml"]  # no temporary file left behind
    assert oct((tmp_path / "mail").stat().st_mode & 0o777) == "0o700"
    message = email.message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert message["To"] == "ada@example.com"
    assert message["From"] == "Paykeep <codes@paykeep.test>"
    assert message["Message-ID"] and message["Date"]
    body = message.get_body(preferencelist=("plain",))
    assert body is not None and "123456" in body.get_content()
    # the same fake nanosecond: the names still sort in sending order
    assert latest_code(tmp_path / "mail", "ada@example.com") == "123456"
    assert latest_code(tmp_path / "mail", "BOB@example.com") == "654321"
    assert latest_code(tmp_path / "mail", "eve@example.com") is None


def test_directory_mailer_failure_is_typed(tmp_path: Path) -> None:
    blocker = tmp_path / "mail"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(MailUnavailable) as caught:
        DirectoryMailer(blocker).send(MAIL)
    assert caught.value.code == "mail_unavailable" and "ada@" not in caught.value.message


def test_messages_are_bounded_and_headers_cannot_be_injected(tmp_path: Path) -> None:
    mailer = DirectoryMailer(tmp_path / "mail")
    with pytest.raises(MailUnavailable):
        mailer.send(OutgoingMail("ada@example.com\r\nBcc: eve@example.com", "s", "t"))
    with pytest.raises(MailUnavailable):
        mailer.send(OutgoingMail("ada@example.com", "subject\nBcc: x", "t"))
    with pytest.raises(MailUnavailable):
        mailer.send(OutgoingMail("ada@example.com", "s", "x" * MAIL_BYTES_MAX))
    assert not list((tmp_path / "mail").glob("*")) if (tmp_path / "mail").exists() else True


# -- SMTP ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://127.0.0.1:2525", ("smtp", "127.0.0.1", 2525, None, None)),
        ("smtp+starttls://u%40x:p%3Aw@mail.example:587", ("smtp+starttls", "mail.example", 587,
                                                          "u@x", "p:w")),
        ("smtps://mail.example", ("smtps", "mail.example", 465, None, None)),
        ("smtp://localhost", ("smtp", "localhost", 25, None, None)),
    ],
)  # fmt: skip
def test_smtp_urls(url: str, expected: tuple[Any, ...]) -> None:
    target = parse_smtp_url(url)
    assert (target.scheme, target.host, target.port, target.username, target.password) == expected


@pytest.mark.parametrize(
    "url",
    ["http://mail.example", "smtp://", "smtp://h:notaport", "smtp://h/path",
     "smtp://user:secret@mail.example"],  # a password in clear to another machine
)  # fmt: skip
def test_bad_smtp_urls_are_refused(url: str) -> None:
    with pytest.raises(MailConfigInvalid):
        parse_smtp_url(url)


def test_smtp_mailer_delivers_to_a_real_smtp_server(smtp_server: tuple[Inbox, int]) -> None:
    inbox, port = smtp_server
    mailer = SmtpMailer(parse_smtp_url(f"smtp://127.0.0.1:{port}"), "codes@paykeep.test")
    mailer.send(MAIL)
    assert len(inbox.messages) == 1
    sender, recipients, content = inbox.messages[0]
    assert sender == "codes@paykeep.test" and recipients == ["ada@example.com"]
    message = email.message_from_bytes(content, policy=policy.default)
    assert message["Subject"] == "Your Paykeep sign-in code"
    assert CODE_IN_MAIL.search(content.decode())


def test_smtp_mailer_failure_is_typed_and_quick() -> None:
    port = _free_port()  # nothing listens there
    mailer = SmtpMailer(parse_smtp_url(f"smtp://127.0.0.1:{port}"), timeout_s=2)
    with pytest.raises(MailUnavailable) as caught:
        mailer.send(MAIL)
    assert "ada@" not in caught.value.message


def test_mailer_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYKEEP_SMTP_URL", raising=False)
    chosen = mailer_from_env(tmp_path)
    assert isinstance(chosen, DirectoryMailer) and chosen.directory == tmp_path / "mail"
    monkeypatch.setenv("PAYKEEP_SMTP_URL", "smtp://127.0.0.1:2525")
    monkeypatch.setenv("PAYKEEP_MAIL_FROM", "Shop <codes@shop.test>")
    smtp = mailer_from_env(tmp_path)
    assert isinstance(smtp, SmtpMailer) and smtp.sender == "Shop <codes@shop.test>"


# -- a real server sending codes through SMTP -----------------------------------------------------


def test_paykeep_serve_sends_the_code_through_smtp(
    smtp_server: tuple[Inbox, int], tmp_path: Path
) -> None:
    from paykeep.config import Settings
    from tests.serverproc import ServerProcess

    inbox, port = smtp_server
    env = {"PAYKEEP_SMTP_URL": f"smtp://127.0.0.1:{port}", "PAYKEEP_MAIL_FROM": "codes@pk.test"}
    with ServerProcess(Settings(data_dir=tmp_path / "srv"), env=env) as server:
        assert server.info["mail_dir"] is None and "SMTP" in server.info["mail"]
        merchant = server.client(server.merchant(0)["api_key"])
        address = f"smtp-{uuid.uuid4().hex[:8]}@example.com"
        buyer = merchant.post("/v1/buyers", json={"name": "Ada", "email": address}).json()
        order = merchant.post("/v1/orders", json={"buyer": buyer["id"], "items": [
            {"description": "Tea", "quantity": 1, "unit_amount_minor": 900}]}).json()  # fmt: skip
        url = merchant.post("/v1/checkout_sessions", json={"order": order["id"]}).json()["url"]
        token = str(url).rsplit("/", 1)[-1]
        anonymous = server.client()
        assert anonymous.post(f"/v1/checkout/{token}/sign_in").status_code == 202
        assert [m[1] for m in inbox.messages] == [[address]]
        found = CODE_IN_MAIL.search(inbox.messages[0][2].decode())
        assert found is not None
        verified = anonymous.post(
            f"/v1/checkout/{token}/sign_in/verify", json={"code": found.group(1)}
        )
        assert verified.status_code == 200, verified.text
        assert not (tmp_path / "srv" / "mail").exists()
        log = server.log()
        assert address not in log and found.group(1) not in log


def test_paykeep_serve_answers_503_when_smtp_is_down(tmp_path: Path) -> None:
    from paykeep.config import Settings
    from tests.serverproc import ServerProcess

    env = {"PAYKEEP_SMTP_URL": f"smtp://127.0.0.1:{_free_port()}"}
    with ServerProcess(Settings(data_dir=tmp_path / "srv"), env=env) as server:
        merchant = server.client(server.merchant(0)["api_key"])
        buyer = merchant.post("/v1/buyers", json={"name": "Ada", "email": "a@example.com"}).json()
        order = merchant.post("/v1/orders", json={"buyer": buyer["id"], "items": [
            {"description": "Tea", "quantity": 1, "unit_amount_minor": 900}]}).json()  # fmt: skip
        url = merchant.post("/v1/checkout_sessions", json={"order": order["id"]}).json()["url"]
        answer = server.client().post(f"/v1/checkout/{str(url).rsplit('/', 1)[-1]}/sign_in")
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "mail_unavailable"
        assert answer.headers.get("Retry-After")
        assert "a@example.com" not in server.log()
    assert os.environ.get("PAYKEEP_SMTP_URL") is None
