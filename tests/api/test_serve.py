"""`paykeep serve` end to end: it starts, seeds the demo marketplace once, authenticates."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from paykeep.bench.serveproc import ServerProcess
from paykeep.config import Settings


def test_serve_seeds_and_authenticates(server: ServerProcess) -> None:
    with server.client(server.operator_key) as op:
        me = op.get("/v1/whoami")
        assert me.status_code == 200
        assert me.json()["role"] == "operator"
    merchant = server.merchant(0)
    with server.client(merchant["api_key"]) as m:
        assert m.get("/v1/whoami").json()["merchant"] == merchant["id"]
    with server.client() as anonymous:
        denied = anonymous.get("/v1/whoami")
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "api_key_missing"
    assert len(server.info["merchants"]) == 3
    assert server.info["operator_key"].startswith("op_test_")


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of ``pid``'s child processes, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_server_takes_its_simulated_bank_and_its_workers_with_it(
    tmp_path: Path,
) -> None:
    with ServerProcess(Settings(data_dir=tmp_path / "data")) as proc:
        children = _children(proc.process.pid)
        banks = [pid for pid, cmd in children if "paykeep.banksim" in cmd]
        workers = [pid for pid, cmd in children if "paykeep.workers" in cmd]
        assert len(banks) == 1 and len(workers) == 1
        assert _alive(banks[0]) and _alive(workers[0])
        proc.process.send_signal(signal.SIGKILL)
        proc.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        for pid, what in ((banks[0], "banksim"), (workers[0], "the worker process")):
            while _alive(pid):
                assert time.monotonic() < deadline, f"{what} outlived its killed server"
                time.sleep(0.1)
