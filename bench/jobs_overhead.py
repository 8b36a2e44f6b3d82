"""What the Jobs middleware (a record per message, cancellation, heartbeats) costs: the atelier
stack without it against the same stack with it (records in Redis), dedup off, a no-op actor on
real Redis and real RabbitMQ, same run, same in-process worker (8 threads) as
bench/middleware_overhead.py, whose Setup this reuses.

Throughput: N messages enqueued first (their "queued" records written by the producer's
background flush), then the worker starts; time until the last one ran. Enqueue: the time the N
sends took. Rounds interleaved, best of each, and the median of each round's ratio.

    .venv/bin/python bench/jobs_overhead.py [messages] [rounds]    (from the checkout root)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis  # noqa: E402
from middleware_overhead import REDIS_URL, Setup  # noqa: E402

import middleware  # noqa: E402
from adapters.sql.migrate import upgrade  # noqa: E402
from adapters.state.jobs import RedisJobStore  # noqa: E402
from middleware.jobs import Jobs  # noqa: E402


def make(kind: str, jobs: bool, ns: str, db_url: str) -> Setup:
    if not jobs:
        return Setup(kind, "stack", ns, db_url)
    ns = ns + "jobs_"
    store = RedisJobStore(redis.Redis.from_url(REDIS_URL), f"atelier:{ns}jobs:", retention_s=3600)
    original = middleware.build_stack
    middleware.build_stack = lambda **kw: original(**kw, job_store=lambda: store)  # type: ignore[assignment]
    try:
        return Setup(kind, "stack", ns, db_url)
    finally:
        middleware.build_stack = original  # type: ignore[assignment]


def timed_throughput(s: Setup, n: int) -> tuple[float, float]:
    """(messages run per second, sends per second)."""
    send = s.send
    t0 = time.perf_counter()

    def counting(i: int, sent_at: float = 0.0) -> None:
        send(i, sent_at)

    s.send = counting  # type: ignore[method-assign]
    rate = s.throughput(n)
    s.send = send  # type: ignore[method-assign]
    total = time.perf_counter() - t0
    return rate, n / max(total - n / rate, 1e-9)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    ns = f"bench{uuid.uuid4().hex[:8]}_"
    tmp = tempfile.TemporaryDirectory()
    db_url = f"sqlite:///{tmp.name}/bench.db"
    upgrade(db_url)
    rows = []
    try:
        for kind in ("redis", "rabbitmq"):
            setups = {False: make(kind, False, ns, db_url), True: make(kind, True, ns, db_url)}
            assert any(isinstance(m, Jobs) for m in setups[True].broker.middleware)
            assert not any(isinstance(m, Jobs) for m in setups[False].broker.middleware)
            rates: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            try:
                for s in setups.values():
                    s.throughput(min(500, n))
                for _ in range(rounds):
                    for jobs, s in setups.items():
                        rates[jobs].append(timed_throughput(s, n))
            finally:
                for s in setups.values():
                    s.close()
            best = {j: max(r for r, _ in rates[j]) for j in rates}
            paired = statistics.median(a[0] / b[0] for a, b in zip(rates[True], rates[False], strict=True))
            sends = {j: max(e for _, e in rates[j]) for j in rates}
            rows.append((kind, best, paired, sends))
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"atelier:{ns}*"))
        if keys:
            client.delete(*keys)
        tmp.cleanup()
    print(f"no-op actor, {n} messages per run, best of {rounds} interleaved rounds, 8 worker threads, dedup off")
    print(f"{'broker':<9} {'stack msg/s':>12} {'+ jobs msg/s':>13} {'ratio':>6} {'paired':>7} "
          f"{'sends/s':>9} {'+ jobs':>9}")
    for kind, best, paired, sends in rows:
        print(f"{kind:<9} {best[False]:12.0f} {best[True]:13.0f} {best[True] / best[False]:6.2f} {paired:7.2f} "
              f"{sends[False]:9.0f} {sends[True]:9.0f}")


if __name__ == "__main__":
    main()
