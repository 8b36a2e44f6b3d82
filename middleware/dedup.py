"""Dedup windows: a message whose key completed within the window is skipped, not run again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from dramatiq import Broker, Message, Worker
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware, SkipMessage

from brokers.park import park
from domain.ports import DedupStore, MetricsStore
from domain.resilience import DedupOutcome

#: Counter of skipped duplicates, labels (queue_name, actor_name, reason: done | busy).
DEDUP_SKIPS = "atelier_dedup_skips_total"
DEFAULT_TIME_LIMIT_MS = 600_000  # dramatiq's TimeLimit default
STORE_DOWN_DELAY_MS = 5_000
COMPLETION_BATCH_S = 0.005
#: A lease taken at fetch is used when the message starts within this many seconds; later, it is
#: taken again (extended), so the lease still outlasts the actor's time limit. Under the minute
#: a lease has beyond the time limit.
FETCHED_LEASE_MAX_AGE_S = 30.0
#: After the store failed at fetch, keys are taken at start only, for this long.
FETCH_PAUSE_AFTER_FAILURE_S = 5.0


class Dedup(Middleware):
    """Runs each dedup key once per window, decided when the message is about to run (not at
    enqueue: Dramatiq enqueues a message again for every retry and when a delayed message moves
    to its queue).

    A message has a key when it carries the ``dedup_key`` option (producers: the outbox relay,
    the scheduler, send_with_options) or its actor declares ``dedup_key``, a callable of the
    message's arguments returning the key (or None: no dedup for this one). ``dedup_window`` is
    seconds (message option first, then actor option, then ``default_window``). Keys are per
    actor: the same key on two actors means two things.

    Before running, the key is acquired in the store: ``running`` (held under the message id,
    with a lease of the actor's time limit plus a minute, so a worker that dies holding it does
    not block the key forever), ``done`` for the window after success. A key that is done, or
    held by another message (a concurrent duplicate), makes the message skipped (logged,
    counted). A failure releases the key, so retries run; a redelivery of the same message
    (crash, shutdown) finds its own lease and runs.

    With atelier's brokers, the keys of what one fetch brought are taken in one round trip when
    the consumer hands the batch over (``after_fetch``), for messages about to go to the worker's
    queue and sure to reach this hook (not delayed ones, dead-letter carriers, or messages with a
    max_age, which could expire while they wait): the key is then held while the message waits
    there (at most FETCHED_LEASE_MAX_AGE_S, else it is taken again at start). Only a free key is
    taken early; a key that is done or held, by another message or by an earlier delivery of this
    one, is decided when the message is about to run, as without batches. A message skipped before
    it ran releases the key it took. If the store fails at fetch, keys are taken at start only
    for FETCH_PAUSE_AFTER_FAILURE_S (the consumer thread that waits on it also sends the acks).

    Completions are written by a background thread, those of ~5 ms per round trip (the worker
    thread does not wait for them): until written, the key reads as held, so a duplicate arriving
    in those milliseconds is skipped just the same. Pending completions are written when the worker
    shuts down; if the store is down they are kept and retried.

    Parameters:
      store: callable returning the DedupStore, resolved on first use.
      default_window: seconds, when neither message nor actor says.
      metrics: optional callable returning the MetricsStore that counts skips.
      background_completion: False writes each completion before the message is acknowledged.
    """

    def __init__(self, store: Callable[[], DedupStore], *, default_window: float = 86_400,
                 metrics: Callable[[], MetricsStore] | None = None, background_completion: bool = True) -> None:
        self.logger = get_logger(__name__, type(self))
        self._store_factory = store
        self._store: DedupStore | None = None
        self._metrics_factory = metrics
        self.default_window = default_window
        # Per delivery (the object the worker passes to every hook), not per message id: the same
        # message can be delivered twice at once (a RabbitMQ redelivery after a dropped connection).
        self._held: dict[int, tuple[str, str, float]] = {}  # id(delivery) -> (message id, key, window)
        self._running_ids: set[str] = set()  # message ids a delivery in this process holds
        self._running_lock = threading.Lock()
        self.background_completion = background_completion
        self._completions: list[tuple[str, str, int]] = []
        self._completing: set[str] = set()  # message ids among _completions
        self._fetch_paused_until = 0.0
        self._wake = threading.Condition()
        self._completer: threading.Thread | None = None
        self._last_warning = 0.0

    @property
    def actor_options(self) -> set[str]:
        return {"dedup_key", "dedup_window"}

    @property
    def store(self) -> DedupStore:
        if self._store is None:
            self._store = self._store_factory()
        return self._store

    def key_of(self, broker: Broker, message: Message) -> tuple[str, float] | None:
        options = message.options
        key: Any = options.get("dedup_key")
        actor_options: dict[str, Any] | None = None
        if key is None:
            actor_options = broker.get_actor(message.actor_name).options
            derive = actor_options.get("dedup_key")
            if derive is None:
                return None
            key = derive(*message.args, **message.kwargs) if callable(derive) else derive
            if key is None:
                return None
        window = options.get("dedup_window")
        if window is None:
            if actor_options is None:
                actor_options = broker.get_actor(message.actor_name).options
            window = actor_options.get("dedup_window", self.default_window)
        # Written into the options (of this delivery, and of its retries and dead letter), so a
        # replay carries the same key even though the actor derived it.
        key = str(key)
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate: Redis cannot take the key, which would read as the store being down
            # and defer the message for ever. Raised from the before-hook, it fails the message.
            raise ValueError(f"dedup key {key!r:.100} is not valid UTF-8") from None
        options.setdefault("dedup_key", key)
        options.setdefault("dedup_window", window)
        return f"{message.actor_name}:{key}", float(window)

    @staticmethod
    def lease_ms(broker: Broker, message: Message) -> int:
        actor_options = broker.get_actor(message.actor_name).options
        time_limit = message.options.get("time_limit", actor_options.get("time_limit", DEFAULT_TIME_LIMIT_MS))
        return int(time_limit) + 60_000

    def after_fetch(self, broker: Broker, messages: list[Message]) -> None:
        """Take the free keys of a fetched batch in one round trip (see the class docstring)."""
        if time.monotonic() < self._fetch_paused_until:
            return
        wanted: list[tuple[Message, str]] = []
        items: list[tuple[str, str, int]] = []
        for message in messages:
            options = message.options
            actor = broker.actors.get(message.actor_name)
            # Only a message that will surely reach our before-hook: a delayed one is enqueued
            # again when due, an unknown actor's never runs here, a dead-letter carrier is skipped
            # before Dedup, and one with a max_age could expire while it waits (AgeLimit skips it
            # before Dedup) after a duplicate elsewhere was skipped because of its key.
            if (actor is None or "eta" in options or "dead_letter" in options or options.get("max_age")
                    or actor.options.get("max_age")):
                continue
            try:
                found = self.key_of(broker, message)
                if found is None:
                    continue
                items.append((found[0], message.message_id, self.lease_ms(broker, message)))
            except Exception:  # e.g. a key callable failing on bad arguments: decided at start
                continue
            wanted.append((message, found[0]))
        if not items:
            return
        try:
            outcomes = self.store.take_free(items)
        except Exception:  # the store is down: decided (and deferred) at start; the consumer
            # thread does not wait on it again for a while, it also sends the acks
            self._fetch_paused_until = time.monotonic() + FETCH_PAUSE_AFTER_FAILURE_S
            return
        now = time.monotonic()
        for (message, key), outcome in zip(wanted, outcomes, strict=True):
            if outcome is DedupOutcome.ACQUIRED:
                message._dedup_lease = (key, now)

    def before_process_message(self, broker: Broker, message: Message) -> None:
        found = self.key_of(broker, message)
        fetched = message.__dict__.pop("_dedup_lease", None)
        if found is None:
            return
        key, window = found
        if fetched is not None and fetched[0] == key and time.monotonic() - fetched[1] < FETCHED_LEASE_MAX_AGE_S:
            outcome = DedupOutcome.ACQUIRED
        else:
            try:  # its own lease, taken at fetch and older: acquire extends it
                outcome = self.store.acquire(key, message.message_id, self.lease_ms(broker, message))
            except Exception:
                self._defer(broker, message, key)
                return
        if outcome is DedupOutcome.ACQUIRED:
            with self._running_lock:
                # Its own lease, held by a delivery of the same message still running here: the
                # broker delivered it again (connection dropped). That run decides; this one is
                # skipped rather than run alongside it.
                duplicate = message.message_id in self._running_ids
                # Or one that ran and completed here, its completion not yet written: the key
                # still reads as its own lease.
                completed = not duplicate and message.message_id in self._completing
                if not duplicate and not completed:
                    self._running_ids.add(message.message_id)
                    self._held[id(message)] = (message.message_id, key, window)
            if completed:
                self.logger.info("Skipping message %r: it completed here moments ago (key %r).",
                                 message.message_id, key)
                self._count(message, DedupOutcome.DONE.value)
                raise SkipMessage(f"duplicate of dedup key {key!r} (done)")
            if not duplicate:
                return
            self.logger.warning("Skipping message %r: another delivery of it is still running here (key %r).",
                                message.message_id, key)
            self._count(message, DedupOutcome.BUSY.value)
            raise SkipMessage(f"delivered again while running (dedup key {key!r})")
        self.logger.info("Skipping message %r: dedup key %r is %s.", message.message_id, key,
                         "done within its window" if outcome is DedupOutcome.DONE else "held by a running message")
        self._count(message, outcome.value)
        raise SkipMessage(f"duplicate of dedup key {key!r} ({outcome.value})")

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        if not self._held:  # nothing held in this process: the common case costs no lookup
            return
        held = self._held.pop(id(message), None)  # dict operations are atomic: no lock
        if held is None or held[0] != message.message_id:
            return
        message_id, key, window = held
        try:
            # Noted as completing before it stops counting as running: a redelivery starting in
            # between must see one or the other.
            if exception is None:
                if self.background_completion:
                    self._complete_later(key, message_id, int(window * 1000))
                else:
                    self.store.complete(key, message_id, int(window * 1000))
            else:
                self.store.release(key, message_id)
        finally:
            self._running_ids.discard(message_id)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        # Skipped after we acquired (a breaker parked it), or before our before-hook with the key
        # taken at fetch (expired, a dead-letter carrier): it did not run, so the key is free.
        fetched = message.__dict__.pop("_dedup_lease", None)
        if fetched is not None:
            self.store.release(fetched[0], message.message_id)
        if not self._held:
            return
        held = self._held.pop(id(message), None)  # dict operations are atomic: no lock
        if held is not None and held[0] == message.message_id:
            self._running_ids.discard(held[0])
            self.store.release(held[1], message.message_id)

    def _complete_later(self, key: str, token: str, window_ms: int) -> None:
        with self._wake:
            self._completions.append((key, token, window_ms))
            self._completing.add(token)
            if len(self._completions) == 1:  # the completer may be idle: wake it
                if self._completer is None:
                    self._completer = threading.Thread(target=self._complete_forever, name="dedup-complete",
                                                       daemon=True)
                    self._completer.start()
                self._wake.notify()

    def flush(self) -> None:
        """Write the pending completions now (worker shutdown, tests); keep them if that fails."""
        with self._wake:
            batch, self._completions = self._completions, []
        if not batch:
            return
        try:
            self.store.complete_many(batch)
        except Exception:
            with self._wake:
                self._completions[:0] = batch
            now = time.monotonic()
            if now - self._last_warning >= 60:
                self._last_warning = now
                self.logger.warning("Could not record %d dedup completion(s); will retry.", len(batch),
                                    exc_info=True)
            raise
        with self._wake:
            self._completing.difference_update(token for _key, token, _window in batch)

    def _complete_forever(self) -> None:
        while True:
            with self._wake:
                while not self._completions:
                    self._wake.wait()
            # Gather what completes in the next few milliseconds: one round trip for all of it.
            time.sleep(COMPLETION_BATCH_S)
            try:
                self.flush()
            except Exception:
                time.sleep(1)

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        try:
            self.flush()
        except Exception:  # logged by flush; the leases expire by themselves
            pass

    def _defer(self, broker: Broker, message: Message, key: str) -> None:
        """The store cannot be reached: running could repeat a side effect, so the message goes
        back to its queue for later (same retry count). If even that fails it runs: at least once
        beats lost."""
        try:
            park(broker, message, STORE_DOWN_DELAY_MS)
        except Exception:
            self.logger.error("Dedup store and broker unreachable; running message %r unchecked (key %r).",
                              message.message_id, key, exc_info=True)
            return
        self.logger.error("Dedup store unreachable; message %r put back for %d ms (key %r).",
                          message.message_id, STORE_DOWN_DELAY_MS, key, exc_info=True)
        raise SkipMessage("dedup store unreachable: deferred")

    def _count(self, message: Message, reason: str) -> None:
        if self._metrics_factory is None:
            return
        try:
            self._metrics_factory().add([(DEDUP_SKIPS, (message.queue_name, message.actor_name, reason), 1)])
        except Exception:  # a metric is never worth failing a message
            self.logger.debug("Could not count a dedup skip.", exc_info=True)
