"""Connection details of the real services the tests use, and helpers around them.

The test command (scripts/test.sh) makes sure they run; tests fail loudly, never skip,
when one is missing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")

BROKERS = {"redis": REDIS_URL, "rabbitmq": RABBITMQ_URL}

T = TypeVar("T")


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.1,
             message: str = "condition") -> T:
    """Poll until predicate() is truthy or the deadline passes (then fail with message)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value {last!r})")


def drain_stub(broker: Any, queue: str = "q", *, fail_fast: bool = True) -> None:
    """Run what is queued on a StubBroker in a worker of its own with one thread (so messages run
    on the same thread, in turn) until the queue is empty; the worker is stopped either way."""
    import dramatiq

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=20)
    worker.start()
    try:
        broker.join(queue, fail_fast=fail_fast)
        worker.join()
    finally:
        worker.stop()


def create_pg_database() -> str:
    """Create a fresh PostgreSQL database; return its SQLAlchemy URL."""
    import psycopg

    name = unique("atelier_test_")
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def purge_queues(broker_url: str, prefix: str, names: tuple[str, ...]) -> None:
    """Remove the queues a test run left on a shared broker (named with its prefix)."""
    if broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(broker_url)
        keys = list(client.scan_iter(f"dramatiq:{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
        return
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(broker_url))
    ch = conn.channel()
    for name in names:
        for suffix in ("", ".DQ", ".XQ"):
            ch.queue_delete(f"{prefix}{name}{suffix}")
    conn.close()


class WorkerProcess:
    """A real `dramatiq actors` subprocess with its output captured to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *, processes: int = 1, threads: int = 2,
                 extra_args: tuple[str, ...] = (), modules: tuple[str, ...] = ()) -> None:
        """``modules`` are imported after ``actors`` (test-only actors under tests/e2e)."""
        self.env = env
        self.log_path = log_path
        self.args = [sys.executable, "-m", "dramatiq", "actors", *modules, "--processes", str(processes),
                     "--threads", str(threads), *extra_args]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: b"Worker process is ready" in self.log_path.read_bytes()
                 or self.proc.poll() is not None, timeout=120, message="worker boot")
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output()}")
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_cli(args: list[str], env: dict[str, str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the `atelier` CLI of this checkout (python -m entrypoints.cli) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "entrypoints.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def subprocess_env(**extra: str) -> dict[str, str]:
    """os.environ with this checkout importable and the service settings cleared."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MINIO_", "BROKER_", "DATABASE_", "REDIS_", "QDRANT_", "CLIP_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
