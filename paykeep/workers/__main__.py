"""``python -m paykeep.workers [--bank-cycle S]``: the background workers in a process of their
own — escrow timers, webhook deliveries, the bank's day cycle, housekeeping.

``paykeep serve`` starts it (configured through the environment it exports, like its API
processes) and it dies with the server. In the API's process the workers competed with the
requests for one interpreter lock: under load the webhook deliveries fell far behind while
taking CPU from the requests. Stops on SIGTERM or SIGINT, finishing the passes under way.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from typing import Final

from paykeep.api.runtime import RuntimeConfig, open_runtime
from paykeep.web.checkout import SecretsFilter
from paykeep.workers.cycle import BANK_CYCLE_INTERVAL_S, start_workers

#: How long a stopping process waits for the passes under way (``paykeep serve`` allows more).
STOP_JOIN_S: Final = 10.0
#: How often the main thread looks for a stop signal.
SIGNAL_POLL_S: Final = 0.1


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m paykeep.workers")
    parser.add_argument("--bank-cycle", type=float, default=BANK_CYCLE_INTERVAL_S)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(SecretsFilter())  # checkout tokens and card-like digits never logged
    stop = threading.Event()
    # The handler only appends (no lock): it runs between two bytecodes of the main thread,
    # and ``stop.set()`` in it deadlocked when a second SIGTERM (``paykeep serve``'s own,
    # then the parent-death signal) arrived while the first handler held the event's lock —
    # the process then outlived its server. The main loop turns the note into ``stop``.
    signalled: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: signalled.append(signum))
    runtime = open_runtime(RuntimeConfig.from_env(), migrate=False)
    try:
        threads, _stats = start_workers(runtime, stop, bank_cycle_s=args.bank_cycle)
        while not signalled:
            time.sleep(SIGNAL_POLL_S)
        stop.set()
        deadline = time.monotonic() + STOP_JOIN_S
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        runtime.close()


if __name__ == "__main__":
    main()
