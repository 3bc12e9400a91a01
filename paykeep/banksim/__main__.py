"""``python -m paykeep.banksim --data-dir DIR [--host H] --http-port P --card-port P``.

Prints ``{"http_port": ..., "card_port": ...}`` on stdout when both listeners are up; SIGTERM
stops it cleanly (exit 0). Bad options or a bad ``--faults`` file: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError("a port is 0 to 65535 (0 picks a free port)")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="banksim", description="Simulated card network and bank (for tests and the demo)."
    )
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="card network listen address")
    parser.add_argument("--http-port", type=_port, default=0)
    parser.add_argument("--card-port", type=_port, default=0)
    parser.add_argument("--faults", type=Path, default=None, help="JSON fault configuration")
    parser.add_argument("--seed", type=int, default=None, help="seed of fault probabilities")
    args = parser.parse_args(argv)
    return run(args.data_dir, args.host, args.http_port, args.card_port, args.faults, args.seed)


def run(
    data_dir: Path,
    host: str,
    http_port: int,
    card_port: int,
    faults_path: Path | None,
    seed: int | None,
) -> int:
    from paykeep.banksim.app import load_faults, serve
    from paykeep.banksim.cardnet import FaultConfigInvalid

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        faults = load_faults(faults_path)
        asyncio.run(serve(data_dir, host, http_port, card_port, faults, seed))
    except (FaultConfigInvalid, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        sys.stderr.write(f"banksim: {' '.join(str(exc).split())}\n")
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
