"""``paykeep aml pairs|screen|lists|allow|screening-eval``: thin wrappers over the service.

Exit statuses: 0 success (and, for ``screen``, no hit); 1 ``screen`` found at least one hit
that is not allow-listed; 2 bad usage or input, with a one-line reason on stderr.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from paykeep.aml.screening.defaults import (
    DEFAULT_SOURCES,
    DEFAULT_THRESHOLD,
    FORMATS,
    LEGAL_ENTITY,
)
from paykeep.aml.screening.errors import ScreeningQueryInvalid
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

# The matcher (rapidfuzz, the name tables) and the service are imported inside the commands:
# every ``paykeep`` invocation builds this module's command tree, few of them screen.
if TYPE_CHECKING:
    from paykeep.aml.screening.model import MatchConfig
    from paykeep.aml.screening.service import ScreeningService

ThresholdOption = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        help=f"Score at or above which a match is a hit [default: {DEFAULT_THRESHOLD}].",
        show_default=False,
    ),
]


def _config(threshold: float | None) -> MatchConfig:
    from paykeep.aml.screening.model import DEFAULT_CONFIG

    if threshold is None:
        return DEFAULT_CONFIG
    if not 0.0 <= threshold <= 1.0:
        raise ScreeningQueryInvalid("--threshold must be within [0, 1]", param="threshold")
    return dataclasses.replace(DEFAULT_CONFIG, threshold=threshold)


def _service(
    data_dir: Path | None, database_url: str | None, threshold: float | None = None
) -> ScreeningService:
    from paykeep.aml.screening.service import ScreeningService

    settings = settings_from(data_dir, database_url)
    return ScreeningService(data_dir=settings.data_dir, config=_config(threshold))


lists_app = typer.Typer(help="Sanctions lists: import files as immutable versions, show them.")
allow_app = typer.Typer(help="The allow-list of cleared false positives.")


@lists_app.command("import")
def lists_import(
    file: Annotated[Path, typer.Argument(help="The list file.")],
    list_format: Annotated[
        str, typer.Option("--format", help=f"One of: {', '.join(FORMATS)}.")
    ] = "ofac-csv",
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="List name the version belongs to "
            f"[default per format: {', '.join(f'{k}={v}' for k, v in DEFAULT_SOURCES.items())}].",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import a list as a new version (idempotent) and re-screen the data dir's parties."""
    with typed_errors():
        result = _service(data_dir, database_url).import_list(file, list_format, source)
    if as_json:
        print_json(result.to_json())
        return
    version = result.version
    state = "imported" if result.created else "unchanged (already current)"
    typer.echo(f"{version.version_id}: {state}, {version.entity_count} entities")
    if result.rescreen is not None:
        report = result.rescreen
        typer.echo(
            f"re-screened {len(report.results)} parties: "
            f"{sum(1 for r in report.results if r.hit)} hit, {len(report.new_hits)} new hit(s)"
        )
        for party_id, entity_id in report.new_hits:
            typer.echo(f"  new hit: party {party_id} -> {entity_id}")


@lists_app.command("show")
def lists_show(
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List every imported version; the current one per source is marked."""
    with typed_errors():
        service = _service(data_dir, database_url)
        versions = service.versions()
        current = {v.version_id for v in service.current_versions().values()}
    if as_json:
        print_json(
            {"versions": [{**v.to_json(), "current": v.version_id in current} for v in versions]}
        )
        return
    if not versions:
        typer.echo("no list imported")
    for v in versions:
        mark = "*" if v.version_id in current else " "
        typer.echo(
            f"{mark} {v.version_id}  {v.list_format}  {v.entity_count} entities  {v.imported_at}"
        )


@allow_app.command("add")
def allow_add(
    name: Annotated[str, typer.Argument(help="The screened name that was cleared.")],
    entity_id: Annotated[str, typer.Argument(help="The list entity it no longer hits.")],
    reason: Annotated[str, typer.Option("--reason", help="Why the match was cleared.")],
    schema: Annotated[str, typer.Option("--schema")] = "Person",
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Clear a false positive: NAME no longer counts as a hit on ENTITY_ID."""
    with typed_errors():
        entry = _service(data_dir, database_url).allow(name, entity_id, reason, schema)
    if as_json:
        print_json(entry)
    else:
        typer.echo(f"cleared: {name!r} vs {entity_id}")


@allow_app.command("show")
def allow_show(
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the cleared false positives."""
    with typed_errors():
        entries = _service(data_dir, database_url).repository.allow_list()
    if as_json:
        print_json({"allow_list": entries})
        return
    for e in entries:
        typer.echo(f"{e['entity_id']}  {e.get('name', e['name_key'])}  ({e.get('reason', '')})")


def pairs(
    input_csv: Annotated[Path, typer.Argument(help="CSV with columns name1,name2[,schema].")],
    out: Annotated[Path | None, typer.Option("--out", help="Output CSV [default: stdout].")] = None,
    threshold: ThresholdOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Score name pairs: the input columns plus `score` in [0, 1] and `match`."""
    from paykeep.aml.screening.service import read_csv, score_pairs_rows, write_csv

    del data_dir, database_url  # pairs needs no list; the options are accepted for uniformity
    with typed_errors():
        header, rows = read_csv(input_csv, ["name1", "name2"])
        scored = score_pairs_rows(rows, _config(threshold))
        out_header = header + [c for c in ("score", "match") if c not in header]
        if as_json:
            print_json({"pairs": scored})
        elif out is not None:
            write_csv(out, out_header, scored)
        else:
            writer = csv.DictWriter(sys.stdout, fieldnames=out_header, lineterminator="\n")
            writer.writeheader()
            writer.writerows(scored)


def screen(
    name: Annotated[str | None, typer.Argument(help="The name to screen.")] = None,
    dob: Annotated[
        list[str] | None, typer.Option("--dob", help="Date of birth YYYY[-MM[-DD]] (repeatable).")
    ] = None,
    country: Annotated[
        list[str] | None,
        typer.Option("--country", help="Nationality or country, name or code (repeatable)."),
    ] = None,
    identifier: Annotated[
        list[str] | None, typer.Option("--id", help="Passport, tax or registration number.")
    ] = None,
    gender: Annotated[str | None, typer.Option("--gender")] = None,
    schema: Annotated[
        str,
        typer.Option("--schema", help="Person, Company, Organization, LegalEntity, Vessel..."),
    ] = LEGAL_ENTITY,
    input_csv: Annotated[
        Path | None,
        typer.Option(
            "--input",
            help="Screen a CSV: full_name[,date_of_birth,nationality,gender] (people).",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output CSV for --input.")] = None,
    threshold: ThresholdOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Screen a name (or a CSV of people) against the current lists. Exit 1 on a hit."""
    from paykeep.aml.screening.service import make_query

    with typed_errors():
        service = _service(data_dir, database_url, threshold)
        if input_csv is not None:
            if name is not None or out is None:
                raise ScreeningQueryInvalid("--input needs --out and no NAME argument")
            results = service.screen_file(input_csv, out)
            hits = sum(1 for r in results if r.hit)
            summary = {"rows": len(results), "hits": hits, "out": str(out)}
            if as_json:
                print_json(summary)
            else:
                typer.echo(f"screened {len(results)} rows: {hits} hit(s); wrote {out}")
        else:
            if name is None:
                raise ScreeningQueryInvalid("give a NAME or --input FILE --out FILE")
            query = make_query(
                name,
                schema=schema,
                birth_dates=dob or [],
                countries=country or [],
                identifiers=identifier or [],
                gender=gender,
            )
            result = service.screen(query)
            hits = 1 if result.hit else 0
            if as_json:
                print_json(
                    {
                        **result.to_json(),
                        "threshold": service.config.threshold,
                        "list_versions": [
                            v.version_id for v in service.current_versions().values()
                        ],
                    }
                )
            else:
                if not result.matches:
                    typer.echo("no match")
                for m in result.matches:
                    flag = " (allow-listed)" if m.allowed else ""
                    typer.echo(f"{m.score:.3f}  {m.entity.entity_id}  {m.matched_name}{flag}")
                    typer.echo(f"       {m.explanation()}")
    if hits:
        raise typer.Exit(EXIT_CHECK_FAILED)


def screening_eval(
    positives: Annotated[
        list[Path], typer.Option("--positives", help="Labelled positives CSV (repeatable).")
    ],
    negatives: Annotated[
        list[Path], typer.Option("--negatives", help="Labelled negatives CSV (repeatable).")
    ],
    list_file: Annotated[
        Path | None,
        typer.Option(
            "--list", help="Evaluate against this list file instead of the data dir's lists."
        ),
    ] = None,
    list_format: Annotated[str, typer.Option("--format")] = "ofac-csv",
    threshold: ThresholdOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recall on positives (overall and on the by-name matched subset), false-positive rate
    on negatives, and a threshold sweep."""
    from paykeep.aml.screening.evaluate import evaluate
    from paykeep.aml.screening.model import ScreeningIndex
    from paykeep.aml.screening.service import read_csv
    from paykeep.aml.screening.sources import parse_list

    with typed_errors():
        config = _config(threshold)
        if list_file is not None:
            try:
                raw = list_file.read_bytes()
            except OSError as exc:
                fail(f"cannot read {list_file}: {exc.strerror}")
            index = ScreeningIndex.build(
                parse_list(raw, list_format, DEFAULT_SOURCES.get(list_format, "list"))
            )
        else:
            index = _service(data_dir, database_url).index()
        report = evaluate(
            index,
            {p.stem: read_csv(p, ["full_name"])[1] for p in positives},
            {n.stem: read_csv(n, ["full_name"])[1] for n in negatives},
            config,
        )
    if as_json:
        print_json(report)
        return
    for group in ("positives", "negatives"):
        figures_by_file = report[group]
        assert isinstance(figures_by_file, dict)
        for file_name, figures in figures_by_file.items():
            typer.echo(f"{group} {file_name}: {figures}")


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``paykeep aml``."""
    app.command("pairs")(pairs)
    app.command("screen")(screen)
    app.command("screening-eval")(screening_eval)
    app.add_typer(lists_app, name="lists")
    app.add_typer(allow_app, name="allow")
