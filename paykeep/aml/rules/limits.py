"""Every bound of the real-time rules, named once (a limit on everything)."""

from __future__ import annotations

from typing import Final

#: Longest window any rule may look back over (31 days): bounds what history is kept and read.
HISTORY_WINDOW_MAX_S: Final = 31 * 24 * 3600
#: Most history entries kept (in memory) or read (from the database) per party and decision.
#: Older entries beyond this count are ignored: a rule's figures are then lower bounds.
HISTORY_ENTRIES_PER_PARTY_MAX: Final = 2_000
#: Parties the in-memory history keeps before evicting the least recently used one.
HISTORY_PARTIES_MAX: Final = 100_000
#: Identifiers carried by a money event.
EVENT_ID_LENGTH_MAX: Final = 128
PARTY_ID_LENGTH_MAX: Final = 64
#: Facts used for sanctions screening.
PARTY_NAME_LENGTH_MAX: Final = 256
#: Registered rules, and parameters per rule configuration.
RULES_MAX: Final = 64
RULE_NAME_LENGTH_MAX: Final = 64
PARAMS_PER_CONFIG_MAX: Final = 32
#: Free text stored with a configuration version.
CONFIG_NOTE_LENGTH_MAX: Final = 1_000
ACTOR_LENGTH_MAX: Final = 64
#: Configuration versions per rule (a change creates a version; a runaway script cannot
#: grow the table without bound).
CONFIG_VERSIONS_PER_RULE_MAX: Final = 10_000
#: Alerts recorded for one decision (each rule reports at most one alert per party).
ALERTS_PER_DECISION_MAX: Final = 2 * RULES_MAX * 2
