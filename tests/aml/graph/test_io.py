"""Readers: formats, amounts as exact integers, and typed errors for bad files."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paykeep.aml.graph import errors
from paykeep.aml.graph.io import (
    AMLWORLD_CURRENCIES,
    decimal_to_minor,
    pattern_labels,
    read_amlsim,
    read_amlworld,
    read_patterns,
    read_paykeep,
    read_transactions,
)
from paykeep.money import Money

ISO_CODES = sorted(c for c in AMLWORLD_CURRENCIES.values() if c != "XBT")


@settings(max_examples=200, deadline=None)
@given(
    whole=st.integers(min_value=0, max_value=10**12 - 1),
    fraction=st.text(alphabet="0123456789", max_size=6),
    code=st.sampled_from(ISO_CODES),
)
def test_vectorised_amounts_equal_money_parse(whole: int, fraction: str, code: str) -> None:
    text = f"{whole}.{fraction}" if fraction else str(whole)
    got = decimal_to_minor(pl.Series([text]), pl.Series([code]), where="t")[0]
    assert got == Money.parse(text, code, rounding="ROUND_HALF_EVEN").amount_minor


def test_bitcoin_is_kept_in_satoshi_not_float() -> None:
    got = decimal_to_minor(pl.Series(["0.00000001", "1.5"]), pl.Series(["XBT", "XBT"]), where="t")
    assert got.to_list() == [1, 150_000_000]
    assert got.dtype == pl.Int64
    # Half-even below one satoshi.
    half = decimal_to_minor(pl.Series(["0.000000025"]), pl.Series(["XBT"]), where="t")
    assert half[0] == int(Decimal("2"))


def test_yen_with_two_decimals_rounds_half_even() -> None:
    got = decimal_to_minor(
        pl.Series(["10.50", "11.50", "11.51"]), pl.Series(["JPY"] * 3), where="t"
    )
    assert got.to_list() == [10, 12, 12]


def test_reads_normalized_sample_and_patterns(fixtures: Path) -> None:
    txs = read_amlworld(
        [
            fixtures / "hi_small_trans_first200_normalized.csv",
            fixtures / "hi_small_patterns_sample.txt",
        ]
    )
    assert txs.frame.height == 200 + 67
    assert txs.frame["label"].sum() == 67
    # Zero-padded bank ids ("021174") and plain ones ("10") are one naming scheme.
    assert all(not name.startswith("0") for name in txs.accounts.to_list())
    attempts = read_patterns(fixtures / "hi_small_patterns_sample.txt")
    assert [a.typology for a in attempts] == [
        "fan_out", "cycle", "gather_scatter", "random", "bipartite", "fan_in", "stack",
        "scatter_gather",
    ]  # fmt: skip
    matched = pattern_labels(txs, attempts)
    assert matched["row"].n_unique() == 67
    assert set(matched["row"].to_list()) == set(
        txs.frame.filter(pl.col("label") == 1)["row"].to_list()
    )


def test_reads_amlsim_slice_crlf(fixtures: Path) -> None:
    txs = read_amlsim(
        [fixtures / "amlsim_slice_transactions.csv", fixtures / "amlsim_slice_nodes.csv"]
    )
    assert txs.frame.height == 667
    assert txs.account_labels is not None
    assert set(txs.account_labels["label"].unique().to_list()) <= {0, 1}
    assert txs.frame["currency"].unique().to_list() == ["USD"]
    # "163.3" dollars -> 16330 cents, not a float.
    assert txs.frame["amount_minor"].dtype == pl.Int64


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


PAYKEEP_HEADER = "timestamp,transfer_id,debit_account_id,credit_account_id,amount_minor,currency\n"


def test_reads_paykeep_format(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "ledger.csv",
        PAYKEEP_HEADER
        + "2026-01-01T00:00:00Z,t1,acc-a,acc-b,1250,EUR\n"
        + "2026-01-01T00:05:00+00:00,t2,acc-b,acc-a,1000,EUR\n",
    )
    txs = read_paykeep([path])
    assert txs.frame["transfer_id"].to_list() == ["t1", "t2"]
    assert txs.frame["amount_minor"].to_list() == [1250, 1000]
    assert txs.frame["ts"].to_list() == [1_767_225_600, 1_767_225_900]


AMLWORLD_HEADER = (
    "Timestamp,From Bank,Account,To Bank,Account,Amount Received,Receiving Currency,"
    "Amount Paid,Payment Currency,Payment Format,Is Laundering\n"
)
GOOD_ROW = "2022/09/01 00:06,10,A1,20,B2,10.00,Euro,10.00,Euro,ACH,0\n"
NEGATIVE_ROW = GOOD_ROW.replace(",10.00,Euro,ACH", ",-10.00,Euro,ACH")
EXPONENT_ROW = GOOD_ROW.replace(",10.00,Euro,ACH", ",1e5,Euro,ACH")


@pytest.mark.parametrize(
    ("fmt", "name", "text", "error"),
    [
        ("amlworld", "empty.csv", "", errors.EmptyInput),
        ("amlworld", "header_only.csv", AMLWORLD_HEADER, errors.EmptyInput),
        ("amlworld", "cols.csv", "Timestamp,From Bank,Account\n2022/09/01 00:06,1,A\n",
         errors.MissingColumns),
        ("amlworld", "ts.csv", AMLWORLD_HEADER + GOOD_ROW.replace("2022/09/01", "2022-13-01"),
         errors.BadTimestamp),
        ("amlworld", "neg.csv", AMLWORLD_HEADER + NEGATIVE_ROW,
         errors.NegativeAmount),
        ("amlworld", "amt.csv", AMLWORLD_HEADER + EXPONENT_ROW,
         errors.BadAmount),
        ("amlworld", "cur.csv", AMLWORLD_HEADER + GOOD_ROW.replace("Euro,ACH", "Doubloon,ACH"),
         errors.UnknownAmlCurrency),
        ("amlworld", "label.csv", AMLWORLD_HEADER + GOOD_ROW.replace("ACH,0", "ACH,yes"),
         errors.BadLabel),
        ("paykeep", "pk_ts.csv", PAYKEEP_HEADER + "yesterday,t1,a,b,10,EUR\n", errors.BadTimestamp),
        ("paykeep", "pk_neg.csv", PAYKEEP_HEADER + "2026-01-01T00:00:00Z,t1,a,b,-5,EUR\n",
         errors.NegativeAmount),
        ("paykeep", "pk_dec.csv", PAYKEEP_HEADER + "2026-01-01T00:00:00Z,t1,a,b,5.5,EUR\n",
         errors.BadAmount),
        ("paykeep", "pk_cur.csv", PAYKEEP_HEADER + "2026-01-01T00:00:00Z,t1,a,b,5,ZZZ\n",
         errors.UnknownAmlCurrency),
        ("amlsim", "sim.csv", "sourceNodeId,targetNodeId,value\n1,2,3.0\n", errors.MissingColumns),
        ("bogus", "x.csv", GOOD_ROW, errors.UnknownInputFormat),
    ],
)  # fmt: skip
def test_bad_inputs_raise_typed_errors(
    tmp_path: Path, fmt: str, name: str, text: str, error: type[Exception]
) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(error):
        read_transactions(fmt, [path])


def test_missing_file_is_typed(tmp_path: Path) -> None:
    with pytest.raises(errors.InputFileNotFound):
        read_amlworld([tmp_path / "nope.csv"])


def test_bad_patterns_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "p.txt",
        "BEGIN LAUNDERING ATTEMPT - FAN-OUT:  Max 1-degree Fan-Out\n" + GOOD_ROW,
    )
    with pytest.raises(errors.BadPatternsFile):
        read_patterns(path)
