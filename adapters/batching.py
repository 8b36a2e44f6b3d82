"""Dynamic batching: calls made at the same time from several threads become one call.

Dramatiq runs a worker process's messages on threads. A model call on a batch of 8 costs
far less than 8 calls on one item each, so each thread submits its item and blocks; one
background thread gathers what has been submitted (up to ``max_batch_size``) and makes one call.
Every submitter gets its own result, or the batch's exception: a failed call fails every item of
that batch, none is dropped.

How long to wait for a batch to fill: the threads that submitted recently come back one by one
(each acks, fetches its next message, reads its image), so the batcher expects one item from
each thread seen in the last few cycles and closes the batch as soon as they are in, waiting at
most ``max_wait`` after the first. A lone message goes at once; 8 busy threads form batches of 8
without idling the model for the full ``max_wait`` each time; a thread that stops submitting
drops out of the expectation after a few cycles. Items already queued always join.

A caller can also reserve its place before the item is ready (``with batcher.reserve() as submit:``
around decoding and preprocessing): a batch being formed waits for reserved items as well (within
``max_wait``). That is what forms a full first batch when several threads start at once, before any
of them has been seen submitting.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_WAKE: Any = object()  # queued when a reserved place is freed without an item


class DynamicBatcher(Generic[T, R]):
    """Parameters: ``fn`` maps a list of items to a list of results of the same length, in order;
    ``max_batch_size``; ``max_wait`` (seconds a batch waits to fill after its first item);
    ``name`` of the background thread."""

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], *, max_batch_size: int = 16,
                 max_wait: float = 0.01, name: str = "batcher") -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self._name = name
        self._queue: queue.Queue[Any] = queue.Queue()  # (item, future) or _WAKE
        self._thread: threading.Thread | None = None
        self._seen: dict[int, float] = {}  # submitting thread -> when it last submitted
        self._last_call = 0.0  # seconds the last call took
        self._start_lock = threading.Lock()
        self._reserved = 0  # places reserved by callers still preparing their item
        self._reserve_lock = threading.Lock()
        #: Sizes of the batches run so far (the last 1000), for tests and benchmarks.
        self.batch_sizes: list[int] = []

    def submit(self, item: T, timeout: float | None = None) -> R:
        """Run ``item`` in the next batch and return its result (or raise the batch's exception)."""
        return self._enqueue(item).result(timeout)

    @contextmanager
    def reserve(self) -> Iterator[Callable[..., R]]:
        """Reserve a place in the batch being formed while the item is prepared; yields
        ``submit(item, timeout=None)``, to call once. Leaving without calling it frees the place."""
        self._ensure_thread()
        with self._reserve_lock:
            self._reserved += 1
        submitted = False

        def submit(item: T, timeout: float | None = None) -> R:
            nonlocal submitted
            if submitted:
                raise RuntimeError("a reserved place takes one item")
            submitted = True
            # Queued, then released, under the lock _gather reads the count with: once it reads
            # the place as free, the item is in the queue.
            with self._reserve_lock:
                future = self._enqueue(item)
                self._reserved -= 1
            return future.result(timeout)

        try:
            yield submit
        finally:
            if not submitted:
                with self._reserve_lock:
                    self._reserved -= 1
                self._queue.put(_WAKE)  # a batch waiting for this place stops waiting

    def _enqueue(self, item: T) -> Future[R]:
        self._ensure_thread()
        self._seen[threading.get_ident()] = time.monotonic()
        future: Future[R] = Future()
        self._queue.put((item, future))
        return future

    def _ensure_thread(self) -> None:
        # Started on first use, not at construction: worker processes fork after imports.
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def expected(self, now: float) -> int:
        """Threads that submitted within the last couple of cycles (a call and a wait): the next
        batch waits for each of them."""
        window = max(2 * (self._last_call + self.max_wait), 0.25)
        self._seen = {ident: t for ident, t in list(self._seen.items()) if now - t <= window}
        return max(1, min(len(self._seen), self.max_batch_size))

    def _gather(self) -> list[tuple[T, Future[R]]]:
        first = self._queue.get()
        while first is _WAKE:
            first = self._queue.get()
        batch = [first]
        now = time.monotonic()
        expected = self.expected(now)
        deadline = now + self.max_wait
        while len(batch) < self.max_batch_size:
            with self._reserve_lock:
                reserved = self._reserved
            # What is already queued joins at once; then wait for the expected rest and the
            # reserved places until the deadline.
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                entry = None
            if entry is not None:
                if entry is not _WAKE:
                    batch.append(entry)
                continue
            if len(batch) >= expected and reserved <= 0:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                entry = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if entry is not _WAKE:
                batch.append(entry)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._gather()
            # A submitter whose future was cancelled no longer waits; nothing else to do for it.
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            self.batch_sizes = [*self.batch_sizes[-999:], len(live)]
            started = time.monotonic()
            try:
                results = list(self._fn([item for item, _ in live]))
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            except BaseException as exc:  # every submitter of the batch sees the failure
                for _, fut in live:
                    fut.set_exception(exc)
                continue
            finally:
                self._last_call = time.monotonic() - started
            for (_, fut), result in zip(live, results, strict=True):
                fut.set_result(result)
