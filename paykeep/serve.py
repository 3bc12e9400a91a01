"""``paykeep serve``: the whole platform on one machine.

Starts (1) ``banksim`` as a child process — the card network and the bank, on free ports,
its state in ``<data dir>/banksim`` —, (2) the worker loops (escrow timers, webhooks, the
bank's day cycle) — in a child process (``python -m paykeep.workers``) beside a single API
process, in this one when it only supervises ``--workers N`` —, and (3) the API under
uvicorn, in this process or in ``--workers N`` processes. On its first start against a
database it seeds a demo marketplace (an operator key, three merchants with verified payout
IBANs and webhook endpoints on this server's demo receiver, a carrier) and writes what a
client needs — URL and keys — to ``<data dir>/serve.json`` (mode 0600, beside the vault
keys it already trusts); ``paykeep demo`` reads it from there.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from paykeep.api.runtime import (
    ENV_WEBHOOK_ALLOWED_NETWORKS,
    Runtime,
    RuntimeConfig,
    open_runtime,
)
from paykeep.config import Settings
from paykeep.workers.webhook_egress import HostUnresolved, resolve
from paykeep.workers.webhook_model import (
    IPNetwork,
    host_network,
    parse_allowed_networks,
    refusal_reason,
)

log = logging.getLogger("paykeep.serve")

SERVE_FILE: Final = "serve.json"
BANKSIM_START_TIMEOUT_S: Final = 30.0
#: How long a stopping server waits for its worker process's passes under way (they are
#: idempotent: one cut short is redone by the next start).
CHILD_STOP_GRACE_S: Final = 15.0
#: The safeguarding account at the (simulated) bank, and the demo merchants' payout IBANs
#: (valid example IBANs from their banks' documentation).
SAFEGUARDING_IBAN: Final = "DE89370400440532013000"
DEMO_MERCHANTS: Final = (
    ("Tea Leaf Emporium SARL", "FR", "FR1420041010050500013M02606"),
    ("Dutch Bicycle Parts BV", "NL", "NL91ABNA0417164300"),
    ("Highland Wool Ltd", "GB", "GB29NWBK60161331926819"),
)
DEMO_CARRIER: Final = "demo-post"


@dataclass
class Banksim:
    process: subprocess.Popen[str]
    http_port: int
    card_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_banksim(data_dir: Path) -> Banksim:
    """banksim as a child process on free ports (it prints them as one JSON line)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "paykeep.banksim", "--data-dir", str(data_dir),
         "--http-port", "0", "--card-port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=die_with_parent if sys.platform == "linux" else None,
    )  # fmt: skip
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], BANKSIM_START_TIMEOUT_S)
    line = process.stdout.readline() if ready else ""
    if not line:
        process.kill()
        raise RuntimeError("banksim did not start (see its messages above)")
    ports = json.loads(line)
    return Banksim(process, int(ports["http_port"]), int(ports["card_port"]))


def start_worker_process(bank_cycle_s: float) -> subprocess.Popen[bytes]:
    """``python -m paykeep.workers`` with this process's environment (its configuration)."""
    return subprocess.Popen(
        [sys.executable, "-m", "paykeep.workers", "--bank-cycle", str(bank_cycle_s)],
        preexec_fn=die_with_parent if sys.platform == "linux" else None,
    )


def stop_child(process: subprocess.Popen[bytes], grace_s: float = CHILD_STOP_GRACE_S) -> None:
    """SIGTERM, then SIGKILL if it has not finished within ``grace_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the serving process dies, however it dies (a
    SIGKILLed `paykeep serve` must not leave its simulated bank running)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def demo_receiver_networks(public_url: str) -> tuple[IPNetwork, ...]:
    """What the SSRF guard must let through for the demo endpoints, which POST to this
    server's own demo receiver at ``public_url`` (usually ``http://127.0.0.1:PORT``): each
    address the host resolves to that is not public, as a single-address network. Exactly
    that address, not its network: a merchant of this server can reach whatever else listens
    on it, so nothing more is opened than the demo needs."""
    parts = urlsplit(public_url)
    if not parts.hostname:
        return ()
    try:
        addresses = resolve(parts.hostname, parts.port or 80)
    except HostUnresolved:
        return ()  # seeding the demo endpoints then says so (webhook_host_unresolvable)
    return tuple(host_network(a) for a in addresses if refusal_reason(a) is not None)


def webhook_allowed_networks(public_url: str) -> tuple[IPNetwork, ...]:
    """The operator's allow-list (``PAYKEEP_WEBHOOK_ALLOWED_NETWORKS``) plus the demo
    receiver's address, without repeats."""
    configured = parse_allowed_networks(os.environ.get(ENV_WEBHOOK_ALLOWED_NETWORKS))
    return tuple(dict.fromkeys(configured + demo_receiver_networks(public_url)))


def seed_demo(runtime: Runtime, public_url: str) -> dict[str, Any]:
    """The demo marketplace, created once per database (idempotent on the serve file)."""
    import httpx

    from paykeep.payments.model import FeePlan, TimerSettings
    from paykeep.payments.service import NewMerchant

    config = runtime.config
    assert config.bank_url is not None and config.bank_iban is not None
    with httpx.Client(base_url=config.bank_url, timeout=10) as bank:
        bank.post(
            "/bank/accounts",
            json={"iban": config.bank_iban, "currency": config.currency,
                  "name": "Paykeep Safeguarding", "opening_balance_minor": 0},
        ).raise_for_status()  # fmt: skip
    ledger_name = f"bank:safeguarding:{config.bank_name}"
    payments = runtime.payments
    payments.ensure_bank_accounts(config.currency)
    if not any(a.iban == config.bank_iban for a in runtime.statements.accounts()):
        runtime.statements.add_account(config.bank_iban, config.currency, ledger_name)
    operator_key, _ = runtime.api_keys.create("operator", label="serve: demo operator")
    merchants = []
    # Short demo timers so a demo day shows every one of them firing within minutes.
    timers = TimerSettings(
        unpaid_close_s=120, ship_by_s=180, confirm_after_delivery_s=60,
        confirm_after_shipping_s=240,
    )  # fmt: skip
    for legal_name, country, iban in DEMO_MERCHANTS:
        with payments.transaction() as tx:
            merchant = payments.create_merchant(
                tx,
                NewMerchant(legal_name, country, config.currency, iban,
                            FeePlan(290, 30, 500, 300), timers),
            )  # fmt: skip
            payments.verify_payout_iban(tx, merchant.id)
        key, _ = runtime.api_keys.create("merchant", merchant.id, label="serve: demo merchant")
        endpoint, secret = runtime.webhooks.create_endpoint(
            merchant.id, f"{public_url}/demo/webhooks/{merchant.id}", None
        )
        merchants.append(
            {"id": merchant.id, "name": legal_name, "api_key": key,
             "webhook_endpoint": endpoint.id, "webhook_secret": secret}
        )  # fmt: skip
    with payments.transaction() as tx:
        carrier_secret = payments.register_carrier(tx, DEMO_CARRIER)
    return {
        "operator_key": operator_key,
        "merchants": merchants,
        "carrier": {"name": DEMO_CARRIER, "secret": carrier_secret},
    }


def write_serve_file(data_dir: Path, document: dict[str, Any]) -> Path:
    path = data_dir / SERVE_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(document, out, indent=2)
    tmp.replace(path)
    return path


def read_serve_file(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / SERVE_FILE
    if not path.exists():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    announce: bool = True,
    as_json: bool = False,
    bank_cycle_s: float = 5.0,
) -> None:
    import uvicorn

    from paykeep.web.checkout import SecretsFilter
    from paykeep.workers.cycle import start_workers

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        # Checkout URLs carry the buyer's token; card-number-like digit runs never reach a log.
        handler.addFilter(SecretsFilter())
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if port == 0:
        port = free_port(host)
    public_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104
    banksim = start_banksim(settings.data_dir / "banksim")
    stop = threading.Event()
    worker_process: subprocess.Popen[bytes] | None = None
    try:
        config = RuntimeConfig(
            settings=settings,
            card_network=("127.0.0.1", banksim.card_port),
            bank_url=banksim.url,
            bank_iban=SAFEGUARDING_IBAN,
            public_url=public_url,
            webhook_allowed_networks=webhook_allowed_networks(public_url),
        )
        runtime = open_runtime(config)
        previous = read_serve_file(settings.data_dir)
        first_start = previous is None or previous.get("database") != _database_tag(settings)
        if first_start:
            seeded = seed_demo(runtime, public_url)
        else:
            assert previous is not None
            seeded = {k: previous[k] for k in ("operator_key", "merchants", "carrier")}
        document = {
            "url": public_url,
            "database": _database_tag(settings),
            "pid": os.getpid(),
            "banksim_url": banksim.url,
            # Where buyers' sign-in codes go: SMTP (PAYKEEP_SMTP_URL), or .eml files in
            # <data-dir>/mail/ (read by `paykeep demo` and the tests).
            "mail": _mail_description(runtime),
            "mail_dir": _mail_dir(runtime),
            **seeded,
        }
        serve_file = write_serve_file(settings.data_dir, document)
        os.environ.update(config.to_env())
        if workers == 1:
            # The workers run in a process of their own: in this one they took the interpreter
            # lock from the requests, and fell behind (webhook deliveries) under load.
            worker_process = start_worker_process(bank_cycle_s)
        else:  # this process only supervises the API processes: the workers run here
            start_workers(runtime, stop, bank_cycle_s=bank_cycle_s)
        if announce:
            _announce(document, serve_file, first_start, as_json, workers)
        if workers == 1:
            from paykeep.api.app import create_app, start_risk_flusher

            start_risk_flusher(runtime)
            uvicorn.run(
                create_app(runtime), host=host, port=port, log_level="warning",
                access_log=False, timeout_graceful_shutdown=5, log_config=None,
            )  # fmt: skip
        else:
            uvicorn.run(
                "paykeep.api.app:create_app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5, log_config=None,
            )  # fmt: skip
    finally:
        stop.set()
        if worker_process is not None:
            stop_child(worker_process)
        banksim.stop()


def _mail_dir(runtime: Runtime) -> str | None:
    from paykeep.mail import DirectoryMailer

    mailer = runtime.payments.mailer
    return str(mailer.directory) if isinstance(mailer, DirectoryMailer) else None


def _mail_description(runtime: Runtime) -> str:
    from paykeep.mail import DirectoryMailer

    mailer = runtime.payments.mailer
    if mailer is None:
        return "not sent (no mail backend)"
    if isinstance(mailer, DirectoryMailer):
        return f"written as .eml files to {mailer.directory} (no PAYKEEP_SMTP_URL set)"
    return f"sent by {mailer.description}"


def _database_tag(settings: Settings) -> str:
    """Which database the seeded keys belong to (no password in it)."""
    if settings.database_url is None:
        return "sqlite"
    from sqlalchemy.engine import make_url

    return make_url(settings.database_url).render_as_string(hide_password=True)


def _announce(
    document: dict[str, Any], serve_file: Path, first_start: bool, as_json: bool, workers: int
) -> None:
    if as_json:
        print(json.dumps({**document, "serve_file": str(serve_file)}), flush=True)
        return
    url = document["url"]
    lines = [
        f"Paykeep is serving {url}  (API docs {url}/docs, OpenAPI {url}/openapi.json)",
        f"  workers: {workers} API process(es), escrow timers, webhooks, bank cycle",
        f"  banksim (card network + bank): {document['banksim_url']}",
    ]
    if first_start:
        lines.append(f"  operator API key (shown once here): {document['operator_key']}")
    lines.append(f"  buyers' sign-in codes: {document['mail']}")
    lines.append(f"  keys and demo merchants: {serve_file} (mode 0600)")
    lines.append("  run `paykeep demo` in another terminal to drive a marketplace day")
    print("\n".join(lines), flush=True)
