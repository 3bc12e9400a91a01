"""Webhook delivery: the outbox ``payments_events`` to merchants' endpoints, at least once.

Data flow (each arrow is one short database transaction; HTTP happens between them, never
inside one):

1. ``fan_out`` reads events after the ``webhooks`` cursor in ``seq`` order, creates one
   ``pending`` delivery per (event, enabled endpoint of the event's merchant subscribed to its
   type) and advances the cursor, all in one transaction. PostgreSQL: the cursor row is locked
   ``FOR UPDATE SKIP LOCKED`` (a second worker finds it locked and returns 0); SQLite
   serialises writers anyway.
2. A claim picks due deliveries (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), at most a few
   per endpoint, and leases them by pushing ``next_attempt_at_ns`` past the attempt's longest
   duration, then commits.
3. Each POST runs on its own thread of the service's pool, outside any transaction. The pool
   threads only sign and send: they never touch the database.
4. Each result is written soon after its attempt ends, by the thread that claimed it, with the
   other results that ended meanwhile, in one transaction; each row is guarded by its claim
   (state, attempts and lease unchanged): a worker whose lease ran out (another took the
   delivery over) writes nothing, so each attempt number is recorded once.

The worker loop (``run_webhook_worker``, and ``webhook_pass`` in ``cycle``) drives a
``DeliveryPump``: every round it records the attempts that have ended, then claims due
deliveries for its free slots (``DELIVERIES_IN_FLIGHT_MAX`` in all, at most
``DELIVERIES_PER_ENDPOINT_IN_FLIGHT_MAX`` per endpoint; an endpoint with its share in flight
is left out of the claim) and starts them, without waiting for the attempts still in flight.
So a slow or hanging endpoint delays only its own deliveries. ``deliver_due`` is the
synchronous form (claim once, return when every attempt is recorded), for tests and scripts.

Receivers must be idempotent on ``webhook-id`` (the event id): delivery is at least once, a
lease that runs out or a replay sends the same event again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, MutableMapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Final

import httpx
import sqlalchemy as sa
from sqlalchemy import Connection

from paykeep.clock import NS_PER_S, Clock, SystemClock, monotonic_s
from paykeep.db import Database
from paykeep.db.errors import DatabaseUnavailable
from paykeep.db.quarantine import PassItems, Quarantine, error_code, is_database_unavailable
from paykeep.ids import IdGenerator
from paykeep.security.errors import FieldDecryptionFailed
from paykeep.security.fields import FieldCipher
from paykeep.workers import outbox_gaps
from paykeep.workers import webhook_model as model
from paykeep.workers.webhook_egress import GuardedTransport, check_destination
from paykeep.workers.webhook_model import (
    AttemptResult,
    DeliveryState,
    EventNotFound,
    IPNetwork,
    SigningSecrets,
    WebhookDestinationNotAllowed,
    WebhookEndpointDisabled,
    WebhookEndpointLimitReached,
    WebhookEndpointNotFound,
    WebhookMerchantUnknown,
    WebhookParameterInvalid,
    WebhookReplayConflict,
    WebhookReplayLimitReached,
)

log = logging.getLogger("paykeep.workers.webhooks")

CURSOR_NAME: Final = "webhooks"
ENDPOINT_ID_PREFIX: Final = "we_"
DELIVERY_ID_PREFIX: Final = "whd_"
#: The ``purpose`` of the sealed secret (bound into the AES-GCM associated data).
SECRET_PURPOSE: Final = "webhook_endpoint.secret"  # noqa: S105 (a label)
ERROR_ENDPOINT_DISABLED: Final = "endpoint disabled"
ERROR_UNSEALABLE: Final = "signing secret cannot be opened (vault key missing?)"
#: The passes' names among the workers' items (``paykeep.db.quarantine``).
FAN_OUT_ITEMS: Final = "webhooks.fan_out"
RECORD_ITEMS: Final = "webhooks.record"

_ENDPOINT_COLUMNS = "id, merchant_id, url, event_types, enabled, created_at_ns"
_DELIVERY_COLUMNS = (
    "d.id, d.event_id, d.endpoint_id, d.state, d.attempts, d.next_attempt_at_ns, "
    "d.last_status, d.last_error, d.created_at_ns, d.updated_at_ns"
)


# --- Views ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointView:
    """An endpoint as its merchant sees it (never the secret)."""

    id: str
    merchant_id: str
    url: str
    event_types: tuple[str, ...] | None  # None: every type
    enabled: bool
    created_at_ns: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "webhook_endpoint",
            "merchant_id": self.merchant_id,
            "url": self.url,
            "event_types": list(self.event_types) if self.event_types is not None else ["*"],
            "enabled": self.enabled,
            "created": self.created_at_ns // NS_PER_S,
        }


@dataclass(frozen=True, slots=True)
class DeliveryView:
    id: str
    event_id: str
    endpoint_id: str
    state: DeliveryState
    attempts: int
    next_attempt_at_ns: int | None  # while in flight: the end of the worker's lease
    last_status: int | None
    last_error: str | None
    created_at_ns: int
    updated_at_ns: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "webhook_delivery",
            "event_id": self.event_id,
            "endpoint_id": self.endpoint_id,
            "state": self.state.value,
            "attempts": self.attempts,
            "next_attempt_at": (
                None if self.next_attempt_at_ns is None else self.next_attempt_at_ns // NS_PER_S
            ),
            "last_status": self.last_status,
            "last_error": self.last_error,
            "created": self.created_at_ns // NS_PER_S,
            "updated": self.updated_at_ns // NS_PER_S,
        }


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    """Newest first (ids are time-ordered); ``has_more``: a next page exists after the last."""

    data: tuple[DeliveryView, ...]
    has_more: bool


@dataclass(frozen=True, slots=True)
class _Claim:
    delivery_id: str
    event_id: str
    attempts: int
    lease_until_ns: int
    url: str
    secret_enc: bytes
    endpoint_id: str
    payload: str


def _endpoint(row: sa.Row[Any]) -> EndpointView:
    return EndpointView(
        id=row.id,
        merchant_id=row.merchant_id,
        url=row.url,
        event_types=model.decode_event_types(row.event_types),
        enabled=bool(row.enabled),
        created_at_ns=int(row.created_at_ns),
    )


def _delivery(row: sa.Row[Any]) -> DeliveryView:
    return DeliveryView(
        id=row.id,
        event_id=row.event_id,
        endpoint_id=row.endpoint_id,
        state=DeliveryState(row.state),
        attempts=int(row.attempts),
        next_attempt_at_ns=None if row.next_attempt_at_ns is None else int(row.next_attempt_at_ns),
        last_status=None if row.last_status is None else int(row.last_status),
        last_error=row.last_error,
        created_at_ns=int(row.created_at_ns),
        updated_at_ns=int(row.updated_at_ns),
    )


_INSERT_DELIVERY = sa.text(
    "INSERT INTO payments_webhook_deliveries (id, event_id, endpoint_id, state, attempts, "
    "next_attempt_at_ns, last_status, last_error, created_at_ns, updated_at_ns) VALUES "
    "(:id, :event_id, :endpoint_id, 'pending', 0, :now, NULL, NULL, :now, :now)"
)
_RECORD_ATTEMPT = sa.text(
    "UPDATE payments_webhook_deliveries SET state = :state, attempts = :attempts, "
    "next_attempt_at_ns = :next_attempt_at_ns, last_status = :last_status, "
    "last_error = :last_error, updated_at_ns = :now "
    "WHERE id = :id AND state = 'pending' AND attempts = :attempts_before "
    "AND next_attempt_at_ns = :lease_until_ns"
)


# --- The service ----------------------------------------------------------------------------


class WebhookService:
    """Endpoints, fan-out, delivery, replay and the delivery log.

    ``merchant_id`` arguments scope every read and action to one merchant: another merchant's
    endpoint or event is "not found", never "forbidden". ``None`` is the operator's scope
    (every merchant) where the signature allows it.

    ``allowed_networks`` opens private networks to endpoints (local development, tests, a
    merchant inside our network): by default only globally routable addresses are, at
    registration and at every connection a delivery opens (see ``webhook_egress``).
    """

    def __init__(
        self,
        database: Database,
        cipher: FieldCipher,
        clock: Clock | None = None,
        http_timeout_s: float = model.HTTP_TIMEOUT_S_DEFAULT,
        *,
        allowed_networks: Sequence[IPNetwork] = (),
    ) -> None:
        if not 0 < http_timeout_s <= model.HTTP_TIMEOUT_S_MAX:
            raise WebhookParameterInvalid(
                f"http_timeout_s must be in (0, {model.HTTP_TIMEOUT_S_MAX}]",
                param="http_timeout_s",
            )
        self.database = database
        self.cipher = cipher
        self.clock = clock or SystemClock()
        self.http_timeout_s = http_timeout_s
        self.allowed_networks = tuple(allowed_networks)
        if self.allowed_networks:
            log.info(
                "webhook endpoints may be on these networks too: %s",
                model.format_allowed_networks(self.allowed_networks),
            )
        self._ids = IdGenerator(self.clock)
        #: Events and deliveries that failed unexpectedly: backed off, then parked.
        self.quarantine = Quarantine(database, self.clock)
        self._record_items: tuple[float, PassItems] | None = None
        # The gap in the outbox the cursor waits at, if any (PostgreSQL; see outbox_gaps).
        self._gap_watch: outbox_gaps.GapWatch | None = None
        self._gap_warned_ns = 0
        # An attempt's wall-time budget (monotonic) for reading an error body; the lease is
        # longer, so a worker always finishes (or gives up) before another may take over.
        self._attempt_budget_s = model.LEASE_TIMEOUTS * http_timeout_s
        self._http = httpx.Client(
            timeout=httpx.Timeout(http_timeout_s),
            follow_redirects=False,
            # Deliveries go straight to the merchant: no proxy or .netrc from the environment.
            trust_env=False,
            # Every connection goes to an address checked against the SSRF rules.
            transport=GuardedTransport(
                self.allowed_networks,
                httpx.Limits(
                    max_connections=model.DELIVERIES_IN_FLIGHT_MAX,
                    max_keepalive_connections=model.DELIVERIES_IN_FLIGHT_MAX,
                ),
            ),
        )
        # Attempts run on threads kept for the service's life (a pool per call started up to
        # DELIVER_BATCH_MAX threads every quarter-second). One thread per attempt in flight: a
        # claimed attempt never queues while its lease runs. (A pump and ``deliver_due`` used
        # at once on one service can queue a little; the lease's margin covers that.)
        self._pool = ThreadPoolExecutor(
            model.DELIVERIES_IN_FLIGHT_MAX, thread_name_prefix="webhook"
        )

    def close(self) -> None:
        """Waits for the attempts still running; their results are not recorded (see
        ``DeliveryPump.close``)."""
        self._pool.shutdown(wait=True)
        self._http.close()

    def __enter__(self) -> WebhookService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _new_id(self, prefix: str) -> str:
        # Fixed-width hex of a time-ordered 63-bit id: string order is creation order, which
        # is what newest-first pagination (``id < starting_after``) relies on.
        return f"{prefix}{self._ids.next_id():016x}"

    # --- Endpoints ------------------------------------------------------------------------

    def create_endpoint(
        self, merchant_id: str, url: str, event_types: Sequence[str] | None = None
    ) -> tuple[EndpointView, str]:
        """Register an endpoint; returns it and its signing secret, which is shown only here
        (stored sealed, never returned again)."""
        url = model.check_url(url)
        types = model.check_event_types(event_types)
        # Last of the input checks (it resolves DNS) and outside any transaction. Delivery
        # checks again at every connection: DNS may change after this.
        check_destination(url, self.allowed_networks)
        now_ns = self.clock.now_ns()
        endpoint_id = self._new_id(ENDPOINT_ID_PREFIX)
        secret = model.new_secret()
        sealed = self.cipher.seal(
            SigningSecrets(secret).to_text(), purpose=SECRET_PURPOSE, row_id=endpoint_id
        )
        lock = " FOR UPDATE" if self.database.is_postgres else ""
        with self.database.write() as conn:
            # Locking the merchant row serialises creations, so the limit below holds.
            merchant = conn.execute(
                sa.text(f"SELECT id FROM payments_merchants WHERE id = :id{lock}"),
                {"id": merchant_id},
            ).first()
            if merchant is None:
                raise WebhookMerchantUnknown(f"no merchant {merchant_id!r}", param="merchant_id")
            enabled_count = conn.execute(
                sa.text(
                    "SELECT count(*) FROM payments_webhook_endpoints "
                    "WHERE merchant_id = :m AND enabled = :t"
                ),
                {"m": merchant_id, "t": True},
            ).scalar_one()
            if enabled_count >= model.ENDPOINTS_PER_MERCHANT_MAX:
                raise WebhookEndpointLimitReached(
                    f"a merchant has at most {model.ENDPOINTS_PER_MERCHANT_MAX} enabled "
                    "endpoints; disable one first"
                )
            conn.execute(
                sa.text(
                    "INSERT INTO payments_webhook_endpoints (id, merchant_id, url, secret_enc, "
                    "event_types, enabled, created_at_ns) VALUES "
                    "(:id, :merchant_id, :url, :secret_enc, :event_types, :enabled, :now)"
                ),
                {
                    "id": endpoint_id,
                    "merchant_id": merchant_id,
                    "url": url,
                    "secret_enc": sealed,
                    "event_types": model.encode_event_types(types),
                    "enabled": True,
                    "now": now_ns,
                },
            )
        view = EndpointView(endpoint_id, merchant_id, url, types, True, now_ns)
        return view, secret

    def list_endpoints(self, merchant_id: str) -> list[EndpointView]:
        """The merchant's endpoints, newest first (at most ``PAGE_SIZE_MAX``)."""
        with self.database.read() as conn:
            rows = conn.execute(
                sa.text(
                    f"SELECT {_ENDPOINT_COLUMNS} FROM payments_webhook_endpoints "
                    "WHERE merchant_id = :m ORDER BY id DESC LIMIT :limit"
                ),
                {"m": merchant_id, "limit": model.PAGE_SIZE_MAX},
            ).all()
        return [_endpoint(row) for row in rows]

    def get_endpoint(self, merchant_id: str | None, endpoint_id: str) -> EndpointView:
        with self.database.read() as conn:
            return _endpoint(self._owned_endpoint(conn, merchant_id, endpoint_id))

    def _owned_endpoint(
        self, conn: Connection, merchant_id: str | None, endpoint_id: str, *, lock: bool = False
    ) -> sa.Row[Any]:
        suffix = " FOR UPDATE" if lock and self.database.is_postgres else ""
        row = conn.execute(
            sa.text(
                f"SELECT {_ENDPOINT_COLUMNS}, secret_enc FROM payments_webhook_endpoints "
                f"WHERE id = :id{suffix}"
            ),
            {"id": endpoint_id},
        ).first()
        if row is None or (merchant_id is not None and row.merchant_id != merchant_id):
            raise WebhookEndpointNotFound(f"no webhook endpoint {endpoint_id!r}", param="id")
        return row

    def disable_endpoint(self, merchant_id: str | None, endpoint_id: str) -> EndpointView:
        """Stop delivering to the endpoint (idempotent). Its pending deliveries become dead
        ("endpoint disabled"); an attempt in flight records nothing."""
        now_ns = self.clock.now_ns()
        with self.database.write() as conn:
            row = self._owned_endpoint(conn, merchant_id, endpoint_id, lock=True)
            conn.execute(
                sa.text("UPDATE payments_webhook_endpoints SET enabled = :f WHERE id = :id"),
                {"f": False, "id": endpoint_id},
            )
            conn.execute(
                sa.text(
                    "UPDATE payments_webhook_deliveries SET state = 'dead', "
                    "next_attempt_at_ns = NULL, last_error = :error, updated_at_ns = :now "
                    "WHERE endpoint_id = :id AND state = 'pending'"
                ),
                {"id": endpoint_id, "error": ERROR_ENDPOINT_DISABLED, "now": now_ns},
            )
        view = _endpoint(row)
        return EndpointView(
            view.id, view.merchant_id, view.url, view.event_types, False, view.created_at_ns
        )

    def rotate_secret(self, merchant_id: str | None, endpoint_id: str) -> str:
        """A new signing secret, returned once. For ``SECRET_ROTATION_GRACE_S`` the previous
        secret signs too (two signatures in ``webhook-signature``)."""
        now_ns = self.clock.now_ns()
        new = model.new_secret()
        with self.database.write() as conn:
            row = self._owned_endpoint(conn, merchant_id, endpoint_id, lock=True)
            if not row.enabled:
                raise WebhookEndpointDisabled(f"webhook endpoint {endpoint_id!r} is disabled")
            current = self._open_secrets(row.secret_enc, endpoint_id)
            sealed = self.cipher.seal(
                current.rotated(new, now_ns).to_text(), purpose=SECRET_PURPOSE, row_id=endpoint_id
            )
            conn.execute(
                sa.text("UPDATE payments_webhook_endpoints SET secret_enc = :s WHERE id = :id"),
                {"s": sealed, "id": endpoint_id},
            )
        return new

    def _open_secrets(self, sealed: bytes, endpoint_id: str) -> SigningSecrets:
        text = self.cipher.open(bytes(sealed), purpose=SECRET_PURPOSE, row_id=endpoint_id)
        return SigningSecrets.from_text(text)

    # --- Fan-out --------------------------------------------------------------------------

    def fan_out(self, limit: int = model.FAN_OUT_BATCH_MAX) -> int:
        """Turn up to ``limit`` events after the cursor into deliveries; returns the number of
        events consumed (0: nothing new, or another worker holds the cursor).

        One event whose deliveries cannot be written (an unexpected error, not the database
        being unavailable, which propagates) must not hold the cursor for ever: the batch is
        done again one event at a time up to that event, which is tried again after each of
        ``FAN_OUT_BACKOFF_S`` (the events behind it wait: the cursor keeps order) and then
        passed over without deliveries — parked in ``worker_item_failures``, logged as an
        error, for an operator to ``replay`` once the cause is fixed."""
        model.check_limit(limit, model.FAN_OUT_BATCH_MAX)
        try:
            return self._fan_out(limit)
        except Exception as exc:
            if is_database_unavailable(exc):
                raise
            log.warning(
                "webhooks: fanning out up to %d events failed (%s); one at a time",
                limit, error_code(exc),
            )  # fmt: skip
        return self._fan_out_singly(limit)

    def _fan_out_singly(self, limit: int) -> int:
        items = self.quarantine.open(FAN_OUT_ITEMS, backoff=model.FAN_OUT_BACKOFF_S)
        done = 0
        while done < limit:
            event_id = self._next_event_id()
            if event_id is None or (event_id in items.blocked and event_id not in items.parked):
                break  # nothing left, or the first waits out its backoff
            consumed = 0
            if event_id not in items.parked:
                with items.isolated(event_id):
                    consumed = self._fan_out(1, first=event_id)
                if event_id in items.failed and event_id not in items.parked:
                    break
            if event_id in items.parked:
                consumed = self._fan_out(1, first=event_id, pass_over=True)
                if consumed:
                    log.error(
                        "webhooks: event %s passed over without deliveries after repeated "
                        "failures; replay it once the cause is fixed",
                        event_id,
                    )
            if not consumed:
                break
            done += consumed
        return done

    def _next_event_id(self) -> str | None:
        with self.database.read() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT id FROM payments_events WHERE seq > COALESCE((SELECT seq FROM "
                    "payments_outbox_cursor WHERE name = :name), 0) ORDER BY seq LIMIT 1"
                ),
                {"name": CURSOR_NAME},
            ).first()
        return None if row is None else str(row[0])

    def _fan_out(self, limit: int, *, first: str | None = None, pass_over: bool = False) -> int:
        """:meth:`fan_out`'s transaction. ``first``: only if the next event is that one (else
        0); ``pass_over``: move the cursor over it without deliveries."""
        assert not pass_over or (first is not None and limit == 1)
        now_ns = self.clock.now_ns()
        with self.database.write() as conn:
            cursor_seq = self._lock_cursor(conn)
            if cursor_seq is None:
                return 0
            # Before the events are read: a transaction that ended by this snapshot has its
            # event visible to the read below (see outbox_gaps).
            snapshot = self._snapshot(conn) if self.database.is_postgres else None
            events = conn.execute(
                sa.text(
                    "SELECT seq, id, merchant_id, type, created_at_ns FROM payments_events "
                    "WHERE seq > :cursor ORDER BY seq LIMIT :limit"
                ),
                {"cursor": cursor_seq, "limit": limit},
            ).all()
            events = self._without_gaps(events, cursor_seq, snapshot, now_ns)
            if not events or (first is not None and events[0].id != first):
                return 0
            merchant_ids = sorted({e.merchant_id for e in events if e.merchant_id is not None})
            endpoints: dict[str, list[tuple[str, tuple[str, ...] | None]]] = {}
            if merchant_ids:
                rows = conn.execute(
                    sa.text(
                        "SELECT id, merchant_id, event_types FROM payments_webhook_endpoints "
                        "WHERE enabled = :t AND merchant_id IN :merchants ORDER BY id"
                    ).bindparams(sa.bindparam("merchants", expanding=True)),
                    {"t": True, "merchants": merchant_ids},
                ).all()
                for row in rows:
                    endpoints.setdefault(row.merchant_id, []).append(
                        (row.id, model.decode_event_types(row.event_types))
                    )
            deliveries = [
                {
                    "id": self._new_id(DELIVERY_ID_PREFIX),
                    "event_id": event.id,
                    "endpoint_id": endpoint_id,
                    "now": now_ns,
                }
                for event in events
                for endpoint_id, types in endpoints.get(event.merchant_id, ())
                if model.subscribes(types, event.type) and not pass_over
            ]
            if deliveries:
                conn.execute(_INSERT_DELIVERY, deliveries)
            conn.execute(
                sa.text("UPDATE payments_outbox_cursor SET seq = :seq WHERE name = :name"),
                {"seq": events[-1].seq, "name": CURSOR_NAME},
            )
        return len(events)

    def _lock_cursor(self, conn: Connection) -> int | None:
        """The cursor's position, locked for this transaction; None if another worker has it."""
        select = sa.text(
            "SELECT seq FROM payments_outbox_cursor WHERE name = :name"
            + (" FOR UPDATE SKIP LOCKED" if self.database.is_postgres else "")
        )
        seq = conn.execute(select, {"name": CURSOR_NAME}).scalar_one_or_none()
        if seq is not None:
            return int(seq)
        conn.execute(
            sa.text(
                "INSERT INTO payments_outbox_cursor (name, seq) VALUES (:name, 0) "
                "ON CONFLICT (name) DO NOTHING"
            ),
            {"name": CURSOR_NAME},
        )
        seq = conn.execute(select, {"name": CURSOR_NAME}).scalar_one_or_none()
        return None if seq is None else int(seq)

    @staticmethod
    def _snapshot(conn: Connection) -> outbox_gaps.Snapshot:
        row = conn.execute(
            sa.text(
                "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint "
                "FROM pg_current_snapshot() AS s"
            )
        ).one()
        return outbox_gaps.Snapshot(int(row[0]), int(row[1]))

    def _without_gaps(
        self,
        events: Sequence[sa.Row[Any]],
        cursor_seq: int,
        snapshot: outbox_gaps.Snapshot | None,
        now_ns: int,
    ) -> Sequence[sa.Row[Any]]:
        """The prefix of ``events`` it is safe to move the cursor over.

        PostgreSQL draws ``seq`` before commit: a missing number may belong to a transaction
        still running, which would commit *behind* the cursor and never be delivered. The
        cursor waits at a gap until every transaction that could hold the number has ended
        (``outbox_gaps``: by transaction ids, never by time alone, so a slow transaction's
        event is not lost and a rolled-back insert costs about two seconds, not minutes).
        SQLite has one writer and reuses rolled-back rowids: what is visible has no gap that
        can still fill.
        """
        if snapshot is None:
            return events
        decision = outbox_gaps.decide(
            [int(e.seq) for e in events], cursor_seq, snapshot, self._gap_watch, now_ns
        )
        self._gap_watch = watch = decision.watch
        if watch is not None:
            waited_ns = now_ns - watch.first_seen_ns
            if waited_ns >= model.OUTBOX_GAP_WARN_S * NS_PER_S and (
                now_ns - self._gap_warned_ns >= model.OUTBOX_GAP_WARN_S * NS_PER_S
            ):
                self._gap_warned_ns = now_ns
                log.warning(
                    "webhooks: events after seq %d wait %d s for a transaction still open "
                    "that drew seq %d (a session idle in transaction? PostgreSQL's "
                    "idle_in_transaction_session_timeout ends such sessions)",
                    watch.seq - 1,
                    waited_ns // NS_PER_S,
                    watch.seq,
                )
        return events[: decision.passable]

    # --- Delivery -------------------------------------------------------------------------

    def deliver_due(self, limit: int = model.DELIVER_BATCH_MAX) -> int:
        """Attempt up to ``limit`` due deliveries (concurrently, at most
        ``DELIVERIES_PER_ENDPOINT_PER_CALL_MAX`` per endpoint); returns how many were tried.
        Returns when every attempt has ended and is recorded; each result is recorded as soon
        as it is in, so a slow endpoint holds back no other delivery's record. The worker loop
        uses a :class:`DeliveryPump` instead, which never waits for an attempt."""
        model.check_limit(limit, model.DELIVER_BATCH_MAX)
        claims = self._claim(limit, model.DELIVERIES_PER_ENDPOINT_PER_CALL_MAX)
        if len(claims) == 1:  # no thread hop for a lone delivery
            self._record(claims, [self._attempt_isolated(claims[0])])
            return 1
        in_flight = {self._start(claim): claim for claim in claims}
        while in_flight:
            wait(in_flight, return_when=FIRST_COMPLETED)
            self._record_ended(in_flight)
        return len(claims)

    def _start(self, claim: _Claim) -> Future[AttemptResult]:
        return self._pool.submit(self._attempt_isolated, claim)

    def _lease(
        self,
        conn: sa.Connection,
        rows: Sequence[sa.Row[Any]],
        lease_until_ns: int,
        now_ns: int,
        refused: list[tuple[str, Exception]],
    ) -> list[sa.Row[Any]]:
        """Lease ``rows`` (one statement); if the database refuses it (not by being
        unavailable), one row at a time, each in a savepoint, so that one delivery whose row
        takes no update is left out (added to ``refused``) rather than every claim failing
        with it. Returns the rows leased."""
        lease = sa.text(
            "UPDATE payments_webhook_deliveries SET next_attempt_at_ns = :lease, "
            "updated_at_ns = :now WHERE id IN :ids"
        ).bindparams(sa.bindparam("ids", expanding=True))
        ids = [str(r.id) for r in rows]
        at = {"lease": lease_until_ns, "now": now_ns}
        if not isinstance(_in_savepoint(conn, lease, {"ids": ids, **at}), Exception):
            return list(rows)
        leased = []
        for row in rows:
            outcome = _in_savepoint(conn, lease, {"ids": [str(row.id)], **at})
            if isinstance(outcome, Exception):
                refused.append((str(row.id), outcome))
            else:
                leased.append(row)
        return leased

    def _attempt_isolated(self, claim: _Claim) -> AttemptResult:
        """An attempt that raised something unexpected (a payload or secret nothing foresaw)
        is a failed attempt like any other — retried on schedule, then ``dead`` —, never an
        exception: one in a future stayed in the pump and failed every later round."""
        try:
            return self._attempt(claim)
        except Exception as exc:
            code = error_code(exc)
            log.warning("webhook %s: attempt failed unexpectedly (%s)", claim.delivery_id, code)
            log.debug("webhook %s: attempt failed", claim.delivery_id, exc_info=exc)
            return AttemptResult(None, model.bounded_error(f"internal error ({code})"))

    def _record_ended(self, in_flight: MutableMapping[Future[AttemptResult], _Claim]) -> int:
        """Record the attempts of ``in_flight`` that have ended (one transaction) and remove
        them from it; returns how many. On the thread that owns ``in_flight``: the results
        were made on pool threads, the database write happens here."""
        ended = [future for future in in_flight if future.done()]
        if not ended:
            return 0
        self._record([in_flight[future] for future in ended], [f.result() for f in ended])
        for future in ended:
            del in_flight[future]
        return len(ended)

    def _record_ended_and_claim(
        self,
        in_flight: MutableMapping[Future[AttemptResult], _Claim],
        in_flight_max: int,
        per_endpoint_max: int,
    ) -> tuple[int, list[_Claim]]:
        """:meth:`_record_ended`, then :meth:`_claim` for the slots that frees, in one write
        transaction: (results taken in, new claims). The worker's writes hold the database's
        one write lock that the API's writer waits on, each with its own fsync; two per
        delivery round were one more than needed. If the transaction fails, nothing is
        recorded or claimed: the results stay in ``in_flight`` for a later call."""
        ended = [future for future in in_flight if future.done()]
        free = in_flight_max - (len(in_flight) - len(ended))
        if not ended and free <= 0:
            return 0, []
        finished = set(ended)
        busy = Counter(c.endpoint_id for f, c in in_flight.items() if f not in finished)
        now_ns = self.clock.now_ns()
        picked = (
            self._scan(free, per_endpoint_max, busy, now_ns, self._record_blocked()) if free else []
        )
        refused: list[tuple[str, Exception]] = []
        with self.database.write() as conn:
            if ended:
                refused = self._record_in(
                    conn, [in_flight[f] for f in ended], [f.result() for f in ended], now_ns
                )
            claims = self._lease_picked(conn, picked, now_ns, refused) if picked else []
        recorded = [in_flight[f] for f in ended]
        for future in ended:
            del in_flight[future]
        self._record_recorded(recorded, refused)
        return len(ended), claims

    def _claim(
        self, limit: int, per_endpoint_max: int, busy: Mapping[str, int] | None = None
    ) -> list[_Claim]:
        """Lease up to ``limit`` due deliveries, the longest due first, at most
        ``per_endpoint_max`` per endpoint counting ``busy`` (the caller's attempts in flight,
        by endpoint). An endpoint with its share busy is left out of the scan itself: a slow
        endpoint's backlog is the longest due, so it would fill the scan and starve the
        rest."""
        now_ns = self.clock.now_ns()
        picked = self._scan(limit, per_endpoint_max, busy or {}, now_ns, self._record_blocked())
        if not picked:
            return []
        refused: list[tuple[str, Exception]] = []
        with self.database.write() as conn:
            claims = self._lease_picked(conn, picked, now_ns, refused)
        self._record_refused(refused)
        return claims

    def _scan(
        self,
        limit: int,
        per_endpoint_max: int,
        busy: Mapping[str, int],
        now_ns: int,
        avoid: frozenset[str] = frozenset(),
    ) -> list[str]:
        """Up to ``limit`` due deliveries to lease, the longest due first, at most
        ``per_endpoint_max`` per endpoint counting ``busy``; ``avoid``: deliveries whose
        result could not be recorded or leased, backed off or parked (left out of the scan
        itself, so they never fill it).

        In a read transaction of its own, before the write that leases them
        (:meth:`_lease_picked` checks each again under the lock). The scan passes over every
        due delivery of the endpoints that have their share in flight: with a backlog it
        grows with it, and under the database's one write lock it made the API's writer wait
        that long at every pump round."""
        full = sorted(e for e, n in busy.items() if n >= per_endpoint_max)
        scan = sa.text(
            "SELECT id, endpoint_id FROM payments_webhook_deliveries "
            "WHERE state = 'pending' AND next_attempt_at_ns <= :now"
            + (" AND endpoint_id NOT IN :full" if full else "")
            + (" AND id NOT IN :avoid" if avoid else "")
            + " ORDER BY next_attempt_at_ns, id LIMIT :scan"
        )
        params: dict[str, Any] = {"now": now_ns, "scan": model.CLAIM_SCAN_MAX}
        if full:
            scan = scan.bindparams(sa.bindparam("full", expanding=True))
            params["full"] = full
        if avoid:
            scan = scan.bindparams(sa.bindparam("avoid", expanding=True))
            params["avoid"] = sorted(avoid)
        with self.database.read() as conn:
            due = conn.execute(scan, params).all()
        picked: list[str] = []
        per_endpoint: dict[str, int] = dict(busy)
        for row in due:
            taken = per_endpoint.get(row.endpoint_id, 0)
            if taken < per_endpoint_max:
                per_endpoint[row.endpoint_id] = taken + 1
                picked.append(row.id)
                if len(picked) == limit:
                    break
        return picked

    def _lease_picked(
        self,
        conn: sa.Connection,
        picked: Sequence[str],
        now_ns: int,
        refused: list[tuple[str, Exception]],
    ) -> list[_Claim]:
        """Lease the deliveries :meth:`_scan` picked that are still due, inside the caller's
        write transaction; ``refused`` collects those whose lease the database refused (see
        :meth:`_lease`)."""
        lease_until_ns = now_ns + model.lease_s(self.http_timeout_s) * NS_PER_S
        postgres = self.database.is_postgres
        # Re-checked under the lock: another worker may have leased some meanwhile.
        rows = conn.execute(
            sa.text(
                "SELECT d.id, d.event_id, d.endpoint_id, d.attempts, w.url, w.secret_enc, "
                "w.enabled, ev.payload FROM payments_webhook_deliveries d "
                "JOIN payments_webhook_endpoints w ON w.id = d.endpoint_id "
                "JOIN payments_events ev ON ev.id = d.event_id "
                "WHERE d.id IN :ids AND d.state = 'pending' AND d.next_attempt_at_ns <= :now"
                + (" FOR UPDATE OF d SKIP LOCKED" if postgres else "")
            ).bindparams(sa.bindparam("ids", expanding=True)),
            {"ids": picked, "now": now_ns},
        ).all()
        disabled = [row.id for row in rows if not row.enabled]
        claimed = [row for row in rows if row.enabled]
        if disabled:
            conn.execute(
                sa.text(
                    "UPDATE payments_webhook_deliveries SET state = 'dead', "
                    "next_attempt_at_ns = NULL, last_error = :error, updated_at_ns = :now "
                    "WHERE id IN :ids"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"ids": disabled, "error": ERROR_ENDPOINT_DISABLED, "now": now_ns},
            )
        if claimed:
            claimed = self._lease(conn, claimed, lease_until_ns, now_ns, refused)
        return [
            _Claim(
                delivery_id=row.id,
                event_id=row.event_id,
                attempts=int(row.attempts),
                lease_until_ns=lease_until_ns,
                url=row.url,
                secret_enc=bytes(row.secret_enc),
                endpoint_id=row.endpoint_id,
                payload=row.payload,
            )
            for row in claimed
        ]

    def _attempt(self, claim: _Claim) -> AttemptResult:
        try:
            signing = self._open_secrets(claim.secret_enc, claim.endpoint_id)
        except FieldDecryptionFailed:
            log.error("webhook %s: the secret of %s cannot be opened", claim.delivery_id,
                      claim.endpoint_id)  # fmt: skip
            return AttemptResult(None, ERROR_UNSEALABLE)
        now_ns = self.clock.now_ns()
        body = claim.payload.encode("utf-8")  # the stored text, byte for byte
        headers = model.sign_headers(
            signing.active(now_ns), claim.event_id, now_ns // NS_PER_S, body
        )
        return self._post(claim.url, headers, body)

    def _post(self, url: str, headers: Mapping[str, str], body: bytes) -> AttemptResult:
        deadline = monotonic_s() + self._attempt_budget_s
        try:
            with self._http.stream("POST", url, content=body, headers=dict(headers)) as response:
                status = response.status_code
                # The body is read even after a 2xx: a response closed before its end takes
                # its connection with it, and every delivery would open a new one (a TCP and,
                # over https, a TLS handshake each). Raw bytes (no decompression: a small gzip
                # must not expand in memory), capped in size and in time; past the cap the
                # rest is never read and that connection is dropped.
                captured = bytearray()
                for chunk in response.iter_raw(1024):
                    captured += chunk
                    if len(captured) >= model.RESPONSE_BODY_READ_BYTES_MAX:
                        break
                    if monotonic_s() > deadline:
                        break
                if 200 <= status < 300:
                    return AttemptResult(status, None)
                text = bytes(captured[: model.RESPONSE_BODY_READ_BYTES_MAX]).decode(
                    "utf-8", "replace"
                )
                return AttemptResult(status, model.bounded_error(f"HTTP {status}: {text}"))
        except WebhookDestinationNotAllowed as exc:
            # Refused before connecting (nothing was sent): a failed attempt like any other,
            # retried on schedule (DNS or the endpoint may be fixed) and dead-lettered after.
            return AttemptResult(None, model.bounded_error(exc.message))
        except httpx.TimeoutException as exc:
            return AttemptResult(None, model.bounded_error(f"timeout ({type(exc).__name__})"))
        except httpx.HTTPError as exc:
            # Connection refused or reset, DNS failure, TLS failure, protocol error: all are
            # the endpoint's failures and retried on schedule.
            return AttemptResult(
                None, model.bounded_error(f"{type(exc).__name__}: {exc}".rstrip(": "))
            )

    def _record(self, claims: Sequence[_Claim], results: Sequence[AttemptResult]) -> None:
        now_ns = self.clock.now_ns()
        with self.database.write() as conn:
            refused = self._record_in(conn, claims, results, now_ns)
        self._record_recorded(claims, refused)

    def _record_view(self) -> PassItems:
        """The failures of deliveries whose lease or result the database refused (read again
        every ``RECORD_BLOCKED_REFRESH_S``, and after each new failure)."""
        cached = self._record_items
        if cached is None or monotonic_s() - cached[0] >= model.RECORD_BLOCKED_REFRESH_S:
            cached = self._record_items = (monotonic_s(), self.quarantine.open(RECORD_ITEMS))
        return cached[1]

    def _record_blocked(self) -> frozenset[str]:
        """Deliveries left out of the claims now: backed off or parked."""
        return self._record_view().blocked_at(self.clock.now_ns())

    def _record_recorded(
        self, claims: Sequence[_Claim], refused: Sequence[tuple[str, Exception]]
    ) -> None:
        """After the recording transaction: a delivery recorded after earlier failures has
        them forgotten; each one refused is backed off, then parked."""
        view = self._record_view()
        left_out = {delivery_id for delivery_id, _ in refused}
        for claim in claims:
            if claim.delivery_id not in left_out and view.knows(claim.delivery_id):
                view.success(claim.delivery_id)
        self._record_refused(refused)

    def _record_refused(self, refused: Sequence[tuple[str, Exception]]) -> None:
        """After the recording transaction: each delivery whose result the database refused
        is backed off, then parked (its result is dropped; its lease runs out and it is sent
        again once its backoff allows)."""
        if not refused:
            return
        items = self.quarantine.open(RECORD_ITEMS)
        for delivery_id, exc in refused:
            items.failure(delivery_id, exc)
        self._record_items = None  # read again before the next claim

    def _record_in(
        self,
        conn: sa.Connection,
        claims: Sequence[_Claim],
        results: Sequence[AttemptResult],
        now_ns: int,
    ) -> list[tuple[str, Exception]]:
        """:meth:`_record` inside the caller's write transaction. Each result is written in a
        savepoint: one the database refuses (not the database being unavailable, which
        propagates) rolls back alone and is returned (delivery id, error) for the caller to
        back off once the transaction has ended; the others are recorded."""
        refused: list[tuple[str, Exception]] = []
        for claim, result in zip(claims, results, strict=True):
            step = model.after_attempt(claim.attempts, result, now_ns)
            params = {
                "id": claim.delivery_id,
                "state": step.state.value,
                "attempts": step.attempts,
                "next_attempt_at_ns": step.next_attempt_at_ns,
                "last_status": result.status,
                "last_error": result.error,
                "now": now_ns,
                "attempts_before": claim.attempts,
                "lease_until_ns": claim.lease_until_ns,
            }
            written = _in_savepoint(conn, _RECORD_ATTEMPT, params)
            if isinstance(written, Exception):
                refused.append((claim.delivery_id, written))
                continue
            if not written:
                log.warning(
                    "webhook %s: lease lost (taken over or endpoint disabled); attempt %d "
                    "not recorded",
                    claim.delivery_id,
                    step.attempts,
                )
            elif step.state is DeliveryState.DEAD:
                log.warning(
                    "webhook %s dead after %d attempts: %s",
                    claim.delivery_id,
                    step.attempts,
                    result.error,
                )
        return refused

    # --- Replay and the delivery log ------------------------------------------------------

    def replay(
        self, merchant_id: str | None, event_id: str, endpoint_id: str | None = None
    ) -> list[DeliveryView]:
        """New pending deliveries of an event: to ``endpoint_id`` (which must be enabled), or
        to every enabled endpoint of the event's merchant subscribed to its type."""
        now_ns = self.clock.now_ns()
        with self.database.write() as conn:
            event = conn.execute(
                sa.text("SELECT id, merchant_id, type FROM payments_events WHERE id = :id"),
                {"id": event_id},
            ).first()
            if (
                event is None
                or event.merchant_id is None
                or (merchant_id is not None and event.merchant_id != merchant_id)
            ):
                raise EventNotFound(f"no event {event_id!r}", param="event_id")
            if endpoint_id is not None:
                row = self._owned_endpoint(conn, event.merchant_id, endpoint_id)
                if not row.enabled:
                    raise WebhookEndpointDisabled(f"webhook endpoint {endpoint_id!r} is disabled")
                targets = [row.id]
            else:
                rows = conn.execute(
                    sa.text(
                        "SELECT id, event_types FROM payments_webhook_endpoints "
                        "WHERE merchant_id = :m AND enabled = :t ORDER BY id"
                    ),
                    {"m": event.merchant_id, "t": True},
                ).all()
                targets = [
                    r.id
                    for r in rows
                    if model.subscribes(model.decode_event_types(r.event_types), event.type)
                ]
            existing = conn.execute(
                sa.text("SELECT count(*) FROM payments_webhook_deliveries WHERE event_id = :e"),
                {"e": event_id},
            ).scalar_one()
            if existing + len(targets) > model.DELIVERIES_PER_EVENT_MAX:
                raise WebhookReplayLimitReached(
                    f"event {event_id!r} has {existing} deliveries; at most "
                    f"{model.DELIVERIES_PER_EVENT_MAX}"
                )
            ids = []
            for target in targets:
                # (event, endpoint, created_at_ns) is unique: a replay in the same nanosecond
                # as an earlier delivery (a coarse or fake clock) takes the next one.
                latest = conn.execute(
                    sa.text(
                        "SELECT max(created_at_ns) FROM payments_webhook_deliveries "
                        "WHERE event_id = :e AND endpoint_id = :w"
                    ),
                    {"e": event_id, "w": target},
                ).scalar_one()
                created_ns = now_ns if latest is None else max(now_ns, int(latest) + 1)
                delivery_id = self._new_id(DELIVERY_ID_PREFIX)
                try:
                    conn.execute(
                        sa.text(
                            "INSERT INTO payments_webhook_deliveries (id, event_id, endpoint_id, "
                            "state, attempts, next_attempt_at_ns, last_status, last_error, "
                            "created_at_ns, updated_at_ns) VALUES (:id, :e, :w, 'pending', 0, "
                            ":now, NULL, NULL, :created, :now)"
                        ),
                        {
                            "id": delivery_id,
                            "e": event_id,
                            "w": target,
                            "now": now_ns,
                            "created": created_ns,
                        },
                    )
                except sa.exc.IntegrityError:
                    # The whole transaction rolls back: a replay creates all or nothing.
                    raise WebhookReplayConflict(
                        f"event {event_id!r} is being replayed to {target!r} right now; retry"
                    ) from None
                ids.append(delivery_id)
            if not ids:
                return []
            rows = conn.execute(
                sa.text(
                    f"SELECT {_DELIVERY_COLUMNS} FROM payments_webhook_deliveries d "
                    "WHERE d.id IN :ids ORDER BY d.id"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"ids": ids},
            ).all()
        return [_delivery(row) for row in rows]

    def deliveries(
        self,
        merchant_id: str | None,
        event_id: str | None = None,
        state: str | None = None,
        limit: int = model.PAGE_SIZE_DEFAULT,
        starting_after: str | None = None,
    ) -> DeliveryPage:
        """The delivery log, newest first, optionally of one event and/or in one state."""
        model.check_limit(limit, model.PAGE_SIZE_MAX)
        conditions = ["1 = 1"]
        params: dict[str, Any] = {"limit": limit + 1}
        if merchant_id is not None:
            conditions.append("w.merchant_id = :merchant_id")
            params["merchant_id"] = merchant_id
        if event_id is not None:
            conditions.append("d.event_id = :event_id")
            params["event_id"] = event_id
        if state is not None:
            try:
                params["state"] = DeliveryState(state).value
            except ValueError:
                raise WebhookParameterInvalid(
                    f"state is one of {', '.join(s.value for s in DeliveryState)}", param="state"
                ) from None
            conditions.append("d.state = :state")
        if starting_after is not None:
            if not (starting_after.startswith(DELIVERY_ID_PREFIX) and len(starting_after) <= 40):
                raise WebhookParameterInvalid(
                    "starting_after is a webhook delivery id", param="starting_after"
                )
            conditions.append("d.id < :starting_after")
            params["starting_after"] = starting_after
        with self.database.read() as conn:
            rows = conn.execute(
                sa.text(
                    f"SELECT {_DELIVERY_COLUMNS} FROM payments_webhook_deliveries d "
                    "JOIN payments_webhook_endpoints w ON w.id = d.endpoint_id "
                    f"WHERE {' AND '.join(conditions)} ORDER BY d.id DESC LIMIT :limit"
                ),
                params,
            ).all()
        page = tuple(_delivery(row) for row in rows[:limit])
        return DeliveryPage(page, has_more=len(rows) > limit)

    # --- The receiving side ---------------------------------------------------------------

    def verify(
        self,
        secret: str,
        headers: Mapping[str, str],
        body: bytes,
        tolerance_s: int = model.TIMESTAMP_TOLERANCE_S,
    ) -> None:
        """Check a delivery as a merchant would (see :func:`verify`), against this clock."""
        verify(secret, headers, body, tolerance_s=tolerance_s, clock=self.clock)


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: int = model.TIMESTAMP_TOLERANCE_S,
    *,
    clock: Clock | None = None,
) -> None:
    """Verify a received webhook before parsing its body: raises ``webhook_signature_invalid``
    or ``webhook_timestamp_invalid``, else returns None."""
    now_s = (clock or SystemClock()).now_ns() // NS_PER_S
    model.verify(secret, headers, body, now_s=now_s, tolerance_s=tolerance_s)


# --- The worker loop ------------------------------------------------------------------------


class DeliveryPump:
    """A worker's deliveries in flight, without a barrier: :meth:`pump` records the attempts
    that have ended, then claims due deliveries for the free slots and starts them on the
    service's pool, and returns at once. A slow or hanging endpoint holds only its own slots
    (at most ``per_endpoint_max``) until its attempts end; the other endpoints' deliveries go
    on through the rest.

    Threads: a pump belongs to one thread (the worker loop's), which does all its database
    work, claims and results alike. The pool's threads only sign and POST; a result reaches
    the owner through its future. The bounds are this pump's own: each worker process has its
    own pump, as it had its own call's worth of claims before.
    """

    def __init__(
        self,
        service: WebhookService,
        *,
        in_flight_max: int = model.DELIVERIES_IN_FLIGHT_MAX,
        per_endpoint_max: int = model.DELIVERIES_PER_ENDPOINT_IN_FLIGHT_MAX,
    ) -> None:
        model.check_limit(in_flight_max, model.DELIVERIES_IN_FLIGHT_MAX, "in_flight_max")
        model.check_limit(
            per_endpoint_max, model.DELIVERIES_PER_ENDPOINT_IN_FLIGHT_MAX, "per_endpoint_max"
        )
        self._service = service
        self._in_flight_max = in_flight_max
        self._per_endpoint_max = per_endpoint_max
        self._in_flight: dict[Future[AttemptResult], _Claim] = {}
        self._owner: int | None = None
        self._closed = False
        self._pumped_at_s = monotonic_s()

    @property
    def in_flight(self) -> int:
        """Attempts started and not yet recorded (some may have ended)."""
        return len(self._in_flight)

    def pump(self) -> int:
        """Record the attempts that have ended, then start due deliveries in the free slots.
        Never waits for an attempt. Returns how many results were taken in (written, or
        dropped for a lost lease) plus how many attempts started; 0: nothing to do now. A
        database error propagates; the results not written stay here for a later call."""
        self._check_owner()
        assert not self._closed, "pump after close"
        self._pumped_at_s = monotonic_s()
        recorded, claims = self._service._record_ended_and_claim(
            self._in_flight, self._in_flight_max, self._per_endpoint_max
        )
        for claim in claims:
            self._in_flight[self._service._start(claim)] = claim
        assert len(self._in_flight) <= self._in_flight_max
        return recorded + len(claims)

    def wait(self, timeout_s: float) -> bool:
        """Block until an attempt in flight has ended, or for ``timeout_s``; True if one has
        ended (the next :meth:`pump` records it). Once one has, it waits on until
        ``DELIVERY_ROUND_MIN_S`` after the last :meth:`pump` (within ``timeout_s``), so the
        next round records a group. False at once when nothing is in flight."""
        self._check_owner()
        if not self._in_flight:
            return False
        deadline_s = monotonic_s() + timeout_s
        ended, _ = wait(self._in_flight, timeout=timeout_s, return_when=FIRST_COMPLETED)
        if not ended:
            return False
        gather_s = min(self._pumped_at_s + model.DELIVERY_ROUND_MIN_S, deadline_s) - monotonic_s()
        if gather_s > 0:
            time.sleep(gather_s)
        return True

    def close(self, grace_s: float = model.WORKER_STOP_GRACE_S) -> int:
        """Stop: wait up to ``grace_s`` for the attempts in flight, record those that have
        ended and abandon the rest; returns how many were abandoned. An abandoned delivery
        keeps its lease; whichever worker claims it once the lease has run out delivers it
        again. Delivery is at least once anyway (receivers deduplicate on ``webhook-id``), so
        a stop never waits out a hanging endpoint."""
        self._check_owner()
        if self._closed:
            return 0
        self._closed = True
        if self._in_flight:
            wait(self._in_flight, timeout=grace_s)
        try:
            self._service._record_ended(self._in_flight)
        except (DatabaseUnavailable, sa.exc.OperationalError) as exc:
            log.warning("webhook worker: results not recorded on stop (%s)", exc)
        abandoned = len(self._in_flight)
        for future in self._in_flight:
            # Only an attempt still queued is cancelled; a running one ends by its own
            # timeouts on the pool, and nobody reads its result.
            future.cancel()
        self._in_flight.clear()
        if abandoned:
            log.info(
                "webhook worker: %d attempts abandoned on stop (leased; sent again)", abandoned
            )
        return abandoned

    def _check_owner(self) -> None:
        # The in-flight map is unguarded: one thread drives the pump.
        me = threading.get_ident()
        if self._owner is None:
            self._owner = me
        assert self._owner == me, "a DeliveryPump is driven by one thread"


def _in_savepoint(
    conn: sa.Connection, statement: sa.TextClause, params: Mapping[str, Any]
) -> int | Exception:
    """Run ``statement`` in a savepoint of ``conn``'s transaction: the rows it changed, or
    the error it raised, its changes rolled back alone. The database being unavailable
    propagates (the whole transaction is lost anyway)."""
    conn.exec_driver_sql("SAVEPOINT paykeep_webhook_row")
    try:
        changed = conn.execute(statement, dict(params)).rowcount
    except Exception as exc:
        if is_database_unavailable(exc):
            raise
        conn.exec_driver_sql("ROLLBACK TO SAVEPOINT paykeep_webhook_row")
        conn.exec_driver_sql("RELEASE SAVEPOINT paykeep_webhook_row")
        return exc
    conn.exec_driver_sql("RELEASE SAVEPOINT paykeep_webhook_row")
    return int(changed)


def run_webhook_worker(
    service: WebhookService,
    stop: threading.Event,
    interval_s: float = 1.0,
    *,
    fan_out_batch: int = model.FAN_OUT_BATCH_MAX,
    deliver_batch: int = model.DELIVERIES_IN_FLIGHT_MAX,
    stop_grace_s: float = model.WORKER_STOP_GRACE_S,
) -> None:
    """Fan out and deliver until ``stop`` is set, through a :class:`DeliveryPump` with up to
    ``deliver_batch`` attempts in flight: new deliveries are claimed while earlier attempts
    are still in flight, and each result is recorded when the loop comes round after it ends
    (the loop wakes for that). Polls every ``interval_s`` when idle. A database outage is
    logged and waited out, never fatal; any other error is a bug and propagates. On stop the
    attempts in flight get ``stop_grace_s`` to end and be recorded; the rest are abandoned
    (delivered again after their lease: delivery is at least once)."""
    pump = DeliveryPump(service, in_flight_max=deliver_batch)
    try:
        while not stop.is_set():
            try:
                fanned = service.fan_out(fan_out_batch)
                worked = fanned + pump.pump()
            except (DatabaseUnavailable, sa.exc.OperationalError) as exc:
                log.warning("webhook worker: database unavailable (%s); retrying", exc)
                stop.wait(interval_s)
                continue
            if fanned == fan_out_batch:
                continue  # more events are waiting; fanning out needs no free slot
            if pump.in_flight:
                _until_an_attempt_ends(pump, stop, interval_s)
            elif not worked:
                stop.wait(interval_s)
    finally:
        pump.close(stop_grace_s)


def _until_an_attempt_ends(pump: DeliveryPump, stop: threading.Event, timeout_s: float) -> None:
    """Wait for an attempt to end, ``stop`` or ``timeout_s``, whichever comes first. The
    timeout still comes round to claim what fell due meanwhile while the slots in flight are
    a slow endpoint's."""
    deadline_s = monotonic_s() + timeout_s
    while not stop.is_set():
        left_s = deadline_s - monotonic_s()
        if left_s <= 0 or pump.wait(min(left_s, model.WORKER_STOP_POLL_S)):
            return
