"""The Paykeep HTTP application: the ``/v1`` API, the hosted checkout pages and the carrier
webhooks, on one FastAPI app over one :class:`~paykeep.api.runtime.Runtime`.

``create_app_from_env`` is the factory uvicorn runs in each API process (``paykeep serve``
passes the configuration through the environment).
"""

from __future__ import annotations

from fastapi import FastAPI

from paykeep import __version__
from paykeep.api.foundation import build_app
from paykeep.api.runtime import Runtime, RuntimeConfig, open_runtime

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


def create_app_from_env() -> FastAPI:
    """uvicorn's factory in each API process of ``paykeep serve``. The serving process has
    migrated the database already."""
    return create_app(open_runtime(RuntimeConfig.from_env(), migrate=False))
