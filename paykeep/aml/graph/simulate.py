"""Seeded generator of marketplace and bank traffic with the eight typologies injected.

Background traffic follows a small, stated model of a marketplace economy (individuals,
merchants, companies, one or more marketplace escrow accounts):

=============  ==========================================  =========================
kind           edges                                        why it matters
=============  ==========================================  =========================
purchase       individual -> merchant (Zipf popularity)     legitimate fan-in
checkout       individual -> marketplace escrow             huge legitimate fan-in
payout         marketplace -> merchant                      legitimate fan-out
salary         employer -> its employees, fixed amount      legitimate fan-out
supplier/b2b   merchant/company -> company                  hubs talking to hubs
bill           individual -> utility                        legitimate fan-in
p2p            individual -> friend in a circle of 20       legitimate 2-cycles
refund         merchant -> an earlier buyer                 legitimate 2-cycles
reinvestment   account -> itself                            IBM-style self transfers
=============  ==========================================  =========================

Laundering attempts reuse ordinary individuals' accounts (so launderers also carry normal
traffic) and are labelled ``Is Laundering = 1``; each attempt is also written to the patterns
file in IBM's ``BEGIN/END LAUNDERING ATTEMPT`` format. Floats are used only to *sample*
amounts; every amount is turned into integer minor units before it leaves this module.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import polars as pl

from paykeep.aml.graph.errors import InvalidGraphParameter
from paykeep.aml.graph.io import (
    AMLWORLD_CURRENCIES,
    AMLWORLD_RAW_HEADER,
    APPROX_MAJOR_PER_USD,
    PATTERN_BEGIN,
    PATTERN_END,
    Transactions,
    atomic_path,
    format_amlworld_timestamp,
    minor_to_decimal_text,
    patterns_path_for,
    unit_exponent,
)

#: Bounds on a simulation (a limit on everything).
SIMULATE_TRANSACTIONS_MAX: Final = 20_000_000
SIMULATE_DAYS_MAX: Final = 366
DAY_S: Final = 86_400

#: Rough "major units per US dollar" used only to sample plausible amounts per currency.
_SAMPLING_SCALE: Final[dict[str, float]] = dict(APPROX_MAJOR_PER_USD)
_CODE_TO_NAME: Final[dict[str, str]] = {v: k for k, v in AMLWORLD_CURRENCIES.items()}
_CURRENCY_CODES: Final[tuple[str, ...]] = tuple(_SAMPLING_SCALE)
_CURRENCY_WEIGHTS: Final[tuple[float, ...]] = (
    0.40, 0.24, 0.04, 0.03, 0.04, 0.04, 0.03, 0.03, 0.03, 0.03, 0.02, 0.02, 0.01, 0.03, 0.01,
)  # fmt: skip
FORMATS: Final[tuple[str, ...]] = (
    "ACH",
    "Bitcoin",
    "Cash",
    "Cheque",
    "Credit Card",
    "Reinvestment",
    "Wire",
)

#: Share of background transactions per kind (sums to 1).
_KIND_SHARES: Final[dict[str, float]] = {
    "purchase": 0.36,
    "checkout": 0.08,
    "payout": 0.05,
    "salary": 0.07,
    "supplier": 0.06,
    "b2b": 0.03,
    "bill": 0.06,
    "p2p": 0.12,
    "refund": 0.02,
    "reinvestment": 0.15,
}

SIM_TYPOLOGIES: Final[tuple[str, ...]] = (
    "fan_out",
    "fan_in",
    "cycle",
    "scatter_gather",
    "gather_scatter",
    "stack",
    "bipartite",
    "random",
)
_IBM_NAME: Final[dict[str, str]] = {
    "fan_out": "FAN-OUT",
    "fan_in": "FAN-IN",
    "cycle": "CYCLE",
    "scatter_gather": "SCATTER-GATHER",
    "gather_scatter": "GATHER-SCATTER",
    "stack": "STACK",
    "bipartite": "BIPARTITE",
    "random": "RANDOM",
}


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    transactions: int
    seed: int = 0
    start: datetime = datetime(2022, 9, 1, tzinfo=UTC)
    days: int = 16
    #: Target share of laundering transactions (HI-Small has about 0.1%).
    laundering_share: float = 0.002
    #: Number of accounts; default one per ten transactions (HI-Small: 515k for 5M).
    accounts: int | None = None
    #: Account names (``bank:account``) to include in the population, e.g. the accounts of a
    #: real patterns file, so that its launderers also get ordinary background traffic.
    extra_accounts: tuple[str, ...] = field(default_factory=tuple)

    def validate(self) -> None:
        if not 1 <= self.transactions <= SIMULATE_TRANSACTIONS_MAX:
            raise InvalidGraphParameter(
                f"--transactions must be 1..{SIMULATE_TRANSACTIONS_MAX}, got {self.transactions}"
            )
        if not 1 <= self.days <= SIMULATE_DAYS_MAX:
            raise InvalidGraphParameter(f"days must be 1..{SIMULATE_DAYS_MAX}, got {self.days}")
        if not 0.0 <= self.laundering_share <= 0.5:
            raise InvalidGraphParameter("laundering share must be within 0..0.5")
        if self.accounts is not None and self.accounts < 50:
            raise InvalidGraphParameter("a simulation needs at least 50 accounts")


@dataclass(frozen=True, slots=True)
class Attempt:
    attempt_id: int
    typology: str
    detail: str
    #: Rows (in the final, time-sorted frame) of this attempt, in generation order.
    rows: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Simulation:
    transactions: Transactions
    attempts: tuple[Attempt, ...]
    #: Bank id per account index (AMLworld files name a bank and an account).
    banks: np.ndarray
    account_ids: tuple[str, ...]


class _Builder:
    """Collects generated edges as numpy arrays."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def add(
        self,
        ts: np.ndarray,
        src: np.ndarray,
        dst: np.ndarray,
        usd: np.ndarray,
        fmt: np.ndarray,
        label: int,
        attempt: int = -1,
    ) -> None:
        n = len(ts)
        self.parts.append(
            {
                "ts": np.asarray(ts, dtype=np.int64),
                "src": np.asarray(src, dtype=np.int32),
                "dst": np.asarray(dst, dtype=np.int32),
                "usd": np.asarray(usd, dtype=np.float64),
                "fmt": np.asarray(fmt, dtype=np.int8),
                "label": np.full(n, label, dtype=np.int8),
                "attempt": np.full(n, attempt, dtype=np.int32),
            }
        )

    def concat(self) -> dict[str, np.ndarray]:
        keys = ("ts", "src", "dst", "usd", "fmt", "label", "attempt")
        return {k: np.concatenate([p[k] for p in self.parts]) for k in keys}


def _fmt_index(name: str) -> int:
    return FORMATS.index(name)


def simulate(config: SimulationConfig) -> Simulation:
    """Generate a labelled history. Same config, same output, byte for byte."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    n_tx = config.transactions
    n_acc = max(50, config.accounts or n_tx // 10, len(config.extra_accounts) + 50)
    start_s = int(config.start.timestamp())
    span_s = config.days * DAY_S

    # Population: kinds by contiguous index ranges, so sampling is vectorised.
    n_market = max(1, n_acc // 20_000)
    n_merchant = max(5, n_acc * 8 // 100)
    n_company = max(5, n_acc * 8 // 100)
    n_individual = n_acc - n_market - n_merchant - n_company
    ind0, mer0 = 0, n_individual
    com0 = mer0 + n_merchant
    mkt0 = com0 + n_company
    n_banks = max(20, n_acc // 2_000)
    banks = (n_banks * rng.random(n_acc) ** 2).astype(np.int64) + 1
    account_ids = [f"8{i:08X}" for i in range(n_acc)]
    currency_idx = rng.choice(len(_CURRENCY_CODES), size=n_acc, p=_normalised(_CURRENCY_WEIGHTS))
    # Extra (e.g. IBM) accounts replace individuals, keeping their own bank and id.
    for position, name in enumerate(config.extra_accounts):
        bank_text, _, account = name.partition(":")
        index = ind0 + (position * 7919) % n_individual
        banks[index] = int(bank_text) if bank_text.isdigit() else banks[index]
        account_ids[index] = account
    merchant_weight = _zipf_weights(n_merchant, 1.1, rng)
    company_weight = _zipf_weights(n_company, 1.2, rng)
    employer = com0 + rng.choice(n_company, size=n_individual, p=company_weight)
    salary_usd = rng.lognormal(8.0, 0.5, size=n_individual)

    n_launder_target = round(n_tx * config.laundering_share)
    builder = _Builder()
    attempts_raw = _inject(
        builder, rng, n_launder_target, ind0, n_individual, start_s, span_s, config.days
    )
    n_launder = sum(len(p["ts"]) for p in builder.parts)
    n_bg = max(0, n_tx - n_launder)

    counts = rng.multinomial(n_bg, _normalised(tuple(_KIND_SHARES.values())))
    by_kind = dict(zip(_KIND_SHARES, counts, strict=True))

    def times(n: int) -> np.ndarray:
        day = rng.integers(0, config.days, size=n)
        # Diurnal: most payments between 07:00 and 23:00.
        minute = np.clip(rng.normal(14 * 60, 240, size=n), 0, 1439).astype(np.int64)
        return start_s + day * DAY_S + minute * 60

    def individuals(n: int) -> np.ndarray:
        return ind0 + rng.integers(0, n_individual, size=n)

    def merchants(n: int) -> np.ndarray:
        return mer0 + rng.choice(n_merchant, size=n, p=merchant_weight)

    def companies(n: int) -> np.ndarray:
        return com0 + rng.choice(n_company, size=n, p=company_weight)

    def formats(n: int, names: Sequence[str], weights: Sequence[float]) -> np.ndarray:
        idx = np.array([_fmt_index(x) for x in names], dtype=np.int8)
        return idx[rng.choice(len(names), size=n, p=_normalised(tuple(weights)))]

    n = by_kind["purchase"]
    buyers = individuals(n)
    sellers = merchants(n)
    purchase_ts = times(n)
    builder.add(
        purchase_ts,
        buyers,
        sellers,
        rng.lognormal(3.8, 1.0, n),
        formats(n, ("Credit Card", "ACH", "Cash", "Bitcoin"), (0.7, 0.2, 0.09, 0.01)),
        0,
    )
    n = by_kind["checkout"]
    builder.add(
        times(n),
        individuals(n),
        mkt0 + rng.integers(0, n_market, size=n),
        rng.lognormal(4.0, 1.0, n),
        formats(n, ("Credit Card", "ACH"), (0.8, 0.2)),
        0,
    )
    n = by_kind["payout"]
    builder.add(
        times(n),
        mkt0 + rng.integers(0, n_market, size=n),
        merchants(n),
        rng.lognormal(6.5, 1.0, n),
        formats(n, ("ACH", "Wire"), (0.8, 0.2)),
        0,
    )
    n = by_kind["salary"]
    employees = individuals(n)
    pay_day = rng.choice([0, 14], size=n) % config.days
    builder.add(
        start_s + pay_day * DAY_S + rng.integers(6 * 60, 10 * 60, size=n) * 60,
        employer[employees - ind0],
        employees,
        salary_usd[employees - ind0],
        formats(n, ("ACH", "Wire", "Cheque"), (0.8, 0.1, 0.1)),
        0,
    )
    n = by_kind["supplier"]
    builder.add(
        times(n),
        merchants(n),
        companies(n),
        rng.lognormal(7.5, 1.2, n),
        formats(n, ("Wire", "ACH", "Cheque"), (0.5, 0.4, 0.1)),
        0,
    )
    n = by_kind["b2b"]
    builder.add(
        times(n),
        companies(n),
        companies(n),
        rng.lognormal(8.0, 1.5, n),
        formats(n, ("Wire", "ACH", "Cheque"), (0.5, 0.4, 0.1)),
        0,
    )
    n = by_kind["bill"]
    utilities = com0 + rng.integers(0, max(1, n_company // 100), size=n)
    builder.add(
        times(n),
        individuals(n),
        utilities,
        rng.lognormal(4.5, 0.6, n),
        formats(n, ("ACH", "Cheque", "Credit Card"), (0.6, 0.2, 0.2)),
        0,
    )
    n = by_kind["p2p"]
    payer = individuals(n)
    circle = (payer - ind0) // 20 * 20
    friend = ind0 + np.minimum(circle + rng.integers(0, 20, size=n), n_individual - 1)
    builder.add(
        times(n),
        payer,
        friend,
        rng.lognormal(3.5, 1.0, n),
        formats(n, ("Cash", "Cheque", "ACH", "Bitcoin"), (0.4, 0.2, 0.35, 0.05)),
        0,
    )
    n = by_kind["refund"]
    if n and len(purchase_ts):
        pick = rng.integers(0, len(purchase_ts), size=n)
        builder.add(
            np.minimum(
                purchase_ts[pick] + rng.integers(3600, 3 * DAY_S, size=n), start_s + span_s - 60
            ),
            sellers[pick],
            buyers[pick],
            rng.lognormal(3.5, 0.8, n),
            np.full(n, _fmt_index("Credit Card"), dtype=np.int8),
            0,
        )
    n = by_kind["reinvestment"]
    who = rng.integers(0, n_acc, size=n)
    builder.add(
        times(n),
        who,
        who,
        rng.lognormal(6.0, 1.5, n),
        np.full(n, _fmt_index("Reinvestment"), dtype=np.int8),
        0,
    )

    data = builder.concat()
    # AMLworld timestamps have minute resolution: round here so a written file reads back equal.
    data["ts"] = data["ts"] - data["ts"] % 60
    order = np.lexsort((np.arange(len(data["ts"])), data["ts"]))
    data = {k: v[order] for k, v in data.items()}
    # Currency: the payer's account currency (IBM traffic is mostly single-currency).
    cur = currency_idx[data["src"]]
    bitcoin = data["fmt"] == _fmt_index("Bitcoin")
    cur = np.where(bitcoin, _CURRENCY_CODES.index("XBT"), cur)
    scale = np.array([_SAMPLING_SCALE[c] for c in _CURRENCY_CODES])[cur]
    exponent = np.array([unit_exponent(c) for c in _CURRENCY_CODES])[cur]
    amount_minor = np.maximum(1, np.rint(data["usd"] * scale * 10.0**exponent)).astype(np.int64)

    frame = pl.DataFrame(
        {
            "row": np.arange(len(order), dtype=np.int64),
            "ts": data["ts"],
            "src": data["src"],
            "dst": data["dst"],
            "amount_minor": amount_minor,
            "currency": np.array(_CURRENCY_CODES)[cur],
            "received_minor": amount_minor,
            "received_currency": np.array(_CURRENCY_CODES)[cur],
            "payment_format": np.array(FORMATS)[data["fmt"]],
            "label": data["label"],
            "transfer_id": pl.Series([None] * len(order), dtype=pl.String),
        }
    )
    names = pl.Series(
        "name", [f"{banks[i]}:{account_ids[i]}" for i in range(n_acc)], dtype=pl.String
    )
    attempt_rows: dict[int, list[int]] = {}
    for row, attempt in enumerate(data["attempt"].tolist()):
        if attempt >= 0:
            attempt_rows.setdefault(attempt, []).append(row)
    attempts = tuple(
        Attempt(a, typ, detail, tuple(attempt_rows.get(a, ())))
        for a, (typ, detail) in enumerate(attempts_raw)
    )
    txs = Transactions(frame, names, None, "amlworld")
    return Simulation(txs, attempts, banks, tuple(account_ids))


def _normalised(weights: tuple[float, ...]) -> np.ndarray:
    array = np.asarray(weights, dtype=np.float64)
    return np.asarray(array / array.sum(), dtype=np.float64)


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    rng.shuffle(weights)
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def _inject(
    builder: _Builder,
    rng: np.random.Generator,
    target_rows: int,
    ind0: int,
    n_individual: int,
    start_s: int,
    span_s: int,
    days: int,
) -> list[tuple[str, str]]:
    """Add laundering attempts, round-robin over the eight typologies, until ``target_rows``."""
    attempts: list[tuple[str, str]] = []
    if target_rows <= 0:
        return attempts
    used: set[int] = set()
    rows = 0
    window_s = min(4 * DAY_S, span_s)

    def people(k: int) -> np.ndarray:
        # Distinct individuals not used by another attempt: attempts stay separable.
        chosen: list[int] = []
        while len(chosen) < k:
            candidate = int(ind0 + rng.integers(0, n_individual))
            if candidate not in used:
                used.add(candidate)
                chosen.append(candidate)
            if len(used) >= n_individual - 1:
                raise InvalidGraphParameter("too few accounts for the laundering share asked")
        return np.array(chosen, dtype=np.int64)

    def moments(k: int, within_s: int, begin: int | None = None) -> np.ndarray:
        if begin is None:
            # Spread attempts over the whole history, so every split of it holds some.
            begin = int(start_s + rng.integers(0, max(1, span_s - within_s)))
        moments_s = begin + rng.integers(0, max(60, within_s) // 60, size=k) * 60
        return np.sort(np.minimum(moments_s, start_s + span_s - 60))

    def fmts(k: int) -> np.ndarray:
        idx = np.array([_fmt_index(x) for x in ("ACH", "Wire", "Cheque", "Cash")], dtype=np.int8)
        return idx[rng.choice(4, size=k, p=[0.7, 0.2, 0.05, 0.05])]

    typ_index = 0
    while rows < target_rows:
        typology = SIM_TYPOLOGIES[typ_index % len(SIM_TYPOLOGIES)]
        typ_index += 1
        attempt = len(attempts)
        base = float(rng.lognormal(8.5, 1.0))
        if typology in ("fan_out", "fan_in"):
            k = int(rng.integers(4, 17))
            hub, others = people(1)[0], people(k)
            t = moments(k, window_s)
            src = np.full(k, hub) if typology == "fan_out" else others
            dst = others if typology == "fan_out" else np.full(k, hub)
            usd = base / k * rng.uniform(0.8, 1.2, k)
            label = "Fan-Out" if typology == "fan_out" else "Fan-In"
            detail = f"Max {k}-degree {label}"
        elif typology == "cycle":
            k = int(rng.integers(2, 11))
            ring = people(k)
            t = moments(k, window_s)
            src, dst = ring, np.roll(ring, -1)
            usd = np.asarray(base * (1 - rng.uniform(0.01, 0.05)) ** np.arange(k), np.float64)
            detail = f"Max {k} hops"
        elif typology == "scatter_gather":
            k = int(rng.integers(3, 11))
            source, sink = people(1)[0], people(1)[0]
            mids = people(k)
            t1 = moments(k, window_s // 2)
            t2 = t1 + window_s // 2
            t = np.concatenate([t1, t2])
            src = np.concatenate([np.full(k, source), mids])
            dst = np.concatenate([mids, np.full(k, sink)])
            share = base / k * rng.uniform(0.9, 1.1, k)
            usd = np.concatenate([share, share * rng.uniform(0.95, 0.99, k)])
            detail = ""
        elif typology == "gather_scatter":
            k_in, k_out = int(rng.integers(3, 13)), int(rng.integers(3, 13))
            hub = people(1)[0]
            senders, receivers = people(k_in), people(k_out)
            t1 = moments(k_in, window_s)
            t2 = moments(k_out, window_s, begin=int(t1.max()) + 60)
            t = np.concatenate([t1, t2])
            src = np.concatenate([senders, np.full(k_out, hub)])
            dst = np.concatenate([np.full(k_in, hub), receivers])
            usd = np.concatenate(
                [
                    base / k_in * rng.uniform(0.8, 1.2, k_in),
                    base / k_out * rng.uniform(0.8, 1.2, k_out),
                ]
            )
            detail = f"Max {k_in}-degree Fan-In"
        elif typology in ("stack", "bipartite"):
            layers = [
                people(int(rng.integers(2, 5))) for _ in range(3 if typology == "stack" else 2)
            ]
            srcs: list[np.ndarray] = []
            dsts: list[np.ndarray] = []
            ts_parts: list[np.ndarray] = []
            begin = int(start_s + rng.integers(0, max(1, span_s - window_s)))
            for depth, (left, right) in enumerate(itertools.pairwise(layers)):
                # Complete bipartite between consecutive layers, the later layer later on.
                a, b = np.meshgrid(left, right, indexing="ij")
                srcs.append(a.ravel())
                dsts.append(b.ravel())
                layer_span = window_s // len(layers)
                ts_parts.append(moments(a.size, layer_span, begin=begin + depth * layer_span))
            src, dst, t = np.concatenate(srcs), np.concatenate(dsts), np.concatenate(ts_parts)
            usd = base / len(src) * rng.uniform(0.8, 1.2, len(src))
            detail = ""
        else:  # random: a walk among a small group, like IBM's RANDOM attempts
            group = people(int(rng.integers(4, 9)))
            hops = int(rng.integers(3, 11))
            walk = [int(rng.integers(0, len(group)))]
            for _ in range(hops):
                step = int(rng.integers(0, len(group) - 1))
                walk.append(step if step < walk[-1] else step + 1)
            src, dst = group[walk[:-1]], group[walk[1:]]
            t = moments(hops, window_s)
            usd = np.asarray(base * (1 - rng.uniform(0.01, 0.05)) ** np.arange(hops), np.float64)
            detail = f"Max {hops} hops"
        n = len(src)
        builder.add(t, src, dst, usd, fmts(n), 1, attempt)
        attempts.append((typology, detail))
        rows += n
        if len(attempts) > 100_000:
            break
    del days
    return attempts


# --------------------------------------------------------------------------------------------
# Writing AMLworld files.


def write_amlworld(simulation: Simulation, out: Path) -> Path:
    """Write ``out`` (IBM's ``*_Trans.csv`` layout) and the patterns file beside it.

    Both are written to temporary files and renamed only when both are complete.
    """
    frame = simulation.transactions.frame
    banks = pl.Series(simulation.banks.astype(np.int64))
    accounts = pl.Series(list(simulation.account_ids), dtype=pl.String)
    text = _amlworld_text(frame, banks, accounts)
    patterns_out = patterns_path_for(out)
    with atomic_path(out) as tmp_csv, atomic_path(patterns_out) as tmp_patterns:
        with tmp_csv.open("w", encoding="utf-8", newline="\n") as handle:
            handle.write(AMLWORLD_RAW_HEADER + "\n")
            text.write_csv(handle, include_header=False)
        lines = text.select(pl.concat_str(pl.all(), separator=",")).to_series().to_list()
        with tmp_patterns.open("w", encoding="utf-8", newline="\n") as handle:
            for attempt in simulation.attempts:
                name = _IBM_NAME[attempt.typology]
                head = f"{name}:  {attempt.detail}" if attempt.detail else name
                handle.write(f"{PATTERN_BEGIN}{head}\n")
                for row in attempt.rows:
                    handle.write(lines[row] + "\n")
                handle.write(f"{PATTERN_END}{name}\n\n")
    return patterns_out


def _amlworld_text(frame: pl.DataFrame, banks: pl.Series, accounts: pl.Series) -> pl.DataFrame:
    exponents = {code: unit_exponent(code) for code in frame["currency"].unique().to_list()}
    exponents |= {
        code: unit_exponent(code) for code in frame["received_currency"].unique().to_list()
    }

    def amount(column: str, code_column: str) -> pl.Expr:
        expr: pl.Expr = pl.lit(None, pl.String)
        for code, exponent in exponents.items():
            expr = (
                pl.when(pl.col(code_column) == code)
                .then(minor_to_decimal_text(pl.col(column), exponent))
                .otherwise(expr)
            )
        return expr

    return frame.select(
        format_amlworld_timestamp(pl.col("ts")).alias("Timestamp"),
        pl.col("src")
        .map_batches(lambda s: banks.gather(s), return_dtype=pl.Int64)
        .alias("From Bank"),
        pl.col("src")
        .map_batches(lambda s: accounts.gather(s), return_dtype=pl.String)
        .alias("Account"),
        pl.col("dst")
        .map_batches(lambda s: banks.gather(s), return_dtype=pl.Int64)
        .alias("To Bank"),
        pl.col("dst")
        .map_batches(lambda s: accounts.gather(s), return_dtype=pl.String)
        .alias("Account2"),
        amount("received_minor", "received_currency").alias("Amount Received"),
        pl.col("received_currency").replace_strict(_CODE_TO_NAME).alias("Receiving Currency"),
        amount("amount_minor", "currency").alias("Amount Paid"),
        pl.col("currency").replace_strict(_CODE_TO_NAME).alias("Payment Currency"),
        pl.col("payment_format").alias("Payment Format"),
        pl.col("label").cast(pl.String).alias("Is Laundering"),
    )
