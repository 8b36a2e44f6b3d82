"""Test-only actor for the dedup-delivery end-to-end test (`dramatiq actors tests.e2e.dedup_actors`).

``held_effect`` notes each start (the worker process's pid) and, once the test allows it, its one
effect, in Redis (TEST_STATE_REDIS_URL) under TEST_STATE_NS. The producer sends the same message
(same id) with `python -m tests.e2e.dedup_actors send ORDER MESSAGE_ID`.
"""

from __future__ import annotations

import os
import sys
import time

import dramatiq
import redis

from actors import settings
from bootstrap.broker import queue

state = redis.Redis.from_url(os.environ["TEST_STATE_REDIS_URL"])
NS = os.environ["TEST_STATE_NS"]
Q = queue(settings, "dedup")


@dramatiq.actor(queue_name=Q, dedup_key=lambda order: f"order:{order}", dedup_window=300, max_retries=0,
                time_limit=60_000)
def held_effect(order: str) -> None:
    state.rpush(f"{NS}:starts:{order}", os.getpid())
    deadline = time.monotonic() + 45
    while not state.exists(f"{NS}:release:{order}"):  # the test lets it finish
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.02)
    state.hincrby(f"{NS}:effects", order, 1)


def main(argv: list[str]) -> int:
    import actors

    command, order, message_id = argv
    if command != "send":
        raise SystemExit(f"unknown command {command!r}")
    actors.broker.enqueue(held_effect.message(order).copy(message_id=message_id))
    actors.broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
