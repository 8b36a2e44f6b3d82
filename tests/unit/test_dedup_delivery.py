"""Dedup leases belong to a delivery, not to a message (issue 16, item 5); the completion is
recorded before the acknowledgement and survives a store outage (item 8a); a retry whose enqueue
raised after reaching the broker is either dead-lettered or run, never both (item 8b).

Two "processes" are two StubBrokers, each with its own Dedup, sharing one in-memory store; hooks
are driven one by one where the order matters, a real Worker elsewhere."""

from __future__ import annotations

import threading
import time
from typing import Any

import dramatiq
import pytest
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.common import dq_name
from dramatiq.middleware import SkipMessage

import middleware
import middleware.dedup as dedup_module
from adapters.state.memory import InMemoryDedupStore
from brokers.dispatch import AtelierStubBroker
from domain.errors import TransientError
from middleware.dedup import Dedup
from tests.services import wait_for
from tests.unit.fakes import FakeDeadLetterStore

KEY = "job:k7"


class Process:
    """One worker process: its broker, its Dedup and the deduplicated actor ``job``."""

    def __init__(self, store: InMemoryDedupStore, *, lease_ttl: float = 30.0, extra: tuple[Any, ...] = (),
                 time_limit: int | None = None) -> None:
        self.dedup = Dedup(lambda: store, lease_ttl=lease_ttl)
        self.broker = AtelierStubBroker(middleware=[*extra, self.dedup])
        options = {} if time_limit is None else {"time_limit": time_limit}

        @dramatiq.actor(broker=self.broker, queue_name="q", actor_name="job", dedup_key=lambda n: f"k{n}",
                        dedup_window=60, **options)
        def job(n: int) -> None:
            pass

        self.job = job

    def start(self, message: Message | MessageProxy) -> MessageProxy:
        """Deliver ``message`` here: the before-hooks run (SkipMessage propagates)."""
        proxy = message if isinstance(message, MessageProxy) else MessageProxy(message)
        self.broker.emit_before("process_message", proxy)
        return proxy

    def finish(self, proxy: MessageProxy, exception: BaseException | None = None) -> None:
        self.broker.emit_after("process_message", proxy, result=None, exception=exception)

    def parked(self) -> list[Message]:
        """What was put back on the queue for later (the delay queue), oldest first."""
        queue = self.broker.queues[dq_name("q")]
        found = []
        while not queue.empty():
            found.append(Message.decode(queue.get_nowait()))
        return found

    def close(self) -> None:
        self.broker.close()


@pytest.fixture
def store() -> InMemoryDedupStore:
    return InMemoryDedupStore()


LEASE_S = 1.0


@pytest.fixture
def two(store):
    # Leases of a second, renewed every third of it: a renewal late by most of a second (a loaded
    # machine) still holds the lease.
    a, b = Process(store, lease_ttl=LEASE_S), Process(store, lease_ttl=LEASE_S)
    yield a, b
    a.close()
    b.close()


def die(process: Process) -> None:
    """kill -9 of a process: nothing it held is renewed, released or completed any more."""
    process.dedup._leases.clear()


# --- item 5: leases of a delivery ---

def test_a_redelivery_to_another_process_while_the_first_runs_is_put_back_not_run_beside_it(two, store):
    a, b = two
    message = a.job.message(7)
    first = a.start(message)  # runs in A
    with pytest.raises(SkipMessage):
        b.start(message)  # RabbitMQ delivered it again (A's connection dropped), to B
    [back] = b.parked()
    assert back.message_id == message.message_id and back.args == (7,)
    a.finish(first)  # A completes it
    with pytest.raises(SkipMessage, match="done"):
        b.start(back)  # the copy put back comes round: done, skipped


def test_a_redelivery_in_the_same_process_while_the_first_runs_is_put_back_not_acked_as_done(store):
    a = Process(store)
    try:
        message = a.job.message(7)
        first = a.start(message)
        with pytest.raises(SkipMessage):
            a.start(message)  # delivered again here while the first still runs
        [back] = a.parked()  # not acknowledged as done: a copy is on its way back
        assert back.message_id == message.message_id
        a.finish(first, TransientError("failed"))  # the first failed: the key is free
        a.start(back)  # the copy runs (no SkipMessage)
    finally:
        a.close()


def test_the_lease_of_a_running_delivery_is_renewed_and_ends_within_its_ttl_once_its_process_died(two, store):
    a, b = two
    message = a.job.message(7)
    a.start(message)
    other = f"{message.message_id}|another.1"
    deadline = time.monotonic() + 3 * LEASE_S  # three lease lengths: renewed all along
    while time.monotonic() < deadline:
        assert store.acquire(KEY, other, 1000).value == "redelivery"
        time.sleep(0.05)
    die(a)
    died = time.monotonic()
    with pytest.raises(SkipMessage):
        b.start(message)  # the broker gives B the dead process's message: the lease still runs
    [back] = b.parked()
    assert back.options["dedup_parks"] == 1
    wait_for(lambda: store.remaining_ms(KEY) == 0, timeout=5, interval=0.02, message="the lease to end")
    assert time.monotonic() - died < LEASE_S + 0.5  # within a lease (plus slack)
    b.start(back)  # runs now


def test_a_redelivery_waits_longer_each_time_but_never_past_the_end_of_the_lease(store):
    a, b = Process(store), Process(store)  # leases of 30 s
    try:
        message = a.job.message(7)
        a.start(message)
        delays = []
        for parks in (0, 1, 9):
            sent = int(time.time() * 1000)
            with pytest.raises(SkipMessage):
                b.start(a.job.message_with_options(args=(7,), dedup_parks=parks).copy(message_id=message.message_id))
            [back] = b.parked()
            assert back.options["dedup_parks"] == parks + 1
            delays.append(back.options["eta"] - sent)
        first, second, long = delays
        assert 495 <= first < 600 and 995 <= second < 1100  # 0.5 s, then twice as long
        assert 29_000 < long <= 30_000 + 100  # 256 s asked, but the lease ends within 30 s
    finally:
        a.close()
        b.close()


class TimeLimitOption(dramatiq.Middleware):
    """Declares the ``time_limit`` actor option without arming TimeLimit's alarm in this thread."""

    actor_options = {"time_limit"}


def test_a_lease_lasts_no_longer_than_the_time_limit_plus_the_margin(store, monkeypatch):
    monkeypatch.setattr(dedup_module, "LEASE_MARGIN_MS", 200, raising=False)
    a = Process(store, lease_ttl=5, time_limit=100, extra=(TimeLimitOption(),))
    try:
        message = a.job.message(7)
        a.start(message)  # and hangs past its time limit: the after-hook never comes
        assert 0 < store.remaining_ms(KEY) <= 300
        wait_for(lambda: store.remaining_ms(KEY) == 0, timeout=3, interval=0.02,
                 message="the lease to end after time limit + margin")
        assert a.dedup.time_limit_ms(a.broker, a.job.message_with_options(args=(1,), time_limit=0)) == 100
    finally:
        a.close()


def test_a_key_taken_at_fetch_belongs_to_that_delivery(two, store):
    a, b = two
    message = a.job.message(7)
    fetched = MessageProxy(message)
    a.broker.emit_after("fetch", [fetched])  # A took the key for this delivery; it waits in A's queue
    with pytest.raises(SkipMessage):
        b.start(message)  # a second delivery of the same message: put back
    assert len(b.parked()) == 1
    a.start(fetched)  # the fetched delivery runs on its lease
    a.finish(fetched)
    assert store.acquire(KEY, "other|x.1", 1000).value == "done"


def test_a_stopping_worker_frees_the_keys_of_messages_it_fetched_but_did_not_start(store):
    a = Process(store)
    try:
        fetched = MessageProxy(a.job.message(7))
        a.broker.emit_after("fetch", [fetched])
        assert store.remaining_ms(KEY) > 0
        a.broker.emit_before("worker_shutdown", None)
        assert store.remaining_ms(KEY) == 0  # requeued, its next delivery runs at once
    finally:
        a.close()


class RenewingStore(InMemoryDedupStore):
    """Runs ``during`` in the middle of a renewal: what a worker thread does meanwhile."""

    during: Any = None

    def renew(self, items):  # type: ignore[no-untyped-def]
        if self.during is not None:
            self.during()
        return super().renew(items)


def test_a_fetched_lease_that_starts_running_during_a_renewal_stays_held() -> None:
    store = RenewingStore()
    a = Process(store)
    try:
        fetched = MessageProxy(a.job.message(7))
        a.broker.emit_after("fetch", [fetched])
        store.during = lambda: a.start(fetched)
        a.dedup.renew()
        assert store.acquire(KEY, "other|x.1", 1000).value == "busy"  # still held for the run
        a.finish(fetched)
        assert store.acquire(KEY, "other|x.1", 1000).value == "done"
    finally:
        a.close()


def test_a_delivery_that_fails_during_a_renewal_leaves_its_key_free() -> None:
    store = RenewingStore()
    a = Process(store)
    try:
        running = a.start(a.job.message(7))
        store.during = lambda: a.finish(running, TransientError("failed"))  # released; its retry may run
        a.dedup.renew()  # found the key free and took it back for the ended delivery: given up again
        assert store.remaining_ms(KEY) == 0
    finally:
        a.close()


def test_a_run_whose_lease_the_renewals_dropped_still_records_its_completion(store):
    a = Process(store)
    try:
        running = a.start(a.job.message(7))
        a.dedup._leases.clear()  # e.g. dropped by a renewal that judged it at the very moment it started
        a.finish(running)
        assert store._get(KEY) == "done"
    finally:
        a.close()


class EncodingStore(InMemoryDedupStore):
    """Takes only what Redis can store (UTF-8)."""

    def acquire(self, key, token, lease_ms):  # type: ignore[no-untyped-def]
        (key + token).encode()
        return super().acquire(key, token, lease_ms)


def test_a_message_id_with_a_lone_surrogate_still_gets_a_lease_of_its_own() -> None:
    store = EncodingStore()
    a = Process(store)
    try:
        message = a.job.message(7).copy(message_id="id-\ud800")
        first = a.start(message)  # not taken for a store outage (deferred for ever)
        with pytest.raises(SkipMessage):
            a.start(message)  # its redelivery is still recognised as the same message: put back
        assert len(a.parked()) == 1
        a.finish(first)
        assert store._get(KEY) == "done"
    finally:
        a.close()


# --- item 8a: the completion before the acknowledgement ---

class KeyAtAck(dramatiq.Middleware):
    """Notes what the dedup store holds for KEY when the worker acknowledges a message."""

    def __init__(self, store: InMemoryDedupStore) -> None:
        self.store = store
        self.seen: list[str | None] = []

    def before_ack(self, broker, message) -> None:  # type: ignore[no-untyped-def]
        self.seen.append(self.store._get(KEY))


def test_the_completion_is_recorded_before_the_message_is_acknowledged(store):
    probe = KeyAtAck(store)
    a = Process(store, extra=(probe,))
    worker = dramatiq.Worker(a.broker, worker_threads=2, worker_timeout=20)
    worker.start()
    try:
        a.job.send(7)
        a.broker.join("q")
        worker.join()
    finally:
        worker.stop()
        a.close()
    assert probe.seen == ["done"]


def test_a_completion_nobody_writes_is_written_by_its_own_thread_after_a_while(store, monkeypatch):
    monkeypatch.setattr(dedup_module, "COMMIT_WAIT_S", 0.2)
    a = Process(store)
    try:
        running = a.start(a.job.message(7))
        a.dedup._committing = True  # a leader that will never come back (cut short mid-round)
        started = time.monotonic()
        a.finish(running)
        assert time.monotonic() - started < 2
        assert store.acquire(KEY, "other|x.1", 1000).value == "done"
        assert not a.dedup._committing and not a.dedup._pending
    finally:
        a.close()


class SlowStore(InMemoryDedupStore):
    """complete_many waits for ``go`` on its first call: a leader stuck on a slow store."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.calls = 0

    def complete_many(self, items):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 1:
            assert self.go.wait(10)
        super().complete_many(items)


def test_threads_finishing_together_share_a_round_and_do_not_wait_for_ever_on_a_slow_one(monkeypatch):
    monkeypatch.setattr(dedup_module, "COMMIT_WAIT_S", 0.2)
    store = SlowStore()
    a = Process(store)
    try:
        first, second = a.start(a.job.message(1)), a.start(a.job.message(2))
        leader = threading.Thread(target=a.finish, args=(first,))
        leader.start()
        wait_for(lambda: store.calls == 1, timeout=5, message="the leader writing")
        a.finish(second)  # queued behind the stuck leader: after COMMIT_WAIT_S it writes its own
        assert store.acquire("job:k2", "other|x.1", 1000).value == "done"
        assert leader.is_alive()
        store.go.set()
        leader.join(5)
        assert store.acquire("job:k1", "other|x.1", 1000).value == "done"
        assert not a.dedup._committing and not a.dedup._pending
    finally:
        store.go.set()
        a.close()


class CountingStore(InMemoryDedupStore):
    """complete_many takes a millisecond, like a round trip, and counts its calls."""

    calls = 0

    def complete_many(self, items):  # type: ignore[no-untyped-def]
        self.calls += 1
        time.sleep(0.001)
        super().complete_many(items)


def test_many_threads_finishing_at_once_each_see_their_completion_written_in_shared_rounds() -> None:
    store = CountingStore()
    a = Process(store)

    def work(base: int) -> None:
        for n in range(base, base + 200):
            a.finish(a.start(a.job.message(n)))
            assert store._get(f"job:k{n}") == "done"  # written before the worker thread goes on

    try:
        threads = [threading.Thread(target=work, args=(i * 1000,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads)
        assert sum(store._get(f"job:k{i * 1000 + n}") == "done" for i in range(8) for n in range(200)) == 1600
        assert store.calls < 1600  # shared rounds
        assert not a.dedup._committing and not a.dedup._pending
    finally:
        a.close()


def test_where_the_consumer_settles_batches_it_writes_the_done_marks_just_before_its_acks(store):
    a = Process(store)
    try:
        a.broker.settles_in_batches = True  # as atelier's RabbitMQ broker
        first, second = a.start(a.job.message(1)), a.start(a.job.message(2))
        a.finish(first)
        a.finish(second)
        # Not written by the worker threads; the keys stay held (and renewed) meanwhile.
        assert [store._get(f"job:k{n}") for n in (1, 2)] == [f"r:{m._dedup_done.holder}" for m in (first, second)]
        a.broker.emit_before("settle", [first, second])  # the consumer, about to send both acks
        assert [store._get(f"job:k{n}") for n in (1, 2)] == ["done", "done"]
        assert not a.dedup._awaiting and not a.dedup._leases
    finally:
        a.close()


def test_a_done_mark_no_consumer_settled_is_written_by_the_lease_thread(store):
    a = Process(store)
    try:
        a.broker.settles_in_batches = True
        running = a.start(a.job.message(1))
        a.finish(running)  # its connection closed before the drain that would have acked it
        a.dedup.settle_overdue(0)  # what the lease thread does after SETTLE_GRACE_S
        assert store._get("job:k1") == "done"
        a.broker.emit_before("settle", [running])  # a late drain after all: nothing twice
        assert not a.dedup._awaiting and not a.dedup._leases
    finally:
        a.close()


class FlakyStore(InMemoryDedupStore):
    down = False

    def complete_many(self, items):  # type: ignore[no-untyped-def]
        if self.down:
            raise ConnectionError("dedup store down")
        super().complete_many(items)


def test_a_completion_the_store_refuses_is_acknowledged_retried_and_keeps_its_window(monkeypatch):
    monkeypatch.setattr(dedup_module, "COMPLETION_RETRY_S", 0.05)
    store = FlakyStore()
    a = Process(store)
    try:
        message = a.job.message_with_options(args=(7,), dedup_window=3)
        store.down = True
        first = a.start(message)
        a.finish(first)  # the store refuses the completion; the message is acknowledged all the same
        completed = time.monotonic()
        assert not first.failed
        with pytest.raises(SkipMessage, match="done"):
            a.start(message)  # delivered again meanwhile: it completed here
        wait_for(lambda: time.monotonic() - completed > 1.0, timeout=5, message="an outage of a second")
        store.down = False
        wait_for(lambda: store._get(KEY) == "done", timeout=5, interval=0.02, message="the completion recorded")
        # The window counts from the completion, not from when the store took it.
        assert store.remaining_ms(KEY) <= 3000 - 1000 + 100
        assert not a.dedup._unrecorded
    finally:
        a.close()


# --- item 8b: a retry reported not enqueued that reached the broker ---

@pytest.fixture
def stack():
    store, letters = InMemoryDedupStore(), FakeDeadLetterStore()
    broker = AtelierStubBroker(middleware=middleware.build_stack(
        max_retries=3, min_backoff_ms=100, max_backoff_ms=200, dedup_store=lambda: store,
        dead_letter_store=lambda: letters))
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=20)
    worker.start()
    yield broker, letters
    worker.stop()
    broker.close()


def lose_the_confirm(broker, monkeypatch, before_raising=lambda: None) -> None:  # type: ignore[no-untyped-def]
    """The retry's enqueue reaches the broker, then raises as a lost publish confirm does."""
    real = broker.enqueue

    def enqueue(message, *, delay=None):  # type: ignore[no-untyped-def]
        sent = real(message, delay=delay)
        if delay is not None and message.options.get("retries") == 1:
            before_raising()
            raise ConnectionError("connection lost before the publish confirm")
        return sent

    monkeypatch.setattr(broker, "enqueue", enqueue)


def test_a_retry_reported_not_enqueued_is_dead_lettered_and_its_copy_skipped(stack, monkeypatch):
    broker, letters = stack
    runs = []

    @dramatiq.actor(broker=broker, queue_name="q")
    def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise TransientError("down once")

    lose_the_confirm(broker, monkeypatch)
    flaky.send()
    broker.join("q")  # and its delay queue: the retry's copy came round too
    [letter] = letters.letters.values()
    assert letter.reason == "retry_enqueue_failed"
    assert runs == [1]  # the copy that reached the broker did not run: the letter stands alone


def test_a_retry_reported_not_enqueued_that_already_runs_is_not_dead_lettered(stack, monkeypatch):
    broker, letters = stack
    runs, retry_started = [], threading.Event()

    @dramatiq.actor(broker=broker, queue_name="q")
    def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise TransientError("down once")
        retry_started.set()

    # The enqueue raises only once the retry is running (its confirm came too late).
    lose_the_confirm(broker, monkeypatch, before_raising=lambda: retry_started.wait(10))
    flaky.send()
    wait_for(lambda: len(runs) == 2, timeout=10, message="the retry run")
    broker.join("q")
    assert runs == [1, 1]
    assert letters.letters == {}  # it ran: nothing to dead-letter
    assert broker.dead_letters == []  # and the first delivery was acknowledged, not rejected
