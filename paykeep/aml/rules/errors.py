"""Typed errors of the real-time rules (codes prefixed ``rule_``)."""

from __future__ import annotations

from paykeep.errors import Conflict, InvalidInput, NotFound


class RuleEventInvalid(InvalidInput):
    """A money event is malformed (shape, bounds, a fact missing for its kind)."""

    code = "rule_event_invalid"


class RuleConfigInvalid(InvalidInput):
    """A configuration names an unknown parameter or a value outside the parameter's bounds."""

    code = "rule_config_invalid"


class RuleNotFound(NotFound):
    code = "rule_not_found"


class RuleConfigVersionNotFound(NotFound):
    code = "rule_config_version_not_found"


class RuleNoShadow(Conflict):
    """Promoting or dropping a shadow version when the rule runs none."""

    code = "rule_no_shadow"


class RuleEventIdReused(Conflict):
    """An event id already decided, replayed with a different body."""

    code = "rule_event_id_reused"


class PaymentBlocked(Conflict):
    """The decision for this money event is ``block``: it must be declined, nothing moves."""

    code = "rule_event_blocked"

    def __init__(self, message: str, *, event_id: str) -> None:
        super().__init__(message, param="event_id")
        self.event_id = event_id


class PaymentUnderReview(Conflict):
    """The decision is ``review``: the money is held and a case is open until it is cleared."""

    code = "rule_event_under_review"

    def __init__(self, message: str, *, event_id: str, case_id: int | None) -> None:
        super().__init__(message, param="event_id")
        self.event_id = event_id
        self.case_id = case_id
