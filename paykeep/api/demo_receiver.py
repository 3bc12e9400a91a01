"""The demo marketplace's own webhook receiver, served by ``paykeep serve`` itself.

The seeded demo merchants' webhook endpoints point here, so a demo day shows signed events
being delivered without running another program. It plays the merchant's side: it verifies
each delivery's Standard Webhooks signature with the merchant's secret (from
``<data dir>/serve.json``) and answers 204, or 400 when the signature does not verify — which
the platform then retries like any failing endpoint. It keeps nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, Request, Response

from paykeep.errors import PaykeepError


def demo_receiver_router(data_dir: Path) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    secrets: dict[str, str] = {}

    def secret_for(merchant_id: str) -> str | None:
        if merchant_id not in secrets:
            path = data_dir / "serve.json"
            if path.exists():
                for merchant in json.loads(path.read_text()).get("merchants", []):
                    secrets[str(merchant["id"])] = str(merchant["webhook_secret"])
        return secrets.get(merchant_id)

    @router.post("/demo/webhooks/{merchant_id}")
    async def receive(merchant_id: str, request: Request) -> Response:
        from paykeep.workers.webhooks import verify

        secret = secret_for(merchant_id)
        body = await request.body()
        if secret is None:
            return Response(status_code=404)
        try:
            verify(secret, request.headers, body)
        except PaykeepError:
            return Response(status_code=400)
        return Response(status_code=204)

    return router
