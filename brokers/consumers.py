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

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from queue import Empty
from typing import Any

import pika.exceptions
import redis
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import _RabbitmqConsumer, _RabbitmqMessage
from dramatiq.brokers.redis import _RedisConsumer
from dramatiq.brokers.stub import _StubConsumer, _StubMessageProxy
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed

from brokers.admission import Junk, admit, carrier, decode, letter_for, undecodable_letter
from brokers.redis_errors import redis_outage


def _as_bytes(key: Any) -> bytes:
    """An id as this process's ack set returns it."""
    return key if isinstance(key, bytes) else str(key).encode()


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
                # The server cancelled the consumer, a connection failed: what came before is
                # handed out first, as Dramatiq's would be.
                self._error = exc
                break
            if message is not None:
                batch.append(admit(self.broker, queue_name, message))
        self.broker.emit_after("fetch", batch)
        fetched.extend(batch[1:])
        return first


class MissingBody(Exception):
    """An id in a Redis queue with no body in the queue's hash."""


class AtelierRedisConsumer(FetchBatches, _RedisConsumer):
    """Dramatiq's Redis consumer, emitting "fetch" per fetch, waiting for work instead of polling,
    and reading every body it fetches (brokers/redis_wakeups.py has the design).

    Waiting. When the queue was empty at its last fetch, the consumer waits on an event that the
    broker's wake-up listener sets when an enqueue makes the queue non-empty, with the worker
    timeout as its limit (capped at a third of the heartbeat timeout: each fetch also beats the
    process's heartbeat), and fetches once when the limit passes. When the queue had more than it
    could take, it waits for its room: worker threads settling messages wake it once a quarter of
    its prefetch is free, so it fetches several at a time instead of one per ack. It also returns
    (None) when the eta of a delayed message it handed out passes, so that the consumer thread
    moves that message on time.

    Fetching. The broker's fetch script moves ids into the process's ack set as Dramatiq's does
    and returns each id with its body, so every delivery is acked and nacked under the id it was
    stored under (``redis_message_id`` is set to it, whatever the body said). A body that is not a
    message, or an id without a body, becomes a carrier of an ``undecodable`` dead letter (raw
    bytes, the id, the queue, the decode error): the worker rejects it at once, which removes it
    from the ack set, and the rest of the fetch is handed on. Maintenance (dead workers' ack sets
    back to the queue) rides on fetches, at least every ``broker.maintenance_interval`` ms.

    Orphans. Dramatiq's consumer thread replaces its consumer after an error, and what it held
    then can be left in this process's ack set with nobody holding it: the ids of a fetch whose
    reply the dropped connection lost, the delayed messages it drops on a ConnectionError, one
    whose move to its queue failed, a put-back that failed in ``close``. The heartbeat of the
    process lives on, so maintenance never returns them. The broker keeps the ids its consumers
    hold (fetched, or handed to a worker thread and not settled); a consumer that replaces another
    puts back, before its first fetch, every id of its ack set that nobody holds.
    """

    #: When the queue had more than the consumer could take, it fetches again once this share of
    #: its prefetch is free.
    REFILL_SHARE = 4

    def __init__(self, broker, queue_name, prefetch, timeout) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._init_batches()
        self.message_cache: deque[tuple[Any, Any]] = deque()  # (id, body) fetched, not yet handed out
        self.queued_message_ids: set[str] = set()  # ids handed out and not settled (Dramatiq: message ids)
        self._etas: list[tuple[int, int, Any]] = []  # (eta, n, id) of delayed messages handed out
        self._handed = itertools.count()
        self._raw_ids = broker.raw_ids(queue_name)  # ids that are not UTF-8: their carrier's id -> bytes
        self._refill = max(1, prefetch // self.REFILL_SHARE)
        self._backlog = False  # the last fetch took all it asked for: the queue may hold more
        self._want_room = 0  # while waiting for room: how much frees it (0: not waiting for room)
        self._idle_wait = min(timeout, broker.heartbeat_timeout / 3) / 1000
        self._next_maintenance = 0.0  # the first fetch runs it: a restart recovers dead workers' acks
        self._held = broker.held_ids(queue_name)
        self._delayed = broker.delayed_ids(queue_name)
        self._orphans_possible = broker.consumer_started(queue_name)
        self._wake = threading.Event()
        self._channel = broker.wake_channel(queue_name)
        broker.wakeups.register(self._channel, self._wake)

    def _waiting(self) -> bool:
        return bool(self.message_cache)

    def __next__(self) -> Any:
        message = FetchBatches.__next__(self)
        if message is not None:
            # As admitted (admission may shorten a long delay): the consumer thread holds a
            # delayed message until this eta, and moves it when next() returns after it.
            eta = message.options.get("eta")
            if isinstance(eta, int) and not isinstance(eta, bool):
                rid = message.options.get("redis_message_id")
                heapq.heappush(self._etas, (eta, next(self._handed), rid))
                # The consumer thread holds it in memory, and drops it with this consumer; when it
                # is due, the broker moves it and acks it in one call (AtelierRedisBroker.enqueue).
                self._held.discard(self._redis_key(message))
                self._delayed.add(rid)
        return message

    def _receive(self) -> Any:
        if self.message_cache:
            return self._deliver(*self.message_cache.popleft())
        return self._fetch_or_wait()

    def _fetch_or_wait(self) -> Any:
        deadline = time.monotonic() + self._idle_wait
        fetched = False
        while True:
            self._wake.clear()  # before looking: a wake-up from now on is kept for the wait below
            room = self.prefetch - self.outstanding_message_count
            need = self._refill if self._backlog else 1
            if room >= need:
                fetched = True
                first = self._fetch(room)
                if first is not None:
                    return first
            else:
                self._want_room = need
                if self.prefetch - self.outstanding_message_count >= need:  # freed meanwhile
                    self._want_room = 0
                    continue
            if not self._wait(deadline):
                break
        if not fetched:  # waited for room all along: fetch what fits, or only beat the heartbeat
            return self._fetch(max(0, self.prefetch - self.outstanding_message_count))
        return None

    def _wait(self, deadline: float) -> bool:
        """Wait until woken (True), or until the deadline or a delayed message's eta (False)."""
        try:
            while not self._eta_due():
                wait = min(deadline - time.monotonic(), self._until_eta())
                if wait <= 0:
                    return False
                if self._wake.wait(wait):
                    return True
            return False
        finally:
            self._want_room = 0

    def _fetch(self, count: int) -> Any:
        """Fetch up to ``count`` messages (0: heartbeat and maintenance only); the first, or None."""
        now = time.monotonic()
        maintenance = now >= self._next_maintenance
        if maintenance:
            self._next_maintenance = now + self.broker.maintenance_interval / 1000
        try:
            if self._orphans_possible:
                self._return_orphans()
            pairs = self.broker.fetch(self.queue_name, count, maintenance=maintenance)
        except redis.ConnectionError as e:
            raise ConnectionClosed(e) from None
        if count:
            self._backlog = len(pairs) >= count
        if not pairs:
            return None
        self._held.update(_as_bytes(rid) for rid, _ in pairs)
        self.message_cache.extend(pairs[1:])
        return self._deliver(*pairs[0])

    def _return_orphans(self) -> None:
        """Back to the queue: every id of this process's ack set for it that no consumer holds
        (class docstring, Orphans). The requeue moves only ids still in the ack set, so one acked
        meanwhile stays acked."""
        held = self._held.copy()  # before reading the set: an id settled after it is not in it
        key = f"{self.broker.namespace}:__acks__.{self.broker.broker_id}.{self.queue_name}"
        orphans = [rid for rid in self.broker.client.smembers(key) if rid not in held]
        if orphans:
            self.broker.do_requeue(self.queue_name, *orphans)
            for rid in orphans:
                self._delayed.discard(rid.decode("utf-8", "backslashreplace"))
            self.logger.warning("Returned %d message(s) of %r that this process's ack set held and no consumer "
                                "did (a lost fetch reply or a dropped connection).", len(orphans), self.queue_name)
        self._orphans_possible = False

    def _deliver(self, redis_id: Any, body: Any) -> MessageProxy:
        """The delivery of ``body`` stored under ``redis_id``: its message, acked under that id, or
        a carrier of its dead letter."""
        queue_name = self.queue_name
        try:
            rid: Any = redis_id.decode() if isinstance(redis_id, bytes) else str(redis_id)
        except UnicodeDecodeError as exc:
            # Written by hand: Redis knows it by its raw bytes only, so this consumer acks it under
            # those, found by the carrier's own id (two such ids can read alike); the message
            # carries a readable (JSON-safe) form of them.
            rid = redis_id.decode("utf-8", "backslashreplace")
            letter = undecodable_letter(queue_name, body or b"", rid, exc)
            message = carrier(queue_name, letter, options={"redis_message_id": rid})
            self._raw_ids[message.message_id] = redis_id
        else:
            message = self._message(queue_name, rid, body)
        self.queued_message_ids.add(rid)
        return MessageProxy(message)

    @staticmethod
    def _message(queue_name: str, rid: str, body: Any) -> Message:
        keep = {"redis_message_id": rid}
        if body is None:
            error = MissingBody(f"no body under this id in {queue_name}.msgs")
            return carrier(queue_name, undecodable_letter(queue_name, b"", rid, error), options=keep)
        message = decode(queue_name, body, rid)  # a body that is not a message: a carrier
        options = message.options
        if isinstance(options, dict):
            options["redis_message_id"] = rid  # acked under the id it was stored under
            return message
        junk = Junk("invalid_options", f"options must be an object, not {type(options).__name__}")
        return carrier(queue_name, letter_for(queue_name, message, junk), options=keep)

    def _eta_due(self) -> bool:
        """Whether a delayed message handed out is due (each eta answers once)."""
        etas = self._etas
        while etas and etas[0][2] not in self.queued_message_ids:
            heapq.heappop(etas)  # moved on already
        if etas and etas[0][0] <= current_millis():
            heapq.heappop(etas)
            return True
        return False

    def _until_eta(self) -> float:
        etas = self._etas
        return (etas[0][0] - current_millis()) / 1000 if etas else float("inf")

    def _settled(self, redis_id: str) -> None:
        self.queued_message_ids.discard(redis_id)
        need = self._want_room
        if need and self.prefetch - self.outstanding_message_count >= need:
            self._wake.set()

    def _key(self, message: Any) -> str | bytes:
        """What Redis knows the delivery of ``message`` by."""
        if self._raw_ids:
            raw = self._raw_ids.get(message.message_id)
            if raw is not None:
                return raw
        return message.options["redis_message_id"]

    def _redis_key(self, message: Any) -> bytes:
        """What Redis knows the delivery by, as its ack set returns it."""
        return _as_bytes(self._key(message))

    def ack(self, message) -> None:
        self._settle(message, self.broker.do_ack)

    def nack(self, message) -> None:
        self._settle(message, self.broker.do_nack)

    def _settle(self, message: Any, command: Callable[[str, Any], Any]) -> None:
        redis_id = message.options["redis_message_id"]
        try:
            command(self.queue_name, self._key(message))
        except redis.RedisError as e:
            if redis_outage(e):
                # Dramatiq tries it again (post_process_message), maybe through a newer consumer:
                # it stays held, under the same key.
                raise ConnectionClosed(e) from None
            raise
        else:
            self._forget(message)
        finally:
            self._settled(redis_id)

    def _forget(self, message: Any) -> None:
        self._held.discard(self._redis_key(message))
        self._delayed.discard(message.options["redis_message_id"])
        if self._raw_ids:
            self._raw_ids.pop(message.message_id, None)

    def requeue(self, messages) -> None:
        messages = list(messages)
        if messages:
            keys = [self._key(message) for message in messages]
            self.logger.debug("Re-enqueueing %r on queue %r.", keys, self.queue_name)
            try:
                self.broker.do_requeue(self.queue_name, *keys)
            except redis.RedisError as e:
                # Left in the ack set for the next consumer to return (Orphans); Dramatiq's consumer
                # thread and Worker.stop take a ConnectionClosed, any other error kills the thread.
                raise ConnectionClosed(e) from None
            finally:
                for message in messages:
                    self._forget(message)

    def close(self) -> None:
        """Stop waiting for wake-ups, and put back what was fetched but never handed to the
        consumer thread (Dramatiq's consumer drops it: it stayed in the ack set until the process
        stopped, when the consumer is replaced after an error)."""
        self.broker.wakeups.unregister(self._channel, self._wake)
        fetched = list(self._fetched)  # admitted, not yet returned
        handed = [m.options["redis_message_id"] for m in fetched]
        undelivered = [self._key(m) for m in fetched] + [rid for rid, _ in self.message_cache]
        self._fetched.clear()
        self.message_cache.clear()
        self._held.difference_update(_as_bytes(k) for k in undelivered)
        for m in fetched:
            self._raw_ids.pop(m.message_id, None)
        if undelivered:
            try:
                self.broker.do_requeue(self.queue_name, *undelivered)
            except redis.RedisError:  # the next consumer of the queue returns them (Orphans)
                self.logger.warning("Could not put back %d fetched message(s) of %r.", len(undelivered),
                                    self.queue_name, exc_info=True)
        for rid in handed:
            self._settled(rid)


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
