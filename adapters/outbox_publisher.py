"""EventPublisher on Dramatiq (enqueue to subscriber actors) and Redis pub/sub (announce).

Announcements go to ``channel`` (default "<QUEUE_PREFIX>atelier.events"), one PUBLISH per relayed
batch whose data is a JSON array of event messages (the dicts subscribers receive).

Every message carries the options of the message contract: ``dedup_key`` = "<event id>:<actor>"
with ``dedup_window``, ``correlation_id`` from the event, and ``causation_id`` = the event id.

An event recorded while a span was active carries that span's W3C trace context: its messages go
in that trace. With a ``tracer_provider`` (tracing on in this process) each message gets a PRODUCER span
``send <actor>``, child of the recorded context and linked to the span current in the relay (a
relay_outbox tick's run), whose context the message carries; without, the recorded context is
passed on as it is. Either way the subscriber's run continues the producer's trace.

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

#: The W3C trace context fields an event's recorded context may put on its messages.
W3C_FIELDS = ("traceparent", "tracestate", "baggage")

def events_channel(queue_prefix: str) -> str:
    """The pub/sub channel published events are announced on."""
    return f"{queue_prefix}atelier.events"


class DramatiqPublisher:
    """Parameters: broker; notifier_client, a Redis client for pub/sub (None: no announcements);
    channel; dedup_window, seconds, sent with each message's dedup_key; tracer_provider, an
    OpenTelemetry TracerProvider for the send spans of traced events (None: tracing is off here,
    recorded contexts are passed on as they are), with messaging_system as their messaging.system."""

    def __init__(self, broker: Broker, notifier_client: redis.Redis | None = None, *,
                 channel: str = "atelier.events", dedup_window: int = 86_400, tracer_provider: Any = None,
                 messaging_system: str = "dramatiq") -> None:
        self.broker = broker
        self.notifier = notifier_client
        self.channel = channel
        self.dedup_window = dedup_window
        self.tracer_provider = tracer_provider
        self.messaging_system = messaging_system

    def _message(self, delivery: Delivery) -> Message[Any]:
        actor = self.broker.get_actor(delivery.actor)
        options: dict[str, Any] = {"dedup_key": delivery.dedup_key, "dedup_window": self.dedup_window,
                                   "causation_id": delivery.event.id}
        if delivery.event.correlation_id:
            options["correlation_id"] = delivery.event.correlation_id
        for key, value in (delivery.event.trace_context or {}).items():
            if key in W3C_FIELDS:  # a send span, if any, replaces them
                options.setdefault(key, value)
        return actor.message_with_options(args=delivery.args, **options)

    def enqueue(self, deliveries: Sequence[Delivery]) -> dict[str, str]:
        failures: dict[str, str] = {}
        owners: list[str] = []  # event id of each built message, in order
        messages: list[Message[Any]] = []
        spans: list[Any] = []  # each message's send span, or None
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
            spans.append(self._send_span(d, message) if self.tracer_provider is not None and d.event.trace_context
                         else None)
        if not messages:
            return failures
        errors: list[str | None] = ["not sent: the broker is unavailable"] * len(messages)
        try:
            try:
                errors = enqueue_batch(self.broker, messages)
            except Exception as exc:
                self._outage_unless_reachable(exc)
                log.warning("outbox publisher: the broker refused the batch but is up (%s: %s); sending its %d "
                            "messages one at a time", type(exc).__name__, exc, len(messages))
                errors = [self._enqueue_alone(m) for m in messages]
        finally:
            for span, error in zip(spans, errors, strict=True):
                if span is not None:
                    _end_send_span(span, error)
        for event_id, error in zip(owners, errors, strict=True):
            if error is not None:
                failures.setdefault(event_id, error)
        return failures

    def _send_span(self, delivery: Delivery, message: Message[Any]) -> Any:
        """A PRODUCER span for this message in the event's trace, linked to the relay's current
        span; its context replaces the recorded one in the message's options. None if it cannot be
        made (a recorded context the propagators choke on): the message keeps the recorded one."""
        try:
            return self._start_send_span(delivery, message)
        except Exception:  # tracing never holds an event back
            log.warning("outbox publisher: no send span for event %s", delivery.event.id, exc_info=True)
            return None

    def _start_send_span(self, delivery: Delivery, message: Message[Any]) -> Any:
        from opentelemetry import propagate, trace

        event = delivery.event
        parent = propagate.extract(event.trace_context or {})
        current = trace.get_current_span().get_span_context()
        links = [trace.Link(current, {"atelier.link": "outbox_relay"})] if current.is_valid else None
        span = trace.get_tracer("atelier.outbox", tracer_provider=self.tracer_provider).start_span(
            f"send {message.actor_name}", context=parent, kind=trace.SpanKind.PRODUCER, links=links,
            attributes={"messaging.system": self.messaging_system, "messaging.operation.type": "send",
                        "messaging.operation.name": "send", "messaging.destination.name": message.queue_name,
                        "messaging.message.id": message.message_id, "dramatiq.actor": message.actor_name,
                        "atelier.outbox.event_id": event.id, "atelier.outbox.event_type": event.type})
        try:
            propagate.inject(message.options, context=trace.set_span_in_context(span, parent))
        except Exception:
            span.end()
            raise
        return span

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


def _end_send_span(span: Any, error: str | None) -> None:
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error[:500]))
    span.end()
