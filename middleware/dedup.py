"""Dedup windows: a message whose key completed within the window is skipped, not run again."""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dramatiq import Broker, Message, Worker
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware, SkipMessage, TimeLimit

from brokers.park import fresh_copy, park
from domain.ports import DedupStore, MetricsStore
from domain.resilience import (
    RETRY_CLAIM_DEAD,
    RETRY_CLAIM_RUN,
    RETRY_CLAIM_RUN_TTL_MS,
    DedupOutcome,
    lease_holder,
    retry_claim_key,
)

#: Counter of skipped duplicates, labels (queue_name, actor_name, reason: done | busy | redelivery
#: (put back for later) | dead_lettered (a retry whose message was dead-lettered instead)).
DEDUP_SKIPS = "atelier_dedup_skips_total"
DEFAULT_TIME_LIMIT_MS = 600_000  # dramatiq's TimeLimit default
#: A lease is renewed while its delivery runs, up to the actor's time limit plus this: a run the
#: TimeLimit could not stop (stuck in C code) does not hold its key for ever.
LEASE_MARGIN_MS = 60_000
#: Default lease: how long a key stays held after the process holding it died (kill -9).
DEFAULT_LEASE_TTL_S = 30.0
STORE_DOWN_DELAY_MS = 5_000
#: A redelivery waiting for another delivery's lease is put back for this long first, twice as
#: long each time after, never past the end of the lease it waits for (it is looked at again then).
REDELIVERY_FIRST_DELAY_MS = 500
#: A key taken at fetch stays held (renewed) while its message waits in the worker's queue, at
#: most this long; after that it is taken again when the message starts.
FETCHED_WAIT_MAX_S = 600.0
#: After the store failed at fetch, keys are taken at start only, for this long.
FETCH_PAUSE_AFTER_FAILURE_S = 5.0
#: A done mark left for the consumer to write before its ack (RabbitMQ) is written by the lease
#: thread if no consumer did within this long (the connection closed before that drain).
SETTLE_GRACE_S = 1.0
#: A worker thread waits this long for another to write its completion, then writes it itself.
COMMIT_WAIT_S = 5.0
#: A completion the store refused is tried again this often.
COMPLETION_RETRY_S = 1.0
#: Neither the broker (to put a redelivery back) nor a decision: look again after this long.
PUT_BACK_RETRY_S = 1.0


@dataclass(slots=True, eq=False)
class _Lease:
    """A key this process holds for one delivery, renewed by the lease thread."""

    key: str
    holder: str
    confirmed: float  # monotonic time the store last had it as ours
    until: float  # monotonic time after which it is no longer renewed
    running: bool = False  # started (else taken at fetch, its message waiting in the worker's queue)
    window: float = 0.0
    lost: bool = False


class _Completion:
    """A done mark waiting to be written, and the lock its worker thread waits on."""

    __slots__ = ("key", "holder", "window_ms", "at", "lock", "lead")

    def __init__(self, key: str, holder: str, window_ms: int, at: float) -> None:
        self.key, self.holder, self.window_ms, self.at = key, holder, window_ms, at
        self.lock = threading.Lock()
        self.lead = False


class Dedup(Middleware):
    """Runs each dedup key once per window, decided when the message is about to run (not at
    enqueue: Dramatiq enqueues a message again for every retry and when a delayed message moves
    to its queue).

    A message has a key when it carries the ``dedup_key`` option (producers: the outbox relay,
    the scheduler, send_with_options) or its actor declares ``dedup_key``, a callable of the
    message's arguments returning the key (or None: no dedup for this one). ``dedup_window`` is
    seconds (message option first, then actor option, then ``default_window``). Keys are per
    actor: the same key on two actors means two things.

    Leases belong to a delivery, not to a message. Before running, the key is acquired for this
    delivery (``<message id>|<process>.<n>``) with a lease of ``lease_ttl`` seconds that a thread
    of this process renews while the delivery runs, up to the actor's time limit plus a minute; so
    a process that dies holding a key (kill -9) frees it within ``lease_ttl``. Success marks the
    key ``done`` for the window, written before the message is acknowledged; a failure releases
    it, so the retry runs. The key found:

    - done: the message is skipped (acknowledged, counted);
    - held by another message (a concurrent duplicate): skipped;
    - held by another delivery of the same message (the broker delivered it again while the first
      still runs, here or elsewhere, or that delivery's process died and its lease has not ended):
      neither run beside it nor acknowledged as done, but put back on its queue (same id and
      retry count) and decided again later: skipped as done if the first completes, run if the
      first failed or its lease ended. If the broker cannot take it back, the worker thread waits,
      deciding again each second, until one of those happens;
    - the store unreachable: the message is put back for STORE_DOWN_DELAY_MS.

    With atelier's brokers, the free keys of what one fetch brought are taken in one round trip
    when the consumer hands the batch over (``after_fetch``), for messages about to go to the
    worker's queue and sure to reach this hook (not delayed ones, dead-letter carriers, or
    messages with a max_age, which could expire while they wait): the lease is renewed while the
    message waits there (at most FETCHED_WAIT_MAX_S). Anything else is decided at start. A message
    skipped before it ran releases the key it took; so does a worker that stops.

    A completion (the done mark) is written before the acknowledgement: where the broker's
    consumers settle their acks in batches (``settles_in_batches``: atelier's RabbitMQ consumer),
    by the consumer thread just before it sends them (``before_settle``), one round trip per
    batch; elsewhere by the worker thread in ``after_process_message``, threads finishing together
    in one round trip. If the store refuses it, the message is acknowledged all the same (it ran)
    and the completion is tried again every second, for what is left of its window; meanwhile the
    key reads as done in this process.

    A retry whose enqueue raised may still have reached the broker; ClassifiedRetries then
    claims that attempt for the dead letter, and the retry, when it starts, for itself: the
    retry is skipped if the letter claimed it first (``domain.resilience.retry_claim_key``).

    Parameters:
      store: callable returning the DedupStore, resolved on first use.
      default_window: seconds, when neither message nor actor says.
      metrics: optional callable returning the MetricsStore that counts skips.
      lease_ttl: seconds a lease lasts unless renewed.
    """

    def __init__(self, store: Callable[[], DedupStore], *, default_window: float = 86_400,
                 metrics: Callable[[], MetricsStore] | None = None,
                 lease_ttl: float = DEFAULT_LEASE_TTL_S) -> None:
        if not lease_ttl > 0:
            raise ValueError(f"lease_ttl must be positive, not {lease_ttl!r}")
        self.logger = get_logger(__name__, type(self))
        self._store_factory = store
        self._store: DedupStore | None = None
        self._metrics_factory = metrics
        self.default_window = default_window
        self.lease_ttl = float(lease_ttl)
        self._time_limit_ms: int | None = None
        self._pid = 0
        self._process = ""
        self._deliveries = itertools.count(1)
        self._leases: dict[str, _Lease] = {}  # holder -> lease, taken at fetch or running
        self._lock = threading.Condition()  # guards _unrecorded; wakes the lease thread
        self._thread: threading.Thread | None = None
        self._idle = False
        self._stopping = False
        self._fetch_paused_until = 0.0
        # Group commit of completions: the first thread to finish writes what the others queued.
        self._commit = threading.Lock()
        self._pending: list[_Completion] = []
        self._committing = False
        # Done marks a consumer writes before it acknowledges their messages (before_settle).
        self._awaiting: dict[str, _Completion] = {}  # holder -> completion
        # Completions the store refused: key -> (holder, window_ms, monotonic time it completed).
        self._unrecorded: dict[str, tuple[str, int, float]] = {}
        self._last_warning: dict[str, float] = {}

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

    def time_limit_ms(self, broker: Broker, message: Message) -> int:
        """The time limit Dramatiq's TimeLimit gives this message (its rule: the message's option,
        else the actor's, else the middleware's own)."""
        if self._time_limit_ms is None:
            limit = next((m.time_limit for m in broker.middleware if isinstance(m, TimeLimit)), None)
            self._time_limit_ms = int(limit) if limit else DEFAULT_TIME_LIMIT_MS
        limit = message.options.get("time_limit") or broker.get_actor(message.actor_name).options.get(
            "time_limit", self._time_limit_ms)
        try:
            return max(int(limit), 0)
        except (TypeError, ValueError, OverflowError):
            return self._time_limit_ms

    def _lease_ms(self, time_limit_ms: int) -> int:
        return max(1, min(int(self.lease_ttl * 1000), time_limit_ms + LEASE_MARGIN_MS))

    def _holder(self, message_id: str) -> str:
        """A holder for a new delivery: the message, this process (a fresh token after a fork)
        and a counter."""
        pid = os.getpid()
        if pid != self._pid:
            self._pid, self._process = pid, uuid.uuid4().hex[:12]
        try:
            message_id.encode()
        except UnicodeEncodeError:  # a lone surrogate, which no store takes: the same text each time
            message_id = "u8:" + message_id.encode("utf-8", "surrogatepass").hex()
        return lease_holder(message_id, f"{self._process}.{next(self._deliveries)}")

    # --- fetch ---

    def after_fetch(self, broker: Broker, messages: list[Message]) -> None:
        """Take the free keys of a fetched batch in one round trip (see the class docstring)."""
        if self._stopping or time.monotonic() < self._fetch_paused_until:
            return
        wanted: list[tuple[Message, str, str]] = []
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
                holder = self._holder(message.message_id)
                items.append((found[0], holder, self._lease_ms(self.time_limit_ms(broker, message))))
            except Exception:  # e.g. a key callable failing on bad arguments: decided at start
                continue
            wanted.append((message, found[0], holder))
        if not items:
            return
        try:
            outcomes = self.store.take_free(items)
        except Exception:  # the store is down: decided (and deferred) at start; the consumer
            # thread does not wait on it again for a while, it also sends the acks
            self._fetch_paused_until = time.monotonic() + FETCH_PAUSE_AFTER_FAILURE_S
            return
        now = time.monotonic()
        taken = False
        for (message, key, holder), outcome in zip(wanted, outcomes, strict=True):
            if outcome is DedupOutcome.ACQUIRED:
                message._dedup_lease = holder
                self._leases[holder] = _Lease(key, holder, confirmed=now, until=now + FETCHED_WAIT_MAX_S)
                taken = True
        if taken:
            self._start_thread()

    # --- start ---

    def before_process_message(self, broker: Broker, message: Message) -> None:
        retries = message.options.get("retries")
        if retries and self._letter_claimed(message, retries):
            self.logger.warning("Skipping message %r: its retry %d was reported not enqueued and the message "
                                "was dead-lettered instead; the letter stands.", message.message_id, retries)
            self._count(message, "dead_lettered")
            raise SkipMessage("dead-lettered when this retry was enqueued")
        found = self.key_of(broker, message)
        if found is None:
            return
        key, window = found
        if self._unrecorded and key in self._unrecorded:
            self.logger.info("Skipping message %r: dedup key %r completed here (not yet recorded).",
                             message.message_id, key)
            self._count(message, DedupOutcome.DONE.value)
            raise SkipMessage(f"duplicate of dedup key {key!r} (done)")
        time_limit_ms = self.time_limit_ms(broker, message)
        holder: str | None = message.__dict__.get("_dedup_lease")
        lease = self._leases.get(holder) if holder is not None else None
        now = time.monotonic()
        if (lease is not None and lease.key == key and not lease.lost
                and now - lease.confirmed < self.lease_ttl / 2 and lease.until - now > self.lease_ttl):
            outcome, confirmed = DedupOutcome.ACQUIRED, lease.confirmed  # taken at fetch, renewed since
        else:
            if holder is None or (lease is not None and lease.key != key):
                holder = self._holder(message.message_id)
            try:  # the lease taken at fetch, if any, is extended (or taken again)
                outcome = self.store.acquire(key, holder, self._lease_ms(time_limit_ms))
            except Exception:
                self._defer(broker, message, key)
                return
            confirmed = now
            if outcome is DedupOutcome.REDELIVERY:
                outcome = self._put_back(broker, message, key, holder, time_limit_ms)
                now = confirmed = time.monotonic()  # it waited
        if outcome is DedupOutcome.ACQUIRED:
            fetched = message.__dict__.pop("_dedup_lease", None)
            if fetched is not None and fetched != holder:
                self._drop_lease(fetched)
            message._dedup_running = (holder, key, window)
            message.options.pop("dedup_parks", None)  # a retry starts waiting afresh
            until = now + (time_limit_ms + LEASE_MARGIN_MS) / 1000
            if lease is not None and lease.holder == holder:  # the lease taken at fetch runs now
                # Changed in place: the lease thread tells an ended lease by its object.
                lease.window, lease.until, lease.confirmed, lease.running = window, until, confirmed, True
                lease.lost = False
                self._leases[holder] = lease  # (back) in the renewals, had they just dropped it
            else:
                self._leases[holder] = _Lease(key, holder, confirmed=confirmed, running=True, window=window,
                                              until=until)
            self._start_thread()
            return
        self.logger.info("Skipping message %r: dedup key %r is %s.", message.message_id, key,
                         "done within its window" if outcome is DedupOutcome.DONE else "held by a running message")
        self._count(message, outcome.value)
        raise SkipMessage(f"duplicate of dedup key {key!r} ({outcome.value})")

    def _put_back(self, broker: Broker, message: Message, key: str, holder: str,
                  time_limit_ms: int) -> DedupOutcome:
        """Another delivery of this message holds the key: put this one back, to be decided again
        when that one has completed (skipped), failed or died (run). Raises SkipMessage once it is
        back on its queue. If the broker refuses it, this thread waits and decides again, since
        acknowledging it could lose the message (the other delivery may be the broker's only
        other copy, running in memory) and running it would run it twice; returns the outcome
        once it is no longer REDELIVERY."""
        parks = message.options.get("dedup_parks", 0)
        parks = parks if isinstance(parks, int) and 0 <= parks < 32 else 0
        ttl_ms = int(self.lease_ttl * 1000)
        while True:
            try:
                left = self.store.remaining_ms(key)
            except Exception:  # looked at again within a lease either way
                left = ttl_ms
            delay = max(min(REDELIVERY_FIRST_DELAY_MS * 2 ** parks, left + 100, ttl_ms), 100)
            try:
                park(broker, fresh_copy(message, dedup_parks=parks + 1), delay)
            except Exception:
                self._warn("Could not put back message %r, delivered again while another delivery of it holds "
                           "dedup key %r; deciding again in %.0f s.", message.message_id, key, PUT_BACK_RETRY_S)
                time.sleep(PUT_BACK_RETRY_S)
                try:
                    outcome = self.store.acquire(key, holder, self._lease_ms(time_limit_ms))
                except Exception:
                    continue
                if outcome is not DedupOutcome.REDELIVERY:
                    return outcome
                continue
            self.logger.warning("Message %r delivered again while another delivery of it holds dedup key %r: "
                                "put back for %d ms.", message.message_id, key, delay)
            self._count(message, DedupOutcome.REDELIVERY.value)
            raise SkipMessage(f"another delivery holds dedup key {key!r}: put back")

    def _letter_claimed(self, message: Message, retries: Any) -> bool:
        """Whether this retry's attempt was claimed by a dead letter (the enqueue that made this
        retry raised, and the message was dead-lettered); else it is claimed for this run."""
        if not isinstance(retries, int) or retries <= 0:
            return False
        try:
            held = self.store.claim(retry_claim_key(message.message_id, retries), RETRY_CLAIM_RUN,
                                    RETRY_CLAIM_RUN_TTL_MS)
        except Exception:  # at least once: it runs (docs/middleware.md, Retries)
            self._warn("Could not claim retry %d of message %r in the dedup store; running it.", retries,
                       message.message_id)
            return False
        return held == RETRY_CLAIM_DEAD

    # --- end ---

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        running = message.__dict__.pop("_dedup_running", None)
        if running is None:
            return
        holder, key, window = running
        if exception is None and not message.failed:  # failed without an exception: it did not run
            entry = _Completion(key, holder, int(window * 1000), time.monotonic())
            if getattr(broker, "settles_in_batches", False):
                # Its consumer writes it, with the others it acknowledges at once, just before the
                # ack (before_settle); the lease stays held and renewed until then.
                message._dedup_done = entry
                self._awaiting[holder] = entry
                return
            self._leases.pop(holder, None)
            self._complete(entry)
            return
        self._leases.pop(holder, None)
        try:
            self.store.release(key, holder)
        except Exception:
            self._warn("Could not release dedup key %r after a failure; it frees itself within %.0f s.", key,
                       self.lease_ttl)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        # Skipped after it took a key (a breaker parked it), or before our before-hook with the
        # key taken at fetch (expired, a dead-letter carrier): it did not run, so the key is free.
        fetched = message.__dict__.pop("_dedup_lease", None)
        if fetched is not None:
            self._drop_lease(fetched)
        running = message.__dict__.pop("_dedup_running", None)
        if running is not None:
            self._drop_lease(running[0], running[1])

    def _drop_lease(self, holder: str, key: str | None = None) -> None:
        lease = self._leases.pop(holder, None)
        key = key if key is not None else lease.key if lease is not None else None
        if key is None:
            return
        try:
            self.store.release(key, holder)
        except Exception:
            self._warn("Could not release dedup key %r; it frees itself within %.0f s.", key, self.lease_ttl)

    def before_settle(self, broker: Broker, messages: list[Message]) -> None:
        """A consumer is about to acknowledge ``messages`` (on its own thread): write their done
        marks first, in one round trip."""
        batch = []
        for message in messages:
            entry = message.__dict__.pop("_dedup_done", None)
            if entry is not None and self._awaiting.pop(entry.holder, None) is not None:
                batch.append(entry)
        if batch:
            self._record(batch)

    def _record(self, batch: list[_Completion]) -> bool:
        """Write these done marks; if the store refuses, keep them to write again later. Their
        leases are no longer renewed either way."""
        try:
            self.store.complete_many([(item.key, item.holder, item.window_ms) for item in batch])
            return True
        except Exception:
            self._warn("Could not record %d dedup completion(s); the messages are acknowledged and the "
                       "completions tried again every %.0f s.", len(batch), COMPLETION_RETRY_S)
            with self._lock:
                for item in batch:
                    self._unrecorded[item.key] = (item.holder, item.window_ms, item.at)
            self._start_thread()
            return False
        finally:
            for item in batch:
                self._leases.pop(item.holder, None)

    def _complete(self, entry: _Completion) -> None:
        """Record the completion before the message is acknowledged (this runs in the worker
        thread, before the ack), where no consumer settles batches. Threads finishing together
        share one round trip: one of them, the leader, writes every completion queued so far while
        the others wait, each on a lock of its own (one wake-up per message: released once
        written, or to lead the next round)."""
        entry.lock.acquire()
        with self._commit:
            self._pending.append(entry)
            leader = not self._committing
            self._committing = True
        late = False
        if not leader:
            if entry.lock.acquire(timeout=COMMIT_WAIT_S):
                if not entry.lead:
                    return  # written by a leader
            else:
                late = True
                # No leader came for it (one was cut short by an asynchronous exception, or the
                # store is slow): lead a round ourselves, unless a leader holds it already.
                with self._commit:
                    taken = entry not in self._pending
                if taken:
                    entry.lock.acquire()  # released in that leader's finally
                    if not entry.lead:
                        return
        batch: list[_Completion] = []
        try:
            with self._commit:
                batch, self._pending = self._pending, []
            self._record(batch)
        finally:  # whatever happened (an asynchronous exception too), nobody may wait for ever
            for item in batch:
                if item is not entry:
                    item.lock.release()
            with self._commit:
                if not self._pending:
                    self._committing = False
                elif not self._pending[0].lead:  # queued while we wrote: the first leads the next round
                    self._pending[0].lead = True
                    self._pending[0].lock.release()
        if late and not any(item is entry for item in batch):
            entry.lock.acquire(timeout=COMMIT_WAIT_S)  # another leader took it meanwhile: let it finish

    # --- lease thread: renewals and completions to try again ---

    def _start_thread(self) -> None:
        """Have the lease thread running (and awake if it waits for work): called after a lease
        or an unrecorded completion was added."""
        thread = self._thread
        if thread is not None and not self._idle and thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # first use, or after a fork
                self._thread = threading.Thread(target=self._maintain, name="dedup-leases", daemon=True)
                self._thread.start()
            self._lock.notify()

    def _maintain(self) -> None:
        while True:
            with self._lock:
                # Idle is set before looking: a lease added after the look finds it set and wakes us.
                self._idle = True
                while not self._leases and not self._unrecorded:
                    self._lock.wait()
                self._idle = False
            time.sleep(min(self.lease_ttl / 3, COMPLETION_RETRY_S) if self._unrecorded else self.lease_ttl / 3)
            try:
                self.settle_overdue(SETTLE_GRACE_S)
                self.renew()
                self.record_unrecorded()
            except Exception:  # never let the thread die: the next tick tries again
                self._warn("Dedup lease maintenance failed.")

    def renew(self) -> None:
        """Extend every lease this process holds (one round trip), except those past their end."""
        now = time.monotonic()
        due: list[_Lease] = []
        for lease in list(self._leases.values()):
            if now < lease.until:
                due.append(lease)
            elif lease.running:
                if not lease.lost:
                    lease.lost = True
                    self.logger.warning("Dedup key %r: its run is past the actor's time limit plus %d s; the "
                                        "lease is left to end.", lease.key, LEASE_MARGIN_MS // 1000)
            else:  # waited too long in the worker's queue: taken again at start
                self._leases.pop(lease.holder, None)
        if not due:
            return
        ttl_ms = int(self.lease_ttl * 1000)
        items = [(lease.key, lease.holder, max(1, min(ttl_ms, int((lease.until - now) * 1000)))) for lease in due]
        try:
            renewed = self.store.renew(items)
        except Exception:
            self._warn("Could not renew %d dedup lease(s); trying again in %.1f s.", len(items), self.lease_ttl / 3)
            return
        ended = []
        for lease, ok in zip(due, renewed, strict=True):
            if self._leases.get(lease.holder) is not lease:
                # Its delivery ended while we renewed: completed (the key is done, nothing was
                # renewed) or failed and released, which the renewal may have taken back.
                if ok:
                    ended.append(lease)
            elif ok:
                lease.confirmed = now
            elif not lease.lost:
                lease.lost = True
                self.logger.warning("Dedup key %r: the lease of %s was lost (the store lost it, or it lapsed and "
                                    "another took it).", lease.key, lease.holder)
        for lease in ended:
            self.store.release(lease.key, lease.holder)

    def settle_overdue(self, grace: float) -> None:
        """Write the done marks no consumer settled within ``grace`` seconds (its connection
        closed before the drain that would have acknowledged them)."""
        if not self._awaiting:
            return
        now = time.monotonic()
        batch = []
        for entry in list(self._awaiting.values()):
            if now - entry.at >= grace and self._awaiting.pop(entry.holder, None) is not None:
                batch.append(entry)
        if batch:
            self._record(batch)

    def record_unrecorded(self) -> None:
        """Write the completions the store refused, each for what is left of its window."""
        if not self._unrecorded:
            return
        now = time.monotonic()
        with self._lock:
            batch = list(self._unrecorded.items())
        items = []
        expired = []
        for key, (holder, window_ms, at) in batch:
            left = window_ms - int((now - at) * 1000)
            (items if left > 0 else expired).append((key, holder, left))
        try:
            self.store.complete_many(items)
            for key, holder, _left in expired:  # the window is over: the key is free again
                self.store.release(key, holder)
        except Exception:
            return
        with self._lock:
            for key, holder, _left in items + expired:
                if self._unrecorded.get(key, ("",))[0] == holder:
                    del self._unrecorded[key]
        if items or expired:
            self.logger.info("Recorded %d dedup completion(s) the store had refused (%d past their window).",
                             len(items), len(expired))

    # --- worker lifecycle ---

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        self._stopping = False

    def before_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Free the keys taken at fetch: the worker requeues messages it did not start, and their
        next delivery must not wait for this process's leases to end."""
        self._stopping = True
        for lease in [lease for lease in list(self._leases.values()) if not lease.running]:
            self._drop_lease(lease.holder)

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        try:
            self.settle_overdue(0)
            self.record_unrecorded()
        except Exception:
            pass
        if self._unrecorded:
            self.logger.warning("%d dedup completion(s) could not be recorded; their keys free themselves within "
                                "%.0f s.", len(self._unrecorded), self.lease_ttl)

    # --- helpers ---

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

    def _warn(self, text: str, *args: Any) -> None:
        """A warning with its traceback, each kind at most once a minute (an outage repeats it)."""
        now = time.monotonic()
        if now - self._last_warning.get(text, -60.0) >= 60:
            self._last_warning[text] = now
            self.logger.warning(text, *args, exc_info=True)

    def _count(self, message: Message, reason: str) -> None:
        if self._metrics_factory is None:
            return
        try:
            self._metrics_factory().add([(DEDUP_SKIPS, (message.queue_name, message.actor_name, reason), 1)])
        except Exception:  # a metric is never worth failing a message
            self.logger.debug("Could not count a dedup skip.", exc_info=True)
