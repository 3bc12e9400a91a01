"""Screening's closed set of errors. Each code is stable and globally unique.

Bad list files and bad screening input are :class:`InvalidInput` (exit status 2 at the CLI);
nothing on disk changes when one is raised.
"""

from __future__ import annotations

from paykeep.errors import InvalidInput, NotFound


class ScreeningInputError(InvalidInput):
    """Family of screening input errors (abstract: carries no code of its own)."""


class ListFileUnreadable(ScreeningInputError):
    """The list file is missing, too large or not a regular file."""

    code = "list_file_unreadable"


class ListFileNotUtf8(ScreeningInputError):
    code = "list_file_not_utf8"


class ListFormatInvalid(ScreeningInputError):
    """The file is not in the declared format (wrong columns, wrong root element, bad JSON)."""

    code = "list_format_invalid"


class ListXmlUnsafe(ScreeningInputError):
    """The XML declares a DTD, entities or external references (XML bombs, XXE)."""

    code = "list_xml_unsafe"


class ListEmpty(ScreeningInputError):
    """The file parsed but held no entity: importing it would silently empty a list."""

    code = "list_empty"


class ListFormatUnknown(ScreeningInputError):
    code = "list_format_unknown"


class ListSourceInvalid(ScreeningInputError):
    code = "list_source_invalid"


class ListStoreCorrupt(ScreeningInputError):
    """A stored version file does not match its manifest entry (hash or entity count)."""

    code = "list_store_corrupt"


class ScreeningNoLists(NotFound):
    """Screening was asked for before any list was imported into the data directory."""

    code = "screening_no_lists"


class ScreeningCsvInvalid(ScreeningInputError):
    """A screening or pairs CSV is not UTF-8, lacks a required column, or has a bad row."""

    code = "screening_csv_invalid"


class ScreeningQueryInvalid(ScreeningInputError):
    """An empty name, an unknown schema, a malformed date of birth, a bad threshold."""

    code = "screening_query_invalid"


class ScreeningPartiesInvalid(ScreeningInputError):
    """``<data_dir>/aml/parties.jsonl`` has a line that is not a party object."""

    code = "screening_parties_invalid"


class ScreeningAllowListInvalid(ScreeningInputError):
    code = "screening_allow_list_invalid"
