"""``paykeep demo``: a realistic marketplace day driven over HTTP against a running server.

Everything goes through the public API and the buyer's checkout API, as a marketplace
would: merchants set short escrow timers (so the day fits in a minute or two), buyers pay by
card (some declined first) and by bank transfer (booked at the simulated bank and credited
when its statement is imported), merchants ship, carriers report deliveries through signed
webhooks, buyers confirm or the timers confirm for them, unpaid orders close, unshipped ones
are refunded, refunds are agreed or partly issued, a dispute is decided by the operator,
merchants withdraw, and a buyer whose bank-transfer payment was refunded takes that money
back to the bank account it came from (signed in, like confirming). Then every balance the
API reports is checked against what the orders say it must be — money in equals money out,
to the minor unit.

Buyers who confirm receipt sign in first, as a real buyer must (the checkout token alone is not
enough: the merchant holds it too): the demo asks for a code and reads it from the server's mail
folder (``<data-dir>/mail/``, named in ``serve.json``), then sends ``Paykeep-Buyer-Session``.
Without a mail folder (``--url`` against another server, or one sending by SMTP) the demo cannot
read the codes: those buyers leave confirmation to the auto-confirm timer instead, and the
result says so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from paykeep.buyer_mailbox import SignInFailed, sign_in
from paykeep.clock import SystemClock
from paykeep.payments.buyer_auth import BUYER_SESSION_HEADER

GOOD_CARD: Final = {"number": "4111111111111111", "exp_month": 12, "exp_year": 2029, "cvc": "123"}
DECLINED_CARD: Final = {"number": "4000000000000002", "exp_month": 12, "exp_year": 2029,
                        "cvc": "123"}  # fmt: skip
DEMO_TIMERS: Final = {
    "unpaid_close_s": 6,
    "ship_by_s": 8,
    "confirm_after_delivery_s": 4,
    "confirm_after_shipping_s": 15,
}
PRODUCTS: Final = (
    ("Darjeeling first flush, 100 g", 1450),
    ("Cast-iron teapot", 5900),
    ("Bicycle chain 11-speed", 3499),
    ("Merino scarf", 4200),
    ("Porcelain cup", 1250),
    ("Brake pads (pair)", 1899),
)
SETTLE_TIMEOUT_S: Final = 180.0


class DemoFailed(Exception):
    """The day did not reconcile (or the server refused something it must accept)."""


@dataclass
class Plan:
    """What will happen to one order (chosen up front, reproducible with --seed)."""

    funding: str  # card | declined_then_card | bank_transfer | unpaid
    after: str  # confirm | auto_confirm_delivered | partial_refund | refund_agreed | dispute
    #            | never_shipped


@dataclass
class OrderRun:
    order_id: str
    merchant: int
    buyer_id: str
    amount: int
    token: str
    plan: Plan
    funded: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class DemoResult:
    orders: int
    states: dict[str, int]
    volume_minor: int
    fees_minor: int
    refunded_minor: int
    payouts_minor: int
    webhooks_delivered: int
    checks: list[str]
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


class Api:
    def __init__(self, url: str, key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=30)
        self._n = 0
        self._run = secrets.token_hex(8)  # keys unique to this run, never reused across runs

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             *, ok: tuple[int, ...] = (200, 201), idem: bool = True,
             headers: dict[str, str] | None = None) -> Any:  # fmt: skip
        headers = dict(headers or {})
        if method == "POST" and idem:
            self._n += 1
            headers["Idempotency-Key"] = f"demo-{self._run}-{self._n}"
        response = self.http.request(method, path, json=body, headers=headers)
        if response.status_code not in ok:
            raise DemoFailed(f"{method} {path} -> {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path + _query(params))

    def post(self, path: str, body: dict[str, Any] | None = None, **kw: Any) -> Any:
        return self.call("POST", path, body or {}, **kw)


def _query(params: dict[str, Any]) -> str:
    pairs = [f"{k}={v}" for k, v in params.items() if v is not None]
    return ("?" + "&".join(pairs)) if pairs else ""


def _plans(count: int, rng: random.Random) -> list[Plan]:
    funding = ["card"] * 5 + ["declined_then_card"] + ["bank_transfer"] * 2 + ["unpaid"]
    after = (["confirm"] * 3 + ["auto_confirm_delivered"] * 3 + ["partial_refund", "refund_agreed"]
             + ["never_shipped"])  # fmt: skip
    plans = [Plan(rng.choice(funding), rng.choice(after)) for _ in range(count)]
    # Every path at least once in any day of 8 orders or more.
    fixed = ["card", "declined_then_card", "bank_transfer", "unpaid"]
    for i, f in enumerate(fixed[: min(count, len(fixed))]):
        plans[i].funding = f
    paths = ["confirm", "auto_confirm_delivered", "partial_refund", "refund_agreed", "dispute",
             "never_shipped"]  # fmt: skip
    for i, a in enumerate(paths):
        if 4 + i < count:
            plans[4 + i] = Plan("card", a)
    if count > 2:  # a bank-paid order refunded to the wallet: that buyer withdraws it later
        plans[2] = Plan("bank_transfer", "refund_agreed")
    return plans


def run_demo_day(
    url: str,
    operator_key: str,
    merchants: list[dict[str, Any]],
    carrier: dict[str, str] | None,
    *,
    orders: int = 24,
    seed: int = 7,
    banksim_url: str | None = None,
    mail_dir: Path | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> DemoResult:
    """Drive the day; raises :class:`DemoFailed` when a check fails. ``mail_dir``: the
    server's mail folder, where buyers read their sign-in codes (None: buyers do not sign in,
    and the timers confirm for them)."""
    start = time.monotonic()
    rng = random.Random(seed)
    step = progress or (lambda _what, _n: None)
    operator = Api(url, operator_key)
    shops = [Api(url, m["api_key"]) for m in merchants]
    buyer_api = Api(url, None)
    for shop, merchant in zip(shops, merchants, strict=True):
        shop.post(f"/v1/merchants/{merchant['id']}", {"escrow_timers": DEMO_TIMERS})
    buyers: list[list[dict[str, Any]]] = []
    for i, shop in enumerate(shops):
        buyers.append([
            shop.post("/v1/buyers", {"name": f"Demo Buyer {i}-{j}",
                                     "email": f"buyer{i}{j}.{seed}@example.com"})
            for j in range(3)
        ])  # fmt: skip
    emails = {b["id"]: f"buyer{i}{j}.{seed}@example.com"
              for i, group in enumerate(buyers) for j, b in enumerate(group)}  # fmt: skip
    sessions: dict[str, str] = {}
    runs: list[OrderRun] = []
    plans = _plans(orders, rng)
    if mail_dir is None:  # no codes to read: no buyer can sign in to confirm
        plans = [Plan(p.funding, "auto_confirm_delivered") if p.after == "confirm" else p
                 for p in plans]  # fmt: skip
    if banksim_url is None:  # no bank to send transfers through: those buyers pay by card
        plans = [Plan("card", p.after) if p.funding == "bank_transfer" else p for p in plans]
    for n, plan in enumerate(plans):
        m = n % len(shops)
        buyer = rng.choice(buyers[m])
        items = [
            {"description": name, "quantity": rng.randint(1, 3), "unit_amount_minor": price}
            for name, price in rng.sample(PRODUCTS, rng.randint(1, 3))
        ]
        order = shops[m].post("/v1/orders", {"buyer": buyer["id"], "items": items})
        session = shops[m].post("/v1/checkout_sessions", {"order": order["id"]})
        token = str(session["url"]).rsplit("/", 1)[-1]
        runs.append(OrderRun(order["id"], m, buyer["id"], order["amount_minor"], token, plan))
        step("orders created", 1)

    def pay(run: OrderRun) -> None:
        plan = run.plan
        path = f"/v1/checkout/{run.token}/pay"
        if plan.funding == "declined_then_card":
            buyer_api.post(path, {"method": "card", "card": DECLINED_CARD}, ok=(402,))
            run.notes.append("declined")
        if plan.funding in ("card", "declined_then_card"):
            buyer_api.post(path, {"method": "card", "card": GOOD_CARD})
            run.funded = run.amount
        elif plan.funding == "bank_transfer":
            view = buyer_api.get(f"/v1/checkout/{run.token}")
            buyer_api.post(path, {"method": "bank_transfer"})
            assert banksim_url is not None
            _bank_transfer(banksim_url, view, run.amount)
            run.funded = run.amount
        step("payments", 1)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(pay, runs))
    _wait(lambda: all(_state(shops[r.merchant], r) != "created" for r in runs
                      if r.plan.funding != "unpaid"), "bank transfers to be credited")  # fmt: skip

    def signed_in(run: OrderRun) -> str:
        """The buyer's session: once per buyer, the code read from the mail folder."""
        assert mail_dir is not None
        with sign_in_lock:
            if run.buyer_id not in sessions:
                try:
                    sessions[run.buyer_id] = sign_in(
                        buyer_api.http, mail_dir, run.token, emails[run.buyer_id]
                    )
                except SignInFailed as exc:
                    raise DemoFailed(f"buyer sign-in failed: {exc}") from None
            return sessions[run.buyer_id]

    def ship(run: OrderRun) -> None:
        shop = shops[run.merchant]
        if run.plan.funding == "unpaid" or run.plan.after == "never_shipped":
            step("shipping", 1)
            return
        if run.plan.after in ("refund_agreed", "dispute"):
            refund = buyer_api.post(
                f"/v1/checkout/{run.token}/refunds", {"reason": "changed my mind"}
            )
            if run.plan.after == "refund_agreed":
                shop.post(f"/v1/refunds/{refund['id']}/agree", {"return_required": False})
            else:
                shop.post(f"/v1/refunds/{refund['id']}/refuse", {})
                buyer_api.post(f"/v1/checkout/{run.token}/refunds/{refund['id']}/escalate", {})
            step("shipping", 1)
            return
        tracking = f"DP{rng.randint(10**9, 10**10 - 1)}"
        shipped = shop.post(f"/v1/orders/{run.order_id}/ship",
                            {"carrier": "demo-post", "tracking_number": tracking})  # fmt: skip
        shipment = shipped.get("shipment", shipped)
        if carrier is not None and run.plan.after == "auto_confirm_delivered":
            _carrier_event(url, carrier, tracking, "delivered")
        else:
            shop.post(f"/v1/shipments/{shipment['id']}/events", {"kind": "delivered"})
        if run.plan.after == "confirm":
            buyer_api.post(f"/v1/checkout/{run.token}/confirm", {},
                           headers={BUYER_SESSION_HEADER: signed_in(run)})  # fmt: skip
        elif run.plan.after == "partial_refund":
            shop.post(f"/v1/orders/{run.order_id}/refunds",
                      {"amount_minor": run.amount // 4, "reason": "one item damaged"})  # fmt: skip
        step("shipping", 1)

    # One sign-in per buyer at a time: the code mail read is the newest to that address.
    sign_in_lock = threading.Lock()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(ship, runs))
    for dispute in operator.get("/v1/disputes", limit=100)["data"]:
        if dispute["state"] == "open" and any(r.order_id == dispute["order"] for r in runs):
            operator.post(f"/v1/disputes/{dispute['id']}/decide",
                          {"buyer_share_bp": 5000, "note": "demo: split evenly"})  # fmt: skip
    terminal = {"completed", "closed", "refunded", "partially_refunded"}
    _wait(lambda: all(_state(shops[r.merchant], r) in terminal for r in runs),
          "every order to end (timers: close unpaid, refund unshipped, auto-confirm)")  # fmt: skip
    step("settled", len(runs))
    payouts = 0
    for shop in shops:
        available = shop.get("/v1/balance")["available_minor"]
        if available >= 200:
            shop.post("/v1/payouts", {"amount_minor": available // 2})
            payouts += available // 2
    withdrawal = None
    if mail_dir is not None:
        withdrawal = _withdraw_refund(buyer_api, shops, runs, signed_in)
    result = _reconcile(operator, shops, merchants, runs, payouts, time.monotonic() - start,
                        withdrawal)  # fmt: skip
    if mail_dir is None:
        result.checks.append(
            "no mail folder to read sign-in codes from: buyers did not sign in, so the "
            "auto-confirm timer confirmed their orders"
        )
    else:
        result.checks.append(
            f"{len(sessions)} buyers signed in with a code read from {mail_dir} before "
            "confirming receipt"
        )
    return result


def _state(shop: Api, run: OrderRun) -> str:
    return str(shop.get(f"/v1/orders/{run.order_id}")["state"])


def _wait(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out waiting for {what}")
        time.sleep(0.5)


def _bank_transfer(banksim: str, view: dict[str, Any], amount: int) -> None:
    """The buyer's bank sends a credit transfer with their reference to the safeguarding
    account; banksim books it (the simulated bank's HTTP API, found through the server)."""
    bank = view.get("bank_transfer") or {}
    iban, reference = bank.get("iban"), bank.get("reference")
    if not iban or not reference:
        raise DemoFailed("the checkout shows no bank-transfer instructions")
    httpx.post(
        f"{banksim}/bank/accounts/{iban}/incoming",
        json={"amount_minor": amount, "remittance": reference, "debtor_name": "Demo Buyer",
              "debtor_iban": "NL91ABNA0417164300"},
        timeout=10,
    ).raise_for_status()  # fmt: skip


def _carrier_event(url: str, carrier: dict[str, str], tracking: str, kind: str) -> None:
    body = json.dumps(
        {"tracking_number": tracking, "kind": kind, "event_id": f"ev-{tracking}-{kind}"}
    ).encode()
    t = str(SystemClock().now_ns() // 1_000_000_000)
    signature = hmac.new(carrier["secret"].encode(), f"{t}.".encode() + body, hashlib.sha256)
    response = httpx.post(
        f"{url}/v1/carriers/{carrier['name']}/events",
        content=body,
        headers={"Paykeep-Signature": f"t={t},v1={signature.hexdigest()}",
                 "Content-Type": "application/json"},
        timeout=10,
    )  # fmt: skip
    if response.status_code != 200:
        raise DemoFailed(f"carrier webhook -> {response.status_code}: {response.text[:200]}")


def _all_orders(shop: Api) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = None
    while True:
        page = shop.get("/v1/orders", limit=100, starting_after=after)
        found += page["data"]
        if not page["has_more"]:
            return found
        after = page["data"][-1]["id"]


def _withdraw_refund(
    buyer_api: Api, shops: list[Api], runs: list[OrderRun], signed_in: Callable[[OrderRun], str]
) -> dict[str, Any] | None:
    """The buyer of a refunded bank-paid order withdraws that refund (at most what is in the
    wallet) back to the account the transfer came from; None if no such order was refunded."""
    for run in runs:
        if run.plan.funding != "bank_transfer":
            continue
        order = shops[run.merchant].get(f"/v1/orders/{run.order_id}")
        if order["refunded_minor"] <= 0:
            continue
        rows = shops[run.merchant].get(f"/v1/buyers/{run.buyer_id}/balance")["data"]
        row = next((r for r in rows if r["currency"] == order["currency"]), None)
        amount = min(order["refunded_minor"], row["available_minor"] if row else 0)
        if amount <= 0:
            continue
        withdrawal: dict[str, Any] = buyer_api.post(
            f"/v1/checkout/{run.token}/withdrawals",
            {"amount_minor": amount, "currency": order["currency"]},
            headers={BUYER_SESSION_HEADER: signed_in(run)},
        )
        return withdrawal
    return None


def _reconcile(
    operator: Api, shops: list[Api], merchants: list[dict[str, Any]], runs: list[OrderRun],
    payouts: int, elapsed: float, withdrawal: dict[str, Any] | None = None,
) -> DemoResult:  # fmt: skip
    checks: list[str] = []
    buyer_withdrawn: dict[str, int] = {}
    if withdrawal is not None:
        current = operator.get(f"/v1/withdrawals/{withdrawal['id']}")
        # A withdrawal the bank returned is back in the wallet: only standing ones are out.
        if current["state"] not in ("returned", "failed"):
            buyer_withdrawn[current["buyer"]] = current["amount_minor"]
        checks.append(
            f"buyer {current['buyer']} withdrew {current['amount_minor']} of a refund back to "
            f"the bank account ending {current['destination']['iban_last4']} it came from "
            f"({current['state']})"
        )
    else:
        checks.append("no buyer withdrawal (no refunded bank-paid order, or no mail folder to "
                      "sign the buyer in with)")  # fmt: skip
    ours = {r.order_id: r for r in runs}
    states: Counter[str] = Counter()
    volume = fees = refunded = 0
    for shop, merchant in zip(shops, merchants, strict=True):
        everything = _all_orders(shop)
        orders = [o for o in everything if o["id"] in ours]
        net = sum(o["released_minor"] - o["fee_minor"] for o in everything)
        withdrawn = sum(p["amount_minor"] for p in shop.get("/v1/payouts", limit=100)["data"])
        balance = shop.get("/v1/balance")
        held = sum(o["amount_minor"] for o in everything
                   if o["state"] in ("awaiting_shipment", "awaiting_receipt"))  # fmt: skip
        got = balance["available_minor"] + balance["reserve_minor"] + withdrawn
        if got != net:
            raise DemoFailed(
                f"merchant {merchant['id']}: available + reserve + payouts = {got}, "
                f"but its orders released {net} net of fees"
            )
        if balance["pending_minor"] != held:
            raise DemoFailed(f"merchant {merchant['id']}: pending {balance['pending_minor']} "
                             f"!= held {held}")  # fmt: skip
        checks.append(f"{merchant['name']}: available + reserve + payouts = released − fees "
                      f"= {net}")  # fmt: skip
        for o in orders:
            states[o["state"]] += 1
            volume += o["amount_minor"] if o["paid_at"] else 0
            fees += o["fee_minor"]
            refunded += o["refunded_minor"]
    for buyer_id in {r.buyer_id for r in runs}:
        mine = [r for r in runs if r.buyer_id == buyer_id]
        shop = shops[mine[0].merchant]
        funded = sum(r.funded for r in mine)
        final = [shop.get(f"/v1/orders/{r.order_id}") for r in mine]
        spent = sum(o["released_minor"] for o in final)
        # A card-paid order's refund goes back to the card: reserved in the wallet at once,
        # sent by the workers; only other refunds stay in the wallet.
        to_card = sum(o["refunded_minor"] for o in final if o["funding"] == "card")
        wallet = shop.get(f"/v1/buyers/{buyer_id}/balance")
        rows = wallet["data"] if isinstance(wallet, dict) and "data" in wallet else [wallet]
        available = sum(int(w["available_minor"]) for w in rows)
        out = buyer_withdrawn.get(buyer_id, 0)
        if available != funded - spent - to_card - out:
            raise DemoFailed(f"buyer {buyer_id}: wallet {available} != funded {funded} − "
                             f"released {spent} − refunded to the card {to_card} − "
                             f"withdrawn {out}")  # fmt: skip
    checks.append(
        f"{len({r.buyer_id for r in runs})} buyer wallets = funded − released − refunded to "
        "cards − withdrawn"
    )
    delivered = 0
    for shop in shops:
        page = shop.get("/v1/webhook_deliveries", limit=100, state="delivered")
        delivered += len(page["data"])
    return DemoResult(len(runs), dict(states), volume, fees, refunded, payouts, delivered,
                      checks, round(elapsed, 1))  # fmt: skip
