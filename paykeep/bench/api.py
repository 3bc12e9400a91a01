"""``paykeep bench api``: money-moving requests per second through the whole HTTP stack.

Starts ``paykeep serve`` (embedded SQLite in a scratch directory, or ``--database-url``),
funds eight buyer wallets per client with bank transfers through the simulated bank (what
their orders need), creates
the orders and checkout sessions up front (not timed), then for ``seconds`` lets ``clients``
concurrent clients on 127.0.0.1 drive the escrow flow — pay (from the wallet), ship,
confirm — each a durable money-moving transaction (ledger hold / state / release with fee and
reserve as one linked batch / outbox event). The baseline, measured in the same run with
the same client, is a trivial authenticated GET (``/v1/whoami``) on the same server. A second
reference, measured while that server idles, is the floor (:mod:`paykeep.bench.floor`): the
cheapest durable POST (one row, group commit) and trivial GET the same framework, server and
database answer on this machine — every money-moving request does at least that write. Over
the timed phase the bench also counts the CPU of every process of the run (the server's API and
workers processes, banksim, the webhook sink, this client) per money-moving request: two cores
allow at most 2,000 ms / that total requests per second, whatever else the machine is doing.

Paying from the wallet and confirming receipt need the buyer signed in: each bench buyer signs
in once during the setup (a code read from the server's mail folder), and the timed flow sends
its ``Paykeep-Buyer-Session`` header — the session check is in the measured requests, the
sign-in is not.

Webhooks are delivered throughout, as in production, to a sink in a process of its own
(:mod:`paykeep.bench.sink`) rather than to the demo receiver that ``paykeep serve`` mounts in
its own API process (which would bill a merchant's work to Paykeep); the setup's deliveries
are drained before the clock starts, so the figure is the steady state.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import aiohttp
import httpx

from paykeep.bench.serveproc import ServerProcess
from paykeep.buyer_mailbox import sign_in
from paykeep.config import Settings
from paykeep.payments.buyer_auth import BUYER_SESSION_HEADER

BUYERS_PER_CLIENT: Final = 8
ORDER_AMOUNT_MINOR: Final = 1_000
ORDERS_PER_CLIENT_MAX: Final = 5_000


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux ``/proc``); 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> dict[int, str]:
    """``root`` and every process under it, each with its command line."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            found[pid] = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode()
        except OSError:
            continue
        todo.extend(children.get(pid, ()))
    return found


def _role(command: str) -> str:
    if "paykeep.workers" in command:
        return "workers"
    if "paykeep.banksim" in command:
        return "banksim"
    if "paykeep.bench.sink" in command:
        return "webhook_receiver"
    return "api"


def _cpu_by_role(pids: dict[int, str]) -> dict[str, float]:
    spent: dict[str, float] = {}
    for pid, command in pids.items():
        role = _role(command)
        spent[role] = spent.get(role, 0.0) + _cpu_s(pid)
    spent["bench_client"] = time.process_time()
    return spent


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _session(
    url: str, clients: int, headers: dict[str, str] | None = None
) -> aiohttp.ClientSession:
    """The timed phases' client. aiohttp, not httpx: measured on this 2-core machine, httpx's
    async client spent 1.24 ms of CPU per request against aiohttp's 0.15 ms — the bench was
    measuring its own client, which shares the two cores with the server."""
    return aiohttp.ClientSession(
        base_url=url,
        headers=headers,
        connector=aiohttp.TCPConnector(limit=clients),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def _closed_loop(
    clients: int, seconds: float, request: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    """``clients`` concurrent clients each sending ``request()`` after the last one answered,
    for ``seconds``: requests/s, p50 and p99 latency."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await request()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": _pct(latencies, 0.5) * 1000,
        "p99_ms": _pct(latencies, 0.99) * 1000,
    }


async def _drive_get(url: str, path: str, key: str, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` concurrent clients sending one authenticated GET after another."""
    async with _session(url, clients, {"Authorization": f"Bearer {key}"}) as http:

        async def get() -> None:
            async with http.get(path) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"GET {path} failed: {response.status}")

        return await _closed_loop(clients, seconds, get)


async def _drive_floor_writes(url: str, clients: int, seconds: float) -> dict[str, Any]:
    """The floor's durable POST (:mod:`paykeep.bench.floor`), each under a key of its own."""
    numbers = itertools.count()

    async with _session(url, clients) as http:

        async def write() -> None:
            n = next(numbers)
            async with http.post(
                "/v1/floor/writes",
                json={"carrier": "bench-post", "tracking_number": f"BP{n:012d}"},
                headers={"Idempotency-Key": f"floor-{n}"},
            ) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"the floor's write failed: {response.status}")

        figures = await _closed_loop(clients, seconds, write)
        async with http.get("/v1/floor/count") as response:
            rows = int((await response.json())["rows"])
    if rows != figures["requests"]:  # every answered write must be a committed row, no more
        raise RuntimeError(f"the floor answered {figures['requests']} writes but holds {rows}")
    return {**figures, "rows": rows}


#: One order of the timed flow: (merchant index, order id, checkout token, buyer session).
Work = tuple[int, str, str, str]


async def _drive_escrow(
    url: str, merchant_keys: list[str], work: list[list[Work]], seconds: float
) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {"pay": [], "ship": [], "confirm": []}
    failures: dict[str, int] = {}
    deadline = time.perf_counter() + seconds
    finished = 0

    async def client(http: aiohttp.ClientSession, orders: list[Work]) -> None:
        nonlocal finished
        for merchant, order_id, token, buyer_session in orders:
            if time.perf_counter() >= deadline:
                return
            key = {"Authorization": f"Bearer {merchant_keys[merchant]}"}
            buyer = {BUYER_SESSION_HEADER: buyer_session}
            steps: tuple[tuple[str, str, dict[str, Any], dict[str, str]], ...] = (
                ("pay", f"/v1/checkout/{token}/pay", {"method": "wallet"}, buyer),
                ("ship", f"/v1/orders/{order_id}/ship",
                 {"carrier": "bench-post", "tracking_number": f"BP{order_id[-12:]}"}, key),
                ("confirm", f"/v1/checkout/{token}/confirm", {}, buyer),
            )  # fmt: skip
            for name, path, body, headers in steps:
                start = time.perf_counter()
                async with http.post(
                    path, json=body, headers={**headers, "Idempotency-Key": f"{name}-{order_id}"}
                ) as response:
                    await response.read()
                    status = response.status
                latencies[name].append(time.perf_counter() - start)
                if status != 200:
                    failures[f"{name}:{status}"] = failures.get(f"{name}:{status}", 0) + 1
                    break
            else:
                finished += 1

    async with _session(url, len(work)) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http, orders) for orders in work))
        elapsed = time.perf_counter() - start
    every = [x for values in latencies.values() for x in values]
    return {
        "elapsed_s": elapsed,
        "requests": len(every),
        "requests_per_s": len(every) / elapsed,
        "p50_ms": _pct(every, 0.5) * 1000,
        "p99_ms": _pct(every, 0.99) * 1000,
        "per_step_p99_ms": {k: round(_pct(v, 0.99) * 1000, 2) for k, v in latencies.items()},
        "per_step_mean_ms": {
            k: round(statistics.fmean(v) * 1000, 2) if v else 0 for k, v in latencies.items()
        },
        "orders_completed": finished,
        "failures": failures,
    }


@contextmanager
def _child(module: str, *args: str) -> Iterator[dict[str, Any]]:
    """``python -m module args``, which prints its address as one JSON line; yields it."""
    child = subprocess.Popen(
        [sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"{module} did not start")
        yield {**json.loads(line), "pid": child.pid}
    finally:
        child.terminate()
        child.wait(timeout=10)


@contextmanager
def _webhook_sink() -> Iterator[tuple[str, int]]:
    """A :mod:`paykeep.bench.sink` process; yields its URL and process id."""
    with _child("paykeep.bench.sink") as started:
        yield f"http://127.0.0.1:{started['port']}", int(started["pid"])


def _measure_floor(directory: Path, clients: int, seconds: float) -> dict[str, Any]:
    """The trivial GET and the durable POST of :mod:`paykeep.bench.floor` (its database in
    ``directory``), one after the other."""
    directory.mkdir()
    with _child("paykeep.bench.floor", str(directory)) as started:
        url = f"http://127.0.0.1:{started['port']}"
        get = asyncio.run(_drive_get(url, "/v1/floor/whoami", started["token"], clients, seconds))
        write = asyncio.run(_drive_floor_writes(url, clients, seconds))
    return {"get": get, "write": write}


def _point_webhooks_at(http: httpx.Client, keys: list[str], sink_url: str) -> None:
    """Each merchant's endpoints are disabled and one endpoint at the sink registered."""
    for key in keys:
        auth = {"Authorization": f"Bearer {key}"}
        for endpoint in http.get("/v1/webhook_endpoints", headers=auth).json()["data"]:
            if endpoint.get("enabled", True):
                http.post(
                    f"/v1/webhook_endpoints/{endpoint['id']}/disable", headers=auth
                ).raise_for_status()
        http.post(
            "/v1/webhook_endpoints", json={"url": f"{sink_url}/webhooks"}, headers=auth
        ).raise_for_status()


def _drain_webhooks(server: ServerProcess, sink_url: str, limit_s: float = 300) -> int:
    """Wait until the setup's events are delivered: nothing pending and the sink quiet."""
    operator = {"Authorization": f"Bearer {server.operator_key}"}
    deadline = time.monotonic() + limit_s
    last = -1
    with httpx.Client(base_url=server.url, timeout=60) as http:
        while time.monotonic() < deadline:
            pending = http.get(
                "/v1/webhook_deliveries", params={"state": "pending", "limit": 1}, headers=operator
            ).json()["data"]
            received = int(httpx.get(f"{sink_url}/count", timeout=10).json()["received"])
            if not pending and received == last:
                return received
            last = received
            time.sleep(1.0)
    raise RuntimeError(f"the setup's webhooks were not delivered within {limit_s:.0f} s")


#: Pending deliveries counted after the timed phase, at most (a page of 100 at a time).
PENDING_COUNT_MAX: Final = 100_000


def _pending_deliveries(server: ServerProcess) -> int:
    """Webhook deliveries not yet made (the backlog), counted through the operator's API."""
    operator = {"Authorization": f"Bearer {server.operator_key}"}
    count, after = 0, None
    with httpx.Client(base_url=server.url, headers=operator, timeout=60) as http:
        while count < PENDING_COUNT_MAX:
            params: dict[str, str | int] = {"state": "pending", "limit": 100}
            if after is not None:
                params["starting_after"] = after
            page = http.get("/v1/webhook_deliveries", params=params)
            page.raise_for_status()
            found = page.json()
            count += len(found["data"])
            if not found["has_more"] or not found["data"]:
                return count
            after = found["data"][-1]["id"]
    return count


def _setup(server: ServerProcess, clients: int, orders_per_client: int, sink_url: str) -> tuple[
    list[str], list[list[Work]]
]:  # fmt: skip
    """Funded buyers for each client (bank transfer → statement → AML → wallet), the orders
    and their checkout sessions, and each buyer signed in once."""
    merchants = server.info["merchants"]
    keys = [m["api_key"] for m in merchants]
    banksim = server.info["banksim_url"]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        _point_webhooks_at(http, keys, sink_url)
        for merchant, key in zip(merchants, keys, strict=True):
            http.post(
                f"/v1/merchants/{merchant['id']}",
                json={"escrow_timers": {"unpaid_close_s": 3600, "ship_by_s": 3600,
                                        "confirm_after_delivery_s": 3600,
                                        "confirm_after_shipping_s": 3600}},
                headers={"Authorization": f"Bearer {key}"},
            ).raise_for_status()  # fmt: skip
        # Several buyers per client, each funded with what its orders need: traffic like a
        # marketplace's (one buyer paying a dozen orders a second is a typology the rules
        # rightly send to review, which is not what this measures).
        per_buyer = -(-orders_per_client // BUYERS_PER_CLIENT)
        topup = (per_buyer + 1) * ORDER_AMOUNT_MINOR
        buyers: list[tuple[int, list[dict[str, Any]]]] = []
        for c in range(clients):
            auth = {"Authorization": f"Bearer {keys[c % len(keys)]}"}
            group = []
            for b in range(BUYERS_PER_CLIENT):
                email = f"bench{c}.{b}@example.com"
                made = http.post(
                    "/v1/buyers", json={"name": f"Bench {c}-{b}", "email": email}, headers=auth
                )
                made.raise_for_status()
                group.append({**made.json(), "email": email})
            buyers.append((c % len(keys), group))
        first = _order(http, keys[0], buyers[0][1][0]["id"])
        iban = http.get(f"/v1/checkout/{first[1]}").json()["bank_transfer"]["iban"]
        for _merchant_index, group in buyers:
            for buyer in group:
                httpx.post(
                    f"{banksim}/bank/accounts/{iban}/incoming",
                    json={"amount_minor": topup, "remittance": buyer["payment_reference"],
                          "debtor_name": "Bench Buyer", "debtor_iban": "NL91ABNA0417164300"},
                    timeout=30,
                ).raise_for_status()  # fmt: skip
        deadline = time.monotonic() + 180
        operator = {"Authorization": f"Bearer {server.operator_key}"}
        released: set[str] = set()
        for merchant_index, group in buyers:
            auth = {"Authorization": f"Bearer {keys[merchant_index]}"}
            for buyer in group:
                while True:
                    balance = http.get(f"/v1/buyers/{buyer['id']}/balance", headers=auth).json()
                    rows = balance.get("data", [balance])
                    if sum(int(r["available_minor"]) for r in rows) >= topup:
                        break
                    # A transfer the AML rules hold waits for the operator's release, which
                    # is part of funding (none is expected at these amounts).
                    held = http.get("/v1/topups", params={"buyer": buyer["id"]}, headers=operator)
                    for found in held.json()["data"]:
                        if found["state"] == "held" and found["id"] not in released:
                            http.post(
                                f"/v1/topups/{found['id']}/release", headers=operator
                            ).raise_for_status()
                            released.add(found["id"])
                    if time.monotonic() > deadline:
                        raise RuntimeError("the bench wallets were not credited within 180 s")
                    time.sleep(0.2)
    orders = asyncio.run(_create_orders(server.url, keys, buyers, orders_per_client))
    # Each buyer signs in once, through any of its checkouts (a session is the buyer's).
    emails = {b["id"]: b["email"] for _m, group in buyers for b in group}
    sessions: dict[str, str] = {}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for client_orders in orders:
            for _merchant, _order_id, token, buyer_id in client_orders:
                if buyer_id not in sessions:
                    sessions[buyer_id] = sign_in(http, server.mail_dir, token, emails[buyer_id])
    work = [[(m, order_id, token, sessions[buyer_id]) for m, order_id, token, buyer_id in o]
            for o in orders]  # fmt: skip
    return keys, work


async def _create_orders(
    url: str, keys: list[str], buyers: list[tuple[int, list[dict[str, Any]]]], per_client: int
) -> list[list[tuple[int, str, str, str]]]:
    """Each client's orders (its buyers in turn) and checkout sessions, created concurrently
    (setup, not timed): (merchant index, order id, checkout token, buyer id)."""

    async def one_client(
        merchant_index: int, group: list[dict[str, Any]]
    ) -> list[tuple[int, str, str, str]]:
        auth = {"Authorization": f"Bearer {keys[merchant_index]}"}
        made = []
        async with httpx.AsyncClient(base_url=url, headers=auth, timeout=60) as http:
            for n in range(per_client):
                buyer_id = group[n % len(group)]["id"]
                order = await http.post(
                    "/v1/orders",
                    json={"buyer": buyer_id, "items": [{"description": "Bench item",
                          "quantity": 1, "unit_amount_minor": ORDER_AMOUNT_MINOR}]},
                )  # fmt: skip
                order.raise_for_status()
                session = await http.post(
                    "/v1/checkout_sessions", json={"order": order.json()["id"]}
                )
                session.raise_for_status()
                token = str(session.json()["url"]).rsplit("/", 1)[-1]
                made.append((merchant_index, str(order.json()["id"]), token, buyer_id))
        return made

    return list(await asyncio.gather(*(one_client(mi, group) for mi, group in buyers)))


def _order(http: httpx.Client, key: str, buyer_id: str) -> tuple[str, str]:
    auth = {"Authorization": f"Bearer {key}"}
    order = http.post(
        "/v1/orders",
        json={"buyer": buyer_id, "items": [{"description": "Bench item", "quantity": 1,
                                            "unit_amount_minor": ORDER_AMOUNT_MINOR}]},
        headers=auth,
    )  # fmt: skip
    order.raise_for_status()
    session = http.post("/v1/checkout_sessions", json={"order": order.json()["id"]}, headers=auth)
    session.raise_for_status()
    return order.json()["id"], str(session.json()["url"]).rsplit("/", 1)[-1]


def _per_request(
    before: dict[str, float], after: dict[str, float], requests: int
) -> dict[str, float]:
    spent = {role: after[role] - before.get(role, 0.0) for role in after}
    per = {role: round(1000 * cpu / max(requests, 1), 3) for role, cpu in sorted(spent.items())}
    per["total"] = round(sum(per.values()), 3)
    return per


def run_api_bench(
    *,
    clients: int,
    seconds: float,
    database_url: str | None = None,
    workers: int = 1,
    orders_per_client: int | None = None,
) -> dict[str, Any]:
    per_client = orders_per_client or min(ORDERS_PER_CLIENT_MAX, max(20, int(seconds * 12)))
    with tempfile.TemporaryDirectory(prefix="paykeep-bench-api-") as tmp:
        settings = Settings(data_dir=Path(tmp), database_url=database_url)
        with (
            _webhook_sink() as (sink_url, sink_pid),
            ServerProcess(
                settings,
                "--workers",
                str(workers),
                "--bank-cycle",
                "1",
                # The sink listens on loopback, which webhook deliveries refuse unless allowed.
                env={"PAYKEEP_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32"},
            ) as server,
        ):
            keys, work = _setup(server, clients, per_client, sink_url)
            delivered_in_setup = _drain_webhooks(server, sink_url)
            reference_s = min(seconds, 10)
            baseline = asyncio.run(
                _drive_get(server.url, "/v1/whoami", server.operator_key, clients, reference_s)
            )
            # While the server under test idles, as during its baseline.
            floor = _measure_floor(Path(tmp) / "floor", clients, reference_s)
            # Every process of the run (the server's tree, the sink, this client) is counted
            # over the timed phase: CPU ms per money-moving request, by role, says what the
            # two cores allow (2,000 ms / the total) whatever the machine is doing besides.
            pids = {**_descendants(server.process.pid), **_descendants(sink_pid)}
            cpu_before = _cpu_by_role(pids)
            escrow = asyncio.run(_drive_escrow(server.url, keys, work, seconds))
            cpu_after = _cpu_by_role(pids)
            delivered = int(httpx.get(f"{sink_url}/count", timeout=10).json()["received"])
            backlog = _pending_deliveries(server)
    return {
        "backend": "postgres" if database_url else "sqlite",
        "sqlite_synchronous": None if database_url else "FULL (WAL)",
        "clients": clients,
        "api_processes": workers,
        "seconds": round(escrow["elapsed_s"], 2),
        "money_moving_requests": escrow["requests"],
        "money_moving_requests_per_s": round(escrow["requests_per_s"], 1),
        "latency_ms_p50": round(escrow["p50_ms"], 2),
        "latency_ms_p99": round(escrow["p99_ms"], 2),
        "per_step_p99_ms": escrow["per_step_p99_ms"],
        "per_step_mean_ms": escrow["per_step_mean_ms"],
        "orders_completed": escrow["orders_completed"],
        "failures": escrow["failures"],
        "baseline_requests_per_s": round(baseline["requests_per_s"], 1),
        "baseline_latency_ms_p99": round(baseline["p99_ms"], 2),
        "ratio": round(escrow["requests_per_s"] / baseline["requests_per_s"], 3),
        "webhooks_delivered_while_timed": delivered - delivered_in_setup,
        # Deliveries still to make when the clock stopped (none when it started): what the
        # deliveries fell behind the events by.
        "webhook_deliveries_pending_after": backlog,
        # The cheapest durable POST this machine and stack answer (paykeep.bench.floor), same
        # client, same concurrency: what the money path's rate is bounded by.
        "floor_get_requests_per_s": round(floor["get"]["requests_per_s"], 1),
        "floor_durable_post_requests_per_s": round(floor["write"]["requests_per_s"], 1),
        "floor_durable_post_latency_ms_p99": round(floor["write"]["p99_ms"], 2),
        "ratio_to_floor_post": round(
            escrow["requests_per_s"] / floor["write"]["requests_per_s"], 3
        ),
        "cpu_ms_per_money_moving_request": _per_request(cpu_before, cpu_after, escrow["requests"]),
        "flow": "pay (wallet) + ship + confirm per order, the buyer's session header on pay and "
        "confirm; orders created and buyers signed in beforehand",
    }
