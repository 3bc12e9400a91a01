"""Typed errors of the payments context (stable codes; the API maps them by ``type``)."""

from __future__ import annotations

from paykeep.errors import Conflict, InvalidInput, PaykeepError
from paykeep.errors import ResourceMissing as ResourceMissing  # raised here too


class PaymentsInputInvalid(InvalidInput):
    code = "payments_input_invalid"


class IllegalTransition(Conflict):
    """The object's state does not allow this action (the transition table says so)."""

    code = "illegal_transition"


class ConcurrentUpdate(Conflict):
    """Another request changed the object between read and write; retry."""

    code = "concurrent_update"
    transient = True


class InsufficientFunds(Conflict):
    code = "insufficient_funds"


class PaymentDeclined(PaykeepError):
    """The card was declined; ``decline_code`` is the network's answer in our words."""

    code = "card_declined"
    type = "card_error"

    def __init__(self, message: str, *, decline_code: str, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.decline_code = decline_code


class PaymentMethodUnavailable(PaykeepError):
    code = "payment_method_unavailable"
    type = "invalid_request"


class PaymentProcessorUnavailable(PaykeepError):
    """The card network did not answer (the payment was reversed); the buyer may retry."""

    code = "payment_processor_unavailable"
    type = "unavailable"


class CheckoutSessionExpired(Conflict):
    code = "checkout_session_expired"


class CardRefundRetriesExhausted(Conflict):
    """A failed card refund was sent again as often as an operator may (``limits``)."""

    code = "card_refund_retries_exhausted"


class PayoutNotAllowed(Conflict):
    code = "payout_not_allowed"


class RiskDeclined(PaykeepError):
    """Financial-crime controls blocked this movement; nothing moved."""

    code = "risk_blocked"
    type = "permission_error"


class CarrierSignatureInvalid(PaykeepError):
    code = "carrier_signature_invalid"
    type = "authentication_error"


class PaymentInProgress(Conflict):
    """A card payment of this order is being processed: a second one could charge twice."""

    code = "payment_in_progress"


# -- buyer sign-in (``buyer_auth``) ------------------------------------------------------------


class BuyerAuthenticationRequired(PaykeepError):
    """The move needs a live buyer session of this checkout's buyer (header
    ``Paykeep-Buyer-Session`` or the hosted page's cookie). Missing, unknown, expired and
    another buyer's session get this same answer: nothing tells them apart."""

    code = "buyer_authentication_required"
    type = "authentication_error"


class BuyerCodeInvalid(InvalidInput):
    """Not the code that was sent (or no code is outstanding: it was used)."""

    code = "buyer_code_invalid"


class BuyerCodeExpired(InvalidInput):
    code = "buyer_code_expired"


class BuyerCodeAttemptsExceeded(InvalidInput):
    """Too many wrong codes: this code is dead; ask for a new one."""

    code = "buyer_code_attempts_exceeded"


class BuyerCodeRateLimited(PaykeepError):
    """Too many codes were sent to this buyer within the hour."""

    code = "buyer_code_rate_limited"
    type = "rate_limit"


# -- buyer withdrawals (``withdrawals``) -------------------------------------------------------


class WithdrawalNoSource(Conflict):
    """Nothing this buyer's money is known to have come from can take it back: for a bank
    withdrawal, no credited top-up in this currency whose sending IBAN is known; for a
    withdrawal to the card, no captured card payment of theirs in this currency."""

    code = "withdrawal_no_source"


class WithdrawalExceedsSource(Conflict):
    """More than the chosen source IBAN sent in (credited top-ups) less what is already being
    or has been withdrawn to it: money may only go back where it came from, at most as much."""

    code = "withdrawal_exceeds_source"


class WithdrawalExceedsCardRefundable(Conflict):
    """More than the buyer's card payments in this currency can still take back: per capture,
    what it captured less every refund to it that has not failed (orders' card refunds and
    earlier withdrawals alike). Money goes back to a card at most as much as came from it."""

    code = "withdrawal_exceeds_card_refundable"
