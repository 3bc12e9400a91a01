"""Typed errors of case management (codes prefixed ``case_``)."""

from __future__ import annotations

from paykeep.errors import Conflict, InvalidInput, NotFound


class CaseInputInvalid(InvalidInput):
    """Malformed input: an empty or overlong actor, note, title or evidence."""

    code = "case_input_invalid"


class CaseNotFound(NotFound):
    code = "case_not_found"


class CaseEvidenceNotFound(NotFound):
    """No evidence with this id is attached to this case."""

    code = "case_evidence_not_found"


class CaseIllegalTransition(Conflict):
    """The action is not allowed from the case's current state (see ``TRANSITIONS``)."""

    code = "case_illegal_transition"


class CaseSecondApproverRequired(Conflict):
    """Closing a high-risk case needs a second compliance officer, distinct from the one who
    asked for the closure."""

    code = "case_second_approver_required"


class CaseClosed(Conflict):
    """The case is in a final state: it can no longer be assigned or given evidence."""

    code = "case_closed"


class CaseEvidenceExists(Conflict):
    """This piece of evidence (kind and reference) is already attached to the case."""

    code = "case_evidence_exists"


class CaseLimitReached(Conflict):
    """A case holds as many notes, evidence items or trail events as it may."""

    code = "case_limit_reached"
