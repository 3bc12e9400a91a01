"""A strict, clean tree (STYLE rules 3, 6, 10, 20), checked on the source with ``ast``.

- no ``float(`` in the money kernel or the ledger;
- no wall-clock reads anywhere in ``paykeep`` outside ``paykeep/clock.py``;
- the ledger's pure core imports no database or web library;
- no context package imports the edges (``paykeep.api``, ``paykeep.cli``) or the bank simulator;
- every concrete error code is unique and well formed.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import paykeep
from paykeep.errors import PaykeepError, registered_errors

ROOT = Path(paykeep.__file__).parent
#: Edge packages: thin adapters around the contexts (they may import anything inward).
EDGES = {"api", "cli", "web", "workers", "bench", "banksim"}
#: Infrastructure shared by every context (not itself a bounded context).
SHARED = {"db"}


def modules(*parts: str) -> list[Path]:
    base = ROOT.joinpath(*parts)
    if base.suffix == ".py":
        return [base]
    return sorted(base.rglob("*.py"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT.parent))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """Every module a file imports (anywhere in it, including inside functions), absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}"


def test_no_float_in_money_code() -> None:
    offenders = []
    for path in modules("money.py") + modules("ledger"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "float"
            ):
                offenders.append(f"{rel(path)}:{node.lineno}")
        text = path.read_text(encoding="utf-8")
        # belt and braces: the literal text, outside comments
        for lineno, line in enumerate(text.splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\bfloat\(", code):
                offenders.append(f"{rel(path)}:{lineno}")
    assert not sorted(set(offenders))


#: (module, attribute) pairs that read the wall clock.
WALL_CLOCK = {
    ("time", "time"),
    ("time", "time_ns"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
}


def wall_clock_reads(source: str) -> list[tuple[int, str]]:
    """(line, what) for every wall-clock read in ``source``, in line order."""
    found = []
    for node in ast.walk(ast.parse(source)):
        # time.time(), datetime.now(), datetime.datetime.now(), dt.date.today() ...
        if isinstance(node, ast.Attribute):
            owner = node.value
            owner_name = (
                owner.id
                if isinstance(owner, ast.Name)
                else owner.attr
                if isinstance(owner, ast.Attribute)
                else None
            )
            if (owner_name, node.attr) in WALL_CLOCK:
                found.append((node.lineno, f"{owner_name}.{node.attr}"))
        # from time import time / time_ns
        if isinstance(node, ast.ImportFrom) and node.module == "time":
            for alias in node.names:
                if alias.name in ("time", "time_ns"):
                    found.append((node.lineno, f"from time import {alias.name}"))
    return sorted(found)


def test_no_wall_clock_outside_clock_module() -> None:
    offenders = []
    for path in modules():
        if path == ROOT / "clock.py":
            continue
        for lineno, what in wall_clock_reads(path.read_text(encoding="utf-8")):
            offenders.append(f"{rel(path)}:{lineno} {what}")
    assert not offenders, "read the time through paykeep.clock.Clock:\n" + "\n".join(offenders)


def test_the_wall_clock_check_can_fail() -> None:
    source = (
        "import time\nimport datetime as dt\nfrom datetime import datetime\n"
        "a = time.time()\nb = dt.datetime.now()\nc = datetime.utcnow()\n"
        "from time import time_ns\nd = time.perf_counter()\ne = time.monotonic()\n"
    )
    assert [what for _, what in wall_clock_reads(source)] == [
        "time.time",
        "datetime.now",
        "datetime.utcnow",
        "from time import time_ns",
    ]


FORBIDDEN_IN_CORE = ("sqlalchemy", "psycopg", "sqlite3", "fastapi", "alembic", "starlette")


def test_ledger_core_is_pure() -> None:
    path = ROOT / "ledger" / "model.py"
    bad = [
        f"{lineno}: {name}"
        for lineno, name in imports_of(path)
        if name.split(".")[0] in FORBIDDEN_IN_CORE or name.startswith("paykeep.clock")
    ]
    assert not bad
    assert wall_clock_reads(path.read_text(encoding="utf-8")) == []


def context_packages() -> list[str]:
    return sorted(
        p.name
        for p in ROOT.iterdir()
        # a context may be a namespace package (no __init__.py): any directory of modules
        if p.is_dir() and any(p.glob("*.py")) and p.name not in EDGES | SHARED
    )


def test_there_are_contexts_to_check() -> None:
    assert {"ledger", "aml"} <= set(context_packages())


def test_contexts_do_not_import_the_edges() -> None:
    offenders = []
    for context in context_packages():
        for path in modules(context):
            for lineno, name in imports_of(path):
                top = name.split(".")
                if top[0] == "paykeep" and len(top) > 1 and top[1] in ("api", "cli", "banksim"):
                    offenders.append(f"{rel(path)}:{lineno} imports {name}")
    assert not offenders


def test_nothing_imports_the_bank_simulator() -> None:
    offenders = []
    for path in modules():
        if "banksim" in path.relative_to(ROOT).parts:
            continue
        for lineno, name in imports_of(path):
            if name == "paykeep.banksim" or name.startswith("paykeep.banksim."):
                offenders.append(f"{rel(path)}:{lineno}")
    assert not offenders


def _import_everything() -> None:
    for info in pkgutil.walk_packages([str(ROOT)], prefix="paykeep."):
        if ".migrations" in info.name:
            continue
        importlib.import_module(info.name)


def test_error_codes_are_unique_and_well_formed() -> None:
    _import_everything()
    registry = registered_errors()
    assert registry, "no error registered"
    seen: dict[str, type[PaykeepError]] = {}
    stack: list[type[PaykeepError]] = list(PaykeepError.__subclasses__())  # the root is abstract
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if "code" not in cls.__dict__:
            continue
        code = cls.__dict__["code"]
        assert isinstance(code, str) and re.fullmatch(r"[a-z][a-z0-9_]*", code), (cls, code)
        assert code not in seen or seen[code] is cls, (code, seen.get(code), cls)
        seen[code] = cls
        assert registry.get(code) is cls, (code, cls)
    assert set(seen) == set(registry)


def test_registry_refuses_a_reused_code() -> None:
    # Imported here: the code must be registered whichever tests ran before in this worker.
    from paykeep.ledger.errors import BatchTooLarge

    with pytest.raises(TypeError):
        type("Clash", (PaykeepError,), {"code": BatchTooLarge.code})


def test_the_command_line_starts_without_the_heavy_layers() -> None:
    """Every ``paykeep`` invocation builds the whole command tree; the database layer, the
    name matcher, polars and the ISO 8583/XML stacks are imported by the commands that use
    them, so ``paykeep --help`` and one-line commands stay fast."""
    import subprocess
    import sys

    heavy = ["sqlalchemy", "polars", "lightgbm", "rapidfuzz", "lxml", "iso8583", "fastapi"]
    code = f"import sys, paykeep.cli\nprint(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
