"""What the Jobs middleware costs as users run it: real `dramatiq bench.latency_worker` processes
(atelier's `actors` package, as `dramatiq actors` loads it, plus a counting actor) with Dramatiq's
default options (a process per core, 8 threads each), JOBS_ENABLED=false against true, dedup off,
on real Redis and real RabbitMQ. The actor adds one to a Redis counter (one round trip: a
message's smallest real work).

Each run: N messages are put on the queue with no worker running, then the worker starts and this
process reads the counter every 5 ms; the rate is taken between the 10th and the 90th percent of
N (the worker's start-up and tail left out). Rounds alternate the order of the sides; the figure is
the median over rounds of jobs-on over jobs-off in the same round. A control side (jobs off
again) shows how far from 1.00 two identical sides land on this machine.

    .venv/bin/python bench/jobs_workers.py [messages] [rounds]    (from the checkout root)
    BENCH_BROKERS=rabbitmq .venv/bin/python bench/jobs_workers.py 20000 5   (one broker only)
    BENCH_WORK_MS=1 .venv/bin/python bench/jobs_workers.py 10000 5   (an actor with 1 ms of CPU work)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dramatiq  # noqa: E402
import pika  # noqa: E402
import redis  # noqa: E402
from worker_latency import RABBITMQ_URL, REDIS_URL, Worker, env_for, migrate, purge  # noqa: E402

from brokers.dispatch import AtelierRabbitmqBroker, AtelierRedisBroker  # noqa: E402

SIDES = ("off", "control", "on")


def fill(kind: str, broker_url: str, prefix: str, n: int) -> None:
    """Put n messages for bench_count on the bench queue, and wait until the broker holds them all."""
    queue = f"{prefix}bench"
    if kind == "redis":
        broker = AtelierRedisBroker(url=broker_url, middleware=[])
    else:  # no publisher confirms: the queue's length says when all of them are in
        broker = AtelierRabbitmqBroker(url=broker_url, confirm_delivery=False, middleware=[])
    actor = dramatiq.actor(lambda i: None, broker=broker, queue_name=queue, actor_name="bench_count")
    for i in range(n):
        actor.send(i)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if kind == "redis":
            held = broker.client.llen(f"dramatiq:{queue}")
        else:
            conn = pika.BlockingConnection(pika.URLParameters(broker_url))
            held = conn.channel().queue_declare(queue, durable=True, passive=True).method.message_count
            conn.close()
        if held >= n:
            break
        time.sleep(0.1)
    broker.close()


def measure(kind: str, side: str, n: int, tmp: Path, state: redis.Redis,
            sample: Callable[[int], Any] = lambda session: None) -> tuple[tuple[float, Any], tuple[float, Any]]:
    """Run one side over n queued messages; at the 10th and at the 90th percent of n, the time and
    ``sample(the worker's session id)``."""
    broker_url = REDIS_URL if kind == "redis" else RABBITMQ_URL
    prefix = f"jw{uuid.uuid4().hex[:6]}_"
    key = f"bench:{prefix}count"
    env = env_for("atelier", broker_url, REDIS_URL, prefix, key, f"sqlite:///{tmp}/{prefix}.db")
    env["JOBS_ENABLED"] = "true" if side == "on" else "false"
    env["BENCH_WORK_MS"] = os.environ.get("BENCH_WORK_MS", "0")  # env_for leaves BENCH_* out
    env.pop("DRAMATIQ_PROCESSES", None)
    migrate(env)
    fill(kind, broker_url, prefix, n)
    lo, hi = n // 10, n * 9 // 10
    marks: dict[int, tuple[float, Any]] = {}
    worker = Worker(env, tmp / f"{prefix}.log", processes=None)
    session = os.getsid(worker.proc.pid)
    try:
        deadline = time.monotonic() + 600
        while hi not in marks and time.monotonic() < deadline:
            done = int(state.get(key) or 0)
            for mark in (lo, hi):
                if mark not in marks and done >= mark:
                    marks[mark] = (time.perf_counter(), sample(session))
            time.sleep(0.005)
        assert hi in marks, f"{kind}/{side}: {state.get(key)} of {n} ran"
    finally:
        worker.stop()
        state.delete(key)
        purge(kind, prefix, REDIS_URL)
    return marks[lo], marks[hi]


def run(kind: str, side: str, n: int, tmp: Path, state: redis.Redis) -> float:
    """Messages per second between the 10th and 90th percent of n, for one side."""
    (t0, _), (t1, _) = measure(kind, side, n, tmp, state)
    return (n * 9 // 10 - n // 10) / (t1 - t0)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    kinds = os.environ.get("BENCH_BROKERS", "redis,rabbitmq").split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        state = redis.Redis.from_url(REDIS_URL)
        for kind in kinds:
            rates: dict[str, list[float]] = {side: [] for side in SIDES}
            for r in range(rounds):
                order = SIDES[r % 3:] + SIDES[:r % 3]
                for side in order if r % 2 == 0 else reversed(order):
                    rates[side].append(run(kind, side, n, Path(tmpdir), state))
            ratio = {side: statistics.median(a / b for a, b in zip(rates[side], rates["off"], strict=True))
                     for side in SIDES}
            rows.append((kind, rates, ratio))
        state.close()
    work = os.environ.get("BENCH_WORK_MS", "0")
    print(f"`dramatiq bench.latency_worker` (atelier's actors), default options ({os.cpu_count()} processes x 8 "
          f"threads), {n} messages per run, {rounds} rounds, dedup off, {work} ms of CPU work per message; "
          "rate between the 10th and 90th percent")
    print(f"{'broker':<9} {'jobs off msg/s':>15} {'jobs on msg/s':>14} {'ratio':>6} {'control':>8}   "
          "runs (off / on / control)")
    for kind, rates, ratio in rows:
        runs = "  ".join(f"{a:.0f}/{b:.0f}/{c:.0f}"
                         for a, b, c in zip(rates["off"], rates["on"], rates["control"], strict=True))
        print(f"{kind:<9} {statistics.median(rates['off']):15.0f} {statistics.median(rates['on']):14.0f} "
              f"{ratio['on']:6.2f} {ratio['control']:8.2f}   {runs}")
    print("msg/s: median over rounds; ratio, control: median over rounds of the side over jobs off in the same round")


if __name__ == "__main__":
    main()
