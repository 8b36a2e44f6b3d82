"""The worker side of bench/worker_latency.py: `dramatiq bench.latency_worker`, run by the bench.

BENCH_SIDE=bare: Dramatiq's own broker class (from BROKER_URL) with its default middleware (but
Prometheus, whose HTTP port would clash between runs), consuming the same queues as atelier's
`actors` package (one no-op actor each) and the bench queue. BENCH_SIDE=broker: the same on
atelier's broker class (its consumer, Dramatiq's middleware). BENCH_SIDE=atelier: atelier's
`actors` package as `dramatiq actors` loads it (its broker, its stack, every actor), and the probe.

The probe actor records when it started (``time.time()``) in BENCH_STATE_URL under BENCH_KEY; the
count actor (bench/jobs_workers.py) adds one to BENCH_KEY's counter, after BENCH_WORK_MS of CPU work
(default none).
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis

SIDE = os.environ["BENCH_SIDE"]
PREFIX = os.environ.get("QUEUE_PREFIX", "")
#: The queues atelier's actors package declares (actors/*.py), for bare Dramatiq to consume too.
ATELIER_QUEUES = ("fallback", "media", "embeddings", "messages", "outbox", "uploads")

state = redis.Redis.from_url(os.environ["BENCH_STATE_URL"])
KEY = os.environ["BENCH_KEY"]

if SIDE in ("bare", "broker"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.middleware import default_middleware

    from brokers.dispatch import AtelierRabbitmqBroker, AtelierRedisBroker

    url = os.environ["BROKER_URL"]
    middleware = [m() for m in default_middleware if m.__name__ != "Prometheus"]
    redis_cls, rabbitmq_cls = (RedisBroker, RabbitmqBroker) if SIDE == "bare" else \
        (AtelierRedisBroker, AtelierRabbitmqBroker)
    broker = redis_cls(url=url, middleware=middleware) if url.startswith("redis") else \
        rabbitmq_cls(url=url, middleware=middleware)
    dramatiq.set_broker(broker)
    for name in ATELIER_QUEUES:
        dramatiq.actor(lambda: None, actor_name=f"idle_{name}", queue_name=f"{PREFIX}{name}")
else:
    import actors  # noqa: F401  (atelier's broker, stack and actors, as `dramatiq actors` loads them)


@dramatiq.actor(queue_name=f"{PREFIX}bench", actor_name="bench_probe", max_retries=0)
def probe(i: int) -> None:
    state.rpush(KEY, f"{i} {time.time()!r}")


#: Work the count actor does before its INCR, in ms of the CPU (holding the GIL, as Python work does).
WORK_S = float(os.environ.get("BENCH_WORK_MS", "0")) / 1000


@dramatiq.actor(queue_name=f"{PREFIX}bench", actor_name="bench_count", max_retries=0)
def count(i: int) -> None:
    if WORK_S:
        until = time.thread_time() + WORK_S
        while time.thread_time() < until:
            pass
    state.incr(KEY)
