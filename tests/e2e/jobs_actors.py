"""Test-only actors for the jobs end-to-end test (`dramatiq actors tests.e2e.jobs_actors`).

Producer: `python -m tests.e2e.jobs_actors ACTOR ARG [DELAY_MS]` prints the message id. The actors
count their runs in Redis (TEST_STATE_REDIS_URL) under TEST_STATE_NS.
"""

from __future__ import annotations

import os
import sys
import time

import dramatiq
import redis

from actors import settings
from bootstrap.broker import queue
from domain.errors import InvalidPayload
from runtime.jobs import report_progress

state = redis.Redis.from_url(os.environ["TEST_STATE_REDIS_URL"])
NS = os.environ["TEST_STATE_NS"]
Q = queue(settings, "jobs")


@dramatiq.actor(queue_name=Q)
def jobs_ok(tag: str) -> None:
    state.hincrby(f"{NS}:runs", tag, 1)


@dramatiq.actor(queue_name=Q)
def jobs_bad(tag: str) -> None:
    raise InvalidPayload(f"bad {tag}")


@dramatiq.actor(queue_name=Q, max_retries=3)
def jobs_long(tag: str) -> None:
    state.hincrby(f"{NS}:runs", tag, 1)
    for step in range(600):  # a minute at most
        state.hset(f"{NS}:steps", tag, step)
        report_progress(step / 600, f"step {step}")
        time.sleep(0.1)


if __name__ == "__main__":
    actor = {"ok": jobs_ok, "bad": jobs_bad, "long": jobs_long}[sys.argv[1]]
    delay = int(sys.argv[3]) if len(sys.argv) > 3 else None
    print(actor.send_with_options(args=(sys.argv[2],), delay=delay).message_id)
