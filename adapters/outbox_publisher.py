"""EventPublisher on Dramatiq (enqueue to subscriber actors) and Redis pub/sub (announce).

Every message carries the options of the message contract: ``dedup_key`` = "<event id>:<actor>"
with ``dedup_window``, ``correlation_id`` from the event, and ``causation_id`` = the event id.

On a Redis broker a batch is enqueued in one pipeline: the same Lua dispatch Dramatiq's
RedisBroker.enqueue runs per message, with the same before/after enqueue hooks, but one round
trip for the whole batch instead of one per message. Other brokers enqueue message by message
(RabbitMQ with publisher confirms).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any
from uuid import uuid4

import dramatiq
import redis
from dramatiq import Broker, Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis

from domain.errors import TransientError
from domain.models import Delivery, OutboxEvent

log = logging.getLogger(__name__)

_OUTAGE = (redis.ConnectionError, redis.TimeoutError, dramatiq.errors.ConnectionError, ConnectionError, OSError)


def events_channel(queue_prefix: str) -> str:
    """The pub/sub channel published events are announced on."""
    return f"{queue_prefix}atelier.events"


class DramatiqPublisher:
    """Parameters: broker; notifier_client, a Redis client for pub/sub (None: no announcements);
    channel; dedup_window, seconds, sent with each message's dedup_key."""

    def __init__(self, broker: Broker, notifier_client: redis.Redis | None = None, *,
                 channel: str = "atelier.events", dedup_window: int = 86_400) -> None:
        self.broker = broker
        self.notifier = notifier_client
        self.channel = channel
        self.dedup_window = dedup_window

    def _message(self, delivery: Delivery) -> Message[Any]:
        actor = self.broker.get_actor(delivery.actor)
        options: dict[str, Any] = {"dedup_key": delivery.dedup_key, "dedup_window": self.dedup_window,
                                   "causation_id": delivery.event.id}
        if delivery.event.correlation_id:
            options["correlation_id"] = delivery.event.correlation_id
        return actor.message_with_options(args=delivery.args, **options)

    def enqueue(self, deliveries: Sequence[Delivery]) -> dict[str, str]:
        failures: dict[str, str] = {}
        owners: list[str] = []  # event id of each built message, in order
        messages: list[Message[Any]] = []
        for d in deliveries:
            try:
                messages.append(self._message(d))
                owners.append(d.event.id)
            except dramatiq.errors.ActorNotFound:
                failures[d.event.id] = f"no actor named {d.actor!r} is declared"
            except Exception as exc:  # e.g. arguments the encoder refuses
                failures[d.event.id] = f"{type(exc).__name__}: {exc}"
        try:
            if isinstance(self.broker, RedisBroker):
                errors = self._enqueue_redis(messages)
            else:
                errors = self._enqueue_each(messages)
        except _OUTAGE as exc:
            raise TransientError(f"broker unavailable: {exc}") from exc
        for event_id, error in zip(owners, errors, strict=True):
            if error is not None:
                failures.setdefault(event_id, error)
        return failures

    def _enqueue_each(self, messages: Sequence[Message[Any]]) -> list[str | None]:
        errors: list[str | None] = []
        for message in messages:
            try:
                self.broker.enqueue(message)
                errors.append(None)
            except _OUTAGE:
                raise
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        return errors

    def _enqueue_redis(self, messages: Sequence[Message[Any]]) -> list[str | None]:
        broker: RedisBroker = self.broker  # type: ignore[assignment]
        if not messages:
            return []
        dispatch = broker.scripts["dispatch"]
        keys = [broker.namespace]
        max_unpack = broker._max_unpack_size()
        pipe = broker.client.pipeline(transaction=False)
        sent = []
        for message in messages:
            # As RedisBroker.enqueue: a fresh Redis-side id per enqueue.
            message = message.copy(options={"redis_message_id": str(uuid4())})
            broker.emit_before("enqueue", message, None)
            dispatch(keys=keys, args=[
                "enqueue", current_millis(), message.queue_name, broker.broker_id, broker.heartbeat_timeout,
                broker.dead_message_ttl, 0, max_unpack, message.options["redis_message_id"], message.encode(),
            ], client=pipe)
            sent.append(message)
        results = pipe.execute(raise_on_error=False)
        errors: list[str | None] = []
        for message, result in zip(sent, results, strict=True):
            if isinstance(result, Exception):
                if isinstance(result, _OUTAGE):
                    raise result
                errors.append(f"{type(result).__name__}: {result}")
            else:
                broker.emit_after("enqueue", message, None)
                errors.append(None)
        return errors

    def notify(self, events: Sequence[OutboxEvent]) -> None:
        if self.notifier is None or not events:
            return
        pipe = self.notifier.pipeline(transaction=False)
        for event in events:
            pipe.publish(self.channel, json.dumps(event.message(), separators=(",", ":"), default=str))
        pipe.execute()

