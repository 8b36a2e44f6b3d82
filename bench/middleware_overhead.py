"""What the atelier middleware stack costs: a no-op actor on real Redis and real RabbitMQ, with bare
Dramatiq (its default middleware, without Prometheus) against the full atelier stack (metrics,
log context, correlation ids, dead letters, classified retries, dedup, circuit breaker; state in
Redis, dead letters in SQLite), without and with a dedup key on every message. Same run, same
in-process worker (8 threads). A fourth setup, bare Dramatiq's middleware on atelier's broker
(table dispatch, and on RabbitMQ acks coalesced per wake-up of the consumer thread), shows what the
middleware costs on its own.

Throughput: N messages enqueued first, then the worker starts; time until the last one ran.
Latency: enqueue-to-start at idle: one message at a time into an idle worker, the actor notes
when it started; median and p99.

What these in-process figures stand for: the cost of the stack and of atelier's broker classes
against Dramatiq's, measured in one process where both sides share everything else. They are
not what a user sees: the worker here has worker_timeout=100 (`dramatiq actors` uses 1000) and
the latency samples come 20 ms apart, so a polling consumer (bare Dramatiq on Redis) never backs
off far and looks faster than it is. Latency as users run it, with real `dramatiq` processes and
default options: bench/worker_latency.py.

    .venv/bin/python bench/middleware_overhead.py [messages] [latency_samples]    (from the checkout root)
    BENCH_BROKERS=redis .venv/bin/python bench/middleware_overhead.py 5000 200  (one broker only)
    .venv/bin/python bench/middleware_overhead.py --attribution [messages]        (RabbitMQ, by part)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dramatiq  # noqa: E402
import redis  # noqa: E402
from dramatiq.brokers.rabbitmq import RabbitmqBroker  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402
from dramatiq.middleware import (  # noqa: E402
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

import middleware  # noqa: E402
from adapters.metrics import RedisMetricsStore  # noqa: E402
from adapters.sql.deadletters import SqlDeadLetterStore  # noqa: E402
from adapters.sql.engine import make_engine  # noqa: E402
from adapters.sql.migrate import upgrade  # noqa: E402
from adapters.state.redis import RedisBreakerStore, RedisDedupStore, RedisFallbackQueue  # noqa: E402
from brokers.dispatch import AtelierRabbitmqBroker, AtelierRedisBroker  # noqa: E402
from middleware import (  # noqa: E402
    CircuitBreaker,
    ClassifiedRetries,
    Correlation,
    DeadLetters,
    Dedup,
    LogContext,
    Metrics,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
THREADS = 8
STACKS = ("bare", "broker", "stack", "dedup")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
KINDS = tuple(os.environ.get("BENCH_BROKERS", "redis,rabbitmq").split(","))


class Setup:
    def __init__(self, kind: str, stack: str, ns: str, db_url: str) -> None:
        self.kind, self.stack = kind, stack
        self.queue = f"{ns}{kind}_{stack}"
        self.client = redis.Redis.from_url(REDIS_URL)
        base = [AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines()]
        c, engine = self.client, make_engine(db_url)
        metrics = RedisMetricsStore(c, f"atelier:{ns}metrics:")
        dedup = RedisDedupStore(c, f"atelier:{ns}dedup:")
        breakers = RedisBreakerStore(c, f"atelier:{ns}circuit:")
        fallback = RedisFallbackQueue(c, f"atelier:{ns}fallback:")
        letters = SqlDeadLetterStore(engine)
        if stack in ("bare", "broker"):
            mw = [*base, Retries()]
        elif stack == "pre":  # what build_stack held before dedup, breaker, dead letters, correlation
            mw = [*base, CurrentMessage(), Metrics(lambda: metrics), LogContext(), ClassifiedRetries()]
        elif stack == "mine":  # bare plus only those four
            mw = [*base, Correlation(), DeadLetters(lambda: letters), Retries(), Dedup(lambda: dedup),
                  CircuitBreaker(lambda: breakers, lambda: fallback)]
        else:
            mw = middleware.build_stack(max_retries=0, metrics_store=lambda: metrics, dedup_store=lambda: dedup,
                                        breaker_store=lambda: breakers, fallback_queue=lambda: fallback,
                                        dead_letter_store=lambda: letters)
        # atelier's brokers (bootstrap/broker.py) are Dramatiq's with table dispatch of the hooks and,
        # on RabbitMQ, acks coalesced per wake-up of the consumer thread. "broker" is bare Dramatiq's
        # middleware on atelier's broker: what the middleware alone costs is stack against it.
        redis_cls, rabbitmq_cls = ((RedisBroker, RabbitmqBroker) if stack == "bare"
                                   else (AtelierRedisBroker, AtelierRabbitmqBroker))
        if kind == "redis":
            self.broker = redis_cls(url=REDIS_URL, middleware=mw)
        else:
            self.broker = rabbitmq_cls(url=RABBITMQ_URL, confirm_delivery=True, middleware=mw)
        self.broker.emit_after("process_boot")
        self.done = 0
        self.target = 0
        self.finished = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []

        self.marks: dict[int, float] = {}  # done count -> when it was reached
        self.steady = 0.0

        def noop(i: int, sent_at: float = 0.0) -> None:
            started = time.time()
            with self.lock:
                if sent_at:
                    self.latencies.append(started - sent_at)
                self.done += 1
                if self.done in self.marks:
                    self.marks[self.done] = time.perf_counter()
                if self.done >= self.target:
                    self.finished.set()

        self.actor = dramatiq.actor(noop, broker=self.broker, actor_name=f"noop_{kind}_{stack}",
                                    queue_name=self.queue)

    def send(self, i: int, sent_at: float = 0.0) -> None:
        if self.stack == "dedup":
            self.actor.send_with_options(args=(i, sent_at), dedup_key=f"{uuid.uuid4().hex}", dedup_window=60)
        else:
            self.actor.send(i, sent_at)

    def throughput(self, n: int) -> float:
        """Messages run per second, from the worker's start to the last message; ``self.steady``
        is the rate between the 10th and the 90th percent of them, without the worker's start-up
        and the last threads' tail (the figure to compare when a run lasts only a second)."""
        self.done, self.target = 0, n
        lo, hi = max(1, n // 10), max(2, n * 9 // 10)
        self.marks = {lo: 0.0, hi: 0.0}
        self.finished.clear()
        for i in range(n):
            self.send(i)
        worker = dramatiq.Worker(self.broker, worker_threads=THREADS, worker_timeout=100)
        started = time.perf_counter()
        worker.start()
        assert self.finished.wait(600), f"{self.kind}/{self.stack}: {self.done} of {n}"
        elapsed = time.perf_counter() - started
        self._stop(worker)
        self.steady = (hi - lo) / max(self.marks[hi] - self.marks[lo], 1e-9)
        return n / elapsed

    def _stop(self, worker: dramatiq.Worker) -> None:
        worker.stop()
        # Each Worker adds its own middleware to the broker; drop it so runs do not pile them up.
        self.broker.middleware[:] = [m for m in self.broker.middleware if type(m).__name__ != "_WorkerMiddleware"]

    def latency(self, samples: int) -> tuple[float, float]:
        worker = dramatiq.Worker(self.broker, worker_threads=THREADS, worker_timeout=100)
        worker.start()
        self.latencies = []
        try:
            for i in range(samples + 5):
                self.done, self.target = 0, 1
                self.finished.clear()
                time.sleep(0.02)  # idle: nothing queued, consumers waiting
                self.send(i, time.time())
                assert self.finished.wait(60)
        finally:
            self._stop(worker)
        values = sorted(self.latencies[5:])  # the first few warm connections up
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        return statistics.median(values) * 1000, p99 * 1000

    def close(self) -> None:
        if self.kind == "redis":
            keys = list(self.client.scan_iter(f"dramatiq:{self.queue}*"))
            if keys:
                self.client.delete(*keys)
        else:
            for suffix in ("", ".DQ", ".XQ"):
                self.broker.channel.queue_delete(f"{self.queue}{suffix}")
        self.broker.close()


def attribution(n: int, rounds: int = 5) -> None:
    """Which part of the stack costs what on RabbitMQ: bare, the middleware that existed before the
    resilience middleware, only the resilience middleware (no keys, no circuit), the full stack."""
    ns = f"bench{uuid.uuid4().hex[:8]}_"
    tmp = tempfile.TemporaryDirectory()
    db_url = f"sqlite:///{tmp.name}/bench.db"
    upgrade(db_url)
    names = {"bare": "bare Dramatiq", "pre": "bare + CurrentMessage, Metrics, LogContext",
             "mine": "bare + Correlation, DeadLetters, Dedup, CircuitBreaker", "stack": "full atelier stack"}
    setups = {stack: Setup("rabbitmq", stack, ns, db_url) for stack in names}
    best = dict.fromkeys(names, 0.0)
    try:
        for s in setups.values():
            s.throughput(min(500, n))
        for _ in range(rounds):
            for stack, s in setups.items():
                best[stack] = max(best[stack], s.throughput(n))
    finally:
        for s in setups.values():
            s.close()
        tmp.cleanup()
    print(f"RabbitMQ, no-op actor, {n} messages per run, best of {rounds}")
    for stack, name in names.items():
        print(f"{name:<58} {best[stack]:8.0f} msg/s  {best[stack] / best['bare']:.2f}")


def main() -> None:
    if sys.argv[1:2] == ["--attribution"]:
        attribution(int(sys.argv[2]) if len(sys.argv) > 2 else 4000)
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    samples = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    ns = f"bench{uuid.uuid4().hex[:8]}_"
    tmp = tempfile.TemporaryDirectory()
    db_url = f"sqlite:///{tmp.name}/bench.db"
    upgrade(db_url)
    results: dict[tuple[str, str], dict[str, float]] = {}
    try:
        for kind in KINDS:
            setups = {stack: Setup(kind, stack, ns, db_url) for stack in STACKS}
            try:
                for s in setups.values():
                    s.throughput(min(500, n))  # warm up: connections, scripts, JIT-less caches
                # Rounds interleaved, best of each: the machine is shared, so the best run is the
                # one least disturbed by other work.
                for _ in range(ROUNDS):
                    for stack, s in setups.items():
                        rate = s.throughput(n)
                        r = results.setdefault((kind, stack), {"rate": 0.0, "rates": []})
                        r["rate"] = max(r["rate"], rate)
                        r["rates"].append(rate)
                for stack, s in setups.items():
                    results[(kind, stack)]["median"], results[(kind, stack)]["p99"] = s.latency(samples)
            finally:
                for s in setups.values():
                    s.close()
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"atelier:{ns}*"))
        if keys:
            client.delete(*keys)
        tmp.cleanup()
    print(f"no-op actor, {n} messages per throughput run (best of {ROUNDS} interleaved rounds), {samples} latency "
          f"samples, {THREADS} worker threads, in-process worker")
    print(f"{'broker':<9} {'middleware':<22} {'msg/s':>8} {'ratio':>6} {'paired':>7} {'start median':>13} {'p99':>9}")
    names = {"bare": "bare Dramatiq", "broker": "bare, atelier broker", "stack": "atelier stack",
             "dedup": "atelier stack + dedup"}
    for kind in KINDS:
        bare = results[(kind, "bare")]
        for stack in STACKS:
            r = results[(kind, stack)]
            # ratio: best round against best round; paired: the median of each round's ratio to
            # the bare run just before it (less sensitive to one lucky round on a shared machine).
            paired = statistics.median(x / b for x, b in zip(r["rates"], bare["rates"], strict=True))
            print(f"{kind:<9} {names[stack]:<22} {r['rate']:8.0f} {r['rate'] / bare['rate']:6.2f} {paired:7.2f} "
                  f"{r['median']:10.1f} ms {r['p99']:6.1f} ms")
    print("middleware alone (against bare Dramatiq's middleware on atelier's broker, best round; paired):")
    for kind in KINDS:
        own = results[(kind, "broker")]
        for stack in ("stack", "dedup"):
            r = results[(kind, stack)]
            paired = statistics.median(x / b for x, b in zip(r["rates"], own["rates"], strict=True))
            print(f"  {kind:<9} {names[stack]:<22} {r['rate'] / own['rate']:6.2f} {paired:7.2f}")


if __name__ == "__main__":
    main()
