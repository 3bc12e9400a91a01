"""SQL of the payments context (SQLAlchemy Core text on both databases).

Every method runs on the caller's connection: the service decides where transactions begin
and end, so a state change, its ledger transfers and its outbox event commit together.
Reads that precede a change lock the row on PostgreSQL (``FOR UPDATE``); SQLite serialises
writers with ``BEGIN IMMEDIATE``, so the same code is safe on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import Connection

from paykeep.db import driver
from paykeep.payments.buyer_auth import BuyerSession, CodeRecord, CodeState
from paykeep.payments.model import FeePlan, LineItem, OrderState, RefundState, TimerSettings
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
from paykeep.security.fields import mask_email

_statements: dict[str, sa.TextClause] = {}


def q(sql: str) -> sa.TextClause:
    """Compile each statement's text once (they are hot)."""
    found = _statements.get(sql)
    if found is None:
        found = _statements[sql] = sa.text(sql)
    return found


ORDER_COLUMNS = (
    "id, merchant_id, buyer_id, currency, amount_minor, fee_minor, state, funding, "
    "hold_transfer_id, refunded_minor, released_minor, disputed, timer, timer_due_ns, "
    "description, merchant_reference, version, paid_at_ns, shipped_at_ns, delivered_at_ns, "
    "created_at_ns, updated_at_ns"
)
MERCHANT_COLUMNS = (
    "id, legal_name, country, currency, payout_iban_last4, payout_iban_verified, "
    "fee_percent_bp, fee_fixed_minor, reserve_percent_bp, reserve_hold_s, unpaid_close_s, "
    "ship_by_s, confirm_after_delivery_s, confirm_after_shipping_s, payment_reference, "
    "created_at_ns"
)
PAYMENT_COLUMNS = (
    "id, order_id, merchant_id, method, state, amount_minor, currency, card_payment_id, "
    "card_brand, card_last4, decline_code, decline_message, created_at_ns, updated_at_ns"
)
SHIPMENT_COLUMNS = (
    "id, order_id, merchant_id, direction, carrier, tracking_number, state, created_at_ns, "
    "updated_at_ns"
)
REFUND_COLUMNS = (
    "id, order_id, merchant_id, amount_minor, reason, return_required, state, created_at_ns, "
    "updated_at_ns, "
    "(SELECT o.funding FROM payments_orders o WHERE o.id = payments_refunds.order_id), "
    "(SELECT c.state FROM payments_card_refunds c WHERE c.refund_id = payments_refunds.id "
    "ORDER BY c.id LIMIT 1), "
    "(SELECT c.card_last4 FROM payments_card_refunds c WHERE c.refund_id = payments_refunds.id "
    "ORDER BY c.id LIMIT 1)"
)
CARD_REFUND_COLUMNS = (
    "id, order_id, refund_id, merchant_id, buyer_id, card_payment_id, amount_minor, currency, "
    "state, attempts, reservation_transfer_id, card_brand, card_last4, response_code, "
    "failure_reason, created_at_ns, updated_at_ns, attempts_max, retries, withdrawal_id"
)
DISPUTE_COLUMNS = (
    "id, order_id, refund_id, merchant_id, state, reason, buyer_share_minor, "
    "merchant_share_minor, decided_by, decision_note, created_at_ns, updated_at_ns"
)
PAYOUT_COLUMNS = (
    "id, merchant_id, gateway_payout_id, amount_minor, currency, state, created_at_ns, "
    "updated_at_ns, return_kind, return_reason_code, return_reason, return_fee_minor"
)
TOPUP_COLUMNS = (
    "id, buyer_id, merchant_id, amount_minor, currency, state, risk_outcome, created_at_ns, "
    "updated_at_ns"
)
WITHDRAWAL_COLUMNS = (
    "id, buyer_id, merchant_id, source_topup_id, iban_last4, amount_minor, currency, state, "
    "gateway_payout_id, request_id, fingerprint, created_at_ns, updated_at_ns, destination, "
    "return_kind, return_reason_code, return_reason, return_fee_minor"
)
SESSION_COLUMNS = "id, merchant_id, order_id, success_url, state, expires_at_ns, created_at_ns"


def _merchant(r: Sequence[Any]) -> Merchant:
    return Merchant(
        r[0], r[1], r[2], r[3], r[4], bool(r[5]),
        FeePlan(int(r[6]), int(r[7]), int(r[8]), int(r[9])),
        TimerSettings(int(r[10]), int(r[11]), int(r[12]), int(r[13])),
        r[14], int(r[15]),
    )  # fmt: skip


def _order(r: Sequence[Any], items: tuple[LineItem, ...] = ()) -> Order:
    return Order(
        r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), OrderState(r[6]), r[7], r[8],
        int(r[9]), int(r[10]), bool(r[11]), r[12], r[13], r[14], r[15], int(r[16]),
        r[17], r[18], r[19], int(r[20]), int(r[21]), items,
    )  # fmt: skip


def _refund(r: Sequence[Any]) -> Refund:
    return Refund(
        r[0], r[1], r[2], int(r[3]), r[4], bool(r[5]), RefundState(r[6]), r[7], r[8],
        r[9], r[10], r[11],
    )  # fmt: skip


def _card_refund(r: Sequence[Any]) -> CardRefund:
    return CardRefund(
        r[0], r[1], r[2], r[3], r[4], r[5], int(r[6]), r[7], r[8], int(r[9]), int(r[10]),
        r[11], r[12], r[13], r[14], int(r[15]), int(r[16]), int(r[17]), int(r[18]), r[19],
    )  # fmt: skip


def _withdrawal(r: Sequence[Any]) -> Withdrawal:
    return Withdrawal(
        r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6], r[7],
        None if r[8] is None else int(r[8]), r[9], r[10], int(r[11]), int(r[12]), r[13],
        returned=PayoutReturn.of(r[14], r[15], r[16], r[17]),
    )  # fmt: skip


def _payout(r: Sequence[Any]) -> MerchantPayout:
    return MerchantPayout(
        r[0], r[1], None if r[2] is None else int(r[2]), int(r[3]), r[4], r[5], int(r[6]),
        int(r[7]), PayoutReturn.of(r[8], r[9], r[10], r[11]),
    )  # fmt: skip


BUYER_CODE_COLUMNS = (
    "id, buyer_id, checkout_session_id, code_hmac, state, attempts, expires_at_ns, created_at_ns"
)


#: Merchants one transaction keeps in memory (a sweep over many merchants reads the rest).
MERCHANTS_REMEMBERED_MAX: Final = 64


class PaymentsRepository:
    def __init__(self, conn: Connection, *, postgres: bool) -> None:
        self.conn = conn
        self.postgres = postgres
        self._lock = " FOR UPDATE" if postgres else ""
        # Merchants read in this transaction: a money-moving request needs its merchant's
        # fees, timers and names three times over, and only update() below changes one.
        self._merchants: dict[str, Merchant] = {}

    def _execute(self, sql: str, params: dict[str, Any]) -> Any:
        # A money-moving request runs a dozen of these on the single writer every request
        # waits for: on the driver's connection (see paykeep.db.driver).
        return driver.execute(self.conn, sql, params, postgres=self.postgres)

    def _one(self, sql: str, params: dict[str, Any]) -> Sequence[Any] | None:
        row: Sequence[Any] | None = self._execute(sql, params).fetchone()
        return row

    def _all(self, sql: str, params: dict[str, Any]) -> list[Sequence[Any]]:
        return list(self._execute(sql, params).fetchall())

    def insert(self, table: str, row: dict[str, Any]) -> None:
        columns = ", ".join(row)
        values = ", ".join(f":{c}" for c in row)
        self._execute(f"INSERT INTO {table} ({columns}) VALUES ({values})", row)

    def update(self, table: str, key: str, changes: dict[str, Any]) -> None:
        if table == "payments_merchants":
            self._merchants.pop(key, None)
        assignments = ", ".join(f"{c} = :{c}" for c in changes)
        self._execute(
            f"UPDATE {table} SET {assignments} WHERE id = :_key", {**changes, "_key": key}
        )

    # ------------------------------------------------------------------ merchants, buyers

    def merchant(self, merchant_id: str) -> Merchant | None:
        """The merchant as this transaction sees it (read once, then from memory)."""
        found = self._merchants.get(merchant_id)
        if found is not None:
            return found
        row = self._one(
            f"SELECT {MERCHANT_COLUMNS} FROM payments_merchants WHERE id = :id",
            {"id": merchant_id},
        )
        if row is None:
            return None
        found = _merchant(row)
        if len(self._merchants) < MERCHANTS_REMEMBERED_MAX:
            self._merchants[merchant_id] = found
        return found

    def merchant_iban(self, merchant_id: str) -> bytes | None:
        row = self._one(
            "SELECT payout_iban_enc FROM payments_merchants WHERE id = :id", {"id": merchant_id}
        )
        return None if row is None or row[0] is None else bytes(row[0])

    def merchants(self, limit: int, starting_after: str | None) -> list[Merchant]:
        rows = self._page("payments_merchants", MERCHANT_COLUMNS, {}, limit, starting_after)
        return [_merchant(r) for r in rows]

    def buyer_row(self, buyer_id: str) -> Sequence[Any] | None:
        return self._one(
            "SELECT id, merchant_id, email_enc, payment_reference, created_at_ns "
            "FROM payments_buyers WHERE id = :id",
            {"id": buyer_id},
        )

    def buyer_name_enc(self, buyer_id: str) -> bytes | None:
        row = self._one("SELECT name_enc FROM payments_buyers WHERE id = :id", {"id": buyer_id})
        return None if row is None else bytes(row[0])

    def buyer_by_reference(self, reference: str) -> str | None:
        row = self._one(
            "SELECT id FROM payments_buyers WHERE payment_reference = :r", {"r": reference}
        )
        return None if row is None else str(row[0])

    def buyer_rows(
        self, merchant_id: str | None, limit: int, starting_after: str | None
    ) -> list[Sequence[Any]]:
        where = {} if merchant_id is None else {"merchant_id": merchant_id}
        return self._page(
            "payments_buyers",
            "id, merchant_id, email_enc, payment_reference, created_at_ns",
            where,
            limit,
            starting_after,
        )

    @staticmethod
    def buyer_from(row: Sequence[Any], email: str) -> Buyer:
        return Buyer(row[0], row[1], mask_email(email), row[3], int(row[4]))

    # ------------------------------------------------------------------ orders

    def order(
        self, order_id: str, *, lock: bool = False, items: bool = False, skip_locked: bool = False
    ) -> Order | None:
        """``lock``: FOR UPDATE on PostgreSQL; ``skip_locked``: None when another transaction
        holds the row (a worker leaves it to the worker that has it)."""
        suffix = ""
        if self.postgres and (lock or skip_locked):
            suffix = " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"
        row = self._one(
            f"SELECT {ORDER_COLUMNS} FROM payments_orders WHERE id = :id{suffix}",
            {"id": order_id},
        )
        if row is None:
            return None
        return _order(row, self.items(order_id) if items else ())

    def items(self, order_id: str) -> tuple[LineItem, ...]:
        rows = self._all(
            "SELECT description, quantity, unit_amount_minor FROM payments_order_items "
            "WHERE order_id = :id ORDER BY position",
            {"id": order_id},
        )
        return tuple(LineItem(r[0], int(r[1]), int(r[2])) for r in rows)

    def orders(self, where: dict[str, Any], limit: int, starting_after: str | None) -> list[Order]:
        return [
            _order(r)
            for r in self._page("payments_orders", ORDER_COLUMNS, where, limit, starting_after)
        ]

    def save_order(self, before: Order, changes: dict[str, Any], now_ns: int) -> None:
        """Optimistic write: the row must still be at ``before.version``."""
        changes = {**changes, "version": before.version + 1, "updated_at_ns": now_ns}
        assignments = ", ".join(f"{c} = :{c}" for c in changes)
        result = self._execute(
            f"UPDATE payments_orders SET {assignments} WHERE id = :_key AND version = :_version",
            {**changes, "_key": before.id, "_version": before.version},
        )
        if result.rowcount != 1:
            from paykeep.payments.errors import ConcurrentUpdate

            raise ConcurrentUpdate(f"order {before.id} changed concurrently; retry")

    def due_orders(self, now_ns: int, limit: int) -> list[str]:
        rows = self._all(
            "SELECT id FROM payments_orders WHERE timer_due_ns <= :now AND disputed = :f "
            "ORDER BY timer_due_ns LIMIT :limit",
            {"now": now_ns, "f": False, "limit": limit},
        )
        return [str(r[0]) for r in rows]

    def bank_transfer_orders(self, limit: int) -> list[str]:
        rows = self._all(
            "SELECT id FROM payments_orders WHERE state = 'created' "
            "AND funding = 'bank_transfer' ORDER BY id LIMIT :limit",
            {"limit": limit},
        )
        return [str(r[0]) for r in rows]

    # ------------------------------------------------------------------ others

    def payment(self, payment_id: str) -> Payment | None:
        row = self._one(
            f"SELECT {PAYMENT_COLUMNS} FROM payments_payments WHERE id = :id", {"id": payment_id}
        )
        return None if row is None else Payment(*row)

    def payments(
        self, where: dict[str, Any], limit: int, starting_after: str | None
    ) -> list[Payment]:
        rows = self._page("payments_payments", PAYMENT_COLUMNS, where, limit, starting_after)
        return [Payment(*r) for r in rows]

    def shipment(self, shipment_id: str, *, lock: bool = False) -> Shipment | None:
        row = self._one(
            f"SELECT {SHIPMENT_COLUMNS} FROM payments_shipments WHERE id = :id"
            + (self._lock if lock else ""),
            {"id": shipment_id},
        )
        return None if row is None else Shipment(*row)

    def shipment_by_tracking(self, carrier: str, tracking: str) -> Shipment | None:
        row = self._one(
            f"SELECT {SHIPMENT_COLUMNS} FROM payments_shipments "
            "WHERE carrier = :c AND tracking_number = :t",
            {"c": carrier, "t": tracking},
        )
        return None if row is None else Shipment(*row)

    def shipments(
        self, where: dict[str, Any], limit: int, starting_after: str | None
    ) -> list[Shipment]:
        rows = self._page("payments_shipments", SHIPMENT_COLUMNS, where, limit, starting_after)
        return [Shipment(*r) for r in rows]

    def refund(self, refund_id: str, *, lock: bool = False) -> Refund | None:
        row = self._one(
            f"SELECT {REFUND_COLUMNS} FROM payments_refunds WHERE id = :id"
            + (self._lock if lock else ""),
            {"id": refund_id},
        )
        return None if row is None else _refund(row)

    def refunds(
        self, where: dict[str, Any], limit: int, starting_after: str | None
    ) -> list[Refund]:
        rows = self._page("payments_refunds", REFUND_COLUMNS, where, limit, starting_after)
        return [_refund(r) for r in rows]

    def open_refunds(self, order_id: str) -> list[Refund]:
        rows = self._all(
            f"SELECT {REFUND_COLUMNS} FROM payments_refunds WHERE order_id = :o "
            "AND state NOT IN ('completed', 'rejected', 'cancelled')",
            {"o": order_id},
        )
        return [_refund(r) for r in rows]

    def card_refund(self, card_refund_id: str, *, lock: bool = False) -> CardRefund | None:
        row = self._one(
            f"SELECT {CARD_REFUND_COLUMNS} FROM payments_card_refunds WHERE id = :id"
            + (self._lock if lock else ""),
            {"id": card_refund_id},
        )
        return None if row is None else _card_refund(row)

    def card_refunds(
        self, where: dict[str, Any], limit: int, starting_after: str | None
    ) -> list[CardRefund]:
        rows = self._page(
            "payments_card_refunds", CARD_REFUND_COLUMNS, where, limit, starting_after
        )
        return [_card_refund(r) for r in rows]

    def pending_card_refunds(self, limit: int) -> list[str]:
        """Ids of card refunds still to send (or to finish), oldest first."""
        rows = self._all(
            "SELECT id FROM payments_card_refunds WHERE state = 'pending' "
            "ORDER BY created_at_ns, id LIMIT :n",
            {"n": limit},
        )
        return [str(r[0]) for r in rows]

    def idle_refunds(self, now_ns: int, idle_s: int, limit: int) -> list[tuple[str, str]]:
        rows = self._all(
            "SELECT id, state FROM payments_refunds WHERE state IN ('requested', "
            "'merchant_refused', 'merchant_agreed', 'return_shipped') AND updated_at_ns <= :t "
            "ORDER BY updated_at_ns LIMIT :limit",
            {"t": now_ns - idle_s * 1_000_000_000, "limit": limit},
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def arrived_topups(self, limit: int) -> list[Sequence[Any]]:
        """Statement lines posted against a buyer's standing reference (bank -> clearing:bank-in)
        that the payments context has not handled yet."""
        return self._all(
            "SELECT m.statement_row_id, m.line, b.id, b.merchant_id, en.amount_minor, "
            "en.currency, b.created_at_ns FROM stmt_matches m "
            "JOIN stmt_expectations e ON e.id = m.expectation_id "
            "JOIN payments_buyers b ON b.payment_reference = e.reference "
            "JOIN stmt_entries en ON en.statement_row_id = m.statement_row_id "
            "AND en.line = m.line "
            "LEFT JOIN payments_topups t ON t.statement_row_id = m.statement_row_id "
            "AND t.line = m.line "
            "WHERE m.ledger_result = 'ok' AND e.standing = :t AND t.id IS NULL "
            "ORDER BY m.statement_row_id, m.line LIMIT :limit",
            {"t": True, "limit": limit},
        )

    def topup(self, topup_id: str, *, lock: bool = False) -> Topup | None:
        row = self._one(
            f"SELECT {TOPUP_COLUMNS} FROM payments_topups WHERE id = :id"
            + (self._lock if lock else ""),
            {"id": topup_id},
        )
        return None if row is None else Topup(*row)

    def topups(self, where: dict[str, Any], limit: int, starting_after: str | None) -> list[Topup]:
        rows = self._page("payments_topups", TOPUP_COLUMNS, where, limit, starting_after)
        return [Topup(*r) for r in rows]

    def dispute(self, dispute_id: str, *, lock: bool = False) -> Dispute | None:
        row = self._one(
            f"SELECT {DISPUTE_COLUMNS} FROM payments_disputes WHERE id = :id"
            + (self._lock if lock else ""),
            {"id": dispute_id},
        )
        return None if row is None else Dispute(*row)

    def disputes(
        self, where: dict[str, Any], limit: int, starting_after: str | None
    ) -> list[Dispute]:
        rows = self._page("payments_disputes", DISPUTE_COLUMNS, where, limit, starting_after)
        return [Dispute(*r) for r in rows]

    def payout(self, payout_id: str, *, lock: bool = False) -> MerchantPayout | None:
        row = self._one(
            f"SELECT {PAYOUT_COLUMNS} FROM payments_payouts WHERE id = :id"
            + (self._lock if lock else ""),
            {"id": payout_id},
        )
        return None if row is None else _payout(row)

    def payout_by_gateway(
        self, gateway_payout_id: int, *, lock: bool = False
    ) -> MerchantPayout | None:
        row = self._one(
            f"SELECT {PAYOUT_COLUMNS} FROM payments_payouts WHERE gateway_payout_id = :g"
            + (self._lock if lock else ""),
            {"g": gateway_payout_id},
        )
        return None if row is None else _payout(row)

    def payouts(
        self, where: dict[str, Any], limit: int, starting_after: str | None
    ) -> list[MerchantPayout]:
        rows = self._page("payments_payouts", PAYOUT_COLUMNS, where, limit, starting_after)
        return [_payout(r) for r in rows]

    def open_payouts(self, after_id: str, limit: int) -> list[MerchantPayout]:
        """Payout records still open at the gateway (``requested``, ``batched``,
        ``accepted``) with an id above ``after_id``, in id order (``OpenItemsWalk``; the
        partial index ``ix_payments_payouts_open`` names the same states)."""
        rows = self._all(
            f"SELECT {PAYOUT_COLUMNS} FROM payments_payouts "
            "WHERE state IN ('requested', 'batched', 'accepted') AND id > :after "
            "ORDER BY id LIMIT :limit",
            {"after": after_id, "limit": limit},
        )
        return [_payout(r) for r in rows]

    def payouts_sent_back_unrecorded(self, limit: int) -> list[MerchantPayout]:
        """Settled payout records whose gateway payout the payee's bank has since sent back
        (``returned``), oldest first: the return was applied by a process that had no payments
        service listening (``paykeep payouts settle``), and the record is still to follow."""
        rows = self._all(
            f"SELECT {PAYOUT_COLUMNS} FROM payments_payouts WHERE state = 'settled' "
            "AND gateway_payout_id IN (SELECT id FROM gateway_payouts WHERE state = 'returned') "
            "ORDER BY id LIMIT :limit",
            {"limit": limit},
        )
        return [_payout(r) for r in rows]

    # ------------------------------------------------------------------ withdrawals

    def lock_buyer(self, buyer_id: str) -> None:
        """Serialise a buyer's withdrawals (FOR UPDATE on PostgreSQL; SQLite's writers are
        serialised already): the source bound is read and reserved under this lock."""
        self._one(f"SELECT id FROM payments_buyers WHERE id = :id{self._lock}", {"id": buyer_id})

    def withdrawal(self, withdrawal_id: str, *, lock: bool = False) -> Withdrawal | None:
        row = self._one(
            f"SELECT {WITHDRAWAL_COLUMNS} FROM payments_withdrawals WHERE id = :id"
            + (self._lock if lock else ""),
            {"id": withdrawal_id},
        )
        return None if row is None else self._with_card_refunds([_withdrawal(row)])[0]

    def withdrawal_by_gateway(
        self, gateway_payout_id: int, *, lock: bool = False
    ) -> Withdrawal | None:
        row = self._one(
            f"SELECT {WITHDRAWAL_COLUMNS} FROM payments_withdrawals WHERE gateway_payout_id = :g"
            + (self._lock if lock else ""),
            {"g": gateway_payout_id},
        )
        return None if row is None else _withdrawal(row)

    def withdrawals_sent_back_unrecorded(self, limit: int) -> list[Withdrawal]:
        """Settled bank withdrawals whose gateway payout has since been sent back
        (``returned``): as :meth:`payouts_sent_back_unrecorded`, for buyers."""
        rows = self._all(
            f"SELECT {WITHDRAWAL_COLUMNS} FROM payments_withdrawals WHERE state = 'settled' "
            "AND destination = 'source_bank_account' "
            "AND gateway_payout_id IN (SELECT id FROM gateway_payouts WHERE state = 'returned') "
            "ORDER BY created_at_ns LIMIT :limit",
            {"limit": limit},
        )
        return [_withdrawal(r) for r in rows]

    def withdrawal_by_request(self, request_id: str) -> Withdrawal | None:
        row = self._one(
            f"SELECT {WITHDRAWAL_COLUMNS} FROM payments_withdrawals WHERE request_id = :r",
            {"r": request_id},
        )
        return None if row is None else self._with_card_refunds([_withdrawal(row)])[0]

    def withdrawals(
        self, where: dict[str, Any], limit: int, starting_after: str | None
    ) -> list[Withdrawal]:
        rows = self._page("payments_withdrawals", WITHDRAWAL_COLUMNS, where, limit, starting_after)
        return self._with_card_refunds([_withdrawal(r) for r in rows])

    def _with_card_refunds(self, found: list[Withdrawal]) -> list[Withdrawal]:
        """Withdrawals to the card with their card refunds (one query for a whole page)."""
        ids = [w.id for w in found if w.destination == "source_card"]
        if not ids:
            return found
        names = {f"w{i}": wid for i, wid in enumerate(ids)}
        rows = self._all(
            f"SELECT {CARD_REFUND_COLUMNS} FROM payments_card_refunds "
            f"WHERE withdrawal_id IN ({', '.join(':' + n for n in names)}) ORDER BY id",
            names,
        )
        by_withdrawal: dict[str, list[CardRefund]] = {}
        for row in rows:
            refund = _card_refund(row)
            assert refund.withdrawal_id is not None
            by_withdrawal.setdefault(refund.withdrawal_id, []).append(refund)
        return [
            replace(w, card_refunds=tuple(by_withdrawal.get(w.id, ())))
            if w.destination == "source_card"
            else w
            for w in found
        ]

    def open_withdrawals(self, after_id: str, limit: int) -> list[Withdrawal]:
        """Bank withdrawals the worker still follows at the gateway, with an id above
        ``after_id``, in id order — oldest first, the ids being time-ordered
        (``OpenItemsWalk``; through ``ix_payments_withdrawals_state``, then sorted: the open
        ones are few). A withdrawal to the card follows its card refunds instead
        (``send_card_refunds``)."""
        rows = self._all(
            f"SELECT {WITHDRAWAL_COLUMNS} FROM payments_withdrawals "
            "WHERE state IN ('pending', 'requested', 'batched', 'accepted') "
            "AND destination = 'source_bank_account' AND id > :after "
            "ORDER BY id LIMIT :limit",
            {"after": after_id, "limit": limit},
        )
        return [_withdrawal(r) for r in rows]

    def card_captures(self, buyer_id: str, currency: str) -> list[Sequence[Any]]:
        """The buyer's captured card payments in ``currency`` (approved sales that credited
        their wallet): ``(payment id, captured at, amount, refunded)``, where refunded is every
        card refund to it that has not failed (``pending`` or ``succeeded``: orders' and
        withdrawals' alike). Through the buyer's orders (indexed), then each order's payments
        and card refunds (indexed by order)."""
        return self._all(
            "SELECT p.id, p.created_at_ns, p.amount_minor, "
            "COALESCE((SELECT SUM(c.amount_minor) FROM payments_card_refunds c "
            "WHERE c.order_id = p.order_id AND c.card_payment_id = p.id "
            "AND c.state IN ('pending', 'succeeded')), 0) "
            "FROM payments_orders o JOIN payments_payments p ON p.order_id = o.id "
            "WHERE o.buyer_id = :b AND p.currency = :c AND p.method = 'card' "
            "AND p.state = 'succeeded' ORDER BY p.created_at_ns DESC, p.id DESC",
            {"b": buyer_id, "c": currency},
        )

    def withdrawal_sources(self, buyer_id: str, currency: str) -> list[Sequence[Any]]:
        """The buyer's credited top-ups in ``currency`` whose statement line names the sending
        IBAN, newest first: ``(top-up id, sealed IBAN, sealed sender's name or None, amount,
        statement row id, line)`` — the line's fields are sealed by the statements context
        (purposes ``statement.counterparty_*``, row id ``<statement row id>:<line>``)."""
        return self._all(
            "SELECT t.id, en.counterparty_iban_enc, en.counterparty_name_enc, t.amount_minor, "
            "en.statement_row_id, en.line "
            "FROM payments_topups t JOIN stmt_entries en "
            "ON en.statement_row_id = t.statement_row_id AND en.line = t.line "
            "WHERE t.buyer_id = :b AND t.currency = :c AND t.state = 'credited' "
            "AND en.counterparty_iban_enc IS NOT NULL "
            "ORDER BY t.id DESC",
            {"b": buyer_id, "c": currency},
        )

    def standing_withdrawals(self, buyer_id: str, currency: str) -> list[Sequence[Any]]:
        """``(sealed source IBAN, amount, state, statement row id, line)`` of the buyer's
        withdrawals in ``currency`` whose money has not come back (every state but ``returned``
        and ``failed``)."""
        return self._all(
            "SELECT en.counterparty_iban_enc, w.amount_minor, w.state, en.statement_row_id, "
            "en.line FROM payments_withdrawals w "
            "JOIN payments_topups t ON t.id = w.source_topup_id "
            "JOIN stmt_entries en ON en.statement_row_id = t.statement_row_id "
            "AND en.line = t.line "
            "WHERE w.buyer_id = :b AND w.currency = :c "
            "AND w.state NOT IN ('returned', 'failed')",
            {"b": buyer_id, "c": currency},
        )

    def delete_pending_withdrawal(self, withdrawal_id: str) -> int:
        """Drop a reservation the gateway refused (nothing moved, nothing was announced)."""
        result = self._execute(
            "DELETE FROM payments_withdrawals WHERE id = :id AND state = 'pending'",
            {"id": withdrawal_id},
        )
        return int(result.rowcount)

    def session_by_token_hash(self, token_hash: str) -> CheckoutSession | None:
        row = self._one(
            f"SELECT {SESSION_COLUMNS} FROM payments_checkout_sessions WHERE token_hash = :h",
            {"h": token_hash},
        )
        return None if row is None else CheckoutSession(*row)

    # ------------------------------------------------------------------ buyer sign-in

    def buyer_code_times(self, buyer_id: str, since_ns: int) -> list[int]:
        """When codes were sent to ``buyer_id`` after ``since_ns`` (the hourly limit)."""
        rows = self._all(
            "SELECT created_at_ns FROM payments_buyer_codes "
            "WHERE buyer_id = :b AND created_at_ns > :t",
            {"b": buyer_id, "t": since_ns},
        )
        return [int(r[0]) for r in rows]

    def latest_buyer_code(self, checkout_session_id: str, buyer_id: str) -> CodeRecord | None:
        """The newest code of a checkout's buyer (locked on PostgreSQL: two verifications of
        one code take turns, so its attempts are counted exactly)."""
        row = self._one(
            f"SELECT {BUYER_CODE_COLUMNS} FROM payments_buyer_codes "
            "WHERE checkout_session_id = :s AND buyer_id = :b ORDER BY id DESC LIMIT 1"
            + self._lock,
            {"s": checkout_session_id, "b": buyer_id},
        )
        if row is None:
            return None
        return CodeRecord(
            str(row[0]), str(row[1]), str(row[2]), str(row[3]), CodeState(row[4]),
            int(row[5]), int(row[6]), int(row[7]),
        )  # fmt: skip

    def save_buyer_code(self, before: CodeRecord, after: CodeRecord) -> bool:
        """Store ``after`` if the row is still ``before`` (state and attempts): False when a
        concurrent verification got there first."""
        result = self._execute(
            "UPDATE payments_buyer_codes SET state = :state, attempts = :attempts "
            "WHERE id = :id AND state = :old_state AND attempts = :old_attempts",
            {"state": after.state.value, "attempts": after.attempts, "id": before.id,
             "old_state": before.state.value, "old_attempts": before.attempts},
        )  # fmt: skip
        return bool(result.rowcount == 1)

    def delete_buyer_sessions(self, buyer_id: str, session_id: str | None) -> int:
        """Revoke the session ``session_id`` of ``buyer_id``, or all of the buyer's sessions
        (``session_id`` None); returns how many went."""
        sql = "DELETE FROM payments_buyer_sessions WHERE buyer_id = :buyer"
        params = {"buyer": buyer_id}
        if session_id is not None:
            sql += " AND id = :id"
            params["id"] = session_id
        return int(self._execute(sql, params).rowcount)

    def buyer_session_by_hash(self, token_hash: str) -> BuyerSession | None:
        row = self._one(
            "SELECT id, buyer_id, code_id, expires_at_ns, created_at_ns "
            "FROM payments_buyer_sessions WHERE token_hash = :h",
            {"h": token_hash},
        )
        if row is None:
            return None
        return BuyerSession(str(row[0]), str(row[1]), str(row[2]), int(row[3]), int(row[4]))

    def session(self, session_id: str) -> CheckoutSession | None:
        row = self._one(
            f"SELECT {SESSION_COLUMNS} FROM payments_checkout_sessions WHERE id = :id",
            {"id": session_id},
        )
        return None if row is None else CheckoutSession(*row)

    def sessions(
        self, where: dict[str, Any], limit: int, starting_after: str | None
    ) -> list[CheckoutSession]:
        rows = self._page(
            "payments_checkout_sessions", SESSION_COLUMNS, where, limit, starting_after
        )
        return [CheckoutSession(*r) for r in rows]

    def due_reserves(self, now_ns: int, limit: int, *, lock: bool = True) -> list[Sequence[Any]]:
        """(id, merchant, currency, amount) of reserves due for release; with ``lock`` (in a
        write transaction) the rows are claimed (SKIP LOCKED on PostgreSQL)."""
        skip = " FOR UPDATE SKIP LOCKED" if self.postgres and lock else ""
        return self._all(
            "SELECT id, merchant_id, currency, amount_minor FROM payments_reserves "
            "WHERE released_at_ns IS NULL AND release_at_ns <= :now "
            f"ORDER BY release_at_ns LIMIT :limit{skip}",
            {"now": now_ns, "limit": limit},
        )

    def due_reserve(self, reserve_id: str, now_ns: int) -> Sequence[Any] | None:
        """One due reserve, claimed for this write transaction (SKIP LOCKED on PostgreSQL:
        None if another worker holds it), or None if it is released already."""
        skip = " FOR UPDATE SKIP LOCKED" if self.postgres else ""
        return self._one(
            "SELECT id, merchant_id, currency, amount_minor FROM payments_reserves "
            f"WHERE id = :id AND released_at_ns IS NULL AND release_at_ns <= :now{skip}",
            {"id": reserve_id, "now": now_ns},
        )

    def events(
        self, merchant_id: str | None, limit: int, starting_after: str | None,
        object_id: str | None = None,
    ) -> list[Sequence[Any]]:  # fmt: skip
        clauses, params = [], {"limit": limit}
        if merchant_id is not None:
            clauses.append("merchant_id = :m")
            params["m"] = merchant_id  # type: ignore[assignment]
        if object_id is not None:
            clauses.append("object_id = :o")
            params["o"] = object_id  # type: ignore[assignment]
        if starting_after is not None:
            clauses.append("seq < (SELECT seq FROM payments_events WHERE id = :after)")
            params["after"] = starting_after  # type: ignore[assignment]
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        return self._all(
            "SELECT id, merchant_id, type, object_id, payload, created_at_ns FROM payments_events"
            f"{where} ORDER BY seq DESC LIMIT :limit",
            params,
        )

    def event(self, event_id: str) -> Sequence[Any] | None:
        return self._one(
            "SELECT id, merchant_id, type, object_id, payload, created_at_ns "
            "FROM payments_events WHERE id = :id",
            {"id": event_id},
        )

    # ------------------------------------------------------------------ paging

    def _page(
        self,
        table: str,
        columns: str,
        where: dict[str, Any],
        limit: int,
        starting_after: str | None,
    ) -> list[Sequence[Any]]:
        """Newest first by id (ids are time-ordered): ``limit`` rows after ``starting_after``."""
        clauses = [f"{c} = :{c}" for c in where]
        params: dict[str, Any] = dict(where)
        if starting_after is not None:
            clauses.append("id < :_after")
            params["_after"] = starting_after
        params["_limit"] = limit
        text = f"SELECT {columns} FROM {table}"
        if clauses:
            text += " WHERE " + " AND ".join(clauses)
        return self._all(text + " ORDER BY id DESC LIMIT :_limit", params)
