"""The fault suite's test actor and its producer.

Worker: ``dramatiq actors tests.fault.fault_actors`` (atelier's actors, broker and middleware stack,
plus ``effect``). Producers: ``python -m tests.fault.fault_actors send OUT COUNT [options]`` (effect
messages) and ``... chat OUT COUNT [options]`` (chat messages, recorded as a producer records them).

``effect(key)`` is a handler written as the project asks handlers to be: idempotent. In one
PostgreSQL transaction (FAULT_EFFECTS_DSN) it inserts the effect, a row keyed by ``key`` (INSERT
... ON CONFLICT DO NOTHING, so the row exists once whatever runs it again), and a row in
``fault_runs`` for the execution (message id, process id, time): a key with two runs is an effect
that a handler without that guard would have applied twice. A run killed before its commit leaves
neither. The actor carries a dedup key (the key), as atelier's own actors and the outbox do.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import dramatiq
import psycopg
from dramatiq.middleware import CurrentMessage

from actors import settings
from bootstrap.broker import queue

QUEUE = "fault"
WORK_S = float(os.environ.get("FAULT_EFFECT_WORK_MS", "0")) / 1000
_local = threading.local()

SCHEMA = """
CREATE TABLE IF NOT EXISTS fault_effects (
    key text PRIMARY KEY, message_id text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS fault_runs (
    id bigserial PRIMARY KEY, key text NOT NULL, message_id text NOT NULL, pid integer NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
"""


def _connection() -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(os.environ["FAULT_EFFECTS_DSN"], connect_timeout=5)
    return conn


@dramatiq.actor(queue_name=queue(settings, QUEUE), dedup_key=lambda key: f"fault:{key}", dedup_window=3600,
                max_retries=50, min_backoff=100, max_backoff=1000)
def effect(key: str) -> None:
    if WORK_S:
        time.sleep(WORK_S)  # the work before the effect: messages are in flight when a fault comes
    message = CurrentMessage.get_current_message()
    message_id = message.message_id if message is not None else "?"
    conn = _connection()
    try:
        with conn.transaction():
            conn.execute("INSERT INTO fault_effects (key, message_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                         (key, message_id))
            conn.execute("INSERT INTO fault_runs (key, message_id, pid) VALUES (%s, %s, %s)",
                         (key, message_id, os.getpid()))
    except psycopg.OperationalError:
        conn.close()  # a new connection next time; the message is retried
        raise


def send(out: str, count: int, *, rate: float = 0.0, prefix: str = "k", deadline_s: float = 120.0,
         duplicate_every: int = 0, delay_ms: int | None = None) -> dict[str, int]:
    """Send ``count`` keys; append ``key message_id`` to ``out`` for each send that returned
    (the producer saw it succeed). A send that raised is tried again (a new message, same key) until
    it returns or the deadline passes: what a producer does during a broker outage. With
    ``duplicate_every`` K, every K-th key is sent a second time right away (a duplicate the dedup
    key should absorb). ``rate`` (messages a second, 0 = as fast as it goes) spreads the load;
    ``delay_ms`` sends each with that delay (a worker holds it, fetched, until it is due)."""
    import actors

    started = time.monotonic()
    failures = duplicates = 0
    with open(out, "a", buffering=1) as sent:
        for i in range(count):
            if rate:
                time.sleep(max(0.0, started + i / rate - time.monotonic()))
            key = f"{prefix}{i}"
            copies = 2 if duplicate_every and i % duplicate_every == 0 else 1
            for _ in range(copies):
                while True:
                    try:
                        message = effect.send_with_options(args=(key,), delay=delay_ms)
                    except Exception as exc:  # broker down: the producer did not see it succeed
                        failures += 1
                        if failures == 1 or failures % 50 == 0:
                            print(f"send {key} failed ({failures} so far): {type(exc).__name__}: {exc}",
                                  file=sys.stderr, flush=True)
                        if time.monotonic() - started > deadline_s:
                            raise SystemExit(f"gave up at {key} after {failures} failed sends") from exc
                        time.sleep(0.1)
                        continue
                    sent.write(f"{key} {message.message_id}\n")
                    break
            duplicates += copies - 1
    actors.broker.close()
    return {"sent": count + duplicates, "keys": count, "duplicates": duplicates, "failed_sends": failures}


def chat(out: str, count: int, *, rate: float = 0.0, every_all: int = 0, deadline_s: float = 120.0) -> dict[str, int]:
    """Record ``count`` chat messages through MessagingService.create (the message and its
    message.created event in one transaction: the outbox relay routes it). A create that raised
    (the database down) is tried again with the same id (create is idempotent on it) until it
    commits or the deadline passes; ``id channel time`` is appended to ``out`` once it committed.
    Every ``every_all``-th message goes to both channels ("all"), the others to WhatsApp."""
    import uuid

    import actors  # noqa: F401 - the broker and settings, as a producer has them
    from bootstrap import get_container

    service = get_container().messaging
    started = time.monotonic()
    failures = 0
    with open(out, "a", buffering=1) as created:
        for i in range(count):
            if rate:
                time.sleep(max(0.0, started + i / rate - time.monotonic()))
            message_id = str(uuid.uuid4())
            channel = "all" if every_all and i % every_all == 0 else "whatsapp"
            while True:
                try:
                    service.create(channel=channel, recipient=f"+1555{i:07d}", text=f"fault {i}",
                                   message_id=message_id)
                except Exception as exc:
                    failures += 1
                    if failures == 1 or failures % 20 == 0:
                        print(f"create {i} failed ({failures} so far): {type(exc).__name__}: {exc}"[:300],
                              file=sys.stderr, flush=True)
                    if time.monotonic() - started > deadline_s:
                        raise SystemExit(f"gave up at message {i} after {failures} failed creates") from exc
                    time.sleep(0.2)
                    continue
                created.write(f"{message_id} {channel} {time.time():.3f}\n")
                break
    get_container().close()
    return {"created": count, "failed_creates": failures}


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.fault.fault_actors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("send")
    p.add_argument("out")
    p.add_argument("count", type=int)
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--prefix", default="k")
    p.add_argument("--deadline", type=float, default=120.0)
    p.add_argument("--duplicate-every", type=int, default=0)
    p.add_argument("--delay-ms", type=int, default=None)
    c = sub.add_parser("chat")
    c.add_argument("out")
    c.add_argument("count", type=int)
    c.add_argument("--rate", type=float, default=0.0)
    c.add_argument("--every-all", type=int, default=0)
    c.add_argument("--deadline", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.command == "chat":
        result = chat(args.out, args.count, rate=args.rate, every_all=args.every_all, deadline_s=args.deadline)
    else:
        result = send(args.out, args.count, rate=args.rate, prefix=args.prefix, deadline_s=args.deadline,
                      duplicate_every=args.duplicate_every, delay_ms=args.delay_ms)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
