"""``paykeep aml rules list|show|set-config|promote|drop-shadow``: configuration versions.

Exit statuses: 0 success; 2 bad input or a refused request (unknown rule or parameter, value
out of bounds, no shadow to promote), with a one-line reason on stderr; 1 the run failed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from paykeep.aml.rules.errors import RuleConfigInvalid
from paykeep.aml.rules.model import RuleConfig
from paykeep.cli_support import (
    DatabaseUrlOption,
    DataDirOption,
    JsonOption,
    print_json,
    settings_from,
    typed_errors,
)

if TYPE_CHECKING:
    from paykeep.aml.rules.service import RulesService

rules_app = typer.Typer(help="Real-time AML rules: versioned configuration, shadow versions.")

RuleArgument = Annotated[
    str, typer.Argument(help="The rule's name (see `paykeep aml rules list`).")
]
ActorOption = Annotated[str, typer.Option("--actor", help="Who makes the change (recorded).")]


def _service(data_dir: Path | None, database_url: str | None) -> RulesService:
    # Imported here: this module is loaded by every ``paykeep`` invocation.
    from paykeep.aml.rules.service import RulesService
    from paykeep.db import open_database

    return RulesService(open_database(settings_from(data_dir, database_url)))


def _params(config: RuleConfig) -> str:
    return " ".join(f"{k}={v}" for k, v in config.params.items())


@rules_app.command("list")
def rules_list(
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every rule with its live (and shadow) version."""
    with typed_errors():
        statuses = _service(data_dir, database_url).list()
    if as_json:
        print_json({"rules": [s.to_json() for s in statuses]})
        return
    for status in statuses:
        shadow = f"  shadow v{status.shadow.version}" if status.shadow else ""
        typer.echo(
            f"{status.spec.name:<24} live v{status.live.version}{shadow}  {status.spec.description}"
        )


@rules_app.command("show")
def rules_show(
    rule: RuleArgument,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """A rule's parameters and every configuration version."""
    with typed_errors():
        status = _service(data_dir, database_url).show(rule)
    if as_json:
        print_json(status.to_json(with_versions=True))
        return
    typer.echo(f"{status.spec.name}: {status.spec.description}")
    for p in status.spec.all_params:
        bounds = "currency" if p.currency else f"[{p.minimum}, {p.maximum}]"
        typer.echo(f"  {p.name:<26} default {p.default!s:<10} {bounds}  {p.help}")
    for v in status.versions:
        mark = (
            "live  "
            if v.version == status.live.version
            else ("shadow" if status.shadow and v.version == status.shadow.version else "      ")
        )
        typer.echo(
            f"{mark} v{v.version} by {v.created_by}: {_params(v)}"
            + (f"  ({v.note})" if v.note else "")
        )


@rules_app.command("set-config")
def rules_set_config(
    rule: RuleArgument,
    params: Annotated[
        list[str], typer.Argument(help="Changes as NAME=VALUE (others keep the base version's).")
    ],
    actor: ActorOption,
    shadow: Annotated[
        bool, typer.Option("--shadow", help="Run the new version in shadow beside the live one.")
    ] = False,
    note: Annotated[str, typer.Option("--note", help="Why the change was made.")] = "",
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a new configuration version (live, or shadow with --shadow)."""
    with typed_errors():
        changes: dict[str, object] = {}
        for item in params:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise RuleConfigInvalid(f"expected NAME=VALUE, not {item!r}", param="params")
            changes[name.strip()] = value.strip()
        config = _service(data_dir, database_url).set_config(
            rule, changes, actor=actor, shadow=shadow, note=note
        )
    if as_json:
        print_json({**config.to_json(), "mode": "shadow" if shadow else "live"})
        return
    typer.echo(
        f"{rule} v{config.version} is now {'shadow' if shadow else 'live'}: {_params(config)}"
    )


@rules_app.command("promote")
def rules_promote(
    rule: RuleArgument,
    actor: ActorOption,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make the shadow version live."""
    with typed_errors():
        config = _service(data_dir, database_url).promote_shadow(rule, actor=actor)
    if as_json:
        print_json(config.to_json())
        return
    typer.echo(f"{rule} v{config.version} is now live")


@rules_app.command("drop-shadow")
def rules_drop_shadow(
    rule: RuleArgument,
    actor: ActorOption,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Stop running the shadow version."""
    with typed_errors():
        config = _service(data_dir, database_url).drop_shadow(rule, actor=actor)
    if as_json:
        print_json(config.to_json())
        return
    typer.echo(f"{rule}: shadow dropped, v{config.version} stays live")


def register(app: typer.Typer) -> None:
    app.add_typer(rules_app, name="rules")
