"""Every bound of case management, named once."""

from __future__ import annotations

from typing import Final

TITLE_LENGTH_MAX: Final = 200
ACTOR_LENGTH_MAX: Final = 64
NOTE_LENGTH_MAX: Final = 10_000
REASON_LENGTH_MAX: Final = 2_000
EVIDENCE_REF_LENGTH_MAX: Final = 128
#: Serialized JSON of one piece of evidence.
EVIDENCE_BYTES_MAX: Final = 256 * 1024
#: Items attached to one case; notes on one case; trail events of one case.
EVIDENCE_PER_CASE_MAX: Final = 2_000
NOTES_PER_CASE_MAX: Final = 2_000
EVENTS_PER_CASE_MAX: Final = 20_000
SUBJECTS_PER_CASE_MAX: Final = 16
#: Cases listed at once.
CASES_PAGE_DEFAULT: Final = 50
CASES_PAGE_MAX: Final = 1_000
#: Transactions and indicators written into one suspicious activity report.
REPORT_TRANSACTIONS_MAX: Final = 1_000
