"""Helpers for the ops end-to-end tests: a real `atelier ops` process and the test actors' state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import redis

from tests import services


class OpsServer:
    """`python -m entrypoints.cli ops` on a free port of 127.0.0.1, output captured to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = services.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> OpsServer:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", "ops", "--port", str(self.port)],
                                     env=self.env, cwd=services.ROOT, stdout=self._log, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"ops server exited:\n{self.log_path.read_text()}")
            try:
                return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        services.wait_for(healthy, timeout=60, message="ops server /healthz")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def cleanup_redis(prefix: str, ns: str) -> None:
    """Delete what a test left in Redis: its metrics (under its QUEUE_PREFIX) and its state keys."""
    client = redis.Redis.from_url(services.REDIS_URL)
    for pattern in (f"atelier:{prefix}metrics:*", f"{ns}:*"):
        keys = list(client.scan_iter(pattern))
        if keys:
            client.delete(*keys)
    client.close()
