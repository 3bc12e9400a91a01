"""Persistence of vault rows (table ``card_vault`` of migration 0005). Never commits."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_meta = sa.MetaData()
card_vault = sa.Table(
    "card_vault",
    _meta,
    sa.Column("token", sa.String(40), primary_key=True),
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("key_id", sa.String(16)),
    sa.Column("ciphertext", sa.LargeBinary),
    sa.Column("brand", sa.String(16)),
    sa.Column("last4", sa.String(4)),
    sa.Column("exp_month", sa.Integer),
    sa.Column("exp_year", sa.Integer),
    sa.Column("created_at_ns", sa.BigInteger),
    sa.Column("updated_at_ns", sa.BigInteger),
)


@dataclass(frozen=True, slots=True)
class VaultRow:
    token: str
    fingerprint: str
    key_id: str
    ciphertext: bytes
    brand: str
    last4: str
    exp_month: int
    exp_year: int


def _row(r: sa.Row[tuple[object, ...]]) -> VaultRow:
    m = r._mapping
    return VaultRow(
        str(m["token"]), str(m["fingerprint"]), str(m["key_id"]), bytes(m["ciphertext"]),
        str(m["brand"]), str(m["last4"]), int(m["exp_month"]), int(m["exp_year"]),
    )  # fmt: skip


#: Built once: the hot lookup of every card payment reuses its compiled form.
_BY_TOKEN = sa.select(card_vault).where(card_vault.c.token == sa.bindparam("token"))


class VaultRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def by_token(self, token: str) -> VaultRow | None:
        r = self.conn.execute(_BY_TOKEN, {"token": token}).first()
        return None if r is None else _row(r)

    def by_fingerprint(self, fingerprint: str) -> VaultRow | None:
        r = self.conn.execute(
            sa.select(card_vault).where(card_vault.c.fingerprint == fingerprint)
        ).first()
        return None if r is None else _row(r)

    def insert(self, row: VaultRow, now_ns: int) -> None:
        self.conn.execute(
            card_vault.insert().values(
                token=row.token, fingerprint=row.fingerprint, key_id=row.key_id,
                ciphertext=row.ciphertext, brand=row.brand, last4=row.last4,
                exp_month=row.exp_month, exp_year=row.exp_year,
                created_at_ns=now_ns, updated_at_ns=now_ns,
            )
        )  # fmt: skip

    def update_expiry(self, token: str, exp_month: int, exp_year: int, now_ns: int) -> None:
        self.conn.execute(
            card_vault.update()
            .where(card_vault.c.token == token)
            .values(exp_month=exp_month, exp_year=exp_year, updated_at_ns=now_ns)
        )

    def update_ciphertext(
        self, token: str, old_key_id: str, key_id: str, ciphertext: bytes, now_ns: int
    ) -> bool:
        result = self.conn.execute(
            card_vault.update()
            .where(card_vault.c.token == token, card_vault.c.key_id == old_key_id)
            .values(key_id=key_id, ciphertext=ciphertext, updated_at_ns=now_ns)
        )
        return result.rowcount == 1

    def not_under(self, key_id: str, limit: int) -> list[VaultRow]:
        rows = self.conn.execute(
            sa.select(card_vault)
            .where(card_vault.c.key_id != key_id)
            .order_by(card_vault.c.token)
            .limit(limit)
        )
        return [_row(r) for r in rows]

    def key_ids(self) -> dict[str, int]:
        rows = self.conn.execute(
            sa.select(card_vault.c.key_id, sa.func.count()).group_by(card_vault.c.key_id)
        )
        return {str(k): int(n) for k, n in rows}
