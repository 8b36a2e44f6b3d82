"""What recording metrics costs per message: the same no-op actor on the StubBroker with an in-process
worker, without the Metrics middleware (baseline) and with it writing to real Redis.

    /tmp/atvenv/bin/python bench/metrics_overhead.py [messages]    (from the checkout root)
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dramatiq  # noqa: E402
import redis  # noqa: E402
from dramatiq.brokers.stub import StubBroker  # noqa: E402

import middleware  # noqa: E402
from adapters.metrics import RedisMetricsStore  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"


def run(n: int, store: RedisMetricsStore | None) -> float:
    broker = StubBroker(middleware=middleware.build_stack(
        max_retries=0, metrics_store=(lambda: store) if store is not None else None))
    broker.emit_after("process_boot")

    @dramatiq.actor(broker=broker, queue_name="bench")
    def noop(i: int) -> None:
        pass

    for i in range(n):
        noop.send(i)
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=10)
    started = time.perf_counter()
    worker.start()
    broker.join("bench")
    worker.join()
    elapsed = time.perf_counter() - started
    worker.stop()
    return n / elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    store = RedisMetricsStore(redis.Redis.from_url(REDIS_URL), f"atelier:bench{uuid.uuid4().hex[:8]}_metrics:")
    try:
        run(200, None)  # warm up
        baseline = run(n, None)
        project = run(n, store)
        recorded = store.read("dramatiq_messages_total")
    finally:
        store.clear()
    assert recorded == {("bench", "noop"): n}, recorded
    print(f"messages: {n}, 8 worker threads, StubBroker, metrics in Redis at {REDIS_URL}")
    print(f"baseline (no metrics middleware): {baseline:8.0f} msg/s  ({1e6 / baseline:6.1f} us/msg)")
    print(f"project  (Metrics -> Redis):      {project:8.0f} msg/s  ({1e6 / project:6.1f} us/msg)")
    print(f"ratio project/baseline throughput: {project / baseline:.2f}; "
          f"added cost {1e6 / project - 1e6 / baseline:.1f} us/msg")


if __name__ == "__main__":
    main()
