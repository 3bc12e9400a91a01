"""Every bound of the screening context, named once (a limit on everything)."""

from __future__ import annotations

from typing import Final

#: Largest list file accepted by ``lists import`` (the full OpenSanctions default export is
#: ~1 GiB; OFAC SDN is 4 MB, the UN XML 2 MB). Checked before reading.
LIST_FILE_BYTES_MAX: Final = 1024 * 1024 * 1024
#: Entities in one list version; a file beyond this is refused rather than half-loaded.
LIST_ENTITIES_MAX: Final = 2_000_000
#: Names (primary + aliases) kept per entity; the rest are dropped, in file order.
ENTITY_NAMES_MAX: Final = 64
#: Longest name considered, in characters; longer input is truncated before matching.
NAME_LENGTH_MAX: Final = 300
#: Tokens per name considered in the alignment (names longer than this are truncated).
NAME_TOKENS_MAX: Final = 12
#: Rows in one ``screen --input`` or ``pairs`` CSV.
CSV_ROWS_MAX: Final = 1_000_000
#: Candidate names kept after blocking, before cheap filtering and full scoring.
CANDIDATES_MAX: Final = 15
#: Hits returned per screening, best first.
HITS_MAX: Final = 10
#: A blocking key shared by more names than this only boosts candidates found through rarer
#: keys once CANDIDATES_MAX names are found (it still generates when fewer are).
POSTING_WALK_MAX: Final = 150
#: Parties re-screened after a list change.
PARTIES_MAX: Final = 1_000_000
