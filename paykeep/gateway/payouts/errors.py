"""Typed errors of payouts (codes prefixed ``payout_``)."""

from __future__ import annotations

from paykeep.errors import Conflict, InvalidInput, NotFound, PaykeepError


class PayoutInputInvalid(InvalidInput):
    """Malformed request: an empty or overlong id, name or text, a non-int amount."""

    code = "payout_input_invalid"


class PayoutIbanInvalid(InvalidInput):
    """The creditor's or debtor's IBAN fails ISO 13616 validation (schwifty)."""

    code = "payout_iban_invalid"


class PayoutBicInvalid(InvalidInput):
    code = "payout_bic_invalid"


class PayoutCurrencyUnsupported(InvalidInput):
    """Not a currency pain.001 payouts are made in here (two-decimal currencies), or not the
    currency of the account the payout is drawn from."""

    code = "payout_currency_unsupported"


class PayoutAmountInvalid(InvalidInput):
    """Not a positive amount, or above the per-payout limit."""

    code = "payout_amount_invalid"


class PayoutAccountNotFound(NotFound):
    """The ledger account the payout is drawn from does not exist."""

    code = "payout_account_not_found"


class PayoutNotFound(NotFound):
    code = "payout_not_found"


class PayoutBatchNotFound(NotFound):
    code = "payout_batch_not_found"


class PayoutRequestIdReused(Conflict):
    """The request id was already used for a payout with different details."""

    code = "payout_request_id_reused"


class PayoutIllegalTransition(Conflict):
    """The action is not allowed from the batch's or payout's current state."""

    code = "payout_illegal_transition"


class PayoutNothingToBatch(Conflict):
    """No requested payout is waiting in that currency."""

    code = "payout_nothing_to_batch"


class PayoutFileInvalid(InvalidInput):
    """The generated pain.001 file does not validate against its XSD: nothing was sent and
    nothing was marked as batched."""

    code = "payout_file_invalid"


class PayoutBankUnavailable(PaykeepError):
    """The bank could not be reached or gave no usable answer; the batch stays ``generated``
    and may be submitted again (the bank refuses a second copy by message id)."""

    code = "payout_bank_unavailable"
    type = "api_error"


class PayoutInsufficientFunds(PaykeepError):
    """The account the payout is drawn from does not hold the amount: nothing moved."""

    code = "payout_insufficient_funds"
    type = "insufficient_funds"
