"""Readiness checks: one named callable per dependency, raising when it is not usable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    """``run`` returns when ``name`` answers and raises (any exception) when it does not.
    It should give up on its own within the check timeout; the ops server stops waiting then."""

    name: str
    run: Callable[[], object]


def redis_check(name: str, url: str, timeout: float) -> Check:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return Check(name, client.ping)


def rabbitmq_check(name: str, url: str, timeout: float) -> Check:
    import pika

    def run() -> None:
        params = pika.URLParameters(url)
        params.connection_attempts = 1
        params.retry_delay = 0
        params.socket_timeout = timeout
        params.blocked_connection_timeout = timeout
        params.stack_timeout = timeout
        pika.BlockingConnection(params).close()

    return Check(name, run)


def broker_check(broker_url: str, timeout: float) -> Check:
    if broker_url.startswith(("redis://", "rediss://")):
        return redis_check("broker", broker_url, timeout)
    if broker_url.startswith(("amqp://", "amqps://")):
        return rabbitmq_check("broker", broker_url, timeout)
    return Check("broker", lambda: None)  # the StubBroker lives in this process


def sql_check(engine) -> Check:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    def run() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1")).scalar_one()

    return Check("database", run)
