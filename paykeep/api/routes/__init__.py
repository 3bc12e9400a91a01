"""The ``/v1`` routes, one module per resource; ``register_routes`` mounts them all."""

from __future__ import annotations

from fastapi import FastAPI

from paykeep.api.auth import CurrentPrincipal


def register_routes(app: FastAPI) -> None:
    from paykeep.api.routes import aml, commerce, money

    app.include_router(commerce.router)
    app.include_router(money.router)
    app.include_router(aml.router)

    @app.get("/v1/health", tags=["meta"], summary="Liveness (no database access).")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/whoami", tags=["meta"], summary="The authenticated API key's principal.")
    async def whoami(principal: CurrentPrincipal) -> dict[str, str | None]:
        # The trivial authenticated GET of `paykeep bench api`'s baseline.
        return {
            "object": "principal",
            "key": principal.key_id,
            "role": principal.role,
            "merchant": principal.merchant_id,
        }
