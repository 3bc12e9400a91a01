# Types of the compiled core (paykeep/ledger/_fastpath.c); see paykeep/ledger/fastpath.py.
from collections.abc import Callable, Mapping, Sequence
from typing import Any

def configure(
    new_transfer: type[Any],
    balances: type[Any],
    transfer_result: type[Any],
    ok: object,
    is_currency: Callable[[object], bool],
    invariant_error: type[BaseException],
    /,
) -> None: ...
def plan_plain(
    batch: Sequence[Any],
    accounts: Mapping[int, Any],
    stored: Mapping[int, Any],
    head_seq: int,
    head_ts: int,
    head_hash: str,
    now_ns: int,
    id_max: int,
    amount_max: int,
    code_max: int,
    balance_max: int,
    dmnec: int,
    cmned: int,
    group_rows: int,
    /,
) -> (
    tuple[list[Any], list[list[object]], list[Any], list[int], list[Any], int, int, str]
    | list[int]
    | None
): ...
def counters() -> tuple[int, int]: ...
def _inject_arithmetic_fault() -> None: ...
