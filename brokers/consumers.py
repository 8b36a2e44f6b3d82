"""atelier's consumers: Dramatiq's, handing each fetch to the middleware as one batch, and on
RabbitMQ with acknowledgements coalesced per wake-up of the consumer thread.

Fetch batches. A consumer returns one message at a time, though a fetch brings several (Redis:
up to the prefetch in one script call; RabbitMQ: whatever pika has buffered). Before returning the
first of them, these consumers emit the signal "fetch" with all of them (hook
``after_fetch(broker, messages)``, called by atelier's brokers on the middleware that implement
it), so a middleware can make one round trip for the batch instead of one per message: Dedup
takes the batch's keys in one pipeline.

Acks. pika's BlockingConnection is not thread-safe, so Dramatiq's worker threads hand each ack (and
nack) to the consumer thread with ``add_callback_threadsafe``: one callback, one byte written to
the connection's wake-up socket and one wake-up of the consumer thread per message. Under load
that is a system call and a GIL hand-off for every message, on the thread that also reads the
deliveries.

Here a worker thread appends the delivery tag to a queue and schedules one drain callback only
when none is pending; the consumer thread sends every tag queued by then. Each tag is still acked
on its own (``multiple=False``: messages finish out of order), only after its message was
processed, and ``close()`` still waits for every scheduled callback, so nothing is acked earlier
or lost compared with Dramatiq's consumer.

Settle. Before a drain sends its acks, the consumer emits the signal "settle" with the messages
about to be acknowledged (hook ``before_settle(broker, messages)``), on the consumer thread: what
must be written before a message is acknowledged (Dedup's done marks) is written there, for the
whole batch in one round trip, instead of each worker thread waiting for its own. A message whose
ack cannot be sent (its channel is gone) is settled at once, on its worker thread. Brokers whose
consumers emit it say so with ``settles_in_batches = True``.
"""

from __future__ import annotations

import threading
from collections import deque
from queue import Empty
from typing import Any

import pika.exceptions
from dramatiq.brokers.rabbitmq import _RabbitmqConsumer, _RabbitmqMessage
from dramatiq.brokers.redis import _RedisConsumer
from dramatiq.brokers.stub import _StubConsumer, _StubMessageProxy
from dramatiq.errors import ConnectionClosed

from brokers.admission import admit, decode


class FetchBatches:
    """Mixin for a Dramatiq consumer: emits "fetch" with every message one fetch brought."""

    broker: Any

    def _init_batches(self) -> None:
        self._fetched: deque[Any] = deque()
        self._error: BaseException | None = None  # raised once what came before it is handed out

    def _waiting(self) -> bool:
        """Whether the next message is already here (no I/O to get it)."""
        raise NotImplementedError

    def _receive(self) -> Any:
        """The next delivery from the underlying consumer, or None."""
        return super().__next__()  # type: ignore[misc]

    def __next__(self) -> Any:
        fetched = self._fetched
        if fetched:
            return fetched.popleft()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        first = self._receive()
        if first is None:
            return None
        queue_name = self.queue_name  # type: ignore[attr-defined]
        batch = [admit(self.broker, queue_name, first)]
        while self._waiting():
            try:
                message = self._receive()
            except BaseException as exc:
                # The server cancelled the consumer, a connection failed, a body did not decode
                # (Redis raises): what came before is handed out first, as Dramatiq's would be.
                self._error = exc
                break
            if message is not None:
                batch.append(admit(self.broker, queue_name, message))
        self.broker.emit_after("fetch", batch)
        fetched.extend(batch[1:])
        return first


class AtelierRedisConsumer(FetchBatches, _RedisConsumer):
    """Dramatiq's Redis consumer, emitting "fetch" per fetch."""

    def __init__(self, broker, queue_name, prefetch, timeout) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._init_batches()

    def _waiting(self) -> bool:
        return bool(self.message_cache)


class AtelierRabbitmqConsumer(FetchBatches, _RabbitmqConsumer):
    """Dramatiq's RabbitMQ consumer, emitting "fetch" for what pika has buffered, with acks and
    nacks sent in batches by the consumer thread."""

    def __init__(self, broker, parameters, queue_name, prefetch, timeout) -> None:
        super().__init__(parameters, queue_name, prefetch, timeout)
        self.broker = broker
        self.queue_name = queue_name  # Dramatiq's RabbitMQ consumer does not keep it
        self._init_batches()
        self._settle: deque[tuple[int, bool, Any]] = deque()  # (delivery tag, ack?, message acked)
        self._scheduled = False
        self._schedule_lock = threading.Lock()

    def _waiting(self) -> bool:
        return self.channel.get_waiting_message_count() > 0

    def __next__(self) -> Any:
        return FetchBatches.__next__(self)

    def _receive(self) -> Any:
        """Dramatiq's __next__, except that an undecodable body becomes a carrier of its dead
        letter (raw bytes, delivery tag, queue, decode error) instead of going to the XQ alone."""
        try:
            method, properties, body = next(self.iterator)
            if method is None:
                return None
        except (AssertionError, pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None
        broker_id = properties.message_id if properties is not None and properties.message_id else None
        message = decode(self.queue_name, body, broker_id or f"amqp-tag-{method.delivery_tag}")
        self.known_tags.add(method.delivery_tag)
        return _RabbitmqMessage(method.redelivered, method.delivery_tag, message)

    def ack(self, message) -> None:
        self._settle_later(message, True)

    def nack(self, message) -> None:
        self._settle_later(message, False)

    def _nack(self, tag) -> None:
        # Dramatiq's __next__ rejects an undecodable body through _nack.
        self._queue(tag, False, None)

    def _settle_later(self, message, ack: bool) -> None:
        try:
            self.known_tags.remove(message._tag)
        except KeyError:
            self.logger.warning("Failed to %s message: not in known tags.", "ack" if ack else "nack")
            if ack:  # its channel is gone (RabbitMQ delivers it again): settled all the same
                self.broker.emit_before("settle", [message])
            return
        self._queue(message._tag, ack, message if ack else None)

    def _queue(self, tag: int, ack: bool, message: Any) -> None:
        self._settle.append((tag, ack, message))
        with self._schedule_lock:
            if self._scheduled:  # the pending drain sends this one too
                return
            self._scheduled = True
        try:
            self.connection.add_callback_threadsafe(self._drain)
        except BaseException as e:
            # Not scheduled after all: the next settlement must try again, or every later ack
            # would wait for a drain that never comes.
            with self._schedule_lock:
                self._scheduled = False
            if isinstance(e, pika.exceptions.AMQPConnectionError | pika.exceptions.AMQPChannelError):
                raise ConnectionClosed(e) from None
            raise

    def _drain(self) -> None:
        """On the consumer thread: settle, then send, every settlement queued so far."""
        with self._schedule_lock:
            # Cleared before draining: whatever is queued after this point schedules a new drain.
            self._scheduled = False
        settle = self._settle
        batch = []
        while settle:
            batch.append(settle.popleft())
        acked = [message for _tag, ack, message in batch if ack and message is not None]
        if acked:
            self.broker.emit_before("settle", acked)
        for tag, ack, _message in batch:
            if ack:
                self.channel.basic_ack(tag)
            else:
                self.channel.basic_nack(tag, requeue=False)


class AtelierStubConsumer(_StubConsumer):
    """Dramatiq's stub consumer, with admission as atelier's others: an undecodable body becomes
    a carrier of its dead letter, every other delivery goes through ``admit``."""

    def __init__(self, broker, queue_name, queue, dead_letters, timeout) -> None:
        super().__init__(queue, dead_letters, timeout)
        self.broker = broker
        self.queue_name = queue_name

    def __next__(self) -> Any:
        try:
            data = self.queue.get(timeout=self.timeout / 1000)
        except Empty:
            return None
        message = decode(self.queue_name, data)
        return admit(self.broker, self.queue_name, _StubMessageProxy(message))
