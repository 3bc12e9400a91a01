"""Readers and writers for the three input formats, the patterns file and the alerts file.

Everything is read into one internal frame (:data:`TX_COLUMNS`), whatever the source:

- ``row``: 0-based position of the transaction across all inputs, in input order;
- ``ts``: seconds since the Unix epoch, UTC;
- ``src`` / ``dst``: account indexes into :attr:`Transactions.accounts` (debit / credit side);
- ``amount_minor`` + ``currency``: the paid (debit) amount as an integer of the currency's
  minor unit — never a float; ``received_minor`` + ``received_currency``: the credited side;
- ``payment_format``: the AMLworld payment format, or ``""``;
- ``label``: 1 laundering / 0 clean / null unknown;
- ``transfer_id``: the Paykeep transfer id, or null for the public formats.

Amounts are converted from decimal text by exact string arithmetic (``ROUND_HALF_EVEN`` when
the text has more digits than the unit, as IBM's Yen amounts do); a property test checks it
against :meth:`paykeep.money.Money.parse` digit for digit. The vectorised path exists because
calling ``Money.parse`` on five million rows costs more than the whole graph scan.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import polars as pl

from paykeep.aml.graph.errors import (
    BadAccount,
    BadAmount,
    BadLabel,
    BadPatternsFile,
    BadTimestamp,
    EmptyInput,
    InputFileNotFound,
    MissingColumns,
    NegativeAmount,
    UnknownAmlCurrency,
    UnknownInputFormat,
)
from paykeep.money import UnknownCurrency, currency_exponent

InputFormat = Literal["amlworld", "amlsim", "paykeep"]
INPUT_FORMATS: Final[tuple[str, ...]] = ("amlworld", "amlsim", "paykeep")

TX_COLUMNS: Final[tuple[str, ...]] = (
    "row",
    "ts",
    "src",
    "dst",
    "amount_minor",
    "currency",
    "received_minor",
    "received_currency",
    "payment_format",
    "label",
    "transfer_id",
)

#: AMLworld currency names -> unit codes. ISO 4217 codes take their exponent from the ISO table.
AMLWORLD_CURRENCIES: Final[dict[str, str]] = {
    "US Dollar": "USD",
    "Euro": "EUR",
    "Yuan": "CNY",
    "Yen": "JPY",
    "UK Pound": "GBP",
    "Rupee": "INR",
    "Ruble": "RUB",
    "Canadian Dollar": "CAD",
    "Australian Dollar": "AUD",
    "Swiss Franc": "CHF",
    "Mexican Peso": "MXN",
    "Brazil Real": "BRL",
    "Shekel": "ILS",
    "Saudi Riyal": "SAR",
    "Bitcoin": "XBT",
}
#: Units that are not ISO 4217 currencies with a minor unit, kept as explicit integers.
#: Bitcoin is counted in satoshi (10^-8 BTC) under the customary, non-ISO code ``XBT``.
NON_ISO_UNITS: Final[dict[str, int]] = {"XBT": 8}
#: Rough major units per US dollar, for *comparing* amounts across currencies in detectors
#: and features (pass-through ratios, amount spread) and for sampling in the simulator.
#: A statistic, never money: no amount is ever converted with it.
APPROX_MAJOR_PER_USD: Final[dict[str, float]] = {
    "USD": 1.0,
    "EUR": 0.92,
    "CNY": 7.2,
    "JPY": 150.0,
    "GBP": 0.79,
    "INR": 83.0,
    "RUB": 90.0,
    "CAD": 1.36,
    "AUD": 1.5,
    "CHF": 0.88,
    "MXN": 17.0,
    "BRL": 5.0,
    "ILS": 3.7,
    "SAR": 3.75,
    "XBT": 0.000016,
}
#: AMLSim's sample has no currency; its values are treated as US dollars (documented).
AMLSIM_CURRENCY: Final = "USD"
#: AMLSim ``time`` is a step number; a step is taken as one day from this epoch (2019-01-01).
AMLSIM_EPOCH_S: Final = 1_546_300_800
AMLSIM_STEP_S: Final = 86_400
#: Longest integer part accepted in a decimal amount (keeps minor units far below 2^63).
AMOUNT_INTEGER_DIGITS_MAX: Final = 12

AMLWORLD_RAW_COLUMNS: Final[tuple[str, ...]] = (
    "timestamp",
    "from_bank",
    "from_account",
    "to_bank",
    "to_account",
    "amount_received",
    "receiving_currency",
    "amount_paid",
    "payment_currency",
    "payment_format",
    "is_laundering",
)
AMLWORLD_RAW_HEADER: Final = (
    "Timestamp,From Bank,Account,To Bank,Account,Amount Received,Receiving Currency,"
    "Amount Paid,Payment Currency,Payment Format,Is Laundering"
)
AMLWORLD_NORMALIZED_COLUMNS: Final[dict[str, str]] = {
    "timestamp": "timestamp",
    "from_bank_id": "from_bank",
    "from_account_id": "from_account",
    "to_bank_id": "to_bank",
    "to_account_id": "to_account",
    "amount_received": "amount_received",
    "receiving_currency": "receiving_currency",
    "amount_paid": "amount_paid",
    "payment_currency": "payment_currency",
    "payment_format": "payment_format",
    "is_laundering": "is_laundering",
}
PAYKEEP_COLUMNS: Final[tuple[str, ...]] = (
    "timestamp",
    "transfer_id",
    "debit_account_id",
    "credit_account_id",
    "amount_minor",
    "currency",
)
AMLSIM_TX_COLUMNS: Final[tuple[str, ...]] = ("sourceNodeId", "targetNodeId", "value", "time")
AMLSIM_NODE_COLUMNS: Final[tuple[str, ...]] = ("nodeid", "isFraud")

PATTERN_BEGIN: Final = "BEGIN LAUNDERING ATTEMPT - "
PATTERN_END: Final = "END LAUNDERING ATTEMPT - "
#: IBM's typology names -> ours.
IBM_TYPOLOGIES: Final[dict[str, str]] = {
    "FAN-OUT": "fan_out",
    "FAN-IN": "fan_in",
    "CYCLE": "cycle",
    "SCATTER-GATHER": "scatter_gather",
    "GATHER-SCATTER": "gather_scatter",
    "STACK": "stack",
    "BIPARTITE": "bipartite",
    "RANDOM": "random",
}
TYPOLOGIES: Final[tuple[str, ...]] = tuple(IBM_TYPOLOGIES.values())


def unit_exponent(code: str) -> int:
    """Minor-unit digits of a unit code: ISO 4217 exponent, or the documented non-ISO unit."""
    if code in NON_ISO_UNITS:
        return NON_ISO_UNITS[code]
    try:
        return currency_exponent(code)
    except UnknownCurrency as exc:
        raise UnknownAmlCurrency(f"unknown currency {code!r}: {exc.message}") from None


@dataclass(frozen=True, slots=True)
class Transactions:
    """A transaction history in the internal frame, plus its account names and labels."""

    frame: pl.DataFrame
    #: Account name by index (``bank:account`` for AMLworld, node id for AMLSim).
    accounts: pl.Series
    #: ``account`` (index) and ``label`` per account, when the input carries them (AMLSim).
    account_labels: pl.DataFrame | None = None
    source_format: str = "paykeep"

    def __len__(self) -> int:
        return self.frame.height


@dataclass(frozen=True, slots=True)
class PatternAttempt:
    attempt_id: int
    typology: str
    #: IBM's free text after the colon, e.g. ``Max 16-degree Fan-Out`` (may be empty).
    detail: str
    #: Each row is the 11 AMLworld fields, as text.
    rows: tuple[tuple[str, ...], ...]


# --------------------------------------------------------------------------------------------
# Decimal text -> integer minor units, vectorised and exact.


def decimal_to_minor(text: pl.Series, codes: pl.Series, *, where: str) -> pl.Series:
    """Convert decimal amounts (text) in the given unit codes to integer minor units.

    Exact: no float is involved. Digits beyond the unit's exponent are rounded half-even.
    Raises :class:`NegativeAmount` or :class:`BadAmount` naming the first bad value.
    """
    frame = pl.DataFrame({"text": text.str.strip_chars(), "code": codes})
    negative = frame.filter(pl.col("text").str.starts_with("-"))
    if negative.height:
        raise NegativeAmount(f"{where}: negative amount {negative['text'][0]!r}")
    pattern = rf"^\d{{1,{AMOUNT_INTEGER_DIGITS_MAX}}}(\.\d*)?$"
    bad = frame.filter(~pl.col("text").str.contains(pattern).fill_null(False))
    if bad.height:
        raise BadAmount(f"{where}: not a decimal amount: {bad['text'][0]!r}")
    exponents = {code: unit_exponent(code) for code in frame["code"].unique().to_list()}
    frame = frame.with_columns(
        exponent=pl.col("code").replace_strict(exponents, return_dtype=pl.Int64),
        whole=pl.col("text").str.extract(r"^(\d+)", 1).cast(pl.Int64),
        fraction=pl.col("text").str.extract(r"\.(\d*)$", 1).fill_null(""),
    )
    result = pl.Series("amount_minor", [None] * frame.height, dtype=pl.Int64)
    for exponent in sorted(set(exponents.values())):
        kept = pl.col("fraction").str.slice(0, exponent).str.pad_end(exponent, "0")
        first_dropped = pl.col("fraction").str.slice(exponent, 1)
        tail = pl.col("fraction").str.slice(exponent + 1)
        base = pl.col("whole") * (10**exponent) + (
            kept.cast(pl.Int64) if exponent else pl.lit(0, pl.Int64)
        )
        # ROUND_HALF_EVEN: up when the dropped part is above one half, or exactly one half and
        # the kept last digit is odd.
        above_half = (first_dropped > "5") | (
            (first_dropped == "5") & tail.str.contains("[1-9]").fill_null(False)
        )
        exactly_half = (first_dropped == "5") & ~tail.str.contains("[1-9]").fill_null(False)
        round_up = above_half | (exactly_half & (base % 2 == 1))
        value = base + round_up.cast(pl.Int64)
        part = frame.select(
            pl.when(pl.col("exponent") == exponent).then(value).otherwise(None)
        ).to_series()
        result = result.fill_null(part)
    return result


def minor_to_decimal_text(amount_minor: pl.Expr, exponent: int) -> pl.Expr:
    """Integer minor units -> plain decimal text with exactly ``exponent`` digits."""
    if exponent == 0:
        return amount_minor.cast(pl.String)
    scale = 10**exponent
    return pl.concat_str(
        (amount_minor // scale).cast(pl.String),
        pl.lit("."),
        (amount_minor % scale).cast(pl.String).str.zfill(exponent),
    )


# --------------------------------------------------------------------------------------------
# Reading.


def _first_line(path: Path) -> str:
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            for line in handle:
                if line.strip():
                    return line.strip()
    except FileNotFoundError:
        raise InputFileNotFound(f"no such file: {path}") from None
    except IsADirectoryError:
        raise InputFileNotFound(f"not a file: {path}") from None
    except UnicodeDecodeError:
        raise UnknownInputFormat(f"{path}: not UTF-8 text") from None
    raise EmptyInput(f"{path}: empty file")


def _read_text_csv(path: Path, *, has_header: bool, names: Sequence[str] | None) -> pl.DataFrame:
    try:
        frame = pl.read_csv(
            path,
            has_header=has_header,
            new_columns=list(names) if names is not None else None,
            infer_schema=False,
            encoding="utf8-lossy",
            truncate_ragged_lines=False,
        )
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MissingColumns(f"{path}: unreadable CSV ({first})") from None
    if frame.height == 0:
        raise EmptyInput(f"{path}: no transactions")
    # CRLF files (AMLSim) may leave a carriage return on the last column name and values.
    frame = frame.rename({c: c.strip() for c in frame.columns})
    last = frame.columns[-1]
    return frame.with_columns(pl.col(last).str.strip_chars_end("\r"))


def _with_lines(frame: pl.DataFrame, first_line: int) -> pl.DataFrame:
    return frame.with_columns(_line=pl.int_range(first_line, first_line + frame.height))


def _require(frame: pl.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MissingColumns(f"{path}: missing column(s) {', '.join(missing)}")


def _first_null(frame: pl.DataFrame, column: str, source: str) -> tuple[int, str] | None:
    bad = frame.filter(pl.col(column).is_null())
    if bad.height == 0:
        return None
    return int(bad["_line"][0]), str(bad[source][0])


def read_patterns(path: Path) -> list[PatternAttempt]:
    """Parse an IBM-style patterns file (``BEGIN/END LAUNDERING ATTEMPT`` blocks)."""
    first = _first_line(path)
    if not first.startswith(PATTERN_BEGIN):
        raise BadPatternsFile(f"{path}: does not start with {PATTERN_BEGIN.strip()!r}")
    attempts: list[PatternAttempt] = []
    current: tuple[str, str, list[tuple[str, ...]]] | None = None
    with path.open("r", encoding="utf-8-sig") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith(PATTERN_BEGIN):
                if current is not None:
                    raise BadPatternsFile(f"{path}:{number}: BEGIN inside an open attempt")
                head = line[len(PATTERN_BEGIN) :]
                name, _, detail = head.partition(":")
                typology = IBM_TYPOLOGIES.get(name.strip())
                if typology is None:
                    raise BadPatternsFile(f"{path}:{number}: unknown typology {name.strip()!r}")
                current = (typology, detail.strip(), [])
            elif line.startswith(PATTERN_END):
                if current is None:
                    raise BadPatternsFile(f"{path}:{number}: END without BEGIN")
                attempts.append(
                    PatternAttempt(len(attempts), current[0], current[1], tuple(current[2]))
                )
                current = None
            else:
                if current is None:
                    raise BadPatternsFile(f"{path}:{number}: transaction outside an attempt")
                fields = tuple(f.strip() for f in line.split(","))
                if len(fields) != len(AMLWORLD_RAW_COLUMNS):
                    raise BadPatternsFile(
                        f"{path}:{number}: expected {len(AMLWORLD_RAW_COLUMNS)} fields, "
                        f"got {len(fields)}"
                    )
                current[2].append(fields)
    if current is not None:
        raise BadPatternsFile(f"{path}: attempt {current[0]} not closed by END")
    if not attempts:
        raise EmptyInput(f"{path}: no laundering attempts")
    return attempts


def patterns_frame(attempts: Sequence[PatternAttempt]) -> pl.DataFrame:
    """One row per pattern transaction: the 11 raw fields plus ``attempt_id`` and ``typology``."""
    records = [
        (*row, attempt.attempt_id, attempt.typology) for attempt in attempts for row in attempt.rows
    ]
    columns = [*AMLWORLD_RAW_COLUMNS, "attempt_id", "typology"]
    frame = pl.DataFrame(records, schema=columns, orient="row")
    return frame.with_columns(pl.col("attempt_id").cast(pl.Int64))


def _read_amlworld_raw(path: Path) -> pl.DataFrame:
    """One AMLworld file as text columns (``AMLWORLD_RAW_COLUMNS`` + ``_line``, ``_file``)."""
    first = _first_line(path)
    if first.startswith(PATTERN_BEGIN):
        frame = patterns_frame(read_patterns(path)).select(AMLWORLD_RAW_COLUMNS)
        # Line numbers of rows inside a patterns file are not kept; name the attempt row.
        frame = _with_lines(frame, 1)
    else:
        lower = first.lower()
        if lower.startswith("timestamp,from_bank_id"):
            frame = _read_text_csv(path, has_header=True, names=None)
            _require(frame, list(AMLWORLD_NORMALIZED_COLUMNS), path)
            frame = frame.select(pl.col(k).alias(v) for k, v in AMLWORLD_NORMALIZED_COLUMNS.items())
            frame = _with_lines(frame, 2)
        elif lower.startswith("timestamp,"):
            header = [c.strip().lower() for c in first.split(",")]
            if len(header) < len(AMLWORLD_RAW_COLUMNS):
                missing = AMLWORLD_RAW_COLUMNS[len(header) :]
                raise MissingColumns(f"{path}: missing column(s) {', '.join(missing)}")
            frame = _read_text_csv(path, has_header=True, names=AMLWORLD_RAW_COLUMNS)
            frame = _with_lines(frame, 2)
        elif re.match(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2},", first):
            if first.count(",") + 1 != len(AMLWORLD_RAW_COLUMNS):
                raise MissingColumns(
                    f"{path}: expected {len(AMLWORLD_RAW_COLUMNS)} columns, "
                    f"got {first.count(',') + 1}"
                )
            frame = _read_text_csv(path, has_header=False, names=AMLWORLD_RAW_COLUMNS)
            frame = _with_lines(frame, 1)
        else:
            raise MissingColumns(
                f"{path}: not an AMLworld transactions file (header must start with "
                "'Timestamp,From Bank' or 'timestamp,from_bank_id')"
            )
    return frame.with_columns(_file=pl.lit(str(path)))


def _account_key(bank: pl.Expr, account: pl.Expr) -> pl.Expr:
    # Bank ids are zero-padded in IBM's patterns file and not in the samples: compare as ints.
    normalized = bank.str.strip_chars().cast(pl.Int64, strict=False).cast(pl.String)
    return pl.concat_str(normalized.fill_null(bank.str.strip_chars()), pl.lit(":"), account)


def _amlworld_keyed(frame: pl.DataFrame) -> pl.DataFrame:
    """Text AMLworld rows -> typed columns with account keys (no account indexes yet)."""
    frame = frame.with_columns(
        ts=pl.col("timestamp")
        .str.strip_chars()
        .str.to_datetime("%Y/%m/%d %H:%M", strict=False)
        .dt.epoch("s"),
        src_key=_account_key(pl.col("from_bank"), pl.col("from_account").str.strip_chars()),
        dst_key=_account_key(pl.col("to_bank"), pl.col("to_account").str.strip_chars()),
        currency=pl.col("payment_currency")
        .str.strip_chars()
        .replace_strict(AMLWORLD_CURRENCIES, default=None),
        received_currency=pl.col("receiving_currency")
        .str.strip_chars()
        .replace_strict(AMLWORLD_CURRENCIES, default=None),
        label=pl.col("is_laundering").str.strip_chars().cast(pl.Int8, strict=False),
    )
    bad_ts = _first_null(frame, "ts", "timestamp")
    if bad_ts is not None:
        raise BadTimestamp(f"{_where(frame, bad_ts[0])}: bad timestamp {bad_ts[1]!r}")
    for column, source in (
        ("currency", "payment_currency"),
        ("received_currency", "receiving_currency"),
    ):
        bad = _first_null(frame, column, source)
        if bad is not None:
            raise UnknownAmlCurrency(f"{_where(frame, bad[0])}: unknown currency {bad[1]!r}")
    bad_label = frame.filter(~pl.col("label").is_in([0, 1]).fill_null(False))
    if bad_label.height:
        raise BadLabel(
            f"{_where(bad_label, int(bad_label['_line'][0]))}: "
            f"Is Laundering must be 0 or 1, got {bad_label['is_laundering'][0]!r}"
        )
    empty_account = frame.filter(
        (pl.col("from_account").str.strip_chars() == "")
        | (pl.col("to_account").str.strip_chars() == "")
    )
    if empty_account.height:
        raise BadAccount(f"{_where(empty_account, int(empty_account['_line'][0]))}: empty account")
    paid = decimal_to_minor(frame["amount_paid"], frame["currency"], where="Amount Paid")
    # Almost every row receives what it paid (same text, same currency): parse only the others.
    differs = frame.select(
        (pl.col("amount_received").str.strip_chars() != pl.col("amount_paid").str.strip_chars())
        | (pl.col("received_currency") != pl.col("currency"))
    ).to_series()
    received = paid
    if differs.any():
        at = differs.arg_true()
        parsed = decimal_to_minor(
            frame["amount_received"].gather(at),
            frame["received_currency"].gather(at),
            where="Amount Received",
        )
        received = paid.clone().scatter(at, parsed)
    return frame.with_columns(
        amount_minor=paid,
        received_minor=received.alias("received_minor"),
        payment_format=pl.col("payment_format").str.strip_chars(),
        transfer_id=pl.lit(None, pl.String),
    )


def _where(frame: pl.DataFrame, line: int) -> str:
    files = frame["_file"].unique().to_list() if "_file" in frame.columns else []
    return f"{files[0]}:{line}" if len(files) == 1 else f"line {line}"


def _index_accounts(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series]:
    """Replace ``src_key``/``dst_key`` by integer indexes; names in first-seen order."""
    names = (
        pl.concat([frame["src_key"], frame["dst_key"]]).unique(maintain_order=True).rename("name")
    )
    enum = pl.Enum(names)
    frame = frame.with_columns(
        src=pl.col("src_key").cast(enum).to_physical().cast(pl.Int32),
        dst=pl.col("dst_key").cast(enum).to_physical().cast(pl.Int32),
    )
    return frame, names


def _finish(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(row=pl.int_range(0, frame.height, dtype=pl.Int64)).select(
        pl.col("row"),
        pl.col("ts").cast(pl.Int64),
        pl.col("src"),
        pl.col("dst"),
        pl.col("amount_minor").cast(pl.Int64),
        pl.col("currency").cast(pl.String),
        pl.col("received_minor").cast(pl.Int64),
        pl.col("received_currency").cast(pl.String),
        pl.col("payment_format").cast(pl.String),
        pl.col("label").cast(pl.Int8),
        pl.col("transfer_id").cast(pl.String),
    )


def read_amlworld(paths: Sequence[Path]) -> Transactions:
    """Read AMLworld files: IBM's raw ``*_Trans.csv`` (with or without header), the
    normalised sample, or a patterns file (its rows become transactions)."""
    parts = [_amlworld_keyed(_read_amlworld_raw(Path(p))) for p in paths]
    if not parts:
        raise EmptyInput("no input files")
    frame = pl.concat(parts, how="vertical_relaxed")
    frame, names = _index_accounts(frame)
    return Transactions(_finish(frame), names, None, "amlworld")


def read_paykeep(paths: Sequence[Path]) -> Transactions:
    """Read Paykeep ledger exports (columns :data:`PAYKEEP_COLUMNS`)."""
    parts: list[pl.DataFrame] = []
    for raw_path in paths:
        path = Path(raw_path)
        _first_line(path)
        frame = _read_text_csv(path, has_header=True, names=None)
        _require(frame, PAYKEEP_COLUMNS, path)
        frame = _with_lines(frame, 2).with_columns(_file=pl.lit(str(path)))
        frame = frame.with_columns(
            ts=pl.col("timestamp")
            .str.strip_chars()
            .str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", time_zone="UTC", strict=False)
            .dt.epoch("s"),
            amount=pl.col("amount_minor").str.strip_chars().cast(pl.Int64, strict=False),
            currency=pl.col("currency").str.strip_chars(),
        )
        bad = _first_null(frame, "ts", "timestamp")
        if bad is not None:
            raise BadTimestamp(
                f"{path}:{bad[0]}: bad timestamp {bad[1]!r} (want ISO 8601 UTC, "
                "e.g. 2026-01-01T00:00:00Z)"
            )
        bad = _first_null(frame, "amount", "amount_minor")
        if bad is not None:
            raise BadAmount(f"{path}:{bad[0]}: amount_minor must be an integer, got {bad[1]!r}")
        negative = frame.filter(pl.col("amount") < 0)
        if negative.height:
            raise NegativeAmount(
                f"{path}:{int(negative['_line'][0])}: negative amount_minor "
                f"{negative['amount_minor'][0]}"
            )
        for code in frame["currency"].unique().to_list():
            unit_exponent(str(code))
        empty = frame.filter(
            (pl.col("debit_account_id").str.strip_chars().fill_null("") == "")
            | (pl.col("credit_account_id").str.strip_chars().fill_null("") == "")
        )
        if empty.height:
            raise BadAccount(f"{path}:{int(empty['_line'][0])}: empty account id")
        parts.append(
            frame.select(
                "ts",
                src_key=pl.col("debit_account_id").str.strip_chars(),
                dst_key=pl.col("credit_account_id").str.strip_chars(),
                amount_minor=pl.col("amount"),
                currency=pl.col("currency"),
                received_minor=pl.col("amount"),
                received_currency=pl.col("currency"),
                payment_format=pl.lit(""),
                label=pl.lit(None, pl.Int8),
                transfer_id=pl.col("transfer_id").str.strip_chars(),
            )
        )
    if not parts:
        raise EmptyInput("no input files")
    frame, names = _index_accounts(pl.concat(parts))
    return Transactions(_finish(frame), names, None, "paykeep")


def read_amlsim(paths: Sequence[Path]) -> Transactions:
    """Read AMLSim's sample: ``transactions.csv`` and, optionally, ``nodes.csv`` (labels)."""
    tx_parts: list[pl.DataFrame] = []
    node_parts: list[pl.DataFrame] = []
    for raw_path in paths:
        path = Path(raw_path)
        header = {c.strip() for c in _first_line(path).split(",")}
        frame = _read_text_csv(path, has_header=True, names=None)
        if "nodeid" in header:
            _require(frame, AMLSIM_NODE_COLUMNS, path)
            frame = _with_lines(frame, 2)
            frame = frame.with_columns(
                label=pl.col("isFraud").str.strip_chars().cast(pl.Int8, strict=False)
            )
            bad = frame.filter(~pl.col("label").is_in([0, 1]).fill_null(False))
            if bad.height:
                raise BadLabel(
                    f"{path}:{int(bad['_line'][0])}: isFraud must be 0 or 1, "
                    f"got {bad['isFraud'][0]!r}"
                )
            node_parts.append(frame.select(name=pl.col("nodeid").str.strip_chars(), label="label"))
            continue
        _require(frame, AMLSIM_TX_COLUMNS, path)
        frame = _with_lines(frame, 2)
        frame = frame.with_columns(
            step=pl.col("time").str.strip_chars().cast(pl.Int64, strict=False)
        )
        bad_step = _first_null(frame, "step", "time")
        if bad_step is not None:
            raise BadTimestamp(f"{path}:{bad_step[0]}: time must be an integer step")
        negative_step = frame.filter(pl.col("step") < 0)
        if negative_step.height:
            raise BadTimestamp(f"{path}:{int(negative_step['_line'][0])}: negative time step")
        amount = decimal_to_minor(
            frame["value"],
            pl.Series([AMLSIM_CURRENCY] * frame.height),
            where=str(path),
        )
        tx_parts.append(
            frame.select(
                ts=pl.col("step") * AMLSIM_STEP_S + AMLSIM_EPOCH_S,
                src_key=pl.col("sourceNodeId").str.strip_chars(),
                dst_key=pl.col("targetNodeId").str.strip_chars(),
                amount_minor=amount,
                currency=pl.lit(AMLSIM_CURRENCY),
                received_minor=amount,
                received_currency=pl.lit(AMLSIM_CURRENCY),
                payment_format=pl.lit(""),
                label=pl.lit(None, pl.Int8),
                transfer_id=pl.lit(None, pl.String),
            )
        )
    if not tx_parts:
        raise EmptyInput("no AMLSim transactions file among the inputs")
    frame, names = _index_accounts(pl.concat(tx_parts))
    labels: pl.DataFrame | None = None
    if node_parts:
        nodes = pl.concat(node_parts).unique("name", keep="last")
        lookup = pl.DataFrame({"name": names, "account": pl.int_range(0, names.len(), eager=True)})
        # Accounts with no transaction cannot be scored by a graph model; they are left out.
        labels = lookup.join(nodes, on="name", how="inner").select(
            pl.col("account").cast(pl.Int32), pl.col("label").cast(pl.Int8)
        )
    return Transactions(_finish(frame), names, labels, "amlsim")


def read_transactions(input_format: str, paths: Sequence[Path]) -> Transactions:
    if input_format == "amlworld":
        return read_amlworld(paths)
    if input_format == "amlsim":
        return read_amlsim(paths)
    if input_format == "paykeep":
        return read_paykeep(paths)
    raise UnknownInputFormat(
        f"unknown format {input_format!r} (expected one of {', '.join(INPUT_FORMATS)})"
    )


def pattern_labels(transactions: Transactions, attempts: Sequence[PatternAttempt]) -> pl.DataFrame:
    """Match pattern rows to transactions: ``row``, ``attempt_id``, ``typology``.

    A pattern row matches every transaction with the same time, accounts, amounts, currencies
    and format (bank ids compared as integers). Pattern rows absent from the input are not
    returned; :func:`unmatched_pattern_rows` counts them.
    """
    keyed = _pattern_keys(attempts)
    tx = _tx_keys(transactions)
    return (
        tx.join(keyed, on=_MATCH_KEYS, how="inner")
        .select("row", "attempt_id", "typology")
        .unique(["row", "attempt_id"])
        .sort("row", "attempt_id")
    )


_MATCH_KEYS: Final = ["ts", "src_key", "dst_key", "amount_minor", "currency", "payment_format"]


def _pattern_keys(attempts: Sequence[PatternAttempt]) -> pl.DataFrame:
    frame = patterns_frame(attempts).with_columns(_line=pl.lit(0), _file=pl.lit("patterns"))
    keyed = _amlworld_keyed(frame)
    return keyed.select(*_MATCH_KEYS, "attempt_id", "typology")


def _tx_keys(transactions: Transactions) -> pl.DataFrame:
    names = transactions.accounts
    return transactions.frame.select(
        "row",
        "ts",
        src_key=pl.col("src").map_batches(lambda s: names.gather(s), return_dtype=pl.String),
        dst_key=pl.col("dst").map_batches(lambda s: names.gather(s), return_dtype=pl.String),
        amount_minor="amount_minor",
        currency="currency",
        payment_format="payment_format",
    )


# --------------------------------------------------------------------------------------------
# Writing: always to a temporary file in the same directory, renamed at the end.


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success."""
    target = Path(target)
    if not target.parent.exists():
        raise InputFileNotFound(f"output directory does not exist: {target.parent}")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def format_amlworld_timestamp(ts: pl.Expr) -> pl.Expr:
    return pl.from_epoch(ts, time_unit="s").dt.strftime("%Y/%m/%d %H:%M")


def iso_timestamp(ts_s: int) -> str:
    return datetime.fromtimestamp(ts_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def patterns_path_for(out: Path) -> Path:
    """Where ``simulate`` puts the patterns file beside ``out``: ``X_Trans.csv`` ->
    ``X_Patterns.txt`` (IBM's naming), anything else ``name_Patterns.txt``."""
    stem = out.stem
    if stem.endswith("_Trans"):
        stem = stem[: -len("_Trans")]
    return out.with_name(f"{stem}_Patterns.txt")
