"""Paths of the sample files and a safe reader of the mt-940 oracle files (.yml).

The oracles are PyYAML dumps with Python tags (``!!python/object:mt940.models.Transactions``,
``!!python/object/apply:decimal.Decimal``, dates as pickled ``!!binary``). They are read with a
SafeLoader that turns tagged mappings into plain dicts and builds only Decimals and dates —
no object of the library is ever constructed from the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "bank" / "statements"
CAMT = FIXTURES / "camt"
MT940 = FIXTURES / "mt940"


class _OracleLoader(yaml.SafeLoader):
    pass


def _object(loader: _OracleLoader, suffix: str, node: yaml.Node) -> Iterator[dict[str, Any]]:
    data: dict[str, Any] = {"__class__": suffix}
    yield data
    if isinstance(node, yaml.MappingNode):
        data.update(loader.construct_mapping(node, deep=True))


def _apply(loader: _OracleLoader, suffix: str, node: yaml.Node) -> Any:
    args = loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode) else []
    if suffix == "decimal.Decimal":
        return Decimal(args[0])
    if suffix == "mt940.models.Date":
        raw: bytes = args[0]  # the pickled state of datetime.date: year (2 bytes), month, day
        return date(raw[0] * 256 + raw[1], raw[2], raw[3])
    return None  # compiled regexes and the like: not compared


def _name(loader: _OracleLoader, suffix: str, node: yaml.Node) -> None:
    return None


_OracleLoader.add_multi_constructor("tag:yaml.org,2002:python/object:", _object)
_OracleLoader.add_multi_constructor("tag:yaml.org,2002:python/object/apply:", _apply)
_OracleLoader.add_multi_constructor("tag:yaml.org,2002:python/name:", _name)


def load_oracle(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        loaded = yaml.load(handle, Loader=_OracleLoader)  # a SafeLoader subclass
    assert isinstance(loaded, dict)
    return loaded
