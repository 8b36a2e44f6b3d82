"""The broker factory: BROKER_URL picks Redis, RabbitMQ or the in-process StubBroker."""

from __future__ import annotations

import dramatiq
from dramatiq import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

import middleware
from adapters.settings import Settings
from domain.ports import MetricsStore
from middleware.shutdown import RequeueUnfinished


def _metrics_store() -> MetricsStore:
    from adapters.bootstrap import get_container

    return get_container().metrics_store


def build_broker(settings: Settings) -> Broker:
    stack = middleware.build_stack(
        max_retries=settings.retry_max_retries,
        min_backoff_ms=settings.retry_min_backoff_ms,
        max_backoff_ms=settings.retry_max_backoff_ms,
        metrics_store=_metrics_store,
    )
    kind = settings.broker_kind
    broker: Broker
    if kind == "redis":
        stack.append(RequeueUnfinished())
        broker = RedisBroker(url=settings.broker_url, middleware=stack)
    elif kind == "rabbitmq":
        # Publisher confirms: send() returns only once RabbitMQ has the message.
        broker = RabbitmqBroker(url=settings.broker_url, confirm_delivery=True, middleware=stack)
    else:
        broker = StubBroker(middleware=stack)
        broker.emit_after("process_boot")
    return broker


def setup_broker(settings: Settings) -> Broker:
    broker = build_broker(settings)
    dramatiq.set_broker(broker)
    return broker


def queue(settings: Settings, name: str) -> str:
    """Queue names carry QUEUE_PREFIX, so test runs and tenants can share one broker."""
    return f"{settings.queue_prefix}{name}"
