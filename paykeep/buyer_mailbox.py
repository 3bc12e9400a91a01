"""Signing a buyer in by reading the server's mail folder: for ``paykeep demo``, ``paykeep
bench api`` and the tests, against a server whose mail goes to ``<data-dir>/mail/``
(``paykeep.mail.DirectoryMailer``: the default of ``paykeep serve`` without
``PAYKEEP_SMTP_URL``). A real buyer reads the code in their mailbox; this reads the same
message from the folder, so what is exercised is the real sign-in, code and all.
"""

from __future__ import annotations

import re
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Final

import httpx

#: The sentence of the code mail that carries the code (``PaymentsService.start_buyer_sign_in``).
CODE_IN_MAIL: Final = re.compile(r"Your Paykeep code is ([0-9]{6})\b")
#: Messages looked at, newest first, before giving up on an address.
MESSAGES_SCANNED_MAX: Final = 10_000


class SignInFailed(RuntimeError):
    """The server refused a step of the sign-in, or no code mail was found."""


def latest_code(mail_dir: Path, address: str) -> str | None:
    """The code of the newest code mail to ``address`` in ``mail_dir`` (None: none)."""
    try:
        names = sorted((p.name for p in mail_dir.glob("*.eml") if not p.name.startswith(".")),
                       reverse=True)  # fmt: skip
    except OSError:
        return None
    wanted = address.lower()
    for name in names[:MESSAGES_SCANNED_MAX]:
        message = BytesParser(policy=policy.default).parsebytes((mail_dir / name).read_bytes())
        if str(message.get("To", "")).lower() != wanted:
            continue
        body = message.get_body(preferencelist=("plain",))
        found = CODE_IN_MAIL.search(body.get_content() if body is not None else "")
        if found:
            return found.group(1)
    return None


def sign_in(client: httpx.Client, mail_dir: Path, token: str, address: str) -> str:
    """Ask for a code on checkout ``token``, read it from ``mail_dir`` and verify it: the
    buyer session (``bs_...``). ``client`` is an ``httpx.Client`` on the server."""
    sent = client.post(f"/v1/checkout/{token}/sign_in")
    if sent.status_code != 202:
        raise SignInFailed(f"sign_in -> {sent.status_code}: {sent.text[:200]}")
    code = latest_code(mail_dir, address)
    if code is None:
        raise SignInFailed(f"no code mail in {mail_dir}")
    verified = client.post(f"/v1/checkout/{token}/sign_in/verify", json={"code": code})
    if verified.status_code != 200:
        raise SignInFailed(f"sign_in/verify -> {verified.status_code}: {verified.text[:200]}")
    return str(verified.json()["buyer_session"])
