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
from bootstrap.tracing import tracer_provider, tracing_enabled
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
        dedup_lease_ttl=settings.dedup_lease_ttl_s,
        breaker_store=_from_container("breaker_store"),
        fallback_queue=_from_container("fallback_queue"),
        breaker_policy=settings.breaker_policy,
        dead_letter_store=_from_container("dead_letter_store"),
        letter_fallback=_from_container("letter_fallback"),
        job_store=_from_container("job_store") if settings.jobs_enabled else None,
        jobs_flush_interval=settings.jobs_flush_interval_s,
        jobs_heartbeat=settings.jobs_heartbeat_s,
        # Tracing: only once bootstrap.tracing.configure_tracing found it on (actors/__init__.py).
        tracing=tracing_enabled(),
        tracer_provider=tracer_provider(),
        messaging_system=settings.broker_kind,
    )
    kind = settings.broker_kind
    broker: Broker
    if kind == "redis":
        stack.append(RequeueUnfinished())
        broker = AtelierRedisBroker(url=settings.broker_url, middleware=stack,
                                    heartbeat_timeout=settings.broker_heartbeat_timeout_ms)
    elif kind == "rabbitmq":
        # Publisher confirms: send() returns only once RabbitMQ has the message.
        broker = AtelierRabbitmqBroker(url=settings.broker_url, confirm_delivery=True, middleware=stack)
    else:
        broker = AtelierStubBroker(middleware=stack)
        broker.emit_after("process_boot")
    return broker


#: Room kept beside an actor's time limit under RabbitMQ's consumer_timeout: the middleware's hooks
#: before and after the actor (each bounded by its own I/O timeouts), a message's wait for a free
#: worker thread after it was fetched, and the ack's way back to the consumer thread.
CONSUMER_TIMEOUT_MARGIN_MS = 300_000
#: Room beside a delay: Dramatiq's consumer thread holds a delayed message unacked until its eta,
#: then re-enqueues it on its queue and acks it, without waiting for a worker thread.
DELAY_MARGIN_MS = 60_000


def check_consumer_timeout(broker: Broker, settings: Settings) -> None:
    """Raise ConfigError (naming RABBITMQ_CONSUMER_TIMEOUT_S and each actor at fault) unless every
    declared actor's time limit plus CONSUMER_TIMEOUT_MARGIN_MS, and every delay a worker holds a
    message for (retry backoffs, the circuit breaker's and dead letters' parks) plus
    DELAY_MARGIN_MS, fit in RabbitMQ's consumer_timeout. Past it, RabbitMQ closes the channel and
    redelivers everything on it: a long run starts over, and the messages prefetched beside it run
    twice. Call it once every actor is declared."""
    from dramatiq.middleware import Retries, TimeLimit
    from dramatiq.middleware.retries import DEFAULT_MAX_BACKOFF

    from brokers.park import MAX_DELAY_MS
    from middleware.deadletters import WRITE_RETRY_MAX_MS

    timeout_ms = settings.rabbitmq_consumer_timeout_s * 1000
    default_limit = next((m.time_limit for m in broker.middleware if isinstance(m, TimeLimit)), 600_000)
    default_backoff = next((m.max_backoff for m in broker.middleware if isinstance(m, Retries)), DEFAULT_MAX_BACKOFF)
    problems = []
    for name in sorted(broker.get_declared_actors()):
        options = broker.get_actor(name).options
        limit = options.get("time_limit", default_limit)
        if limit + CONSUMER_TIMEOUT_MARGIN_MS > timeout_ms:
            problems.append(f"actor {name}: time_limit {limit / 1000:g} s + {CONSUMER_TIMEOUT_MARGIN_MS // 1000} s")
        backoff = min(options.get("max_backoff", default_backoff), DEFAULT_MAX_BACKOFF)
        if options.get("max_retries", 1) != 0 and backoff + DELAY_MARGIN_MS > timeout_ms:
            problems.append(f"actor {name}: max_backoff {backoff / 1000:g} s + {DELAY_MARGIN_MS // 1000} s")
    parks = max(MAX_DELAY_MS, WRITE_RETRY_MAX_MS)
    if parks + DELAY_MARGIN_MS > timeout_ms:
        problems.append(f"parks (circuit breaker, dead-letter writes) of {parks / 1000:g} s + "
                        f"{DELAY_MARGIN_MS // 1000} s")
    if problems:
        timeout = settings.rabbitmq_consumer_timeout_s
        error = ConfigError(f"configuration error: RABBITMQ_CONSUMER_TIMEOUT_S: {timeout:g} s is shorter than "
                            f"{'; '.join(problems)} (raise RabbitMQ's consumer_timeout and this variable together, "
                            "or shorten those)")
        print(error.message, file=sys.stderr)
        raise error


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
