"""The broker factory: BROKER_URL picks Redis, RabbitMQ or the in-process StubBroker, built with
atelier's middleware stack, whose state ports come from the container."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq import Broker

import middleware
from bootstrap.settings import ConfigError, Settings
from brokers.dispatch import AtelierRabbitmqBroker, AtelierRedisBroker, AtelierStubBroker
from brokers.shutdown import RequeueUnfinished


def _from_container(name: str) -> Callable[[], Any]:
    """The container's port ``name``, looked up when the middleware first needs it (building the
    broker connects to nothing)."""

    def get() -> Any:
        from bootstrap import get_container

        return getattr(get_container(), name)

    return get


def build_broker(settings: Settings) -> Broker:
    if settings.broker_kind == "rabbitmq" and not settings.redis_url:
        # Dedup keys and circuit breakers must be shared by every worker: per-process state would
        # run duplicates and let each process hammer a dead dependency on its own.
        error = ConfigError("configuration error: REDIS_URL: must be set with a RabbitMQ broker "
                            "(dedup windows and circuit breakers keep their state in Redis)")
        print(error.message, file=sys.stderr)
        raise error
    stack = middleware.build_stack(
        max_retries=settings.retry_max_retries,
        min_backoff_ms=settings.retry_min_backoff_ms,
        max_backoff_ms=settings.retry_max_backoff_ms,
        metrics_store=_from_container("metrics_store"),
        dedup_store=_from_container("dedup_store"),
        dedup_default_window=settings.dedup_default_window,
        breaker_store=_from_container("breaker_store"),
        fallback_queue=_from_container("fallback_queue"),
        breaker_policy=settings.breaker_policy,
        dead_letter_store=_from_container("dead_letter_store"),
        letter_fallback=_from_container("letter_fallback"),
    )
    kind = settings.broker_kind
    broker: Broker
    if kind == "redis":
        stack.append(RequeueUnfinished())
        broker = AtelierRedisBroker(url=settings.broker_url, middleware=stack)
    elif kind == "rabbitmq":
        # Publisher confirms: send() returns only once RabbitMQ has the message.
        broker = AtelierRabbitmqBroker(url=settings.broker_url, confirm_delivery=True, middleware=stack)
    else:
        broker = AtelierStubBroker(middleware=stack)
        broker.emit_after("process_boot")
    return broker


def setup_broker(settings: Settings) -> Broker:
    broker = build_broker(settings)
    dramatiq.set_broker(broker)
    return broker


_lock = threading.Lock()
_broker: Broker | None = None


def get_broker() -> Broker:
    """The process's broker: built from the process settings on first use and made Dramatiq's
    global broker, so the actors (declared when ``actors`` is imported) and the adapters that
    enqueue (the outbox publisher, the dead-letter sender) share it. Building it connects to nothing."""
    global _broker
    if _broker is None:
        with _lock:
            if _broker is None:
                from bootstrap.settings import get_settings

                _broker = setup_broker(get_settings())
    return _broker


def queue(settings: Settings, name: str) -> str:
    """Queue names carry QUEUE_PREFIX, so test runs and tenants can share one broker."""
    return f"{settings.queue_prefix}{name}"
