"""``paykeep keys create|list|revoke``: API keys from the machine that holds the database.

Over HTTP an operator key can create merchant keys only (``POST /v1/api_keys``). Operator keys
come from here: one per compliance officer or operator, because the acting officer of an
operator request is its key (the four-eyes close of a high-risk AML case needs two distinct
keys). The plain key is printed once and stored only as a hash.
"""

from __future__ import annotations

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

if TYPE_CHECKING:  # the database layer loads only when a keys command runs (tests/test_tidy)
    from paykeep.security.api_keys import ApiKeyService

keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)


def _service(data_dir: DataDirOption, database_url: DatabaseUrlOption) -> ApiKeyService:
    from paykeep.db import open_database
    from paykeep.security.api_keys import ApiKeyService

    return ApiKeyService(open_database(settings_from(data_dir, database_url)))


@keys_app.command("create")
def create_key(
    role: Annotated[str, typer.Option(help="operator or merchant.")] = "operator",
    merchant: Annotated[
        str | None, typer.Option(help="The merchant a merchant key belongs to.")
    ] = None,
    label: Annotated[str | None, typer.Option(help="Who or what uses it, e.g. a name.")] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Create a key and print it once (it is stored only as a hash)."""
    with typed_errors():
        plain, view = _service(data_dir, database_url).create(role, merchant, label)
    if json_out:
        print_json({**view.as_api(), "key": plain})
        return
    typer.echo(f"{view.id} ({view.role}{', ' + view.label if view.label else ''})")
    typer.echo(f"key, shown once: {plain}")


@keys_app.command("list")
def list_keys(
    merchant: Annotated[
        str | None, typer.Option(help="A merchant's keys (default: the operator keys).")
    ] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """The operator keys, or a merchant's: newest first, revoked ones too (never the key)."""
    with typed_errors():
        views = _service(data_dir, database_url).list(merchant)
    if json_out:
        print_json([v.as_api() for v in views])
        return
    for v in views:
        state = "revoked" if v.revoked_at_ns is not None else "live"
        typer.echo(f"{v.id}  {v.prefix}…  {v.role}  {state}  {v.label or ''}".rstrip())


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")],
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    json_out: JsonOption = False,
) -> None:
    """Revoke a key (idempotent); servers stop accepting it within the auth cache's TTL."""
    with typed_errors():
        view = _service(data_dir, database_url).revoke(key_id)
    if json_out:
        print_json(view.as_api())
        return
    typer.echo(f"{view.id} revoked")
