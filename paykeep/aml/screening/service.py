"""Screening use cases: import a list, screen names and files, re-screen parties, allow-list.

The service reads and writes through :class:`ScreeningRepository` and scores through the pure
:mod:`paykeep.aml.screening.model`. Everything that can fail on input fails before anything
is written: a list file is read, hashed and fully parsed before the store is touched.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from paykeep.aml.screening import limits
from paykeep.aml.screening.defaults import DEFAULT_SOURCES, FORMATS
from paykeep.aml.screening.errors import (
    ListFileUnreadable,
    ListSourceInvalid,
    ScreeningCsvInvalid,
    ScreeningNoLists,
    ScreeningPartiesInvalid,
    ScreeningQueryInvalid,
)
from paykeep.aml.screening.model import (
    DEFAULT_CONFIG,
    LEGAL_ENTITY,
    PERSON,
    SCHEMAS,
    Match,
    MatchConfig,
    Query,
    ScreeningIndex,
    name_key,
    parse_partial_date,
    score_names,
)
from paykeep.aml.screening.repository import ListVersion, ScreeningRepository
from paykeep.aml.screening.sources import parse_list
from paykeep.clock import Clock, SystemClock, ns_to_datetime

_SOURCE_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def freeze_long_lived_objects() -> None:
    """Move everything alive now (the index: ~20k names and their tables) out of the garbage
    collector's reach. Without this a full collection walks the whole index every so often
    and one screen in a few thousand takes 100+ ms instead of under one."""
    gc.collect()
    gc.freeze()


@dataclass(frozen=True, slots=True)
class ScreeningResult:
    """The outcome of screening one query (or one party)."""

    query: Query
    matches: tuple[Match, ...]
    party_id: str | None = None

    @property
    def hit(self) -> bool:
        """True when a match at or above the threshold is not on the allow-list."""
        return any(not m.allowed for m in self.matches)

    @property
    def top(self) -> Match | None:
        return self.matches[0] if self.matches else None

    def to_json(self) -> dict[str, Any]:
        return {
            "party_id": self.party_id,
            "query": {
                "name": self.query.name,
                "schema": self.query.schema,
                "birth_dates": list(self.query.birth_dates),
                "countries": list(self.query.countries),
                "identifiers": list(self.query.identifiers),
                "gender": self.query.gender,
            },
            "hit": self.hit,
            "matches": [m.to_json() for m in self.matches],
        }


@dataclass(frozen=True, slots=True)
class RescreenReport:
    results: tuple[ScreeningResult, ...]
    new_hits: tuple[tuple[str, str], ...]  # (party_id, entity_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "parties": len(self.results),
            "parties_hit": sum(1 for r in self.results if r.hit),
            "new_hits": [{"party_id": p, "entity_id": e} for p, e in self.new_hits],
        }


@dataclass(frozen=True, slots=True)
class ImportResult:
    version: ListVersion
    created: bool
    rescreen: RescreenReport | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version.to_json(),
            "created": self.created,
            "rescreen": self.rescreen.to_json() if self.rescreen else None,
        }


def make_query(
    name: str,
    *,
    schema: str = LEGAL_ENTITY,
    birth_dates: Sequence[str] = (),
    countries: Sequence[str] = (),
    identifiers: Sequence[str] = (),
    gender: str | None = None,
) -> Query:
    """Validate raw query input (shape first: name, schema, then dates)."""
    if not name.strip():
        raise ScreeningQueryInvalid("the name is empty", param="name")
    if len(name) > limits.NAME_LENGTH_MAX:
        raise ScreeningQueryInvalid(
            f"the name is longer than {limits.NAME_LENGTH_MAX} characters", param="name"
        )
    if schema not in SCHEMAS:
        raise ScreeningQueryInvalid(
            f"unknown schema {schema!r}; expected one of {', '.join(sorted(SCHEMAS))}",
            param="schema",
        )
    dates = tuple(d.strip() for d in birth_dates if d.strip())
    for date in dates:
        if parse_partial_date(date) is None:
            raise ScreeningQueryInvalid(
                f"date of birth {date!r} is not YYYY, YYYY-MM or YYYY-MM-DD", param="dob"
            )
    return Query(
        name=name,
        schema=schema,
        birth_dates=dates,
        countries=tuple(c.strip() for c in countries if c.strip()),
        identifiers=tuple(i.strip() for i in identifiers if i.strip()),
        gender=(gender or "").strip() or None,
    )


def read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a UTF-8 CSV that must have the ``required`` columns."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScreeningCsvInvalid(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ScreeningCsvInvalid(f"{path.name} is not UTF-8 (byte offset {exc.start})") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        header = list(reader.fieldnames or [])
        missing = [c for c in required if c not in header]
        if missing:
            raise ScreeningCsvInvalid(
                f"{path.name} lacks column(s) {', '.join(missing)} (has: {', '.join(header)})"
            )
        rows: list[dict[str, str]] = []
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise ScreeningCsvInvalid(
                    f"{path.name} line {reader.line_num}: wrong number of fields"
                )
            rows.append(row)
            if len(rows) > limits.CSV_ROWS_MAX:
                raise ScreeningCsvInvalid(f"{path.name} has more than {limits.CSV_ROWS_MAX} rows")
    except csv.Error as exc:
        raise ScreeningCsvInvalid(f"{path.name}: {exc}") from None
    return header, rows


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Mapping[str, object]]) -> None:
    """Write a CSV next to ``path`` then rename it into place (no half-written output)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    tmp.replace(path)


def query_from_person_row(row: Mapping[str, str]) -> tuple[Query, str]:
    """A person from a ``full_name[,date_of_birth,nationality,gender]`` row, and a warning.

    A malformed date of birth does not stop a batch (one odd cell must not leave thousands of
    customers unscreened): the row is screened on the rest, and the warning says so.
    """
    dob = (row.get("date_of_birth") or "").strip()
    warning = ""
    if dob and parse_partial_date(dob) is None:
        warning = f"date_of_birth {dob!r} ignored: not YYYY, YYYY-MM or YYYY-MM-DD"
        dob = ""
    query = make_query(
        row.get("full_name") or "",
        schema=PERSON,
        birth_dates=[dob],
        countries=[row.get("nationality") or ""],
        gender=row.get("gender"),
    )
    return query, warning


def _strings(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ScreeningPartiesInvalid(f"party field {what!r} must be a string or list of strings")


def query_from_party(party: Mapping[str, Any]) -> Query:
    return make_query(
        str(party.get("name", "")),
        schema=str(party.get("schema") or PERSON),
        birth_dates=_strings(party.get("date_of_birth"), "date_of_birth"),
        countries=_strings(party.get("nationality"), "nationality")
        + _strings(party.get("country"), "country"),
        identifiers=_strings(party.get("identifiers"), "identifiers"),
        gender=party.get("gender") if isinstance(party.get("gender"), str) else None,
    )


@dataclass
class ScreeningService:
    """Use cases over one data directory. Holds the index of current versions once loaded."""

    data_dir: Path
    config: MatchConfig = DEFAULT_CONFIG
    clock: Clock = field(default_factory=SystemClock)
    _index: ScreeningIndex | None = None
    _allowed: frozenset[tuple[str, str]] | None = None

    @property
    def repository(self) -> ScreeningRepository:
        return ScreeningRepository(self.data_dir)

    # --- lists -------------------------------------------------------------------------------

    def import_list(
        self, path: Path, list_format: str, source: str | None = None, *, rescreen: bool = True
    ) -> ImportResult:
        """Import a list file as a new version of ``source`` and re-screen the parties.

        Idempotent: the same content for the same source is the same version, nothing is
        written and nothing is re-screened.
        """
        if list_format not in FORMATS:
            parse_list(b"", list_format, "")  # raises the typed unknown-format error
        source_name = source or DEFAULT_SOURCES[list_format]
        if not _SOURCE_NAME.match(source_name):
            raise ListSourceInvalid(
                f"source {source_name!r} must be 1-64 of a-z, 0-9, '_', '.', '-'", param="source"
            )
        raw = _read_list_file(path)
        content_sha256 = hashlib.sha256(raw).hexdigest()
        entities = parse_list(raw, list_format, source_name)
        repository = self.repository
        with repository.locked():
            version, created = repository.save_version(
                source=source_name,
                list_format=list_format,
                content_sha256=content_sha256,
                imported_at=ns_to_datetime(self.clock.now_ns()).isoformat(),
                entities=entities,
            )
        self._index = None
        report = None
        if created and rescreen and repository.parties_path.exists():
            report = self.rescreen_report()
        return ImportResult(version=version, created=created, rescreen=report)

    def versions(self) -> list[ListVersion]:
        return self.repository.versions()

    def current_versions(self) -> dict[str, ListVersion]:
        return self.repository.current()

    def index(self) -> ScreeningIndex:
        if self._index is None:
            repository = self.repository
            current = repository.current()
            if not current:
                raise ScreeningNoLists(
                    "no sanctions list imported yet; run `paykeep aml lists import FILE "
                    "--format ofac-csv|un-xml|ftm`"
                )
            entities = [e for v in current.values() for e in repository.load_entities(v)]
            self._index = ScreeningIndex.build(entities)
            freeze_long_lived_objects()
        return self._index

    # --- allow-list --------------------------------------------------------------------------

    def allowed_pairs(self) -> frozenset[tuple[str, str]]:
        if self._allowed is None:
            self._allowed = frozenset(
                (e["name_key"], e["entity_id"]) for e in self.repository.allow_list()
            )
        return self._allowed

    def allow(self, name: str, entity_id: str, reason: str, schema: str = PERSON) -> dict[str, str]:
        """Record a cleared false positive: ``name`` no longer hits ``entity_id``."""
        query = make_query(name, schema=schema)
        if not reason.strip():
            raise ScreeningQueryInvalid("a reason is required to clear a match", param="reason")
        if not any(e.entity_id == entity_id for e in self.index().entities):
            raise ScreeningQueryInvalid(
                f"no entity {entity_id!r} in the current lists", param="entity_id"
            )
        entry = {
            "name_key": name_key(query.name, PERSON if schema == "Thing" else schema),
            "name": name,
            "entity_id": entity_id,
            "reason": reason.strip(),
            "cleared_at": ns_to_datetime(self.clock.now_ns()).isoformat(),
        }
        self.repository.append_allow(entry)
        self._allowed = None
        return entry

    # --- screening ---------------------------------------------------------------------------

    def screen(self, query: Query, party_id: str | None = None) -> ScreeningResult:
        matches = self.index().screen(query, self.config, self.allowed_pairs())
        return ScreeningResult(query=query, matches=tuple(matches), party_id=party_id)

    def screen_many(self, queries: Iterable[Query]) -> list[ScreeningResult]:
        return [self.screen(q) for q in queries]

    def screen_file(self, input_path: Path, output_path: Path) -> list[ScreeningResult]:
        """Screen a ``full_name[,date_of_birth,nationality,gender]`` CSV; write ``output_path``
        with the input columns plus ``hit,top_score,top_match,explanation``."""
        header, rows = read_csv(input_path, ["full_name"])
        queries: list[Query] = []
        warnings: list[str] = []
        for line_no, row in enumerate(rows, 2):
            try:
                query, warning = query_from_person_row(row)
            except ScreeningQueryInvalid as exc:
                raise ScreeningCsvInvalid(
                    f"{input_path.name} line {line_no}: {exc.message}"
                ) from None
            queries.append(query)
            warnings.append(warning)
        results = self.screen_many(queries)
        extra = ["hit", "top_score", "top_match", "explanation"]
        out_header = header + [c for c in extra if c not in header]
        write_csv(
            output_path,
            out_header,
            (
                {**row, **_result_columns(result, warning)}
                for row, result, warning in zip(rows, results, warnings, strict=True)
            ),
        )
        return results

    def rescreen(self, parties: Sequence[Mapping[str, Any]]) -> list[ScreeningResult]:
        """Screen every party against the current lists (after a list change)."""
        if len(parties) > limits.PARTIES_MAX:
            raise ScreeningPartiesInvalid(f"more than {limits.PARTIES_MAX} parties")
        results: list[ScreeningResult] = []
        for position, party in enumerate(parties):
            party_id = str(party.get("party_id") or party.get("id") or position)
            try:
                query = query_from_party(party)
            except ScreeningQueryInvalid as exc:
                raise ScreeningPartiesInvalid(f"party {party_id}: {exc.message}") from None
            results.append(self.screen(query, party_id=party_id))
        return results

    def rescreen_report(self) -> RescreenReport:
        """Re-screen ``parties.jsonl``; report hits that the previous re-screen did not have."""
        repository = self.repository
        results = self.rescreen(repository.parties())
        previous = repository.rescreen_hits()
        current = {
            r.party_id or "": [m.entity.entity_id for m in r.matches if not m.allowed]
            for r in results
            if r.hit
        }
        new_hits = tuple(
            (party_id, entity_id)
            for party_id, entity_ids in sorted(current.items())
            for entity_id in entity_ids
            if entity_id not in previous.get(party_id, [])
        )
        repository.save_rescreen_hits(current)
        return RescreenReport(results=tuple(results), new_hits=new_hits)


def _result_columns(result: ScreeningResult, warning: str = "") -> dict[str, str]:
    top = next((m for m in result.matches if not m.allowed), None)
    note = f"warning: {warning}" if warning else ""
    if top is None:
        return {"hit": "false", "top_score": "", "top_match": "", "explanation": note}
    return {
        "hit": "true",
        "top_score": f"{top.score:.4f}",
        "top_match": f"{top.entity.entity_id} {top.matched_name}",
        "explanation": "; ".join(x for x in (note, top.explanation()) if x),
    }


def _read_list_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ListFileUnreadable(f"{path} is not a regular file")
        if size > limits.LIST_FILE_BYTES_MAX:
            raise ListFileUnreadable(
                f"{path.name} is larger than {limits.LIST_FILE_BYTES_MAX} bytes"
            )
        return path.read_bytes()
    except OSError as exc:
        raise ListFileUnreadable(f"cannot read {path}: {exc.strerror}") from None


def score_pairs_rows(
    rows: Sequence[Mapping[str, str]], config: MatchConfig = DEFAULT_CONFIG
) -> list[dict[str, str]]:
    """The ``pairs`` command: ``name1,name2[,schema]`` rows plus ``score`` and ``match``."""
    out: list[dict[str, str]] = []
    for line_no, row in enumerate(rows, 2):
        schema = (row.get("schema") or "").strip() or "Thing"
        if schema not in SCHEMAS:
            raise ScreeningCsvInvalid(f"line {line_no}: unknown schema {schema!r}")
        score, _ = score_names(row.get("name1") or "", row.get("name2") or "", schema, config)
        out.append(
            {**row, "score": f"{score:.4f}", "match": str(score >= config.threshold).lower()}
        )
    return out
