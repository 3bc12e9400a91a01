"""Adapter: the screening context's service as the rules' :class:`SanctionsScreen`.

Uses only the screening service's public surface (``ScreeningService.screen`` and
``make_query``); allow-listed matches (cleared false positives) are not hits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from paykeep.aml.rules.model import SanctionsHit
from paykeep.aml.screening.service import ScreeningService, make_query


@dataclass
class ScreeningSanctions:
    service: ScreeningService

    def screen(self, name: str, country: str | None, dob: str | None) -> Sequence[SanctionsHit]:
        query = make_query(
            name,
            countries=(country,) if country else (),
            birth_dates=(dob,) if dob else (),
        )
        result = self.service.screen(query)
        return [
            SanctionsHit(
                entity_id=match.entity.entity_id,
                score=match.score,
                explanation=f"{match.matched_name} ({match.entity.source}): {match.explanation()}",
            )
            for match in result.matches
            if not match.allowed
        ]


class NoSanctions:
    """A screen that never hits: for tests and benchmarks that exercise the other rules."""

    def screen(self, name: str, country: str | None, dob: str | None) -> Sequence[SanctionsHit]:
        return ()
