"""Job records: what became of every message, its progress, its cancellation, and the workers."""

from __future__ import annotations

import atexit
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from dramatiq import Broker, Message, Worker
from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware, SkipMessage

from brokers.messages import unwrap
from domain.errors import Cancelled
from domain.jobs import CANCELLED, DELAYED, DONE, FAILED, QUEUED, RETRYING, RUNNING, SKIPPED, fold, record_text
from domain.ports import JobStore
from runtime.jobs import CURRENT_JOB

#: Updates kept in memory while the store is unreachable; past it the oldest pending are dropped
#: (a job record is worth less than the worker's memory; the messages themselves are untouched).
MAX_PENDING = 100_000
#: How long a booting worker's messages wait for its first read of the cancellations (done by the
#: background thread): a message cancelled before the worker started is not run, and a job store
#: that does not answer holds the worker threads this long at most, once.
FIRST_POLL_WAIT_S = 1.0


#: Option a message sent again while it runs (a retry, a park) carries: when it was sent (ms). Its
#: next run orders its updates after it, whatever its clock says: the same millisecond (a retry
#: after 0 or 1 ms) or a host whose clock is behind would order that run's "running" before the
#: "retrying" it follows.
FLOOR_OPTION = "job_order_floor"
#: How far ahead of this host's clock a floor is believed: a producer's junk must not freeze a record.
FLOOR_SLACK_MS = 60_000


def _ms() -> int:
    return int(time.time() * 1000)


def _short(value: Any) -> str | int:
    """A producer's value (a correlation id, a timestamp, a reason) as a record keeps it: text cut
    to 200 characters, an integer as it is, anything else as its text. Every value of an update is
    text or an integer: the store sends them as they are (adapters/state/jobs.py)."""
    kind = type(value)
    if kind is str:
        return value[:200] if len(value) > 200 else value
    return value if kind is int else record_text(value)[:200]


def _given(fields: dict[str, Any], name: str, value: Any) -> None:
    """A producer's value into ``fields``, if it gave one (None is left out)."""
    if value is not None:
        fields[name] = _short(value)


def _error(exception: BaseException) -> str:
    try:
        return f"{type(exception).__name__}: {exception}"[:500]
    except Exception:  # an exception whose text cannot be made
        return f"{type(exception).__name__}: (no text)"


class _Job:
    """The running message, as runtime.report_progress and the background writer see it. Its
    "running" record is written by the writer only if it is still running at a write (or reports
    progress): a message that starts and ends between two writes costs one record, not two."""

    __slots__ = ("message_id", "attempt", "reenqueued", "recorded", "started_at", "base", "message", "_jobs")

    def __init__(self, jobs: Jobs, message: Message, attempt: int, started_at: int, base: int) -> None:
        self._jobs = jobs
        self.message = message
        self.message_id = message.message_id
        self.attempt = attempt
        self.started_at = started_at
        self.base = base  # the ms this run's updates are ordered from: after what sent it again
        self.reenqueued = 0  # the order of its "retrying"/"delayed" when this run sent it again
        self.recorded = False

    def report(self, fraction: float, note: str) -> None:
        self._jobs.progress(self, fraction, note)

    def order(self, ms: int, phase: int) -> int:
        """An update's order in this run: never before what sent it again."""
        return max(ms, self.base) * 8 + phase

    def running_fields(self) -> dict[str, Any]:
        message = self.message
        fields = {"actor": message.actor_name, "queue": self._jobs.queue_of(message.queue_name),
                  "status": RUNNING, "attempts": self.attempt, "started_at": self.started_at}
        _given(fields, "enqueued_at", message.message_timestamp)
        _given(fields, "correlation_id", message.options.get("correlation_id"))
        if self.attempt > 1:  # what the previous attempt left
            fields.update(finished_at="", next_attempt_at="", progress="", note="")
        return fields


class Jobs(Middleware):
    """Keeps a record per message in a JobStore: actor, queue, status (queued, delayed, running,
    retrying, done, failed, skipped, cancelled), attempts, times, correlation id, progress, the
    reason of a failure or skip and the dead-letter id. Cancels messages asked to be cancelled
    (``JobStore.request_cancel``): one that has not started is skipped when it comes to run; a
    running one raises domain.errors.Cancelled at its next ``runtime.report_progress``. Writes a
    heartbeat per worker process.

    Cheap on the hot path: a message's run adds one update to a queue (no lock: a deque's append),
    when it ends; a background thread folds what came per message id and writes it every
    ``flush_interval`` seconds in one round trip, writes "running" for the messages still running
    then, and reads the cancellations asked since its last pass. A record therefore trails the
    message by up to that interval, and a cancel reaches the workers within it.

    Placed before DeadLetters and Retries in the list, so its after-hooks run after theirs and see
    the outcome they decided (failed for good, or re-enqueued for a retry) and the letter's id.

    Parameters:
      store: callable returning the JobStore, resolved on first use.
      flush_interval: seconds between writes (and cancellation polls).
      heartbeat_interval: seconds between worker heartbeats; a worker silent for 3 of them is shown
        not alive, for 10 of them it is forgotten.
      dedup, circuit: whether Dedup / CircuitBreaker are in the stack (to name a skip's reason).

    Actor option ``jobs=False``: the actor's messages get no record (and so cannot be followed or
    cancelled): for a high-volume actor whose work is small next to what a record costs.
    """

    actor_options = {"jobs"}

    def __init__(self, store: Callable[[], JobStore], *, flush_interval: float = 0.2,
                 heartbeat_interval: float = 5.0, dedup: bool = False, circuit: bool = False) -> None:
        self.logger = get_logger(__name__, type(self))
        self._store_factory = store
        self._store: JobStore | None = None
        self.flush_interval = flush_interval
        self.heartbeat_interval = heartbeat_interval
        self._dedup, self._circuit = dedup, circuit
        self._lock = threading.Lock()  # starts the writer once; guards the cancellations
        self._flush_lock = threading.Lock()  # one write at a time (the writer, shutdown, atexit)
        self._queue: deque[tuple[str, int, dict[str, Any]]] = deque(maxlen=MAX_PENDING)
        self._unsent: dict[str, list[Any]] = {}  # message id -> [order, fields], a write that failed
        self._enqueue_started: dict[int, int] = {}  # id(message) -> ms, between before and after enqueue
        self._cancelled: dict[str, int] = {}  # message id -> when its cancellation was asked
        self._cancel_cursor: int | None = None  # None: never polled
        self._cancel_skips: set[str] = set()
        self._running: dict[int, _Job] = {}  # id(job): a redelivery of a running message is a run of its own
        self._queues: dict[str, str] = {}  # a message's queue name (maybe a delay queue's) -> its queue
        self._tracked: dict[Any, bool] = {}  # actor name -> whether its messages get records
        self._worker: dict[str, Any] | None = None
        self._last_heartbeat = 0.0
        self._flusher: threading.Thread | None = None
        self._wake = threading.Event()
        self._first_poll = threading.Event()  # set once the first read of the cancellations ended
        self._first_poll_deadline = 0.0
        self._last_warning = 0.0

    @property
    def store(self) -> JobStore:
        if self._store is None:
            self._store = self._store_factory()
        return self._store

    def queue_of(self, name: str) -> str:
        queue = self._queues.get(name)
        if queue is None:
            if len(self._queues) > 1000:  # names come from producers
                self._queues.clear()
            queue = self._queues[name] = q_name(name)
        return queue

    def _tracks(self, broker: Broker | None, actor_name: Any) -> bool:
        """Whether messages of ``actor_name`` get records: not for an actor declared ``jobs=False``."""
        tracked = self._tracked.get(actor_name)
        if tracked is None:
            actors = getattr(broker, "actors", None) or {}
            actor = actors.get(actor_name) if type(actor_name) is str else None
            tracked = actor is None or actor.options.get("jobs", True) is not False
            if actor is not None:  # names of actors this broker has not declared come from producers
                self._tracked[actor_name] = tracked
        return tracked

    # -- buffering -------------------------------------------------------------------------
    def _put(self, message_id: str, order: int, fields: dict[str, Any]) -> None:
        self._queue.append((message_id, order, fields))
        if self._flusher is None:
            with self._lock:
                if self._flusher is None:
                    self._start_flusher()

    def _start_flusher(self) -> None:
        """Start the background writer (called holding the lock); producers flush at exit too."""
        self._flusher = threading.Thread(target=self._flush_forever, name="jobs-flush", daemon=True)
        self._flusher.start()
        atexit.register(self.flush)

    def _flush_forever(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                if self._worker is not None:
                    try:
                        self._poll_cancellations()
                    except Exception:
                        self._warn("Could not read cancellations.")
                    finally:
                        self._first_poll.set()
                self.flush()
                if self._worker is not None:
                    self._beat()
            except Exception:  # the writer must outlive any store failure
                self._warn("Job records: background write failed.")

    def flush(self) -> None:
        """Write what added up, with "running" for the messages running now that have no record
        yet; on failure keep it for the next write."""
        with self._flush_lock:
            pending, self._unsent = self._unsent, {}
            for job in list(self._running.values()):  # a copy made under the GIL: threads add and pop
                self._ran(job)
            queue = self._queue
            while queue:
                mid, order, fields = queue.popleft()
                entry = pending.get(mid)
                if entry is None:
                    pending[mid] = [order, fields]
                else:
                    after = fold(entry[1], entry[0], order, fields)
                    if after is not None:
                        entry[0] = after
            if not pending:
                return
            try:
                self.store.write([(mid, order, fields) for mid, (order, fields) in pending.items()])
            except Exception:
                while len(pending) > MAX_PENDING:  # the oldest go first
                    pending.pop(next(iter(pending)))
                self._unsent = pending
                self._warn("Could not write job records; will try again.")

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 60:
            self._last_warning = now
            self.logger.warning(text, exc_info=True)

    def _poll_cancellations(self) -> None:
        # Overlap the previous poll by a second: a cancel written with a clock a little behind.
        since = 0 if self._cancel_cursor is None else self._cancel_cursor - 1000
        ids, cursor = self.store.cancelled_since(since)
        now = _ms()
        with self._lock:
            for mid in ids:
                self._cancelled.setdefault(mid, now)
            if len(self._cancelled) > 10_000:  # forget the oldest: their messages are long gone
                for mid in sorted(self._cancelled, key=self._cancelled.__getitem__)[:len(self._cancelled) - 10_000]:
                    del self._cancelled[mid]
        self._cancel_cursor = max(cursor, self._cancel_cursor or 0)

    def _beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._worker is None or (not force and now - self._last_heartbeat < self.heartbeat_interval):
            return
        self._last_heartbeat = now
        info = {**self._worker, "busy": len(self._running), "last_seen": _ms()}
        self.store.heartbeat(info["id"], info, int(self.heartbeat_interval * 10_000))

    # -- worker lifecycle ------------------------------------------------------------------
    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        queues = sorted(worker.consumer_whitelist or broker.get_declared_queues())
        host, pid = socket.gethostname(), os.getpid()
        self._worker = {"id": f"{host}:{pid}:{id(worker):x}", "host": host, "pid": pid, "queues": queues,
                        "threads": worker.worker_threads, "started_at": _ms()}
        self._first_poll_deadline = time.monotonic() + FIRST_POLL_WAIT_S
        with self._lock:
            if self._flusher is None:
                self._start_flusher()
        self._wake.set()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self.flush()
        if self._worker is not None:
            try:
                self.store.remove_worker(self._worker["id"])
            except Exception:
                self._warn("Could not remove the worker's heartbeat.")
            self._worker = None

    # -- enqueue -----------------------------------------------------------------------------
    def before_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        if not self._tracks(broker, message.actor_name):
            return
        # The record's order is the time the enqueue began: a worker can take the message before
        # the enqueue returns (RabbitMQ's publisher confirm), and its "running" and "done" must
        # come after this "queued" in the record's order.
        started = self._enqueue_started
        if len(started) > 10_000:  # enqueues that raised never reach after_enqueue
            started.clear()
        now = started[id(message)] = _ms()
        job = CURRENT_JOB.get()
        if job is not None and job.message_id == message.message_id:
            message.options[FLOOR_OPTION] = now

    def after_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        started = self._enqueue_started.pop(id(message), None)
        if "dead_letter" in message.options or not self._tracks(broker, message.actor_name):
            return  # a dead letter waiting to be written, not a run of the message
        now = started if started is not None else _ms()
        job = CURRENT_JOB.get()
        mid = message.message_id
        if job is not None and job.message_id == mid:
            # Sent again while it runs: Retries (retry count went up) or a park (circuit, Retry-After).
            job.reenqueued = now * 8 + 3
            retries = message.options.get("retries", 0)
            retry = isinstance(retries, int) and retries >= job.attempt
            status = (RETRYING if retry else DELAYED) if delay else QUEUED
            fields = {"status": status, "next_attempt_at": now + delay if delay else ""}
            trace = message.options.get("traceback") if retry else None
            if type(trace) is str and trace.strip():
                # Dramatiq's Retries puts the failure's traceback on the retry: its last line is the
                # error, written with the "retrying" so that a later attempt's never meets an older one.
                fields["error"] = trace.strip().splitlines()[-1][:500]
            self._put(mid, now * 8 + 3, fields)
            return
        fields = {"actor": _short(message.actor_name), "queue": q_name(message.queue_name),
                  "status": DELAYED if delay else QUEUED, "next_attempt_at": now + delay if delay else ""}
        _given(fields, "enqueued_at", message.message_timestamp)
        _given(fields, "correlation_id", message.options.get("correlation_id"))
        self._put(mid, now * 8, fields)

    # -- processing --------------------------------------------------------------------------
    def before_process_message(self, broker: Broker, message: Message) -> None:
        raw = unwrap(message)
        options = raw.options
        if "dead_letter" in options or not self._tracks(broker, raw.actor_name):
            return
        mid = raw.message_id
        if not self._first_poll.is_set() and self._worker is not None:
            # The worker is booting: learn the cancellations asked so far, read by the background
            # thread (never here: a store that does not answer would hold every message).
            self._first_poll.wait(max(0.0, self._first_poll_deadline - time.monotonic()))
        if mid in self._cancelled:
            self._cancel_skips.add(mid)
            raise SkipMessage("cancelled")
        retries = options.get("retries", 0)
        now = _ms()
        floor = options.get(FLOOR_OPTION)
        base = floor + 1 if type(floor) is int and now <= floor < now + FLOOR_SLACK_MS else now
        job = _Job(self, raw, retries + 1 if type(retries) is int else 1, now, base)
        CURRENT_JOB.set(job)
        self._running[id(job)] = job

    def progress(self, job: _Job, fraction: float, note: str) -> None:
        if job.message_id in self._cancelled:
            raise Cancelled(f"message {job.message_id} was cancelled")
        try:
            fraction = min(max(float(fraction), 0.0), 1.0)
        except (TypeError, ValueError):
            fraction = 0.0
        if fraction != fraction:  # NaN passes the clamp, and is not JSON
            fraction = 0.0
        self._ran(job)
        self._put(job.message_id, job.order(_ms(), 2), {"progress": f"{fraction:.4f}", "note": str(note)[:200]})

    def _end(self, mid: str) -> _Job | None:
        job = CURRENT_JOB.get()
        CURRENT_JOB.set(None)
        if job is None or job.message_id != mid:
            return None
        self._running.pop(id(job), None)
        return job

    @staticmethod
    def _unseen(job: _Job | None) -> dict[str, Any]:
        """For a run that ends: what its "running" would have said, if the writer never saw it
        running (the run's one record then carries it), else nothing."""
        if job is None or job.recorded:
            return {}
        job.recorded = True
        return job.running_fields()

    def _ran(self, job: _Job) -> None:
        """The run's "running", at its start's order, unless written already: by the writer for a
        run still going, before a progress, or apart for a run sent again (a retry, a park), whose
        next attempt's updates come after it."""
        fields = self._unseen(job)
        if fields:
            self._put(job.message_id, job.base * 8 + 1, fields)

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        raw = unwrap(message)
        mid = raw.message_id
        job = self._end(mid)
        options = raw.options
        if "dead_letter" in options or not self._tracks(broker, raw.actor_name):
            return
        if exception is not None and not message.failed and not isinstance(exception, Cancelled) \
                and job is not None:
            retries = options.get("retries", 0)
            if job.reenqueued:
                # Sent again (a retry): its "retrying", the next attempt's time and the error came
                # from after_enqueue; this is at their order, before the next attempt's "running".
                self._ran(job)
                self._put(mid, job.reenqueued, {"error": _error(exception)})
                return
            if type(retries) is int and retries >= job.attempt:
                # A retry whose enqueue raised but which reached the broker and started
                # (ClassifiedRetries found its claim): that run carries the record on.
                self._ran(job)
                self._put(mid, job.base * 8 + 1, {"error": _error(exception)})
                return
        now = _ms()
        order = job.order(now, 4) if job is not None else now * 8 + 4
        fields = self._unseen(job)
        fields["finished_at"] = now
        if exception is None:
            fields["status"] = DONE
        elif isinstance(exception, Cancelled):
            fields.update(status=CANCELLED, reason="cancelled while running")
        elif message.failed:
            fields.update(status=FAILED, reason=_short(options.get("failed_because") or "failed"),
                          error=_error(exception))
            _given(fields, "dead_letter_id", options.get("dead_letter_id"))
        else:
            fields.update(status=FAILED, reason="not_retried", error=_error(exception))
        self._put(mid, order, fields)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        raw = unwrap(message)
        mid = raw.message_id
        job = self._end(mid)
        options = raw.options
        now = _ms()
        if "dead_letter" in options:
            letter = options["dead_letter"]
            of = letter.get("actor") if isinstance(letter, dict) else None
            if options.get("dead_letter_id") and self._tracks(broker, of):  # the carrier wrote its letter at last
                self._put(mid, now * 8 + 4, {"dead_letter_id": _short(options["dead_letter_id"])})
            return
        if not self._tracks(broker, raw.actor_name):
            return
        if mid in self._cancel_skips:
            self._cancel_skips.discard(mid)
            self._put(mid, now * 8 + 4, {"status": CANCELLED, "reason": "cancelled before it ran",
                                         "actor": raw.actor_name, "queue": self.queue_of(raw.queue_name),
                                         "finished_at": now})
            return
        if job is not None and job.reenqueued:
            self._ran(job)  # parked: it runs later, as its record says
            return
        order = job.order(now, 4) if job is not None else now * 8 + 4
        fields = self._unseen(job)
        fields["finished_at"] = now
        if message.failed:
            fields.update(status=FAILED, reason=_short(options.get("failed_because") or "failed"))
            _given(fields, "dead_letter_id", options.get("dead_letter_id"))
            self._put(mid, order, fields)
            return
        actor_options = broker.get_actor(raw.actor_name).options if raw.actor_name in broker.actors else {}
        deduped = self._dedup and ("dedup_key" in options or "dedup_key" in actor_options)
        guarded = self._circuit and "circuit" in actor_options
        reason = ("duplicate or circuit_open" if deduped and guarded else "duplicate" if deduped
                  else "circuit_open" if guarded else "skipped")
        fields.update(status=SKIPPED, reason=reason)
        self._put(mid, order, fields)
