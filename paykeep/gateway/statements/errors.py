"""Typed errors of statement import and reconciliation. Every code starts with ``statement_``.

Bad files are :class:`~paykeep.errors.InvalidInput` (CLI exit 2, nothing written); a second,
different statement under an already-imported id is a :class:`~paykeep.errors.Conflict`.
"""

from __future__ import annotations

from paykeep.errors import Conflict, InvalidInput, NotFound


class StatementFileTooLarge(InvalidInput):
    code = "statement_file_too_large"


class StatementFormatUnknown(InvalidInput):
    """Neither ISO 20022 XML nor SWIFT MT940/MT942 text."""

    code = "statement_format_unknown"


class StatementTruncated(InvalidInput):
    """The file ends before its document does (XML not closed, MT940 without its closing
    balance)."""

    code = "statement_truncated"


class StatementMalformed(InvalidInput):
    """Syntax error, or a required element missing or unreadable."""

    code = "statement_malformed"


class StatementNamespaceUnsupported(InvalidInput):
    """XML whose document namespace is not a supported camt.052/053/054 version."""

    code = "statement_namespace_unsupported"


class StatementHeaderMismatch(InvalidInput):
    """The business application header names another message than the document carries."""

    code = "statement_header_mismatch"


class StatementXmlForbidden(InvalidInput):
    """A DTD, entity declaration or external reference: refused before anything is expanded
    or fetched (billion laughs, external entities)."""

    code = "statement_xml_forbidden"


class StatementTooLarge(InvalidInput):
    """More statements or entries than the limits allow."""

    code = "statement_too_large"


class StatementFieldTooLong(InvalidInput):
    code = "statement_field_too_long"


class StatementAmountInvalid(InvalidInput):
    """Not a decimal amount, negative where it must not be, beyond the amount limit, or with
    more decimals than the currency has."""

    code = "statement_amount_invalid"


class StatementCurrencyInvalid(InvalidInput):
    """An unknown currency, or a line or balance in another currency than its statement."""

    code = "statement_currency_invalid"


class StatementUnbalanced(InvalidInput):
    """Opening booked balance + booked entries differs from the closing booked balance."""

    code = "statement_unbalanced"

    def __init__(self, message: str, *, statement_id: str, difference_minor: int) -> None:
        super().__init__(message, param="statement")
        self.statement_id = statement_id
        self.difference_minor = difference_minor


class StatementConflict(Conflict):
    """Another statement was already imported under the same account and statement id."""

    code = "statement_conflict"


class StatementAccountCurrencyMismatch(InvalidInput):
    """The statement's currency is not the registered bank account's."""

    code = "statement_account_currency_mismatch"


class BankAccountInvalid(InvalidInput):
    code = "statement_bank_account_invalid"


class BankAccountConflict(Conflict):
    code = "statement_bank_account_conflict"


class BankAccountNotFound(NotFound):
    code = "statement_bank_account_not_found"


class ExpectationInvalid(InvalidInput):
    code = "statement_expectation_invalid"


class ExpectationConflict(Conflict):
    """The account and reference are already expected with different terms."""

    code = "statement_expectation_conflict"


class LedgerAccountNotFound(NotFound):
    """An expectation's leg names a ledger account that does not exist (or has another
    currency)."""

    code = "statement_ledger_account_not_found"


class BreakNotFound(NotFound):
    code = "statement_break_not_found"


class BreakAlreadyResolved(Conflict):
    """A break is resolved once (explained, matched, returned, bounced); its resolution is
    part of the record. Only a failed return reopens a break (``return_failed``)."""

    code = "statement_break_already_resolved"


class BreakResolutionInvalid(InvalidInput):
    """A resolution without an actor or a note, or a match the break's line cannot take
    (wrong account, direction, currency or amount; a consumed one-shot expectation; a break
    that is not about a missing or unclear reference), or a corrected return destination that
    is not an IBAN or a name a payout can carry, or that is given for a first return (only a
    retry after a failed return may change where the money goes)."""

    code = "statement_break_resolution_invalid"


class BreakNotReturnable(InvalidInput):
    """The break's line cannot be returned to its sender: not an incoming booked line, a
    reason that is not a returnable one (README "Return to sender"), no sealed counterparty
    IBAN or name to pay back to, or terms a return payout cannot carry. Nothing was written."""

    code = "statement_break_not_returnable"


class BreakReturnPending(Conflict):
    """The break's line is already parked in ``suspense:unidentified`` by a return that has not
    finished: only the return (``statements return``, run again) may resolve it; explaining or
    matching it now would leave the money in suspense or bring it into the ledger twice."""

    code = "statement_break_return_pending"


class BreakReturnInFlight(Conflict):
    """A return payout of this break is on its way (requested, in a batch, or accepted by the
    bank and not yet on a statement): another return now could pay the sender twice. Wait for
    the bank's answer; if it fails, the break becomes ``return_failed`` and may be retried."""

    code = "statement_break_return_in_flight"


class BreakAlreadyReturned(Conflict):
    """The break's return payout was settled: the bank's statement showed it leaving to the
    sender. Nothing is left to return."""

    code = "statement_break_already_returned"


class BreakReturnAttemptsExhausted(Conflict):
    """The break was already sent back ``STATEMENT_RETURN_ATTEMPTS_MAX`` times and every
    attempt failed: its money stays in ``suspense:unidentified`` until it is matched (``statements
    resolve --match``) or explained."""

    code = "statement_break_return_attempts_exhausted"
