"""RabbitMQ acknowledgements coalesced per wake-up of the consumer thread.

pika's BlockingConnection is not thread-safe, so Dramatiq's worker threads hand each ack (and
nack) to the consumer thread with ``add_callback_threadsafe``: one callback, one byte written to
the connection's wake-up socket and one wake-up of the consumer thread per message. Under load
that is a system call and a GIL hand-off for every message, on the thread that also reads the
deliveries.

Here a worker thread appends the delivery tag to a queue and schedules one drain callback only
when none is pending; the consumer thread sends every tag queued by then. Each tag is still acked
on its own (``multiple=False``: messages finish out of order), only after its message was
processed, and ``close()`` still waits for every scheduled callback, so nothing is acked earlier
or lost compared with Dramatiq's consumer.
"""

from __future__ import annotations

import threading
from collections import deque

import pika.exceptions
from dramatiq.brokers.rabbitmq import _RabbitmqConsumer
from dramatiq.errors import ConnectionClosed


class CoalescedAckConsumer(_RabbitmqConsumer):
    """Dramatiq's RabbitMQ consumer with acks and nacks sent in batches by the consumer thread."""

    def __init__(self, parameters, queue_name, prefetch, timeout) -> None:
        super().__init__(parameters, queue_name, prefetch, timeout)
        self._settle: deque[tuple[int, bool]] = deque()  # (delivery tag, ack?)
        self._scheduled = False
        self._schedule_lock = threading.Lock()

    def ack(self, message) -> None:
        self._settle_later(message, True)

    def nack(self, message) -> None:
        self._settle_later(message, False)

    def _nack(self, tag) -> None:
        # Dramatiq's __next__ rejects an undecodable body through _nack.
        self._queue(tag, False)

    def _settle_later(self, message, ack: bool) -> None:
        try:
            self.known_tags.remove(message._tag)
        except KeyError:
            self.logger.warning("Failed to %s message: not in known tags.", "ack" if ack else "nack")
            return
        self._queue(message._tag, ack)

    def _queue(self, tag: int, ack: bool) -> None:
        self._settle.append((tag, ack))
        with self._schedule_lock:
            if self._scheduled:  # the pending drain sends this one too
                return
            self._scheduled = True
        try:
            self.connection.add_callback_threadsafe(self._drain)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            with self._schedule_lock:
                self._scheduled = False
            raise ConnectionClosed(e) from None

    def _drain(self) -> None:
        """On the consumer thread: send every settlement queued so far."""
        with self._schedule_lock:
            # Cleared before draining: whatever is queued after this point schedules a new drain.
            self._scheduled = False
        settle = self._settle
        while settle:
            tag, ack = settle.popleft()
            if ack:
                self.channel.basic_ack(tag)
            else:
                self.channel.basic_nack(tag, requeue=False)
