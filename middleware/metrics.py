"""Record per-actor message counts and durations in a MetricsStore shared by all processes."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable

from dramatiq import Broker, Message, Worker
from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware

from domain.errors import Paced
from domain.ports import MetricsStore
from runtime.metrics import (
    BUCKET_LABELS,
    DURATION,
    DURATION_BUCKETS,
    ERRORS,
    MESSAGES,
    REJECTS,
    RETRIES,
    SKIPPED,
    Sample,
)


class _Tally:
    """What one (queue, actor) added up since the last write: a few attribute updates per
    message instead of building samples."""

    __slots__ = ("messages", "errors", "skipped", "sum_ms", "buckets")

    def __init__(self) -> None:
        self.messages = self.errors = self.skipped = 0
        self.sum_ms = 0.0
        self.buckets = [0] * len(DURATION_BUCKETS)

    def observe(self, millis: float, *, error: bool = False, skipped: bool = False) -> None:
        """One message: counted, and its time in its own (non-cumulative) bucket and the sum."""
        self.messages += 1
        self.sum_ms += millis
        self.buckets[bisect_left(DURATION_BUCKETS, millis)] += 1
        if error:
            self.errors += 1
        if skipped:
            self.skipped += 1

    def samples(self, labels: tuple[str, str]) -> list[Sample]:
        out: list[Sample] = [(MESSAGES, labels, self.messages), (f"{DURATION}_sum", labels, self.sum_ms)]
        if self.errors:
            out.append((ERRORS, labels, self.errors))
        if self.skipped:
            out.append((SKIPPED, labels, self.skipped))
        out.extend((f"{DURATION}_bucket", (*labels, BUCKET_LABELS[i]), n) for i, n in enumerate(self.buckets) if n)
        return out


class Metrics(Middleware):
    """Counts messages processed, errored, skipped, retried and dead-lettered per queue and actor,
    and a histogram of processing time, in the shared store.

    Parameters:
      store: a callable returning the MetricsStore, resolved on first use so that building the
        broker connects to nothing.
      flush_interval: seconds between writes. Figures add up in memory and a background thread
        writes them in one transaction per interval (and when the worker shuts down), so a message
        costs a dict update, not a round trip. 0 writes through on every message.

    A store that fails is logged (at most once a minute) and never fails a message; what could not
    be written is kept and added to the next write.
    """

    def __init__(self, store: Callable[[], MetricsStore], *, flush_interval: float = 1.0) -> None:
        self.logger = get_logger(__name__, type(self))
        self.flush_interval = flush_interval
        self._store_factory = store
        self._store: MetricsStore | None = None
        self._started: dict[int, float] = {}  # id(delivery) -> start
        self._pending: dict[tuple[str, tuple[str, ...]], float] = defaultdict(float)
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._last_warning = 0.0

    def _add(self, samples: list[Sample]) -> None:
        with self._lock:
            for name, labels, amount in samples:
                self._pending[(name, labels)] += amount
            self._start_flusher()
        if self.flush_interval <= 0:
            self.flush()

    def _start_flusher(self) -> None:
        """Start the background writer on first use (called holding the lock)."""
        if self.flush_interval > 0 and self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_forever, name="metrics-flush", daemon=True)
            self._flusher.start()

    def flush(self) -> None:
        """Write what has added up since the last write; keep it for the next one if that fails."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(float)
            tallies, self._tallies = self._tallies, {}
        for labels, tally in tallies.items():
            for name, sample_labels, amount in tally.samples(labels):
                pending[(name, sample_labels)] += amount
        if not pending:
            return
        try:
            if self._store is None:
                self._store = self._store_factory()
            self._store.add([(name, labels, amount) for (name, labels), amount in pending.items()])
        except Exception:  # metrics are never worth failing or retrying a message
            with self._lock:
                for key, amount in pending.items():
                    self._pending[key] += amount
                now = time.monotonic()
                warn, self._last_warning = now - self._last_warning >= 60, now
            if warn:
                self.logger.warning("Could not record metrics; will add them to the next write.", exc_info=True)

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self.flush_interval)
            self.flush()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        self.flush()

    def before_process_message(self, broker: Broker, message: Message) -> None:
        self._started[id(message)] = time.perf_counter()

    def _tally(self, message: Message, exception: BaseException | None, skipped: bool) -> None:
        started = self._started.pop(id(message), None)
        millis = (time.perf_counter() - started) * 1000 if started is not None else 0.0
        labels = (message.queue_name, message.actor_name)
        with self._lock:
            tally = self._tallies.get(labels)
            if tally is None:
                tally = self._tallies[labels] = _Tally()
                self._start_flusher()
            tally.observe(millis, error=exception is not None, skipped=skipped)
        if self.flush_interval <= 0:
            self.flush()

    def after_process_message(self, broker: Broker, message: Message, *, result=None, exception=None) -> None:
        if isinstance(exception, Paced):  # it waits for its slot (parked), like a skipped message
            self._tally(message, None, True)
            return
        self._tally(message, exception, False)

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        # Like Dramatiq's own middleware, a skipped message counts as processed.
        self._tally(message, None, True)

    def after_nack(self, broker: Broker, message: Message) -> None:
        self._add([(REJECTS, (message.queue_name, message.actor_name), 1)])

    def after_enqueue(self, broker: Broker, message: Message, delay: int | None) -> None:
        # A retry is enqueued with a backoff delay; moving it from the delay queue back to its
        # queue enqueues it again without one, which must not count twice.
        if delay is not None and message.options.get("retries"):
            self._add([(RETRIES, (q_name(message.queue_name), message.actor_name), 1)])
