"""Outgoing mail: one :class:`Mailer` protocol, two backends.

- :class:`SmtpMailer` speaks SMTP through the standard library (``smtplib``):
  ``PAYKEEP_SMTP_URL`` = ``smtp://host:port`` (plain, for a relay on this machine),
  ``smtp+starttls://host:port`` (upgrade before authenticating) or ``smtps://host:port``
  (TLS from the first byte), with optional ``user:password@`` (percent-encoded). The sender is
  ``PAYKEEP_MAIL_FROM``.
- :class:`DirectoryMailer` writes each message as an RFC 5322 ``.eml`` file into a directory
  (``<data-dir>/mail/`` for ``paykeep serve`` when no SMTP URL is set): written to a temporary
  name and renamed, so a reader never sees half a message. For local development and the
  tests; a person (or ``paykeep demo``) reads the codes from there.

Sending failures are one typed error, :class:`MailUnavailable` (``mail_unavailable``, 503):
the caller never sees ``smtplib`` or ``OSError``. Every network step has a timeout
(:data:`SMTP_TIMEOUT_S`) and every message a size bound (:data:`MAIL_BYTES_MAX`).

Messages carry one-time codes and personal addresses: nothing here logs a message, a
recipient or a subject, and errors never quote them.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import tempfile
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import unquote, urlsplit

from paykeep.clock import NS_PER_S, Clock, SystemClock
from paykeep.errors import InvalidInput, PaykeepError

ENV_SMTP_URL: Final = "PAYKEEP_SMTP_URL"
ENV_MAIL_FROM: Final = "PAYKEEP_MAIL_FROM"
DEFAULT_MAIL_FROM: Final = "Paykeep <no-reply@paykeep.invalid>"
#: Folder of the directory backend under the data directory.
MAIL_DIR_NAME: Final = "mail"
#: Connecting to the SMTP server, and each command after that.
SMTP_TIMEOUT_S: Final = 10.0
#: A rendered message (headers and body). Ours are well under 4 KiB; a larger one is a bug.
MAIL_BYTES_MAX: Final = 64 * 1024
#: Subject and address lengths (RFC 5321: a path is at most 256 octets).
SUBJECT_CHARS_MAX: Final = 200
ADDRESS_CHARS_MAX: Final = 254
_LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})
_SCHEMES: Final = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}


class MailUnavailable(PaykeepError):
    """The message could not be handed to the mail server (or written); nothing was sent."""

    code = "mail_unavailable"
    type = "unavailable"


class MailConfigInvalid(InvalidInput):
    """``PAYKEEP_SMTP_URL`` (or the sender) cannot be used."""

    code = "mail_config_invalid"


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    """A plain-text message to one recipient."""

    to: str
    subject: str
    text: str


def render(mail: OutgoingMail, sender: str, now_ns: int) -> EmailMessage:
    """The RFC 5322 message (bounded: :data:`MAIL_BYTES_MAX`, no header injection)."""
    for name, value, bound in (
        ("recipient", mail.to, ADDRESS_CHARS_MAX),
        ("subject", mail.subject, SUBJECT_CHARS_MAX),
    ):
        if not value or len(value) > bound or "\r" in value or "\n" in value:
            raise MailUnavailable(f"the {name} of the message is not usable")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = formatdate(now_ns // NS_PER_S, localtime=False)
    message["Message-ID"] = make_msgid(domain="paykeep.invalid")
    message.set_content(mail.text)
    if len(message.as_bytes()) > MAIL_BYTES_MAX:
        raise MailUnavailable("the message is too large")
    return message


class Mailer(Protocol):
    #: Where a person finds the messages (a directory, or the SMTP server without password).
    description: str

    def send(self, mail: OutgoingMail) -> None:
        """Hand ``mail`` over, or raise :class:`MailUnavailable`."""
        ...


class DirectoryMailer:
    """Each message as ``<time-ordered name>.eml`` in ``directory`` (mode 0700)."""

    def __init__(
        self, directory: Path, sender: str = DEFAULT_MAIL_FROM, *, clock: Clock | None = None
    ) -> None:
        self.directory = directory
        self.sender = sender
        self.clock = clock or SystemClock()
        self.description = f"files in {directory}"
        # Within one process, messages sent in the same nanosecond (a fake clock) still sort
        # in sending order.
        self._lock = threading.Lock()
        self._sent = 0

    def send(self, mail: OutgoingMail) -> None:
        now_ns = self.clock.now_ns()
        data = render(mail, self.sender, now_ns).as_bytes()
        # A nanosecond timestamp first: the names sort by sending time (the demo and the
        # tests read the newest message for an address); the random part keeps them unique.
        with self._lock:
            self._sent += 1
            sequence = self._sent
        name = f"{now_ns:020d}-{sequence:010d}-{os.urandom(4).hex()}.eml"
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".eml")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self.directory / name)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise MailUnavailable("the message could not be written to the mail folder") from exc


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    """A parsed ``PAYKEEP_SMTP_URL``."""

    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None


def parse_smtp_url(url: str) -> SmtpTarget:
    """``smtp[+starttls]|smtps://[user:password@]host[:port]`` (pure)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise MailConfigInvalid("the SMTP URL starts with smtp://, smtp+starttls:// or smtps://")
    if not parts.hostname:
        raise MailConfigInvalid("the SMTP URL names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise MailConfigInvalid("the SMTP URL has no path, query or fragment")
    try:
        port = parts.port or _SCHEMES[scheme]
    except ValueError:
        raise MailConfigInvalid("the SMTP URL's port is not a number") from None
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and scheme == "smtp" and parts.hostname not in _LOOPBACK:
        # A password in clear over the network: refused rather than sent.
        raise MailConfigInvalid("a password needs smtp+starttls:// or smtps://")
    return SmtpTarget(scheme, parts.hostname, port, username, password)


class SmtpMailer:
    """One SMTP connection per message (codes are rare: a pool would only hold sockets)."""

    def __init__(
        self,
        target: SmtpTarget,
        sender: str = DEFAULT_MAIL_FROM,
        *,
        timeout_s: float = SMTP_TIMEOUT_S,
        tls: ssl.SSLContext | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.target = target
        self.sender = sender
        self.timeout_s = timeout_s
        self.tls = tls or ssl.create_default_context()
        self.clock = clock or SystemClock()
        self.description = f"SMTP {target.scheme}://{target.host}:{target.port}"

    def send(self, mail: OutgoingMail) -> None:
        message = render(mail, self.sender, self.clock.now_ns())
        target = self.target
        try:
            client: smtplib.SMTP
            if target.scheme == "smtps":
                client = smtplib.SMTP_SSL(
                    target.host, target.port, timeout=self.timeout_s, context=self.tls
                )
            else:
                client = smtplib.SMTP(target.host, target.port, timeout=self.timeout_s)
            with client:
                if target.scheme == "smtp+starttls":
                    client.starttls(context=self.tls)
                if target.username is not None:
                    client.login(target.username, target.password or "")
                refused = client.send_message(message)
        except (smtplib.SMTPException, OSError) as exc:
            # The server's answer may quote the recipient: only its class is kept.
            raise MailUnavailable(
                f"the mail server did not accept the message ({type(exc).__name__})"
            ) from None
        if refused:
            raise MailUnavailable("the mail server refused the recipient")


def mailer_from_env(data_dir: Path) -> Mailer:
    """SMTP when ``PAYKEEP_SMTP_URL`` is set, else ``<data_dir>/mail/`` files."""
    sender = os.environ.get(ENV_MAIL_FROM) or DEFAULT_MAIL_FROM
    if len(sender) > ADDRESS_CHARS_MAX + 100 or "\n" in sender or "\r" in sender:
        raise MailConfigInvalid(f"{ENV_MAIL_FROM} is not a usable sender")
    url = os.environ.get(ENV_SMTP_URL)
    if url:
        return SmtpMailer(parse_smtp_url(url), sender)
    return DirectoryMailer(data_dir / MAIL_DIR_NAME, sender)


__all__ = [
    "DirectoryMailer",
    "MailConfigInvalid",
    "MailUnavailable",
    "Mailer",
    "OutgoingMail",
    "SmtpMailer",
    "SmtpTarget",
    "mailer_from_env",
    "parse_smtp_url",
    "render",
]
