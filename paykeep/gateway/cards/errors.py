"""Typed errors of card acquiring (codes prefixed ``card_``).

Declines, timeouts and an unavailable issuer are not errors: they are outcomes of a
:class:`~paykeep.gateway.cards.model.CardResult`. These errors are refused requests (nothing was
sent, nothing changed) and failures of the network link inside the client.
"""

from __future__ import annotations

from paykeep.errors import Conflict, InvalidInput, NotFound, PaykeepError


class CardInputInvalid(InvalidInput):
    """Malformed input: a payment id, acquirer name, terminal id or account name."""

    code = "card_input_invalid"


class CardAmountInvalid(InvalidInput):
    """The amount is not a positive int of minor units within ``CARD_AMOUNT_MAX_MINOR``."""

    code = "card_amount_invalid"


class CardSecurityCodeInvalid(InvalidInput):
    """The card security code is not 3 or 4 digits."""

    code = "card_security_code_invalid"


class CardCurrencyNotSupported(InvalidInput):
    """This acquirer settles in another currency (one acquirer, one settlement currency)."""

    code = "card_currency_not_supported"


class CardCaptureExceedsAuthorisation(InvalidInput):
    code = "card_capture_exceeds_authorisation"


class CardCreditAccountInvalid(InvalidInput):
    """The account to credit does not exist, or holds another currency."""

    code = "card_credit_account_invalid"


class CardPaymentNotFound(NotFound):
    code = "card_payment_not_found"


class CardPaymentIdReused(Conflict):
    """A payment id replayed with a different card, amount, currency or kind."""

    code = "card_payment_id_reused"


class CardPaymentInProgress(Conflict):
    """Another call is exchanging messages for this payment right now; ask again later."""

    code = "card_payment_in_progress"


class CardIllegalTransition(Conflict):
    """The action is not allowed from the payment's state (see ``TRANSITIONS``)."""

    code = "card_illegal_transition"


class CardNetworkUnavailable(PaykeepError):
    """The card network could not be reached: the request was certainly not sent."""

    code = "card_network_unavailable"
    type = "api_error"


class CardResponseTimeout(PaykeepError):
    """A request was (or may have been) sent and no answer came in time."""

    code = "card_response_timeout"
    type = "api_error"


class CardProtocolError(PaykeepError):
    """A message that does not follow the ISO 8583 dialect (ours or the network's)."""

    code = "card_protocol_error"
    type = "api_error"


class CardLedgerPostingFailed(PaykeepError):
    """The issuer approved but the ledger refused the posting; the recovery sweep retries."""

    code = "card_ledger_posting_failed"
    type = "api_error"


class CardSettlementMismatch(Conflict):
    """The acquirer's settlement report does not agree with the captures Paykeep has not yet
    seen settled: nothing is expected, nothing is marked; the difference is the break."""

    code = "card_settlement_mismatch"


class CardRefundNotFound(NotFound):
    code = "card_refund_not_found"


class CardRefundIdReused(Conflict):
    """A refund id replayed with another original payment, amount, currency or account."""

    code = "card_refund_id_reused"


class CardRefundInProgress(Conflict):
    """Another call is exchanging messages for this refund right now; ask again later."""

    code = "card_refund_in_progress"


class CardPaymentNotRefundable(Conflict):
    """Only a captured card payment (a settled capture or sale) can be refunded."""

    code = "card_payment_not_refundable"


class CardRefundExceedsCapture(Conflict):
    """The refunds of one card payment would total more than it captured."""

    code = "card_refund_exceeds_capture"


class CardDebitAccountInvalid(InvalidInput):
    """The account a refund debits does not exist, holds another currency, or does not match
    the reserving pending transfer."""

    code = "card_debit_account_invalid"
