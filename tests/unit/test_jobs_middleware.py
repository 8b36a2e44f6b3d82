"""The Jobs middleware on the StubBroker with the whole stack and in-memory state: records from
enqueue to end, progress, cancellation (queued, delayed, running), worker heartbeats."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest

import middleware
from adapters.metrics import InMemoryMetricsStore
from adapters.state.jobs import InMemoryJobStore
from adapters.state.memory import InMemoryBreakerStore, InMemoryDedupStore, InMemoryFallbackQueue
from brokers.dispatch import AtelierStubBroker
from domain.errors import InvalidPayload
from domain.services.jobs import JobService
from middleware.jobs import Jobs
from runtime.jobs import report_progress
from tests.unit.fakes import FakeDeadLetterStore
from tests.unit.stack import POLICY


class Env:
    def __init__(self) -> None:
        self.store = InMemoryJobStore()
        self.letters = FakeDeadLetterStore()
        self.dedup = InMemoryDedupStore()
        self.broker = AtelierStubBroker(middleware=middleware.build_stack(
            max_retries=2, min_backoff_ms=1, max_backoff_ms=20, metrics_store=InMemoryMetricsStore,
            dedup_store=lambda: self.dedup, breaker_store=InMemoryBreakerStore, fallback_queue=InMemoryFallbackQueue,
            breaker_policy=POLICY, dead_letter_store=lambda: self.letters, job_store=lambda: self.store,
            jobs_flush_interval=0.02, jobs_heartbeat=0.05))
        self.broker.emit_after("process_boot")
        self.jobs = next(m for m in self.broker.middleware if isinstance(m, Jobs))
        self.service = JobService(self.store, heartbeat_s=0.05)
        self.worker: dramatiq.Worker | None = None

    def start(self) -> None:
        self.worker = dramatiq.Worker(self.broker, worker_threads=2, worker_timeout=20)
        self.worker.start()

    def join(self) -> None:
        self.broker.join("q", fail_fast=False)
        assert self.worker is not None
        self.worker.join()
        self.jobs.flush()

    def show(self, message_id: str) -> dict[str, Any]:
        self.jobs.flush()
        view = self.service.show(message_id)
        assert view is not None
        return view


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    yield e
    if e.worker is not None:
        e.worker.stop()
    e.broker.close()


def test_a_message_is_followed_from_queued_to_done(env: Env) -> None:
    @dramatiq.actor(broker=env.broker, queue_name="q")
    def work(x: int) -> None:
        report_progress(0.5, "half")

    message = work.send_with_options(args=(1,), correlation_id="corr-1")
    queued = env.show(message.message_id)
    assert queued["status"] == "queued" and queued["actor"] == "work" and queued["queue"] == "q"
    assert queued["correlation_id"] == "corr-1" and queued["enqueued_at"] and queued["started_at"] is None
    env.start()
    env.join()
    done = env.show(message.message_id)
    assert done["status"] == "done" and done["attempts"] == 1
    assert done["started_at"] and done["finished_at"] and done["progress"] == {"fraction": 0.5, "note": "half"}


def test_a_permanent_failure_records_its_reason_and_dead_letter_id(env: Env) -> None:
    @dramatiq.actor(broker=env.broker, queue_name="q")
    def bad() -> None:
        raise InvalidPayload("nope")

    env.start()
    message = bad.send()
    env.join()
    view = env.show(message.message_id)
    (letter,) = env.letters.letters.values() if isinstance(env.letters.letters, dict) else env.letters.letters
    assert view["status"] == "failed" and view["reason"] == "permanent" and "nope" in view["error"]
    assert view["dead_letter_id"] == letter.id


def test_a_retried_message_counts_its_attempts(env: Env) -> None:
    calls = []

    @dramatiq.actor(broker=env.broker, queue_name="q")
    def flaky() -> None:
        calls.append(1)
        if len(calls) < 2:
            raise RuntimeError("once")

    env.start()
    message = flaky.send()
    env.join()
    view = env.show(message.message_id)
    assert view["status"] == "done" and view["attempts"] == 2


def test_a_retry_is_recorded_as_retrying_with_its_next_attempt_time(env: Env) -> None:
    @dramatiq.actor(broker=env.broker, queue_name="q", max_retries=1, min_backoff=60_000, max_backoff=60_000)
    def later() -> None:
        raise RuntimeError("again later")

    env.start()
    message = later.send()
    view = wait_for(lambda: (v := env.show(message.message_id))["status"] == "retrying" and v)
    assert view["next_attempt_at"] and "again later" in view["error"]


def test_a_queued_message_cancelled_never_runs(env: Env) -> None:
    ran = []

    @dramatiq.actor(broker=env.broker, queue_name="q")
    def work() -> None:
        ran.append(1)

    message = work.send()
    env.jobs.flush()
    cancelled = env.service.cancel(message.message_id)
    assert cancelled is not None and cancelled["status"] == "cancelled" and cancelled["cancel"] == "cancelled"
    assert env.service.cancel(message.message_id)["status"] == "cancelled"  # idempotent
    env.start()
    env.join()
    assert ran == [] and env.show(message.message_id)["status"] == "cancelled"
    assert env.letters.count() == 0


def test_a_delayed_message_cancelled_never_runs(env: Env) -> None:
    ran = []

    @dramatiq.actor(broker=env.broker, queue_name="q")
    def work() -> None:
        ran.append(1)

    env.start()
    message = work.send_with_options(delay=300)
    assert env.show(message.message_id)["status"] == "delayed"
    assert env.service.cancel(message.message_id)["cancel"] == "cancelled"
    env.join()
    assert ran == [] and env.show(message.message_id)["status"] == "cancelled"


def test_a_running_message_cancelled_stops_at_its_next_progress_point(env: Env) -> None:
    started, steps = threading.Event(), []

    @dramatiq.actor(broker=env.broker, queue_name="q", max_retries=3)
    def long() -> None:
        started.set()
        for i in range(500):
            steps.append(i)
            report_progress(i / 500, f"step {i}")
            time.sleep(0.01)

    env.start()
    message = long.send()
    assert started.wait(5)
    wait_for(lambda: env.show(message.message_id)["status"] == "running")
    assert env.service.cancel(message.message_id)["cancel"] == "requested"
    env.join()
    view = env.show(message.message_id)
    assert view["status"] == "cancelled" and view["reason"] == "cancelled while running"
    assert view["attempts"] == 1 and len(steps) < 500  # stopped, and not retried
    assert env.letters.count() == 0


def test_a_finished_job_cannot_be_cancelled_and_an_unknown_one_is_none(env: Env) -> None:
    @dramatiq.actor(broker=env.broker, queue_name="q")
    def work() -> None:
        pass

    env.start()
    message = work.send()
    env.join()
    assert env.service.cancel(message.message_id)["cancel"] == "too_late"
    assert env.show(message.message_id)["status"] == "done"
    assert env.service.cancel("no-such-id") is None and env.service.show("no-such-id") is None


def test_a_duplicate_is_recorded_as_skipped(env: Env) -> None:
    @dramatiq.actor(broker=env.broker, queue_name="q", dedup_key=lambda k: k)
    def once(k: str) -> None:
        pass

    env.start()
    first = once.send("k")
    env.join()
    second = once.send("k")
    env.join()
    assert env.show(first.message_id)["status"] == "done"
    view = env.show(second.message_id)
    assert view["status"] == "skipped" and view["reason"] == "duplicate"


def test_list_filters_by_actor_and_status(env: Env) -> None:
    @dramatiq.actor(broker=env.broker, queue_name="q")
    def good() -> None:
        pass

    @dramatiq.actor(broker=env.broker, queue_name="q")
    def bad() -> None:
        raise InvalidPayload("x")

    env.start()
    ids = [good.send().message_id, bad.send().message_id, good.send().message_id]
    env.join()
    assert {j["message_id"] for j in env.service.list(actor="good")} == {ids[0], ids[2]}
    assert [j["message_id"] for j in env.service.list(status="failed")] == [ids[1]]
    assert len(env.service.list(limit=1)) == 1
    with pytest.raises(ValueError, match="status must be one of"):
        env.service.list(status="bogus")


def test_workers_heartbeat_while_they_run_and_leave_when_they_stop(env: Env) -> None:
    @dramatiq.actor(broker=env.broker, queue_name="q")
    def work() -> None:
        pass

    env.start()
    (worker,) = wait_for(env.service.workers)
    assert worker["alive"] and worker["threads"] == 2 and "q" in worker["queues"] and worker["pid"]
    assert env.worker is not None
    env.worker.stop()
    env.worker = None
    assert env.service.workers() == []


def test_report_progress_outside_a_job_does_nothing() -> None:
    report_progress(0.3, "not in a job")


class _UnansweringStore(InMemoryJobStore):
    """A job store whose cancellation reads hang as a Redis that does not answer would (until its
    socket timeout), then fail."""

    def __init__(self, hang_s: float) -> None:
        super().__init__()
        self.hang_s = hang_s
        self.release = threading.Event()

    def cancelled_since(self, since_ms: int) -> tuple[list[str], int]:
        self.release.wait(self.hang_s)
        raise TimeoutError("Timeout reading from socket")


def test_a_job_store_that_does_not_answer_does_not_hold_up_the_worker_threads() -> None:
    # Review finding: before its first successful read of the cancellations, the worker read them
    # on the worker thread for every message; a job store (Redis) that does not answer held every
    # message for the store's socket timeout, and a store that kept failing made every message pay.
    store = _UnansweringStore(hang_s=6.0)
    broker = AtelierStubBroker(middleware=middleware.build_stack(
        max_retries=0, job_store=lambda: store, jobs_flush_interval=0.02, jobs_heartbeat=0.05))
    broker.emit_after("process_boot")
    done: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="q")
    def work(i: int) -> None:
        done.append(i)

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=20)
    worker.start()
    try:
        started = time.monotonic()
        for i in range(6):
            work.send(i)
        wait_for(lambda: len(done) == 6, timeout=8)
        assert time.monotonic() - started < 3.0, "messages waited for the unanswering job store"
    finally:
        store.release.set()
        worker.stop()
        broker.close()


def test_a_progress_of_nan_keeps_the_jobs_json_valid(env: Env) -> None:
    # Review finding: report_progress(nan) was stored as "nan" and shown as NaN, which is not JSON:
    # the jobs page's JSON.parse failed on /jobs?status=running, hiding every running job.
    import json

    @dramatiq.actor(broker=env.broker, queue_name="q")
    def work() -> None:
        report_progress(float("nan"), "half way?")

    env.start()
    message = work.send()
    env.join()
    view = env.show(message.message_id)
    json.dumps(view, allow_nan=False)
    env.store.write([("forged", 1, {"status": "running", "progress": "nan"})])  # written by an older worker
    json.dumps(env.service.list(), allow_nan=False)


def test_an_older_update_merged_before_a_flush_does_not_overwrite_a_newer_one():
    """The enqueue that moves a due delayed message can return after the message ran (RabbitMQ's
    confirm): its 'queued', ordered by when the enqueue began, must not undo the 'done' waiting in
    the same flush."""
    from adapters.state.jobs import InMemoryJobStore
    from middleware.jobs import Jobs

    store = InMemoryJobStore()
    jobs = Jobs(lambda: store, flush_interval=3600)
    jobs._put("m", 200 * 8 + 4, {"status": "done", "finished_at": 200})
    jobs._put("m", 100 * 8, {"status": "queued", "queue": "q"})
    jobs.flush()
    assert store.get("m")["status"] == "done" and store.get("m")["queue"] == "q"


def _hooks_env():
    """A Jobs middleware driven hook by hook, each worker thread its own context (CURRENT_JOB)."""
    import contextvars

    from dramatiq.broker import MessageProxy

    store = InMemoryJobStore()
    jobs = Jobs(lambda: store, flush_interval=3600)
    first = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    one, two = contextvars.Context(), contextvars.Context()
    one.run(jobs.before_process_message, None, MessageProxy(first))
    # Retries: the count goes up and the message is sent again after a short backoff (a 429 with
    # Retry-After: 0 is retried after 1 ms), while this thread's after-hooks still have to run.
    first.options["retries"] = 1
    retry = first.copy(queue_name="q.DQ", options={"eta": int(time.time() * 1000) + 1})
    one.run(jobs.after_enqueue, None, retry, 1)
    time.sleep(0.005)
    # Another worker thread takes the retry before this one's Jobs.after_process_message ran
    # (DeadLetters' and Dedup's after-hooks, and the GIL, come in between).
    second = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={"retries": 1},
                              message_id=first.message_id)
    two.run(jobs.before_process_message, None, MessageProxy(second))
    return store, jobs, first, second, one, two, MessageProxy


def test_a_failed_attempt_recorded_after_its_retry_started_does_not_undo_the_retrys_attempt():
    # The failed attempt's own update (its "running" fields, sent with the retry since the writer
    # never saw it running) is ordered by when its after-hook ran, after the retry started: it
    # overwrote the retry's attempts and started_at, and the final record said attempt 1.
    store, jobs, first, second, one, two, proxy = _hooks_env()
    started = list(jobs._running.values())[-1].started_at  # the retry's run, the last to start
    jobs.flush()  # the writer sees the retry running
    assert store.get(second.message_id)["attempts"] == "2"
    time.sleep(0.005)
    one.run(jobs.after_process_message, None, proxy(first), exception=RuntimeError("once"))
    jobs.flush()
    record = store.get(second.message_id)
    assert record["attempts"] == "2" and record["started_at"] == str(started)
    two.run(jobs.after_process_message, None, proxy(second))
    jobs.flush()
    record = store.get(second.message_id)
    assert record["status"] == "done" and record["attempts"] == "2" and record["started_at"] == str(started)


def test_a_retry_running_when_its_failed_attempt_is_recorded_is_shown_running():
    # The failed attempt's _end pops _running[message id], which is the retry's run by then: the
    # writer never sees the retry running, and its record says "retrying" until it ends.
    store, jobs, first, second, one, two, proxy = _hooks_env()
    one.run(jobs.after_process_message, None, proxy(first), exception=RuntimeError("once"))
    jobs.flush()
    record = store.get(second.message_id)
    assert record["status"] == "running" and record["attempts"] == "2"


def test_a_redelivery_of_a_done_message_skipped_after_the_writer_saw_it_keeps_done():
    # A redelivery (put back while it ran: a Redis worker's heartbeat lapsed, a RabbitMQ channel
    # closed) of a message that ended done, skipped by Dedup as a duplicate. The writer can see it
    # in _running between Jobs' before-hook and the skip (Dedup's and CircuitBreaker's before-hooks
    # run in between): its "running" replaces "done", and the skip then replaces "running".
    import types

    from dramatiq.broker import MessageProxy

    store = InMemoryJobStore()
    jobs = Jobs(lambda: store, flush_interval=3600)
    message = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    jobs.before_process_message(None, MessageProxy(message))
    jobs.after_process_message(None, MessageProxy(message))
    jobs.flush()
    assert store.get(message.message_id)["status"] == "done"
    time.sleep(0.002)
    again = MessageProxy(dramatiq.Message(**{**message.asdict(), "options": {}}))
    jobs.before_process_message(None, again)
    jobs.flush()  # the writer's pass, while a later before-hook decides to skip it
    jobs.after_skip_message(types.SimpleNamespace(actors={}), again)
    jobs.flush()
    assert store.get(message.message_id)["status"] == "done"


def test_an_exception_whose_text_fails_still_ends_the_record(env: Env) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text for you")

    @dramatiq.actor(broker=env.broker, queue_name="q", max_retries=0)
    def work() -> None:
        raise Unprintable()

    env.start()
    message = work.send()
    env.join()
    view = env.show(message.message_id)
    assert view["status"] == "failed" and "Unprintable" in view["error"]


def test_a_retry_that_starts_in_the_millisecond_of_its_re_enqueue_is_recorded_as_its_own_attempt(monkeypatch):
    # Review finding: a run's "running" is ordered started*8+1 and the "retrying" of the retry it
    # sent enqueue*8+3. The next attempt starts at or after that enqueue, but with a backoff of 0 or
    # 1 ms (Dramatiq's first backoff with min_backoff=1 is int(0.5 + uniform(0, 0.5)) = 0; a
    # Retry-After of 0 is 1 ms) the delay queue's consumer moves it and a waiting worker thread
    # takes it in the same millisecond (or on a host whose clock is a little behind): its "running"
    # is older than the "retrying" and only fills what is missing. The record says "retrying" while
    # attempt 2 runs and, the writer having seen it running, ends "done" with attempt 1's attempts
    # and started_at and the retry's next_attempt_at.
    import contextvars

    from dramatiq.broker import MessageProxy

    import middleware.jobs as jobs_module

    clock = [1_764_496_000_000]
    monkeypatch.setattr(jobs_module, "_ms", lambda: clock[0])
    store = InMemoryJobStore()
    jobs = Jobs(lambda: store, flush_interval=3600)
    first = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    one, two, consumer = contextvars.Context(), contextvars.Context(), contextvars.Context()
    one.run(jobs.before_process_message, None, MessageProxy(first))
    clock[0] += 3  # attempt 1 fails; Retries sends it again after a 0 ms backoff
    first.options["retries"] = 1
    retry = first.copy(queue_name="q.DQ", options={"eta": clock[0]})
    one.run(jobs.before_enqueue, None, retry, 0)
    one.run(jobs.after_enqueue, None, retry, 0)
    # The same millisecond: the delay queue's consumer moves it to its queue, a worker thread takes it.
    moved = retry.copy(queue_name="q")
    del moved.options["eta"]
    consumer.run(jobs.before_enqueue, None, moved, None)
    consumer.run(jobs.after_enqueue, None, moved, None)
    # What the worker takes is the retry as sent: its options (retries, the order floor) travel with it.
    second = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options=dict(moved.options),
                              message_id=first.message_id)
    two.run(jobs.before_process_message, None, MessageProxy(second))
    started = clock[0]
    jobs.flush()  # the writer sees attempt 2 running (attempt 1's after-hooks have not ended yet)
    while_running = store.get(first.message_id)
    clock[0] += 2
    one.run(jobs.after_process_message, None, MessageProxy(first), exception=RuntimeError("once"))
    clock[0] += 500
    two.run(jobs.after_process_message, None, MessageProxy(second))
    jobs.flush()
    record = store.get(first.message_id)
    assert record["status"] == "done"
    assert (record["attempts"], record["started_at"], record.get("next_attempt_at") or "") == ("2", str(started), "")
    assert while_running["status"] == "running" and while_running["attempts"] == "2"


def test_a_retry_that_started_though_its_enqueue_raised_is_not_recorded_failed_over_it():
    # Review finding: ClassifiedRetries' _retry_started (the retry's enqueue raised, a lost publish
    # confirm, but the retry reached the broker and started: "it carries the message on, nothing is
    # dead-lettered") leaves the message neither failed nor re-enqueued as far as Jobs sees (no
    # after_enqueue ran). Jobs records it FAILED, reason not_retried, ordered when its after-hook
    # runs: after the retry started, and after the retry ended "done" when the confirm timed out
    # late. The record ends "failed" for a message that succeeded.
    import contextvars

    from dramatiq.broker import MessageProxy

    store = InMemoryJobStore()
    jobs = Jobs(lambda: store, flush_interval=3600)
    first = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})
    one, two = contextvars.Context(), contextvars.Context()
    one.run(jobs.before_process_message, None, MessageProxy(first))
    time.sleep(0.002)
    first.options["retries"] = 1  # Retries counted the retry; its enqueue raised after reaching the broker
    second = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={"retries": 1},
                              message_id=first.message_id)
    two.run(jobs.before_process_message, None, MessageProxy(second))
    time.sleep(0.002)
    two.run(jobs.after_process_message, None, MessageProxy(second))  # the retry succeeded
    jobs.flush()
    assert store.get(first.message_id)["status"] == "done"
    time.sleep(0.002)
    # Attempt 1's after-hooks, once the enqueue gave up: the retry claimed the attempt, so
    # ClassifiedRetries neither fails the message nor re-enqueues it.
    one.run(jobs.after_process_message, None, MessageProxy(first), exception=RuntimeError("flaky"))
    jobs.flush()
    record = store.get(first.message_id)
    assert record["status"] == "done" and record["attempts"] == "2", record


def test_a_failed_attempts_error_is_not_lost_to_an_earlier_attempts_when_the_next_attempt_was_seen_first():
    # Review finding: the error of a failed attempt goes in at its retry's order (enqueue*8+3),
    # older than the next attempt's "running" once that started; an older update only fills what is
    # missing, and the next attempt's "running" does not clear the error, so when the writer saw
    # the next attempt running first (tiny backoff), attempt 2's error is dropped and the record
    # goes on showing attempt 1's: attempt 3 runs "because of" an error that is not the last one.
    import contextvars

    from dramatiq.broker import MessageProxy

    store = InMemoryJobStore()
    jobs = Jobs(lambda: store, flush_interval=3600)
    mid = "m-errors"

    def attempt(retries: int) -> dramatiq.Message:
        return dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={"retries": retries},
                                message_id=mid)

    def fail_and_retry(ctx: contextvars.Context, message: dramatiq.Message, error: str, *, hooks_end: bool) -> None:
        message.options["retries"] += 1
        # As Dramatiq's Retries does before it sends the retry (retries.py: options["traceback"]).
        message.options["traceback"] = f"Traceback (most recent call last):\n  ...\nRuntimeError: {error}\n"
        retry = message.copy(queue_name="q.DQ", options={"eta": int(time.time() * 1000) + 1})
        ctx.run(jobs.before_enqueue, None, retry, 1)
        ctx.run(jobs.after_enqueue, None, retry, 1)
        if hooks_end:
            ctx.run(jobs.after_process_message, None, MessageProxy(message), exception=RuntimeError(error))

    one, two, three = contextvars.Context(), contextvars.Context(), contextvars.Context()
    first = attempt(0)
    one.run(jobs.before_process_message, None, MessageProxy(first))
    time.sleep(0.002)
    fail_and_retry(one, first, "first failure", hooks_end=True)
    jobs.flush()
    time.sleep(0.005)
    second = attempt(1)
    two.run(jobs.before_process_message, None, MessageProxy(second))
    jobs.flush()
    time.sleep(0.002)
    fail_and_retry(two, second, "second failure", hooks_end=False)
    time.sleep(0.005)
    third = attempt(2)
    three.run(jobs.before_process_message, None, MessageProxy(third))
    jobs.flush()  # the writer sees attempt 3 running before attempt 2's after-hook ran
    time.sleep(0.002)
    two.run(jobs.after_process_message, None, MessageProxy(second), exception=RuntimeError("second failure"))
    jobs.flush()
    record = store.get(mid)
    assert record["status"] == "running" and record["attempts"] == "3"
    assert "second failure" in record["error"], record["error"]


@pytest.mark.parametrize("floor", [10**15, "soon", -5, None])
def test_a_producers_order_floor_far_ahead_or_not_a_number_is_ignored(floor: Any) -> None:
    from dramatiq.broker import MessageProxy

    from middleware.jobs import FLOOR_OPTION

    store = InMemoryJobStore()
    jobs = Jobs(lambda: store, flush_interval=3600)
    message = dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={FLOOR_OPTION: floor})
    before = int(time.time() * 1000)
    jobs.before_process_message(None, MessageProxy(message))
    jobs.after_process_message(None, MessageProxy(message))
    jobs.flush()
    record = store.get(message.message_id)
    assert record["status"] == "done" and int(record["order"]) < (int(time.time() * 1000) + 1) * 8
    assert int(record["order"]) >= before * 8


def test_an_actor_declared_with_jobs_false_keeps_no_records_and_the_others_do(env: Env) -> None:
    ran: list[int] = []

    @dramatiq.actor(broker=env.broker, queue_name="q", jobs=False)
    def tiny(x: int) -> None:
        report_progress(0.5, "no record to report to")
        ran.append(x)

    @dramatiq.actor(broker=env.broker, queue_name="q")
    def tracked(x: int) -> None:
        ran.append(x)

    untracked = [tiny.send(i) for i in range(3)] + [tiny.send_with_options(args=(9,), delay=10)]
    kept = tracked.send(7)
    env.start()
    env.join()
    wait_for(lambda: len(ran) == 5)
    env.jobs.flush()
    assert all(env.store.get(m.message_id) is None for m in untracked)
    assert env.show(kept.message_id)["status"] == "done"
    assert env.service.cancel(untracked[0].message_id) is None  # unknown, as the ops server answers 404
