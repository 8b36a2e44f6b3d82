"""Test-only actors for the middleware end-to-end tests (`dramatiq actors tests.e2e.resilience_actors`).

Producers send with `python -m tests.e2e.resilience_actors COMMAND ...`. Actors record what
happened in Redis (TEST_STATE_REDIS_URL) under TEST_STATE_NS; the guarded one calls the HTTP
server at TEST_HTTP_URL (a server in the test process on 127.0.0.1).
"""

from __future__ import annotations

import os
import sys
import time

import dramatiq
import httpx
import redis
import structlog

from actors import settings
from bootstrap.broker import queue
from domain.errors import InvalidPayload, TransientError
from runtime import current_correlation_id

state = redis.Redis.from_url(os.environ["TEST_STATE_REDIS_URL"])
NS = os.environ["TEST_STATE_NS"]
log = structlog.get_logger("resilience_actors")
Q = queue(settings, "resilience")


@dramatiq.actor(queue_name=Q)
def chain_first(n: int) -> None:
    log.info("chain step", step="first", n=n)
    chain_second.send(n)


@dramatiq.actor(queue_name=Q)
def chain_second(n: int) -> None:
    log.info("chain step", step="second", n=n)
    state.rpush(f"{NS}:chain", n)


@dramatiq.actor(queue_name=Q, dedup_key=lambda order: f"order:{order}", dedup_window=300)
def effect(order: str) -> None:
    state.hincrby(f"{NS}:effects", order, 1)


@dramatiq.actor(queue_name=Q, circuit="http:test", circuit_failure_threshold=3, circuit_window=30,
                circuit_reset_timeout=2, circuit_half_open_trials=1, max_retries=50, min_backoff=100,
                max_backoff=500)
def guarded_call(n: int) -> None:
    try:
        response = httpx.post(f"{os.environ['TEST_HTTP_URL']}/call/{n}", timeout=5)
    except httpx.TransportError as exc:
        raise TransientError(f"unreachable: {exc}") from exc
    if response.status_code >= 500:
        raise TransientError(f"server said {response.status_code}")
    state.hincrby(f"{NS}:guarded", str(n), 1)


@dramatiq.actor(queue_name=Q, circuit=lambda n: "http:fallback", circuit_fallback=True,
                circuit_failure_threshold=3, circuit_reset_timeout=1, max_retries=50, min_backoff=100,
                max_backoff=500)
def guarded_fallback(n: int) -> None:
    response = httpx.post(f"{os.environ['TEST_HTTP_URL']}/call/{n}", timeout=5)
    if response.status_code >= 500:
        raise TransientError(f"server said {response.status_code}")
    state.hincrby(f"{NS}:fallback_done", str(n), 1)


# Backoffs of seconds: RabbitMQ workers release delayed messages on a ~1 s tick, which would
# blur shorter ones.
@dramatiq.actor(queue_name=Q, max_retries=3, min_backoff=2000, max_backoff=10_000)
def poison(n: int) -> None:
    state.rpush(f"{NS}:poison:{n}", time.time())
    if not state.get(f"{NS}:healed"):
        raise TransientError(f"poison {n} still failing")
    state.rpush(f"{NS}:poison_ok", current_correlation_id())


@dramatiq.actor(queue_name=Q, max_retries=5, min_backoff=100)
def refuse(n: int) -> None:
    state.incr(f"{NS}:refused")
    raise InvalidPayload(f"refuse {n}: never valid")


def main(argv: list[str]) -> int:
    import actors
    from middleware import correlation_scope

    command, *rest = argv
    if command == "chain":
        with correlation_scope(rest[0]):
            chain_first.send(1)
    elif command == "effect":
        order, times = rest[0], int(rest[1])
        for _ in range(times):
            effect.send(order)
    elif command == "guarded":
        for n in range(int(rest[0]), int(rest[1])):
            guarded_call.send(n)
    elif command == "guarded_fallback":
        for n in range(int(rest[0]), int(rest[1])):
            guarded_fallback.send(n)
    elif command == "drain":
        actors.fallback.drain_fallback.send()
    elif command == "poison":
        poison.send_with_options(args=(int(rest[0]),), correlation_id=rest[1])
    elif command == "refuse":
        refuse.send(int(rest[0]))
    else:
        raise SystemExit(f"unknown command {command!r}")
    actors.broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
