"""Test-only actors for the ops and shutdown end-to-end tests, kept out of the production package.

Workers load them with `dramatiq actors tests.e2e.ops_actors`; producers send with
`python -m tests.e2e.ops_actors tally N PERMANENT TRANSIENT` or `... slow SECONDS KEY...`.
They record what happened in Redis (TEST_STATE_REDIS_URL) under TEST_STATE_NS.
"""

from __future__ import annotations

import os
import sys
import time

import dramatiq
import redis

from actors import settings
from bootstrap.broker import queue
from domain.errors import PermanentError, TransientError

state = redis.Redis.from_url(os.environ["TEST_STATE_REDIS_URL"])
NS = os.environ["TEST_STATE_NS"]


@dramatiq.actor(queue_name=queue(settings, "ops_test"), max_retries=1, min_backoff=10, max_backoff=50)
def tally(n: int, outcome: str) -> None:
    """Counts one run per process; fails permanently or transiently when asked."""
    state.hincrby(f"{NS}:pids", str(os.getpid()), 1)
    time.sleep(0.1)  # the work: long enough that both workers get a share
    if outcome == "permanent":
        raise PermanentError(f"tally {n}: asked to fail")
    if outcome == "transient":
        raise TransientError(f"tally {n}: asked to fail, retry")


@dramatiq.actor(queue_name=queue(settings, "slow"), max_retries=0, time_limit=600_000)
def slow(key: str, seconds: float) -> None:
    """Takes ``seconds`` on its first run and no time on later ones; records each run and completion."""
    attempt = state.incr(f"{NS}:attempts:{key}")
    state.rpush(f"{NS}:started", f"{key}:{os.getpid()}")
    if attempt == 1:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
    state.rpush(f"{NS}:done", key)


def main(argv: list[str]) -> int:
    import actors

    if argv[0] == "tally":
        count, permanent, transient = (int(a) for a in argv[1:4])
        for n in range(count):
            outcome = "permanent" if n < permanent else "transient" if n < permanent + transient else "ok"
            tally.send(n, outcome)
    elif argv[0] == "slow":
        for key in argv[2:]:
            slow.send(key, float(argv[1]))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")
    actors.broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
