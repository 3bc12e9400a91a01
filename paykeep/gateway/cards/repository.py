"""Persistence of card payments and their message trail (tables of migration 0005).

A repository wraps one open transaction and never commits. State changes are conditional
(``UPDATE ... WHERE state = :expected``), so two calls racing on one payment cannot both move
it: the loser sees zero rows changed and re-reads.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from paykeep.gateway.cards.model import (
    CardMessage,
    CardOutcome,
    CardPaymentKind,
    CardPaymentState,
    CardRefundState,
    Direction,
)

_meta = sa.MetaData()


def _message_table(name: str, owner_column: str) -> sa.Table:
    """A message trail (append-only): one row per request, answer, timeout or unsent request
    of the owning row (a payment or a refund), in ``seq`` order."""
    return sa.Table(
        name,
        _meta,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column(owner_column, sa.BigInteger),
        sa.Column("seq", sa.Integer),
        sa.Column("direction", sa.String(8)),
        sa.Column("mti", sa.String(4)),
        sa.Column("stan", sa.String(6)),
        sa.Column("transmitted", sa.String(10)),
        sa.Column("rrn", sa.String(12)),
        sa.Column("amount_minor", sa.BigInteger),
        sa.Column("response_code", sa.String(2)),
        sa.Column("auth_code", sa.String(6)),
        sa.Column("reply_to_seq", sa.Integer),
        sa.Column("reverses_seq", sa.Integer),
        sa.Column("at_ns", sa.BigInteger),
    )


payments = sa.Table(
    "card_payments",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("payment_id", sa.String(64)),
    sa.Column("kind", sa.String(16)),
    sa.Column("state", sa.String(16)),
    sa.Column("outcome", sa.String(32)),
    sa.Column("reason", sa.String(16)),
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("acquirer", sa.String(32)),
    sa.Column("terminal_id", sa.String(8)),
    sa.Column("card_token", sa.String(40)),
    sa.Column("brand", sa.String(16)),
    sa.Column("last4", sa.String(4)),
    sa.Column("amount_minor", sa.BigInteger),
    sa.Column("currency", sa.String(3)),
    sa.Column("captured_minor", sa.BigInteger),
    sa.Column("credit_account_id", sa.BigInteger),
    sa.Column("ledger_transfer_id", sa.BigInteger),
    sa.Column("response_code", sa.String(2)),
    sa.Column("auth_code", sa.String(6)),
    sa.Column("rrn", sa.String(12)),
    sa.Column("last_seq", sa.Integer),
    sa.Column("created_at_ns", sa.BigInteger),
    sa.Column("updated_at_ns", sa.BigInteger),
    sa.Column("settlement_reference", sa.String(35)),
)
messages = _message_table("card_messages", "payment")

refunds = sa.Table(
    "card_refunds",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("refund_id", sa.String(64)),
    sa.Column("payment", sa.BigInteger),
    sa.Column("state", sa.String(16)),
    sa.Column("outcome", sa.String(32)),
    sa.Column("reason", sa.String(16)),
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("acquirer", sa.String(32)),
    sa.Column("terminal_id", sa.String(8)),
    sa.Column("amount_minor", sa.BigInteger),
    sa.Column("currency", sa.String(3)),
    sa.Column("debit_account_id", sa.BigInteger),
    sa.Column("pending_transfer_id", sa.BigInteger),
    sa.Column("ledger_transfer_id", sa.BigInteger),
    sa.Column("response_code", sa.String(2)),
    sa.Column("auth_code", sa.String(6)),
    sa.Column("rrn", sa.String(12)),
    sa.Column("last_seq", sa.Integer),
    sa.Column("created_at_ns", sa.BigInteger),
    sa.Column("updated_at_ns", sa.BigInteger),
    sa.Column("settlement_reference", sa.String(35)),
)
refund_messages = _message_table("card_refund_messages", "refund")


@dataclass(frozen=True, slots=True)
class StoredRefund:
    pk: int
    refund_id: str
    payment_pk: int
    state: CardRefundState
    outcome: CardOutcome | None
    reason: str | None
    fingerprint: str
    acquirer: str
    terminal_id: str
    amount_minor: int
    currency: str
    debit_account_id: int
    pending_transfer_id: int | None
    ledger_transfer_id: int
    response_code: str | None
    auth_code: str | None
    rrn: str | None
    last_seq: int
    created_at_ns: int
    updated_at_ns: int


def _refund(row: Any) -> StoredRefund:
    m = row._mapping
    return StoredRefund(
        pk=int(m["id"]),
        refund_id=m["refund_id"],
        payment_pk=int(m["payment"]),
        state=CardRefundState(m["state"]),
        outcome=None if m["outcome"] is None else CardOutcome(m["outcome"]),
        reason=m["reason"],
        fingerprint=m["fingerprint"],
        acquirer=m["acquirer"],
        terminal_id=m["terminal_id"],
        amount_minor=int(m["amount_minor"]),
        currency=m["currency"],
        debit_account_id=int(m["debit_account_id"]),
        pending_transfer_id=(
            None if m["pending_transfer_id"] is None else int(m["pending_transfer_id"])
        ),
        ledger_transfer_id=int(m["ledger_transfer_id"]),
        response_code=m["response_code"],
        auth_code=m["auth_code"],
        rrn=m["rrn"],
        last_seq=int(m["last_seq"]),
        created_at_ns=int(m["created_at_ns"]),
        updated_at_ns=int(m["updated_at_ns"]),
    )


@dataclass(frozen=True, slots=True)
class StoredPayment:
    pk: int
    payment_id: str
    kind: CardPaymentKind
    state: CardPaymentState
    outcome: CardOutcome | None
    reason: str | None
    fingerprint: str
    acquirer: str
    terminal_id: str
    card_token: str
    brand: str
    last4: str
    amount_minor: int
    currency: str
    captured_minor: int
    credit_account_id: int | None
    ledger_transfer_id: int
    response_code: str | None
    auth_code: str | None
    rrn: str | None
    last_seq: int
    created_at_ns: int
    updated_at_ns: int


def _payment(row: Any) -> StoredPayment:
    m = row._mapping
    return StoredPayment(
        pk=int(m["id"]),
        payment_id=m["payment_id"],
        kind=CardPaymentKind(m["kind"]),
        state=CardPaymentState(m["state"]),
        outcome=None if m["outcome"] is None else CardOutcome(m["outcome"]),
        reason=m["reason"],
        fingerprint=m["fingerprint"],
        acquirer=m["acquirer"],
        terminal_id=m["terminal_id"],
        card_token=m["card_token"],
        brand=m["brand"],
        last4=m["last4"],
        amount_minor=int(m["amount_minor"]),
        currency=m["currency"],
        captured_minor=int(m["captured_minor"]),
        credit_account_id=None if m["credit_account_id"] is None else int(m["credit_account_id"]),
        ledger_transfer_id=int(m["ledger_transfer_id"]),
        response_code=m["response_code"],
        auth_code=m["auth_code"],
        rrn=m["rrn"],
        last_seq=int(m["last_seq"]),
        created_at_ns=int(m["created_at_ns"]),
        updated_at_ns=int(m["updated_at_ns"]),
    )


def _payment_by_pk(conn: Connection, pk: int, *, lock: bool) -> StoredPayment | None:
    query = sa.select(payments).where(payments.c.id == pk)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    return None if row is None else _payment(row)


def _message(row: Any) -> CardMessage:
    m = row._mapping
    return CardMessage(
        seq=int(m["seq"]),
        direction=Direction(m["direction"]),
        mti=m["mti"],
        stan=m["stan"],
        transmitted=m["transmitted"],
        rrn=m["rrn"],
        amount_minor=None if m["amount_minor"] is None else int(m["amount_minor"]),
        response_code=m["response_code"],
        auth_code=m["auth_code"],
        reply_to_seq=m["reply_to_seq"],
        reverses_seq=m["reverses_seq"],
        at_ns=int(m["at_ns"]),
    )


_GET_PAYMENT = sa.select(payments).where(payments.c.payment_id == sa.bindparam("payment_id"))
_INSERT_MESSAGE = messages.insert()
_FOLLOW_SEQ_SQLITE = (
    payments.update()
    .where(payments.c.id == sa.bindparam("pk"))
    .values(
        last_seq=sa.func.max(payments.c.last_seq, sa.bindparam("seq")),
        updated_at_ns=sa.bindparam("at_ns"),
    )
)
_FOLLOW_SEQ_PG = (
    payments.update()
    .where(payments.c.id == sa.bindparam("pk"))
    .values(
        last_seq=sa.func.greatest(payments.c.last_seq, sa.bindparam("seq")),
        updated_at_ns=sa.bindparam("at_ns"),
    )
)


@functools.lru_cache(maxsize=64)
def _update_statement(columns: tuple[str, ...]) -> sa.Update:
    """One compiled UPDATE per set of columns a transition changes (a handful exist)."""
    return (
        payments.update()
        .where(payments.c.id == sa.bindparam("pk"), payments.c.state == sa.bindparam("expected"))
        .values(
            updated_at_ns=sa.bindparam("now_ns"),
            **{c: sa.bindparam(f"v_{c}") for c in columns},
        )
    )


class CardRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get(self, payment_id: str) -> StoredPayment | None:
        row = self.conn.execute(_GET_PAYMENT, {"payment_id": payment_id}).first()
        return None if row is None else _payment(row)

    def insert_payment(self, values: dict[str, Any]) -> int:
        result = self.conn.execute(payments.insert(), values)
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    def update(self, pk: int, expected: CardPaymentState, now_ns: int, **values: Any) -> bool:
        """Change the payment only if it is still in ``expected``; False if it was not."""
        statement = _update_statement(tuple(sorted(values)))
        params = {f"v_{k}": v for k, v in values.items()}
        params.update(pk=pk, expected=expected.value, now_ns=now_ns)
        result = self.conn.execute(statement, params)
        return result.rowcount == 1

    def add_message(self, payment: StoredPayment, message: CardMessage) -> None:
        """Append to the trail; the payment's ``last_seq`` follows (the seq must be next)."""
        # Statements built once at import and given parameters: SQLAlchemy then reuses their
        # compiled form instead of building and hashing a new statement per call.
        self.conn.execute(
            _INSERT_MESSAGE,
            {
                "payment": payment.pk,
                "seq": message.seq,
                "direction": message.direction.value,
                "mti": message.mti,
                "stan": message.stan,
                "transmitted": message.transmitted,
                "rrn": message.rrn,
                "amount_minor": message.amount_minor,
                "response_code": message.response_code,
                "auth_code": message.auth_code,
                "reply_to_seq": message.reply_to_seq,
                "reverses_seq": message.reverses_seq,
                "at_ns": message.at_ns,
            },
        )
        self.conn.execute(
            _FOLLOW_SEQ_SQLITE if self.conn.dialect.name == "sqlite" else _FOLLOW_SEQ_PG,
            {"pk": payment.pk, "seq": message.seq, "at_ns": message.at_ns},
        )

    # ------------------------------------------------------------------ refunds

    def payment_by_pk(self, pk: int, *, lock: bool = False) -> StoredPayment | None:
        """``lock`` (PostgreSQL): ``FOR UPDATE``, so two refunds of one payment checking the
        bound cannot both pass it (SQLite has one writer at a time anyway)."""
        return _payment_by_pk(self.conn, pk, lock=lock)

    def get_refund(self, refund_id: str) -> StoredRefund | None:
        row = self.conn.execute(sa.select(refunds).where(refunds.c.refund_id == refund_id)).first()
        return None if row is None else _refund(row)

    def insert_refund(self, values: dict[str, Any]) -> int:
        key = self.conn.execute(refunds.insert(), values).inserted_primary_key
        assert key is not None
        return int(key[0])

    def refunds_of(self, payment_pk: int) -> list[tuple[CardRefundState, int]]:
        """(state, amount) of every refund of one payment."""
        rows = self.conn.execute(
            sa.select(refunds.c.state, refunds.c.amount_minor).where(
                refunds.c.payment == payment_pk
            )
        )
        return [(CardRefundState(r[0]), int(r[1])) for r in rows]

    def update_refund(self, pk: int, expected: CardRefundState, now_ns: int, **values: Any) -> bool:
        """Change the refund only if it is still in ``expected``; False if it was not."""
        result = self.conn.execute(
            refunds.update()
            .where(refunds.c.id == pk, refunds.c.state == expected.value)
            .values(updated_at_ns=now_ns, **values)
        )
        return result.rowcount == 1

    def add_refund_message(self, refund: StoredRefund, message: CardMessage) -> None:
        self.conn.execute(
            refund_messages.insert(),
            {
                "refund": refund.pk,
                "seq": message.seq,
                "direction": message.direction.value,
                "mti": message.mti,
                "stan": message.stan,
                "transmitted": message.transmitted,
                "rrn": message.rrn,
                "amount_minor": message.amount_minor,
                "response_code": message.response_code,
                "auth_code": message.auth_code,
                "reply_to_seq": message.reply_to_seq,
                "reverses_seq": message.reverses_seq,
                "at_ns": message.at_ns,
            },
        )
        greatest = sa.func.max if self.conn.dialect.name == "sqlite" else sa.func.greatest
        self.conn.execute(
            refunds.update()
            .where(refunds.c.id == refund.pk)
            .values(
                last_seq=greatest(refunds.c.last_seq, message.seq),
                updated_at_ns=message.at_ns,
            )
        )

    def refund_messages(self, pk: int) -> list[CardMessage]:
        rows = self.conn.execute(
            sa.select(refund_messages)
            .where(refund_messages.c.refund == pk)
            .order_by(refund_messages.c.seq)
        )
        return [_message(r) for r in rows]

    def due_refunds(
        self, states: Iterable[CardRefundState], updated_before_ns: int, limit: int
    ) -> list[StoredRefund]:
        rows = self.conn.execute(
            sa.select(refunds)
            .where(
                refunds.c.state.in_([s.value for s in states]),
                refunds.c.updated_at_ns < updated_before_ns,
            )
            .order_by(refunds.c.updated_at_ns)
            .limit(limit)
        )
        return [_refund(r) for r in rows]

    def unsettled_refunds(
        self, acquirer: str, currency: str, rrns: Sequence[str] | None = None
    ) -> list[tuple[int, int]]:
        """(row id, amount) of every posted refund not yet netted out of a settlement."""
        query = sa.select(refunds.c.id, refunds.c.amount_minor).where(
            refunds.c.acquirer == acquirer,
            refunds.c.currency == currency,
            refunds.c.state == CardRefundState.REFUNDED.value,
            refunds.c.settlement_reference.is_(None),
        )
        if rrns is not None:
            query = query.where(refunds.c.rrn.in_(list(rrns)))
        return [(int(r[0]), int(r[1])) for r in self.conn.execute(query)]

    def mark_refunds_settled(self, pks: list[int], reference: str) -> None:
        for start in range(0, len(pks), 500):
            self.conn.execute(
                refunds.update()
                .where(
                    refunds.c.id.in_(pks[start : start + 500]),
                    refunds.c.settlement_reference.is_(None),
                )
                .values(settlement_reference=reference)
            )

    # ------------------------------------------------------------------ settlement

    def unsettled_captures(
        self, acquirer: str, currency: str, rrns: Sequence[str] | None = None
    ) -> list[tuple[int, int]]:
        """(row id, captured amount) of every capture not yet in a settlement (only those
        with the given retrieval reference numbers when ``rrns`` is given)."""
        query = sa.select(payments.c.id, payments.c.captured_minor).where(
            payments.c.acquirer == acquirer,
            payments.c.currency == currency,
            payments.c.state == CardPaymentState.CAPTURED.value,
            payments.c.settlement_reference.is_(None),
        )
        if rrns is not None:
            query = query.where(payments.c.rrn.in_(list(rrns)))
        return [(int(r[0]), int(r[1])) for r in self.conn.execute(query)]

    def settled_by(self, reference: str) -> int:
        """How many captures and refunds one settlement paid (or netted out)."""
        count = 0
        for table in (payments, refunds):
            rows = self.conn.execute(
                sa.select(sa.func.count()).where(table.c.settlement_reference == reference)
            )
            count += int(rows.scalar_one())
        return count

    def mark_settled(self, pks: list[int], reference: str) -> None:
        for start in range(0, len(pks), 500):
            self.conn.execute(
                payments.update()
                .where(
                    payments.c.id.in_(pks[start : start + 500]),
                    payments.c.settlement_reference.is_(None),
                )
                .values(settlement_reference=reference)
            )

    def messages(self, pk: int) -> list[CardMessage]:
        rows = self.conn.execute(
            sa.select(messages).where(messages.c.payment == pk).order_by(messages.c.seq)
        )
        return [_message(r) for r in rows]

    def due(
        self, states: Iterable[CardPaymentState], updated_before_ns: int, limit: int
    ) -> list[StoredPayment]:
        rows = self.conn.execute(
            sa.select(payments)
            .where(
                payments.c.state.in_([s.value for s in states]),
                payments.c.updated_at_ns < updated_before_ns,
            )
            .order_by(payments.c.updated_at_ns)
            .limit(limit)
        )
        return [_payment(r) for r in rows]
