"""Marketplace payments: merchants, buyers, API keys, orders with the escrow state machine,
payments, shipments, refunds, disputes, reserves, checkout sessions, the event outbox and
webhook delivery, idempotency keys.

Personal data (a buyer's name and email, a merchant's payout IBAN, webhook and carrier
secrets) is stored only as AES-GCM ciphertext (``*_enc``) with, where it must be looked up, a
keyed HMAC (``*_hmac``); API keys only as a SHA-256 hash beside a readable prefix.

``payments_events`` is append-only (a trigger refuses UPDATE and DELETE on both databases):
every state change writes its event in the same transaction (the outbox).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ROWID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

ORDER_STATES = (
    "created",
    "awaiting_shipment",
    "awaiting_receipt",
    "completed",
    "closed",
    "refunded",
    "partially_refunded",
)
REFUND_STATES = (
    "requested",
    "merchant_agreed",
    "merchant_refused",
    "return_shipped",
    "return_received",
    "disputed",
    "completed",
    "rejected",
    "cancelled",
)


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def _ts(name: str, nullable: bool = False) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger, nullable=nullable)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "payments_merchants",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("legal_name", sa.String(140), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("payout_iban_enc", sa.LargeBinary, nullable=True),
        sa.Column("payout_iban_last4", sa.String(4), nullable=True),
        sa.Column("payout_iban_verified", sa.Boolean, nullable=False),
        sa.Column("fee_percent_bp", sa.Integer, nullable=False),
        sa.Column("fee_fixed_minor", sa.BigInteger, nullable=False),
        sa.Column("reserve_percent_bp", sa.Integer, nullable=False),
        sa.Column("reserve_hold_s", sa.BigInteger, nullable=False),
        sa.Column("unpaid_close_s", sa.BigInteger, nullable=False),
        sa.Column("ship_by_s", sa.BigInteger, nullable=False),
        sa.Column("confirm_after_delivery_s", sa.BigInteger, nullable=False),
        sa.Column("confirm_after_shipping_s", sa.BigInteger, nullable=False),
        sa.Column("payment_reference", sa.String(35), nullable=False, unique=True),
        _ts("created_at_ns"),
        sa.CheckConstraint("fee_percent_bp BETWEEN 0 AND 10000", name="ck_merchants_fee_bp"),
        sa.CheckConstraint("fee_fixed_minor >= 0", name="ck_merchants_fee_fixed"),
        sa.CheckConstraint("reserve_percent_bp BETWEEN 0 AND 10000", name="ck_merchants_rsv"),
    )
    op.create_table(
        "payments_api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("prefix", sa.String(24), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("payments_merchants.id")),
        sa.Column("label", sa.String(80), nullable=True),
        _ts("created_at_ns"),
        _ts("revoked_at_ns", nullable=True),
        sa.CheckConstraint("role IN ('operator', 'merchant')", name="ck_api_keys_role"),
        sa.CheckConstraint(
            "(role = 'merchant') = (merchant_id IS NOT NULL)", name="ck_api_keys_owner"
        ),
    )
    op.create_table(
        "payments_idempotency_keys",
        sa.Column("principal", sa.String(40), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(255), nullable=False),
        sa.Column("request_sha256", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("response_body", sa.LargeBinary, nullable=True),
        _ts("created_at_ns"),
        _ts("expires_at_ns"),
    )
    op.create_index("ix_idempotency_expiry", "payments_idempotency_keys", ["expires_at_ns"])
    op.create_table(
        "payments_buyers",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("payments_merchants.id")),
        sa.Column("name_enc", sa.LargeBinary, nullable=False),
        sa.Column("email_enc", sa.LargeBinary, nullable=False),
        sa.Column("email_hmac", sa.String(64), nullable=False),
        sa.Column("payment_reference", sa.String(35), nullable=False, unique=True),
        _ts("created_at_ns"),
    )
    op.create_index("ix_buyers_merchant", "payments_buyers", ["merchant_id", "id"])
    op.create_table(
        "payments_orders",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "merchant_id", sa.String(40), sa.ForeignKey("payments_merchants.id"), nullable=False
        ),
        sa.Column("buyer_id", sa.String(40), sa.ForeignKey("payments_buyers.id"), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("fee_minor", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("funding", sa.String(16), nullable=True),
        sa.Column("hold_transfer_id", sa.BigInteger, nullable=True),
        sa.Column("refunded_minor", sa.BigInteger, nullable=False),
        sa.Column("released_minor", sa.BigInteger, nullable=False),
        sa.Column("disputed", sa.Boolean, nullable=False),
        sa.Column("timer", sa.String(32), nullable=True),
        _ts("timer_due_ns", nullable=True),
        sa.Column("description", sa.String(500), nullable=True),
        sa.Column("merchant_reference", sa.String(64), nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        _ts("paid_at_ns", nullable=True),
        _ts("shipped_at_ns", nullable=True),
        _ts("delivered_at_ns", nullable=True),
        _ts("created_at_ns"),
        _ts("updated_at_ns"),
        sa.CheckConstraint(f"state IN {_in(ORDER_STATES)}", name="ck_orders_state"),
        sa.CheckConstraint("amount_minor > 0", name="ck_orders_amount"),
        sa.CheckConstraint("fee_minor >= 0 AND fee_minor <= amount_minor", name="ck_orders_fee"),
        sa.CheckConstraint(
            "refunded_minor >= 0 AND released_minor >= 0 "
            "AND refunded_minor + released_minor <= amount_minor",
            name="ck_orders_split",
        ),
    )
    op.create_index("ix_orders_merchant", "payments_orders", ["merchant_id", "id"])
    op.create_index("ix_orders_buyer", "payments_orders", ["buyer_id", "id"])
    op.create_index("ix_orders_timer", "payments_orders", ["timer_due_ns"])
    op.create_table(
        "payments_order_items",
        sa.Column("order_id", sa.String(40), sa.ForeignKey("payments_orders.id"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("description", sa.String(200), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("unit_amount_minor", sa.BigInteger, nullable=False),
        sa.CheckConstraint("quantity > 0", name="ck_items_quantity"),
        sa.CheckConstraint("unit_amount_minor > 0", name="ck_items_unit"),
    )
    op.create_table(
        "payments_payments",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("order_id", sa.String(40), sa.ForeignKey("payments_orders.id"), nullable=False),
        sa.Column("merchant_id", sa.String(40), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("card_payment_id", sa.String(64), nullable=True, unique=True),
        sa.Column("card_brand", sa.String(16), nullable=True),
        sa.Column("card_last4", sa.String(4), nullable=True),
        sa.Column("decline_code", sa.String(48), nullable=True),
        sa.Column("decline_message", sa.String(200), nullable=True),
        _ts("created_at_ns"),
        _ts("updated_at_ns"),
        sa.CheckConstraint(
            "state IN ('processing', 'succeeded', 'failed')", name="ck_payments_state"
        ),
    )
    op.create_index("ix_payments_order", "payments_payments", ["order_id", "id"])
    op.create_index("ix_payments_merchant", "payments_payments", ["merchant_id", "id"])
    op.create_table(
        "payments_carriers",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("secret_enc", sa.LargeBinary, nullable=False),
        _ts("created_at_ns"),
    )
    op.create_table(
        "payments_shipments",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("order_id", sa.String(40), sa.ForeignKey("payments_orders.id"), nullable=False),
        sa.Column("merchant_id", sa.String(40), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("carrier", sa.String(64), nullable=False),
        sa.Column("tracking_number", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _ts("created_at_ns"),
        _ts("updated_at_ns"),
        sa.UniqueConstraint("carrier", "tracking_number", name="uq_shipments_tracking"),
        sa.CheckConstraint("direction IN ('outbound', 'return')", name="ck_shipments_dir"),
    )
    op.create_index("ix_shipments_order", "payments_shipments", ["order_id"])
    op.create_table(
        "payments_shipment_events",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "shipment_id", sa.String(40), sa.ForeignKey("payments_shipments.id"), nullable=False
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("external_id", sa.String(64), nullable=True),
        _ts("occurred_at_ns"),
        _ts("recorded_at_ns"),
        sa.UniqueConstraint("shipment_id", "source", "external_id", name="uq_shipment_event_ext"),
        sa.CheckConstraint(
            "kind IN ('picked_up', 'in_transit', 'delivered', 'returned')", name="ck_ship_ev"
        ),
    )
    op.create_table(
        "payments_refunds",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("order_id", sa.String(40), sa.ForeignKey("payments_orders.id"), nullable=False),
        sa.Column("merchant_id", sa.String(40), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("return_required", sa.Boolean, nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        _ts("created_at_ns"),
        _ts("updated_at_ns"),
        sa.CheckConstraint(f"state IN {_in(REFUND_STATES)}", name="ck_refunds_state"),
        sa.CheckConstraint("amount_minor > 0", name="ck_refunds_amount"),
    )
    op.create_index("ix_refunds_order", "payments_refunds", ["order_id"])
    op.create_table(
        "payments_disputes",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("order_id", sa.String(40), sa.ForeignKey("payments_orders.id"), nullable=False),
        sa.Column("refund_id", sa.String(40), sa.ForeignKey("payments_refunds.id")),
        sa.Column("merchant_id", sa.String(40), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("buyer_share_minor", sa.BigInteger, nullable=True),
        sa.Column("merchant_share_minor", sa.BigInteger, nullable=True),
        sa.Column("decided_by", sa.String(40), nullable=True),
        sa.Column("decision_note", sa.String(1000), nullable=True),
        _ts("created_at_ns"),
        _ts("updated_at_ns"),
        sa.CheckConstraint("state IN ('open', 'decided')", name="ck_disputes_state"),
    )
    op.create_index("ix_disputes_order", "payments_disputes", ["order_id"])
    op.create_table(
        "payments_reserves",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("merchant_id", sa.String(40), nullable=False),
        sa.Column("order_id", sa.String(40), nullable=False, unique=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        _ts("release_at_ns"),
        _ts("released_at_ns", nullable=True),
    )
    op.create_index("ix_reserves_due", "payments_reserves", ["released_at_ns", "release_at_ns"])
    op.create_table(
        "payments_payouts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("merchant_id", sa.String(40), nullable=False),
        sa.Column("gateway_payout_id", sa.BigInteger, nullable=True),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _ts("created_at_ns"),
        _ts("updated_at_ns"),
        sa.CheckConstraint("amount_minor > 0", name="ck_payments_payouts_amount"),
    )
    op.create_index("ix_payments_payouts_merchant", "payments_payouts", ["merchant_id", "id"])
    op.create_table(
        "payments_checkout_sessions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("merchant_id", sa.String(40), nullable=False),
        sa.Column("order_id", sa.String(40), sa.ForeignKey("payments_orders.id"), nullable=False),
        sa.Column("success_url", sa.String(500), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        _ts("expires_at_ns"),
        _ts("created_at_ns"),
        sa.CheckConstraint("state IN ('open', 'complete', 'expired')", name="ck_checkout_state"),
    )
    op.create_index("ix_checkout_merchant", "payments_checkout_sessions", ["merchant_id", "id"])
    op.create_table(
        "payments_events",
        sa.Column("seq", ROWID, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(40), nullable=False, unique=True),
        sa.Column("merchant_id", sa.String(40), nullable=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("object_id", sa.String(40), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        _ts("created_at_ns"),
    )
    op.create_index("ix_events_merchant", "payments_events", ["merchant_id", "seq"])
    op.create_index("ix_events_object", "payments_events", ["object_id", "seq"])
    op.create_table(
        "payments_webhook_endpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "merchant_id", sa.String(40), sa.ForeignKey("payments_merchants.id"), nullable=False
        ),
        sa.Column("url", sa.String(500), nullable=False),
        sa.Column("secret_enc", sa.LargeBinary, nullable=False),
        sa.Column("event_types", sa.Text, nullable=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        _ts("created_at_ns"),
    )
    op.create_index("ix_endpoints_merchant", "payments_webhook_endpoints", ["merchant_id"])
    op.create_table(
        "payments_webhook_deliveries",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("event_id", sa.String(40), nullable=False),
        sa.Column("endpoint_id", sa.String(40), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        _ts("next_attempt_at_ns", nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        _ts("created_at_ns"),
        _ts("updated_at_ns"),
        sa.UniqueConstraint("event_id", "endpoint_id", "created_at_ns", name="uq_delivery"),
        sa.CheckConstraint("state IN ('pending', 'delivered', 'dead')", name="ck_deliveries_state"),
    )
    op.create_index(
        "ix_deliveries_due", "payments_webhook_deliveries", ["state", "next_attempt_at_ns"]
    )
    op.create_table(
        "payments_topups",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("statement_row_id", sa.BigInteger, nullable=False),
        sa.Column("line", sa.Integer, nullable=False),
        sa.Column("buyer_id", sa.String(40), sa.ForeignKey("payments_buyers.id"), nullable=False),
        sa.Column("merchant_id", sa.String(40), nullable=True),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("risk_outcome", sa.String(16), nullable=False),
        sa.Column("transfer_id", sa.BigInteger, nullable=True),
        sa.Column("released_by", sa.String(40), nullable=True),
        _ts("created_at_ns"),
        _ts("updated_at_ns"),
        sa.UniqueConstraint("statement_row_id", "line", name="uq_topups_line"),
        sa.CheckConstraint("state IN ('credited', 'held')", name="ck_topups_state"),
        sa.CheckConstraint("amount_minor > 0", name="ck_topups_amount"),
    )
    op.create_index("ix_topups_buyer", "payments_topups", ["buyer_id", "id"])
    op.create_table(
        "payments_outbox_cursor",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    table = "payments_events"
    if postgres:
        op.execute(
            """
            CREATE FUNCTION payments_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '% is append-only', TG_TABLE_NAME
                    USING ERRCODE = 'integrity_constraint_violation';
            END $$
            """
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION payments_events_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
            )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("DROP TRIGGER IF EXISTS payments_events_append_only ON payments_events")
        op.execute("DROP FUNCTION IF EXISTS payments_events_append_only()")
    for table in (
        "payments_outbox_cursor",
        "payments_topups",
        "payments_webhook_deliveries",
        "payments_webhook_endpoints",
        "payments_events",
        "payments_checkout_sessions",
        "payments_payouts",
        "payments_reserves",
        "payments_disputes",
        "payments_refunds",
        "payments_shipment_events",
        "payments_shipments",
        "payments_carriers",
        "payments_payments",
        "payments_order_items",
        "payments_orders",
        "payments_buyers",
        "payments_idempotency_keys",
        "payments_api_keys",
        "payments_merchants",
    ):
        op.drop_table(table)
