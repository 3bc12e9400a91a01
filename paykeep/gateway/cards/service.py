"""Card acquiring use cases: authorise, capture, sale, reverse, and the recovery sweep.

Every exchange follows one pattern: (1) in one transaction, move the payment to an in-flight
state and append the request to the trail — before a byte is sent; (2) send and wait, with a
timeout; (3) in one transaction, append the answer (or the timeout) and move the payment on.
A process that dies between (1) and (3) leaves the payment in ``authorising``/``capturing``;
:meth:`CardGateway.recover` reverses it. Money moves in the ledger only after an approved
capture or sale, from ``clearing:card:<acquirer>`` to the account the caller names, with a
transfer id fixed when the payment was created, so a repeated posting is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import sqlalchemy as sa

from paykeep import limits
from paykeep.clock import NS_PER_S, Clock, SystemClock, ns_to_datetime
from paykeep.db import Database
from paykeep.db.quarantine import Quarantine
from paykeep.gateway.cards import iso8583 as wire
from paykeep.gateway.cards.client import CardNetworkClient
from paykeep.gateway.cards.errors import (
    CardCaptureExceedsAuthorisation,
    CardCreditAccountInvalid,
    CardCurrencyNotSupported,
    CardDebitAccountInvalid,
    CardInputInvalid,
    CardLedgerPostingFailed,
    CardNetworkUnavailable,
    CardPaymentIdReused,
    CardPaymentInProgress,
    CardPaymentNotFound,
    CardPaymentNotRefundable,
    CardRefundIdReused,
    CardRefundInProgress,
    CardRefundNotFound,
    CardResponseTimeout,
    CardSettlementMismatch,
)
from paykeep.gateway.cards.model import (
    APPROVED_CODE,
    IN_FLIGHT,
    UNAVAILABLE_CODES,
    CardMessage,
    CardOutcome,
    CardPaymentKind,
    CardPaymentState,
    CardRefundResult,
    CardRefundState,
    CardResult,
    Direction,
    check_acquirer,
    check_amount,
    check_payment_id,
    check_refund_within_capture,
    check_security_code,
    check_terminal,
    meaning,
    refund_fingerprint,
    refund_transition,
    request_fingerprint,
    retrieval_reference,
    reversal_targets,
    transition,
    transmission_fields,
)
from paykeep.gateway.cards.repository import CardRepository, StoredPayment, StoredRefund
from paykeep.gateway.statements.model import ExpectedMovement, Leg
from paykeep.gateway.vault.service import CardVault
from paykeep.ledger.errors import AccountNotFound, TransferNotFound
from paykeep.ledger.model import CreateAccountResult, NewAccount, NewTransfer, TransferFlags
from paykeep.ledger.service import Ledger

if TYPE_CHECKING:
    from paykeep.gateway.statements.service import StatementService

log = logging.getLogger("paykeep.gateway.cards")


class _HasTrail(Protocol):
    """A row with a message trail (a card payment or a refund)."""

    @property
    def last_seq(self) -> int: ...


_Trailed = TypeVar("_Trailed", bound=_HasTrail)

S = CardPaymentState
R = CardRefundState
#: Ledger codes: the clearing account is an asset; a card capture is its own transfer kind.
CLEARING_ACCOUNT_CODE = 1
CARD_CAPTURE_TRANSFER_CODE = 30
#: The acquirer's settlement credit: bank:safeguarding:<bank> <- clearing:card:<acquirer>.
CARD_SETTLEMENT_TRANSFER_CODE = 31
#: A refund to the card: the debit account (the buyer's wallet) -> clearing:card:<acquirer>.
CARD_REFUND_TRANSFER_CODE = 32
#: The worker pass that finishes refunds left in flight (``paykeep.db.quarantine``).
RECOVER_REFUNDS_ITEMS = "gateway.cards.recover_refunds"
#: ``recover``'s card payments left in flight or settling (items: their row ids).
RECOVER_PAYMENTS_ITEMS = "gateway.cards.recover"


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    reversed: int
    reversal_pending: int
    settled: int
    #: Refunds: reversed after a crash or timeout, still owed a 0410, posted to the ledger.
    refunds_reversed: int = 0
    refunds_reversal_pending: int = 0
    refunds_posted: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "reversed": self.reversed,
            "reversal_pending": self.reversal_pending,
            "settled": self.settled,
            "refunds_reversed": self.refunds_reversed,
            "refunds_reversal_pending": self.refunds_reversal_pending,
            "refunds_posted": self.refunds_posted,
        }


def clearing_account_name(acquirer: str) -> str:
    """Card money in transit from ``acquirer``: must return to zero after settlement."""
    return f"clearing:card:{acquirer}"


def expect_card_settlement(
    database: Database,
    statements: StatementService,
    *,
    acquirer: str,
    currency: str,
    reference: str,
    amount_minor: int,
    count: int,
    iban: str,
    bank_account_name: str,
    rrns: Sequence[str] | None = None,
) -> int:
    """The acquirer's settlement report: ``amount_minor`` for ``count`` captures (and refunds,
    netted out) will be credited to ``iban`` under ``reference`` — or, when negative, debited
    from it. It must agree exactly with the captures Paykeep
    has not yet seen settled (else :class:`CardSettlementMismatch`, and nothing changes); then
    the credit is expected on the statement — when its line is imported, ``bank_account_name``
    ← ``clearing:card:<acquirer>`` empties the clearing account — and those captures are
    marked as paid by it. Idempotent on ``reference``. Needs neither the network nor the
    vault. ``rrns`` (the report's list of retrieval reference numbers, when it has one) names
    exactly which captures it pays, so captures made while the report was produced are
    left for the next settlement."""
    check_acquirer(acquirer)
    if not isinstance(reference, str) or not reference.strip() or len(reference) > 35:
        raise CardInputInvalid("reference must be 1..35 characters", param="reference")
    # Net of refunds: negative when refunds outweigh captures (the acquirer then debits).
    check_amount(abs(amount_minor) if type(amount_minor) is int else amount_minor)
    if type(count) is not int or count <= 0:
        raise CardInputInvalid("count must be a positive number of captures", param="count")
    with database.read() as conn:
        repo = CardRepository(conn)
        already = repo.settled_by(reference)
        owed = repo.unsettled_captures(acquirer, currency, rrns)
        # Refunds credited to cards come out of what the acquirer pays: the report is net.
        netted = repo.unsettled_refunds(acquirer, currency, rrns)
    net = sum(a for _, a in owed) - sum(a for _, a in netted)
    if already:
        if already != count:
            raise CardSettlementMismatch(
                f"settlement {reference} already paid {already} captures, not {count}"
            )
        owed, netted = [], []  # a replay: expect() below answers with the same expectation
    elif (net, len(owed) + len(netted)) != (amount_minor, count):
        raise CardSettlementMismatch(
            f"settlement {reference} reports {count} captures and refunds for {amount_minor}; "
            f"Paykeep has {len(owed) + len(netted)} unsettled for {net}"
        )
    clearing = clearing_account_name(acquirer)
    credit = amount_minor > 0
    expectation_id = statements.expect(
        ExpectedMovement(
            reference=reference,
            iban=iban,
            direction="credit" if credit else "debit",
            amount_minor=abs(amount_minor),
            currency=currency,
            legs=(
                # A credit empties what the acquirer owed; a debit what Paykeep owed it.
                Leg(bank_account_name, clearing, CARD_SETTLEMENT_TRANSFER_CODE)
                if credit
                else Leg(clearing, bank_account_name, CARD_SETTLEMENT_TRANSFER_CODE),
            ),
        )
    )
    if owed or netted:
        with database.write() as conn:
            CardRepository(conn).mark_settled([pk for pk, _ in owed], reference)
            CardRepository(conn).mark_refunds_settled([pk for pk, _ in netted], reference)
    return expectation_id


def find_payment(database: Database, payment_id: str) -> CardResult:
    """One card payment as stored; needs neither the card network nor the vault's keys."""
    check_payment_id(payment_id)
    with database.read() as conn:
        found = CardRepository(conn).get(payment_id)
    if found is None:
        raise CardPaymentNotFound(f"no card payment {payment_id!r}", param="payment_id")
    return CardGateway._result(found)


class CardGateway:
    """Card payments through one acquirer (one settlement currency) and its card network."""

    def __init__(
        self,
        database: Database,
        ledger: Ledger,
        vault: CardVault,
        client: CardNetworkClient,
        *,
        acquirer: str = "banksim",
        currency: str = "EUR",
        terminal_id: str = "PAYKEEP1",
        acceptor_id: str = "PAYKEEPMERCH001",
        clock: Clock | None = None,
        timeout_s: float = limits.CARD_CALL_TIMEOUT_S,
        reversal_timeout_s: float = limits.CARD_REVERSAL_TIMEOUT_S,
        reversal_attempts: int = limits.CARD_REVERSAL_ATTEMPTS_MAX,
        quarantine: Quarantine | None = None,
    ) -> None:
        check_acquirer(acquirer)
        check_terminal(terminal_id, acceptor_id)
        wire.currency_numeric(currency)
        if not 0 < reversal_attempts <= limits.CARD_REVERSAL_ATTEMPTS_MAX:
            raise CardInputInvalid(f"reversal_attempts is 1 to {limits.CARD_REVERSAL_ATTEMPTS_MAX}")
        self.database = database
        self.ledger = ledger
        self.vault = vault
        self.client = client
        self.acquirer = acquirer
        self.currency = currency
        self.terminal_id = terminal_id
        self.acceptor_id = acceptor_id
        self.clock = clock or SystemClock()
        self.timeout_s = timeout_s
        self.reversal_timeout_s = reversal_timeout_s
        self.reversal_attempts = reversal_attempts
        #: Refunds whose recovery failed unexpectedly: backed off, then parked.
        self.quarantine = quarantine or Quarantine(database, self.clock)
        self._clearing_id: int | None = None

    @property
    def clearing_account_name(self) -> str:
        return clearing_account_name(self.acquirer)

    # ------------------------------------------------------------------ use cases

    def authorise(
        self,
        card_token: str,
        amount_minor: int,
        currency: str,
        *,
        payment_id: str,
        security_code: str | None = None,
    ) -> CardResult:
        """0100: place a hold on the card. Nothing moves in the ledger.

        ``security_code`` goes straight into the message and is never stored or logged.
        A replay of ``payment_id`` with the same card, amount and currency returns the stored
        result without sending anything.
        """
        return self._start(
            CardPaymentKind.AUTHORISATION, card_token, amount_minor, currency,
            payment_id, security_code, None, None,
        )  # fmt: skip

    def sale(
        self,
        card_token: str,
        amount_minor: int,
        currency: str,
        *,
        payment_id: str,
        security_code: str | None = None,
        credit_account_id: int | None = None,
        credit_account_name: str | None = None,
    ) -> CardResult:
        """One-step 0200: charge the card and, when approved, credit the named account."""
        return self._start(
            CardPaymentKind.SALE, card_token, amount_minor, currency,
            payment_id, security_code, credit_account_id, credit_account_name,
        )  # fmt: skip

    def capture(
        self,
        authorisation_id: str,
        amount_minor: int | None = None,
        *,
        credit_account_id: int | None = None,
        credit_account_name: str | None = None,
    ) -> CardResult:
        """0200 with field 90: capture all (default) or part of an authorisation, then credit
        the named account. A replay of a completed capture returns it unchanged."""
        check_payment_id(authorisation_id)
        if amount_minor is not None:
            check_amount(amount_minor)
        payment = self._load(authorisation_id)
        if payment.kind is not CardPaymentKind.AUTHORISATION:
            raise CardInputInvalid("only an authorisation can be captured", param="payment_id")
        credit = self._credit_account(credit_account_id, credit_account_name, payment.currency)
        amount = payment.amount_minor if amount_minor is None else amount_minor
        if payment.state in (S.SETTLING, S.CAPTURED) and (
            payment.captured_minor == amount and payment.credit_account_id == credit
        ):
            return self._settle(payment) if payment.state is S.SETTLING else self._result(payment)
        self._refuse_in_flight(payment)
        transition(payment.state, S.CAPTURING)
        if amount > payment.amount_minor:
            raise CardCaptureExceedsAuthorisation(
                f"capture of {amount} exceeds the authorised {payment.amount_minor}",
                param="amount_minor",
            )
        auth = next(
            m for m in self._messages(payment) if m.direction is Direction.OUT and m.mti == "0100"
        )
        message = {
            "t": "0200",
            "2": self.vault.pan_for_network(payment.card_token),
            "3": wire.PROCESSING_PURCHASE,
            "4": f"{amount:012d}",
            "49": wire.currency_numeric(payment.currency),
            "90": wire.original_data_elements(auth.mti, auth.stan, auth.transmitted),
        }
        if payment.auth_code:
            message["38"] = payment.auth_code
        payment = self._begin_exchange(
            payment, S.AUTHORISED, S.CAPTURING, message, amount,
            captured_minor=amount, credit_account_id=credit,
        )  # fmt: skip
        return self._exchange(payment, message)

    def reverse(self, payment_id: str) -> CardResult:
        """Release an authorisation that will not be captured (0400). Replays are harmless."""
        check_payment_id(payment_id)
        payment = self._load(payment_id)
        if payment.state is S.REVERSED:
            return self._result(payment)
        self._refuse_in_flight(payment)
        if payment.state is S.AUTHORISED:
            transition(payment.state, S.REVERSING)
            payment = self._move(
                payment,
                S.AUTHORISED,
                S.REVERSING,
                outcome=CardOutcome.REVERSAL_PENDING,
                reason="requested",
            )
        elif payment.state is not S.REVERSING:
            transition(payment.state, S.REVERSING)  # raises: illegal from here
        return self._reverse_all(payment)

    def payment(self, payment_id: str) -> CardResult:
        return find_payment(self.database, payment_id)

    def recover(self, min_age_s: float = limits.CARD_RECOVERY_MIN_AGE_S) -> RecoveryReport:
        """Finish what crashed or timed-out calls left: reverse payments left in flight,
        retry owed reversals, post approved captures to the ledger. Safe to run anywhere,
        any number of times; payments changed in the last ``min_age_s`` are left alone.
        One payment (or refund) whose recovery fails unexpectedly (a row the database
        refuses) is backed off, then parked (``paykeep.db.quarantine``); the others go on."""
        before = self.clock.now_ns() - int(min_age_s * NS_PER_S)
        items = self.quarantine.open(RECOVER_PAYMENTS_ITEMS)
        batch = limits.CARD_RECOVERY_BATCH
        with self.database.read() as conn:
            due = CardRepository(conn).due(
                (S.AUTHORISING, S.CAPTURING, S.REVERSING, S.SETTLING),
                before,
                batch + items.fetch,
            )
        reversed_, pending, settled = 0, 0, 0
        refunds = self._recover_refunds(before)
        for payment in items.due(due, batch, key=lambda p: str(p.pk)):
            with items.isolated(str(payment.pk)):
                if payment.state is S.SETTLING:
                    try:
                        self._settle(payment)
                        settled += 1
                    except CardLedgerPostingFailed:
                        log.warning("card payment %s: ledger posting still refused", payment.pk)
                    continue
                if payment.state in IN_FLIGHT:
                    try:
                        payment = self._move(
                            payment,
                            payment.state,
                            S.REVERSING,
                            outcome=CardOutcome.REVERSAL_PENDING,
                            reason="recovery",
                        )
                    except CardPaymentInProgress:
                        continue  # someone else moved it meanwhile
                result = self._reverse_all(payment)
                if result.state is S.REVERSED:
                    reversed_ += 1
                else:
                    pending += 1
        return RecoveryReport(reversed_, pending, settled, *refunds)

    # ------------------------------------------------------------------ refunds

    def refund(
        self,
        refund_id: str,
        payment_id: str,
        amount_minor: int,
        currency: str,
        debit_account_id: int,
        *,
        pending_transfer_id: int | None = None,
    ) -> CardRefundResult:
        """Credit ``amount_minor`` back to the card of the captured payment ``payment_id``
        (0200, processing code 200000, the original's capture or sale in field 90) and, when
        the issuer approves, move it in the ledger from ``debit_account_id`` to
        ``clearing:card:<acquirer>`` — the reverse of the sale's transfer. With
        ``pending_transfer_id`` (a pending transfer debit account -> clearing that the caller
        placed to reserve the money) the approval posts that hold instead; the caller voids
        it if the refund fails.

        Idempotent on ``refund_id``: a replay with the same fields returns the stored result
        without sending; with other fields it is :class:`CardRefundIdReused`. Refunds of one
        payment never total more than it captured (:class:`CardRefundExceedsCapture`, nothing
        sent). A timeout after sending reverses the refund (0400)."""
        # shape
        check_payment_id(refund_id, "refund_id")
        check_payment_id(payment_id)
        check_amount(amount_minor)
        if currency != self.currency:
            raise CardCurrencyNotSupported(
                f"acquirer {self.acquirer} settles {self.currency} only", param="currency"
            )
        if type(debit_account_id) is not int:
            raise CardDebitAccountInvalid("debit_account_id is a ledger account id",
                                          param="debit_account_id")  # fmt: skip
        if pending_transfer_id is not None and type(pending_transfer_id) is not int:
            raise CardInputInvalid("pending_transfer_id is a ledger transfer id",
                                   param="pending_transfer_id")  # fmt: skip
        fingerprint = refund_fingerprint(
            payment_id, amount_minor, currency, debit_account_id, pending_transfer_id
        )
        # identity / idempotency
        existing = self._get_refund(refund_id)
        if existing is not None:
            return self._refund_replay(existing, fingerprint)
        # references
        original = self._load(payment_id)
        self._check_debit(debit_account_id, pending_transfer_id, amount_minor, currency)
        # state
        if original.state is not S.CAPTURED or original.currency != currency:
            raise CardPaymentNotRefundable(
                f"card payment {payment_id!r} is {original.state.value}: only a captured "
                f"payment in {currency} can be refunded",
                param="payment_id",
            )
        charge = self._charge_message(original)
        now = self.clock.now_ns()
        at = ns_to_datetime(now)
        stan = self.client.next_stan()
        fields = transmission_fields(at)
        rrn = retrieval_reference(at, stan)
        try:
            with self.database.write() as conn:
                repo = CardRepository(conn)
                locked = repo.payment_by_pk(original.pk, lock=True)
                assert locked is not None
                # limits: checked under the lock, against every refund already made
                check_refund_within_capture(
                    locked.captured_minor, repo.refunds_of(locked.pk), amount_minor
                )
                repo.insert_refund(
                    {
                        "refund_id": refund_id,
                        "payment": original.pk,
                        "state": R.REFUNDING.value,
                        "outcome": None,
                        "fingerprint": fingerprint,
                        "acquirer": self.acquirer,
                        "terminal_id": self.terminal_id,
                        "amount_minor": amount_minor,
                        "currency": currency,
                        "debit_account_id": debit_account_id,
                        "pending_transfer_id": pending_transfer_id,
                        "ledger_transfer_id": self.ledger.ids.next_id(),
                        "rrn": rrn,
                        "last_seq": 0,
                        "created_at_ns": now,
                        "updated_at_ns": now,
                    }
                )
                refund = repo.get_refund(refund_id)
                assert refund is not None
                # Persisted before a byte is sent.
                repo.add_refund_message(
                    refund,
                    CardMessage(1, Direction.OUT, "0200", stan, fields["7"], rrn, amount_minor,
                                None, None, None, None, now),
                )  # fmt: skip
                refund = replace(refund, last_seq=1)
        except sa.exc.IntegrityError:
            existing = self._get_refund(refund_id)  # a concurrent call created it first
            if existing is None:
                raise
            return self._refund_replay(existing, fingerprint)
        message = {
            "t": "0200",
            "2": self.vault.pan_for_network(original.card_token),
            "3": wire.PROCESSING_REFUND,
            "4": f"{amount_minor:012d}",
            "11": stan,
            **fields,
            "37": rrn,
            "41": self.terminal_id,
            "42": self.acceptor_id,
            "49": wire.currency_numeric(currency),
            "90": wire.original_data_elements(charge.mti, charge.stan, charge.transmitted),
        }
        return self._refund_exchange(refund, message)

    def card_refund(self, refund_id: str) -> CardRefundResult:
        """One refund as stored (no network)."""
        check_payment_id(refund_id, "refund_id")
        return self._refund_result(self._load_refund(refund_id))

    def refund_messages(self, refund_id: str) -> list[CardMessage]:
        refund = self._load_refund(refund_id)
        with self.database.read() as conn:
            return CardRepository(conn).refund_messages(refund.pk)

    def _check_debit(
        self, account_id: int, pending_id: int | None, amount: int, currency: str
    ) -> None:
        try:
            account = self.ledger.account(account_id)
        except AccountNotFound:
            raise CardDebitAccountInvalid(
                "the account to debit does not exist", param="debit_account_id"
            ) from None
        if account.currency != currency:
            raise CardDebitAccountInvalid(
                f"the account to debit holds {account.currency}, not {currency}",
                param="debit_account_id",
            )
        if pending_id is None:
            return
        try:
            hold = self.ledger.transfer(pending_id)
        except TransferNotFound:
            raise CardDebitAccountInvalid(
                "the reserving pending transfer does not exist", param="pending_transfer_id"
            ) from None
        if (
            not hold.flags & int(TransferFlags.PENDING)
            or hold.debit_account_id != account_id
            or hold.credit_account_id != self.clearing_account_id()
            or hold.amount_minor != amount
        ):
            raise CardDebitAccountInvalid(
                f"the reserving transfer must be a pending {amount} from the debit account to "
                f"{self.clearing_account_name}",
                param="pending_transfer_id",
            )

    def _charge_message(self, payment: StoredPayment) -> CardMessage:
        """The approved 0200 (the capture, or the one-step sale) a refund names in field 90."""
        messages = self._messages(payment)
        approved = {
            m.reply_to_seq
            for m in messages
            if m.direction is Direction.IN and m.response_code == APPROVED_CODE
        }
        for m in reversed(messages):
            if m.direction is Direction.OUT and m.mti == "0200" and m.seq in approved:
                return m
        raise CardPaymentNotRefundable(  # captured without an approved 0200: cannot happen
            f"card payment {payment.payment_id!r} has no approved capture", param="payment_id"
        )

    def _refund_replay(self, existing: StoredRefund, fingerprint: str) -> CardRefundResult:
        if existing.fingerprint != fingerprint:
            raise CardRefundIdReused(
                f"refund id {existing.refund_id!r} was used for another card refund",
                param="refund_id",
            )
        if existing.state is R.REFUNDING or existing.outcome is None:
            raise CardRefundInProgress(
                f"card refund {existing.refund_id!r} is {existing.state.value}; ask again",
                param="refund_id",
            )
        if existing.state is R.POSTING:
            return self._post_refund(existing)
        return self._refund_result(existing)

    def _refund_exchange(self, refund: StoredRefund, message: dict[str, str]) -> CardRefundResult:
        request_seq = refund.last_seq
        try:
            response = self.client.call(message, self.timeout_s)
        except CardNetworkUnavailable:
            refund = self._record_refund(
                refund, request_seq, Direction.UNSENT, message,
                move=(R.UNAVAILABLE, {"outcome": CardOutcome.UNAVAILABLE}),
            )  # fmt: skip
            return self._refund_result(refund)
        except CardResponseTimeout:
            refund = self._record_refund(
                refund, request_seq, Direction.TIMEOUT, message,
                move=(R.REVERSING, {"outcome": CardOutcome.REVERSAL_PENDING,
                                    "reason": "timeout"}),
            )  # fmt: skip
            return self._reverse_refund(refund)
        code = response.get("39", "")
        auth_code = response.get("38") or None
        if code != APPROVED_CODE:
            unavailable = code in UNAVAILABLE_CODES
            refund = self._record_refund(
                refund, request_seq, Direction.IN, message, code, auth_code,
                move=(
                    R.UNAVAILABLE if unavailable else R.DECLINED,
                    {"outcome": CardOutcome.UNAVAILABLE if unavailable else CardOutcome.DECLINED,
                     "response_code": code},
                ),
            )  # fmt: skip
            return self._refund_result(refund)
        refund = self._record_refund(
            refund, request_seq, Direction.IN, message, code, auth_code,
            move=(R.POSTING, {"outcome": CardOutcome.APPROVED, "response_code": code,
                              "auth_code": auth_code}),
        )  # fmt: skip
        return self._post_refund(refund)

    def _record_refund(
        self,
        refund: StoredRefund,
        request_seq: int,
        direction: Direction,
        message: Mapping[str, str],
        code: str | None = None,
        auth_code: str | None = None,
        *,
        move: tuple[CardRefundState, dict[str, Any]] | None = None,
    ) -> StoredRefund:
        """Append what happened to a request and, with ``move``, the state it leads to."""
        now = self.clock.now_ns()
        with self.database.write() as conn:
            repo = CardRepository(conn)
            current = repo.get_refund(refund.refund_id)
            assert current is not None
            repo.add_refund_message(
                current,
                CardMessage(current.last_seq + 1, direction, message["t"], message["11"],
                            message["7"], message.get("37"), None, code, auth_code,
                            request_seq, None, now),
            )  # fmt: skip
            if move is not None:
                self._update_refund(repo, refund, move[0], move[1], now)
            updated = repo.get_refund(refund.refund_id)
        assert updated is not None
        return updated

    @staticmethod
    def _update_refund(
        repo: CardRepository,
        refund: StoredRefund,
        target: CardRefundState,
        values: Mapping[str, Any],
        now: int,
    ) -> None:
        refund_transition(refund.state, target)
        stored = {k: v.value if isinstance(v, CardOutcome) else v for k, v in values.items()}
        if not repo.update_refund(refund.pk, refund.state, now, state=target.value, **stored):
            raise CardRefundInProgress(
                f"card refund {refund.refund_id!r} changed meanwhile; ask again",
                param="refund_id",
            )

    def _move_refund(
        self, refund: StoredRefund, target: CardRefundState, **values: Any
    ) -> StoredRefund:
        with self.database.write() as conn:
            repo = CardRepository(conn)
            self._update_refund(repo, refund, target, values, self.clock.now_ns())
            updated = repo.get_refund(refund.refund_id)
        assert updated is not None
        return updated

    def _reverse_refund(self, refund: StoredRefund) -> CardRefundResult:
        """0400 for a refund that may have been applied, until its 0410 or
        ``reversal_attempts``: confirmed, REVERSED (the card's credit taken back, nothing moved
        in the ledger); else it stays REVERSING for the recovery sweep."""
        self._send_reversals(
            reversal_targets(self._refund_trail(refund)),
            wire.PROCESSING_REFUND, refund.terminal_id, refund.currency,
            lambda repo: repo.get_refund(refund.refund_id), CardRepository.add_refund_message,
            lambda seq, direction, message, code: self._record_refund(
                refund, seq, direction, message, code
            ),
        )  # fmt: skip
        refund = self._load_refund(refund.refund_id)
        if reversal_targets(self._refund_trail(refund)):
            return self._refund_result(refund)
        outcome = (
            CardOutcome.TIMED_OUT_REVERSED
            if refund.reason in ("timeout", "recovery")
            else CardOutcome.REVERSED
        )
        refund = self._move_refund(refund, R.REVERSED, outcome=outcome)
        return self._refund_result(refund)

    def _post_refund(self, refund: StoredRefund) -> CardRefundResult:
        """The approved refund in the ledger: debit account -> clearing:card:<acquirer>, with
        the id chosen when the refund was created (a repeat is ``exists``)."""
        assert refund.state is R.POSTING
        reference = f"card-refund:{refund.acquirer}:{refund.refund_id}"
        if refund.pending_transfer_id is not None:
            transfer = NewTransfer(
                id=refund.ledger_transfer_id,
                pending_id=refund.pending_transfer_id,
                amount_minor=refund.amount_minor,
                flags=int(TransferFlags.POST_PENDING),
                reference=reference,
            )
        else:
            transfer = NewTransfer(
                id=refund.ledger_transfer_id,
                debit_account_id=refund.debit_account_id,
                credit_account_id=self.clearing_account_id(),
                amount_minor=refund.amount_minor,
                currency=refund.currency,
                code=CARD_REFUND_TRANSFER_CODE,
                reference=reference,
            )
        (result,) = self.ledger.create_transfers([transfer])
        if not result.applied_or_exists:
            raise CardLedgerPostingFailed(
                f"the ledger refused card refund {refund.refund_id!r}: {result.result.value}; "
                "the recovery sweep retries"
            )
        try:
            refund = self._move_refund(refund, R.REFUNDED)
        except CardRefundInProgress:
            refund = self._load_refund(refund.refund_id)  # a concurrent post finished it
        return self._refund_result(refund)

    def recover_refunds(
        self, min_age_s: float = limits.CARD_RECOVERY_MIN_AGE_S
    ) -> tuple[int, int, int]:
        """The refunds' part of :meth:`recover`: (reversed, reversal still owed, posted)."""
        return self._recover_refunds(self.clock.now_ns() - int(min_age_s * NS_PER_S))

    def _recover_refunds(self, before_ns: int) -> tuple[int, int, int]:
        """Refunds left in flight are reversed, owed reversals retried, approved ones posted.
        One refund whose recovery fails unexpectedly (a row the database refuses) is backed
        off, then parked (``paykeep.db.quarantine``); the others go on."""
        items = self.quarantine.open(RECOVER_REFUNDS_ITEMS)
        batch = limits.CARD_RECOVERY_BATCH
        with self.database.read() as conn:
            due = CardRepository(conn).due_refunds(
                (R.REFUNDING, R.REVERSING, R.POSTING), before_ns, batch + items.fetch
            )
        reversed_, pending, posted = 0, 0, 0
        for refund in items.due(due, batch, key=lambda r: str(r.pk)):
            with items.isolated(str(refund.pk)):
                if refund.state is R.POSTING:
                    try:
                        self._post_refund(refund)
                        posted += 1
                    except CardLedgerPostingFailed:
                        log.warning("card refund %s: ledger posting still refused", refund.pk)
                    continue
                try:
                    if refund.state is R.REFUNDING:
                        refund = self._move_refund(
                            refund, R.REVERSING,
                            outcome=CardOutcome.REVERSAL_PENDING, reason="recovery",
                        )  # fmt: skip
                    result = self._reverse_refund(refund)
                except CardRefundInProgress:
                    continue  # someone else moved it meanwhile
                if result.state is R.REVERSED:
                    reversed_ += 1
                else:
                    pending += 1
        return reversed_, pending, posted

    def _refund_trail(self, refund: StoredRefund) -> list[CardMessage]:
        with self.database.read() as conn:
            return CardRepository(conn).refund_messages(refund.pk)

    def _get_refund(self, refund_id: str) -> StoredRefund | None:
        with self.database.read() as conn:
            return CardRepository(conn).get_refund(refund_id)

    def _load_refund(self, refund_id: str) -> StoredRefund:
        found = self._get_refund(refund_id)
        if found is None:
            raise CardRefundNotFound(f"no card refund {refund_id!r}", param="refund_id")
        return found

    def _refund_result(self, r: StoredRefund) -> CardRefundResult:
        assert r.outcome is not None, "a finished exchange always records its outcome"
        with self.database.read() as conn:
            original = CardRepository(conn).payment_by_pk(r.payment_pk)
        assert original is not None
        return CardRefundResult(
            refund_id=r.refund_id,
            payment_id=original.payment_id,
            state=r.state,
            outcome=r.outcome,
            response_code=r.response_code,
            response_meaning=meaning(r.response_code),
            amount_minor=r.amount_minor,
            currency=r.currency,
            brand=original.brand,
            last4=original.last4,
            rrn=r.rrn,
            ledger_transfer_id=r.ledger_transfer_id if r.state is R.REFUNDED else None,
        )

    # ------------------------------------------------------------------ settlement

    def expect_settlement(
        self,
        statements: StatementService,
        *,
        reference: str,
        amount_minor: int,
        count: int,
        iban: str,
        bank_account_name: str,
    ) -> int:
        """See :func:`expect_card_settlement` (for this gateway's acquirer and currency)."""
        return expect_card_settlement(
            self.database, statements, acquirer=self.acquirer, currency=self.currency,
            reference=reference, amount_minor=amount_minor, count=count, iban=iban,
            bank_account_name=bank_account_name,
        )  # fmt: skip

    # ------------------------------------------------------------------ starting a payment

    def _start(
        self,
        kind: CardPaymentKind,
        card_token: str,
        amount_minor: int,
        currency: str,
        payment_id: str,
        security_code: str | None,
        credit_account_id: int | None,
        credit_account_name: str | None,
    ) -> CardResult:
        # shape
        check_payment_id(payment_id)
        check_amount(amount_minor)
        if not isinstance(card_token, str):
            raise CardInputInvalid("card_token must be a vault token", param="card_token")
        if currency != self.currency:
            raise CardCurrencyNotSupported(
                f"acquirer {self.acquirer} settles {self.currency} only", param="currency"
            )
        check_security_code(security_code)
        # identity / idempotency: a replay is found by the payment id's unique key below, so
        # a new payment costs no extra read.
        fingerprint = request_fingerprint(kind, card_token, amount_minor, currency)
        # references
        card = self.vault.card(card_token)
        credit = None
        if kind is CardPaymentKind.SALE:
            credit = self._credit_account(credit_account_id, credit_account_name, currency)
        now = self.clock.now_ns()
        at = ns_to_datetime(now)
        stan = self.client.next_stan()
        fields = transmission_fields(at)
        rrn = retrieval_reference(at, stan)
        mti = "0100" if kind is CardPaymentKind.AUTHORISATION else "0200"
        state = S.AUTHORISING if kind is CardPaymentKind.AUTHORISATION else S.CAPTURING
        try:
            with self.database.write() as conn:
                repo = CardRepository(conn)
                pk = repo.insert_payment(
                    {
                        "payment_id": payment_id,
                        "kind": kind.value,
                        "state": state.value,
                        "outcome": None,
                        "fingerprint": fingerprint,
                        "acquirer": self.acquirer,
                        "terminal_id": self.terminal_id,
                        "card_token": card.token,
                        "brand": card.brand,
                        "last4": card.last4,
                        "amount_minor": amount_minor,
                        "currency": currency,
                        "captured_minor": amount_minor if credit is not None else 0,
                        "credit_account_id": credit,
                        "ledger_transfer_id": self.ledger.ids.next_id(),
                        "rrn": rrn,
                        "last_seq": 0,
                        "created_at_ns": now,
                        "updated_at_ns": now,
                    }
                )
                payment = repo.get(payment_id)
                assert payment is not None and payment.pk == pk
                repo.add_message(
                    payment,
                    CardMessage(1, Direction.OUT, mti, stan, fields["7"], rrn, amount_minor,
                                None, None, None, None, now),
                )  # fmt: skip
                payment = replace(payment, last_seq=1)
        except sa.exc.IntegrityError:
            # A concurrent call created the same payment id first: this is a replay.
            existing = self._get(payment_id)
            if existing is None:
                raise
            return self._replay(existing, fingerprint)
        message = {
            "t": mti,
            "2": self.vault.pan_for_network(card.token),
            "3": wire.PROCESSING_PURCHASE,
            "4": f"{amount_minor:012d}",
            "11": stan,
            **fields,
            "14": card.expiry_yymm,
            "37": rrn,
            "41": self.terminal_id,
            "42": self.acceptor_id,
            "49": wire.currency_numeric(currency),
        }
        if security_code is not None:
            message["48"] = wire.security_code_field(security_code)
        return self._exchange(payment, message)

    def _replay(self, existing: StoredPayment, fingerprint: str) -> CardResult:
        if existing.fingerprint != fingerprint:
            raise CardPaymentIdReused(
                f"payment id {existing.payment_id!r} was used for another card payment",
                param="payment_id",
            )
        self._refuse_in_flight(existing)
        if existing.state is S.SETTLING:
            return self._settle(existing)
        return self._result(existing)

    # ------------------------------------------------------------------ one exchange

    def _begin_exchange(
        self,
        payment: StoredPayment,
        expected: CardPaymentState,
        target: CardPaymentState,
        message: dict[str, str],
        amount_minor: int,
        **values: Any,
    ) -> StoredPayment:
        """Fill in the message numbers, append the request and move the payment, in one
        transaction, before anything is sent."""
        now = self.clock.now_ns()
        at = ns_to_datetime(now)
        stan = self.client.next_stan()
        message.update(transmission_fields(at))
        message.update({"11": stan, "37": payment.rrn or retrieval_reference(at, stan),
                        "41": self.terminal_id, "42": self.acceptor_id})  # fmt: skip
        with self.database.write() as conn:
            repo = CardRepository(conn)
            current = repo.get(payment.payment_id)
            assert current is not None
            if not repo.update(current.pk, expected, now, state=target.value, outcome=None,
                               **values):  # fmt: skip
                raise CardPaymentInProgress(
                    f"card payment {payment.payment_id!r} changed meanwhile; ask again",
                    param="payment_id",
                )
            repo.add_message(
                current,
                CardMessage(current.last_seq + 1, Direction.OUT, message["t"], stan,
                            message["7"], message["37"], amount_minor, None, None, None,
                            None, now),
            )  # fmt: skip
            updated = repo.get(payment.payment_id)
        assert updated is not None
        return updated

    def _exchange(self, payment: StoredPayment, message: dict[str, str]) -> CardResult:
        """Send the request just persisted; record what came back and the next state in one
        transaction (one commit per answer: the request's own was written before sending)."""
        request_seq = payment.last_seq
        state = payment.state
        try:
            response = self.client.call(message, self.timeout_s)
        except CardNetworkUnavailable:
            move = self._failure_move(payment, CardOutcome.UNAVAILABLE, None)
            payment = self._record(payment, request_seq, Direction.UNSENT, message, move=move)
            return self._result(payment)
        except CardResponseTimeout:
            move = (state, S.REVERSING,
                    {"outcome": CardOutcome.REVERSAL_PENDING, "reason": "timeout"})  # fmt: skip
            payment = self._record(payment, request_seq, Direction.TIMEOUT, message, move=move)
            return self._reverse_all(payment)
        code = response.get("39", "")
        auth_code = response.get("38") or None
        if code in UNAVAILABLE_CODES or code != APPROVED_CODE:
            outcome = CardOutcome.UNAVAILABLE if code in UNAVAILABLE_CODES else CardOutcome.DECLINED
            move = self._failure_move(payment, outcome, code)
            payment = self._record(
                payment, request_seq, Direction.IN, message, code, auth_code, move=move
            )
            return self._result(payment)
        if state is S.AUTHORISING:
            approved = {"outcome": CardOutcome.APPROVED, "response_code": code,
                        "auth_code": auth_code}  # fmt: skip
            move = (state, S.AUTHORISED, approved)
            payment = self._record(
                payment, request_seq, Direction.IN, message, code, auth_code, move=move
            )
            return self._result(payment)
        move = (state, S.SETTLING, {"outcome": CardOutcome.APPROVED, "response_code": code,
                                    "auth_code": auth_code or payment.auth_code})  # fmt: skip
        payment = self._record(
            payment, request_seq, Direction.IN, message, code, auth_code, move=move
        )
        return self._settle(payment)

    @staticmethod
    def _failure_move(
        payment: StoredPayment, outcome: CardOutcome, code: str | None
    ) -> tuple[CardPaymentState, CardPaymentState, dict[str, Any]]:
        """Not applied by the issuer. A failed capture leaves the authorisation standing."""
        if payment.state is S.CAPTURING and payment.kind is CardPaymentKind.AUTHORISATION:
            return (payment.state, S.AUTHORISED, {"outcome": outcome, "response_code": code,
                                                  "captured_minor": 0,
                                                  "credit_account_id": None})  # fmt: skip
        target = S.DECLINED if outcome is CardOutcome.DECLINED else S.UNAVAILABLE
        return (payment.state, target,
                {"outcome": outcome, "response_code": code, "captured_minor": 0})  # fmt: skip

    def _record(
        self,
        payment: StoredPayment,
        request_seq: int,
        direction: Direction,
        message: Mapping[str, str],
        code: str | None = None,
        auth_code: str | None = None,
        *,
        move: tuple[CardPaymentState, CardPaymentState, dict[str, Any]] | None = None,
    ) -> StoredPayment:
        """Append what happened to a request and, with ``move``, the state it leads to."""
        now = self.clock.now_ns()
        values: dict[str, Any] = {}
        if move is not None:
            transition(move[0], move[1])
            values = {k: v.value if isinstance(v, CardOutcome) else v for k, v in move[2].items()}
        with self.database.write() as conn:
            repo = CardRepository(conn)
            current = repo.get(payment.payment_id)
            assert current is not None
            repo.add_message(
                current,
                CardMessage(current.last_seq + 1, direction, message["t"], message["11"],
                            message["7"], message.get("37"), None, code, auth_code,
                            request_seq, None, now),
            )  # fmt: skip
            if move is not None and not repo.update(
                current.pk, move[0], now, state=move[1].value, **values
            ):
                raise CardPaymentInProgress(
                    f"card payment {payment.payment_id!r} changed meanwhile; ask again",
                    param="payment_id",
                )
            updated = repo.get(payment.payment_id)
        assert updated is not None
        return updated

    def _move(
        self,
        payment: StoredPayment,
        expected: CardPaymentState,
        target: CardPaymentState,
        **values: Any,
    ) -> StoredPayment:
        transition(expected, target)
        if "outcome" in values and isinstance(values["outcome"], CardOutcome):
            values["outcome"] = values["outcome"].value
        with self.database.write() as conn:
            repo = CardRepository(conn)
            if not repo.update(payment.pk, expected, self.clock.now_ns(), state=target.value,
                               **values):  # fmt: skip
                raise CardPaymentInProgress(
                    f"card payment {payment.payment_id!r} changed meanwhile; ask again",
                    param="payment_id",
                )
            updated = repo.get(payment.payment_id)
        assert updated is not None
        return updated

    # ------------------------------------------------------------------ reversals

    def _reversal_message(
        self,
        target: CardMessage,
        processing_code: str,
        terminal_id: str,
        currency: str,
        stan: str,
        now_ns: int,
    ) -> dict[str, str]:
        """The 0400 that reverses ``target`` (a payment's request or a refund), naming it in
        field 90."""
        at = ns_to_datetime(now_ns)
        return {
            "t": "0400",
            "3": processing_code,
            "4": f"{target.amount_minor or 0:012d}",
            "11": stan,
            **transmission_fields(at),
            "37": target.rrn or retrieval_reference(at, stan),
            "41": terminal_id,
            "42": self.acceptor_id,
            "49": wire.currency_numeric(currency),
            "90": wire.original_data_elements(target.mti, target.stan, target.transmitted),
        }

    def _send_reversals(
        self,
        targets: list[CardMessage],
        processing_code: str,
        terminal_id: str,
        currency: str,
        load: Callable[[CardRepository], _Trailed | None],
        append: Callable[[CardRepository, _Trailed, CardMessage], None],
        record: Callable[[int, Direction, Mapping[str, str], str | None], object],
    ) -> None:
        """A 0400 for each of ``targets`` (newest first), each until its 0410 or
        ``reversal_attempts``; shared by payments and refunds, whose trails differ only in
        their tables (``load`` the owner, ``append`` to its trail, ``record`` an outcome).
        Every 0400 is in the trail before it is sent; a link that is down ends a target's
        attempts (the recovery sweep retries)."""
        for target in targets:
            for _attempt in range(self.reversal_attempts):
                now = self.clock.now_ns()
                stan = self.client.next_stan()
                message = self._reversal_message(
                    target, processing_code, terminal_id, currency, stan, now
                )
                with self.database.write() as conn:
                    repo = CardRepository(conn)
                    current = load(repo)
                    assert current is not None
                    seq = current.last_seq + 1
                    append(
                        repo,
                        current,
                        CardMessage(seq, Direction.OUT, "0400", stan, message["7"],
                                    message["37"], target.amount_minor, None, None, None,
                                    target.seq, now),
                    )  # fmt: skip
                try:
                    response = self.client.call(message, self.reversal_timeout_s)
                except CardNetworkUnavailable:
                    record(seq, Direction.UNSENT, message, None)
                    break
                except CardResponseTimeout:
                    record(seq, Direction.TIMEOUT, message, None)
                    continue
                code = response.get("39", "")
                record(seq, Direction.IN, message, code)
                if code == APPROVED_CODE:
                    break

    def _reverse_all(self, payment: StoredPayment) -> CardResult:
        """0400 for every request that may have been applied, newest first, each until its
        0410 or ``reversal_attempts``. All confirmed: REVERSED; else it stays REVERSING."""
        self._send_reversals(
            reversal_targets(self._messages(payment)),
            wire.PROCESSING_PURCHASE, payment.terminal_id, payment.currency,
            lambda repo: repo.get(payment.payment_id), CardRepository.add_message,
            lambda seq, direction, message, code: self._record(
                payment, seq, direction, message, code
            ),
        )  # fmt: skip
        payment = self._load(payment.payment_id)
        if reversal_targets(self._messages(payment)):
            return self._result(payment)
        outcome = (
            CardOutcome.TIMED_OUT_REVERSED
            if payment.reason in ("timeout", "recovery")
            else CardOutcome.REVERSED
        )
        payment = self._move(payment, S.REVERSING, S.REVERSED, outcome=outcome, captured_minor=0)
        return self._result(payment)

    # ------------------------------------------------------------------ the ledger

    def clearing_account_id(self) -> int:
        """``clearing:card:<acquirer>`` (an asset in the settlement currency), created if absent."""
        if self._clearing_id is not None:
            return self._clearing_id
        name = self.clearing_account_name
        try:
            account = self.ledger.account_by_name(name)
        except AccountNotFound:
            (result,) = self.ledger.create_accounts(
                [
                    NewAccount(
                        self.ledger.ids.next_id(),
                        self.currency,
                        CLEARING_ACCOUNT_CODE,
                        0,
                        name=name,
                    )
                ]
            )
            if result.result not in (CreateAccountResult.OK, CreateAccountResult.NAME_ALREADY_USED):
                raise CardLedgerPostingFailed(
                    f"cannot create {name}: {result.result.value}"
                ) from None
            account = self.ledger.account_by_name(name)
        if account.currency != self.currency:
            raise CardLedgerPostingFailed(f"{name} holds {account.currency}, not {self.currency}")
        self._clearing_id = account.id
        return account.id

    def _credit_account(
        self, account_id: int | None, account_name: str | None, currency: str
    ) -> int:
        if (account_id is None) == (account_name is None):
            raise CardCreditAccountInvalid(
                "name the account to credit: credit_account_id or credit_account_name",
                param="credit_account_id",
            )
        try:
            if account_id is not None:
                account = self.ledger.account(account_id)
            else:
                assert account_name is not None
                account = self.ledger.account_by_name(account_name)
        except AccountNotFound:
            raise CardCreditAccountInvalid(
                "the account to credit does not exist", param="credit_account_id"
            ) from None
        if account.currency != currency:
            raise CardCreditAccountInvalid(
                f"the account to credit holds {account.currency}, not {currency}",
                param="credit_account_id",
            )
        return account.id

    def _settle(self, payment: StoredPayment) -> CardResult:
        """Post clearing:card:<acquirer> -> credit account for an approved capture or sale."""
        assert payment.state is S.SETTLING and payment.credit_account_id is not None
        transfer = NewTransfer(
            id=payment.ledger_transfer_id,
            debit_account_id=self.clearing_account_id(),
            credit_account_id=payment.credit_account_id,
            amount_minor=payment.captured_minor,
            currency=payment.currency,
            code=CARD_CAPTURE_TRANSFER_CODE,
            reference=f"card:{payment.acquirer}:{payment.payment_id}",
        )
        (result,) = self.ledger.create_transfers([transfer])
        if not result.applied_or_exists:
            raise CardLedgerPostingFailed(
                f"the ledger refused the capture of card payment {payment.payment_id!r}: "
                f"{result.result.value}; the recovery sweep retries"
            )
        try:
            payment = self._move(payment, S.SETTLING, S.CAPTURED)
        except CardPaymentInProgress:
            payment = self._load(payment.payment_id)  # a concurrent settle finished it
        return self._result(payment)

    # ------------------------------------------------------------------ reads

    def _get(self, payment_id: str) -> StoredPayment | None:
        with self.database.read() as conn:
            return CardRepository(conn).get(payment_id)

    def _load(self, payment_id: str) -> StoredPayment:
        found = self._get(payment_id)
        if found is None:
            raise CardPaymentNotFound(f"no card payment {payment_id!r}", param="payment_id")
        return found

    def _messages(self, payment: StoredPayment) -> list[CardMessage]:
        with self.database.read() as conn:
            return CardRepository(conn).messages(payment.pk)

    def messages(self, payment_id: str) -> list[CardMessage]:
        """The message trail of a payment (no card numbers: the trail never holds one)."""
        return self._messages(self._load(payment_id))

    @staticmethod
    def _refuse_in_flight(payment: StoredPayment) -> None:
        if payment.state in IN_FLIGHT or payment.outcome is None:
            raise CardPaymentInProgress(
                f"card payment {payment.payment_id!r} is {payment.state.value}; ask again",
                param="payment_id",
            )

    @staticmethod
    def _result(p: StoredPayment) -> CardResult:
        outcome = p.outcome
        assert outcome is not None, "a finished exchange always records its outcome"
        return CardResult(
            payment_id=p.payment_id,
            kind=p.kind,
            state=p.state,
            outcome=outcome,
            response_code=p.response_code,
            response_meaning=meaning(p.response_code),
            amount_minor=p.amount_minor,
            captured_minor=p.captured_minor,
            currency=p.currency,
            card_token=p.card_token,
            brand=p.brand,
            last4=p.last4,
            auth_code=p.auth_code,
            rrn=p.rrn,
            ledger_transfer_id=p.ledger_transfer_id if p.state is S.CAPTURED else None,
        )
