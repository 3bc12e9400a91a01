"""The escrow domain, pure: states, the transition tables, fees, splits and timers.

No I/O and no clock reads: the service passes ``now_ns`` in and persists what comes out.

Order states (``../../shared/DESIGN.md``, "The escrow flow")::

    created --pay--> awaiting_shipment --ship--> awaiting_receipt --confirm--> completed
       |                  |  (not shipped in time)      |  (refund / dispute decision)
     close             refund_full --> refunded      refund_full / refund_partial / release
       v                                              v
     closed                                refunded / partially_refunded / completed

Refund requests have their own machine; a refund or a dispute that is open pauses the
order's timer (``paused``), so money is never released while the buyer's claim is pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Final

from paykeep.payments.errors import IllegalTransition, PaymentsInputInvalid

NS_PER_S: Final = 1_000_000_000
BASIS_POINTS: Final = 10_000


class OrderState(StrEnum):
    CREATED = "created"
    AWAITING_SHIPMENT = "awaiting_shipment"
    AWAITING_RECEIPT = "awaiting_receipt"
    COMPLETED = "completed"
    CLOSED = "closed"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


class OrderAction(StrEnum):
    PAY = "pay"
    SHIP = "ship"
    DELIVER = "deliver"
    CONFIRM = "confirm"
    CLOSE = "close"
    REFUND_FULL = "refund_full"
    REFUND_PARTIAL = "refund_partial"


S, A = OrderState, OrderAction

#: (state, action) -> next state. Everything else is ``illegal_transition``.
ORDER_TRANSITIONS: Final[dict[tuple[OrderState, OrderAction], OrderState]] = {
    (S.CREATED, A.PAY): S.AWAITING_SHIPMENT,
    (S.CREATED, A.CLOSE): S.CLOSED,
    (S.AWAITING_SHIPMENT, A.SHIP): S.AWAITING_RECEIPT,
    (S.AWAITING_SHIPMENT, A.REFUND_FULL): S.REFUNDED,
    (S.AWAITING_SHIPMENT, A.REFUND_PARTIAL): S.PARTIALLY_REFUNDED,
    (S.AWAITING_RECEIPT, A.DELIVER): S.AWAITING_RECEIPT,
    (S.AWAITING_RECEIPT, A.CONFIRM): S.COMPLETED,
    (S.AWAITING_RECEIPT, A.REFUND_FULL): S.REFUNDED,
    (S.AWAITING_RECEIPT, A.REFUND_PARTIAL): S.PARTIALLY_REFUNDED,
}

TERMINAL_ORDER_STATES: Final = frozenset({S.COMPLETED, S.CLOSED, S.REFUNDED, S.PARTIALLY_REFUNDED})
#: States in which the buyer's money is held (a pending ledger transfer exists).
HELD_STATES: Final = frozenset({S.AWAITING_SHIPMENT, S.AWAITING_RECEIPT})


def transition(state: OrderState, action: OrderAction) -> OrderState:
    """The one gate of every order state change."""
    try:
        return ORDER_TRANSITIONS[(state, action)]
    except KeyError:
        raise IllegalTransition(
            f"an order that is {state.value} cannot {action.value.replace('_', ' ')}",
            param="state",
        ) from None


class RefundState(StrEnum):
    REQUESTED = "requested"
    MERCHANT_AGREED = "merchant_agreed"
    MERCHANT_REFUSED = "merchant_refused"
    RETURN_SHIPPED = "return_shipped"
    RETURN_RECEIVED = "return_received"
    DISPUTED = "disputed"
    COMPLETED = "completed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


class RefundAction(StrEnum):
    AGREE = "agree"  # merchant; without a return the money moves at once
    AGREE_WITH_RETURN = "agree_with_return"
    REFUSE = "refuse"  # merchant
    SHIP_RETURN = "ship_return"  # buyer
    RECEIVE_RETURN = "receive_return"  # merchant; the money moves
    ESCALATE = "escalate"  # buyer: a dispute for the platform to decide
    CANCEL = "cancel"  # buyer withdraws the request
    DECIDE_FOR_BUYER = "decide_for_buyer"  # platform decision with a buyer share > 0
    DECIDE_FOR_MERCHANT = "decide_for_merchant"  # platform decision, buyer share 0


R, RA = RefundState, RefundAction

REFUND_TRANSITIONS: Final[dict[tuple[RefundState, RefundAction], RefundState]] = {
    (R.REQUESTED, RA.AGREE): R.COMPLETED,
    (R.REQUESTED, RA.AGREE_WITH_RETURN): R.MERCHANT_AGREED,
    (R.REQUESTED, RA.REFUSE): R.MERCHANT_REFUSED,
    (R.REQUESTED, RA.ESCALATE): R.DISPUTED,
    (R.REQUESTED, RA.CANCEL): R.CANCELLED,
    (R.MERCHANT_AGREED, RA.SHIP_RETURN): R.RETURN_SHIPPED,
    (R.MERCHANT_AGREED, RA.CANCEL): R.CANCELLED,
    (R.RETURN_SHIPPED, RA.RECEIVE_RETURN): R.COMPLETED,
    (R.RETURN_SHIPPED, RA.ESCALATE): R.DISPUTED,
    (R.MERCHANT_REFUSED, RA.ESCALATE): R.DISPUTED,
    (R.MERCHANT_REFUSED, RA.CANCEL): R.CANCELLED,
    (R.DISPUTED, RA.DECIDE_FOR_BUYER): R.COMPLETED,
    (R.DISPUTED, RA.DECIDE_FOR_MERCHANT): R.REJECTED,
}
TERMINAL_REFUND_STATES: Final = frozenset({R.COMPLETED, R.REJECTED, R.CANCELLED})


def refund_transition(state: RefundState, action: RefundAction) -> RefundState:
    try:
        return REFUND_TRANSITIONS[(state, action)]
    except KeyError:
        raise IllegalTransition(
            f"a refund that is {state.value} cannot {action.value.replace('_', ' ')}",
            param="state",
        ) from None


class ShipmentEvent(StrEnum):
    PICKED_UP = "picked_up"
    IN_TRANSIT = "in_transit"
    DELIVERED = "delivered"
    RETURNED = "returned"


#: A shipment's state only moves forward; an event at or behind it is recorded, not applied.
SHIPMENT_ORDER: Final = {
    "label_created": 0,
    ShipmentEvent.PICKED_UP: 1,
    ShipmentEvent.IN_TRANSIT: 2,
    ShipmentEvent.DELIVERED: 3,
    ShipmentEvent.RETURNED: 4,
}


class Timer(StrEnum):
    CLOSE_UNPAID = "close_unpaid"
    REFUND_UNSHIPPED = "refund_unshipped"
    CONFIRM_AFTER_SHIPPING = "confirm_after_shipping"
    CONFIRM_AFTER_DELIVERY = "confirm_after_delivery"


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """A merchant's escrow timers, in seconds."""

    unpaid_close_s: int = 30 * 60
    ship_by_s: int = 5 * 24 * 3600
    confirm_after_delivery_s: int = 7 * 24 * 3600
    confirm_after_shipping_s: int = 10 * 24 * 3600

    def check(self) -> TimerSettings:
        for name in (
            "unpaid_close_s",
            "ship_by_s",
            "confirm_after_delivery_s",
            "confirm_after_shipping_s",
        ):
            value = getattr(self, name)
            if type(value) is not int or not TIMER_MIN_S <= value <= TIMER_MAX_S:
                raise PaymentsInputInvalid(
                    f"{name} must be {TIMER_MIN_S} to {TIMER_MAX_S} seconds", param=name
                )
        return self


#: Bounds of a configurable timer: one second (tests, demos) to 90 days.
TIMER_MIN_S: Final = 1
TIMER_MAX_S: Final = 90 * 24 * 3600


def timer_for(
    state: OrderState, settings: TimerSettings, since_ns: int, *, delivered: bool = False
) -> tuple[Timer | None, int | None]:
    """The timer an order in ``state`` runs, and when it fires (``since_ns`` = entering it,
    or the delivery time when ``delivered``)."""
    if state is S.CREATED:
        return Timer.CLOSE_UNPAID, since_ns + settings.unpaid_close_s * NS_PER_S
    if state is S.AWAITING_SHIPMENT:
        return Timer.REFUND_UNSHIPPED, since_ns + settings.ship_by_s * NS_PER_S
    if state is S.AWAITING_RECEIPT:
        if delivered:
            return (
                Timer.CONFIRM_AFTER_DELIVERY,
                since_ns + settings.confirm_after_delivery_s * NS_PER_S,
            )
        return (
            Timer.CONFIRM_AFTER_SHIPPING,
            since_ns + settings.confirm_after_shipping_s * NS_PER_S,
        )
    return None, None


#: What a due timer does to the order.
TIMER_ACTIONS: Final = {
    Timer.CLOSE_UNPAID: OrderAction.CLOSE,
    Timer.REFUND_UNSHIPPED: OrderAction.REFUND_FULL,
    Timer.CONFIRM_AFTER_SHIPPING: OrderAction.CONFIRM,
    Timer.CONFIRM_AFTER_DELIVERY: OrderAction.CONFIRM,
}


@dataclass(frozen=True, slots=True)
class FeePlan:
    """Percentage (basis points) + fixed fee per released order; a rolling reserve."""

    percent_bp: int = 290
    fixed_minor: int = 30
    reserve_percent_bp: int = 0
    reserve_hold_s: int = 90 * 24 * 3600

    def check(self) -> FeePlan:
        if type(self.percent_bp) is not int or not 0 <= self.percent_bp <= BASIS_POINTS:
            raise PaymentsInputInvalid("fee percent_bp is 0 to 10000", param="fee_percent_bp")
        if type(self.fixed_minor) is not int or not 0 <= self.fixed_minor <= FEE_FIXED_MAX:
            raise PaymentsInputInvalid(
                f"fee fixed_minor is 0 to {FEE_FIXED_MAX}", param="fee_fixed_minor"
            )
        if (
            type(self.reserve_percent_bp) is not int
            or not 0 <= self.reserve_percent_bp <= RESERVE_BP_MAX
        ):
            raise PaymentsInputInvalid(
                f"reserve_percent_bp is 0 to {RESERVE_BP_MAX}", param="reserve_percent_bp"
            )
        if type(self.reserve_hold_s) is not int or not 0 <= self.reserve_hold_s <= TIMER_MAX_S * 4:
            raise PaymentsInputInvalid("reserve_hold_s is 0 to 360 days", param="reserve_hold_s")
        return self


FEE_FIXED_MAX: Final = 100_000
RESERVE_BP_MAX: Final = 5_000


def fee_for(released_minor: int, plan: FeePlan) -> int:
    """The platform's fee on ``released_minor``: percentage rounded half-up to the minor unit,
    plus the fixed part, never more than what is released (a tiny order pays at most itself)."""
    if released_minor <= 0:
        return 0
    percent = (Decimal(released_minor) * plan.percent_bp / BASIS_POINTS).quantize(
        Decimal(1), rounding=ROUND_HALF_UP
    )
    return min(released_minor, int(percent) + plan.fixed_minor)


def reserve_for(net_minor: int, plan: FeePlan) -> int:
    """The rolling reserve kept back from a merchant's net proceeds (rounded down: the
    merchant is never short-changed by rounding)."""
    if net_minor <= 0 or plan.reserve_percent_bp == 0:
        return 0
    return net_minor * plan.reserve_percent_bp // BASIS_POINTS


@dataclass(frozen=True, slots=True)
class Release:
    """How a held amount ends: ``to_merchant`` posted (of which ``fee`` to the platform and
    ``reserve`` to the merchant's reserve), the rest back to the buyer's wallet."""

    held: int
    to_merchant: int
    fee: int
    reserve: int

    @property
    def to_buyer(self) -> int:
        return self.held - self.to_merchant

    @property
    def merchant_net(self) -> int:
        return self.to_merchant - self.fee


def plan_release(held: int, refund_minor: int, plan: FeePlan) -> Release:
    """Split a hold of ``held`` when ``refund_minor`` of it goes back to the buyer."""
    if not 0 <= refund_minor <= held:
        raise PaymentsInputInvalid(
            f"a refund is 1 to {held} minor units of this order", param="amount_minor"
        )
    to_merchant = held - refund_minor
    fee = fee_for(to_merchant, plan)
    return Release(held, to_merchant, fee, reserve_for(to_merchant - fee, plan))


@dataclass(frozen=True, slots=True)
class LineItem:
    description: str
    quantity: int
    unit_amount_minor: int

    @property
    def amount_minor(self) -> int:
        return self.quantity * self.unit_amount_minor


ITEMS_MAX: Final = 100
ITEM_QUANTITY_MAX: Final = 10_000
ORDER_AMOUNT_MAX_MINOR: Final = 10**12
DESCRIPTION_MAX: Final = 200


def order_total(items: list[LineItem]) -> int:
    """Validates the line items (shape and bounds, in order) and returns the order total."""
    if not 1 <= len(items) <= ITEMS_MAX:
        raise PaymentsInputInvalid(f"an order has 1 to {ITEMS_MAX} items", param="items")
    total = 0
    for i, item in enumerate(items):
        if not isinstance(item.description, str) or not 1 <= len(item.description) <= 200:
            raise PaymentsInputInvalid(
                "description is 1 to 200 characters", param=f"items.{i}.description"
            )
        if type(item.quantity) is not int or not 1 <= item.quantity <= ITEM_QUANTITY_MAX:
            raise PaymentsInputInvalid(
                f"quantity is 1 to {ITEM_QUANTITY_MAX}", param=f"items.{i}.quantity"
            )
        if type(item.unit_amount_minor) is not int or item.unit_amount_minor < 1:
            raise PaymentsInputInvalid(
                "unit_amount_minor is a positive integer of minor units",
                param=f"items.{i}.unit_amount_minor",
            )
        total += item.amount_minor
        if total > ORDER_AMOUNT_MAX_MINOR:
            raise PaymentsInputInvalid(
                f"an order is at most {ORDER_AMOUNT_MAX_MINOR} minor units", param="items"
            )
    return total


#: ISO 8583 response codes (field 39) in words a buyer understands, and our stable code.
DECLINE_REASONS: Final[dict[str, tuple[str, str]]] = {
    "05": ("do_not_honor", "Your bank declined this payment. Please use another card."),
    "14": ("invalid_number", "The card number is not valid. Please check it and try again."),
    "51": ("insufficient_funds", "The card has insufficient funds for this payment."),
    "54": ("expired_card", "This card has expired. Please use another card."),
    "55": ("incorrect_pin", "The card's security details were not accepted."),
    "57": ("not_permitted", "This card cannot be used for this kind of payment."),
    "61": ("amount_limit", "This payment is over the card's limit."),
    "62": ("restricted_card", "This card is restricted. Please contact your bank."),
    "65": ("activity_limit", "This card has reached its limit of payments. Try later."),
    "82": ("incorrect_cvc", "The security code (CVC) is incorrect."),
    "N7": ("incorrect_cvc", "The security code (CVC) is incorrect."),
    "91": ("issuer_unavailable", "Your bank could not be reached. Please try again shortly."),
    "96": ("processing_error", "The payment could not be processed. Please try again."),
}
DECLINE_FALLBACK: Final = ("card_declined", "Your card was declined. Please use another card.")


def decline_reason(response_code: str | None) -> tuple[str, str]:
    return DECLINE_REASONS.get(response_code or "", DECLINE_FALLBACK)


def dispute_split(held: int, currency: str, buyer_percent_bp: int) -> tuple[int, int]:
    """A platform decision: the buyer's and the merchant's shares of ``held``, exact to the
    minor unit (``money.allocate`` gives the remainder unit to the larger weight)."""
    from paykeep.money import Money, allocate

    if type(buyer_percent_bp) is not int or not 0 <= buyer_percent_bp <= BASIS_POINTS:
        raise PaymentsInputInvalid("buyer_share_bp is 0 to 10000", param="buyer_share_bp")
    if buyer_percent_bp in (0, BASIS_POINTS):
        return (held, 0) if buyer_percent_bp else (0, held)
    buyer, merchant = allocate(
        Money(held, currency), [buyer_percent_bp, BASIS_POINTS - buyer_percent_bp]
    )
    return buyer.amount_minor, merchant.amount_minor
