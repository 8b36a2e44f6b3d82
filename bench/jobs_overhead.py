"""What the Jobs middleware (a record per message, cancellation, heartbeats) costs: the atelier
stack without it against the same stack with it (records in Redis), dedup off, a no-op actor on
real Redis and real RabbitMQ, same run, same in-process worker (8 threads) as
bench/middleware_overhead.py, whose Setup this reuses.

Throughput: N messages enqueued first (their "queued" records written by the producer's
background flush), then the worker starts; the rate between the 10th and the 90th percent of them
(without the worker's start-up and tail, which vary more than the middleware costs). Rounds
interleaved, each in another order; the figure is the median of each round's ratio, beside the best of each. A control,
a second copy of the stack without Jobs measured the same way, shows the noise: its ratio to the
first should be 1.00, and how far it is from 1.00 is how far the jobs ratio can be trusted.
Enqueue: the time the N sends took.

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


def make(kind: str, variant: str, ns: str, db_url: str) -> Setup:
    if variant != "jobs":
        return Setup(kind, "stack", ns + variant, db_url)
    ns = ns + "jobs_"
    store = RedisJobStore(redis.Redis.from_url(REDIS_URL), f"atelier:{ns}jobs:", retention_s=3600)
    original = middleware.build_stack
    middleware.build_stack = lambda **kw: original(**kw, job_store=lambda: store)  # type: ignore[assignment]
    try:
        return Setup(kind, "stack", ns, db_url)
    finally:
        middleware.build_stack = original  # type: ignore[assignment]


def timed(s: Setup, n: int) -> tuple[float, float]:
    """(messages run per second in the steady part of the run, sends per second)."""
    t0 = time.perf_counter()
    rate = s.throughput(n)
    total = time.perf_counter() - t0
    return s.steady, n / max(total - n / rate, 1e-9)


VARIANTS = ("stack", "control", "jobs")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 15000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    ns = f"bench{uuid.uuid4().hex[:8]}_"
    tmp = tempfile.TemporaryDirectory()
    db_url = f"sqlite:///{tmp.name}/bench.db"
    upgrade(db_url)
    rows = []
    try:
        for kind in ("redis", "rabbitmq"):
            setups = {v: make(kind, v, ns, db_url) for v in VARIANTS}
            assert any(isinstance(m, Jobs) for m in setups["jobs"].broker.middleware)
            assert not any(isinstance(m, Jobs) for m in setups["stack"].broker.middleware)
            rates: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
            try:
                for s in setups.values():
                    s.throughput(min(500, n))
                for r in range(rounds):
                    # Each round in another order: a broker slowing down within a round (RabbitMQ
                    # writing its message store out) must not always fall on the same setup.
                    order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
                    for v in order if r % 2 == 0 else reversed(order):
                        rates[v].append(timed(setups[v], n))
            finally:
                for s in setups.values():
                    s.close()
            best = {v: max(r for r, _ in rates[v]) for v in VARIANTS}
            paired = {v: statistics.median(a[0] / b[0] for a, b in zip(rates[v], rates["stack"], strict=True))
                      for v in VARIANTS}
            sends = {v: max(e for _, e in rates[v]) for v in VARIANTS}
            rows.append((kind, best, paired, sends))
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"atelier:{ns}*"))
        if keys:
            client.delete(*keys)
        tmp.cleanup()
    print(f"no-op actor, {n} messages per run, {rounds} interleaved rounds, 8 worker threads, dedup off; "
          "rates between the 10th and 90th percent of each run")
    print(f"{'broker':<9} {'stack msg/s':>12} {'+ jobs msg/s':>13} {'jobs ratio':>11} {'best/best':>10} "
          f"{'control':>8} {'sends/s':>9} {'+ jobs':>9}")
    for kind, best, paired, sends in rows:
        print(f"{kind:<9} {best['stack']:12.0f} {best['jobs']:13.0f} {paired['jobs']:11.2f} "
              f"{best['jobs'] / best['stack']:10.2f} {paired['control']:8.2f} "
              f"{sends['stack']:9.0f} {sends['jobs']:9.0f}")
    print("jobs ratio and control: the median over rounds of each run's rate over the stack's in the same round")


if __name__ == "__main__":
    main()
