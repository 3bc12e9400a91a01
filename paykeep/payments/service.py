"""Use cases of marketplace payments: merchants, buyers, orders in escrow, shipments, refunds,
disputes, timers, reserves and payouts.

Every state change runs inside one write transaction (:meth:`PaymentsService.transaction`):
the new state, the ledger transfers (``Ledger.create_transfers_within``) and the outbox event
commit together or not at all. Ledger transfer ids are derived from what they answer to
(``order-hold`` + order id, ...), so a retry after a crash can never move money twice.

Callers pass ``scope``: the merchant id a merchant's API key is bound to, or ``None`` for the
platform operator. An object of another merchant is :class:`ResourceMissing`, exactly like an
unknown id, so ids of other merchants' objects cannot even be probed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import Connection

from paykeep import limits
from paykeep.clock import Clock, SystemClock
from paykeep.db import Database
from paykeep.db.group import GroupWriter
from paykeep.db.quarantine import Quarantine
from paykeep.db.walk import OpenItemsWalk
from paykeep.errors import Conflict, InvalidInput, NotFound, PaykeepError
from paykeep.gateway.statements.model import (
    COUNTERPARTY_IBAN_PURPOSE,
    COUNTERPARTY_NAME_PURPOSE,
    entry_row_id,
)
from paykeep.ids import IdGenerator, derived_id
from paykeep.ledger.model import (
    AccountFlags,
    CreateTransferResult,
    NewAccount,
    NewTransfer,
    TransferFlags,
    TransferResult,
)
from paykeep.ledger.service import Ledger
from paykeep.mail import Mailer, MailUnavailable, OutgoingMail
from paykeep.money import is_currency
from paykeep.payments.buyer_auth import (
    BUYER_CODE_DIGITS,
    BUYER_CODE_TTL_S,
    BUYER_CODE_WINDOW_S,
    BUYER_SESSION_PREFIX,
    BUYER_SESSION_RANDOM_BYTES,
    BUYER_SESSION_TTL_S,
    CODE_PURPOSE,
    BuyerSession,
    CodeState,
    Verdict,
    code_message,
    format_code,
    is_code_shaped,
    is_session_shaped,
    may_issue,
    same_digest,
    verify_step,
)
from paykeep.payments.errors import (
    BuyerAuthenticationRequired,
    BuyerCodeAttemptsExceeded,
    BuyerCodeExpired,
    BuyerCodeInvalid,
    BuyerCodeRateLimited,
    CardRefundRetriesExhausted,
    CheckoutSessionExpired,
    ConcurrentUpdate,
    IllegalTransition,
    InsufficientFunds,
    PaymentDeclined,
    PaymentInProgress,
    PaymentMethodUnavailable,
    PaymentProcessorUnavailable,
    PaymentsInputInvalid,
    PayoutNotAllowed,
    ResourceMissing,
    RiskDeclined,
    WithdrawalNoSource,
)
from paykeep.payments.events import record_event
from paykeep.payments.model import (
    NS_PER_S,
    SHIPMENT_ORDER,
    TIMER_ACTIONS,
    FeePlan,
    LineItem,
    OrderAction,
    OrderState,
    RefundAction,
    RefundState,
    Release,
    ShipmentEvent,
    Timer,
    TimerSettings,
    decline_reason,
    dispute_split,
    order_total,
    plan_release,
    refund_transition,
    timer_for,
    transition,
)
from paykeep.payments.records import (
    Buyer,
    CardRefund,
    CheckoutSession,
    Dispute,
    Merchant,
    MerchantPayout,
    Order,
    Payment,
    PayoutReturn,
    Refund,
    Shipment,
    Topup,
    Withdrawal,
)
from paykeep.payments.repository import PaymentsRepository
from paykeep.payments.withdrawals import (
    IBAN_PURPOSE,
    WITHDRAWAL_ID_PREFIX,
    WITHDRAWAL_PENDING_RECOVERY_S,
    CardCapture,
    WithdrawalDestination,
    WithdrawalState,
    allocate_card_refunds,
    card_withdrawal_outcome,
    check_amount,
    check_withdrawal,
    compact_iban,
    source_headroom,
    withdrawal_transition,
)
from paykeep.security.fields import FieldCipher, mask_email

if TYPE_CHECKING:
    from paykeep.gateway.cards.service import CardGateway
    from paykeep.gateway.payouts.model import Payout
    from paykeep.gateway.payouts.service import PayoutService, ReturnedPayout
    from paykeep.gateway.statements.service import StatementService
    from paykeep.gateway.vault.service import CardVault

T = TypeVar("T")
log = logging.getLogger("paykeep.payments")

# Chart of accounts codes (``../../shared/DESIGN.md``) and the transfer codes of this context.
ASSET, LIABILITY, REVENUE = 1, 2, 4
HOLD_CODE: Final = 50
RELEASE_CODE: Final = 51
FEE_CODE: Final = 52
RESERVE_CODE: Final = 53
RESERVE_RELEASE_CODE: Final = 54
TOPUP_CODE: Final = 55
#: The reservation of a card refund: a pending wallet -> clearing:card:<acquirer> transfer
#: placed with the refund, posted by the gateway on the issuer's approval, voided otherwise.
CARD_REFUND_HOLD_CODE: Final = 56

CHECKOUT_SESSION_TTL_S: Final = 24 * 3600
#: A refund claim with no move for this long is escalated or lapses (``expire_claims``).
CLAIM_IDLE_S: Final = 3 * 24 * 3600
CLAIM_TIMEOUT_ACTIONS: Final = {
    RefundState.REQUESTED: RefundAction.ESCALATE,  # the merchant did not answer
    RefundState.RETURN_SHIPPED: RefundAction.ESCALATE,  # the merchant did not confirm receipt
    RefundState.MERCHANT_REFUSED: RefundAction.CANCEL,  # the buyer did not escalate
    RefundState.MERCHANT_AGREED: RefundAction.CANCEL,  # the buyer never sent the goods back
}
TIMER_SWEEP_BATCH: Final = 200
#: Buyer moves on a refund that need a signed-in buyer, not only the checkout token.
BUYER_SIGNED_IN_REFUND_ACTIONS: Final = frozenset({RefundAction.CANCEL})
NAME_MAX: Final = 140
EMAIL_MAX: Final = 254
TRACKING_MAX: Final = 64
REASON_MAX: Final = 500
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{1,63}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_CARRIER = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_TRACKING = re.compile(r"[A-Za-z0-9-]{4,64}")
_TOPUP_ID = re.compile(r"top_[0-9a-f]{16}")
#: A merchant payout the gateway holds without a record here is adopted by the worker pass
#: once this old: its request, if still alive, records it itself well before.
PAYOUT_RECORD_RECOVERY_S: Final = 30
#: Open withdrawals one worker pass follows at the gateway (a page of them).
WITHDRAWAL_SYNC_BATCH: Final = 500
#: Open merchant payouts ``sync_payouts`` asks the gateway about per pass (a page of them).
PAYOUT_SYNC_BATCH: Final = 500


class RiskCheck(Protocol):
    """Financial-crime controls consulted before money moves (``paykeep.aml.rules``).

    ``conn`` is the transaction that is about to move the money: a decision recorded there
    commits with the movement. Returns ``allow``, ``review`` (a payment goes ahead with a case
    open; a release stays held) or ``block`` (declined with :class:`RiskDeclined`, nothing
    moves). A ``refund`` (escrowed money back to the buyer) is reported, never refused: it
    goes ahead whatever the answer (the rules open a case when they find something).
    ``context``: kind-specific facts (order, merchant, buyer, amount, currency, names).
    """

    def decide(self, conn: Connection | None, kind: str, context: dict[str, Any]) -> str: ...


class AllowAll:
    def decide(self, conn: Connection | None, kind: str, context: dict[str, Any]) -> str:
        return "allow"


@dataclass
class Tx:
    """One write (or read) transaction of the payments context."""

    conn: Connection
    now_ns: int
    repo: PaymentsRepository
    events: list[str] = field(default_factory=list)


class Transactions:
    """Calling it opens a write transaction (a context manager yielding :class:`Tx`);
    ``group_run(op)`` runs ``op(tx)`` through the group committer instead."""

    def __init__(
        self,
        open_: Callable[[], AbstractContextManager[Tx]],
        group_run: Callable[[Callable[[Tx], Any]], Any],
    ) -> None:
        self._open = open_
        self.group_run = group_run

    def __call__(self) -> AbstractContextManager[Tx]:
        return self._open()


@dataclass(frozen=True, slots=True)
class NewMerchant:
    legal_name: str
    country: str
    currency: str = "EUR"
    payout_iban: str | None = None
    fees: FeePlan = field(default_factory=FeePlan)
    timers: TimerSettings = field(default_factory=TimerSettings)


@dataclass(frozen=True, slots=True)
class CheckoutView:
    """What the buyer's checkout page shows (no personal data beyond the masked email)."""

    session: CheckoutSession
    order: Order
    merchant_name: str
    bank_reference: str
    bank_iban: str | None
    latest_payment: Payment | None
    wallet_available_minor: int
    #: Where a sign-in code would go (``a***@example.com``).
    buyer_email_masked: str = "***"


@dataclass(frozen=True, slots=True)
class BuyerCodeSent:
    """A sign-in code went to the checkout's buyer (the address only masked)."""

    email_masked: str
    expires_at_ns: int


@dataclass(frozen=True, slots=True)
class Balances:
    currency: str
    available_minor: int
    pending_minor: int
    reserve_minor: int

    def to_api(self, owner: str) -> dict[str, Any]:
        return {
            "object": "balance",
            "owner": owner,
            "currency": self.currency,
            "available_minor": self.available_minor,
            "pending_minor": self.pending_minor,
            "reserve_minor": self.reserve_minor,
        }


def wallet_name(buyer_id: str, currency: str) -> str:
    return f"buyer:{buyer_id}:wallet:{currency}"


def available_name(merchant_id: str, currency: str) -> str:
    return f"merchant:{merchant_id}:available:{currency}"


def reserve_name(merchant_id: str, currency: str) -> str:
    return f"merchant:{merchant_id}:reserve:{currency}"


def fees_name(currency: str) -> str:
    return f"platform:fees:{currency}"


def account_id(name: str) -> int:
    """Accounts have ids derived from their chart name: any process creates the same one."""
    return derived_id("account", name)


def _check_not_expired(session: CheckoutSession, now_ns: int) -> None:
    if session.state == "open" and now_ns >= session.expires_at_ns:
        raise CheckoutSessionExpired("this checkout session has expired", param="session")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _reference(prefix: str) -> str:
    """A bank transfer reference a person can type: prefix + 10 characters of Crockford base32
    without ambiguous letters."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(10))


class PaymentsService:
    def __init__(
        self,
        database: Database,
        ledger: Ledger,
        cipher: FieldCipher,
        *,
        clock: Clock | None = None,
        cards: CardGateway | None = None,
        vault: CardVault | None = None,
        statements: StatementService | None = None,
        payouts: PayoutService | None = None,
        bank_iban: str | None = None,
        bank_name: str = "banksim",
        risk: RiskCheck | None = None,
        mailer: Mailer | None = None,
        buyer_code_ttl_s: int = BUYER_CODE_TTL_S,
    ) -> None:
        self.database = database
        #: Sends buyers their sign-in codes; None: sign-in answers ``mail_unavailable``.
        self.mailer = mailer
        self.buyer_code_ttl_s = buyer_code_ttl_s
        self.ledger = ledger
        self.cipher = cipher
        self.clock = clock or SystemClock()
        self.ids = IdGenerator(self.clock)
        self.cards = cards
        self.vault = vault
        self.statements = statements
        self.payouts = payouts
        self.bank_iban = bank_iban
        self.bank_name = bank_name
        self.risk: RiskCheck = risk or AllowAll()
        self._postgres = database.is_postgres
        self.writer = GroupWriter(database)
        #: The worker passes' items that failed unexpectedly: backed off, then parked.
        self.quarantine = Quarantine(database, self.clock)
        #: Where ``sync_payouts`` / ``sync_withdrawals`` stopped: each pass reads the next page
        #: of the open ones, so none is left behind however many stay open (``OpenItemsWalk``).
        self._open_payouts: OpenItemsWalk[MerchantPayout] = OpenItemsWalk(lambda p: p.id)
        self._open_withdrawals: OpenItemsWalk[Withdrawal] = OpenItemsWalk(lambda w: w.id)
        #: ``with payments.transaction() as tx:`` — and, for callers that can hand over a
        #: unit of work (the API's idempotent POSTs), ``payments.transaction.group_run(op)``.
        self.transaction = Transactions(self._transaction, self.run)
        if payouts is not None:
            # The merchants' payouts and buyers' withdrawals are gateway payouts: when one
            # comes back (rejected, or sent back by the payee's bank after it settled), the
            # record, its event and the merchant's IBAN commit in the gateway's transaction.
            payouts.on_returned(self.payout_returned_within)

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _transaction(self) -> Iterator[Tx]:
        with self.database.write() as conn:
            yield Tx(conn, self.clock.now_ns(), PaymentsRepository(conn, postgres=self._postgres))

    def run(self, op: Callable[[Tx], T]) -> T:
        """``op(tx)`` in a write transaction that commits before this returns. On SQLite the
        operations of concurrent callers share one COMMIT (``paykeep.db.group``), each in
        its own SAVEPOINT; on PostgreSQL each is its own transaction."""
        return self.writer.run(
            lambda conn: op(
                Tx(conn, self.clock.now_ns(), PaymentsRepository(conn, postgres=self._postgres))
            )
        )

    @contextmanager
    def reading(self) -> Iterator[Tx]:
        with self.database.read() as conn:
            yield Tx(conn, self.clock.now_ns(), PaymentsRepository(conn, postgres=self._postgres))

    def new_id(self, prefix: str) -> str:
        """Time-ordered ids (16 hex digits): sorting by id is sorting by creation."""
        return f"{prefix}_{self.ids.next_id():016x}"

    def _event(self, tx: Tx, merchant_id: str | None, type_: str, obj: dict[str, Any]) -> None:
        tx.events.append(
            record_event(
                tx.conn,
                merchant_id=merchant_id,
                type_=type_,
                object_id=str(obj["id"]),
                obj=obj,
                now_ns=tx.now_ns,
            )
        )

    # ------------------------------------------------------------------ ledger helpers

    def _ensure_accounts(self, tx: Tx, specs: Sequence[tuple[str, str, int, int]]) -> None:
        """Create chart accounts (name, currency, code, flags) if absent, in this transaction."""
        self.ledger.create_accounts_within(
            tx.conn,
            [
                NewAccount(account_id(name), currency, code, flags, name=name)
                for name, currency, code, flags in specs
            ],
        )

    def _merchant_accounts(self, tx: Tx, merchant_id: str, currency: str) -> None:
        no_overdraft = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
        self._ensure_accounts(
            tx,
            [
                (available_name(merchant_id, currency), currency, LIABILITY, no_overdraft),
                (reserve_name(merchant_id, currency), currency, LIABILITY, no_overdraft),
                (fees_name(currency), currency, REVENUE, no_overdraft),
            ],
        )

    def _buyer_wallet(self, tx: Tx, buyer_id: str, currency: str) -> None:
        no_overdraft = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
        self._ensure_accounts(
            tx, [(wallet_name(buyer_id, currency), currency, LIABILITY, no_overdraft)]
        )

    def _transfers(self, tx: Tx, transfers: Sequence[NewTransfer]) -> list[TransferResult]:
        results: list[TransferResult] = self.ledger.create_transfers_within(tx.conn, transfers)
        for result in results:
            if result.applied_or_exists:
                continue
            if result.result in (
                CreateTransferResult.EXCEEDS_CREDITS,
                CreateTransferResult.LINKED_EVENT_FAILED,
            ) and any(r.result is CreateTransferResult.EXCEEDS_CREDITS for r in results):
                raise InsufficientFunds("the balance does not cover this amount")
            from paykeep.ledger.errors import transfer_error

            raise transfer_error(result.result, result.id)
        return results

    # ------------------------------------------------------------------ merchants

    def create_merchant(self, tx: Tx, new: NewMerchant) -> Merchant:
        if not isinstance(new.legal_name, str) or not 1 <= len(new.legal_name.strip()) <= 140:
            raise PaymentsInputInvalid("legal_name is 1 to 140 characters", param="legal_name")
        if not isinstance(new.country, str) or not _COUNTRY.fullmatch(new.country):
            raise PaymentsInputInvalid("country is an ISO 3166 alpha-2 code", param="country")
        if not is_currency(new.currency):
            raise PaymentsInputInvalid("currency is an ISO 4217 code", param="currency")
        fees, timers = new.fees.check(), new.timers.check()
        iban_enc, last4 = None, None
        merchant_id = self.new_id("mer")
        if new.payout_iban is not None:
            iban = _check_iban(new.payout_iban)
            iban_enc = self.cipher.seal(iban, purpose="merchant.iban", row_id=merchant_id)
            last4 = iban[-4:]
        merchant = Merchant(
            merchant_id, new.legal_name.strip(), new.country, new.currency, last4, False,
            fees, timers, _reference("PKM"), tx.now_ns,
        )  # fmt: skip
        tx.repo.insert(
            "payments_merchants",
            {
                "id": merchant.id,
                "legal_name": merchant.legal_name,
                "country": merchant.country,
                "currency": merchant.currency,
                "payout_iban_enc": iban_enc,
                "payout_iban_last4": last4,
                "payout_iban_verified": False,
                "fee_percent_bp": fees.percent_bp,
                "fee_fixed_minor": fees.fixed_minor,
                "reserve_percent_bp": fees.reserve_percent_bp,
                "reserve_hold_s": fees.reserve_hold_s,
                "unpaid_close_s": timers.unpaid_close_s,
                "ship_by_s": timers.ship_by_s,
                "confirm_after_delivery_s": timers.confirm_after_delivery_s,
                "confirm_after_shipping_s": timers.confirm_after_shipping_s,
                "payment_reference": merchant.payment_reference,
                "created_at_ns": tx.now_ns,
            },
        )
        self._merchant_accounts(tx, merchant.id, merchant.currency)
        self._event(tx, merchant.id, "merchant.created", merchant.to_api())
        return merchant

    def merchant(self, tx: Tx, scope: str | None, merchant_id: str) -> Merchant:
        if scope is not None and scope != merchant_id:
            raise ResourceMissing(f"no merchant {merchant_id!r}", param="id")
        found = tx.repo.merchant(merchant_id)
        if found is None:
            raise ResourceMissing(f"no merchant {merchant_id!r}", param="id")
        return found

    def update_merchant(
        self,
        tx: Tx,
        scope: str | None,
        merchant_id: str,
        *,
        timers: TimerSettings | None = None,
        fees: FeePlan | None = None,
        payout_iban: str | None = None,
    ) -> Merchant:
        """Merchants change their timers and payout IBAN (a new IBAN must be verified again);
        only the operator changes a fee plan."""
        merchant = self.merchant(tx, scope, merchant_id)
        changes: dict[str, Any] = {}
        if timers is not None:
            t = timers.check()
            changes.update(
                unpaid_close_s=t.unpaid_close_s,
                ship_by_s=t.ship_by_s,
                confirm_after_delivery_s=t.confirm_after_delivery_s,
                confirm_after_shipping_s=t.confirm_after_shipping_s,
            )
        if fees is not None:
            if scope is not None:
                raise PaymentsInputInvalid(
                    "only the platform operator changes a fee plan", param="fee_plan"
                )
            f = fees.check()
            changes.update(
                fee_percent_bp=f.percent_bp,
                fee_fixed_minor=f.fixed_minor,
                reserve_percent_bp=f.reserve_percent_bp,
                reserve_hold_s=f.reserve_hold_s,
            )
        if payout_iban is not None:
            iban = _check_iban(payout_iban)
            changes.update(
                payout_iban_enc=self.cipher.seal(iban, purpose="merchant.iban", row_id=merchant.id),
                payout_iban_last4=iban[-4:],
                payout_iban_verified=False,
            )
        if changes:
            tx.repo.update("payments_merchants", merchant.id, changes)
            merchant = self.merchant(tx, scope, merchant_id)
            self._event(tx, merchant.id, "merchant.updated", merchant.to_api())
        return merchant

    def verify_payout_iban(self, tx: Tx, merchant_id: str) -> Merchant:
        """The operator confirms the payout IBAN belongs to the merchant (KYB done)."""
        merchant = self.merchant(tx, None, merchant_id)
        if merchant.payout_iban_last4 is None:
            raise IllegalTransition("the merchant has no payout IBAN", param="payout_iban")
        tx.repo.update("payments_merchants", merchant.id, {"payout_iban_verified": True})
        merchant = replace(merchant, payout_iban_verified=True)
        self._event(tx, merchant.id, "merchant.updated", merchant.to_api())
        return merchant

    def merchants(self, tx: Tx, limit: int, starting_after: str | None) -> list[Merchant]:
        return tx.repo.merchants(limit, starting_after)

    # ------------------------------------------------------------------ buyers

    def create_buyer(self, tx: Tx, scope: str | None, name: str, email: str) -> Buyer:
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= NAME_MAX:
            raise PaymentsInputInvalid(f"name is 1 to {NAME_MAX} characters", param="name")
        if not isinstance(email, str) or len(email) > EMAIL_MAX or not _EMAIL.fullmatch(email):
            raise PaymentsInputInvalid("email is not a valid address", param="email")
        buyer_id = self.new_id("buy")
        reference = _reference("PKB")
        tx.repo.insert(
            "payments_buyers",
            {
                "id": buyer_id,
                "merchant_id": scope,
                "name_enc": self.cipher.seal(name.strip(), purpose="buyer.name", row_id=buyer_id),
                "email_enc": self.cipher.seal(email, purpose="buyer.email", row_id=buyer_id),
                "email_hmac": self.cipher.lookup(email.lower(), purpose="buyer.email"),
                "payment_reference": reference,
                "created_at_ns": tx.now_ns,
            },
        )
        row = tx.repo.buyer_row(buyer_id)
        assert row is not None
        buyer = PaymentsRepository.buyer_from(row, email)
        self._event(tx, scope, "buyer.created", buyer.to_api())
        return buyer

    def buyer(self, tx: Tx, scope: str | None, buyer_id: str) -> Buyer:
        row = tx.repo.buyer_row(buyer_id)
        if row is None or (scope is not None and row[1] != scope):
            raise ResourceMissing(f"no buyer {buyer_id!r}", param="buyer")
        email = self.cipher.open(bytes(row[2]), purpose="buyer.email", row_id=buyer_id)
        return PaymentsRepository.buyer_from(row, email)

    def buyers(
        self, tx: Tx, scope: str | None, limit: int, starting_after: str | None
    ) -> list[Buyer]:
        return [
            PaymentsRepository.buyer_from(
                r, self.cipher.open(bytes(r[2]), purpose="buyer.email", row_id=r[0])
            )
            for r in tx.repo.buyer_rows(scope, limit, starting_after)
        ]

    def register_topup_reference(self, buyer: Buyer, currency: str) -> None:
        """Tell the statement import that bank transfers carrying this buyer's reference
        credit their wallet (bank → clearing:bank-in → wallet). Separate transaction."""
        if self.statements is None or self.bank_iban is None:
            return
        from paykeep.gateway.statements.model import ExpectedMovement, Leg

        with self.transaction() as tx:
            self._buyer_wallet(tx, buyer.id, currency)
        self.ensure_bank_accounts(currency)
        self.statements.expect(
            ExpectedMovement(
                reference=buyer.payment_reference,
                iban=self.bank_iban,
                direction="credit",
                amount_minor=None,
                currency=currency,
                standing=True,
                # The statement brings the money to clearing:bank-in; credit_topups moves it
                # on to the wallet once the risk controls have allowed the top-up.
                legs=(Leg(f"bank:safeguarding:{self.bank_name}", "clearing:bank-in", TOPUP_CODE),),
            )
        )

    def credit_topups(self, limit: int = TIMER_SWEEP_BATCH) -> dict[str, int]:
        """Bank transfers the statement brought in for buyers: each is decided by the risk
        controls (``top_up``) and, if allowed, moved clearing:bank-in → the buyer's wallet, in
        the transaction that records it. A held one stays in clearing:bank-in (a visible
        reconciliation item) until an operator releases it (:meth:`release_topup`)."""
        counts: dict[str, int] = {}
        items = self.quarantine.open("payments.credit_topups")
        with self.reading() as tx:
            arrived = items.due(
                tx.repo.arrived_topups(limit + items.fetch), limit, key=_statement_line_key
            )
        for row_id, line, buyer_id, merchant_id, amount, currency, buyer_since in arrived:
            with (
                items.isolated(_statement_line_key((row_id, line))),
                self.transaction() as tx,
            ):
                if tx.conn.execute(_q_topup_seen, {"r": row_id, "l": line}).first():
                    continue
                topup_id = self.new_id("top")
                context = {
                    "event_id": f"top_up:{topup_id}",
                    "buyer": buyer_id,
                    "buyer_since_ns": int(buyer_since),
                    "amount_minor": abs(int(amount)),
                    "currency": currency,
                }
                outcome = self.risk.decide(tx.conn, "top_up", context)
                state = "credited" if outcome == "allow" else "held"
                transfer_id = None
                if state == "credited":
                    self._buyer_wallet(tx, buyer_id, currency)
                    transfer_id = self._credit_topup(
                        tx, topup_id, buyer_id, abs(int(amount)), currency
                    )
                tx.repo.insert(
                    "payments_topups",
                    {
                        "id": topup_id,
                        "statement_row_id": row_id,
                        "line": line,
                        "buyer_id": buyer_id,
                        "merchant_id": merchant_id,
                        "amount_minor": abs(int(amount)),
                        "currency": currency,
                        "state": state,
                        "risk_outcome": outcome,
                        "transfer_id": transfer_id,
                        "created_at_ns": tx.now_ns,
                        "updated_at_ns": tx.now_ns,
                    },
                )
                topup = tx.repo.topup(topup_id)
                assert topup is not None
                self._event(tx, merchant_id, f"topup.{state}", topup.to_api())
                counts[state] = counts.get(state, 0) + 1
        return counts

    def _credit_topup(
        self, tx: Tx, topup_id: str, buyer_id: str, amount: int, currency: str
    ) -> int:
        transfer_id = derived_id("topup-credit", topup_id)
        self._transfers(
            tx,
            [
                NewTransfer(
                    id=transfer_id,
                    debit_account_id=account_id("clearing:bank-in"),
                    credit_account_id=account_id(wallet_name(buyer_id, currency)),
                    amount_minor=amount,
                    currency=currency,
                    code=TOPUP_CODE,
                    reference=f"topup:{topup_id}",
                )
            ],
        )
        return transfer_id

    def release_topup(self, tx: Tx, topup_id: str, released_by: str) -> Topup:
        """The operator's decision on a held top-up: credit the wallet now."""
        topup = tx.repo.topup(topup_id, lock=True)
        if topup is None:
            raise ResourceMissing(f"no top-up {topup_id!r}", param="id")
        if topup.state != "held":
            raise IllegalTransition(f"this top-up is {topup.state}", param="id")
        self._buyer_wallet(tx, topup.buyer_id, topup.currency)
        transfer_id = self._credit_topup(
            tx, topup.id, topup.buyer_id, topup.amount_minor, topup.currency
        )
        tx.repo.update(
            "payments_topups",
            topup.id,
            {
                "state": "credited",
                "transfer_id": transfer_id,
                "released_by": released_by,
                "updated_at_ns": tx.now_ns,
            },
        )
        topup = replace(topup, state="credited", updated_at_ns=tx.now_ns)
        self._event(tx, topup.merchant_id, "topup.credited", topup.to_api())
        return topup

    def topups(
        self, tx: Tx, scope: str | None, limit: int, starting_after: str | None,
        *, buyer_id: str | None = None,
    ) -> list[Topup]:  # fmt: skip
        where: dict[str, Any] = {}
        if scope is not None:
            where["merchant_id"] = scope
        if buyer_id is not None:
            where["buyer_id"] = buyer_id
        return tx.repo.topups(where, limit, starting_after)

    def ensure_bank_accounts(self, currency: str) -> None:
        no_overdraft_asset = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
        with self.transaction() as tx:
            self._ensure_accounts(
                tx,
                [
                    (f"bank:safeguarding:{self.bank_name}", currency, ASSET, no_overdraft_asset),
                    ("clearing:bank-in", currency, ASSET, 0),
                ],
            )

    # ------------------------------------------------------------------ orders

    def create_order(
        self,
        tx: Tx,
        merchant_id: str,
        buyer_id: str,
        items: list[LineItem],
        *,
        currency: str | None = None,
        description: str | None = None,
        merchant_reference: str | None = None,
    ) -> Order:
        merchant = self.merchant(tx, merchant_id, merchant_id)
        self.buyer(tx, merchant_id, buyer_id)
        currency = merchant.currency if currency is None else currency
        if not is_currency(currency):
            raise PaymentsInputInvalid("currency is an ISO 4217 code", param="currency")
        if description is not None and len(description) > 500:
            raise PaymentsInputInvalid("description is at most 500 characters", param="description")
        if merchant_reference is not None and not 1 <= len(merchant_reference) <= 64:
            raise PaymentsInputInvalid(
                "merchant_reference is 1 to 64 characters", param="merchant_reference"
            )
        amount = order_total(items)
        order_id = self.new_id("ord")
        timer, due = timer_for(OrderState.CREATED, merchant.timers, tx.now_ns)
        order = Order(
            order_id, merchant.id, buyer_id, currency, amount, 0, OrderState.CREATED, None,
            None, 0, 0, False, timer, due, description, merchant_reference, 1,
            None, None, None, tx.now_ns, tx.now_ns, tuple(items),
        )  # fmt: skip
        tx.repo.insert(
            "payments_orders",
            {
                "id": order.id,
                "merchant_id": order.merchant_id,
                "buyer_id": order.buyer_id,
                "currency": order.currency,
                "amount_minor": order.amount_minor,
                "fee_minor": 0,
                "state": order.state.value,
                "funding": None,
                "hold_transfer_id": None,
                "refunded_minor": 0,
                "released_minor": 0,
                "disputed": False,
                "timer": timer,
                "timer_due_ns": due,
                "description": description,
                "merchant_reference": merchant_reference,
                "version": 1,
                "created_at_ns": tx.now_ns,
                "updated_at_ns": tx.now_ns,
            },
        )
        for position, item in enumerate(items):
            tx.repo.insert(
                "payments_order_items",
                {
                    "order_id": order.id,
                    "position": position,
                    "description": item.description,
                    "quantity": item.quantity,
                    "unit_amount_minor": item.unit_amount_minor,
                },
            )
        self._buyer_wallet(tx, buyer_id, currency)
        self._merchant_accounts(tx, merchant.id, currency)
        self._event(tx, merchant.id, "order.created", order.to_api())
        return order

    def order(self, tx: Tx, scope: str | None, order_id: str, *, lock: bool = False) -> Order:
        found = tx.repo.order(order_id, lock=lock, items=not lock)
        if found is None or (scope is not None and found.merchant_id != scope):
            raise ResourceMissing(f"no order {order_id!r}", param="order")
        if lock:
            found = replace(found, items=tx.repo.items(order_id))
        return found

    def orders(
        self,
        tx: Tx,
        scope: str | None,
        limit: int,
        starting_after: str | None,
        *,
        state: str | None = None,
        buyer_id: str | None = None,
    ) -> list[Order]:
        where: dict[str, Any] = {}
        if scope is not None:
            where["merchant_id"] = scope
        if state is not None:
            where["state"] = OrderState(state).value
        if buyer_id is not None:
            where["buyer_id"] = buyer_id
        return tx.repo.orders(where, limit, starting_after)

    def _merchant_of(self, tx: Tx, order: Order) -> Merchant:
        merchant = tx.repo.merchant(order.merchant_id)
        assert merchant is not None
        return merchant

    def _move(
        self,
        tx: Tx,
        order: Order,
        action: OrderAction,
        changes: dict[str, Any],
        *,
        timer_since: int | None = None,
        delivered: bool = False,
    ) -> Order:
        """Apply ``action`` (through the transition table), persist, set the next timer and
        write the event ``order.<new state>`` (or ``order.updated`` when the state stays)."""
        new_state = transition(order.state, action)
        merchant = self._merchant_of(tx, order)
        timer, due = timer_for(
            new_state, merchant.timers, tx.now_ns if timer_since is None else timer_since,
            delivered=delivered,
        )  # fmt: skip
        changes = {**changes, "state": new_state.value, "timer": timer, "timer_due_ns": due}
        tx.repo.save_order(order, changes, tx.now_ns)
        # Read back as stored. No move changes the line items: those already read are kept
        # (an order read without them, from a list, has none and they are read now).
        stored = tx.repo.order(order.id)
        assert stored is not None, "the order was just saved"
        updated = replace(stored, items=order.items or tx.repo.items(order.id))
        kind = new_state.value if new_state is not order.state else "updated"
        self._event(tx, order.merchant_id, f"order.{kind}", updated.to_api())
        return updated

    # ------------------------------------------------------------------ checkout

    def create_checkout_session(
        self, tx: Tx, merchant_id: str, order_id: str, success_url: str | None = None
    ) -> tuple[CheckoutSession, str]:
        """A session for the buyer to pay ``order_id``; returns it and its secret token (the
        URL's last segment; stored only as a hash)."""
        order = self.order(tx, merchant_id, order_id)
        if order.state is not OrderState.CREATED:
            raise IllegalTransition(f"order {order_id} is {order.state.value}", param="order")
        if success_url is not None and (
            not success_url.startswith(("https://", "http://")) or len(success_url) > 500
        ):
            raise PaymentsInputInvalid("success_url is an http(s) URL", param="success_url")
        token = "cs_" + secrets.token_urlsafe(32)
        session = CheckoutSession(
            self.new_id("cs"), merchant_id, order_id, success_url, "open",
            tx.now_ns + CHECKOUT_SESSION_TTL_S * NS_PER_S, tx.now_ns,
        )  # fmt: skip
        tx.repo.insert(
            "payments_checkout_sessions",
            {
                "id": session.id,
                "token_hash": _token_hash(token),
                "merchant_id": merchant_id,
                "order_id": order_id,
                "success_url": success_url,
                "state": "open",
                "expires_at_ns": session.expires_at_ns,
                "created_at_ns": tx.now_ns,
            },
        )
        self._event(tx, merchant_id, "checkout_session.created", session.to_api())
        return session, token

    def session_for_token(self, tx: Tx, token: str) -> CheckoutSession:
        if not isinstance(token, str) or not token.startswith("cs_") or len(token) > 100:
            raise ResourceMissing("no such checkout session", param="session")
        session = tx.repo.session_by_token_hash(_token_hash(token))
        if session is None:
            raise ResourceMissing("no such checkout session", param="session")
        return session

    def checkout_view(self, token: str) -> CheckoutView:
        with self.reading() as tx:
            session = self.session_for_token(tx, token)
            order = self.order(tx, None, session.order_id)
            merchant = self._merchant_of(tx, order)
            buyer_row = tx.repo.buyer_row(order.buyer_id)
            assert buyer_row is not None
            payments = tx.repo.payments({"order_id": order.id}, 1, None)
        wallet = self.ledger.lookup_accounts(
            [account_id(wallet_name(order.buyer_id, order.currency))]
        )
        available = next(iter(wallet.values())).available if wallet else 0
        email = self.cipher.open(bytes(buyer_row[2]), purpose="buyer.email", row_id=order.buyer_id)
        return CheckoutView(
            session, order, merchant.legal_name, str(buyer_row[3]), self.bank_iban,
            payments[0] if payments else None, available, mask_email(email),
        )  # fmt: skip

    def _open_session(self, tx: Tx, token: str) -> tuple[CheckoutSession, Order]:
        session = self.session_for_token(tx, token)
        _check_not_expired(session, tx.now_ns)
        order = self.order(tx, None, session.order_id, lock=True)
        return session, order

    # ------------------------------------------------------------------ buyer sign-in

    def start_buyer_sign_in(self, token: str) -> BuyerCodeSent:
        """Send a one-time code to the checkout's buyer. The code is stored only as a keyed
        hash bound to the buyer and this checkout, in a transaction that commits before the
        mail goes out (a failed send still counts towards the hourly limit: a mail loop must
        not become a guessing loop). Raises ``buyer_code_rate_limited`` past
        ``BUYER_CODES_PER_WINDOW_MAX`` codes an hour, ``mail_unavailable`` when the mail
        could not be handed over."""
        if self.mailer is None:
            raise MailUnavailable("no mail backend is configured")
        code = format_code(secrets.randbelow(10**BUYER_CODE_DIGITS))
        with self.transaction() as tx:
            session = self.session_for_token(tx, token)
            order = self.order(tx, None, session.order_id)
            buyer_id = order.buyer_id
            row = tx.repo.buyer_row(buyer_id)
            assert row is not None, "an order's buyer exists"
            since_ns = tx.now_ns - BUYER_CODE_WINDOW_S * NS_PER_S
            if not may_issue(tx.repo.buyer_code_times(buyer_id, since_ns), tx.now_ns):
                raise BuyerCodeRateLimited(
                    "too many codes were sent to this buyer; try again later", param="buyer"
                )
            expires_at_ns = tx.now_ns + self.buyer_code_ttl_s * NS_PER_S
            tx.repo.insert(
                "payments_buyer_codes",
                {
                    "id": self.new_id("bcode"),
                    "buyer_id": buyer_id,
                    "checkout_session_id": session.id,
                    "code_hmac": self.cipher.lookup(
                        code_message(buyer_id, session.id, code), purpose=CODE_PURPOSE
                    ),
                    "state": CodeState.ISSUED.value,
                    "attempts": 0,
                    "expires_at_ns": expires_at_ns,
                    "created_at_ns": tx.now_ns,
                },
            )
            merchant = self._merchant_of(tx, order)
            email = self.cipher.open(bytes(row[2]), purpose="buyer.email", row_id=buyer_id)
        minutes = max(1, self.buyer_code_ttl_s // 60)
        self.mailer.send(
            OutgoingMail(
                to=email,
                subject="Your Paykeep sign-in code",
                text=(
                    f"Your Paykeep code is {code}\n\n"
                    f"Enter it on the checkout page of your order from {merchant.legal_name} "
                    f"within {minutes} minutes. It lets you pay from your Paykeep balance, "
                    "confirm that you received your order, and withdraw a refund request.\n\n"
                    "If you did not ask for this code, ignore this message: nobody can do "
                    "these things for you without it. Paykeep will never ask you for it by "
                    "phone.\n"
                ),
            )
        )
        return BuyerCodeSent(mask_email(email), expires_at_ns)

    def verify_buyer_code(self, token: str, code: str) -> tuple[BuyerSession, str]:
        """The buyer's code against the newest code of this checkout: a new buyer session and
        its secret token (``bs_...``; stored only as its SHA-256). A wrong code uses one of
        ``BUYER_CODE_ATTEMPTS_MAX`` attempts; the attempt is committed even though the call
        raises. Errors: ``buyer_code_invalid`` (wrong, used, or none sent),
        ``buyer_code_expired``, ``buyer_code_attempts_exceeded``."""
        if not is_code_shaped(code):
            raise BuyerCodeInvalid(f"the code is {BUYER_CODE_DIGITS} digits", param="code")
        signed_in: tuple[BuyerSession, str] | None = None
        with self.transaction() as tx:
            session = self.session_for_token(tx, token)
            order = self.order(tx, None, session.order_id)
            record = tx.repo.latest_buyer_code(session.id, order.buyer_id)
            verdict = Verdict.DEAD
            if record is not None:
                expected = self.cipher.lookup(
                    code_message(order.buyer_id, session.id, code), purpose=CODE_PURPOSE
                )
                after, verdict = verify_step(
                    record, same_digest(expected, record.code_hmac), tx.now_ns
                )
                if after != record and not tx.repo.save_buyer_code(record, after):
                    raise ConcurrentUpdate("the code was checked concurrently; try again")
                if verdict is Verdict.SIGNED_IN:
                    secret = BUYER_SESSION_PREFIX + secrets.token_urlsafe(
                        BUYER_SESSION_RANDOM_BYTES
                    )
                    buyer_session = BuyerSession(
                        self.new_id("bsess"), order.buyer_id, record.id,
                        tx.now_ns + BUYER_SESSION_TTL_S * NS_PER_S, tx.now_ns,
                    )  # fmt: skip
                    tx.repo.insert(
                        "payments_buyer_sessions",
                        {
                            "id": buyer_session.id,
                            "token_hash": _token_hash(secret),
                            "buyer_id": buyer_session.buyer_id,
                            "code_id": buyer_session.code_id,
                            "expires_at_ns": buyer_session.expires_at_ns,
                            "created_at_ns": buyer_session.created_at_ns,
                        },
                    )
                    signed_in = (buyer_session, secret)
        # Raised after the commit: the attempt (or the code's death) must be stored.
        if signed_in is not None:
            return signed_in
        if verdict is Verdict.EXPIRED:
            raise BuyerCodeExpired("this code has expired; ask for a new one", param="code")
        if verdict is Verdict.EXHAUSTED:
            raise BuyerCodeAttemptsExceeded("too many wrong codes; ask for a new one", param="code")
        raise BuyerCodeInvalid("this is not the code we sent", param="code")

    def _require_buyer(self, tx: Tx, buyer_id: str, buyer_session: str | None) -> BuyerSession:
        """The buyer session that proves ``buyer_id`` acts now, or ``401
        buyer_authentication_required`` — the same answer for none, unknown, expired and
        another buyer's session."""
        found = None
        if is_session_shaped(buyer_session):
            assert buyer_session is not None
            found = tx.repo.buyer_session_by_hash(_token_hash(buyer_session))
        if found is None or not found.proves(buyer_id, tx.now_ns):
            raise BuyerAuthenticationRequired(
                "this action needs the buyer to sign in with the code sent to their email",
                param="buyer_session",
            )
        return found

    def check_buyer_session(self, token: str, buyer_session: str | None) -> CheckoutSession:
        """The checkout of ``token`` if ``buyer_session`` proves its buyer acts
        (``_require_buyer``), in one read transaction: the edges ask before they start an
        idempotent request (the use cases check again)."""
        with self.reading() as tx:
            session = self.session_for_token(tx, token)
            order = tx.repo.order(session.order_id)  # the buyer alone: no line items
            if order is None:
                raise ResourceMissing(f"no order {session.order_id!r}", param="order")
            self._require_buyer(tx, order.buyer_id, buyer_session)
            return session

    def sign_out_buyer(self, token: str, buyer_session: str | None, *, everywhere: bool) -> int:
        """The buyer ends their session (``everywhere``: every session they have, e.g. after
        a code mail was seen by someone else); returns how many sessions ended. Only a live
        session of the checkout's buyer can do it: anything else is ``401
        buyer_authentication_required``, like the moves it protects."""
        with self.transaction() as tx:
            session = self.session_for_token(tx, token)
            order = self.order(tx, None, session.order_id)
            found = self._require_buyer(tx, order.buyer_id, buyer_session)
            return tx.repo.delete_buyer_sessions(found.buyer_id, None if everywhere else found.id)

    def end_buyer_sessions(self, tx: Tx, buyer_id: str) -> int:
        """The operator ends every session of a buyer (a mailbox reported compromised, a
        support case): the buyer must sign in again with a new code. Returns how many ended.
        Not the merchant's move: ending sessions again and again would let a merchant keep its
        buyer from confirming receipt or withdrawing a refund request."""
        buyer = self.buyer(tx, None, buyer_id)
        return tx.repo.delete_buyer_sessions(buyer.id, None)

    # ------------------------------------------------------------------ paying

    def _hold(self, tx: Tx, order: Order, funding: str) -> Order:
        """Buyer's wallet → merchant's available, pending (the escrow hold), and the order
        moves to awaiting_shipment: one transaction."""
        if self.risk.decide(tx.conn, "payment", self._risk_context(tx, order)) == "block":
            raise RiskDeclined("this payment was declined by our risk controls")
        hold_id = derived_id("order-hold", order.id)
        self._transfers(
            tx,
            [
                NewTransfer(
                    id=hold_id,
                    debit_account_id=account_id(wallet_name(order.buyer_id, order.currency)),
                    credit_account_id=account_id(available_name(order.merchant_id, order.currency)),
                    amount_minor=order.amount_minor,
                    currency=order.currency,
                    code=HOLD_CODE,
                    flags=int(TransferFlags.PENDING),
                    reference=f"order:{order.id}:hold",
                )
            ],
        )
        return self._move(
            tx, order, OrderAction.PAY,
            {"funding": funding, "hold_transfer_id": hold_id, "paid_at_ns": tx.now_ns},
        )  # fmt: skip

    def _risk_context(self, tx: Tx, order: Order) -> dict[str, Any]:
        """What the risk controls may know of an order's parties (names for screening only;
        they are never stored by the rules)."""
        merchant = self._merchant_of(tx, order)
        buyer_row = tx.repo.buyer_row(order.buyer_id)
        return {
            "order": order.id,
            "merchant": order.merchant_id,
            "merchant_name": merchant.legal_name,
            "merchant_country": merchant.country,
            "merchant_since_ns": merchant.created_at_ns,
            "buyer": order.buyer_id,
            "buyer_since_ns": int(buyer_row[4]) if buyer_row is not None else None,
            "amount_minor": order.amount_minor,
            "currency": order.currency,
        }

    def pay_from_wallet(self, tx: Tx, token: str, buyer_session: str | None) -> Order:
        """The buyer pays from their wallet balance (earlier top-ups, refunds). The checkout
        token alone is not enough (the merchant has it too): ``buyer_session`` must be a
        live session of the order's buyer."""
        # Who acts (identity) before what state the checkout is in: an expired checkout
        # answers the merchant 401 like any other, the route's early check agrees.
        session = self.session_for_token(tx, token)
        order = self.order(tx, None, session.order_id, lock=True)
        self._require_buyer(tx, order.buyer_id, buyer_session)
        _check_not_expired(session, tx.now_ns)
        transition(order.state, OrderAction.PAY)
        payment = self._payment_row(tx, order, "wallet", "succeeded")
        order = self._hold(tx, order, "wallet")
        self._complete_session(tx, session)
        self._event(tx, order.merchant_id, "payment.succeeded", payment.to_api())
        return order

    def choose_bank_transfer(self, tx: Tx, token: str) -> Order:
        """The buyer will pay by bank transfer with their reference: the order waits (its
        unpaid timer still runs) until the statement credits the wallet."""
        _session, order = self._open_session(tx, token)
        transition(order.state, OrderAction.PAY)
        if order.funding != "bank_transfer":
            tx.repo.save_order(order, {"funding": "bank_transfer"}, tx.now_ns)
            order = self.order(tx, None, order.id)
            self._event(tx, order.merchant_id, "order.updated", order.to_api())
        return order

    def pay_with_card(
        self, token: str, pan: str, exp_month: int, exp_year: int, cvc: str
    ) -> tuple[Order, Payment]:
        """Card payment: a sale through the acquirer credits the buyer's wallet from card
        clearing, then the hold is placed. Three steps, each durable; a crash between them
        leaves the money in the buyer's wallet (theirs) and the payment ``processing``, which
        :meth:`recover_card_payments` completes."""
        if self.cards is None or self.vault is None:
            raise PaymentMethodUnavailable("card payments are not configured", param="method")
        with self.transaction() as tx:
            _session, order = self._open_session(tx, token)
            transition(order.state, OrderAction.PAY)
            if any(
                p.state == "processing" for p in tx.repo.payments({"order_id": order.id}, 50, None)
            ):
                # Two submits at once would both reach the card network (and both charge).
                raise PaymentInProgress(
                    "a card payment of this order is already being processed", param="order"
                )
            if order.currency != self.cards.currency:
                raise PaymentMethodUnavailable(
                    f"cards are accepted in {self.cards.currency} only", param="method"
                )
            payment = self._payment_row(tx, order, "card", "processing")
        card = self.vault.tokenize(pan, exp_month, exp_year)
        try:
            result = self.cards.sale(
                card.token,
                order.amount_minor,
                order.currency,
                payment_id=payment.id,
                security_code=cvc,
                credit_account_name=wallet_name(order.buyer_id, order.currency),
            )
        except Exception:
            # The gateway keeps its own record; recover_card_payments settles what it became.
            with self.transaction() as tx:
                self._finish_payment(
                    tx, payment, "failed", "processing_error",
                    "The payment could not be processed. Please try again.", card.brand, card.last4,
                )  # fmt: skip
            raise
        return self._card_outcome(payment, result.approved, result.response_code,
                                  result.outcome.value, card.brand, card.last4, token)  # fmt: skip

    def _card_outcome(
        self, payment: Payment, approved: bool, response_code: str | None, outcome: str,
        brand: str, last4: str, token: str | None,
    ) -> tuple[Order, Payment]:  # fmt: skip
        error: PaymentDeclined | PaymentProcessorUnavailable | None = None
        with self.transaction() as tx:
            order = self.order(tx, None, payment.order_id, lock=True)
            if not approved:
                if outcome in ("unavailable", "timed_out_reversed", "reversal_pending"):
                    code, words = (
                        "processor_unavailable",
                        ("We could not reach your bank. You were not charged; please try again."),
                    )
                    error = PaymentProcessorUnavailable(words)
                else:
                    code, words = decline_reason(response_code)
                    error = PaymentDeclined(words, decline_code=code)
                payment = self._finish_payment(tx, payment, "failed", code, words, brand, last4)
            else:
                payment = self._finish_payment(tx, payment, "succeeded", None, None, brand, last4)
                if order.state is OrderState.CREATED:
                    order = self._hold(tx, order, "card")
                    if token is not None:
                        self._complete_session(tx, self.session_for_token(tx, token))
                # Otherwise (closed meanwhile, or paid twice) the money stays in the buyer's
                # wallet: theirs, visible in their balance, refundable.
        if error is not None:
            raise error
        return order, payment

    def _payment_row(self, tx: Tx, order: Order, method: str, state: str) -> Payment:
        payment = Payment(
            self.new_id("pay"), order.id, order.merchant_id, method, state,
            order.amount_minor, order.currency, None, None, None, None, None,
            tx.now_ns, tx.now_ns,
        )  # fmt: skip
        tx.repo.insert(
            "payments_payments",
            {
                "id": payment.id,
                "order_id": order.id,
                "merchant_id": order.merchant_id,
                "method": method,
                "state": state,
                "amount_minor": order.amount_minor,
                "currency": order.currency,
                "card_payment_id": payment.id if method == "card" else None,
                "created_at_ns": tx.now_ns,
                "updated_at_ns": tx.now_ns,
            },
        )
        return payment

    def _finish_payment(
        self, tx: Tx, payment: Payment, state: str, code: str | None, words: str | None,
        brand: str | None, last4: str | None,
    ) -> Payment:  # fmt: skip
        tx.repo.update(
            "payments_payments",
            payment.id,
            {
                "state": state,
                "decline_code": code,
                "decline_message": words,
                "card_brand": brand,
                "card_last4": last4,
                "updated_at_ns": tx.now_ns,
            },
        )
        done = replace(
            payment, state=state, decline_code=code, decline_message=words,
            card_brand=brand, card_last4=last4, updated_at_ns=tx.now_ns,
        )  # fmt: skip
        kind = "succeeded" if state == "succeeded" else "failed"
        self._event(tx, payment.merchant_id, f"payment.{kind}", done.to_api())
        return done

    def _complete_session(self, tx: Tx, session: CheckoutSession) -> None:
        if session.state == "open":
            tx.repo.update("payments_checkout_sessions", session.id, {"state": "complete"})
            self._event(
                tx, session.merchant_id, "checkout_session.completed",
                replace(session, state="complete").to_api(),
            )  # fmt: skip

    def recover_card_payments(self, min_age_s: float = 30.0) -> int:
        """Finish card payments left ``processing`` by a crash: ask the gateway what became
        of each (its own recovery reverses what was never answered)."""
        if self.cards is None:
            return 0
        from paykeep.gateway.cards.errors import CardPaymentNotFound

        batch = 100
        items = self.quarantine.open("payments.recover_card_payments")
        with self.reading() as tx:
            stale = [
                p
                for p in tx.repo.payments({"state": "processing"}, batch + items.fetch, None)
                if p.method == "card" and tx.now_ns - p.created_at_ns > min_age_s * NS_PER_S
            ]
        done = 0
        for payment in items.due(stale, batch, key=lambda p: p.id):
            with items.isolated(payment.id):
                try:
                    result = self.cards.payment(payment.id)
                except CardPaymentNotFound:
                    with self.transaction() as tx:
                        self._finish_payment(
                            tx, payment, "failed", "processing_error",
                            "The payment could not be processed. Please try again.", None, None,
                        )  # fmt: skip
                    done += 1
                    continue
                if result.outcome.value in ("approved", "declined", "unavailable",
                                            "timed_out_reversed"):  # fmt: skip
                    with contextlib.suppress(PaymentDeclined, PaymentProcessorUnavailable):
                        self._card_outcome(
                            payment, result.approved, result.response_code,
                            result.outcome.value, result.brand, result.last4, None,
                        )  # fmt: skip
                    done += 1
        return done

    # ------------------------------------------------------------------ refunds to the card

    def _reserve_card_refund(
        self, tx: Tx, order: Order, amount: int, refund_id: str | None
    ) -> None:
        """Money a refund just returned to the buyer's wallet goes back to the card that paid
        the order: in the refund's transaction, record the intent (if the refund has not
        already) and reserve the money — a pending transfer wallet ->
        ``clearing:card:<acquirer>``, so it cannot be spent meanwhile; :meth:`send_card_refunds`
        sends it outside any transaction. Orders paid from the wallet or by bank transfer
        keep the money in the wallet (their source is the wallet)."""
        intent = self._card_refund_row(tx, order, amount, refund_id)
        if intent is None:
            return
        assert intent.amount_minor == amount
        self._transfers(tx, [self._card_refund_reservation(intent)])

    def _card_refund_row(
        self, tx: Tx, order: Order, amount: int, refund_id: str | None
    ) -> CardRefund | None:
        """The card refund of ``refund_id`` (created if absent; always new for the timer's
        refund, which has no record), or None when the order was not paid by card."""
        if order.funding != "card" or self.cards is None:
            return None
        if refund_id is not None:
            existing = tx.repo.card_refunds({"refund_id": refund_id}, 1, None)
            if existing:
                return existing[0]
        paid = [
            p
            for p in tx.repo.payments({"order_id": order.id}, 50, None)
            if p.method == "card" and p.state == "succeeded"
        ]
        if not paid:
            return None
        # The first approved sale placed the hold; a second one (paid twice) stayed in the
        # wallet, so the hold's card is the oldest.
        card_payment = min(paid, key=lambda p: (p.created_at_ns, p.id))
        return self._insert_card_refund(tx, order.buyer_id, card_payment, amount,
                                        refund_id=refund_id)  # fmt: skip

    def _insert_card_refund(
        self, tx: Tx, buyer_id: str, card_payment: Payment, amount: int, *,
        refund_id: str | None = None, withdrawal_id: str | None = None,
    ) -> CardRefund:  # fmt: skip
        """Write a ``pending`` card refund of ``amount`` to the card of ``card_payment`` (a
        succeeded card payment of one of the buyer's orders), answering an order's refund or
        a buyer's withdrawal; the caller reserves its money in the same transaction."""
        assert card_payment.method == "card" and card_payment.state == "succeeded"
        assert refund_id is None or withdrawal_id is None
        intent_id = self.new_id("crf")
        reservation = _card_refund_reservation_id(intent_id, 0)
        intent = CardRefund(
            intent_id, card_payment.order_id, refund_id, card_payment.merchant_id, buyer_id,
            card_payment.id, amount, card_payment.currency, "pending", 1, reservation,
            card_payment.card_brand, card_payment.card_last4, None, None, tx.now_ns, tx.now_ns,
            limits.CARD_REFUND_ATTEMPTS_MAX, 0, withdrawal_id,
        )  # fmt: skip
        tx.repo.insert(
            "payments_card_refunds",
            {
                "id": intent.id,
                "order_id": intent.order_id,
                "refund_id": intent.refund_id,
                "merchant_id": intent.merchant_id,
                "buyer_id": intent.buyer_id,
                "card_payment_id": intent.card_payment_id,
                "amount_minor": intent.amount_minor,
                "currency": intent.currency,
                "state": intent.state,
                "attempts": intent.attempts,
                "reservation_transfer_id": intent.reservation_transfer_id,
                "card_brand": intent.card_brand,
                "card_last4": intent.card_last4,
                "attempts_max": intent.attempts_max,
                "withdrawal_id": intent.withdrawal_id,
                "created_at_ns": tx.now_ns,
                "updated_at_ns": tx.now_ns,
            },
        )
        return intent

    def _card_refund_reservation(self, intent: CardRefund) -> NewTransfer:
        """The pending transfer wallet -> ``clearing:card:<acquirer>`` that keeps a card
        refund's money from being spent until the gateway posts it (or its failure voids it)."""
        return NewTransfer(
            id=intent.reservation_transfer_id,
            debit_account_id=account_id(wallet_name(intent.buyer_id, intent.currency)),
            credit_account_id=self._card_clearing_id(),
            amount_minor=intent.amount_minor,
            currency=intent.currency,
            code=CARD_REFUND_HOLD_CODE,
            flags=int(TransferFlags.PENDING),
            reference=f"card-refund:{intent.id}:hold",
        )

    def card_refund(self, tx: Tx, scope: str | None, card_refund_id: str) -> CardRefund:
        found = tx.repo.card_refund(card_refund_id)
        if found is None or (scope is not None and found.merchant_id != scope):
            raise ResourceMissing(f"no card refund {card_refund_id!r}", param="card_refund")
        return found

    def send_card_refunds(self, limit: int = limits.CARD_REFUND_BATCH) -> dict[str, int]:
        """The worker pass: send each pending card refund through the gateway, outside any
        transaction, then record what became of it. Approved: the gateway posted the
        reservation (wallet -> clearing), the card is credited. Declined, or still not through
        after ``CARD_REFUND_ATTEMPTS_MAX`` attempts: the reservation is voided, the money stays
        in the buyer's wallet, and ``refund.card_refund_failed`` says so. Safe to run
        anywhere, any number of times: the gateway is idempotent on the attempt's id, and each
        outcome is recorded only while the intent is still pending."""
        if self.cards is None:
            return {}
        from paykeep.gateway.cards.errors import (
            CardLedgerPostingFailed,
            CardRefundInProgress,
        )
        from paykeep.gateway.cards.model import CardOutcome

        gateway: CardGateway = self.cards
        # Refunds a crashed or timed-out call left in flight are reversed (or posted) first,
        # so their attempts below find a final answer.
        gateway.recover_refunds()
        counts: dict[str, int] = {}
        # One card refund whose outcome cannot be recorded (a value the database refuses, a
        # row in a state nothing expects) is backed off and then parked; the rest go on.
        items = self.quarantine.open("payments.card_refunds")
        with self.reading() as tx:
            due = items.due(tx.repo.pending_card_refunds(limit + items.fetch), limit)
        for intent_id in due:
            with items.isolated(intent_id):
                with self.reading() as tx:
                    intent = tx.repo.card_refund(intent_id)
                if intent is None or intent.state != "pending":
                    continue
                try:
                    result = gateway.refund(
                        f"{intent.id}-{intent.attempts}",
                        intent.card_payment_id,
                        intent.amount_minor,
                        intent.currency,
                        account_id(wallet_name(intent.buyer_id, intent.currency)),
                        pending_transfer_id=intent.reservation_transfer_id,
                    )
                except (CardRefundInProgress, CardLedgerPostingFailed):
                    counts["in_progress"] = counts.get("in_progress", 0) + 1
                    continue  # another worker's call, or the gateway's sweep, finishes it
                except (InvalidInput, NotFound, Conflict) as exc:
                    # Refused before anything was sent (over the captured amount, payment not
                    # refundable, ...): a typed, final answer — the money stays in the wallet.
                    self._finish_card_refund(intent, "failed", None, exc.code)
                    counts["failed"] = counts.get("failed", 0) + 1
                    continue
                except PaykeepError as exc:
                    # The exchange broke off (e.g. a malformed answer): the refund may be on the
                    # wire, so it stays pending; the gateway's sweep reverses it and the next
                    # pass finds that final answer.
                    log.warning("card refund %s: %s; left for the next pass", intent.id, exc.code)
                    counts["error"] = counts.get("error", 0) + 1
                    continue
                if result.approved:
                    self._finish_card_refund(intent, "succeeded", result.response_code, None)
                    counts["succeeded"] = counts.get("succeeded", 0) + 1
                elif result.outcome is CardOutcome.REVERSAL_PENDING:
                    counts["in_progress"] = counts.get("in_progress", 0) + 1  # the sweep's job
                elif result.outcome is CardOutcome.DECLINED:
                    self._finish_card_refund(intent, "failed", result.response_code, "declined")
                    counts["failed"] = counts.get("failed", 0) + 1
                elif intent.attempts < intent.attempts_max:
                    # Unavailable, or timed out and reversed: nothing applied; another attempt
                    # (a new gateway refund id) on the next pass.
                    with self.transaction() as tx:
                        tx.conn.execute(
                            _q_card_refund_retry,
                            {"id": intent.id, "attempts": intent.attempts, "now": tx.now_ns},
                        )
                    counts["retry"] = counts.get("retry", 0) + 1
                else:
                    self._finish_card_refund(intent, "failed", result.response_code,
                                             result.outcome.value)  # fmt: skip
                    counts["failed"] = counts.get("failed", 0) + 1
        if items.failed:
            counts["isolated"] = len(items.failed)
        return counts

    def _finish_card_refund(
        self, intent: CardRefund, state: str, response_code: str | None, reason: str | None
    ) -> None:
        """Record a final outcome once (only while still pending). A failure voids the
        reservation: the money is the buyer's to spend again, in their wallet."""
        with self.transaction() as tx:
            current = tx.repo.card_refund(intent.id, lock=True)
            if current is None or current.state != "pending":
                return
            if state == "failed":
                self._transfers(
                    tx,
                    [
                        NewTransfer(
                            id=_card_refund_void_id(current.id, current.retries),
                            pending_id=current.reservation_transfer_id,
                            flags=int(TransferFlags.VOID_PENDING),
                            reference=f"card-refund:{intent.id}:void"
                            + _round_suffix(current.retries),
                        )
                    ],
                )
            tx.repo.update(
                "payments_card_refunds",
                intent.id,
                {"state": state, "response_code": response_code, "failure_reason": reason,
                 "updated_at_ns": tx.now_ns},
            )  # fmt: skip
            done = tx.repo.card_refund(intent.id)
            assert done is not None
            kind = "succeeded" if state == "succeeded" else "failed"
            self._event(tx, intent.merchant_id, f"refund.card_refund_{kind}", done.to_api())
            if done.withdrawal_id is not None:
                self._follow_card_withdrawal(tx, done.withdrawal_id)

    def _follow_card_withdrawal(self, tx: Tx, withdrawal_id: str) -> None:
        """In the transaction that records one of its card refunds' outcomes: once the last
        has one, the withdrawal to the card takes its final state (``settled``,
        ``partially_settled`` or ``failed``), with ``withdrawal.<state>``. The withdrawal row
        is locked (PostgreSQL) before its card refunds are read, so of two workers finishing
        two of them at once the second sees the first's outcome."""
        current = tx.repo.withdrawal(withdrawal_id, lock=True)
        assert current is not None and current.card_refunds
        outcome = card_withdrawal_outcome(c.state for c in current.card_refunds)
        if outcome == current.state:
            return  # still pending, or (cannot happen: outcomes are recorded once) done
        nxt = withdrawal_transition(
            WithdrawalState(current.state), outcome, WithdrawalDestination.SOURCE_CARD
        )
        tx.repo.update("payments_withdrawals", current.id,
                       {"state": nxt.value, "updated_at_ns": tx.now_ns})  # fmt: skip
        done = replace(current, state=nxt.value, updated_at_ns=tx.now_ns)
        self._event(tx, done.merchant_id, f"withdrawal.{nxt.value}", done.to_api())

    def retry_card_refund(self, tx: Tx, card_refund_id: str, operator_key: str) -> CardRefund:
        """The operator sends a failed card refund again (the buyer's card was blocked and is
        now reissued, the network was down for longer than the attempts lasted, ...): the
        money, which went back to the buyer's wallet when it failed, is reserved again in
        this transaction and a new round of ``CARD_REFUND_ATTEMPTS_MAX`` attempts starts on
        the next worker pass. If the buyer has spent it meanwhile, ``insufficient_funds``
        and nothing changes. At most ``CARD_REFUND_RETRIES_MAX`` retries per card refund."""
        intent = tx.repo.card_refund(card_refund_id, lock=True)
        if intent is None:
            raise ResourceMissing(f"no card refund {card_refund_id!r}", param="card_refund")
        if intent.withdrawal_id is not None:
            # The buyer asked for it and its withdrawal is over; the money is back in their
            # wallet, and whether it goes to the card again is theirs to ask (a new withdrawal).
            raise IllegalTransition(
                "this card refund paid out a buyer's withdrawal: only the buyer withdraws again",
                param="card_refund",
            )
        if intent.state != "failed":
            raise IllegalTransition(
                f"this card refund is {intent.state}; only a failed one can be sent again",
                param="card_refund",
            )
        if intent.retries >= limits.CARD_REFUND_RETRIES_MAX:
            raise CardRefundRetriesExhausted(
                f"this card refund was already sent again {intent.retries} times",
                param="card_refund",
            )
        retries = intent.retries + 1
        reservation = _card_refund_reservation_id(intent.id, retries)
        self._transfers(
            tx,
            [
                NewTransfer(
                    id=reservation,
                    debit_account_id=account_id(wallet_name(intent.buyer_id, intent.currency)),
                    credit_account_id=self._card_clearing_id(),
                    amount_minor=intent.amount_minor,
                    currency=intent.currency,
                    code=CARD_REFUND_HOLD_CODE,
                    flags=int(TransferFlags.PENDING),
                    reference=f"card-refund:{intent.id}:hold{_round_suffix(retries)}",
                )
            ],
        )
        # The next attempt has a new gateway refund id (``<id>-<attempts>``), so the gateway
        # treats it as a new refund; the network still bounds the card's refunds by its sale.
        attempts = intent.attempts + 1
        changed = tx.conn.execute(
            _q_card_refund_retried,
            {
                "id": intent.id,
                "attempts": attempts,
                "attempts_max": intent.attempts + limits.CARD_REFUND_ATTEMPTS_MAX,
                "retries": retries,
                "by": operator_key,
                "reservation": reservation,
                "now": tx.now_ns,
            },
        ).rowcount
        if changed != 1:  # the row is locked on PostgreSQL; SQLite has one writer
            raise ConcurrentUpdate("the card refund changed meanwhile; retry")
        done = tx.repo.card_refund(intent.id)
        assert done is not None
        self._event(tx, intent.merchant_id, "refund.card_refund_retried", done.to_api())
        return done

    def _card_clearing_id(self) -> int:
        if self.cards is None:
            raise PaymentMethodUnavailable("card payments are not configured", param="card")
        return self.cards.clearing_account_id()

    def card_refunds(
        self, tx: Tx, scope: str | None, limit: int, starting_after: str | None,
        *, order_id: str | None = None, state: str | None = None,
        withdrawal_id: str | None = None,
    ) -> list[CardRefund]:  # fmt: skip
        where: dict[str, Any] = {}
        if scope is not None:
            where["merchant_id"] = scope
        if order_id is not None:
            where["order_id"] = order_id
        if withdrawal_id is not None:
            where["withdrawal_id"] = withdrawal_id
        if state is not None:
            where["state"] = state
        return tx.repo.card_refunds(where, limit, starting_after)

    def settle_bank_transfers(self, limit: int = TIMER_SWEEP_BATCH) -> int:
        """Orders waiting for a bank transfer are paid from the wallet once the statement
        has credited enough."""
        items = self.quarantine.open("payments.settle_bank_transfers")
        with self.reading() as tx:
            waiting = items.due(tx.repo.bank_transfer_orders(limit + items.fetch), limit)
        paid = 0
        for order_id in waiting:
            try:
                with (
                    items.isolated(order_id, expected=(InsufficientFunds,)),
                    self.transaction() as tx,
                ):
                    order = self.order(tx, None, order_id, lock=True)
                    if order.state is not OrderState.CREATED:
                        continue
                    if not self._wallet_covers(tx, order):
                        continue
                    payment = self._payment_row(tx, order, "bank_transfer", "succeeded")
                    order = self._hold(tx, order, "bank_transfer")
                    self._event(tx, order.merchant_id, "payment.succeeded", payment.to_api())
                    paid += 1
            except InsufficientFunds:
                continue
        return paid

    def _wallet_covers(self, tx: Tx, order: Order) -> bool:
        """Whether the buyer's wallet covers ``order`` without touching money a card sale
        has just put there for another of their orders (a card payment still
        ``processing``: its sale may have credited the wallet, its hold is not placed yet)."""
        wallet_id = account_id(wallet_name(order.buyer_id, order.currency))
        row = tx.conn.execute(_q_wallet, {"id": wallet_id}).first()
        if row is None:
            return False
        available = int(row[0]) - int(row[1]) - int(row[2])
        reserved = int(
            tx.conn.execute(
                _q_card_in_flight, {"buyer": order.buyer_id, "currency": order.currency}
            ).scalar_one()
        )
        return available - reserved >= order.amount_minor

    # ------------------------------------------------------------------ shipping

    def ship(
        self, tx: Tx, scope: str | None, order_id: str, carrier: str, tracking_number: str
    ) -> tuple[Order, Shipment]:
        order = self.order(tx, scope, order_id, lock=True)
        _check_tracking(carrier, tracking_number)
        transition(order.state, OrderAction.SHIP)
        shipment = self._new_shipment(tx, order, "outbound", carrier, tracking_number)
        order = self._move(tx, order, OrderAction.SHIP, {"shipped_at_ns": tx.now_ns})
        return order, shipment

    def _new_shipment(
        self, tx: Tx, order: Order, direction: str, carrier: str, tracking: str
    ) -> Shipment:
        if tx.repo.shipment_by_tracking(carrier, tracking) is not None:
            raise PaymentsInputInvalid(
                "this tracking number is already used for another shipment",
                param="tracking_number",
            )
        shipment = Shipment(
            self.new_id("shp"), order.id, order.merchant_id, direction, carrier, tracking,
            "label_created", tx.now_ns, tx.now_ns,
        )  # fmt: skip
        tx.repo.insert(
            "payments_shipments",
            {
                "id": shipment.id,
                "order_id": order.id,
                "merchant_id": order.merchant_id,
                "direction": direction,
                "carrier": carrier,
                "tracking_number": tracking,
                "state": shipment.state,
                "created_at_ns": tx.now_ns,
                "updated_at_ns": tx.now_ns,
            },
        )
        self._event(tx, order.merchant_id, "shipment.created", shipment.to_api())
        return shipment

    def shipment(self, tx: Tx, scope: str | None, shipment_id: str) -> Shipment:
        found = tx.repo.shipment(shipment_id)
        if found is None or (scope is not None and found.merchant_id != scope):
            raise ResourceMissing(f"no shipment {shipment_id!r}", param="shipment")
        return found

    def shipment_event(
        self,
        tx: Tx,
        shipment: Shipment,
        kind: str,
        *,
        source: str,
        external_id: str | None = None,
        occurred_at_ns: int | None = None,
    ) -> Shipment:
        """Record a tracking event (from the merchant or a signed carrier webhook). Events
        are idempotent per (source, external id); the state only moves forward. A delivered
        outbound shipment starts the buyer's confirmation window."""
        try:
            event = ShipmentEvent(kind)
        except ValueError:
            raise PaymentsInputInvalid(
                "kind is picked_up, in_transit, delivered or returned", param="kind"
            ) from None
        occurred = tx.now_ns if occurred_at_ns is None else occurred_at_ns
        # Re-read under the row lock: two concurrent events must not both move the state.
        locked = tx.repo.shipment(shipment.id, lock=True)
        if locked is None:
            raise ResourceMissing(f"no shipment {shipment.id!r}", param="shipment")
        shipment = locked
        if external_id is not None:
            seen = tx.conn.execute(
                _q_seen, {"s": shipment.id, "src": source, "e": external_id}
            ).first()
            if seen is not None:
                return shipment
        tx.repo.insert(
            "payments_shipment_events",
            {
                "id": self.new_id("sev"),
                "shipment_id": shipment.id,
                "kind": event.value,
                "source": source,
                "external_id": external_id,
                "occurred_at_ns": occurred,
                "recorded_at_ns": tx.now_ns,
            },
        )
        if SHIPMENT_ORDER[event] <= SHIPMENT_ORDER.get(shipment.state, 0):
            return shipment
        tx.repo.update(
            "payments_shipments", shipment.id, {"state": event.value, "updated_at_ns": tx.now_ns}
        )
        shipment = replace(shipment, state=event.value, updated_at_ns=tx.now_ns)
        self._event(tx, shipment.merchant_id, "shipment.updated", shipment.to_api())
        if event is ShipmentEvent.DELIVERED and shipment.direction == "outbound":
            order = self.order(tx, None, shipment.order_id, lock=True)
            if order.state is OrderState.AWAITING_RECEIPT and order.delivered_at_ns is None:
                self._move(
                    tx, order, OrderAction.DELIVER, {"delivered_at_ns": occurred},
                    timer_since=occurred, delivered=True,
                )  # fmt: skip
        if event is ShipmentEvent.RETURNED and shipment.direction == "outbound":
            # The parcel went back to the merchant: the buyer never got the goods, so the
            # clock must not release the money. The order waits for the merchant's refund
            # (or a new shipment is not possible: the platform decides on a dispute).
            order = self.order(tx, None, shipment.order_id, lock=True)
            if order.state is OrderState.AWAITING_RECEIPT and not order.paused:
                self._pause(tx, order)
        return shipment

    # ------------------------------------------------------------------ release / refund

    def _release(
        self,
        tx: Tx,
        order: Order,
        refund_minor: int,
        action: OrderAction,
        *,
        reviewed: bool = False,
        refund_id: str | None = None,
        refund_event_id: str | None = None,
    ) -> Order:
        """End the hold: post ``held - refund_minor`` to the merchant (the rest returns to the
        buyer), the fee to ``platform:fees`` and the reserve to the merchant's reserve — one
        linked batch. A full refund voids the hold. What returns to the buyer is reported to
        the risk controls as a refund (``refund:<refund id>``, or ``refund_event_id`` for a
        refund without a record) and, for a card-paid order, reserved for a refund to the card
        (:meth:`_reserve_card_refund`)."""
        merchant = self._merchant_of(tx, order)
        release = plan_release(order.amount_minor, refund_minor, merchant.fees)
        transition(order.state, action)  # an illegal action is refused before anything else
        if release.to_merchant > 0:
            verdict = (
                "allow"
                if reviewed
                else self.risk.decide(tx.conn, "release", self._risk_context(tx, order))
            )
            if verdict == "block":
                raise RiskDeclined("the release of this order was stopped by our risk controls")
            if verdict != "allow":
                raise IllegalTransition(
                    "the release of this order is held for a compliance review", param="order"
                )
        transition(order.state, action)
        assert order.hold_transfer_id is not None
        if release.to_buyer > 0:
            # Decided after the release's gate: a held release rolls back the refund with it,
            # and a refund that did not happen must not count in the buyer's refund history.
            event_id = refund_event_id if refund_id is None else f"refund:{refund_id}"
            assert event_id is not None, "every refund names what it answers to"
            self._report_refund(tx, order, release.to_buyer, event_id)
        self._transfers(tx, _release_transfers(order, release))
        if release.to_buyer > 0:
            self._reserve_card_refund(tx, order, release.to_buyer, refund_id)
        if release.reserve:
            tx.repo.insert(
                "payments_reserves",
                {
                    "id": self.new_id("rsv"),
                    "merchant_id": order.merchant_id,
                    "order_id": order.id,
                    "currency": order.currency,
                    "amount_minor": release.reserve,
                    "release_at_ns": tx.now_ns + merchant.fees.reserve_hold_s * NS_PER_S,
                },
            )
        return self._move(
            tx, order, action,
            {
                "fee_minor": release.fee,
                "released_minor": release.to_merchant,
                "refunded_minor": release.to_buyer,
                "disputed": False,
            },
        )  # fmt: skip

    def _report_refund(self, tx: Tx, order: Order, amount: int, event_id: str) -> None:
        """Escrowed money going back to the buyer, told to the risk controls inside the
        refund's transaction (merchant -> buyer, ``amount`` what returns): serial refunds are
        a fraud pattern (``refund_abuse``). The answer never stops the refund — it returns the
        buyer's own money to its source, and refusing it would freeze customer money and harm
        the buyer of a bad merchant: a ``review`` (a ``block`` counts as one for a refund)
        opens the buyer's case, or joins the one open, and the money moves."""
        context = {**self._risk_context(tx, order), "amount_minor": amount, "event_id": event_id}
        self.risk.decide(tx.conn, "refund", context)

    def confirm(
        self, tx: Tx, order_id: str, *, token: str | None = None, buyer_session: str | None = None
    ) -> Order:
        """The buyer confirms receipt (through their checkout session, signed in: a live
        ``buyer_session`` of the order's buyer) — or the operator (no token)."""
        if token is not None:
            session = self.session_for_token(tx, token)
            if session.order_id != order_id:
                raise ResourceMissing(f"no order {order_id!r}", param="order")
        order = self.order(tx, None, order_id, lock=True)
        if token is not None:
            self._require_buyer(tx, order.buyer_id, buyer_session)
        if tx.repo.open_refunds(order.id):
            raise IllegalTransition("a refund request on this order is open", param="order")
        # The operator confirming (no buyer token) is the compliance decision on a release
        # held for review: it does not ask the risk controls again.
        return self._release(tx, order, 0, OrderAction.CONFIRM, reviewed=token is None)

    def refund(
        self, tx: Tx, scope: str | None, order_id: str, amount_minor: int | None,
        reason: str | None = None,
    ) -> tuple[Order, Refund]:  # fmt: skip
        """The merchant (or the operator) refunds at once: all (void) or part (the remainder
        is released to the merchant and the order ends)."""
        order = self.order(tx, scope, order_id, lock=True)
        amount = order.amount_minor if amount_minor is None else amount_minor
        _check_refund_amount(order, amount)
        _check_reason(reason)
        if tx.repo.open_refunds(order.id):
            # The buyer's claim (and any dispute over it) is settled through that claim: agree
            # to it, or let the platform decide — never two refunds racing for one hold.
            raise IllegalTransition(
                "the buyer's refund request on this order is open: agree to it or await the "
                "platform's decision",
                param="order",
            )
        refund = self._new_refund(
            tx, order, amount, reason, False, RefundState.COMPLETED, announce=False
        )
        # The card refund is recorded before the refund is announced, so the event says
        # where the money goes (card or wallet); _refund_order reserves it.
        self._card_refund_row(tx, order, amount, refund.id)
        refund = self.refund_record(tx, None, refund.id)
        self._event(tx, order.merchant_id, f"refund.{refund.state.value}", refund.to_api())
        order = self._refund_order(tx, order, amount, refund.id)
        return order, refund

    def _refund_order(
        self, tx: Tx, order: Order, amount: int, refund_id: str | None = None
    ) -> Order:
        action = (
            OrderAction.REFUND_FULL if amount == order.amount_minor else OrderAction.REFUND_PARTIAL
        )
        return self._release(tx, order, amount, action, refund_id=refund_id)

    def _new_refund(
        self, tx: Tx, order: Order, amount: int, reason: str | None, return_required: bool,
        state: RefundState, *, announce: bool = True,
    ) -> Refund:  # fmt: skip
        refund = Refund(
            self.new_id("ref"), order.id, order.merchant_id, amount, reason, return_required,
            state, tx.now_ns, tx.now_ns,
        )  # fmt: skip
        tx.repo.insert(
            "payments_refunds",
            {
                "id": refund.id,
                "order_id": order.id,
                "merchant_id": order.merchant_id,
                "amount_minor": amount,
                "reason": reason,
                "return_required": return_required,
                "state": state.value,
                "created_at_ns": tx.now_ns,
                "updated_at_ns": tx.now_ns,
            },
        )
        refund = replace(refund, funding=order.funding)
        if announce:
            self._event(tx, order.merchant_id, f"refund.{state.value}", refund.to_api())
        return refund

    def request_refund(
        self, tx: Tx, token: str, order_id: str, amount_minor: int | None, reason: str | None
    ) -> Refund:
        """The buyer asks for a refund (through their checkout session); the order's timer
        pauses until the request ends."""
        session = self.session_for_token(tx, token)
        if session.order_id != order_id:
            raise ResourceMissing(f"no order {order_id!r}", param="order")
        order = self.order(tx, None, order_id, lock=True)
        if order.state not in (OrderState.AWAITING_SHIPMENT, OrderState.AWAITING_RECEIPT):
            raise IllegalTransition(
                f"an order that is {order.state.value} cannot be refunded", param="order"
            )
        if tx.repo.open_refunds(order.id):
            raise IllegalTransition("a refund request on this order is already open", param="order")
        amount = order.amount_minor if amount_minor is None else amount_minor
        _check_refund_amount(order, amount)
        _check_reason(reason)
        refund = self._new_refund(tx, order, amount, reason, False, RefundState.REQUESTED)
        self._pause(tx, order)
        return refund

    def _pause(self, tx: Tx, order: Order) -> Order:
        """A claim is open on the order (refund request, dispute, parcel returned): its timer
        stops, so no money is released or refunded by the clock meanwhile."""
        tx.repo.save_order(order, {"disputed": True}, tx.now_ns)
        paused = self.order(tx, None, order.id)
        self._event(tx, order.merchant_id, "order.updated", paused.to_api())
        return paused

    def _resume(self, tx: Tx, order: Order) -> Order:
        """A refund request ended without moving money: the order's timer restarts from now."""
        merchant = self._merchant_of(tx, order)
        timer, due = timer_for(
            order.state, merchant.timers, tx.now_ns, delivered=order.delivered_at_ns is not None
        )
        tx.repo.save_order(
            order, {"disputed": False, "timer": timer, "timer_due_ns": due}, tx.now_ns
        )
        resumed = self.order(tx, None, order.id)
        self._event(tx, order.merchant_id, "order.updated", resumed.to_api())
        return resumed

    def refund_action(
        self,
        tx: Tx,
        refund_id: str,
        action: RefundAction,
        *,
        scope: str | None = None,
        token: str | None = None,
        buyer_session: str | None = None,
        carrier: str | None = None,
        tracking_number: str | None = None,
    ) -> Refund:
        """Merchant actions (agree, agree_with_return, refuse, receive_return) are scoped by
        merchant; buyer actions (ship_return, escalate, cancel) by the checkout token — and
        cancel (withdrawing the claim gives the merchant its money back in time) also by a
        live ``buyer_session`` of the order's buyer."""
        refund = tx.repo.refund(refund_id, lock=True)
        if refund is None or (scope is not None and refund.merchant_id != scope):
            raise ResourceMissing(f"no refund {refund_id!r}", param="refund")
        buyer_actions = (RefundAction.SHIP_RETURN, RefundAction.ESCALATE, RefundAction.CANCEL)
        if action in buyer_actions:
            if token is None:
                raise IllegalTransition(f"only the buyer can {action.value}", param="action")
            if self.session_for_token(tx, token).order_id != refund.order_id:
                raise ResourceMissing(f"no refund {refund_id!r}", param="refund")
            if action in BUYER_SIGNED_IN_REFUND_ACTIONS:
                buyer_id = self.order(tx, None, refund.order_id).buyer_id
                self._require_buyer(tx, buyer_id, buyer_session)
        elif token is not None or action in (
            RefundAction.DECIDE_FOR_BUYER,
            RefundAction.DECIDE_FOR_MERCHANT,
        ):
            raise IllegalTransition(f"the buyer cannot {action.value}", param="action")
        new_state = refund_transition(refund.state, action)
        order = self.order(tx, None, refund.order_id, lock=True)
        if action is RefundAction.SHIP_RETURN:
            _check_tracking(carrier or "", tracking_number or "")
            assert carrier is not None and tracking_number is not None
            self._new_shipment(tx, order, "return", carrier, tracking_number)
        if action is RefundAction.ESCALATE:
            self._open_dispute(tx, order, refund)
        if action is RefundAction.AGREE_WITH_RETURN:
            tx.repo.update("payments_refunds", refund.id, {"return_required": True})
            refund = replace(refund, return_required=True)
        if new_state is RefundState.COMPLETED:
            # Recorded before the refund's event, so it says where the money goes.
            self._card_refund_row(tx, order, refund.amount_minor, refund.id)
        refund = self._set_refund(tx, refund, new_state)
        if new_state is RefundState.COMPLETED:
            self._refund_order(tx, order, refund.amount_minor, refund.id)
        elif new_state is RefundState.CANCELLED:
            self._resume(tx, order)
        return refund

    def _set_refund(self, tx: Tx, refund: Refund, state: RefundState) -> Refund:
        tx.repo.update(
            "payments_refunds", refund.id, {"state": state.value, "updated_at_ns": tx.now_ns}
        )
        refund = self.refund_record(tx, None, refund.id)  # with its card refund, if any
        self._event(tx, refund.merchant_id, f"refund.{state.value}", refund.to_api())
        return refund

    def refund_record(self, tx: Tx, scope: str | None, refund_id: str) -> Refund:
        found = tx.repo.refund(refund_id)
        if found is None or (scope is not None and found.merchant_id != scope):
            raise ResourceMissing(f"no refund {refund_id!r}", param="refund")
        return found

    # ------------------------------------------------------------------ disputes

    def _open_dispute(self, tx: Tx, order: Order, refund: Refund) -> Dispute:
        dispute = Dispute(
            self.new_id("dsp"), order.id, refund.id, order.merchant_id, "open", refund.reason,
            None, None, None, None, tx.now_ns, tx.now_ns,
        )  # fmt: skip
        tx.repo.insert(
            "payments_disputes",
            {
                "id": dispute.id,
                "order_id": order.id,
                "refund_id": refund.id,
                "merchant_id": order.merchant_id,
                "state": "open",
                "reason": refund.reason,
                "created_at_ns": tx.now_ns,
                "updated_at_ns": tx.now_ns,
            },
        )
        self._event(tx, order.merchant_id, "dispute.created", dispute.to_api())
        return dispute

    def decide_dispute(
        self, tx: Tx, dispute_id: str, buyer_share_bp: int, decided_by: str, note: str | None
    ) -> Dispute:
        """The platform's decision: the buyer gets ``buyer_share_bp`` / 10,000 of the held
        amount (split exactly with ``allocate``), the merchant the rest; the order ends."""
        dispute = tx.repo.dispute(dispute_id, lock=True)
        if dispute is None:
            raise ResourceMissing(f"no dispute {dispute_id!r}", param="dispute")
        if dispute.state != "open":
            raise IllegalTransition("this dispute is already decided", param="dispute")
        _check_reason(note)
        order = self.order(tx, None, dispute.order_id, lock=True)
        buyer, merchant_share = dispute_split(order.amount_minor, order.currency, buyer_share_bp)
        if dispute.refund_id is not None:
            refund = tx.repo.refund(dispute.refund_id, lock=True)
            assert refund is not None
            action = RefundAction.DECIDE_FOR_BUYER if buyer else RefundAction.DECIDE_FOR_MERCHANT
            refund_state = refund_transition(refund.state, action)
            refund = replace(refund, amount_minor=buyer or refund.amount_minor)
            tx.repo.update(
                "payments_refunds", refund.id,
                {"amount_minor": buyer or refund.amount_minor, "updated_at_ns": tx.now_ns},
            )  # fmt: skip
            if buyer:
                # Recorded before the refund's event, so it says where the share goes.
                self._card_refund_row(tx, order, buyer, refund.id)
            self._set_refund(tx, refund, refund_state)
        order = self.order(tx, None, order.id, lock=True)
        if buyer == 0 and order.state is OrderState.AWAITING_RECEIPT:
            self._release(tx, order, 0, OrderAction.CONFIRM)
        elif buyer == 0:
            # Wholly for the merchant before shipping: the order goes on (it must still
            # ship) and, the claim being over, its timer restarts.
            self._resume(tx, order)
        else:
            self._refund_order(tx, order, buyer, dispute.refund_id)
        tx.repo.update(
            "payments_disputes",
            dispute.id,
            {
                "state": "decided",
                "buyer_share_minor": buyer,
                "merchant_share_minor": merchant_share,
                "decided_by": decided_by,
                "decision_note": note,
                "updated_at_ns": tx.now_ns,
            },
        )
        dispute = replace(
            dispute, state="decided", buyer_share_minor=buyer,
            merchant_share_minor=merchant_share, decided_by=decided_by, decision_note=note,
            updated_at_ns=tx.now_ns,
        )  # fmt: skip
        self._event(tx, dispute.merchant_id, "dispute.decided", dispute.to_api())
        return dispute

    def dispute(self, tx: Tx, scope: str | None, dispute_id: str) -> Dispute:
        found = tx.repo.dispute(dispute_id)
        if found is None or (scope is not None and found.merchant_id != scope):
            raise ResourceMissing(f"no dispute {dispute_id!r}", param="dispute")
        return found

    # ------------------------------------------------------------------ timers

    def run_timers(self, limit: int = TIMER_SWEEP_BATCH) -> dict[str, int]:
        """Fire due timers: close unpaid orders, refund unshipped ones, auto-confirm. Each order
        in its own transaction; safe with several workers (PostgreSQL: ``SKIP LOCKED``; the
        optimistic version check makes a double fire a no-op on either database)."""
        fired: dict[str, int] = {}
        items = self.quarantine.open("payments.timers")
        with self.reading() as tx:
            due = items.due(tx.repo.due_orders(tx.now_ns, limit + items.fetch), limit)
        for order_id in due:
            try:
                with (
                    items.isolated(order_id, expected=(IllegalTransition, InsufficientFunds)),
                    self.transaction() as tx,
                ):
                    locked = tx.repo.order(order_id, skip_locked=True)
                    if locked is None:
                        continue  # another worker holds it
                    order = locked
                    if order.timer is None or order.paused or order.timer_due_ns is None:
                        continue
                    if order.timer_due_ns > tx.now_ns:
                        continue
                    timer = Timer(order.timer)
                    action = TIMER_ACTIONS[timer]
                    if action is OrderAction.CLOSE:
                        self._move(tx, order, action, {})
                    elif action is OrderAction.REFUND_FULL:
                        # The timer's refund has no record: the order names it (an order is
                        # refunded by its timer at most once).
                        self._release(
                            tx, order, order.amount_minor, action,
                            refund_event_id=f"refund:{order.id}:timer",
                        )  # fmt: skip
                    else:
                        self._release(tx, order, 0, action)
                    fired[timer.value] = fired.get(timer.value, 0) + 1
            except (IllegalTransition, InsufficientFunds) as exc:
                fired[f"skipped:{exc.code}"] = fired.get(f"skipped:{exc.code}", 0) + 1
        if items.failed:
            fired["isolated"] = len(items.failed)
        return fired

    def expire_claims(self, limit: int = TIMER_SWEEP_BATCH) -> dict[str, int]:
        """A claim never freezes the money: a refund request the merchant leaves unanswered,
        or a returned parcel it leaves unconfirmed, goes to the platform as a dispute; one the
        buyer abandons (refused and never escalated, agreed but never sent back) lapses and
        the order's timer restarts."""
        moved: dict[str, int] = {}
        items = self.quarantine.open("payments.expire_claims")
        with self.reading() as tx:
            idle = items.due(
                tx.repo.idle_refunds(tx.now_ns, CLAIM_IDLE_S, limit + items.fetch),
                limit,
                key=lambda r: str(r[0]),
            )
        for refund_id, state in idle:
            action = CLAIM_TIMEOUT_ACTIONS[RefundState(state)]
            try:
                with (
                    items.isolated(refund_id, expected=(IllegalTransition,)),
                    self.transaction() as tx,
                ):
                    refund = tx.repo.refund(refund_id, lock=True)
                    if refund is None or refund.state.value != state:
                        continue
                    order = self.order(tx, None, refund.order_id, lock=True)
                    new_state = refund_transition(refund.state, action)
                    if action is RefundAction.ESCALATE:
                        self._open_dispute(tx, order, refund)
                    self._set_refund(tx, refund, new_state)
                    if new_state is RefundState.CANCELLED:
                        self._resume(tx, order)
                    moved[action.value] = moved.get(action.value, 0) + 1
            except IllegalTransition:
                continue
        if items.failed:
            moved["isolated"] = len(items.failed)
        return moved

    def release_reserves(self, limit: int = TIMER_SWEEP_BATCH) -> int:
        """Move reserves whose hold period has passed back to the merchant's available."""
        released = 0
        # Each reserve in its own transaction: one the ledger or the database refuses is
        # backed off (then parked), and releases no other merchant's reserve any later.
        items = self.quarantine.open("payments.release_reserves")
        with self.reading() as tx:
            due = items.due(
                tx.repo.due_reserves(tx.now_ns, limit + items.fetch, lock=False),
                limit,
                key=lambda r: str(r[0]),
            )
        for reserve in due:
            with items.isolated(str(reserve[0])), self.transaction() as tx:
                claimed = tx.repo.due_reserve(str(reserve[0]), tx.now_ns)
                if claimed is None:
                    continue  # released meanwhile, or another worker holds it
                rid, merchant_id, currency, amount = claimed
                self._transfers(
                    tx,
                    [
                        NewTransfer(
                            id=derived_id("reserve-release", str(rid)),
                            debit_account_id=account_id(reserve_name(merchant_id, currency)),
                            credit_account_id=account_id(available_name(merchant_id, currency)),
                            amount_minor=int(amount),
                            currency=currency,
                            code=RESERVE_RELEASE_CODE,
                        )
                    ],
                )
                tx.repo.update("payments_reserves", str(rid), {"released_at_ns": tx.now_ns})
                released += 1
        return released

    # ------------------------------------------------------------------ balances, payouts

    def merchant_balances(self, tx: Tx, scope: str | None, merchant_id: str) -> list[Balances]:
        merchant = self.merchant(tx, scope, merchant_id)
        accounts = self.ledger.lookup_accounts(
            [
                account_id(available_name(merchant.id, merchant.currency)),
                account_id(reserve_name(merchant.id, merchant.currency)),
            ]
        )
        available = accounts.get(account_id(available_name(merchant.id, merchant.currency)))
        reserve = accounts.get(account_id(reserve_name(merchant.id, merchant.currency)))
        return [
            Balances(
                merchant.currency,
                available.available if available else 0,
                available.credits_pending if available else 0,
                reserve.balance_posted if reserve else 0,
            )
        ]

    def buyer_balances(self, tx: Tx, scope: str | None, buyer_id: str) -> list[Balances]:
        self.buyer(tx, scope, buyer_id)
        prefix = f"buyer:{buyer_id}:wallet:"
        rows = tx.conn.execute(_q_named, {"p": prefix + "%"}).all()
        return [
            Balances(
                str(r[1]),
                int(r[4]) - int(r[3]) - int(r[2]),
                int(r[2]),
                0,
            )
            for r in rows
        ]

    def request_payout(
        self, scope: str | None, merchant_id: str, amount_minor: int, request_id: str
    ) -> MerchantPayout:
        """Withdraw ``available`` to the merchant's verified IBAN through the gateway's pain.001
        batches. ``request_id`` makes it idempotent (the API passes its idempotency key)."""
        if self.payouts is None:
            raise PayoutNotAllowed("payouts are not configured", param="amount_minor")
        with self.reading() as tx:
            merchant = self.merchant(tx, scope, merchant_id)
            iban_enc = tx.repo.merchant_iban(merchant.id)
        if iban_enc is None or not merchant.payout_iban_verified:
            raise PayoutNotAllowed("the payout IBAN is not verified yet", param="payout_iban")
        if type(amount_minor) is not int or amount_minor <= 0:
            raise PaymentsInputInvalid("amount_minor is a positive integer", param="amount_minor")
        payout_context = {
            "event_id": f"payout:{merchant.id}:{request_id}",
            "merchant": merchant.id,
            "merchant_name": merchant.legal_name,
            "merchant_country": merchant.country,
            "merchant_since_ns": merchant.created_at_ns,
            "amount_minor": amount_minor,
            "currency": merchant.currency,
        }
        if self.risk.decide(None, "payout", payout_context) != "allow":
            raise RiskDeclined("this payout was stopped by our risk controls")
        iban = self.cipher.open(iban_enc, purpose="merchant.iban", row_id=merchant.id)
        from paykeep.gateway.payouts.errors import PayoutInsufficientFunds

        try:
            payout = self.payouts.request(
                merchant.id, amount_minor, merchant.currency,
                available_name(merchant.id, merchant.currency), merchant.legal_name[:70], iban,
                request_id=f"{merchant.id}:{request_id}",
                remittance=f"Paykeep payout {merchant.id}",
            )  # fmt: skip
        except PayoutInsufficientFunds:
            raise InsufficientFunds("the available balance does not cover this payout") from None
        return self._record_payout(
            merchant.id, payout.payout_id, amount_minor, merchant.currency, payout.state
        )

    def _record_payout(
        self,
        merchant_id: str,
        gateway_payout_id: int,
        amount: int,
        currency: str,
        state: str,
        returned: PayoutReturn | None = None,
    ) -> MerchantPayout:
        """The merchant's record of a gateway payout, with ``payout.created``: written once
        (a unique index on the gateway payout), by the request or, if it died first, by the
        worker pass (:meth:`sync_payouts`); whichever comes second gets the first's row."""
        try:
            with self.transaction() as tx:
                existing = tx.repo.payouts({"gateway_payout_id": gateway_payout_id}, 1, None)
                if existing:
                    return existing[0]
                record = MerchantPayout(
                    self.new_id("po"), merchant_id, gateway_payout_id, amount, currency, state,
                    tx.now_ns, tx.now_ns, returned,
                )  # fmt: skip
                tx.repo.insert(
                    "payments_payouts",
                    {
                        "id": record.id,
                        "merchant_id": merchant_id,
                        "gateway_payout_id": gateway_payout_id,
                        "amount_minor": amount,
                        "currency": currency,
                        "state": state,
                        "created_at_ns": tx.now_ns,
                        "updated_at_ns": tx.now_ns,
                        **({} if returned is None else _return_columns(returned)),
                    },
                )
                self._event(tx, merchant_id, "payout.created", record.to_api())
            return record
        except sa.exc.IntegrityError:
            with self.reading() as tx:
                existing = tx.repo.payouts({"gateway_payout_id": gateway_payout_id}, 1, None)
            if not existing:
                raise
            return existing[0]

    def _adopt_unrecorded_payouts(self, min_age_s: float) -> int:
        """Gateway payouts of merchants that have no record here: the request moved the money
        (the gateway's transfer and payout commit together) and died before recording it.
        Older than ``min_age_s``, so a request still under way records its own; at most a day
        old (the pass runs every bank cycle: a bounded, indexed look, not the whole table)."""
        assert self.payouts is not None
        with self.reading() as tx:
            before = tx.now_ns - int(min_age_s * NS_PER_S)
            rows = tx.conn.execute(
                _q_unrecorded_payouts,
                {"since": before - 86_400 * NS_PER_S, "before": before, "n": TIMER_SWEEP_BATCH},
            ).all()
        items = self.quarantine.open("payments.adopt_payouts")
        adopted = 0
        for gateway_id, merchant_id, amount, currency, state in rows:
            if str(gateway_id) in items.blocked:
                continue
            with items.isolated(str(gateway_id)):
                returned = None
                if state == "returned":
                    returned = _payout_return(self.payouts.get(int(gateway_id)))
                self._record_payout(
                    merchant_id, int(gateway_id), int(amount), currency, state, returned
                )
                adopted += 1
        return adopted

    def sync_payouts(
        self,
        unrecorded_min_age_s: float = PAYOUT_RECORD_RECOVERY_S,
        limit: int = PAYOUT_SYNC_BATCH,
    ) -> int:
        """Copy the gateway's payout states (batched, accepted, settled, returned) onto the
        merchants' payout records, with an event for each change; first record the payouts a
        request made and died before recording (older than ``unrecorded_min_age_s``). A
        return is normally recorded in the gateway's own transaction
        (:meth:`payout_returned_within`); a settled payout sent back by a process without
        this service listening (``paykeep payouts settle``) is caught up here. Each pass asks
        the gateway about the next ``limit`` open records (``OpenItemsWalk``), so records that
        stay open for days never hide the ones behind them."""
        if self.payouts is None:
            return 0
        changed = self._adopt_unrecorded_payouts(unrecorded_min_age_s)
        items = self.quarantine.open("payments.sync_payouts")
        with self.reading() as tx:
            open_ = [
                p
                for p in self._open_payouts.page(tx.repo.open_payouts, limit)
                if p.id not in items.blocked
            ]
            open_ += [
                p
                for p in tx.repo.payouts_sent_back_unrecorded(TIMER_SWEEP_BATCH)
                if p.id not in items.blocked
            ]
        for record in open_:
            if record.gateway_payout_id is None:
                continue
            with items.isolated(record.id):
                gateway = self.payouts.get(record.gateway_payout_id)
                if gateway.state == record.state:
                    continue
                with self.transaction() as tx:
                    current = tx.repo.payout(record.id, lock=True)
                    assert current is not None
                    if current.state == gateway.state:
                        continue  # the gateway's transaction (or another worker) recorded it
                    if gateway.state == "returned":
                        self._payout_returned(tx, current, gateway)
                    else:
                        state = gateway.state.value
                        tx.repo.update(
                            "payments_payouts", current.id,
                            {"state": state, "updated_at_ns": tx.now_ns},
                        )  # fmt: skip
                        self._event(
                            tx, current.merchant_id, f"payout.{state}",
                            replace(current, state=state, updated_at_ns=tx.now_ns).to_api(),
                        )  # fmt: skip
                changed += 1
        return changed

    def payout_returned_within(self, conn: Connection, returned: ReturnedPayout) -> None:
        """The payout gateway returned one of its payouts (``PayoutService.on_returned``), in
        ``conn``, its transaction: if the payout is a merchant's payout or a buyer's bank
        withdrawal, its record becomes ``returned`` with the bank's reason, with its event
        (``payout.returned`` / ``withdrawal.returned``), in that same transaction — and a
        merchant's payout IBAN the reason puts in doubt is unverified (:meth:`_payout_returned`).
        Any other payout (an operator's, a return to sender) is not ours: nothing."""
        tx = Tx(conn, self.clock.now_ns(), PaymentsRepository(conn, postgres=self._postgres))
        gateway_id = returned.payout.payout_id
        record = tx.repo.payout_by_gateway(gateway_id, lock=True)
        if record is not None:
            if record.state != "returned":
                self._payout_returned(tx, record, returned.payout)
            return
        withdrawal = tx.repo.withdrawal_by_gateway(gateway_id, lock=True)
        if withdrawal is not None and withdrawal.state != WithdrawalState.RETURNED:
            self._withdrawal_returned(tx, withdrawal, returned.payout)

    def _payout_returned(self, tx: Tx, record: MerchantPayout, gateway: Payout) -> None:
        """``record`` (read locked) follows its gateway payout to ``returned``: state, how and
        why, ``payout.returned``. Sent back by the payee's bank for a reason that puts the
        account in doubt (closed, wrong, blocked, another holder; or no reason we can read:
        ``account_needs_checking``), the merchant's payout IBAN — if it is still the account
        the payout went to — is unverified (``merchant.updated``): the next payout is refused
        (``payout_not_allowed``) until an operator verifies it again, or the merchant gives a
        new one and it is verified. The money is back in ``available`` already (the gateway's
        transfers), less what the payee's bank kept."""
        from paykeep.gateway.payouts.model import ReturnKind, account_needs_checking

        returned = _payout_return(gateway)
        done = replace(record, state="returned", updated_at_ns=tx.now_ns, returned=returned)
        tx.repo.update("payments_payouts", record.id, {"state": "returned",
                       "updated_at_ns": tx.now_ns, **_return_columns(returned)})  # fmt: skip
        self._event(tx, record.merchant_id, "payout.returned", done.to_api())
        if gateway.return_kind is not ReturnKind.SENT_BACK or not account_needs_checking(
            gateway.return_reason_code
        ):
            return
        merchant = tx.repo.merchant(record.merchant_id)
        iban_enc = tx.repo.merchant_iban(record.merchant_id)
        if merchant is None or iban_enc is None or not merchant.payout_iban_verified:
            return
        assert self.payouts is not None
        current = self.cipher.open(iban_enc, purpose="merchant.iban", row_id=merchant.id)
        if compact_iban(current) != compact_iban(
            self.payouts.creditor_iban_within(tx.conn, gateway.payout_id)
        ):
            return  # the merchant has moved to another account since: that one stands
        tx.repo.update("payments_merchants", merchant.id, {"payout_iban_verified": False})
        unverified = replace(merchant, payout_iban_verified=False)
        self._event(tx, merchant.id, "merchant.updated", unverified.to_api())

    def _withdrawal_returned(self, tx: Tx, withdrawal: Withdrawal, gateway: Payout) -> None:
        """``withdrawal`` (read locked) follows its gateway payout to ``returned`` — rejected
        by the bank, or sent back by the buyer's bank after it settled (``settled ->
        returned``, :data:`withdrawals.WITHDRAWAL_TRANSITIONS`) — with how and why and
        ``withdrawal.returned``. Its money is back in the wallet (the gateway's transfers,
        less a fee the buyer's bank kept) and its source's headroom is free again."""
        nxt = withdrawal_transition(WithdrawalState(withdrawal.state), WithdrawalState.RETURNED)
        returned = _payout_return(gateway)
        tx.repo.update("payments_withdrawals", withdrawal.id, {"state": nxt.value,
                       "updated_at_ns": tx.now_ns, **_return_columns(returned)})  # fmt: skip
        done = replace(withdrawal, state=nxt.value, updated_at_ns=tx.now_ns, returned=returned)
        self._event(tx, withdrawal.merchant_id, "withdrawal.returned", done.to_api())

    # ------------------------------------------------------------------ buyer withdrawals

    def request_withdrawal(
        self,
        token: str,
        buyer_session: str | None,
        amount_minor: int,
        currency: str,
        request_id: str,
        *,
        source_topup: str | None = None,
        destination: str = WithdrawalDestination.SOURCE_BANK_ACCOUNT.value,
    ) -> Withdrawal:
        """The signed-in buyer of checkout ``token`` takes ``amount_minor`` out of their
        ``currency`` wallet, back to a bank account their money came from: the sending IBAN of
        top-up ``source_topup`` (one of theirs, credited), or by default of their newest
        credited top-up whose IBAN the statement named. See ``withdrawals`` for the bound.
        With ``destination`` ``source_card``, back to the cards that paid in instead
        (:meth:`_request_card_withdrawal`).

        Order: shape → identity (the buyer session) → idempotency (``request_id``, per buyer:
        a replay returns the original, other details are ``payout_request_id_reused``) →
        references (wallet, source) → limits (source headroom, wallet balance) → the risk
        controls → reservation (the same checks again under a lock on the buyer, the row
        written ``pending``) → the gateway payout (wallet → ``clearing:payout``) →
        ``requested`` with ``withdrawal.created``. Anything refused before the gateway's
        payout exists leaves nothing behind (a reservation the gateway refused is deleted).
        """
        if destination == WithdrawalDestination.SOURCE_CARD:
            return self._request_card_withdrawal(
                token, buyer_session, amount_minor, currency, request_id, source_topup
            )
        if destination != WithdrawalDestination.SOURCE_BANK_ACCOUNT:
            raise PaymentsInputInvalid(
                "destination is source_bank_account or source_card", param="destination"
            )
        if self.payouts is None:
            raise PayoutNotAllowed("payouts are not configured", param="amount_minor")
        amount = check_amount(amount_minor)
        if not is_currency(currency):
            raise PaymentsInputInvalid("currency is an ISO 4217 code", param="currency")
        if source_topup is not None and (
            not isinstance(source_topup, str) or not _TOPUP_ID.fullmatch(source_topup)
        ):
            raise PaymentsInputInvalid("source_topup is a top-up id (top_...)",
                                       param="source_topup")  # fmt: skip
        fingerprint = hashlib.sha256(
            f"{amount}|{currency}|{source_topup or ''}".encode()
        ).hexdigest()
        opened = self._open_withdrawal(
            token, buyer_session, request_id, fingerprint, amount, currency,
            lambda tx, buyer_id: self._withdrawal_source(
                tx, buyer_id, amount, currency, source_topup
            ),
        )  # fmt: skip
        if isinstance(opened, Withdrawal):
            return opened
        buyer_id, gateway_request, merchant_id = opened
        withdrawal_id = self.new_id(WITHDRAWAL_ID_PREFIX)
        with self.transaction() as tx:
            self._require_buyer(tx, buyer_id, buyer_session)
            tx.repo.lock_buyer(buyer_id)
            existing = tx.repo.withdrawal_by_request(gateway_request)
            if existing is not None:  # a concurrent replay reserved first
                return _withdrawal_replay(existing, fingerprint)
            source = self._withdrawal_source(tx, buyer_id, amount, currency, source_topup)
            topup_id, iban = source
            tx.repo.insert(
                "payments_withdrawals",
                {
                    "id": withdrawal_id,
                    "request_id": gateway_request,
                    "fingerprint": fingerprint,
                    "buyer_id": buyer_id,
                    "merchant_id": merchant_id,
                    "destination": WithdrawalDestination.SOURCE_BANK_ACCOUNT.value,
                    "source_topup_id": topup_id,
                    "iban_enc": self.cipher.seal(iban, purpose=IBAN_PURPOSE, row_id=withdrawal_id),
                    "iban_last4": iban[-4:],
                    "amount_minor": amount,
                    "currency": currency,
                    "state": WithdrawalState.PENDING.value,
                    "gateway_payout_id": None,
                    "created_at_ns": tx.now_ns,
                    "updated_at_ns": tx.now_ns,
                },
            )
            reserved = tx.repo.withdrawal(withdrawal_id)
            assert reserved is not None
        try:
            payout = self._withdrawal_payout(reserved)
        except PaykeepError:
            # Nothing moved (the gateway checks before its ledger transfer) and nothing was
            # announced: the reservation goes, so a refused request leaves no trace.
            with self.transaction() as tx:
                tx.repo.delete_pending_withdrawal(withdrawal_id)
            raise
        return self._withdrawal_requested(reserved, payout.payout_id)

    def _request_card_withdrawal(
        self, token: str, buyer_session: str | None, amount_minor: int, currency: str,
        request_id: str, source_topup: str | None,
    ) -> Withdrawal:  # fmt: skip
        """A withdrawal back to the cards that paid in: card refunds against the buyer's
        captured card payments in ``currency``, newest first, each at most what its capture
        has left (``allocate_card_refunds``), through the card refund machinery (the worker
        pass sends them; their outcomes settle the withdrawal, ``_follow_card_withdrawal``).

        Order: shape → identity (the buyer session) → idempotency (``request_id``, per buyer,
        shared with bank withdrawals) → references (the wallet) → limits (a capture exists,
        the captures' room, the wallet) → the risk controls → **one transaction** under a
        lock on the buyer: the same checks again, the withdrawal row, its card refunds and
        their reservations (pending transfers wallet -> ``clearing:card``), and
        ``withdrawal.created``. Nothing is written unless all of it is: the whole amount
        leaves the buyer's spendable balance at once, or none of it does."""
        amount = check_amount(amount_minor)
        if not is_currency(currency):
            raise PaymentsInputInvalid("currency is an ISO 4217 code", param="currency")
        if source_topup is not None:
            raise PaymentsInputInvalid(
                "source_topup names a bank account: a withdrawal to the card takes none",
                param="source_topup",
            )
        if self.cards is None:
            raise PaymentMethodUnavailable("card payments are not configured",
                                           param="destination")  # fmt: skip
        fingerprint = hashlib.sha256(
            f"{amount}|{currency}|{WithdrawalDestination.SOURCE_CARD.value}".encode()
        ).hexdigest()
        # The risk controls decide as for a bank withdrawal: going back to the card that
        # paid in is still money leaving the platform at the buyer's request.
        opened = self._open_withdrawal(
            token, buyer_session, request_id, fingerprint, amount, currency,
            lambda tx, buyer_id: self._card_withdrawal_parts(tx, buyer_id, amount, currency),
        )  # fmt: skip
        if isinstance(opened, Withdrawal):
            return opened
        buyer_id, request, merchant_id = opened
        withdrawal_id = self.new_id(WITHDRAWAL_ID_PREFIX)
        with self.transaction() as tx:
            self._require_buyer(tx, buyer_id, buyer_session)
            tx.repo.lock_buyer(buyer_id)
            existing = tx.repo.withdrawal_by_request(request)
            if existing is not None:  # a concurrent replay wrote it first
                return _withdrawal_replay(existing, fingerprint)
            parts = self._card_withdrawal_parts(tx, buyer_id, amount, currency)
            tx.repo.insert(
                "payments_withdrawals",
                {
                    "id": withdrawal_id,
                    "request_id": request,
                    "fingerprint": fingerprint,
                    "buyer_id": buyer_id,
                    "merchant_id": merchant_id,
                    "destination": WithdrawalDestination.SOURCE_CARD.value,
                    "source_topup_id": None,
                    "iban_enc": None,
                    "iban_last4": None,
                    "amount_minor": amount,
                    "currency": currency,
                    "state": WithdrawalState.PENDING.value,
                    "gateway_payout_id": None,
                    "created_at_ns": tx.now_ns,
                    "updated_at_ns": tx.now_ns,
                },
            )
            reservations = []
            for payment_id, part in parts:
                payment = tx.repo.payment(payment_id)
                assert payment is not None
                intent = self._insert_card_refund(tx, buyer_id, payment, part,
                                                  withdrawal_id=withdrawal_id)  # fmt: skip
                reservations.append(self._card_refund_reservation(intent))
            # The ledger has the last word on the wallet: short, and all of it rolls back.
            self._transfers(tx, reservations)
            done = tx.repo.withdrawal(withdrawal_id)
            assert done is not None
            self._event(tx, done.merchant_id, "withdrawal.created", done.to_api())
        return done

    def _open_withdrawal(
        self, token: str, buyer_session: str | None, request_id: str, fingerprint: str,
        amount: int, currency: str, check: Callable[[Tx, str], object],
    ) -> Withdrawal | tuple[str, str, str | None]:  # fmt: skip
        """What both kinds of withdrawal do before writing anything: identity (the buyer
        session) → idempotency (a replay of ``request_id`` returns the original withdrawal)
        → ``check(tx, buyer id)``, the destination's references and limits (it raises) → the
        risk controls (a declined one leaves only the rules' own record of the decision).
        Returns the replayed withdrawal, or ``(buyer id, gateway request id, merchant id)``."""
        with self.reading() as tx:
            buyer_id = self.order(tx, None, self.session_for_token(tx, token).order_id).buyer_id
            self._require_buyer(tx, buyer_id, buyer_session)
            gateway_request = f"{buyer_id}:{request_id}"
            existing = tx.repo.withdrawal_by_request(gateway_request)
            if existing is not None:
                return _withdrawal_replay(existing, fingerprint)
            check(tx, buyer_id)
            buyer_row = tx.repo.buyer_row(buyer_id)
            assert buyer_row is not None
        context = {
            "event_id": f"withdrawal:{gateway_request}",
            "buyer": buyer_id,
            "buyer_since_ns": int(buyer_row[4]),
            "amount_minor": amount,
            "currency": currency,
        }
        if self.risk.decide(None, "withdrawal", context) != "allow":
            raise RiskDeclined("this withdrawal was stopped by our risk controls")
        merchant_id: str | None = buyer_row[1]
        return buyer_id, gateway_request, merchant_id

    def _card_withdrawal_parts(
        self, tx: Tx, buyer_id: str, amount: int, currency: str
    ) -> list[tuple[str, int]]:
        """References and limits of a withdrawal to the card: ``(card payment id, amount)`` of
        each card refund it takes, or the first broken rule as a typed error."""
        wallet = tx.conn.execute(
            _q_wallet, {"id": account_id(wallet_name(buyer_id, currency))}
        ).first()
        if wallet is None:
            raise PaymentsInputInvalid(f"the buyer has no {currency} wallet", param="currency")
        # A bank withdrawal reserved but not yet at the gateway has not left the wallet in the
        # ledger: its money is spoken for all the same.
        reserved = int(
            tx.conn.execute(
                _q_reserved_bank_withdrawals, {"b": buyer_id, "c": currency}
            ).scalar_one()
        )
        available = int(wallet[0]) - int(wallet[1]) - int(wallet[2]) - reserved
        captures = [
            CardCapture(str(r[0]), int(r[1]), int(r[2]), int(r[3]))
            for r in tx.repo.card_captures(buyer_id, currency)
        ]
        return allocate_card_refunds(amount, captures, available)

    def _withdrawal_source(
        self, tx: Tx, buyer_id: str, amount: int, currency: str, source_topup: str | None
    ) -> tuple[str, str]:
        """References and limits of a withdrawal: ``(top-up id, compact IBAN)`` of its source,
        or the first broken rule as a typed error (``check_withdrawal``)."""
        wallet = tx.conn.execute(
            _q_wallet, {"id": account_id(wallet_name(buyer_id, currency))}
        ).first()
        if wallet is None:
            raise PaymentsInputInvalid(f"the buyer has no {currency} wallet", param="currency")
        sources = self._withdrawal_sources(tx, buyer_id, currency)
        chosen: Sequence[Any] | None
        if source_topup is None:
            chosen = sources[0] if sources else None
        else:
            topup = tx.repo.topup(source_topup)
            if topup is None or topup.buyer_id != buyer_id:
                raise ResourceMissing(f"no top-up {source_topup!r}", param="source_topup")
            chosen = next((row for row in sources if row[0] == source_topup), None)
            if chosen is None:
                raise WithdrawalNoSource(
                    "this top-up is not a credited one in this currency whose sending account "
                    "is known",
                    param="source_topup",
                )
        standing = self._standing_withdrawals(tx, buyer_id, currency)
        headroom = source_headroom(
            ((str(row[1]), int(row[3])) for row in sources),
            ((str(row[0]), int(row[1])) for row in standing),
        )
        # Reserved (pending) withdrawals have not left the wallet yet: they are spoken for.
        reserved = sum(int(row[1]) for row in standing if row[2] == WithdrawalState.PENDING)
        available = int(wallet[0]) - int(wallet[1]) - int(wallet[2]) - reserved
        iban = None if chosen is None else str(chosen[1])
        check_withdrawal(amount, iban, headroom, available)
        assert chosen is not None and iban is not None
        return str(chosen[0]), compact_iban(iban)

    def _withdrawal_sources(
        self, tx: Tx, buyer_id: str, currency: str
    ) -> list[tuple[str, str, str | None, int]]:
        """``(top-up id, IBAN, sender's name or None, amount)`` of the buyer's credited top-ups
        whose statement line names a sending IBAN, newest first: opened from the line's sealed
        copy, under the purposes and row id the statements context sealed them with."""
        out = []
        for (
            topup_id,
            iban_enc,
            name_enc,
            amount,
            statement_row_id,
            line,
        ) in tx.repo.withdrawal_sources(buyer_id, currency):
            row_id = entry_row_id(int(statement_row_id), int(line))
            iban = self.cipher.open(
                bytes(iban_enc), purpose=COUNTERPARTY_IBAN_PURPOSE, row_id=row_id
            )
            if not iban:
                continue  # the bank named no account: not a source
            name = None if name_enc is None else self.cipher.open(
                bytes(name_enc), purpose=COUNTERPARTY_NAME_PURPOSE, row_id=row_id
            )  # fmt: skip
            out.append((str(topup_id), iban, name, int(amount)))
        return out

    def _standing_withdrawals(
        self, tx: Tx, buyer_id: str, currency: str
    ) -> list[tuple[str, int, str]]:
        """``(source IBAN, amount, state)`` of the buyer's standing withdrawals (opened)."""
        return [
            (
                self.cipher.open(
                    bytes(iban_enc),
                    purpose=COUNTERPARTY_IBAN_PURPOSE,
                    row_id=entry_row_id(int(statement_row_id), int(line)),
                ),
                int(amount),
                str(state),
            )
            for iban_enc, amount, state, statement_row_id, line in tx.repo.standing_withdrawals(
                buyer_id, currency
            )
        ]

    def _withdrawal_payout(self, withdrawal: Withdrawal) -> Payout:
        """The gateway payout of a reserved withdrawal (idempotent on its request id): the
        wallet → ``clearing:payout`` now, the pain.001 line at the next batch."""
        from paykeep.gateway.payouts.errors import PayoutInsufficientFunds

        assert self.payouts is not None
        with self.reading() as tx:
            sources = self._withdrawal_sources(tx, withdrawal.buyer_id, withdrawal.currency)
            name_enc = tx.repo.buyer_name_enc(withdrawal.buyer_id)
        holder = next((r[2] for r in sources if r[0] == withdrawal.source_topup_id), None)
        # The account holder as the statement named them; else the buyer's name.
        name = str(holder).strip() if holder else ""
        if not name and name_enc is not None:
            name = self.cipher.open(name_enc, purpose="buyer.name", row_id=withdrawal.buyer_id)
        with self.reading() as tx:
            row = tx.conn.execute(_q_withdrawal_iban, {"id": withdrawal.id}).first()
        assert row is not None
        iban = self.cipher.open(bytes(row[0]), purpose=IBAN_PURPOSE, row_id=withdrawal.id)
        try:
            return self.payouts.request(
                withdrawal.buyer_id, withdrawal.amount_minor, withdrawal.currency,
                wallet_name(withdrawal.buyer_id, withdrawal.currency),
                name[: limits.PAYOUT_CREDITOR_NAME_LENGTH_MAX] or "Paykeep customer", iban,
                request_id=withdrawal.request_id,
                remittance=f"Paykeep withdrawal {withdrawal.id}",
            )  # fmt: skip
        except PayoutInsufficientFunds:
            raise InsufficientFunds(
                "the wallet's balance does not cover this withdrawal", param="amount_minor"
            ) from None

    def _withdrawal_requested(self, reserved: Withdrawal, gateway_payout_id: int) -> Withdrawal:
        """The gateway holds the payout: ``pending`` → ``requested``, ``withdrawal.created``."""
        with self.transaction() as tx:
            current = tx.repo.withdrawal(reserved.id, lock=True)
            assert current is not None
            if current.state != WithdrawalState.PENDING:
                return current  # the other of the request and the recovery finished it
            state = withdrawal_transition(WithdrawalState.PENDING, WithdrawalState.REQUESTED)
            tx.repo.update(
                "payments_withdrawals",
                current.id,
                {"state": state.value, "gateway_payout_id": gateway_payout_id,
                 "updated_at_ns": tx.now_ns},
            )  # fmt: skip
            done = replace(current, state=state.value, gateway_payout_id=gateway_payout_id,
                           updated_at_ns=tx.now_ns)  # fmt: skip
            self._event(tx, done.merchant_id, "withdrawal.created", done.to_api())
        return done

    def sync_withdrawals(
        self,
        limit: int = WITHDRAWAL_SYNC_BATCH,
        pending_age_s: int = WITHDRAWAL_PENDING_RECOVERY_S,
    ) -> int:
        """Follow the buyers' withdrawals at the gateway (batched, accepted, settled,
        returned — a returned payout's money is already back in the wallet, by the gateway),
        with a ``withdrawal.<state>`` event for each change; and finish a reservation older
        than ``pending_age_s`` whose request died before the gateway answered (the gateway is
        idempotent on the request id): ``requested``, or ``failed`` if it refuses now."""
        if self.payouts is None:
            return 0
        items = self.quarantine.open("payments.sync_withdrawals")
        with self.reading() as tx:
            open_ = [
                w
                for w in self._open_withdrawals.page(tx.repo.open_withdrawals, limit)
                if w.id not in items.blocked
            ]
            # Sent back after they settled, by a process without this service listening.
            open_ += items.due(
                tx.repo.withdrawals_sent_back_unrecorded(limit + items.fetch), limit,
                key=lambda w: w.id,
            )  # fmt: skip
            now_ns = tx.now_ns
        changed = 0
        for record in open_:
            with items.isolated(record.id):
                if record.state == WithdrawalState.PENDING:
                    if now_ns - record.created_at_ns >= pending_age_s * NS_PER_S:
                        changed += self._recover_withdrawal(record)
                    continue
                assert record.gateway_payout_id is not None
                gateway = self.payouts.get(record.gateway_payout_id)
                state = WithdrawalState(gateway.state)
                if state == record.state:
                    continue
                with self.transaction() as tx:
                    current = tx.repo.withdrawal(record.id, lock=True)
                    assert current is not None
                    if current.state == state:
                        continue  # another worker copied it
                    if state == WithdrawalState.RETURNED:
                        self._withdrawal_returned(tx, current, gateway)
                    else:
                        nxt = withdrawal_transition(WithdrawalState(current.state), state)
                        tx.repo.update(
                            "payments_withdrawals", current.id,
                            {"state": nxt.value, "updated_at_ns": tx.now_ns},
                        )  # fmt: skip
                        self._event(
                            tx, current.merchant_id, f"withdrawal.{nxt.value}",
                            replace(current, state=nxt.value, updated_at_ns=tx.now_ns).to_api(),
                        )  # fmt: skip
                changed += 1
        return changed

    def _recover_withdrawal(self, record: Withdrawal) -> int:
        try:
            payout = self._withdrawal_payout(record)
        except PaykeepError as error:
            with self.transaction() as tx:
                current = tx.repo.withdrawal(record.id, lock=True)
                if current is None or current.state != WithdrawalState.PENDING:
                    return 0
                state = withdrawal_transition(WithdrawalState.PENDING, WithdrawalState.FAILED)
                tx.repo.update("payments_withdrawals", current.id,
                               {"state": state.value, "updated_at_ns": tx.now_ns})  # fmt: skip
                failed = replace(current, state=state.value, updated_at_ns=tx.now_ns)
                self._event(tx, current.merchant_id, "withdrawal.failed",
                            {**failed.to_api(), "failure_code": error.code})  # fmt: skip
            return 1
        self._withdrawal_requested(record, payout.payout_id)
        return 1

    def withdrawals(
        self, tx: Tx, scope: str | None, limit: int, starting_after: str | None,
        *, buyer_id: str | None = None,
    ) -> list[Withdrawal]:  # fmt: skip
        where: dict[str, Any] = {}
        if scope is not None:
            where["merchant_id"] = scope
        if buyer_id is not None:
            where["buyer_id"] = buyer_id
        return tx.repo.withdrawals(where, limit, starting_after)

    # ------------------------------------------------------------------ carriers

    def register_carrier(self, tx: Tx, name: str) -> str:
        """A carrier that may post signed tracking webhooks; returns its secret once."""
        if not isinstance(name, str) or not _CARRIER.fullmatch(name):
            raise PaymentsInputInvalid("carrier is 1 to 64 of a-z 0-9 _ -", param="name")
        secret = "csec_" + secrets.token_urlsafe(32)
        carrier_id = self.new_id("car")
        tx.repo.insert(
            "payments_carriers",
            {
                "id": carrier_id,
                "name": name,
                "secret_enc": self.cipher.seal(secret, purpose="carrier.secret", row_id=name),
                "created_at_ns": tx.now_ns,
            },
        )
        return secret

    def carrier_secret(self, tx: Tx, name: str) -> str | None:
        row = tx.conn.execute(_q_carrier, {"n": name}).first()
        if row is None:
            return None
        return self.cipher.open(bytes(row[0]), purpose="carrier.secret", row_id=name)


def _release_transfers(order: Order, release: Release) -> list[NewTransfer]:
    assert order.hold_transfer_id is not None
    if release.to_merchant == 0:
        return [
            NewTransfer(
                id=derived_id("order-void", order.id),
                pending_id=order.hold_transfer_id,
                flags=int(TransferFlags.VOID_PENDING),
                reference=f"order:{order.id}:void",
            )
        ]
    available = account_id(available_name(order.merchant_id, order.currency))
    chain = [
        NewTransfer(
            id=derived_id("order-release", order.id),
            pending_id=order.hold_transfer_id,
            amount_minor=release.to_merchant,
            flags=int(TransferFlags.POST_PENDING),
            reference=f"order:{order.id}:release",
        )
    ]
    if release.fee:
        chain.append(
            NewTransfer(
                id=derived_id("order-fee", order.id),
                debit_account_id=available,
                credit_account_id=account_id(fees_name(order.currency)),
                amount_minor=release.fee,
                currency=order.currency,
                code=FEE_CODE,
                reference=f"order:{order.id}:fee",
            )
        )
    if release.reserve:
        chain.append(
            NewTransfer(
                id=derived_id("order-reserve", order.id),
                debit_account_id=available,
                credit_account_id=account_id(reserve_name(order.merchant_id, order.currency)),
                amount_minor=release.reserve,
                currency=order.currency,
                code=RESERVE_CODE,
                reference=f"order:{order.id}:reserve",
            )
        )
    linked = int(TransferFlags.LINKED)
    return [
        replace(t, flags=t.flags | linked) if i < len(chain) - 1 else t for i, t in enumerate(chain)
    ]


def _round_suffix(retries: int) -> str:
    """What tells a card refund's rounds apart in its ledger ids and references: nothing for
    the first (its ids are what they always were), ``:retry:<n>`` for the n-th retry."""
    return "" if retries == 0 else f":retry:{retries}"


def _card_refund_reservation_id(card_refund_id: str, retries: int) -> int:
    """The pending transfer that reserves a card refund's money, one per round."""
    return derived_id("card-refund-hold", card_refund_id + _round_suffix(retries))


def _card_refund_void_id(card_refund_id: str, retries: int) -> int:
    """The void of a round's reservation when that round fails (one per round, like it)."""
    return derived_id("card-refund-void", card_refund_id + _round_suffix(retries))


def _payout_return(gateway: Payout) -> PayoutReturn:
    """How and why a returned gateway payout came back, as the payments records keep it."""
    assert gateway.return_kind is not None, gateway
    return PayoutReturn(
        gateway.return_kind.value, gateway.return_reason_code, gateway.return_reason,
        gateway.return_fee_minor or 0,
    )  # fmt: skip


def _return_columns(returned: PayoutReturn) -> dict[str, Any]:
    return {
        "return_kind": returned.kind,
        "return_reason_code": returned.reason_code,
        "return_reason": returned.reason,
        "return_fee_minor": returned.fee_minor,
    }


def _withdrawal_replay(existing: Withdrawal, fingerprint: str) -> Withdrawal:
    """A retry of the same request returns the original; other details are refused."""
    from paykeep.gateway.payouts.errors import PayoutRequestIdReused

    if existing.fingerprint != fingerprint:
        raise PayoutRequestIdReused(
            "this request id was used for another withdrawal", param="request_id"
        )
    return existing


def _check_iban(iban: str) -> str:
    """The payout IBAN, checked and compacted as the payout files will need it."""
    from paykeep.gateway.payouts.errors import PayoutIbanInvalid
    from paykeep.gateway.payouts.model import normalize_iban

    try:
        return normalize_iban(iban, "payout_iban")
    except PayoutIbanInvalid as exc:
        raise PaymentsInputInvalid(exc.message, param="payout_iban") from None


def _check_tracking(carrier: str, tracking: str) -> None:
    if not isinstance(carrier, str) or not _CARRIER.fullmatch(carrier):
        raise PaymentsInputInvalid("carrier is 1 to 64 of a-z 0-9 _ -", param="carrier")
    if not isinstance(tracking, str) or not _TRACKING.fullmatch(tracking):
        raise PaymentsInputInvalid(
            "tracking_number is 4 to 64 letters, digits or dashes", param="tracking_number"
        )


def _check_refund_amount(order: Order, amount: int) -> None:
    if type(amount) is not int or not 1 <= amount <= order.amount_minor:
        raise PaymentsInputInvalid(
            f"amount_minor is 1 to {order.amount_minor} for this order", param="amount_minor"
        )


def _check_reason(reason: str | None) -> None:
    if reason is not None and (not isinstance(reason, str) or len(reason) > REASON_MAX):
        raise PaymentsInputInvalid(f"reason is at most {REASON_MAX} characters", param="reason")


_q_seen = sa.text(
    "SELECT 1 FROM payments_shipment_events WHERE shipment_id = :s AND source = :src "
    "AND external_id = :e"
)
_q_named = sa.text(
    "SELECT name, currency, debits_pending, debits_posted, credits_posted FROM ledger_accounts "
    "WHERE name LIKE :p"
)
_q_withdrawal_iban = sa.text("SELECT iban_enc FROM payments_withdrawals WHERE id = :id")
_q_reserved_bank_withdrawals = sa.text(
    "SELECT COALESCE(SUM(amount_minor), 0) FROM payments_withdrawals "
    "WHERE buyer_id = :b AND currency = :c AND state = 'pending' "
    "AND destination = 'source_bank_account'"
)
_q_wallet = sa.text(
    "SELECT credits_posted, debits_posted, debits_pending FROM ledger_accounts WHERE id = :id"
)
_q_card_in_flight = sa.text(
    "SELECT COALESCE(SUM(p.amount_minor), 0) FROM payments_payments p "
    "JOIN payments_orders o ON o.id = p.order_id "
    "WHERE o.buyer_id = :buyer AND p.currency = :currency AND p.method = 'card' "
    "AND p.state = 'processing'"
)
_q_card_refund_retry = sa.text(
    "UPDATE payments_card_refunds SET attempts = attempts + 1, updated_at_ns = :now "
    "WHERE id = :id AND state = 'pending' AND attempts = :attempts"
)
_q_card_refund_retried = sa.text(
    "UPDATE payments_card_refunds SET state = 'pending', attempts = :attempts, "
    "attempts_max = :attempts_max, retries = :retries, retried_by = :by, "
    "reservation_transfer_id = :reservation, response_code = NULL, failure_reason = NULL, "
    "updated_at_ns = :now WHERE id = :id AND state = 'failed'"
)
_q_unrecorded_payouts = sa.text(
    "SELECT g.id, g.merchant_ref, g.amount_minor, g.currency, g.state FROM gateway_payouts g "
    "JOIN payments_merchants m ON m.id = g.merchant_ref "
    "LEFT JOIN payments_payouts p ON p.gateway_payout_id = g.id "
    "WHERE g.created_at_ns > :since AND g.created_at_ns <= :before AND p.id IS NULL "
    "ORDER BY g.id LIMIT :n"
)


def _statement_line_key(arrived: Sequence[Any]) -> str:
    """A top-up's item id in its worker pass: the statement line that brought it."""
    return f"stmt:{int(arrived[0])}:{int(arrived[1])}"


_q_topup_seen = sa.text("SELECT 1 FROM payments_topups WHERE statement_row_id = :r AND line = :l")
_q_carrier = sa.text("SELECT secret_enc FROM payments_carriers WHERE name = :n")

__all__ = [
    "Balances",
    "CheckoutView",
    "NewMerchant",
    "PaymentsService",
    "RiskCheck",
    "Tx",
    "account_id",
    "available_name",
    "fees_name",
    "reserve_name",
    "wallet_name",
]
