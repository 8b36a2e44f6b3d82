"""Hook dispatch through a table: each signal goes only to the middleware that implement it.

Dramatiq's Broker.emit_before/emit_after call ``getattr(middleware, "before_" + signal)`` on every
middleware for every signal, the base class's no-ops included. A message on a worker emits four
signals (before/after process_message, before/after ack), so with atelier's thirteen middleware
that is 52 calls per message of which 22 do something; the rest is pure overhead, paid while
holding the GIL that the consumer thread needs. The table keeps the same order, the same error
handling and the same log line; it is rebuilt whenever the middleware list changes (a Worker adds
its own middleware when it is created).
"""

from __future__ import annotations

import threading
from typing import Any
from uuid import uuid4

import dramatiq.errors
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import current_millis, dq_name
from dramatiq.errors import QueueNotFound
from dramatiq.middleware import Middleware, MiddlewareError

from brokers.consumers import AtelierRabbitmqConsumer, AtelierRedisConsumer, AtelierStubConsumer
from brokers.redis_wakeups import ENQUEUE, FETCH, WakeupListener, wake_channel
from domain.errors import PermanentError, TransientError

Hook = Any  # a bound method

#: A hook that failed with one of these met a dependency that did not answer: worth a retry.
_DEPENDENCY_FAILURES = (TransientError, ConnectionError, TimeoutError, OSError, redis.RedisError,
                        dramatiq.errors.ConnectionError)


class MiddlewareRefused(PermanentError):
    """A middleware could not prepare the message (its before_process_message raised): the
    message cannot run as it is, so it is not retried. Its dead letter's reason is
    ``middleware_error``."""

    reason = "middleware_error"


def hook_failure(middleware: Middleware, exc: Exception) -> Exception:
    """What a message fails with when ``middleware``'s before_process_message raised ``exc``."""
    where = f"{type(middleware).__name__}.before_process_message"
    if isinstance(exc, _DEPENDENCY_FAILURES):
        return TransientError(f"{where} could not reach a dependency: {type(exc).__name__}: {exc}")
    return MiddlewareRefused(f"{where} refused the message: {type(exc).__name__}: {exc}")


def implements(middleware: Middleware, name: str) -> bool:
    """Whether calling ``name`` on this middleware can do anything (it is not the base no-op)."""
    if name in vars(middleware):  # set on the instance
        return True
    own = getattr(type(middleware), name, None)
    if own is None:
        return False
    return own is not getattr(Middleware, name, None)


class HookTable:
    """Mixin for a Dramatiq Broker: emit_before/emit_after through per-signal tables of bound hooks."""

    middleware: list[Middleware]
    logger: Any

    def _hooks(self, prefix: str, signal: str) -> tuple[tuple[Hook, Middleware], ...]:
        # Compared element by element (identity first), so in-place edits of the list count too.
        try:
            source, before, after = self.__dict__["_hook_table"]
        except KeyError:
            source = None
        if source != self.middleware:
            source, before, after = list(self.middleware), {}, {}
            self.__dict__["_hook_table"] = (source, before, after)
        table = before if prefix == "before_" else after
        hooks = table.get(signal)
        if hooks is None:
            name = prefix + signal
            ordered = source if prefix == "before_" else list(reversed(source))
            hooks = tuple((getattr(m, name), m) for m in ordered if implements(m, name))
            table[signal] = hooks
        return hooks

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        for hook, middleware in self._hooks("before_", signal):
            try:
                hook(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception as exc:
                if signal == "process_message":
                    # Dramatiq logs and goes on: the message would run without the protection the
                    # hook gives (a dedup key callable failing on its arguments, say). It fails
                    # instead, through the worker's own path: retried if a dependency failed,
                    # dead-lettered at once otherwise.
                    raise hook_failure(middleware, exc) from exc
                self.logger.critical("Unexpected failure in %s of %r.", "before_" + signal, middleware,
                                     exc_info=True)

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        for hook, middleware in self._hooks("after_", signal):
            try:
                hook(self, *args, **kwargs)
            except Exception:
                self.logger.critical("Unexpected failure in %s of %r.", "after_" + signal, middleware,
                                     exc_info=True)


class AtelierRedisBroker(HookTable, RedisBroker):
    """Dramatiq's RedisBroker with table dispatch of middleware hooks, whose consumers hand each
    fetch to the middleware as one batch and wait for work instead of polling
    (brokers/consumers.py, brokers/redis_wakeups.py). Same keys, same ack sets, same heartbeats
    as Dramatiq's: its workers, Dramatiq's and the dashboard can share a Redis.

    Parameters, besides RedisBroker's:
      maintenance_interval(int): each consumer runs maintenance (a dead worker's unacked messages
        of its queue back to the queue, expired dead letters dropped) with a fetch at least this
        often, in ms; by default a quarter of ``heartbeat_timeout``, at most 5 s. Dramatiq runs
        it on a 0.1 % chance per command, so a quiet deployment could wait many minutes.
    """

    def __init__(self, *, maintenance_interval: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if maintenance_interval is None:
            maintenance_interval = min(5000, max(100, self.heartbeat_timeout // 4))
        self.maintenance_interval = maintenance_interval
        #: Per queue, the ids of this process's ack set that a consumer holds (consumers.py, Orphans),
        #: the ids of its delay queue handed out (held by the consumer thread until due, then moved),
        #: and the ids that are not UTF-8 (their carrier's message id -> their bytes).
        self._held: dict[str, set[bytes]] = {}
        self._delayed: dict[str, set[str]] = {}
        self._raw: dict[str, dict[str, bytes]] = {}
        self._consumed: set[str] = set()
        self._enqueue_script = self.client.register_script(ENQUEUE)
        self._fetch_script = self.client.register_script(FETCH)
        self._wakeups: WakeupListener | None = None
        self._wakeups_lock = threading.Lock()

    @property
    def consumer_class(self) -> type[AtelierRedisConsumer]:
        return AtelierRedisConsumer

    def held_ids(self, queue_name: str) -> set[bytes]:
        """The ids of ``queue_name`` in this process's ack set that its consumers hold, shared by
        a consumer and the one that replaces it (a worker thread acks through the newer one)."""
        return self._held.setdefault(queue_name, set())

    def delayed_ids(self, queue_name: str) -> set[str]:
        """The ids of delay queue ``queue_name`` handed out by this process and not yet settled."""
        return self._delayed.setdefault(queue_name, set())

    def raw_ids(self, queue_name: str) -> dict[str, bytes]:
        """Ids of ``queue_name`` that are not UTF-8, by their carrier's message id: kept until settled,
        whichever consumer settles them (Dramatiq retries a failed ack through a newer one)."""
        return self._raw.setdefault(queue_name, {})

    def consumer_started(self, queue_name: str) -> bool:
        """Note a consumer of ``queue_name`` starting; whether one started before in this process
        (Dramatiq's consumer thread replaces its consumer after an error)."""
        with self._wakeups_lock:
            replaced = queue_name in self._consumed
            self._consumed.add(queue_name)
        return replaced

    def wake_channel(self, queue_name: str) -> str:
        return wake_channel(self.namespace, queue_name)

    @property
    def wakeups(self) -> WakeupListener:
        """This process's wake-up listener (one pub/sub connection), made on first use."""
        if self._wakeups is None:
            with self._wakeups_lock:
                if self._wakeups is None:
                    pool = self.client.connection_pool
                    self._wakeups = WakeupListener(lambda: pool.connection_class(**pool.connection_kwargs))
        return self._wakeups

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        """Dramatiq's enqueue; a delayed message moved to its queue when due (by the consumer
        thread of its delay queue) is moved and acked in one script, so that a reply lost between
        the two can neither run it twice nor leave it in the ack set."""
        queue_name = message.queue_name
        moving = None
        if delay is None:
            rid = message.options.get("redis_message_id")
            delay_queue = dq_name(queue_name)
            if type(rid) is str and rid in self._delayed.get(delay_queue, ()):
                moving = (delay_queue, rid)  # UTF-8: a raw id's delivery is a carrier, with no eta
        message = message.copy(options={"redis_message_id": str(uuid4())})  # what Dramatiq's does from here
        if delay is not None:
            queue_name = dq_name(queue_name)
            message = message.copy(queue_name=queue_name, options={"eta": current_millis() + delay})
        self.logger.debug("Enqueueing message %r on queue %r.", message.message_id, queue_name)
        self.emit_before("enqueue", message, delay)
        self.do_enqueue(queue_name, message.options["redis_message_id"], message.encode(), moving=moving)
        self.emit_after("enqueue", message, delay)
        return message

    def do_enqueue(self, queue_name: str, message_id: str, data: bytes, *,
                   moving: tuple[str, str | bytes] | None = None) -> None:
        """Dramatiq's enqueue (HSET body, RPUSH id), publishing a wake-up when the queue was empty.
        ``moving`` (delay queue, id): the delivery of the delay queue this enqueue moves, acked in
        the same script; if this process no longer holds it (returned to its delay queue), nothing
        is enqueued, since it is moved from there again."""
        args: list[Any] = [queue_name, message_id, data, self.wake_channel(queue_name)]
        if moving is not None:
            delay_queue, rid = moving
            args += [f"{self.namespace}:__acks__.{self.broker_id}.{delay_queue}",
                     f"{self.namespace}:{delay_queue}.msgs", rid]
        self._enqueue_script(keys=[self.namespace], args=args)

    def do_requeue(self, queue_name: str, *message_ids: str) -> Any:
        """Dramatiq's requeue, then a wake-up: what went back is there to take now."""
        result = self._dispatch("requeue")(queue_name, *message_ids)
        if message_ids:
            self.client.publish(self.wake_channel(queue_name), b"")
        return result

    def fetch(self, queue_name: str, count: int, *, maintenance: bool = False) -> list[tuple[bytes, bytes | None]]:
        """Move up to ``count`` ids of ``queue_name`` into this process's ack set, as Dramatiq's
        fetch does; return (id, body) pairs, body None when the queue's hash has none. Beats this
        process's heartbeat; with ``maintenance``, first returns dead workers' unacked messages of
        the queue to it (and, on Dramatiq's chance, forgets dead workers with no ack set left)."""
        # The part that lists keys keeps Dramatiq's chance per command.
        flag = "2" if self._should_do_maintenance("fetch") else "1" if maintenance else "0"
        reply = self._fetch_script(keys=[self.namespace], args=[
            current_millis(), queue_name, self.broker_id, self.heartbeat_timeout, self.dead_message_ttl, flag,
            self._max_unpack_size(), count, self.wake_channel(queue_name)])
        return list(zip(reply[::2], reply[1::2], strict=True))

    def close(self) -> None:
        if self._wakeups is not None:
            self._wakeups.close()
        super().close()


class AtelierRabbitmqBroker(HookTable, RabbitmqBroker):
    """Dramatiq's RabbitmqBroker with table dispatch of middleware hooks; its consumers hand each
    fetch to the middleware as one batch and send acks in batches, each batch settled first
    (brokers/consumers.py)."""

    #: Its consumers emit "settle" with the messages they are about to acknowledge.
    settles_in_batches = True

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> AtelierRabbitmqConsumer:
        self.declare_queue(queue_name, ensure=True)
        return AtelierRabbitmqConsumer(self, self.parameters, queue_name, prefetch, timeout)


class AtelierStubBroker(HookTable, StubBroker):
    """Dramatiq's StubBroker with table dispatch of middleware hooks; its consumers admit each
    delivery as atelier's others do (brokers/admission.py)."""

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 100) -> AtelierStubConsumer:
        try:
            return AtelierStubConsumer(self, queue_name, self.queues[queue_name],
                                       self.dead_letters_by_queue[queue_name], timeout)
        except KeyError:
            raise QueueNotFound(queue_name) from None
