"""Stored objects of the payments context and how the API shows them (``to_api``).

``to_api`` is the one representation of an object: API responses and webhook events both use
it. Personal data is never in it: a buyer's email is masked, a payout IBAN shows its last four.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paykeep.payments.model import FeePlan, LineItem, OrderState, RefundState, TimerSettings
from paykeep.security.fields import mask_iban

NS = 1_000_000_000


def _s(ns: int | None) -> int | None:
    return None if ns is None else ns // NS


@dataclass(frozen=True, slots=True)
class PayoutReturn:
    """Why a payout (a merchant's, or a buyer's withdrawal to the bank) came back, copied from
    the payout gateway: ``kind`` ``rejected`` (the bank refused the payment file: the money
    never left) or ``sent_back`` (the payee's bank sent it back after it settled — the account
    closed, the IBAN wrong), the bank's reason code (ISO 20022, e.g. ``AC04``; ``None`` when
    the statement gave none) and words, and what the payee's bank kept (``fee_minor``)."""

    kind: str
    reason_code: str | None
    reason: str | None
    fee_minor: int

    @classmethod
    def of(
        cls, kind: str | None, code: str | None, reason: str | None, fee: int | None
    ) -> PayoutReturn | None:
        return None if kind is None else cls(kind, code, reason, int(fee or 0))

    def to_api(self, amount_minor: int) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reason_code": self.reason_code,
            "reason": self.reason,
            "fee_minor": self.fee_minor,
            # What came back to the balance or wallet it left (less the payee's bank's fee).
            "returned_minor": amount_minor - self.fee_minor,
        }


@dataclass(frozen=True, slots=True)
class Merchant:
    id: str
    legal_name: str
    country: str
    currency: str
    payout_iban_last4: str | None
    payout_iban_verified: bool
    fees: FeePlan
    timers: TimerSettings
    payment_reference: str
    created_at_ns: int

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "merchant",
            "legal_name": self.legal_name,
            "country": self.country,
            "currency": self.currency,
            "payout_iban": mask_iban(self.payout_iban_last4),
            "payout_iban_verified": self.payout_iban_verified,
            "fee_plan": {
                "percent_bp": self.fees.percent_bp,
                "fixed_minor": self.fees.fixed_minor,
                "reserve_percent_bp": self.fees.reserve_percent_bp,
                "reserve_hold_s": self.fees.reserve_hold_s,
            },
            "escrow_timers": {
                "unpaid_close_s": self.timers.unpaid_close_s,
                "ship_by_s": self.timers.ship_by_s,
                "confirm_after_delivery_s": self.timers.confirm_after_delivery_s,
                "confirm_after_shipping_s": self.timers.confirm_after_shipping_s,
            },
            "payment_reference": self.payment_reference,
            "created": _s(self.created_at_ns),
        }


@dataclass(frozen=True, slots=True)
class Buyer:
    id: str
    merchant_id: str | None
    email_masked: str
    payment_reference: str
    created_at_ns: int

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "buyer",
            "merchant": self.merchant_id,
            "email": self.email_masked,
            "payment_reference": self.payment_reference,
            "created": _s(self.created_at_ns),
        }


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    merchant_id: str
    buyer_id: str
    currency: str
    amount_minor: int
    fee_minor: int
    state: OrderState
    funding: str | None
    hold_transfer_id: int | None
    refunded_minor: int
    released_minor: int
    paused: bool
    timer: str | None
    timer_due_ns: int | None
    description: str | None
    merchant_reference: str | None
    version: int
    paid_at_ns: int | None
    shipped_at_ns: int | None
    delivered_at_ns: int | None
    created_at_ns: int
    updated_at_ns: int
    items: tuple[LineItem, ...] = ()

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "order",
            "merchant": self.merchant_id,
            "buyer": self.buyer_id,
            "currency": self.currency,
            "amount_minor": self.amount_minor,
            "fee_minor": self.fee_minor,
            "refunded_minor": self.refunded_minor,
            "released_minor": self.released_minor,
            "state": self.state.value,
            "funding": self.funding,
            "disputed": self.paused,
            "timer": None
            if self.timer is None or self.paused
            else {"kind": self.timer, "due": _s(self.timer_due_ns)},
            "description": self.description,
            "merchant_reference": self.merchant_reference,
            "items": [
                {
                    "description": i.description,
                    "quantity": i.quantity,
                    "unit_amount_minor": i.unit_amount_minor,
                    "amount_minor": i.amount_minor,
                }
                for i in self.items
            ],
            "paid_at": _s(self.paid_at_ns),
            "shipped_at": _s(self.shipped_at_ns),
            "delivered_at": _s(self.delivered_at_ns),
            "created": _s(self.created_at_ns),
            "updated": _s(self.updated_at_ns),
        }


@dataclass(frozen=True, slots=True)
class Payment:
    id: str
    order_id: str
    merchant_id: str
    method: str
    state: str
    amount_minor: int
    currency: str
    card_payment_id: str | None
    card_brand: str | None
    card_last4: str | None
    decline_code: str | None
    decline_message: str | None
    created_at_ns: int
    updated_at_ns: int

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "payment",
            "order": self.order_id,
            "merchant": self.merchant_id,
            "method": self.method,
            "state": self.state,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "card": None
            if self.card_last4 is None
            else {"brand": self.card_brand, "last4": self.card_last4},
            "decline_code": self.decline_code,
            "decline_message": self.decline_message,
            "created": _s(self.created_at_ns),
        }


@dataclass(frozen=True, slots=True)
class Shipment:
    id: str
    order_id: str
    merchant_id: str
    direction: str
    carrier: str
    tracking_number: str
    state: str
    created_at_ns: int
    updated_at_ns: int

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "shipment",
            "order": self.order_id,
            "merchant": self.merchant_id,
            "direction": self.direction,
            "carrier": self.carrier,
            "tracking_number": self.tracking_number,
            "state": self.state,
            "created": _s(self.created_at_ns),
            "updated": _s(self.updated_at_ns),
        }


@dataclass(frozen=True, slots=True)
class Refund:
    id: str
    order_id: str
    merchant_id: str
    amount_minor: int
    reason: str | None
    return_required: bool
    state: RefundState
    created_at_ns: int
    updated_at_ns: int
    #: How the order was paid, and the refund's card refund (state, last four), if any.
    funding: str | None = None
    card_refund_state: str | None = None
    card_last4: str | None = None

    @property
    def destination(self) -> str:
        """Where the money goes: back to the card for a card-paid order (unless the card
        refund failed or was never made); to the buyer's wallet otherwise."""
        if self.funding != "card":
            return "wallet"
        if self.card_refund_state is not None:
            return "wallet" if self.card_refund_state == "failed" else "card"
        return "wallet" if self.state is RefundState.COMPLETED else "card"

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "refund",
            "order": self.order_id,
            "merchant": self.merchant_id,
            "amount_minor": self.amount_minor,
            "reason": self.reason,
            "return_required": self.return_required,
            "state": self.state.value,
            "destination": self.destination,
            "card_refund": (
                None
                if self.card_refund_state is None
                else {"status": self.card_refund_state, "last4": self.card_last4}
            ),
            "created": _s(self.created_at_ns),
            "updated": _s(self.updated_at_ns),
        }


@dataclass(frozen=True, slots=True)
class CardRefund:
    """Money of a card-paid order returned by a refund, on its way back to the card: written
    with the refund (outbox-like), sent by a worker pass through the card gateway."""

    id: str
    order_id: str
    refund_id: str | None  # None: the unshipped-order timer's refund (it has no record)
    merchant_id: str
    buyer_id: str
    card_payment_id: str
    amount_minor: int
    currency: str
    state: str  # pending | succeeded | failed
    attempts: int
    reservation_transfer_id: int
    card_brand: str | None
    card_last4: str | None
    response_code: str | None
    failure_reason: str | None
    created_at_ns: int
    updated_at_ns: int
    #: Where the current round of attempts ends (an operator's retry starts a new round).
    attempts_max: int = 3
    #: How many times an operator sent it again after it failed.
    retries: int = 0
    #: The buyer's withdrawal to the card it pays out (then ``refund_id`` is None and
    #: ``order_id`` is the order whose card payment it goes back to).
    withdrawal_id: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "card_refund",
            "order": self.order_id,
            "refund": self.refund_id,
            "withdrawal": self.withdrawal_id,
            "merchant": self.merchant_id,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "status": self.state,
            "card_brand": self.card_brand,
            "last4": self.card_last4,
            "response_code": self.response_code,
            "failure_reason": self.failure_reason,
            "retries": self.retries,
            "created": _s(self.created_at_ns),
            "updated": _s(self.updated_at_ns),
        }


@dataclass(frozen=True, slots=True)
class Dispute:
    id: str
    order_id: str
    refund_id: str | None
    merchant_id: str
    state: str
    reason: str | None
    buyer_share_minor: int | None
    merchant_share_minor: int | None
    decided_by: str | None
    decision_note: str | None
    created_at_ns: int
    updated_at_ns: int

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "dispute",
            "order": self.order_id,
            "refund": self.refund_id,
            "merchant": self.merchant_id,
            "state": self.state,
            "reason": self.reason,
            "buyer_share_minor": self.buyer_share_minor,
            "merchant_share_minor": self.merchant_share_minor,
            "decision_note": self.decision_note,
            "created": _s(self.created_at_ns),
            "updated": _s(self.updated_at_ns),
        }


@dataclass(frozen=True, slots=True)
class MerchantPayout:
    id: str
    merchant_id: str
    gateway_payout_id: int | None
    amount_minor: int
    currency: str
    state: str
    created_at_ns: int
    updated_at_ns: int
    #: Once ``returned``: how and why (None before).
    returned: PayoutReturn | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "payout",
            "merchant": self.merchant_id,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "state": self.state,
            "return": None if self.returned is None else self.returned.to_api(self.amount_minor),
            "created": _s(self.created_at_ns),
            "updated": _s(self.updated_at_ns),
        }


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    merchant_id: str
    order_id: str
    success_url: str | None
    state: str
    expires_at_ns: int
    created_at_ns: int

    def to_api(self, url: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "checkout_session",
            "merchant": self.merchant_id,
            "order": self.order_id,
            "state": self.state,
            "success_url": self.success_url,
            "url": url,
            "expires": _s(self.expires_at_ns),
            "created": _s(self.created_at_ns),
        }


@dataclass(frozen=True, slots=True)
class Topup:
    """A bank transfer carrying a buyer's reference, as the statement brought it in: credited
    to the wallet, or held in ``clearing:bank-in`` by the risk controls until an operator
    releases it."""

    id: str
    buyer_id: str
    merchant_id: str | None
    amount_minor: int
    currency: str
    state: str
    risk_outcome: str
    created_at_ns: int
    updated_at_ns: int

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "topup",
            "buyer": self.buyer_id,
            "merchant": self.merchant_id,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "state": self.state,
            "risk_outcome": self.risk_outcome,
            "created": _s(self.created_at_ns),
            "updated": _s(self.updated_at_ns),
        }


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """A buyer's withdrawal of wallet money back to where it came from: to the bank account
    of a credited top-up (``source_bank_account``: a gateway payout debiting the buyer's wallet;
    only the IBAN's last four are ever shown), or to the cards that paid in
    (``source_card``: card refunds against the buyer's captures, ``card_refunds``)."""

    id: str
    buyer_id: str
    merchant_id: str | None
    source_topup_id: str | None
    iban_last4: str | None
    amount_minor: int
    currency: str
    state: str
    gateway_payout_id: int | None
    request_id: str
    fingerprint: str
    created_at_ns: int
    updated_at_ns: int
    destination: str = "source_bank_account"
    #: A withdrawal to the card: its card refunds, oldest first (empty for a bank one).
    card_refunds: tuple[CardRefund, ...] = ()
    #: A bank withdrawal once ``returned``: how and why (None before, and for the card).
    returned: PayoutReturn | None = None

    def _destination_api(self) -> dict[str, Any]:
        if self.destination == "source_card":
            return {
                "type": "source_card",
                "card_refunds": [c.to_api() for c in self.card_refunds],
                # What reached the cards, and what failed and is back in the buyer's wallet.
                "refunded_to_card_minor": sum(
                    c.amount_minor for c in self.card_refunds if c.state == "succeeded"
                ),
                "returned_to_wallet_minor": sum(
                    c.amount_minor for c in self.card_refunds if c.state == "failed"
                ),
            }
        return {
            "type": "source_bank_account",
            "source_topup": self.source_topup_id,
            "iban_last4": self.iban_last4,
        }

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "withdrawal",
            "buyer": self.buyer_id,
            "merchant": self.merchant_id,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "state": self.state,
            "destination": self._destination_api(),
            "return": None if self.returned is None else self.returned.to_api(self.amount_minor),
            "created": _s(self.created_at_ns),
            "updated": _s(self.updated_at_ns),
        }
