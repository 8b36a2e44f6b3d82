"""Put a message back on its queue for later, from inside a middleware hook."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from dramatiq import Broker, Message
from dramatiq.common import q_name

from brokers.messages import unwrap

#: Dramatiq holds a delayed message unacked until its eta, and RabbitMQ takes back a delivery left
#: unacked past its consumer_timeout (30 min by default), closing the delay-queue consumer and
#: redelivering everything it held: those would run twice (dramatiq issue 827). A message that
#: must wait longer comes back after this and is parked again.
MAX_DELAY_MS = 15 * 60_000
#: Options of one delivery that must not travel with the message to its next one.
DELIVERY_OPTIONS = ("eta", "redis_message_id")


def fresh_copy(message: Any, **options: Any) -> Message:
    """The message (a Message or a worker's MessageProxy) as a new delivery on its own queue:
    same id, arguments and options, without the last delivery's eta and broker id, plus ``options``."""
    base = unwrap(message)
    kept = {k: v for k, v in base.options.items() if k not in DELIVERY_OPTIONS}
    return dataclasses.replace(base, queue_name=q_name(base.queue_name), options={**kept, **options})


def park(broker: Broker, message: Any, delay_ms: int) -> None:
    """Enqueue the same message (same id, same retry count) on its queue after ``delay_ms``.
    Raises what the broker raises; the caller decides what a failed park means."""
    delay = MAX_DELAY_MS if not math.isfinite(delay_ms) else max(1, min(int(delay_ms), MAX_DELAY_MS))
    broker.enqueue(fresh_copy(message), delay=delay)
