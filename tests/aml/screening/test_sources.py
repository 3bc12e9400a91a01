"""List parsers on real (sample) files, and the typed errors for every kind of bad file."""

from __future__ import annotations

import pytest

from paykeep.aml.screening.errors import (
    ListEmpty,
    ListFileNotUtf8,
    ListFormatInvalid,
    ListFormatUnknown,
    ListXmlUnsafe,
)
from paykeep.aml.screening.sources import parse_list
from paykeep.errors import InvalidInput

from .conftest import FTM_SAMPLE, SDN_SAMPLE, UN_SAMPLE


def test_ofac_sample_parses_every_row_with_remarks() -> None:
    raw = SDN_SAMPLE.read_bytes()
    assert raw.endswith(b"\r\n\x1a")  # the published file's CRLF and final Ctrl-Z are kept
    entities = parse_list(raw, "ofac-csv", "ofac-sdn")
    assert len(entities) == raw.count(b"\r\n")
    by_id = {e.entity_id: e for e in entities}
    bhuttavi = next(e for e in entities if e.names[0] == "BHUTTAVI, Hafiz Abdul Salam")
    assert bhuttavi.schema == "Person"
    assert "1940" in bhuttavi.birth_dates
    assert "pk" in bhuttavi.countries
    assert {e.schema for e in entities} >= {"Person", "LegalEntity", "Vessel"}
    assert by_id["ofac-sdn:36"].names == ("AEROCARIBBEAN AIRLINES",)
    assert any(len(e.names) > 1 for e in entities)  # a.k.a. aliases from the remarks
    assert any(e.identifiers for e in entities)
    assert any(e.gender == "male" for e in entities)


def test_ofac_remarks_aliases_dates_and_ids() -> None:
    row = (
        '3754,"ABU MARZOOK, Mousa Mohammed","individual","SDGT",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,'
        '-0- ,"DOB 09 Feb 1951; alt. DOB 1950 to 1952; POB Gaza, Egypt; Passport 92/664 (Egypt);'
        " nationality Egypt; Gender Male; a.k.a. 'ABU-'UMAR'; a.k.a. 'MOUSA ABU MARZOUK'.\"\r\n"
    )
    (entity,) = parse_list(row.encode(), "ofac-csv", "ofac-sdn")
    assert entity.names == ("ABU MARZOOK, Mousa Mohammed", "ABU-'UMAR", "MOUSA ABU MARZOUK")
    assert entity.birth_dates == ("1951-02-09", "1950", "1951", "1952")
    assert entity.identifiers == ("92/664",)
    assert entity.countries == ("eg",)
    assert entity.gender == "male"
    assert entity.programs == ("SDGT",)


def test_un_sample_parses_people_and_entities() -> None:
    entities = parse_list(UN_SAMPLE.read_bytes(), "un-xml", "un-sc")
    by_id = {e.entity_id: e for e in entities}
    qadir = by_id["un-sc:900001"]
    assert qadir.names[0] == "QADIR ZAMAN HOTAKWAL"
    assert "Mullah Qadir" in qadir.names and "قادر زمان هوتکوال" in qadir.names
    assert qadir.birth_dates == ("1971-03-14",)
    assert qadir.countries == ("af",)
    assert qadir.identifiers == ("OR 771 203",)
    assert by_id["un-sc:900002"].birth_dates == ("1960", "1961", "1962")
    assert by_id["un-sc:900101"].schema == "LegalEntity"
    assert by_id["un-sc:900101"].countries == ("pa",)


def test_ftm_sample_skips_non_screenable_schemas() -> None:
    entities = parse_list(FTM_SAMPLE.read_bytes(), "ftm", "ftm")
    assert [e.entity_id for e in entities] == [
        "ftm:tst-person-1",
        "ftm:tst-company-1",
        "ftm:tst-vessel-1",
        "ftm:tst-person-2",
    ]
    person = entities[0]
    assert person.countries == ("ru",) and person.birth_dates == ("1980-05-02",)
    assert entities[3].names == ("Anneliese Brockmeyer-Quast",)


XML_BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">]>
<CONSOLIDATED_LIST><INDIVIDUALS><INDIVIDUAL><DATAID>1</DATAID>
<FIRST_NAME>&lol2;</FIRST_NAME></INDIVIDUAL></INDIVIDUALS></CONSOLIDATED_LIST>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<CONSOLIDATED_LIST><INDIVIDUALS><INDIVIDUAL><DATAID>1</DATAID>
<FIRST_NAME>&xxe;</FIRST_NAME></INDIVIDUAL></INDIVIDUALS></CONSOLIDATED_LIST>"""


@pytest.mark.parametrize(
    ("raw", "list_format", "error", "message"),
    [
        (b"a,b,c\r\n", "ofac-csv", ListFormatInvalid, "3 columns"),
        (b"", "ofac-csv", ListEmpty, "no entity"),
        (b"\x1a", "ofac-csv", ListEmpty, "no entity"),
        (b'1,"CAF\xc9",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- \r\n', "ofac-csv",
         ListFileNotUtf8, "not UTF-8"),
        (b'x,"NAME","individual",-0-,-0-,-0-,-0-,-0-,-0-,-0-,-0-,-0-\r\n', "ofac-csv",
         ListFormatInvalid, "no entry number"),
        (b'1,"NAME","spaceship",-0-,-0-,-0-,-0-,-0-,-0-,-0-,-0-,-0-\r\n', "ofac-csv",
         ListFormatInvalid, "unknown SDN type"),
        (UN_SAMPLE.read_bytes()[:700], "un-xml", ListFormatInvalid, "not well-formed"),
        (XML_BOMB, "un-xml", ListXmlUnsafe, "refused"),
        (XXE, "un-xml", ListXmlUnsafe, "refused"),
        (b"<html><body/></html>", "un-xml", ListFormatInvalid, "expected <CONSOLIDATED_LIST>"),
        (b"<CONSOLIDATED_LIST/>", "un-xml", ListEmpty, "no entity"),
        (SDN_SAMPLE.read_bytes(), "un-xml", ListFormatInvalid, "not well-formed"),
        (b'{"id": "x", "schema": "Person", "properties": {"name": ["A"]}}\n{oops', "ftm",
         ListFormatInvalid, "line 2: not JSON"),
        (b'["not", "an", "object"]\n', "ftm", ListFormatInvalid, "not a JSON object"),
        (b'{"id": "x", "schema": "Person", "properties": {"name": "A"}}\n', "ftm",
         ListFormatInvalid, "not a list of strings"),
        (b'{"id": "x", "schema": "Person", "properties": {"name": ["A"]}}\n'
         b'{"id": "x", "schema": "Person", "properties": {"name": ["B"]}}\n', "ftm",
         ListFormatInvalid, "duplicate entity ids"),
        (b"x", "pdf", ListFormatUnknown, "unknown list format"),
    ],
)  # fmt: skip
def test_bad_files_raise_typed_errors(
    raw: bytes, list_format: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        parse_list(raw, list_format, "src")
    assert isinstance(caught.value, InvalidInput)
    assert caught.value.code.startswith("list_")  # type: ignore[attr-defined]
