"""Serve the bank router alone, the way the banksim app mounts it (under ``/bank``).

Used by the tests until ``python -m paykeep.banksim`` exists. Binds 127.0.0.1 on a free port
and prints one JSON line ``{"http_port": N}`` on stdout once it is listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from pathlib import Path

import fastapi
import uvicorn

from paykeep.banksim.bank import create_router


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    app = fastapi.FastAPI()
    app.include_router(create_router(args.data_dir), prefix="/bank")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        sys.stdout.write(json.dumps({"http_port": sock.getsockname()[1]}) + "\n")
        sys.stdout.flush()
        await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
