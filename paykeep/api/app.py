"""The Paykeep HTTP application: the ``/v1`` API, the hosted checkout pages and the carrier
webhooks, on one FastAPI app over one :class:`~paykeep.api.runtime.Runtime`.

``create_app_from_env`` is the factory uvicorn runs in each API process (``paykeep serve``
passes the configuration through the environment).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from typing import Final

from fastapi import FastAPI

from paykeep import __version__
from paykeep.api.foundation import build_app
from paykeep.api.runtime import Runtime, RuntimeConfig, open_runtime

log = logging.getLogger("paykeep.api")

DESCRIPTION = (
    "Marketplace payments with escrow: a buyer pays, the money is held, the merchant ships, "
    "the money is released on delivery or returned on a refund. Every POST accepts an "
    "`Idempotency-Key`; lists paginate with `limit` and `starting_after`; errors are "
    "`{error: {type, code, message, param, request_id}}`."
)


def create_app(runtime: Runtime) -> FastAPI:
    app = build_app("Paykeep API", __version__, api_keys=runtime.api_keys, description=DESCRIPTION)
    app.state.runtime = runtime
    from paykeep.api.routes import register_routes

    register_routes(app)
    try:
        from paykeep.web.checkout import checkout_router
    except ImportError:  # pragma: no cover - the web package ships with the API
        pass
    else:
        app.include_router(checkout_router(lambda: runtime.payments))
    from paykeep.api.demo_receiver import demo_receiver_router

    app.include_router(demo_receiver_router(runtime.data_dir))
    return app


#: How often an API process of ``paykeep serve --workers N`` records its rolled-back risk
#: decisions (the serving process's workers do it for a single-process server).
RISK_FLUSH_INTERVAL_S: Final = 1.0


def create_app_from_env() -> FastAPI:
    """uvicorn's factory in each API process of ``paykeep serve``. The serving process has
    migrated the database already.

    A blocked payment or a held release rolls its transaction back, its risk decision with
    it; the process that decided keeps the decision in memory until it is recorded in a
    transaction of its own (``EscrowRisk.flush``). The serving process's workers can only
    flush their own process's, so each API process runs its own flusher, and flushes once more
    at exit."""
    runtime = open_runtime(RuntimeConfig.from_env(), migrate=False)
    start_risk_flusher(runtime)
    return create_app(runtime)


def start_risk_flusher(runtime: Runtime) -> None:
    """Record this process's rolled-back risk decisions every second, and once more at exit
    (for a process that serves requests while the workers run elsewhere)."""
    flush = getattr(runtime.payments.risk, "flush", None)
    if flush is not None:
        threading.Thread(
            target=_flush_forever, args=(flush,), name="risk-flush", daemon=True
        ).start()
        atexit.register(flush)


def _flush_forever(flush: Callable[[], object]) -> None:
    while True:
        time.sleep(RISK_FLUSH_INTERVAL_S)
        try:
            flush()
        except Exception:  # a database hiccup: the decisions stay queued for the next round
            log.exception("recording rolled-back risk decisions failed")
