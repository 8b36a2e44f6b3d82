"""Enqueue-to-start latency at idle, and Redis's idle command rate, with real `dramatiq` worker
processes as users run them: `python -m dramatiq bench.latency_worker --processes 1 --threads 8`
(Dramatiq's defaults: worker timeout 1000 ms, prefetch twice the threads).

Sides, each on Redis and on RabbitMQ:
- **bare Dramatiq**: Dramatiq's broker class and default middleware (Prometheus left out), with
  one no-op actor on each queue atelier's `actors` package declares, so both sides consume the
  same queues (7 with the bench's, each with its delay queue);
- **atelier broker**: the same as bare Dramatiq on atelier's broker class (its consumer and
  enqueue, Dramatiq's middleware): what the consumer alone does;
- **atelier**: atelier's `actors` package (its broker from BROKER_URL, the full stack, state in
  Redis, dead letters in SQLite), what `dramatiq actors` runs;
- **atelier + dedup**: the same worker, a distinct `dedup_key` on every message.

Latency: both workers of a broker run at once, each on queues of its own. This process sends one
message at a time, 50-150 ms apart (uniform), each when the previous one has started, in blocks
of 25 per side, the sides taking turns so that every side meets the same machine over the run
(bare Dramatiq's broker class sends for the bare side, atelier's for the others: on
RabbitMQ with publisher confirms, as atelier sends). A side's first messages of a block come
after its worker idled through the other side's block, as intermittent traffic does. Figures: the
time from ``send()`` returning to the actor starting, and from ``send()`` called (``time.time()``
in both processes, same machine). With publisher confirms the actor may start before ``send()``
returns (the confirm is one more round trip), hence the second figure. The first 5 messages of
each side are dropped (connections warming up).

Idle command rate (Redis): each side's worker alone on a private redis-server (started here on a
free port; broker and state both on it, as a Redis deployment runs), idle, over a window:
commands per second as Redis counts them (INFO commandstats, those run inside scripts included)
and script calls per second.

    .venv/bin/python bench/worker_latency.py [samples] [idle_window_s]     (from the checkout root)
    BENCH_BROKERS=redis .venv/bin/python bench/worker_latency.py 100       (one broker only)
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dramatiq  # noqa: E402
import pika  # noqa: E402
import redis  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
WARMUP = 5
QUEUES = ("bench", "fallback", "media", "embeddings", "messages", "outbox", "uploads")


def env_for(side: str, broker_url: str, state_url: str, prefix: str, key: str, db: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MINIO_", "BROKER_", "DATABASE_", "REDIS_", "QDRANT_", "CLIP_", "BENCH_"))}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", BENCH_SIDE=side, BENCH_STATE_URL=state_url,
               BENCH_KEY=key, QUEUE_PREFIX=prefix, BROKER_URL=broker_url, DATABASE_URL=db,
               LOCAL_STORE_DIR=str(Path(db.removeprefix("sqlite:///")).parent / "objects"), LOG_FORMAT="json",
               LOG_LEVEL="INFO")  # the worker logs "ready" at INFO
    if broker_url.startswith("amqp"):
        env["REDIS_URL"] = state_url  # atelier keeps dedup, breakers and metrics in Redis
    return env


class Worker:
    """`python -m dramatiq bench.latency_worker --processes 1 --threads 8`, output to a file
    (``processes=None``: Dramatiq's default, a process per core)."""

    def __init__(self, env: dict[str, str], log: Path, processes: int | None = 1) -> None:
        self.log = log
        self.out = open(log, "wb")
        count = [] if processes is None else ["--processes", str(processes)]
        self.proc = subprocess.Popen([sys.executable, "-m", "dramatiq", "bench.latency_worker", *count,
                                      "--threads", "8"], env=env, cwd=ROOT, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while b"Worker process is ready" not in log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start (exit {self.proc.poll()}):\n"
                                   f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.out.close()


def producer(kind: str, side: str, broker_url: str, prefix: str) -> tuple[dramatiq.Broker, dramatiq.Actor]:
    if side == "bare":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
        from dramatiq.brokers.redis import RedisBroker

        broker = RedisBroker(url=broker_url, middleware=[]) if kind == "redis" else \
            RabbitmqBroker(url=broker_url, middleware=[])
    else:
        from brokers.dispatch import AtelierRabbitmqBroker, AtelierRedisBroker

        broker = AtelierRedisBroker(url=broker_url, middleware=[]) if kind == "redis" else \
            AtelierRabbitmqBroker(url=broker_url, confirm_delivery=True, middleware=[])
    actor = dramatiq.actor(lambda i: None, broker=broker, queue_name=f"{prefix}bench", actor_name="bench_probe")
    return broker, actor


class Side:
    """One side's producer, the key its worker records starts under, and its figures."""

    def __init__(self, kind: str, side: str, dedup: bool, broker_url: str, prefix: str, key: str) -> None:
        self.name, self.dedup, self.key = side, dedup, key
        self.broker, self.actor = producer(kind, side, broker_url, prefix)
        self.after_return: list[float] = []
        self.after_call: list[float] = []

    def sample(self, i: int, state: redis.Redis) -> None:
        called = time.time()
        if self.dedup:
            self.actor.send_with_options(args=(i,), dedup_key=uuid.uuid4().hex, dedup_window=60)
        else:
            self.actor.send(i)
        sent = time.time()
        reply = state.blpop(self.key, timeout=30)
        assert reply is not None, f"{self.name}: message {i} did not start within 30 s"
        n, started = reply[1].split()
        assert int(n) == i
        if i >= WARMUP:
            self.after_return.append((float(started) - sent) * 1000)
            self.after_call.append((float(started) - called) * 1000)


def latencies(sides: list[Side], samples: int, state: redis.Redis, block: int = 25) -> None:
    """Blocks of ``block`` messages per side, the sides taking turns, so that every side meets the
    machine as it is over the whole run; within a block, one message at a time, 50-150 ms apart."""
    rng = random.Random(7)
    total = samples + WARMUP
    for first in range(0, total, block):
        for side in sides:
            for i in range(first, min(first + block, total)):
                time.sleep(rng.uniform(0.05, 0.15))  # the gap: the worker idles
                side.sample(i, state)


def summary(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return statistics.median(values), q[89], q[98]


def purge(kind: str, prefix: str, state_url: str) -> None:
    client = redis.Redis.from_url(state_url)
    keys = [*client.scan_iter(f"dramatiq:{prefix}*"), *client.scan_iter(f"dramatiq:__acks__.*.{prefix}*"),
            *client.scan_iter(f"atelier:{prefix}*")]
    if keys:
        client.delete(*keys)
    client.close()
    if kind == "rabbitmq":
        conn = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        ch = conn.channel()
        for name in QUEUES:
            for suffix in ("", ".DQ", ".XQ"):
                ch.queue_delete(f"{prefix}{name}{suffix}")
        conn.close()


def migrate(env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "entrypoints.cli", "migrate"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def private_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return proc, url


def idle_rate(side: str, window: float, tmp: Path) -> tuple[float, float]:
    server, url = private_redis(tmp)
    prefix = f"idle{uuid.uuid4().hex[:6]}_"
    env = env_for(side, url, url, prefix, "unused", f"sqlite:///{tmp}/idle_{side}.db")
    if side == "atelier":
        migrate(env)
    worker = Worker(env, tmp / f"idle_{side}.log")
    client = redis.Redis.from_url(url)
    try:
        time.sleep(3)  # settle: scripts loaded, subscriptions made, first maintenance done
        client.config_resetstat()
        at = time.monotonic()
        time.sleep(window)  # the measurement window
        stats = client.info("commandstats")
        elapsed = time.monotonic() - at
    finally:
        worker.stop()
        client.close()
        server.terminate()
        server.wait(10)
    calls = {k: v["calls"] for k, v in stats.items() if not k.startswith("cmdstat_config")}
    return sum(calls.values()) / elapsed, calls.get("cmdstat_evalsha", 0) / elapsed


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    window = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    kinds = os.environ.get("BENCH_BROKERS", "redis,rabbitmq").split(",")
    results: dict[tuple[str, str], tuple[tuple[float, float, float], ...]] = {}
    rates: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        state = redis.Redis.from_url(REDIS_URL)
        for kind in kinds:
            broker_url = REDIS_URL if kind == "redis" else RABBITMQ_URL
            workers: list[Worker] = []
            sides: list[Side] = []
            prefixes: list[str] = []
            try:
                for worker_side in ("bare", "broker", "atelier"):  # all up at once, each on queues of its own
                    prefix = f"lat{uuid.uuid4().hex[:6]}_"
                    prefixes.append(prefix)
                    key = f"bench:{prefix}started"
                    env = env_for(worker_side, broker_url, REDIS_URL, prefix, key,
                                  f"sqlite:///{tmp}/{kind}_{worker_side}.db")
                    if worker_side == "atelier":
                        migrate(env)
                    workers.append(Worker(env, tmp / f"{kind}_{worker_side}.log"))
                    sides.append(Side(kind, worker_side, False, broker_url, prefix, key))
                    if worker_side == "atelier":
                        sides.append(Side(kind, "dedup", True, broker_url, prefix, key))
                latencies(sides, samples, state)
                for side in sides:
                    results[(kind, side.name)] = summary(side.after_return), summary(side.after_call)
            finally:
                for side in sides:
                    side.broker.close()
                    state.delete(side.key)
                for worker in workers:
                    worker.stop()
                for prefix in prefixes:
                    purge(kind, prefix, REDIS_URL)
        state.close()
        if "redis" in kinds:
            for side in ("bare", "broker", "atelier"):
                rates[side] = idle_rate(side, window, tmp)

    print(f"enqueue-to-start at idle, `dramatiq` 1 process x 8 threads, default options, {samples} samples per "
          f"side, 50-150 ms apart")
    print(f"{'':<26} {'from send() returning':^32} {'from send() called':^32}")
    print(f"{'broker':<9} {'side':<16} {'median':>10} {'p90':>10} {'p99':>10} {'median':>10} {'p90':>10} {'p99':>10}")
    names = {"bare": "bare Dramatiq", "broker": "atelier broker", "atelier": "atelier", "dedup": "atelier + dedup"}
    for kind in kinds:
        for side in ("bare", "broker", "atelier", "dedup"):
            cells = " ".join(f"{v:7.2f} ms" for figures in results[(kind, side)] for v in figures)
            print(f"{kind:<9} {names[side]:<16} {cells}")
    if rates:
        print(f"Redis at idle, one worker process alone on a private redis-server, {window:.0f} s window")
        print(f"{'side':<16} {'commands/s':>11} {'script calls/s':>15}")
        for side in ("bare", "broker", "atelier"):
            total, scripts = rates[side]
            print(f"{names[side]:<16} {total:11.1f} {scripts:15.1f}")


if __name__ == "__main__":
    main()
