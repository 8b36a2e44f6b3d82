"""Job records: what became of every message, its progress, its cancellation, and the workers."""

from __future__ import annotations

import atexit
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from dramatiq import Broker, Message, Worker
from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware, SkipMessage

from domain.errors import Cancelled
from domain.jobs import CANCELLED, DELAYED, DONE, FAILED, FINAL, QUEUED, RETRYING, RUNNING, SKIPPED, WAITING
from domain.ports import JobStore
from runtime.jobs import CURRENT_JOB

#: Updates kept in memory while the store is unreachable; past it the oldest pending are dropped
#: (a job record is worth less than the worker's memory; the messages themselves are untouched).
MAX_PENDING = 100_000
#: How long a booting worker's messages wait for its first read of the cancellations (done by the
#: background thread): a message cancelled before the worker started is not run, and a job store
#: that does not answer holds the worker threads this long at most, once.
FIRST_POLL_WAIT_S = 1.0


def _ms() -> int:
    return int(time.time() * 1000)


class _Job:
    """The running message, as runtime.report_progress sees it."""

    __slots__ = ("message_id", "attempt", "reenqueued", "_jobs")

    def __init__(self, jobs: Jobs, message_id: str, attempt: int) -> None:
        self._jobs = jobs
        self.message_id = message_id
        self.attempt = attempt
        self.reenqueued = False

    def report(self, fraction: float, note: str) -> None:
        self._jobs.progress(self, fraction, note)


class Jobs(Middleware):
    """Keeps a record per message in a JobStore: actor, queue, status (queued, delayed, running,
    retrying, done, failed, skipped, cancelled), attempts, times, correlation id, progress, the
    reason of a failure or skip and the dead-letter id. Cancels messages asked to be cancelled
    (``JobStore.request_cancel``): one that has not started is skipped when it comes to run; a
    running one raises domain.errors.Cancelled at its next ``runtime.report_progress``. Writes a
    heartbeat per worker process.

    Cheap on the hot path: each hook adds to an in-memory dict (coalesced per message id) and a
    background thread writes what added up every ``flush_interval`` seconds in one round trip,
    reading the cancellations asked since its last write in the same pass. A record therefore
    trails the message by up to that interval, and a cancel reaches the workers within it.

    Placed before DeadLetters and Retries in the list, so its after-hooks run after theirs and see
    the outcome they decided (failed for good, or re-enqueued for a retry) and the letter's id.

    Parameters:
      store: callable returning the JobStore, resolved on first use.
      flush_interval: seconds between writes (and cancellation polls).
      heartbeat_interval: seconds between worker heartbeats; a worker silent for 3 of them is shown
        not alive, for 10 of them it is forgotten.
      dedup, circuit: whether Dedup / CircuitBreaker are in the stack (to name a skip's reason).
    """

    def __init__(self, store: Callable[[], JobStore], *, flush_interval: float = 0.2,
                 heartbeat_interval: float = 5.0, dedup: bool = False, circuit: bool = False) -> None:
        self.logger = get_logger(__name__, type(self))
        self._store_factory = store
        self._store: JobStore | None = None
        self.flush_interval = flush_interval
        self.heartbeat_interval = heartbeat_interval
        self._dedup, self._circuit = dedup, circuit
        self._lock = threading.Lock()
        self._pending: dict[str, list[Any]] = {}  # message id -> [order, fields]
        self._enqueue_started: dict[int, int] = {}  # id(message) -> ms, between before and after enqueue
        self._cancelled: dict[str, int] = {}  # message id -> when its cancellation was asked
        self._cancel_cursor: int | None = None  # None: never polled
        self._cancel_skips: set[str] = set()
        self._running: dict[str, _Job] = {}
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

    # -- buffering -------------------------------------------------------------------------
    def _put(self, message_id: str, order: int, fields: dict[str, Any]) -> None:
        with self._lock:
            entry = self._pending.get(message_id)
            if entry is None:
                self._pending[message_id] = [order, fields]
            elif order < entry[0] and fields.get("status") in WAITING and entry[1].get("status") in FINAL:
                # An enqueue that returned after the message ran (RabbitMQ's confirm): its "queued"
                # fills what is missing and never undoes how the run ended.
                for name, value in fields.items():
                    entry[1].setdefault(name, value)
            else:
                if order > entry[0]:
                    entry[0] = order
                entry[1].update(fields)
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
        """Write what added up; on failure keep it for the next write."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        updates = [(mid, order, fields) for mid, (order, fields) in pending.items()]
        try:
            self.store.write(updates)
        except Exception:
            with self._lock:
                for mid, (order, fields) in pending.items():
                    entry = self._pending.get(mid)
                    if entry is None:
                        self._pending[mid] = [order, fields]
                    else:  # newer updates made meanwhile win over the ones put back
                        entry[0] = max(entry[0], order)
                        entry[1] = {**fields, **entry[1]}
                while len(self._pending) > MAX_PENDING:
                    self._pending.pop(next(iter(self._pending)))
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
        # The record's order is the time the enqueue began: a worker can take the message before
        # the enqueue returns (RabbitMQ's publisher confirm), and its "running" and "done" must
        # come after this "queued" in the record's order.
        started = self._enqueue_started
        if len(started) > 10_000:  # enqueues that raised never reach after_enqueue
            started.clear()
        started[id(message)] = _ms()

    def after_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        started = self._enqueue_started.pop(id(message), None)
        if "dead_letter" in message.options:
            return  # a dead letter waiting to be written, not a run of the message
        now = started if started is not None else _ms()
        job = CURRENT_JOB.get()
        mid = message.message_id
        if job is not None and job.message_id == mid:
            # Sent again while it runs: Retries (retry count went up) or a park (circuit, Retry-After).
            job.reenqueued = True
            retries = message.options.get("retries", 0)
            retry = isinstance(retries, int) and retries >= job.attempt
            status = (RETRYING if retry else DELAYED) if delay else QUEUED
            self._put(mid, now * 8 + 3, {"status": status, "next_attempt_at": now + delay if delay else ""})
            return
        fields = {"actor": message.actor_name, "queue": q_name(message.queue_name),
                  "status": DELAYED if delay else QUEUED, "enqueued_at": message.message_timestamp,
                  "next_attempt_at": now + delay if delay else "",
                  "correlation_id": message.options.get("correlation_id")}
        self._put(mid, now * 8, fields)

    # -- processing --------------------------------------------------------------------------
    def before_process_message(self, broker: Broker, message: Message) -> None:
        options = message.options
        if "dead_letter" in options:
            return
        mid = message.message_id
        if not self._first_poll.is_set() and self._worker is not None:
            # The worker is booting: learn the cancellations asked so far, read by the background
            # thread (never here: a store that does not answer would hold every message).
            self._first_poll.wait(max(0.0, self._first_poll_deadline - time.monotonic()))
        if mid in self._cancelled:
            self._cancel_skips.add(mid)
            raise SkipMessage("cancelled")
        retries = options.get("retries", 0)
        attempt = (retries if isinstance(retries, int) else 0) + 1
        job = _Job(self, mid, attempt)
        CURRENT_JOB.set(job)
        self._running[mid] = job
        now = _ms()
        fields = {"actor": message.actor_name, "queue": q_name(message.queue_name), "status": RUNNING,
                  "attempts": attempt, "started_at": now, "enqueued_at": message.message_timestamp,
                  "correlation_id": options.get("correlation_id")}
        if attempt > 1:  # what the previous attempt left
            fields.update(finished_at="", next_attempt_at="", progress="", note="")
        self._put(mid, now * 8 + 1, fields)

    def progress(self, job: _Job, fraction: float, note: str) -> None:
        if job.message_id in self._cancelled:
            raise Cancelled(f"message {job.message_id} was cancelled")
        try:
            fraction = min(max(float(fraction), 0.0), 1.0)
        except (TypeError, ValueError):
            fraction = 0.0
        if fraction != fraction:  # NaN passes the clamp, and is not JSON
            fraction = 0.0
        now = _ms()
        self._put(job.message_id, now * 8 + 2, {"progress": f"{fraction:.4f}", "note": str(note)[:200]})

    def _end(self, message: Message) -> _Job | None:
        job = CURRENT_JOB.get()
        CURRENT_JOB.set(None)
        if job is not None and job.message_id != message.message_id:
            job = None
        self._running.pop(message.message_id, None)
        return job

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        job = self._end(message)
        options = message.options
        if "dead_letter" in options:
            return
        now = _ms()
        fields: dict[str, Any] = {"finished_at": now}
        if exception is None:
            fields["status"] = DONE
        elif isinstance(exception, Cancelled):
            fields.update(status=CANCELLED, reason="cancelled while running")
        elif message.failed:
            fields.update(status=FAILED, reason=options.get("failed_because") or "failed",
                          error=f"{type(exception).__name__}: {exception}"[:500],
                          dead_letter_id=options.get("dead_letter_id"))
        elif job is not None and job.reenqueued:
            self._put(message.message_id, now * 8 + 3, {"error": f"{type(exception).__name__}: {exception}"[:500]})
            return
        else:
            fields.update(status=FAILED, reason="not_retried", error=f"{type(exception).__name__}: {exception}"[:500])
        self._put(message.message_id, now * 8 + 4, fields)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        job = self._end(message)
        options = message.options
        mid = message.message_id
        now = _ms()
        if "dead_letter" in options:
            if options.get("dead_letter_id"):  # the carrier wrote its letter at last
                self._put(mid, now * 8 + 4, {"dead_letter_id": options["dead_letter_id"]})
            return
        if mid in self._cancel_skips:
            self._cancel_skips.discard(mid)
            self._put(mid, now * 8 + 4, {"status": CANCELLED, "reason": "cancelled before it ran",
                                         "actor": message.actor_name, "queue": q_name(message.queue_name),
                                         "finished_at": now})
            return
        if job is not None and job.reenqueued:
            return  # parked: it runs later, as its record says
        if message.failed:
            self._put(mid, now * 8 + 4, {"status": FAILED, "reason": options.get("failed_because") or "failed",
                                         "dead_letter_id": options.get("dead_letter_id"),
                                         "finished_at": now})
            return
        actor_options = broker.get_actor(message.actor_name).options if message.actor_name in broker.actors else {}
        deduped = self._dedup and ("dedup_key" in options or "dedup_key" in actor_options)
        guarded = self._circuit and "circuit" in actor_options
        reason = ("duplicate or circuit_open" if deduped and guarded else "duplicate" if deduped
                  else "circuit_open" if guarded else "skipped")
        self._put(mid, now * 8 + 4, {"status": SKIPPED, "reason": reason, "finished_at": now})
