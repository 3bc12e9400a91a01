"""A real ``paykeep serve`` child process (real HTTP on 127.0.0.1): for `paykeep bench api`
and the end-to-end tests."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from paykeep.config import Settings
from paykeep.serve import die_with_parent

START_TIMEOUT_S = 60.0


class ServerProcess:
    """``paykeep serve --port 0 --json`` on ``settings``; ``info`` is its serve.json document
    (url, operator_key, merchants with api_key and webhook secret, carrier)."""

    def __init__(self, settings: Settings, *extra: str, env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "paykeep.cli", "serve", "--port", "0", "--json",
                "--data-dir", str(settings.data_dir), *extra]  # fmt: skip
        if settings.database_url:
            argv += ["--database-url", settings.database_url]
        self.data_dir = Path(settings.data_dir)
        self.log_path = self.data_dir / "serve.log"
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**os.environ, **(env or {})},
            # A killed bench or test run must not leave a server (and its bank) behind.
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )  # fmt: skip
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT_S)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"paykeep serve did not start: {self.log_path.read_text()[-2000:]}")
        self.info: dict[str, Any] = json.loads(line)
        self.url: str = self.info["url"]
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"paykeep serve not ready: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    @property
    def mail_dir(self) -> Path:
        """Where the server writes buyers' sign-in codes (``paykeep.mail.DirectoryMailer``)."""
        found = self.info.get("mail_dir")
        if not found:
            raise RuntimeError("this server sends its mail by SMTP, not to a folder")
        return Path(found)

    @property
    def operator_key(self) -> str:
        return str(self.info["operator_key"])

    def merchant(self, index: int) -> dict[str, Any]:
        found: dict[str, Any] = self.info["merchants"][index]
        return found

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()
        return int(self.process.returncode)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
