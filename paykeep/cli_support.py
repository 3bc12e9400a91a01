"""Conventions shared by every ``paykeep`` command.

- ``--data-dir`` / ``--database-url`` locate state (see :mod:`paykeep.config`);
- ``--json`` prints one machine-readable JSON document on stdout;
- exit 0 on success, 1 on a failed check, 2 on bad usage or input — with a one-line reason on
  stderr and never a stack trace.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from paykeep.config import Settings
from paykeep.errors import InvalidInput, NotFound, PaykeepError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2

_REFUSED_TYPES = frozenset(
    {"invalid_request", "not_found", "conflict", "insufficient_funds", "unprocessable"}
)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Directory holding the embedded database, keys and files "
        "[default: $PAYKEEP_DATA_DIR, else the per-user data directory].",
        show_default=False,
    ),
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Use this database (postgresql://...) instead of the embedded SQLite "
        "[default: $PAYKEEP_DATABASE_URL].",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def settings_from(data_dir: Path | None, database_url: str | None) -> Settings:
    return Settings.resolve(data_dir, database_url)


def fail(reason: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print a one-line reason on stderr and exit with ``code``."""
    one_line = " ".join(str(reason).split())
    typer.echo(f"paykeep: {one_line}", err=True)
    raise typer.Exit(code)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


@contextmanager
def typed_errors() -> Iterator[None]:
    """Turn our typed errors into the CLI's exit statuses; anything else still stays one line."""
    try:
        yield
    except typer.Exit:
        raise
    except (InvalidInput, NotFound) as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except PaykeepError as exc:
        # A refused request (conflict, insufficient funds, ...) is bad input: nothing changed.
        # Anything else (database unavailable, busy) is a failure of the run itself.
        fail(str(exc), EXIT_BAD_INPUT if exc.type in _REFUSED_TYPES else EXIT_CHECK_FAILED)
    except (OSError, ValueError) as exc:
        fail(f"{type(exc).__name__}: {exc}", EXIT_BAD_INPUT)


F = TypeVar("F", bound=Callable[..., Any])
