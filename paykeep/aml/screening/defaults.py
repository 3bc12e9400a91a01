"""The few values the command line shows before any work starts: list formats, default source
names, the default threshold and schema.

They live apart so that building ``paykeep``'s command tree (help texts, option defaults) does
not import the matcher -- rapidfuzz and the name tables load only when a command runs.
:mod:`.model` and :mod:`.sources` take these names from here; this module imports nothing.
"""

from __future__ import annotations

from typing import Final

#: List file formats ``lists import --format`` and ``screening-eval --format`` accept.
FORMATS: Final = ("ofac-csv", "un-xml", "ftm")
#: The list name a format's entities are filed under unless ``--source`` says otherwise.
DEFAULT_SOURCES: Final = {"ofac-csv": "ofac-sdn", "un-xml": "un-sc", "ftm": "ftm"}
#: Score at or above which a match is a hit (README "Evaluation" gives the figures at it).
DEFAULT_THRESHOLD: Final = 0.80
#: "Person or organisation, unknown which": what ``screen`` assumes without ``--schema``.
LEGAL_ENTITY: Final = "LegalEntity"
