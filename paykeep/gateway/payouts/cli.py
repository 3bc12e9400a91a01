"""``paykeep payouts request|batch|list|settle``: thin wrappers over the payout service.

Exit statuses: 0 success; 2 bad input or a refused request (bad IBAN, unknown account,
insufficient funds, request id reused, nothing to batch), with a one-line reason on stderr;
1 the run itself failed (the bank unreachable: the batch stays ``generated``). The database,
sepaxml and httpx are imported inside the commands so that ``paykeep --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from paykeep.cli_support import (
    DatabaseUrlOption,
    DataDirOption,
    JsonOption,
    print_json,
    settings_from,
    typed_errors,
)

if TYPE_CHECKING:
    from paykeep.gateway.payouts.service import PayoutService

payouts_app = typer.Typer(
    help="Payouts: merchants' withdrawals, batched into pain.001 files for the bank."
)

SCHEMA_NAMES = {"03": "pain.001.001.03", "09": "pain.001.001.09"}


def _service(data_dir: Path | None, database_url: str | None) -> PayoutService:
    from paykeep.db import field_cipher, open_database
    from paykeep.gateway.payouts.service import PayoutService
    from paykeep.gateway.statements.service import StatementService
    from paykeep.ledger.service import Ledger

    settings = settings_from(data_dir, database_url)
    database = open_database(settings)
    ledger = Ledger(database)
    cipher = field_cipher(settings)
    return PayoutService(
        database,
        ledger,
        cipher=cipher,
        statements=StatementService(database, ledger, cipher=cipher),
    )


@payouts_app.command("request")
def payouts_request(
    request_id: Annotated[str, typer.Option("--request-id", help="Idempotency key.")],
    merchant_ref: Annotated[str, typer.Option("--merchant-ref", help="The merchant.")],
    amount: Annotated[str, typer.Option("--amount", help="Decimal amount, e.g. 120.50.")],
    debit_account: Annotated[
        str, typer.Option("--from", help="Ledger account, e.g. merchant:42:available.")
    ],
    creditor_name: Annotated[str, typer.Option("--creditor-name")],
    creditor_iban: Annotated[str, typer.Option("--creditor-iban")],
    currency: Annotated[str, typer.Option("--currency")] = "EUR",
    creditor_bic: Annotated[str | None, typer.Option("--creditor-bic")] = None,
    remittance: Annotated[str | None, typer.Option("--remittance")] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Request a payout: the money moves to clearing:payout now and waits for a batch."""
    from paykeep.money import Money

    with typed_errors():
        amount_minor = Money.parse(amount, currency).amount_minor
        payout = _service(data_dir, database_url).request(
            merchant_ref,
            amount_minor,
            currency,
            debit_account,
            creditor_name,
            creditor_iban,
            request_id=request_id,
            creditor_bic=creditor_bic,
            remittance=remittance,
        )
    if as_json:
        print_json(payout.to_json())
        return
    typer.echo(
        f"payout {payout.payout_id} {payout.state.value}: {Money(payout.amount_minor, currency)} "
        f"to ****{payout.creditor_iban_last4} (end-to-end id {payout.end_to_end_id})"
    )


@payouts_app.command("batch")
def payouts_batch(
    debtor_iban: Annotated[str, typer.Option("--debtor-iban", help="Our account paid from.")],
    debtor_name: Annotated[str, typer.Option("--debtor-name")],
    bank: Annotated[
        str, typer.Option("--bank", help="Names the ledger account bank:safeguarding:<bank>.")
    ],
    currency: Annotated[str, typer.Option("--currency")] = "EUR",
    debtor_bic: Annotated[str | None, typer.Option("--debtor-bic")] = None,
    schema: Annotated[str, typer.Option("--schema", help="pain.001 version: 03 or 09.")] = "03",
    limit: Annotated[int, typer.Option("--limit", help="At most this many payouts.")] = 1_000,
    submit_url: Annotated[
        str | None, typer.Option("--submit-url", help="POST the file to this bank (banksim).")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out-dir", help="Write the file into this directory.")
    ] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Batch the waiting payouts into a pain.001 file, then submit it or write it out."""
    from paykeep.gateway.payouts.errors import PayoutInputInvalid
    from paykeep.gateway.payouts.model import Debtor

    with typed_errors():
        if schema not in SCHEMA_NAMES:
            raise PayoutInputInvalid(f"--schema must be 03 or 09, not {schema!r}")
        if submit_url is not None and out_dir is not None:
            raise PayoutInputInvalid("give --submit-url or --out-dir, not both")
        service = _service(data_dir, database_url)
        batch = service.batch(
            currency,
            Debtor(name=debtor_name, iban=debtor_iban, bank=bank, bic=debtor_bic),
            schema=SCHEMA_NAMES[schema],
            limit=limit,
        )
        if submit_url is not None:
            batch = service.submit(batch.batch_id, submit_url)
        elif out_dir is not None:
            batch = service.write_to(batch.batch_id, out_dir)
    if as_json:
        print_json(batch.to_json())
        return
    typer.echo(
        f"batch {batch.batch_id} {batch.state.value}: {batch.payout_count} payouts, "
        f"message id {batch.message_id}, {batch.schema}"
        + (f", bank {batch.bank_status} {batch.bank_reason or ''}" if batch.bank_status else "")
    )


@payouts_app.command("list")
def payouts_list(
    state: Annotated[str | None, typer.Option("--state", help="Only this state.")] = None,
    batches: Annotated[bool, typer.Option("--batches", help="List batches, not payouts.")] = False,
    after: Annotated[int, typer.Option("--after", help="Ids above this.")] = 0,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List payouts (or batches), oldest first."""
    from paykeep.gateway.payouts.errors import PayoutInputInvalid
    from paykeep.gateway.payouts.model import BatchState, PayoutState

    with typed_errors():
        service = _service(data_dir, database_url)
        if batches:
            try:
                wanted_batch = None if state is None else BatchState(state)
            except ValueError:
                raise PayoutInputInvalid(f"unknown batch state {state!r}") from None
            found_batches = service.batches(wanted_batch, after_id=after, limit=limit)
        else:
            try:
                wanted = None if state is None else PayoutState(state)
            except ValueError:
                raise PayoutInputInvalid(f"unknown payout state {state!r}") from None
            found = service.list(wanted, after_id=after, limit=limit)
    if batches:
        if as_json:
            print_json({"batches": [b.to_json() for b in found_batches]})
            return
        for b in found_batches:
            typer.echo(
                f"{b.batch_id}  {b.state.value:<10} {b.message_id:<20} {b.payout_count:>5} "
                f"{b.control_sum_minor:>14} {b.currency}"
            )
        return
    if as_json:
        print_json({"payouts": [p.to_json() for p in found]})
        return
    for p in found:
        typer.echo(
            f"{p.payout_id}  {p.state.value:<10} {p.end_to_end_id:<16} {p.amount_minor:>12} "
            f"{p.currency} {p.merchant_ref} -> ****{p.creditor_iban_last4}"
        )


@payouts_app.command("settle")
def payouts_settle(
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Settle accepted payouts whose statement line has been imported and posted."""
    with typed_errors():
        settled = _service(data_dir, database_url).settle()
    if as_json:
        print_json({"settled": settled})
    else:
        typer.echo(f"settled {settled} payouts")
