"""Test-only actor for the recovery tests (`dramatiq actors tests.e2e.recovery_actors`).

``hold(key)`` records that it started (with its process id), waits while the Redis flag
``{NS}:hold`` is set, then records that it finished. Producers send with
`python -m tests.e2e.recovery_actors KEY...`. State lives in TEST_STATE_REDIS_URL under TEST_STATE_NS.
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
QUEUE = queue(settings, "recovery")


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=600_000)
def hold(key: str) -> None:
    state.rpush(f"{NS}:started", f"{key}:{os.getpid()}")
    while state.exists(f"{NS}:hold"):
        time.sleep(0.05)
    state.rpush(f"{NS}:done", key)


def main(argv: list[str]) -> int:
    import actors

    for key in argv:
        hold.send(key)
    actors.broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
