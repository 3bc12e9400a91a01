"""Persistence of payouts and batches: SQLAlchemy Core over the tables of migrations 0004,
0011, 0013 and 0017 (the creditor's name and IBAN, the remittance text and the batch's file
copy are sealed bytes here: the service seals and opens them, the repository only moves them;
0017 says how and why a payout was returned).

A repository wraps one open transaction (a ``Connection`` from ``Database.write()`` or
``.read()``); it never commits. Rows about to change are read ``FOR UPDATE`` (PostgreSQL;
SQLite writers already hold the database lock from ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from paykeep.gateway.payouts.model import (
    Batch,
    BatchState,
    Debtor,
    Payout,
    PayoutState,
    ReturnKind,
)

_meta = sa.MetaData()
payouts = sa.Table(
    "gateway_payouts",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("request_id", sa.String(64)),
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("merchant_ref", sa.String(64)),
    sa.Column("debit_account_name", sa.String(128)),
    sa.Column("amount_minor", sa.BigInteger),
    sa.Column("currency", sa.String(3)),
    sa.Column("creditor_name_enc", sa.LargeBinary),
    sa.Column("creditor_iban_enc", sa.LargeBinary),
    sa.Column("creditor_iban_last4", sa.String(4)),
    sa.Column("creditor_bic", sa.String(11)),
    sa.Column("remittance_enc", sa.LargeBinary),
    sa.Column("end_to_end_id", sa.String(35)),
    sa.Column("state", sa.String(16)),
    sa.Column("batch_id", sa.BigInteger),
    sa.Column("request_transfer_id", sa.BigInteger),
    sa.Column("return_transfer_id", sa.BigInteger),
    sa.Column("expected", sa.Boolean),
    sa.Column("created_at_ns", sa.BigInteger),
    sa.Column("updated_at_ns", sa.BigInteger),
    sa.Column("return_kind", sa.String(16)),
    sa.Column("return_reason_code", sa.String(35)),
    sa.Column("return_reason", sa.Text),
    sa.Column("return_fee_minor", sa.BigInteger),
)
batches = sa.Table(
    "gateway_payout_batches",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("message_id", sa.String(35)),
    sa.Column("schema", sa.String(32)),
    sa.Column("currency", sa.String(3)),
    sa.Column("debtor_name", sa.String(70)),
    sa.Column("debtor_iban", sa.String(34)),
    sa.Column("debtor_bic", sa.String(11)),
    sa.Column("bank", sa.String(32)),
    sa.Column("state", sa.String(16)),
    sa.Column("payout_count", sa.Integer),
    sa.Column("control_sum_minor", sa.BigInteger),
    sa.Column("execution_date", sa.String(10)),
    sa.Column("file_xml_enc", sa.LargeBinary),
    sa.Column("file_sha256", sa.String(64)),
    sa.Column("destination", sa.Text),
    sa.Column("bank_status", sa.String(8)),
    sa.Column("bank_reason", sa.Text),
    sa.Column("created_at_ns", sa.BigInteger),
    sa.Column("updated_at_ns", sa.BigInteger),
)
batch_events = sa.Table(
    "gateway_payout_batch_events",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("batch_id", sa.BigInteger),
    sa.Column("at_ns", sa.BigInteger),
    sa.Column("from_state", sa.String(16)),
    sa.Column("to_state", sa.String(16)),
    sa.Column("detail", sa.Text),
)


def _payout(row: sa.Row[Any]) -> Payout:
    return Payout(
        payout_id=row.id,
        request_id=row.request_id,
        fingerprint=row.fingerprint,
        merchant_ref=row.merchant_ref,
        debit_account_name=row.debit_account_name,
        amount_minor=row.amount_minor,
        currency=row.currency,
        creditor_iban_last4=row.creditor_iban_last4,
        creditor_bic=row.creditor_bic,
        end_to_end_id=row.end_to_end_id,
        state=PayoutState(row.state),
        batch_id=row.batch_id,
        request_transfer_id=row.request_transfer_id,
        return_transfer_id=row.return_transfer_id,
        expected=bool(row.expected),
        created_at_ns=row.created_at_ns,
        updated_at_ns=row.updated_at_ns,
        return_kind=None if row.return_kind is None else ReturnKind(row.return_kind),
        return_reason_code=row.return_reason_code,
        return_reason=row.return_reason,
        return_fee_minor=None if row.return_fee_minor is None else int(row.return_fee_minor),
    )


def _batch(row: sa.Row[Any]) -> Batch:
    return Batch(
        batch_id=row.id,
        message_id=row.message_id,
        schema=row.schema,
        currency=row.currency,
        debtor=Debtor(
            name=row.debtor_name, iban=row.debtor_iban, bank=row.bank, bic=row.debtor_bic
        ),
        state=BatchState(row.state),
        payout_count=row.payout_count,
        control_sum_minor=row.control_sum_minor,
        execution_date=row.execution_date,
        file_sha256=row.file_sha256,
        destination=row.destination,
        bank_status=row.bank_status,
        bank_reason=row.bank_reason,
        created_at_ns=row.created_at_ns,
        updated_at_ns=row.updated_at_ns,
    )


_BATCH_COLUMNS = [c for c in batches.c if c.name != "file_xml_enc"]
_SEALED_PAYOUT_COLUMNS = ("creditor_name_enc", "creditor_iban_enc", "remittance_enc")
_PAYOUT_COLUMNS = [c for c in payouts.c if c.name not in _SEALED_PAYOUT_COLUMNS]


def _sealed(value: Any) -> bytes:
    return bytes(value)  # psycopg returns memoryview for bytea, sqlite3 bytes


@dataclass(frozen=True, slots=True)
class SealedLine:
    """What a payout's pain.001 line needs that is sealed at rest (purposes in ``model``)."""

    creditor_name_enc: bytes
    creditor_iban_enc: bytes
    remittance_enc: bytes


class PayoutRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.postgres = conn.dialect.name == "postgresql"

    def _locked(self, query: sa.Select[Any], for_update: bool) -> sa.Select[Any]:
        return query.with_for_update() if for_update and self.postgres else query

    # --- payouts -------------------------------------------------------------------------

    def insert_payout(
        self,
        payout: Payout,
        *,
        creditor_name_enc: bytes,
        creditor_iban_enc: bytes,
        remittance_enc: bytes,
    ) -> None:
        self.conn.execute(
            sa.insert(payouts).values(
                id=payout.payout_id,
                request_id=payout.request_id,
                fingerprint=payout.fingerprint,
                merchant_ref=payout.merchant_ref,
                debit_account_name=payout.debit_account_name,
                amount_minor=payout.amount_minor,
                currency=payout.currency,
                creditor_name_enc=creditor_name_enc,
                creditor_iban_enc=creditor_iban_enc,
                creditor_iban_last4=payout.creditor_iban_last4,
                creditor_bic=payout.creditor_bic,
                remittance_enc=remittance_enc,
                end_to_end_id=payout.end_to_end_id,
                state=payout.state.value,
                batch_id=payout.batch_id,
                request_transfer_id=payout.request_transfer_id,
                return_transfer_id=payout.return_transfer_id,
                expected=payout.expected,
                created_at_ns=payout.created_at_ns,
                updated_at_ns=payout.updated_at_ns,
            )
        )

    def sealed_lines(self, payout_ids: Sequence[int]) -> dict[int, SealedLine]:
        """``payout id -> its sealed creditor and remittance``: what the file builder opens."""
        rows = self.conn.execute(
            sa.select(
                payouts.c.id,
                payouts.c.creditor_name_enc,
                payouts.c.creditor_iban_enc,
                payouts.c.remittance_enc,
            ).where(payouts.c.id.in_(list(payout_ids)))
        )
        return {
            r.id: SealedLine(
                _sealed(r.creditor_name_enc),
                _sealed(r.creditor_iban_enc),
                _sealed(r.remittance_enc),
            )
            for r in rows
        }

    def payout(self, payout_id: int, *, for_update: bool = False) -> Payout | None:
        row = self.conn.execute(
            self._locked(sa.select(*_PAYOUT_COLUMNS).where(payouts.c.id == payout_id), for_update)
        ).first()
        return None if row is None else _payout(row)

    def payout_by_request(self, request_id: str) -> Payout | None:
        row = self.conn.execute(
            sa.select(*_PAYOUT_COLUMNS).where(payouts.c.request_id == request_id)
        ).first()
        return None if row is None else _payout(row)

    def payout_by_end_to_end_id(self, end_to_end_id: str) -> Payout | None:
        row = self.conn.execute(
            sa.select(*_PAYOUT_COLUMNS).where(payouts.c.end_to_end_id == end_to_end_id)
        ).first()
        return None if row is None else _payout(row)

    def requested(self, currency: str, limit: int) -> list[Payout]:
        """The oldest payouts waiting for a batch, locked against a concurrent batcher."""
        query = (
            sa.select(*_PAYOUT_COLUMNS)
            .where(payouts.c.state == PayoutState.REQUESTED.value)
            .where(payouts.c.currency == currency)
            .order_by(payouts.c.id)
            .limit(limit)
        )
        if self.postgres:
            query = query.with_for_update(skip_locked=True)
        return [_payout(r) for r in self.conn.execute(query)]

    def batch_payouts(self, batch_id: int) -> list[Payout]:
        rows = self.conn.execute(
            sa.select(*_PAYOUT_COLUMNS).where(payouts.c.batch_id == batch_id).order_by(payouts.c.id)
        )
        return [_payout(r) for r in rows]

    def batch_payout_states(self, batch_id: int) -> set[PayoutState]:
        """The states the batch's payouts are in (one small row per state, through the batch
        index): settling a batch's payouts one by one asks this after each."""
        rows = self.conn.execute(
            sa.select(payouts.c.state).where(payouts.c.batch_id == batch_id).distinct()
        )
        return {PayoutState(r[0]) for r in rows}

    def update_payout(self, payout_id: int, **values: Any) -> None:
        self.conn.execute(sa.update(payouts).where(payouts.c.id == payout_id).values(**values))

    def page(self, state: PayoutState | None, after_id: int, limit: int) -> list[Payout]:
        query = sa.select(*_PAYOUT_COLUMNS).where(payouts.c.id > after_id)
        if state is not None:
            query = query.where(payouts.c.state == state.value)
        rows = self.conn.execute(query.order_by(payouts.c.id).limit(limit))
        return [_payout(r) for r in rows]

    def payouts_needing_work(self, limit: int) -> list[Payout]:
        """Payouts a crash may have left half-done: a rejected batch's payouts not yet
        returned, an accepted batch's payouts not yet registered with the statements."""
        query = (
            sa.select(*_PAYOUT_COLUMNS)
            .join(batches, batches.c.id == payouts.c.batch_id)
            .where(
                sa.or_(
                    sa.and_(
                        batches.c.state == BatchState.REJECTED.value,
                        payouts.c.state == PayoutState.BATCHED.value,
                    ),
                    sa.and_(
                        payouts.c.state == PayoutState.ACCEPTED.value,
                        payouts.c.expected.is_(False),
                    ),
                )
            )
            .order_by(payouts.c.id)
            .limit(limit)
        )
        return [_payout(r) for r in self.conn.execute(query)]

    def accepted_expected(self, limit: int) -> list[Payout]:
        """Accepted payouts registered with the statements service: waiting for their line."""
        rows = self.conn.execute(
            sa.select(*_PAYOUT_COLUMNS)
            .where(payouts.c.state == PayoutState.ACCEPTED.value)
            .where(payouts.c.expected.is_(True))
            .order_by(payouts.c.id)
            .limit(limit)
        )
        return [_payout(r) for r in rows]

    # --- batches -------------------------------------------------------------------------

    def insert_batch(self, batch: Batch, file_xml_enc: bytes | None) -> None:
        self.conn.execute(
            sa.insert(batches).values(
                id=batch.batch_id,
                message_id=batch.message_id,
                schema=batch.schema,
                currency=batch.currency,
                debtor_name=batch.debtor.name,
                debtor_iban=batch.debtor.iban,
                debtor_bic=batch.debtor.bic,
                bank=batch.debtor.bank,
                state=batch.state.value,
                payout_count=batch.payout_count,
                control_sum_minor=batch.control_sum_minor,
                execution_date=batch.execution_date,
                file_xml_enc=file_xml_enc,
                file_sha256=batch.file_sha256,
                destination=batch.destination,
                bank_status=batch.bank_status,
                bank_reason=batch.bank_reason,
                created_at_ns=batch.created_at_ns,
                updated_at_ns=batch.updated_at_ns,
            )
        )

    def batch(self, batch_id: int, *, for_update: bool = False) -> Batch | None:
        row = self.conn.execute(
            self._locked(sa.select(*_BATCH_COLUMNS).where(batches.c.id == batch_id), for_update)
        ).first()
        return None if row is None else _batch(row)

    def sealed_batch_file(self, batch_id: int) -> bytes | None:
        sealed = self.conn.execute(
            sa.select(batches.c.file_xml_enc).where(batches.c.id == batch_id)
        ).scalar()
        return None if sealed is None else _sealed(sealed)

    def update_batch(self, batch_id: int, **values: Any) -> None:
        self.conn.execute(sa.update(batches).where(batches.c.id == batch_id).values(**values))

    def batches_page(self, state: BatchState | None, after_id: int, limit: int) -> list[Batch]:
        query = sa.select(*_BATCH_COLUMNS).where(batches.c.id > after_id)
        if state is not None:
            query = query.where(batches.c.state == state.value)
        rows = self.conn.execute(query.order_by(batches.c.id).limit(limit))
        return [_batch(r) for r in rows]

    def add_event(
        self,
        batch_id: int,
        at_ns: int,
        from_state: BatchState | None,
        to_state: BatchState,
        detail: str,
    ) -> None:
        self.conn.execute(
            sa.insert(batch_events).values(
                batch_id=batch_id,
                at_ns=at_ns,
                from_state=None if from_state is None else from_state.value,
                to_state=to_state.value,
                detail=detail,
            )
        )

    def events(self, batch_id: int) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            sa.select(batch_events)
            .where(batch_events.c.batch_id == batch_id)
            .order_by(batch_events.c.id)
        )
        return [
            {
                "at_ns": r.at_ns,
                "from_state": r.from_state,
                "to_state": r.to_state,
                "detail": r.detail,
            }
            for r in rows
        ]

    def message_ids(self, ids: Sequence[int]) -> dict[int, str]:
        rows = self.conn.execute(
            sa.select(batches.c.id, batches.c.message_id).where(batches.c.id.in_(list(ids)))
        )
        return {r.id: r.message_id for r in rows}
