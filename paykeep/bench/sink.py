"""A webhook sink for ``paykeep bench api``: answers every POST with 204, counting them.

In production a merchant's webhook receiver runs on the merchant's servers. The demo
marketplace's receiver is served by Paykeep's own API process, so during a benchmark every
delivery would be received — parsed, verified, logged — by the very process being measured.
The bench points the merchants' endpoints here instead: a separate process, so the figure
holds Paykeep's side of a delivery (outbox, signing, the POST, the attempt record) and not a
merchant's.

``python -m paykeep.bench.sink`` prints ``{"port": N}`` on one line, then serves until killed;
``GET /count`` answers how many deliveries arrived.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import uvicorn

_received = 0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _received
    if scope["type"] != "http":
        return
    more = True
    while more:  # drain the body; its content is not this sink's business
        message = await receive()
        more = bool(message.get("more_body"))
    if scope["method"] == "GET" and scope["path"] == "/count":
        body = json.dumps({"received": _received}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    _received += 1
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(2048)  # connections wait in the backlog until uvicorn serves, not refused
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
