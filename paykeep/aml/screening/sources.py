"""Adapters from published list formats to :class:`ListEntity` values.

Each parser takes the file's bytes and returns entities or raises one of our typed errors;
foreign exceptions (``csv.Error``, ``ParseError``, ``JSONDecodeError``) never leak out.
Formats:

- ``ofac-csv``: OFAC's legacy ``sdn.csv`` (no header, 12 columns, ``-0-`` for empty, a final
  Ctrl-Z line). Aliases, dates of birth, nationality, gender and identifiers are read out of the
  free-text ``Remarks`` column (``a.k.a. 'X'``, ``DOB 09 Feb 1951``, ``Passport X (Country)``).
- ``un-xml``: the UN Security Council consolidated list (``CONSOLIDATED_LIST`` with
  ``INDIVIDUALS/INDIVIDUAL`` and ``ENTITIES/ENTITY``). Parsed with defusedxml: a DTD, entity
  declaration or external reference is refused (no XML bombs, no XXE, no network).
- ``ftm``: FollowTheMoney entities, one JSON object a line (OpenSanctions' ``entities.ftm.json``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from typing import Final
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from paykeep.aml.screening import limits
from paykeep.aml.screening.defaults import FORMATS
from paykeep.aml.screening.errors import (
    ListEmpty,
    ListFileNotUtf8,
    ListFormatInvalid,
    ListFormatUnknown,
    ListXmlUnsafe,
)
from paykeep.aml.screening.model import (
    LEGAL_ENTITY,
    PERSON,
    SCHEMAS,
    ListEntity,
    normalise_country,
)


def decode_utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ListFileNotUtf8(f"{what} is not UTF-8 (byte offset {exc.start})") from None


def parse_list(raw: bytes, list_format: str, source: str) -> list[ListEntity]:
    """Entities of a list file; raises a typed error on anything malformed or empty."""
    parser = _PARSERS.get(list_format)
    if parser is None:
        raise ListFormatUnknown(
            f"unknown list format {list_format!r}; expected one of {', '.join(FORMATS)}",
            param="format",
        )
    entities = parser(raw, source)
    if not entities:
        raise ListEmpty(f"the {list_format} file holds no entity")
    if len(entities) > limits.LIST_ENTITIES_MAX:
        raise ListFormatInvalid(f"more than {limits.LIST_ENTITIES_MAX} entities")
    ids = [e.entity_id for e in entities]
    if len(set(ids)) != len(ids):
        raise ListFormatInvalid("duplicate entity ids in the file")
    return entities


# --- OFAC SDN legacy CSV ---------------------------------------------------------------------

_OFAC_EMPTY: Final = "-0-"
_OFAC_COLUMNS: Final = 12
_OFAC_TYPES: Final = {
    "individual": PERSON,
    "vessel": "Vessel",
    "aircraft": "Airplane",
    "": LEGAL_ENTITY,
}
_ALIAS: Final = re.compile(r"\b[afn]\.k\.a\.,?\s+'(.+?)'(?=\s*(?:;|\.?\s*$|,))")
_MONTHS: Final = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_DOB: Final = re.compile(
    r"^(?:alt\.\s+)?DOB\s+(?:circa\s+)?(?:(\d{1,2})\s+)?(?:([A-Za-z]{3})[a-z]*\s+)?(\d{4})"
    r"(?:\s+to\s+(?:(?:\d{1,2}\s+)?[A-Za-z]{3}[a-z]*\s+)?(\d{4}))?",
    re.IGNORECASE,
)
_COUNTRY: Final = re.compile(r"^(?:alt\.\s+)?(?:nationality|citizen)\s+(.+?)\.?$", re.IGNORECASE)
_GENDER: Final = re.compile(r"^Gender\s+(Male|Female)\.?$", re.IGNORECASE)
_ID_LABELS: Final = (
    "Passport",
    "National ID No.",
    "Tax ID No.",
    "Registration Number",
    "Registration ID",
    "Cedula No.",
    "NIT #",
    "RUC #",
    "Identification Number",
    "Company Number",
    "Legal Entity Number",
    "SSN",
    "Business Registration Number",
    "Vessel Registration Identification",
    "MMSI",
    "Personal ID Card",
    "C.U.R.P.",
    "R.F.C.",
    "Driver's License No.",
    "Unified Social Credit Code (USCC)",
    "Commercial Registry Number",
    "Residency Number",
    "Birth Certificate Number",
    "Identification Card No.",
)
_ID: Final = re.compile(
    r"^(?:alt\.\s+)?(?:"
    + "|".join(re.escape(label) for label in _ID_LABELS)
    + r")\s+(?P<value>[^()]+?)\s*(?:\((?P<country>[^)]*)\))?\s*\.?$"
)
#: Years of a ``DOB 1960 to 1965`` range expanded into dates, at most.
_DOB_RANGE_YEARS_MAX: Final = 10


def _ofac_value(cell: str) -> str:
    cell = cell.strip()
    return "" if cell == _OFAC_EMPTY else cell


def _ofac_remarks(remarks: str) -> Iterator[str]:
    for part in remarks.split(";"):
        part = part.strip()
        if part:
            yield part


def _ofac_dates(part: str) -> list[str]:
    match = _DOB.match(part)
    if match is None:
        return []
    day, month_name, year, year_to = match.groups()
    month = _MONTHS.get(month_name[:3].lower()) if month_name else None
    if year_to:
        first, last = int(year), int(year_to)
        if 0 <= last - first <= _DOB_RANGE_YEARS_MAX:
            return [f"{y:04d}" for y in range(first, last + 1)]
        return [year]
    if month is None:
        return [year]
    if day is None:
        return [f"{year}-{month:02d}"]
    return [f"{year}-{month:02d}-{int(day):02d}"]


def parse_ofac_csv(raw: bytes, source: str) -> list[ListEntity]:
    text = decode_utf8(raw, "OFAC CSV")
    entities: list[ListEntity] = []
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise ListFormatInvalid(f"OFAC CSV: {exc}") from None
    for line_no, row in enumerate(rows, 1):
        if len(row) == 1 and row[0].strip("\x1a \t") == "":
            continue  # the Ctrl-Z end-of-file marker and blank lines
        if len(row) != _OFAC_COLUMNS:
            raise ListFormatInvalid(
                f"OFAC CSV line {line_no}: {len(row)} columns, expected {_OFAC_COLUMNS} "
                "(ent_num,SDN_Name,SDN_Type,Program,...,Remarks)"
            )
        ent_num, name, sdn_type = row[0].strip(), _ofac_value(row[1]), _ofac_value(row[2])
        if not ent_num.isdigit() or not name:
            raise ListFormatInvalid(f"OFAC CSV line {line_no}: no entry number or name")
        schema = _OFAC_TYPES.get(sdn_type.lower())
        if schema is None:
            raise ListFormatInvalid(f"OFAC CSV line {line_no}: unknown SDN type {sdn_type!r}")
        remarks = _ofac_value(row[11])
        names = [name, *(m.strip() for m in _ALIAS.findall(remarks) if m.strip())]
        dates: list[str] = []
        countries: list[str] = []
        identifiers: list[str] = []
        gender: str | None = None
        for part in _ofac_remarks(remarks):
            if part.lower().startswith(("dob ", "alt. dob ")):
                dates.extend(_ofac_dates(part))
            elif (country := _COUNTRY.match(part)) is not None:
                code = normalise_country(country.group(1))
                if code:
                    countries.append(code)
            elif (sex := _GENDER.match(part)) is not None:
                gender = sex.group(1).lower()
            elif (ident := _ID.match(part)) is not None:
                identifiers.append(ident.group("value").strip())
        flag = _ofac_value(row[9])
        if flag and (code := normalise_country(flag)):
            countries.append(code)
        entities.append(
            ListEntity(
                entity_id=f"{source}:{ent_num}",
                schema=schema,
                names=tuple(dict.fromkeys(names)),
                source=source,
                birth_dates=tuple(dict.fromkeys(dates)),
                countries=tuple(dict.fromkeys(countries)),
                identifiers=tuple(dict.fromkeys(identifiers)),
                gender=gender,
                programs=tuple(p.strip() for p in _ofac_value(row[3]).split("]") if p.strip()),
            )
        )
    return entities


# --- UN consolidated list XML ----------------------------------------------------------------


def _text(element: Element | None) -> str:
    if element is None or element.text is None:
        return ""
    return " ".join(element.text.split())


def _un_dates(element: Element) -> list[str]:
    dates: list[str] = []
    for dob in element.findall("INDIVIDUAL_DATE_OF_BIRTH"):
        date = _text(dob.find("DATE"))
        year = _text(dob.find("YEAR"))
        from_year, to_year = _text(dob.find("FROM_YEAR")), _text(dob.find("TO_YEAR"))
        if date:
            dates.append(date[:10])
        elif year:
            dates.append(year)
        elif from_year.isdigit() and to_year.isdigit():
            first, last = int(from_year), int(to_year)
            if 0 <= last - first <= _DOB_RANGE_YEARS_MAX:
                dates.extend(f"{y:04d}" for y in range(first, last + 1))
    return dates


def parse_un_xml(raw: bytes, source: str) -> list[ListEntity]:
    # ``decode_utf8`` first: the XML declaration could claim another encoding, but the UN
    # publishes UTF-8 and a mislabelled file should fail loudly rather than mis-decode.
    decode_utf8(raw, "UN XML")
    try:
        root = SafeET.fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise ListXmlUnsafe(f"UN XML refused: {type(exc).__name__}") from None
    except ParseError as exc:
        raise ListFormatInvalid(f"UN XML is not well-formed: {exc}") from None
    if root.tag != "CONSOLIDATED_LIST":
        raise ListFormatInvalid(f"UN XML root is <{root.tag}>, expected <CONSOLIDATED_LIST>")
    entities: list[ListEntity] = []
    for kind, alias_tag, address_tag, schema in (
        ("INDIVIDUALS/INDIVIDUAL", "INDIVIDUAL_ALIAS", "INDIVIDUAL_ADDRESS", PERSON),
        ("ENTITIES/ENTITY", "ENTITY_ALIAS", "ENTITY_ADDRESS", LEGAL_ENTITY),
    ):
        for element in root.findall(kind):
            data_id = _text(element.find("DATAID")) or _text(element.find("REFERENCE_NUMBER"))
            parts = [
                _text(element.find(tag))
                for tag in ("FIRST_NAME", "SECOND_NAME", "THIRD_NAME", "FOURTH_NAME")
            ]
            name = " ".join(p for p in parts if p)
            if not data_id or not name:
                raise ListFormatInvalid(f"UN XML: a <{kind.split('/')[1]}> has no DATAID or name")
            names = [name, _text(element.find("NAME_ORIGINAL_SCRIPT"))]
            names += [_text(a.find("ALIAS_NAME")) for a in element.findall(alias_tag)]
            countries = [_text(v) for v in element.findall("NATIONALITY/VALUE")]
            countries += [_text(a.find("COUNTRY")) for a in element.findall(address_tag)]
            identifiers = [_text(d.find("NUMBER")) for d in element.findall("INDIVIDUAL_DOCUMENT")]
            gender = _text(element.find("GENDER")).lower() or None
            entities.append(
                ListEntity(
                    entity_id=f"{source}:{data_id}",
                    schema=schema,
                    names=tuple(dict.fromkeys(n for n in names if n)),
                    source=source,
                    birth_dates=tuple(dict.fromkeys(_un_dates(element))),
                    countries=tuple(
                        dict.fromkeys(c for c in (normalise_country(x) for x in countries) if c)
                    ),
                    identifiers=tuple(dict.fromkeys(i for i in identifiers if i)),
                    gender=gender if gender in {"male", "female"} else None,
                    programs=tuple(p for p in (_text(element.find("UN_LIST_TYPE")),) if p),
                )
            )
    return entities


# --- FollowTheMoney JSON lines ---------------------------------------------------------------

_FTM_NAME_PROPS: Final = ("name", "alias", "previousName", "weakAlias")
_FTM_COUNTRY_PROPS: Final = ("nationality", "citizenship", "country", "jurisdiction", "flag")
_FTM_ID_PROPS: Final = (
    "idNumber",
    "passportNumber",
    "taxNumber",
    "registrationNumber",
    "imoNumber",
    "mmsi",
    "leiCode",
    "innCode",
    "ogrnCode",
    "swiftBic",
)


def _ftm_values(properties: dict[str, object], prop: str, line_no: int) -> list[str]:
    values = properties.get(prop, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ListFormatInvalid(f"FtM line {line_no}: property {prop!r} is not a list of strings")
    return [v for v in values if v.strip()]


def parse_ftm(raw: bytes, source: str) -> list[ListEntity]:
    text = decode_utf8(raw, "FtM JSON lines")
    entities: list[ListEntity] = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ListFormatInvalid(f"FtM line {line_no}: not JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise ListFormatInvalid(f"FtM line {line_no}: not a JSON object")
        entity_id, schema, properties = data.get("id"), data.get("schema"), data.get("properties")
        if not isinstance(entity_id, str) or not entity_id or not isinstance(schema, str):
            raise ListFormatInvalid(f"FtM line {line_no}: needs string 'id' and 'schema'")
        if not isinstance(properties, dict):
            raise ListFormatInvalid(f"FtM line {line_no}: 'properties' is not an object")
        if schema not in SCHEMAS:
            continue  # Sanction, Address, Ownership...: not screenable on their own
        names = [v for p in _FTM_NAME_PROPS for v in _ftm_values(properties, p, line_no)]
        if not names:
            first = _ftm_values(properties, "firstName", line_no)
            last = _ftm_values(properties, "lastName", line_no)
            if first or last:
                names = [" ".join([*first[:1], *last[:1]])]
        if not names:
            continue
        genders = _ftm_values(properties, "gender", line_no)
        countries = [
            c
            for p in _FTM_COUNTRY_PROPS
            for c in (normalise_country(v) for v in _ftm_values(properties, p, line_no))
            if c
        ]
        entities.append(
            ListEntity(
                entity_id=f"{source}:{entity_id}",
                schema=schema,
                names=tuple(dict.fromkeys(names)),
                source=source,
                birth_dates=tuple(
                    dict.fromkeys(d[:10] for d in _ftm_values(properties, "birthDate", line_no))
                ),
                countries=tuple(dict.fromkeys(countries)),
                identifiers=tuple(
                    dict.fromkeys(
                        v for p in _FTM_ID_PROPS for v in _ftm_values(properties, p, line_no)
                    )
                ),
                gender=genders[0].lower()
                if genders and genders[0].lower() in {"male", "female"}
                else None,
                programs=tuple(_ftm_values(properties, "programId", line_no)),
            )
        )
    return entities


_PARSERS: Final[dict[str, Callable[[bytes, str], list[ListEntity]]]] = {
    "ofac-csv": parse_ofac_csv,
    "un-xml": parse_un_xml,
    "ftm": parse_ftm,
}
