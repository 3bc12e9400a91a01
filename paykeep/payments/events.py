"""The outbox: every state change writes its event in the transaction that makes the change.

An event is ``{id, type, created, data: {object: <the object as the API shows it>}}``. The
webhook worker (``paykeep.workers.webhooks``) reads ``payments_events`` in ``seq`` order and
delivers each to the owning merchant's endpoints; nothing here knows about HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection

from paykeep.db import driver
from paykeep.ids import new_token

EVENT_ID_PREFIX = "evt_"

# Every money-moving request writes one or more: on the driver's connection (paykeep.db.driver).
_INSERT = (
    "INSERT INTO payments_events (id, merchant_id, type, object_id, payload, created_at_ns) "
    "VALUES (:id, :merchant_id, :type, :object_id, :payload, :created_at_ns)"
)


def event_payload(event_id: str, type_: str, created_at_ns: int, obj: Mapping[str, Any]) -> str:
    """The JSON body every consumer sees (the webhook body and ``GET /v1/events/{id}``)."""
    document = {
        "id": event_id,
        "type": type_,
        "created": created_at_ns // 1_000_000_000,
        "data": {"object": obj},
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def record_event(
    conn: Connection,
    *,
    merchant_id: str | None,
    type_: str,
    object_id: str,
    obj: Mapping[str, Any],
    now_ns: int,
) -> str:
    """Append one event inside the caller's transaction; returns its id."""
    event_id = new_token(EVENT_ID_PREFIX, 16)
    driver.execute(
        conn,
        _INSERT,
        {
            "id": event_id,
            "merchant_id": merchant_id,
            "type": type_,
            "object_id": object_id,
            "payload": event_payload(event_id, type_, now_ns, obj),
            "created_at_ns": now_ns,
        },
    )
    return event_id
