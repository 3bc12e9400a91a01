"""A bounded in-memory per-party history (pure data structure, no I/O).

Used by the benchmark and by simulations; the decision service reads the same entries from
the database inside its transaction. Bounds: ``HISTORY_ENTRIES_PER_PARTY_MAX`` entries per
party (oldest dropped), ``HISTORY_PARTIES_MAX`` parties (least recently used dropped), and
entries older than ``HISTORY_WINDOW_MAX_S`` before the newest one are pruned on append.
"""

from __future__ import annotations

from bisect import insort
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

from paykeep.aml.rules import limits
from paykeep.aml.rules.model import NS_PER_S, HistoryEntry, in_window


class PartyHistory:
    def __init__(
        self,
        entries_per_party_max: int = limits.HISTORY_ENTRIES_PER_PARTY_MAX,
        parties_max: int = limits.HISTORY_PARTIES_MAX,
    ) -> None:
        assert 0 < entries_per_party_max <= limits.HISTORY_ENTRIES_PER_PARTY_MAX
        assert 0 < parties_max <= limits.HISTORY_PARTIES_MAX
        self._entries_max = entries_per_party_max
        self._parties_max = parties_max
        self._by_party: OrderedDict[str, list[HistoryEntry]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_party)

    def entries(self, party_id: str) -> Sequence[HistoryEntry]:
        entries = self._by_party.get(party_id)
        if entries is None:
            return ()
        self._by_party.move_to_end(party_id)
        return entries

    def view(self, party_ids: Iterable[str]) -> Mapping[str, Sequence[HistoryEntry]]:
        return {pid: self.entries(pid) for pid in party_ids}

    def append(self, party_id: str, entry: HistoryEntry) -> None:
        entries = self._by_party.get(party_id)
        if entries is None:
            entries = self._by_party[party_id] = []
            if len(self._by_party) > self._parties_max:
                self._by_party.popitem(last=False)
        else:
            self._by_party.move_to_end(party_id)
        insort(entries, entry, key=_at_ns)
        horizon = entries[-1].at_ns - limits.HISTORY_WINDOW_MAX_S * NS_PER_S
        drop = len(entries) - len(in_window(entries, horizon + 1, entries[-1].at_ns))
        drop = max(drop, len(entries) - self._entries_max)
        if drop > 0:
            del entries[:drop]


def _at_ns(entry: HistoryEntry) -> int:
    return entry.at_ns
