"""Outbox relay benchmark: PostgreSQL -> Redis broker, atelier's relay against a naive one.

    python bench/outbox.py [--events 20000] [--naive-events 2000] [--latency-events 400] [--poll-events 40]

Throughput: N events are committed up front, then relayed to one subscriber actor on a real
RedisBroker, by
  - naive:   per event: BEGIN; SELECT one due row FOR UPDATE SKIP LOCKED; actor.send_with_options;
             UPDATE published_at; COMMIT.
  - atelier: OutboxRelay (batches of OUTBOX_BATCH_SIZE, one transaction per batch, one Redis
             pipeline per batch) with the Redis pub/sub announcement on top.
Latency (commit -> enqueue): the relay loop runs in its own process; this process commits one
event at a time and BLPOPs the subscriber's Redis queue list, where the broker's enqueue script
RPUSHes the message id: the time from COMMIT returning to the id arriving. Once with the loop
woken by LISTEN/NOTIFY (atelier), once polling only every OUTBOX_POLL_INTERVAL_MS (baseline).

Needs PostgreSQL and Redis (BENCH_PG_ADMIN_URL, BENCH_REDIS_URL; defaults on 127.0.0.1). Uses a
database and queue prefix of its own and removes them at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dramatiq  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402
from sqlalchemy import false, insert, select, update  # noqa: E402

import middleware  # noqa: E402
from adapters.outbox_publisher import DramatiqPublisher  # noqa: E402
from adapters.sql import tables as t  # noqa: E402
from adapters.sql.engine import make_engine  # noqa: E402
from adapters.sql.migrate import upgrade  # noqa: E402
from adapters.sql.uow import uow_factory  # noqa: E402
from domain.models import DomainEvent, new_id, utcnow  # noqa: E402
from domain.services.outbox import OutboxRelay, Route  # noqa: E402
from entrypoints.relay_loop import RelayLoop  # noqa: E402

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ROUTES = [Route("bench.*", "bench_subscriber")]


def make_broker(prefix: str) -> RedisBroker:
    broker = RedisBroker(url=REDIS_URL, middleware=middleware.build_stack())
    dramatiq.actor(lambda event: None, broker=broker, actor_name="bench_subscriber", queue_name=f"{prefix}bench")
    return broker


def make_relay(db: str, prefix: str, batch_size: int) -> tuple[OutboxRelay, RedisBroker]:
    broker = make_broker(prefix)
    publisher = DramatiqPublisher(broker, redis.Redis.from_url(REDIS_URL), channel=f"{prefix}atelier.events")
    return OutboxRelay(uow_factory(make_engine(db)), publisher, ROUTES, batch_size=batch_size), broker


def insert_events(engine, n: int) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    rows = [{"id": new_id(), "type": "bench.created", "aggregate_type": "bench", "aggregate_id": str(i),
             "payload": {"i": i, "text": "x" * 64}, "correlation_id": uuid.uuid4().hex, "created_at": now,
             "next_attempt_at": now, "attempts": 0, "dead": False} for i in range(n)]
    with engine.begin() as conn:
        for start in range(0, n, 5000):
            conn.execute(insert(t.outbox_events), rows[start:start + 5000])


def queued(client: redis.Redis, prefix: str) -> int:
    return client.hlen(f"dramatiq:{prefix}bench.msgs")


def purge(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(f"dramatiq:{prefix}*"))
    if keys:
        client.delete(*keys)


def naive_relay(engine, broker: RedisBroker) -> int:  # type: ignore[no-untyped-def]
    """One event per transaction and one broker round trip per event."""
    actor = broker.get_actor("bench_subscriber")
    e = t.outbox_events
    sent = 0
    while True:
        with engine.begin() as conn:
            row = conn.execute(select(e).where(e.c.published_at.is_(None), e.c.dead == false(),
                                               e.c.next_attempt_at <= utcnow())
                               .order_by(e.c.next_attempt_at).limit(1).with_for_update(skip_locked=True)).first()
            if row is None:
                return sent
            event = {"id": row.id, "type": row.type, "aggregate_type": row.aggregate_type,
                     "aggregate_id": row.aggregate_id, "payload": row.payload,
                     "correlation_id": row.correlation_id, "created_at": row.created_at.isoformat()}
            actor.send_with_options(args=(event,), dedup_key=f"{row.id}:bench_subscriber", dedup_window=86400,
                                    correlation_id=row.correlation_id, causation_id=row.id)
            conn.execute(update(e).where(e.c.id == row.id).values(published_at=utcnow()))
            sent += 1


def throughput(db: str, prefix: str, events: int, naive_events: int, batch_size: int) -> dict[str, float]:
    engine = make_engine(db)
    client = redis.Redis.from_url(REDIS_URL)
    out = {}

    insert_events(engine, naive_events)
    broker = make_broker(prefix)
    started = time.perf_counter()
    sent = naive_relay(engine, broker)
    out["naive"] = sent / (time.perf_counter() - started)
    assert sent == naive_events and queued(client, prefix) == naive_events, "naive relay lost events"
    purge(client, prefix)
    broker.close()

    insert_events(engine, events)
    relay, broker = make_relay(db, prefix, batch_size)
    started = time.perf_counter()
    stats = relay.relay(budget_seconds=3600)
    out["atelier"] = stats.published / (time.perf_counter() - started)
    assert stats.published == events and queued(client, prefix) == events, "atelier relay lost events"
    purge(client, prefix)
    broker.close()
    engine.dispose()
    client.close()
    return out


def serve_relay(args: argparse.Namespace) -> int:
    """Child process: the relay loop, until SIGTERM."""
    relay, broker = make_relay(args.db, args.prefix, args.batch_size)
    loop = RelayLoop(relay, args.db, poll_interval=args.poll_ms / 1000, budget=5)
    if args.no_listen:
        loop.dsn = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    loop.run(stop)
    broker.close()
    return 0


def latency(db: str, prefix: str, n: int, *, listen: bool, poll_ms: int) -> list[float]:
    """Commit one event at a time; milliseconds from COMMIT returning to the message id in Redis."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-relay", "--db", db, "--prefix", prefix,
           "--poll-ms", str(poll_ms)] + ([] if listen else ["--no-listen"])
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    time.sleep(1.0)  # let the loop LISTEN and finish its first, empty run
    engine = make_engine(db)
    uow = uow_factory(engine)
    client = redis.Redis.from_url(REDIS_URL)
    queue = f"dramatiq:{prefix}bench"
    samples = []
    rng = random.Random(7)
    try:
        for i in range(n):
            time.sleep(rng.uniform(0, 0.02))  # commits land at varied points of the loop's wait
            with uow() as u:
                u.add_event(DomainEvent("bench.created", "bench", str(i), {"i": i}))
                u.commit()
            committed = time.perf_counter()
            got = client.blpop([queue], timeout=30)
            assert got is not None, "the relay loop did not enqueue within 30 s"
            samples.append((time.perf_counter() - committed) * 1000)
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(30)
        purge(client, prefix)
        client.close()
        engine.dispose()
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--naive-events", type=int, default=2_000)
    parser.add_argument("--latency-events", type=int, default=400)
    parser.add_argument("--poll-events", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--poll-ms", type=int, default=500)
    parser.add_argument("--serve-relay", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-listen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_relay:
        return serve_relay(args)

    name = f"atelier_bench_{uuid.uuid4().hex[:8]}"
    prefix = f"bench{uuid.uuid4().hex[:8]}_"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        upgrade(db)
        print(f"outbox relay, PostgreSQL -> Redis broker, 1 subscriber, batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs")
        rates = throughput(db, prefix, args.events, args.naive_events, args.batch_size)
        print(f"throughput  naive   ({args.naive_events:>6} events): {rates['naive']:>9.0f} events/s")
        print(f"throughput  atelier ({args.events:>6} events): {rates['atelier']:>9.0f} events/s")
        print(f"throughput  ratio atelier/naive: {rates['atelier'] / rates['naive']:.1f}x")
        listen = latency(db, prefix, args.latency_events, listen=True, poll_ms=args.poll_ms)
        poll = latency(db, prefix, args.poll_events, listen=False, poll_ms=args.poll_ms)
        for label, s in ((f"LISTEN/NOTIFY ({len(listen)} commits)", listen),
                         (f"poll {args.poll_ms} ms only ({len(poll)} commits)", poll)):
            print(f"latency commit->enqueue, {label}: median {statistics.median(s):.1f} ms, "
                  f"p99 {pct(s, 0.99):.1f} ms, max {max(s):.1f} ms")
        print(f"latency median ratio poll/LISTEN: {statistics.median(poll) / statistics.median(listen):.0f}x")
        print(json.dumps({"naive_events_per_s": round(rates["naive"]),
                          "atelier_events_per_s": round(rates["atelier"]),
                          "listen_median_ms": round(statistics.median(listen), 1),
                          "listen_p99_ms": round(pct(listen, 0.99), 1),
                          "poll_median_ms": round(statistics.median(poll), 1)}))
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
