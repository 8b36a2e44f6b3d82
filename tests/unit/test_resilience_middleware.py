"""Correlation, Dedup, DeadLetters, ClassifiedRetries (issue 545) and CircuitBreaker on the
StubBroker, with the in-memory state adapters, wired the way bootstrap/broker.py wires them."""

from __future__ import annotations

import threading

import dramatiq
import pytest
import structlog

import middleware
from adapters.sender import BrokerSender
from adapters.state.memory import InMemoryBreakerStore, InMemoryDedupStore, InMemoryFallbackQueue
from brokers.dispatch import AtelierStubBroker
from domain.clock import SystemClock
from domain.errors import InvalidPayload, TransientError
from domain.resilience import BreakerPolicy, CircuitState
from domain.services.deadletters import AlreadyReplayed, DeadLetterService
from domain.services.fallback import FallbackDrainer
from runtime import correlation_scope, message_context
from tests.services import drain_stub, wait_for
from tests.unit.stack import POLICY

# --- correlation ids ---

def test_correlation_id_is_new_from_the_producer_scope_or_explicit(stack):
    seen = []

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def record():
        seen.append(message_context().get("correlation_id"))

    plain = record.send()
    with correlation_scope("req-42"):
        scoped = record.send()
    explicit = record.send_with_options(correlation_id="given-1")
    stack.join()
    assert plain.options["correlation_id"] and plain.options["correlation_id"] not in ("req-42", "given-1")
    assert scoped.options["correlation_id"] == "req-42"
    assert explicit.options["correlation_id"] == "given-1"
    assert sorted(seen) == sorted([plain.options["correlation_id"], "req-42", "given-1"])
    assert "causation_id" not in plain.options  # sent from outside any actor


def test_a_message_sent_from_an_actor_inherits_the_correlation_id_and_names_its_cause(stack):
    contexts = {}

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def second():
        contexts["second"] = message_context()

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def first():
        contexts["first"] = message_context()
        second.send()

    sent = first.send_with_options(correlation_id="chain-1")
    stack.join()
    assert contexts["first"]["correlation_id"] == contexts["second"]["correlation_id"] == "chain-1"
    assert contexts["second"]["causation_id"] == sent.message_id
    assert "causation_id" not in contexts["first"]
    # Cleared after the message: nothing leaks into the next one on the thread.
    assert message_context().get("correlation_id") is None


def test_a_retry_keeps_its_correlation_and_gets_no_causation_from_itself(stack):
    runs = []

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def flaky():
        ctx = message_context()
        runs.append((ctx["correlation_id"], ctx.get("causation_id")))
        if len(runs) == 1:
            raise TransientError("once")

    flaky.send_with_options(correlation_id="c-9")
    stack.join()
    assert runs == [("c-9", None), ("c-9", None)]


# --- dedup windows ---

def test_duplicates_within_the_window_run_once_and_are_counted(stack):
    runs = []

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def effect(n):
        runs.append(n)

    for n in range(3):
        effect.send_with_options(args=(n,), dedup_key="k1", dedup_window=60)
    stack.join()
    assert len(runs) == 1
    assert sum(stack.count("atelier_dedup_skips_total").values()) == 2


def test_actor_option_derives_the_key_from_the_arguments(stack):
    runs = []

    @dramatiq.actor(broker=stack.broker, queue_name="q", dedup_key=lambda order, note=None: f"order:{order}",
                    dedup_window=60)
    def ship(order, note=None):
        runs.append((order, note))

    ship.send(1, note="a")
    stack.join()
    ship.send(1, note="b")
    ship.send(2)
    stack.join()
    assert runs == [(1, "a"), (2, None)]


def test_same_key_on_two_actors_is_two_things(stack):
    runs = []

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def a():
        runs.append("a")

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def b():
        runs.append("b")

    a.send_with_options(dedup_key="same")
    b.send_with_options(dedup_key="same")
    stack.join()
    assert sorted(runs) == ["a", "b"]


def test_a_failed_attempt_releases_the_key_so_the_retry_runs(stack):
    runs = []

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def flaky():
        runs.append(1)
        if len(runs) == 1:
            raise TransientError("down")

    flaky.send_with_options(dedup_key="k2")
    stack.join()
    flaky.send_with_options(dedup_key="k2")  # completed now: skipped
    stack.join()
    assert len(runs) == 2
    assert stack.letters.letters == {}


def test_of_two_concurrent_duplicates_only_one_runs(stack):
    started, release, runs = threading.Event(), threading.Event(), []

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def slow():
        runs.append(1)
        started.set()
        release.wait(10)

    slow.send_with_options(dedup_key="k3")
    assert started.wait(10)
    slow.send_with_options(dedup_key="k3")  # the other worker thread takes it while the first runs
    wait_for(lambda: stack.count("atelier_dedup_skips_total"), timeout=10, message="busy skip")
    release.set()
    stack.join()
    assert len(runs) == 1
    assert list(stack.count("atelier_dedup_skips_total")) == [("q", "slow", "busy")]


def test_dedup_store_state_machine():
    store = InMemoryDedupStore()
    assert store.acquire("k", "m1", 60_000) == "acquired"
    assert store.acquire("k", "m2", 60_000) == "busy"
    assert store.acquire("k", "m1", 60_000) == "acquired"  # a redelivery of the same message
    store.release("k", "m2")  # not its holder: nothing happens
    assert store.acquire("k", "m2", 60_000) == "busy"
    store.release("k", "m1")
    assert store.acquire("k", "m2", 60_000) == "acquired"
    store.complete("k", "m2", 60_000)
    assert store.acquire("k", "m3", 60_000) == "done"
    store.complete("short", "m", 1)
    wait_for(lambda: store.acquire("short", "m4", 60_000) == "acquired", timeout=5, message="window end")


# --- classified retries and dead letters ---

def test_permanent_error_is_dead_lettered_at_once_with_everything(stack):
    runs = []

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def bad(x, flag=False):
        runs.append(x)
        raise InvalidPayload(f"bad x {x}")

    sent = bad.send_with_options(args=(7,), kwargs={"flag": True}, correlation_id="c-p")
    stack.join()
    assert runs == [7]
    [letter] = stack.letters.letters.values()
    assert (letter.actor, letter.queue, letter.args, letter.kwargs) == ("bad", "q", [7], {"flag": True})
    assert letter.reason == "permanent" and letter.attempts == 1
    assert letter.error_type == "domain.errors.InvalidPayload" and letter.error == "bad x 7"
    assert "raise InvalidPayload" in letter.traceback
    assert letter.correlation_id == "c-p" and letter.message_id == sent.message_id
    assert letter.enqueued_at <= letter.failed_at
    assert len(stack.broker.dead_letters) == 1  # and nacked, as Dramatiq does
    assert sum(stack.count("atelier_dead_letters_total").values()) == 1


def test_transient_error_is_retried_then_dead_lettered(stack):
    runs = []

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def poison():
        runs.append(1)
        raise TransientError("still down")

    poison.send()
    stack.join()
    assert len(runs) == 3  # first try + max_retries=2
    [letter] = stack.letters.letters.values()
    assert letter.reason == "retries_exhausted" and letter.attempts == 3
    assert "traceback" not in letter.options  # stored in its own field


def test_a_retry_that_cannot_be_enqueued_is_dead_lettered_not_acked(stack, monkeypatch):
    runs = []

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def flaky():
        runs.append(1)
        raise ConnectionError("dependency down")

    real_enqueue = stack.broker.enqueue

    def enqueue(message, *, delay=None):
        if delay is not None:  # the retry: the broker is down now
            raise ConnectionError("broker down")
        return real_enqueue(message, delay=delay)

    monkeypatch.setattr(stack.broker, "enqueue", enqueue)
    flaky.send()
    stack.join()
    assert len(runs) == 1
    [letter] = stack.letters.letters.values()
    assert letter.reason == "retry_enqueue_failed"
    assert "broker down" in letter.error
    assert len(stack.broker.dead_letters) == 1  # rejected (nacked), not acknowledged


def test_a_dead_letter_whose_write_fails_comes_back_and_is_written(stack, monkeypatch):
    import middleware.deadletters as dl

    monkeypatch.setattr(dl, "WRITE_RETRY_MS", 5)
    runs = []

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def bad():
        runs.append(1)
        if stack.letters.failed_writes >= 2:
            stack.letters.down = False
        raise InvalidPayload("no")

    stack.letters.down = True
    original = bad.send()

    def written():
        if stack.letters.failed_writes >= 2:
            stack.letters.down = False  # the database is back
        return stack.letters.letters

    wait_for(written, timeout=20, message="dead letter written after the store came back")
    stack.join()
    assert runs == [1]  # the actor ran once: later rounds only wrote the letter
    [letter] = stack.letters.letters.values()
    assert letter.message_id == original.message_id and letter.reason == "permanent"
    # Each failed write was counted, so a store that stays down shows on /metrics.
    assert sum(stack.count("atelier_dead_letter_write_failures_total").values()) == stack.letters.failed_writes >= 2


def test_replay_reenqueues_with_the_same_correlation_id_and_runs_once(stack):
    runs = []
    fail = [True]

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def charge(amount):
        ctx = message_context()
        runs.append((amount, ctx["correlation_id"], ctx["retries"]))
        if fail[0]:
            raise InvalidPayload("card refused")

    charge.send_with_options(args=(5,), correlation_id="c-r", dedup_key="charge:1")
    stack.join()
    [letter] = stack.letters.letters.values()
    fail[0] = False
    service = DeadLetterService(stack.letters, BrokerSender(stack.broker), SystemClock())
    service.replay(letter.id)
    stack.join()
    assert runs == [(5, "c-r", 0), (5, "c-r", 0)]
    assert stack.letters.letters[letter.id].replayed_at is not None
    with pytest.raises(AlreadyReplayed):
        service.replay(letter.id)
    service.replay(letter.id, force=True)  # the side effect happened: the dedup key absorbs it
    stack.join()
    assert len(runs) == 2


def test_replay_of_a_letter_without_a_key_runs_once_however_often_it_is_sent(stack):
    runs = []

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def once(n):
        runs.append(n)
        if len(runs) == 1:
            raise InvalidPayload("first time")

    once.send(1)
    stack.join()
    [letter] = stack.letters.letters.values()
    service = DeadLetterService(stack.letters, BrokerSender(stack.broker), SystemClock())
    service.replay(letter.id)
    service.replay(letter.id, force=True)  # e.g. two operators at once
    stack.join()
    assert runs == [1, 1]



def test_replay_sends_the_whole_correlation_id_when_the_store_shortened_it(stack):
    cid = "trace-" + "x" * 90  # longer than the store's 64-character column
    seen = []

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def traced():
        seen.append(message_context()["correlation_id"])
        if len(seen) == 1:
            raise InvalidPayload("first time")

    traced.send_with_options(correlation_id=cid)
    stack.join()
    [letter] = stack.letters.letters.values()
    letter.correlation_id = cid[:64]  # what SqlDeadLetterStore keeps in the column
    DeadLetterService(stack.letters, BrokerSender(stack.broker), SystemClock()).replay(letter.id)
    stack.join()
    assert seen == [cid, cid]

# --- circuit breaker ---

def _guarded(stack, fallback: bool | str = False, reset: float = 1.0):
    calls = {"down": True, "runs": [], "attempts": 0}

    # The reset timeout outlasts the sends below even on a loaded machine (a message processed
    # after it would be a half-open trial, not parked).
    @dramatiq.actor(broker=stack.broker, queue_name="q", circuit=lambda n, channel="wa": f"channel:{channel}",
                    circuit_fallback=fallback, max_retries=0, circuit_reset_timeout=reset)
    def deliver(n, channel="wa"):
        calls["attempts"] += 1
        if n == "bad":
            raise InvalidPayload("bad input never counts")
        if calls["down"]:
            raise TransientError("channel down")
        calls["runs"].append(n)

    return deliver, calls


def test_only_dependency_failures_open_the_circuit(stack):
    deliver, calls = _guarded(stack)
    for _ in range(5):
        deliver.send("bad")
    stack.join()
    assert stack.breakers.states().get("channel:wa", CircuitState.CLOSED) is CircuitState.CLOSED
    for n in range(3):
        deliver.send(n)
    stack.join()
    assert stack.breakers.states()["channel:wa"] is CircuitState.OPEN
    assert list(stack.count("atelier_circuit_transitions_total")) == [("channel:wa", "open")]


def test_open_circuit_parks_messages_and_runs_each_once_after_recovery(stack):
    deliver, calls = _guarded(stack)
    for n in range(3):
        deliver.send(n)  # fail (max_retries=0): dead-lettered, and they open the circuit
    stack.join()
    assert stack.breakers.states()["channel:wa"] is CircuitState.OPEN
    attempts = calls["attempts"]
    calls["down"] = False
    for n in range(10, 16):
        deliver.send(n)
    stack.join()  # waits for the delayed (parked) messages too
    assert calls["attempts"] - attempts == 6  # not run while open: parked, then each run once
    assert sorted(calls["runs"]) == list(range(10, 16))
    assert stack.breakers.states()["channel:wa"] is CircuitState.CLOSED
    assert sum(stack.count("atelier_circuit_parked_total").values()) >= 5
    assert {letter.args[0] for letter in stack.letters.letters.values()} == {0, 1, 2}


def test_other_circuits_are_not_affected(stack):
    deliver, calls = _guarded(stack)
    for n in range(3):
        deliver.send(n, channel="wa")
    stack.join()
    calls["down"] = False
    attempts = calls["attempts"]
    deliver.send(99, channel="ig")
    stack.join("q")
    assert calls["runs"] == [99] and calls["attempts"] == attempts + 1


def test_fallback_queue_holds_parked_messages_until_the_drain_sends_them_back(stack):
    deliver, calls = _guarded(stack, fallback=True, reset=3600)
    for n in range(3):
        deliver.send(n)
    stack.join()
    for n in range(10, 14):
        deliver.send(n)
    stack.join()
    assert stack.fallback.lengths() == {"channel:wa": 4}
    assert calls["runs"] == []
    calls["down"] = False
    sender = BrokerSender(stack.broker)
    policy = BreakerPolicy(failure_threshold=3, reset_timeout_ms=3_600_000)
    drainer = FallbackDrainer(stack.fallback, stack.breakers, sender, policy=policy, batch_size=2)
    assert drainer.drain() == {}  # open, reset timeout not over: nothing goes
    stack.breakers._circuits["channel:wa"].opened_at -= 3_600_000  # an hour later
    assert drainer.drain() == {"channel:wa": 1}  # past the reset: one probe (half_open_trials)
    stack.join()
    assert stack.breakers.states()["channel:wa"] is CircuitState.CLOSED
    while stack.fallback.lengths()["channel:wa"]:
        drainer.drain()  # closed: batches of batch_size
        stack.join()
    assert sorted(calls["runs"]) == [10, 11, 12, 13]


def test_an_open_circuit_can_hand_messages_to_a_fallback_actor(stack):
    deliver, calls = _guarded(stack, fallback="sms")  # type: ignore[arg-type]
    handed = []

    @dramatiq.actor(broker=stack.broker, queue_name="q", actor_name="sms")
    def sms(n, channel="wa"):
        ctx = message_context()
        handed.append((n, ctx["correlation_id"], ctx.get("causation_id")))

    for n in range(3):
        deliver.send(n)
    stack.join()
    parked = deliver.send_with_options(args=(42,), correlation_id="c-fb")
    stack.join()
    assert handed == [(42, "c-fb", parked.message_id)]
    assert 42 not in calls["runs"]


def test_drain_never_loses_a_message_when_the_enqueue_or_the_drainer_fails():
    class FlakySender:
        def __init__(self):
            self.sent, self.fail_after = [], 1

        def requeue(self, item):
            if len(self.sent) >= self.fail_after:
                raise ConnectionError("broker down")
            self.sent.append(item)

    queue, breakers = InMemoryFallbackQueue(), InMemoryBreakerStore()
    for i in range(5):
        queue.push("c", f"m{i}".encode())
    sender = FlakySender()
    drainer = FallbackDrainer(queue, breakers, sender, policy=POLICY, batch_size=10)
    assert drainer.drain() == {"c": 1}
    assert queue.lengths() == {"c": 4} and sender.sent == [b"m0"]
    # A drainer that dies between claim and enqueue leaves items in processing: the next one
    # puts them back first, in order.
    queue.claim("c", 2)
    sender.fail_after = 100
    assert drainer.drain() == {"c": 4}
    assert sender.sent == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert queue.lengths() == {"c": 0}


def test_a_run_that_never_calls_the_dependency_is_no_evidence_for_its_circuit(stack):
    import time

    from runtime import dependency_reached

    calls = []

    @dramatiq.actor(broker=stack.broker, queue_name="q", circuit="dep", circuit_requires_contact=True, max_retries=0)
    def guarded(reach: bool) -> None:
        calls.append(reach)
        if reach:
            dependency_reached()

    now = int(time.time() * 1000)
    for _ in range(POLICY.failure_threshold):
        stack.breakers.record_failure("dep", now, POLICY)
    time.sleep(POLICY.reset_timeout_ms / 1000 + 0.05)  # open long enough: the next run is a trial
    guarded.send(False)  # the work was already done: the channel is not called
    stack.join()
    assert calls == [False]
    assert stack.breakers.states()["dep"] is CircuitState.HALF_OPEN  # not closed on no evidence
    guarded.send(True)  # the trial was handed back: this one may run, and calls the dependency
    stack.join()
    assert calls == [False, True]
    assert stack.breakers.states()["dep"] is CircuitState.CLOSED


def test_breaker_store_half_open_trials_and_reopening():
    store, now = InMemoryBreakerStore(), 1_000_000
    policy = BreakerPolicy(failure_threshold=2, window_ms=1000, reset_timeout_ms=500, half_open_trials=2)
    assert store.record_failure("c", now, policy) is None
    assert store.record_failure("c", now + 2000, policy) is None  # the first left the window
    assert store.record_failure("c", now + 2100, policy) == ("closed", "open")
    assert not store.allow("c", now + 2200, policy).allowed
    d = store.allow("c", now + 2700, policy)
    assert d.allowed and d.trial and d.transition == ("open", "half_open")
    assert store.allow("c", now + 2700, policy).trial
    refused = store.allow("c", now + 2700, policy)
    assert not refused.allowed and refused.retry_at_ms == now + 3200
    assert store.record_failure("c", now + 2800, policy) == ("half_open", "open")
    d = store.allow("c", now + 3400, policy)
    assert store.record_success("c", d.trial) == ("half_open", "closed")


# --- settings and wiring ---

def test_breaker_settings_are_validated_and_become_the_default_policy():
    from bootstrap.settings import ConfigError, load_settings

    s = load_settings(circuit_failure_threshold="4", circuit_window_s="10", circuit_reset_timeout_s="2.5",
                      circuit_half_open_trials="2", fallback_batch_size="7")
    assert s.breaker_policy == BreakerPolicy(4, 10_000, 2_500, 2) and s.fallback_batch_size == 7
    with pytest.raises(ConfigError, match="CIRCUIT_FAILURE_THRESHOLD"):
        load_settings(circuit_failure_threshold="0")
    with pytest.raises(ConfigError, match="FALLBACK_BATCH_SIZE"):
        load_settings(fallback_batch_size="lots")


def test_a_rabbitmq_broker_without_redis_stops_start_up(capsys):
    from bootstrap.broker import build_broker
    from bootstrap.settings import ConfigError, load_settings

    with pytest.raises(ConfigError):
        build_broker(load_settings(broker_url="amqp://guest:guest@127.0.0.1:1/", redis_url=""))
    assert "REDIS_URL: must be set with a RabbitMQ broker" in capsys.readouterr().err



def test_parked_and_put_back_messages_are_never_delayed_past_rabbitmqs_consumer_timeout(stack, monkeypatch):
    # RabbitMQ takes back a delivery left unacked past its consumer_timeout (30 min by default),
    # and Dramatiq holds a delayed message unacked until its eta: a longer delay makes the server
    # close the delay-queue consumer and redeliver everything it holds (run twice; dramatiq #827).
    # A circuit open for two hours, or a dead-letter store down for hours, must not ask for that.
    from datetime import UTC, datetime

    from domain.resilience import DeadLetter

    delays = []
    enqueue = stack.broker.enqueue

    def recording(message, *, delay=None):  # type: ignore[no-untyped-def]
        if delay is not None:
            delays.append(("dead_letter" in message.options, delay))
        return enqueue(message, delay=delay)

    monkeypatch.setattr(stack.broker, "enqueue", recording)
    deliver, calls = _guarded(stack, reset=7200)
    for n in range(3):
        deliver.send(n)  # opens the circuit for two hours
    stack.join()
    deliver.send(10)  # parked
    stack.letters.down = True
    now = datetime.now(UTC)
    letter = DeadLetter(id="l1", message_id="m1", actor="deliver", queue="q", args=[11], kwargs={}, options={},
                        error_type="E", error="e", traceback="", reason="permanent", attempts=1, enqueued_at=now,
                        failed_at=now)
    # Its tenth write attempt: the store has been down for hours.
    deliver.send_with_options(args=(11,), dead_letter=letter.asdict(), dead_letter_attempts=10)
    wait_for(lambda: {carries for carries, _ in delays} == {False, True}, timeout=10,
             message="a parked message and a letter put back")
    assert max(d for _, d in delays) <= 15 * 60_000


def test_log_lines_carry_the_message_context_and_nothing_leaks_into_the_next_message():
    import io
    import json
    import logging

    from bootstrap.logging import configure_logging
    from bootstrap.settings import Settings

    configure_logging(Settings(log_format="json"), force=True)
    captured = io.StringIO()
    logging.getLogger().handlers[0].stream = captured
    log = structlog.get_logger("test")
    broker = AtelierStubBroker(middleware=middleware.build_stack(max_retries=0))

    @dramatiq.actor(broker=broker, queue_name="q")
    def noisy(step):
        if step == 1:
            structlog.contextvars.bind_contextvars(upload_id="u-1")
        log.info("working", step=step)

    first = noisy.send_with_options(args=(1,), correlation_id="c-log")
    second = noisy.send(2)
    try:
        drain_stub(broker)  # one worker thread: both messages on the same thread
    finally:
        configure_logging(Settings(), force=True)
    lines = [json.loads(line) for line in captured.getvalue().splitlines() if '"working"' in line]
    by_step = {line["step"]: line for line in lines}
    assert by_step[1]["message_id"] == first.message_id and by_step[1]["correlation_id"] == "c-log"
    assert by_step[1]["actor"] == "noisy" and by_step[1]["upload_id"] == "u-1"
    assert by_step[2]["message_id"] == second.message_id
    assert by_step[2]["correlation_id"] == second.options["correlation_id"] != "c-log"
    assert "upload_id" not in by_step[2]  # bound by the first message, cleared after it


def test_a_correlation_scope_inside_an_actor_overrides_the_running_message_for_what_it_sends(stack):
    sent = {}

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def child():
        pass

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def parent():
        sent["inherited"] = child.send()
        with correlation_scope("fresh-1"):
            sent["scoped"] = child.send()

    started = parent.send_with_options(correlation_id="outer")
    stack.join()
    assert sent["inherited"].options["correlation_id"] == "outer"
    assert sent["scoped"].options["correlation_id"] == "fresh-1"
    assert sent["scoped"].options["causation_id"] == started.message_id


def _old(message, age_ms: int = 60_000):
    import dataclasses

    return dataclasses.replace(message, message_timestamp=message.message_timestamp - age_ms)


def test_a_message_past_its_max_age_is_dead_lettered_as_expired_unless_its_actor_opts_out(stack):
    runs = []

    @dramatiq.actor(broker=stack.broker, queue_name="q", max_age=30_000)
    def report(n):
        runs.append(n)

    @dramatiq.actor(broker=stack.broker, queue_name="q", max_age=30_000, dead_letter_expired=False)
    def tick(n):
        runs.append(n)

    stack.broker.enqueue(_old(report.message_with_options(args=(1,), correlation_id="c-old")))
    stack.broker.enqueue(_old(tick.message(2)))
    stack.broker.enqueue(report.message(3))  # young enough: runs
    stack.join()
    assert runs == [3]
    [letter] = stack.letters.letters.values()  # the tick expired as intended: no letter
    assert (letter.actor, letter.reason, letter.attempts, letter.args) == ("report", "expired", 0, [1])
    assert "max_age of 30000 ms" in letter.error and letter.correlation_id == "c-old"
    assert letter.error_type == "middleware.deadletters.MessageExpired"
    assert stack.count("atelier_dead_letters_total") == {("q", "report", "expired"): 1}


def test_a_letter_carrier_that_expired_on_the_way_still_writes_its_letter(stack):
    from datetime import UTC, datetime

    from domain.resilience import DeadLetter

    runs = []

    @dramatiq.actor(broker=stack.broker, queue_name="q", max_age=30_000)
    def charge(n):
        runs.append(n)

    now = datetime.now(UTC)
    letter = DeadLetter(id="l-carried", message_id="m-c", actor="charge", queue="q", args=[4], kwargs={}, options={},
                        error_type="E", error="card refused", traceback="", reason="permanent", attempts=1,
                        enqueued_at=now, failed_at=now)
    # Put back when the store was down, and back again only after its max_age: AgeLimit fails it
    # before DeadLetters' before-hook sees it; the letter must not end in the broker's XQ alone.
    carrier = charge.message_with_options(args=(4,), dead_letter=letter.asdict(), dead_letter_attempts=1)
    stack.broker.enqueue(_old(carrier))
    stack.join()
    assert runs == []
    [stored] = stack.letters.letters.values()
    assert (stored.id, stored.reason, stored.error) == ("l-carried", "permanent", "card refused")


def test_a_second_delivery_of_a_message_still_running_here_is_put_back_not_run_alongside(stack):
    # RabbitMQ delivers a message again when the connection it came on drops, while a worker
    # thread still runs it. The second delivery neither runs alongside the first nor is
    # acknowledged as done (if this process died now, it would be the only copy): it is put back,
    # and skipped as done when it comes round after the first completed. It must not release the
    # lease, nor the circuit state, of the running one.
    started, release = threading.Event(), threading.Event()
    runs = []

    @dramatiq.actor(broker=stack.broker, queue_name="q", dedup_key=lambda n: f"pay:{n}", circuit="bank")
    def pay(n):
        runs.append(n)
        started.set()
        assert release.wait(10)

    message = pay.message(7)
    stack.broker.enqueue(message)
    assert started.wait(10)
    stack.broker.enqueue(message)  # the same message, delivered again while the first runs
    wait_for(lambda: stack.count("atelier_dedup_skips_total"), timeout=10, message="second delivery put back")
    assert stack.dedup.acquire("pay:pay:7", "someone-else|x.1", 60_000).value == "busy"  # lease still held
    release.set()
    stack.join()  # the copy put back comes round too
    assert runs == [7]
    assert stack.count("atelier_dedup_skips_total") == {("q", "pay", "redelivery"): 1, ("q", "pay", "done"): 1}
    assert stack.dedup.acquire("pay:pay:7", "later|x.1", 60_000).value == "done"  # written before the ack
    dedup, breaker = (next(m for m in stack.broker.middleware if type(m).__name__ == name)
                      for name in ("Dedup", "CircuitBreaker"))
    assert not dedup._leases and not breaker._running  # nothing left behind
    pay.send(7)
    stack.join()
    assert runs == [7]  # done within its window
