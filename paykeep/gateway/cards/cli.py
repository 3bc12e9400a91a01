"""``paykeep cards payment|recover|expect-settlement``: an operator's view of card payments,
the recovery sweep (reverse what a crash or a timeout left in flight, retry owed reversals,
post approved captures) until the workers run it on a schedule, and registering an
acquirer's settlement report.

Exit statuses: 0 success; 1 the sweep left reversals still owed; 2 bad input (unknown payment,
bad address), with a one-line reason on stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from paykeep.cli_support import (
    EXIT_CHECK_FAILED,
    DatabaseUrlOption,
    DataDirOption,
    JsonOption,
    fail,
    print_json,
    settings_from,
    typed_errors,
)

if TYPE_CHECKING:
    from paykeep.gateway.cards.service import CardGateway

cards_app = typer.Typer(help="Card payments: look one up, run the recovery sweep.")

CardNetworkOption = Annotated[
    str,
    typer.Option(
        "--card-network",
        help="HOST:PORT of the card network (ISO 8583); banksim prints its card_port.",
    ),
]


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65_536:
        fail(f"--card-network must be HOST:PORT, got {text!r}")
    return host, int(port)


def _gateway(
    data_dir: Path | None, database_url: str | None, card_network: str, acquirer: str
) -> CardGateway:
    from paykeep.db import open_database
    from paykeep.gateway.cards.client import CardNetworkClient
    from paykeep.gateway.cards.service import CardGateway
    from paykeep.gateway.vault.service import CardVault
    from paykeep.ledger.service import Ledger

    settings = settings_from(data_dir, database_url)
    database = open_database(settings)
    host, port = _address(card_network)
    return CardGateway(
        database,
        Ledger(database),
        CardVault.open(database, settings.data_dir),
        CardNetworkClient(host, port, pool_size=1),
        acquirer=acquirer,
    )


@cards_app.command("payment")
def payment(
    payment_id: Annotated[str, typer.Argument(help="The caller's payment id.")],
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """One card payment: state, outcome, amounts, the card's token, brand and last four."""
    from paykeep.db import open_database
    from paykeep.gateway.cards.service import find_payment

    with typed_errors():
        found = find_payment(open_database(settings_from(data_dir, database_url)), payment_id)
    if as_json:
        print_json(found.to_json())
        return
    for key, value in found.to_json().items():
        typer.echo(f"{key}: {value}")


@cards_app.command("recover")
def recover(
    card_network: CardNetworkOption,
    acquirer: Annotated[str, typer.Option(help="The acquirer the payments went through.")] = (
        "banksim"
    ),
    min_age_s: Annotated[
        float, typer.Option(min=0.0, max=86_400.0, help="Leave payments younger than this.")
    ] = 30.0,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Reverse payments and refunds left in flight, retry owed reversals, post approved
    captures and refunds."""
    with typed_errors():
        gateway = _gateway(data_dir, database_url, card_network, acquirer)
        with gateway.client:
            report = gateway.recover(min_age_s=min_age_s)
    if as_json:
        print_json(report.to_json())
    else:
        typer.echo(
            f"reversed {report.reversed}, settled {report.settled}, "
            f"reversals still owed {report.reversal_pending}; refunds: reversed "
            f"{report.refunds_reversed}, posted {report.refunds_posted}, reversals still owed "
            f"{report.refunds_reversal_pending}"
        )
    if report.reversal_pending or report.refunds_reversal_pending:
        raise typer.Exit(EXIT_CHECK_FAILED)


@cards_app.command("expect-settlement")
def expect_settlement(
    reference: Annotated[str, typer.Option(help="The settlement report's reference.")],
    amount: Annotated[int, typer.Option(help="Its amount, in minor units.")],
    count: Annotated[int, typer.Option(min=0, help="How many captures it pays.")],
    iban: Annotated[str, typer.Option(help="The account the acquirer credits.")],
    bank_account: Annotated[
        str, typer.Option(help="That account's ledger account, e.g. bank:safeguarding:x.")
    ],
    acquirer: Annotated[str, typer.Option(help="The acquirer that reports it.")] = "banksim",
    currency: Annotated[str, typer.Option(help="The acquirer's settlement currency.")] = "EUR",
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check an acquirer's settlement report against the captures not yet settled, then
    expect its credit on the statement (exit 2 if the report disagrees; nothing changes)."""
    from paykeep.db import field_cipher, open_database
    from paykeep.gateway.cards.service import expect_card_settlement
    from paykeep.gateway.statements.service import StatementService

    with typed_errors():
        settings = settings_from(data_dir, database_url)
        database = open_database(settings)
        statements = StatementService(database, cipher=field_cipher(settings))
        expectation_id = expect_card_settlement(
            database, statements, acquirer=acquirer, currency=currency,
            reference=reference, amount_minor=amount, count=count, iban=iban,
            bank_account_name=bank_account,
        )  # fmt: skip
    out = {"reference": reference, "expectation_id": expectation_id}
    if as_json:
        print_json(out)
    else:
        typer.echo(f"settlement {reference} expected (expectation {expectation_id})")


def register(app: typer.Typer) -> None:
    app.add_typer(cards_app, name="cards")
