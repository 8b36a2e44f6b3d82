"""Enqueue a batch of messages in as few round trips as the broker allows.

On a Redis broker the whole batch goes in one MULTI/EXEC transaction: per queue one HSET of the
message bodies and one RPUSH of their ids (what RedisBroker.enqueue's Lua script does for one
message: it depends on that layout, which is Dramatiq's own), with the same before/after enqueue
middleware hooks, and one PUBLISH per queue that wakes atelier's idle consumers
(brokers/redis_wakeups.py); one round trip for the batch instead of one per message, and all of it
or none of it lands. Other brokers enqueue message by message (RabbitMQ with publisher confirms).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import uuid4

import dramatiq
import redis
from dramatiq import Broker, Message
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from brokers.redis_wakeups import wake_channel

#: What a broker raises when it cannot be reached (not a fault of one message).
BROKER_OUTAGE = (redis.ConnectionError, redis.TimeoutError, dramatiq.errors.ConnectionError, ConnectionError,
                 OSError)


def reachable(broker: Broker) -> bool:
    """Whether the broker answers now (Redis: PING; RabbitMQ: a connection and channel opened
    afresh). Tells an outage from an error the broker raised for one message while up."""
    try:
        if isinstance(broker, RedisBroker):
            return bool(broker.client.ping())
        if isinstance(broker, RabbitmqBroker):
            return bool(broker.channel.is_open)  # Dramatiq drops a failed connection; this opens one
        return True
    except Exception:
        return False


def enqueue_batch(broker: Broker, messages: Sequence[Message[Any]]) -> list[str | None]:
    """Enqueue every message; return, per message in order, None or the error that refused it.
    Raises BROKER_OUTAGE errors: then nothing (Redis) or the messages before it (others) went out."""
    if isinstance(broker, RedisBroker):
        return _enqueue_redis(broker, messages)
    return _enqueue_each(broker, messages)


def _enqueue_each(broker: Broker, messages: Sequence[Message[Any]]) -> list[str | None]:
    errors: list[str | None] = []
    for message in messages:
        try:
            broker.enqueue(message)
            errors.append(None)
        except BROKER_OUTAGE:
            raise
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return errors


def _enqueue_redis(broker: RedisBroker, messages: Sequence[Message[Any]]) -> list[str | None]:
    """The whole batch in one MULTI/EXEC: per queue, one HSET of the message bodies and one RPUSH
    of their ids, the layout RedisBroker's enqueue script writes one message at a time."""
    errors: list[str | None] = []
    ready: list[Message[Any]] = []
    for message in messages:
        # As RedisBroker.enqueue: a fresh Redis-side id per enqueue.
        message = message.copy(options={"redis_message_id": str(uuid4())})
        try:
            broker.emit_before("enqueue", message, None)
        except Exception as exc:  # a middleware refused this message
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        ready.append(message)
        errors.append(None)
    if not ready:
        return errors
    by_queue: dict[str, list[Message[Any]]] = {}
    for message in ready:
        by_queue.setdefault(message.queue_name, []).append(message)
    pipe = broker.client.pipeline(transaction=True)
    for queue_name, group in by_queue.items():
        key = f"{broker.namespace}:{queue_name}"
        pipe.hset(f"{key}.msgs", mapping={m.options["redis_message_id"]: m.encode() for m in group})
        pipe.rpush(key, *(m.options["redis_message_id"] for m in group))
        # Idle consumers of atelier's broker wait for a wake-up instead of polling
        # (brokers/redis_wakeups.py); once per queue per batch, whether or not it was empty.
        pipe.publish(wake_channel(broker.namespace, queue_name), b"")
    pipe.execute()
    for message in ready:
        broker.emit_after("enqueue", message, None)
    return errors
