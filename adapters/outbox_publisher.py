"""EventPublisher on Dramatiq (enqueue to subscriber actors) and Redis pub/sub (announce).

Announcements go to ``channel`` (default "<QUEUE_PREFIX>atelier.events"), one PUBLISH per relayed
batch whose data is a JSON array of event messages (the dicts subscribers receive).

Every message carries the options of the message contract: ``dedup_key`` = "<event id>:<actor>"
with ``dedup_window``, ``correlation_id`` from the event, and ``causation_id`` = the event id.

A batch goes to the broker through brokers.batch.enqueue_batch: on Redis in one MULTI/EXEC
transaction, elsewhere message by message (RabbitMQ with publisher confirms).

One poisoned message never holds back the batch. A message that cannot be built or encoded fails
its event alone. When the broker refuses the batch as a whole (Redis answers an error for one
command of the transaction; RabbitMQ closes the channel for one message, which Dramatiq reports
as a closed connection, like an outage), the broker is asked whether it is up: if it is not,
that is an outage (TransientError: nothing is charged to the events); if it is, the messages are
sent one at a time, and those it refuses again fail their events alone, while the others go out
(some perhaps a second time: their dedup keys absorb the repeat).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import dramatiq
import redis
from dramatiq import Broker, Message

from brokers.batch import BROKER_OUTAGE, enqueue_batch, reachable
from domain.errors import TransientError
from domain.models import Delivery, OutboxEvent

log = logging.getLogger(__name__)

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
                message = self._message(d)
                message.encode()  # arguments the encoder refuses are this event's fault, found here
            except dramatiq.errors.ActorNotFound:
                failures[d.event.id] = f"no actor named {d.actor!r} is declared"
                continue
            except Exception as exc:
                failures[d.event.id] = f"{type(exc).__name__}: {exc}"
                continue
            messages.append(message)
            owners.append(d.event.id)
        if not messages:
            return failures
        try:
            errors = enqueue_batch(self.broker, messages)
        except Exception as exc:
            self._outage_unless_reachable(exc)
            log.warning("outbox publisher: the broker refused the batch but is up (%s: %s); sending its %d "
                        "messages one at a time", type(exc).__name__, exc, len(messages))
            errors = [self._enqueue_alone(m) for m in messages]
        for event_id, error in zip(owners, errors, strict=True):
            if error is not None:
                failures.setdefault(event_id, error)
        return failures

    def _outage_unless_reachable(self, exc: Exception) -> None:
        if isinstance(exc, BROKER_OUTAGE) and not reachable(self.broker):
            raise TransientError(f"broker unavailable: {exc}") from exc

    def _enqueue_alone(self, message: Message[Any]) -> str | None:
        """None, or why the broker refused this one message (raises TransientError if it went down)."""
        try:
            return enqueue_batch(self.broker, [message])[0]
        except Exception as exc:
            self._outage_unless_reachable(exc)
            return f"refused by the broker: {type(exc).__name__}: {exc}"

    def notify(self, events: Sequence[OutboxEvent]) -> None:
        """One PUBLISH per relayed batch: a JSON array of the events' messages, in claim order."""
        if self.notifier is None or not events:
            return
        self.notifier.publish(self.channel, json.dumps([e.message() for e in events], separators=(",", ":"),
                                                       default=str))
