"""Messages from producers that are not atelier's, on the StubBroker with the whole stack: each ends
processed or as exactly one dead letter with its reason, at once, without a retry, and the worker
keeps all its threads (issue 15)."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime

import dramatiq
import pytest
from dramatiq import Message
from dramatiq.middleware import Middleware

from adapters.sender import BrokerSender
from adapters.state.letters import InMemoryLetterFallback
from brokers.admission import CARRIER_ACTOR
from domain.clock import SystemClock
from domain.errors import TransientError
from domain.resilience import DeadLetter, bounded_letter
from domain.services.deadletters import CannotReplay, DeadLetterService
from middleware.deadletters import FALLBACK_AFTER_ATTEMPTS, DeadLetters, letter_of
from middleware.retries import RETRY_AFTER_MAX_MS, retry_after_ms
from tests.services import wait_for
from tests.unit.stack import Stack


def declare(stack: Stack, ran: list):  # type: ignore[no-untyped-def]
    @dramatiq.actor(broker=stack.broker, queue_name="q", max_retries=5)
    def resize(image_id: str, size: int = 128) -> None:
        ran.append((image_id, size))

    return resize


def raw(stack: Stack, body: bytes | dict, queue: str = "q") -> None:
    """A body written to the queue as another producer would, past every enqueue hook."""
    stack.broker.queues[queue].put(body if isinstance(body, bytes) else json.dumps(body).encode())


def message(**fields) -> dict:  # type: ignore[no-untyped-def]
    base = {"queue_name": "q", "actor_name": "resize", "args": ["img-1"], "kwargs": {}, "options": {},
            "message_id": f"m-{time.monotonic_ns()}", "message_timestamp": int(time.time() * 1000)}
    return {**base, **fields}


def letters_by_reason(stack: Stack) -> dict[str, list[DeadLetter]]:
    out: dict[str, list[DeadLetter]] = {}
    for letter in stack.letters.letters.values():
        out.setdefault(letter.reason, []).append(letter)
    return out


def threads_alive(stack: Stack) -> bool:
    return all(t.is_alive() for t in stack.worker.workers) and all(
        t.is_alive() for t in stack.worker.consumers.values())


def test_arguments_that_do_not_fit_the_actor_are_dead_lettered_at_once_naming_the_signature(stack):
    ran: list = []
    resize = declare(stack, ran)
    resize.send("a", 1, 2)  # one too many
    resize.send_with_options(args=("b",), kwargs={"colour": "red"})  # unknown keyword
    resize.send()  # missing the image id
    stack.join()
    letters = letters_by_reason(stack)["invalid_arguments"]
    assert len(letters) == 3 and ran == []
    assert all(letter.attempts == 1 for letter in letters)  # ran once, never retried
    assert all("resize(image_id, size=128) cannot take" in letter.error for letter in letters)
    assert any("unexpected keyword argument 'colour'" in letter.error for letter in letters)
    assert stack.count("atelier_dead_letters_total") == {("q", "resize", "invalid_arguments"): 3}


def test_a_type_error_inside_the_actor_is_still_retried(stack):
    calls: list = []

    @dramatiq.actor(broker=stack.broker, queue_name="q", max_retries=1, min_backoff=1, max_backoff=5)
    def buggy(n: int) -> None:
        calls.append(n)
        raise TypeError("a bug, not the message's fault")

    buggy.send(1)
    stack.join()
    (letter,) = stack.letters.letters.values()
    assert letter.reason == "retries_exhausted" and calls == [1, 1]


def test_every_kind_of_junk_ends_as_one_letter_with_its_reason_and_good_messages_still_run(stack):
    ran: list = []
    resize = declare(stack, ran)
    junk = {
        "undecodable": [b"\xff\xfe not json", b"[1, 2, 3]", b'{"queue_name": "q"}'],
        "invalid_arguments": [message(args="img-1"), message(args={"a": 1}), message(kwargs=[1])],
        "invalid_options": [message(options={"retries": "abc"}), message(options={"eta": "soon"}),
                            message(options={"max_retries": -1.5}), message(options={"dedup_window": "x"}),
                            message(options={"time_limit": math.inf}), message(options={"correlation_id": 5}),
                            message(options=[1, 2])],
        "invalid_message": [message(message_id="x" * 1000), message(message_id=["a"]), message(message_id=7),
                            message(message_timestamp="yesterday"), message(actor_name="")],
        "unknown_actor": [message(actor_name="no_such_actor", args=[1, {"k": "v"}])],
    }
    for bodies in junk.values():
        for body in bodies:
            raw(stack, body)
    raw(stack, message(queue_name="another_queue", args=["moved"]))  # runs: its queue is where it came from
    resize.send("good")
    stack.join()
    wait_for(lambda: len(stack.letters.letters) == sum(map(len, junk.values())), timeout=5,
             message="one letter per junk message")
    got = {reason: len(letters) for reason, letters in letters_by_reason(stack).items()}
    assert got == {reason: len(bodies) for reason, bodies in junk.items()}, got
    assert sorted(ran) == [("good", 128), ("moved", 128)]
    assert threads_alive(stack)
    unknown = letters_by_reason(stack)["unknown_actor"][0]
    assert unknown.actor == "no_such_actor" and unknown.args == [1, {"k": "v"}]
    undecodable = letters_by_reason(stack)["undecodable"]
    assert {letter.options["raw_body_bytes"] for letter in undecodable} == {11, 9, 19}
    assert all(len(letter.message_id) <= 64 for letter in stack.letters.letters.values())
    # Nothing was retried: every rejected delivery is in the broker's own XQ once, as a carrier.
    rejected = stack.broker.dead_letters
    assert len(rejected) == sum(map(len, junk.values())) and all(m.actor_name == CARRIER_ACTOR for m in rejected)


def test_a_message_for_an_actor_this_worker_lacks_is_a_dead_letter_with_its_arguments(stack):
    declare(stack, [])
    stack.broker.enqueue(Message(queue_name="q", actor_name="added_in_the_next_release", args=("x",), kwargs={},
                                 options={"correlation_id": "c-1"}))
    stack.join()
    (letter,) = stack.letters.letters.values()
    assert (letter.reason, letter.actor, letter.args, letter.correlation_id) == (
        "unknown_actor", "added_in_the_next_release", ["x"], "c-1")


def test_a_dedup_key_callable_that_raises_dead_letters_the_message_instead_of_running_it_unprotected(stack):
    ran: list = []

    @dramatiq.actor(broker=stack.broker, queue_name="q", dedup_key=lambda order: f"order:{order['id']}")
    def ship(order) -> None:  # type: ignore[no-untyped-def]
        ran.append(order)

    ship.send({"no_id": 1})
    ship.send({"id": 7})
    stack.join()
    (letter,) = stack.letters.letters.values()
    assert letter.reason == "middleware_error" and "Dedup.before_process_message refused" in letter.error
    assert ran == [{"id": 7}]


class Delays(Middleware):
    def __init__(self) -> None:
        self.seen: list[tuple[str, int | None, int | None]] = []

    def before_enqueue(self, broker, message, delay):  # type: ignore[no-untyped-def]
        self.seen.append((message.message_id, delay, message.options.get("not_before")))


@pytest.mark.parametrize(("retry_after", "delay", "parks_again"), [
    (math.inf, None, False), (float("1e400"), None, False), (math.nan, None, False),
    (-5, 1, False), (2.5, 2500, False), (3600, 900_000, True), (10**12, 900_000, True)])
def test_retry_after_is_bounded_and_a_long_wait_is_served_in_parks(stack, retry_after, delay, parks_again):
    delays = Delays()
    stack.broker.add_middleware(delays)
    calls: list = []

    @dramatiq.actor(broker=stack.broker, queue_name="q", max_retries=1, min_backoff=1, max_backoff=5)
    def call_api() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise TransientError("429", retry_after=retry_after)

    started = time.time() * 1000
    call_api.send()
    wait_for(lambda: len(delays.seen) >= 2, timeout=5, message="the retry enqueued")
    _, got_delay, not_before = delays.seen[1]
    if delay is None:  # the ordinary backoff
        assert got_delay is not None and 0 <= got_delay <= 5
    else:
        assert got_delay == delay
    if parks_again:
        wanted = min(retry_after * 1000, RETRY_AFTER_MAX_MS)
        assert not_before is not None and abs(not_before - started - wanted) < 5_000
    else:
        assert not_before is None


def test_a_message_due_later_than_one_park_is_parked_again_without_running(stack):
    delays = Delays()
    stack.broker.add_middleware(delays)
    ran: list = []
    resize = declare(stack, ran)
    later = resize.send_with_options(args=("later",), not_before=int(time.time() * 1000) + 3_600_000)
    resize.send("now")
    parked = wait_for(lambda: [d for d in delays.seen if d[0] == later.message_id and d[1] is not None],
                      timeout=5, message="parked again")
    wait_for(lambda: ran, timeout=5, message="the other message ran")
    assert ran == [("now", 128)]
    assert 3_500_000 > 900_000 >= parked[0][1] > 800_000 and parked[0][2] == later.options["not_before"]


def test_retry_after_ms_reads_only_finite_numbers():
    assert [retry_after_ms(v) for v in (None, "x", math.inf, -1, 0.5, 10**9)] == [
        None, None, None, 0, 500, RETRY_AFTER_MAX_MS]


def test_letter_of_reads_any_message_and_bounds_what_it_keeps():
    junk = Message(queue_name="q", actor_name="a" * 400, args=(), kwargs={}, options={"retries": "x"},
                   message_id="m" * 300)
    for name, value in (("args", 5), ("kwargs", "k"), ("message_timestamp", "never")):
        object.__setattr__(junk, name, value)  # as a body from another producer can hold them
    letter = letter_of(None, junk, ValueError("boom\x00"))  # type: ignore[arg-type]
    assert letter.args == [5] and letter.kwargs == {"kwargs": "k"}
    assert len(letter.message_id) == 64 and len(letter.actor) == 255 and "\x00" not in letter.error
    assert abs((letter.enqueued_at - datetime.now(UTC)).total_seconds()) < 60


def test_bounded_letters_keep_distinct_ids_apart_and_make_json_finite():
    def letter(message_id: str, **extra) -> DeadLetter:  # type: ignore[no-untyped-def]
        now = datetime.now(UTC)
        return DeadLetter(id="i", message_id=message_id, actor="a", queue="q", args=extra.get("args", []),
                          kwargs={}, options={}, error_type="E", error="e", traceback="", reason="permanent",
                          attempts=extra.get("attempts", 1), enqueued_at=now, failed_at=now)

    a, b = bounded_letter(letter("x" * 100 + "a")), bounded_letter(letter("x" * 100 + "b"))
    assert len(a.message_id) == len(b.message_id) == 64 and a.message_id != b.message_id
    big = bounded_letter(letter("m", args=[math.nan, "\ud800", "y" * 400_000], attempts=2**40))
    assert big.attempts == 2**31 - 1
    json.dumps(big.args, allow_nan=False)  # finite, and small
    assert len(json.dumps(big.args)) < 300_000


def test_replay_refuses_letters_that_cannot_run_and_purge_removes_them(stack):
    ran: list = []
    declare(stack, ran)
    raw(stack, b"\x00 not a message")
    raw(stack, message(actor_name="thumbnail_v2", args=["img-9"]))
    stack.join()
    wait_for(lambda: len(stack.letters.letters) == 2, timeout=5, message="two letters")
    by_reason = {letter.reason: letter for letter in stack.letters.letters.values()}
    service = DeadLetterService(stack.letters, BrokerSender(stack.broker), SystemClock())
    with pytest.raises(CannotReplay, match="its body is not a message"):
        service.replay(by_reason["undecodable"].id)
    with pytest.raises(CannotReplay, match="no actor named 'thumbnail_v2' is declared in this version"):
        service.replay(by_reason["unknown_actor"].id)

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def thumbnail_v2(image_id: str) -> None:  # the next release, deployed
        ran.append(("v2", image_id))

    service.replay(by_reason["unknown_actor"].id)
    stack.join()
    assert ran == [("v2", "img-9")]
    assert service.purge([by_reason["undecodable"].id]) == 1
    assert [x.reason for x in service.list()] == ["unknown_actor"]


def test_a_letter_the_store_keeps_refusing_goes_to_the_fallback_store(stack):
    declare(stack, [])
    delays = Delays()
    stack.broker.add_middleware(delays)
    dead_letters = next(m for m in stack.broker.middleware if isinstance(m, DeadLetters))
    fallback = InMemoryLetterFallback()
    dead_letters._fallback_factory = lambda: fallback
    stack.letters.down = True
    failed = Message(queue_name="q", actor_name="resize", args=("x",), kwargs={}, options={})
    letter = letter_of(stack.broker, failed, ValueError("boom"))
    dead_letters._write(stack.broker, failed, letter, FALLBACK_AFTER_ATTEMPTS - 2)
    assert fallback.count() == 0 and delays.seen[-1][2] is None  # put back to try again
    parked = len(delays.seen)
    dead_letters._write(stack.broker, failed, letter, FALLBACK_AFTER_ATTEMPTS - 1)
    assert [x.id for x in fallback.list()] == [letter.id]
    assert len(delays.seen) == parked  # not put back again
    assert stack.count("atelier_dead_letters_fallback_total") == {("q", "resize"): 1}
    stack.letters.down = False
    service = DeadLetterService(stack.letters, BrokerSender(stack.broker), SystemClock(), fallback=fallback)
    assert service.restore() == (1, 0) and stack.letters.get(letter.id) is not None


class HeldDelays(Middleware):
    """What the worker holds a delayed delivery until (its eta once admitted) and its not_before."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int | None]] = []

    def before_delay_message(self, broker, message):  # type: ignore[no-untyped-def]
        self.seen.append((message.message_id, message.options["eta"], message.options.get("not_before")))


def test_a_producers_delay_longer_than_one_park_is_held_one_park_at_a_time(stack):
    # Review finding: a producer's own delay (eta) was held unacked by the worker until due, two
    # hours for delay=7_200_000; past RabbitMQ's consumer_timeout the channel is closed and every
    # message on it delivered again (run twice). Held at most one park, then parked again until due.
    from brokers.park import MAX_DELAY_MS

    held = HeldDelays()
    stack.broker.add_middleware(held)
    ran: list = []
    resize = declare(stack, ran)
    sent = resize.send_with_options(args=("later",), delay=7_200_000)
    due = sent.options["eta"]
    (_, eta, not_before), = wait_for(lambda: held.seen, timeout=5, message="the delayed delivery held")
    assert eta <= time.time() * 1000 + MAX_DELAY_MS and not_before == due
    resize.send_with_options(args=("soon",), delay=10)
    wait_for(lambda: ran, timeout=5, message="the short delay ran")
    assert ran == [("soon", 128)]


def test_a_long_producer_delay_runs_once_when_due_after_its_parks(stack, monkeypatch):
    import brokers.admission
    import brokers.park
    import middleware.retries

    for module in (brokers.admission, brokers.park, middleware.retries):
        monkeypatch.setattr(module, "MAX_DELAY_MS", 100)
    ran: list = []
    times: list = []

    @dramatiq.actor(broker=stack.broker, queue_name="q")
    def later(x: str) -> None:
        ran.append(x)
        times.append(time.time() * 1000)

    sent = later.send_with_options(args=("x",), delay=600)
    wait_for(lambda: ran, timeout=5, message="the delayed message ran")
    stack.join()
    assert ran == ["x"] and times[0] >= sent.options["eta"]


def test_restore_moves_the_letters_behind_one_the_store_still_refuses(stack):
    # Review finding: restore stopped at the first letter the store refused; the fallback lists the
    # oldest first, so the same letter stopped every restore and the letters behind it never moved.
    fallback = InMemoryLetterFallback()
    failed = Message(queue_name="q", actor_name="resize", args=("x",), kwargs={}, options={})
    refused = letter_of(stack.broker, failed, ValueError("the store refuses this one"))
    good = letter_of(stack.broker, failed.copy(), ValueError("boom"))
    fallback.add(refused)
    fallback.add(good)

    class Picky(type(stack.letters)):  # type: ignore[misc]
        def add(self, letter):  # type: ignore[no-untyped-def]
            if letter.id == refused.id:
                raise ValueError("value too long for type character varying(64)")
            return super().add(letter)

    store = Picky()
    service = DeadLetterService(store, BrokerSender(stack.broker), SystemClock(), fallback=fallback)
    assert service.restore() == (1, 1)
    assert store.get(good.id) is not None and [x.id for x in fallback.list()] == [refused.id]
    down = type(stack.letters)()
    down.down = True
    with pytest.raises(ConnectionError):  # a store that takes none: said as before, nothing removed
        DeadLetterService(down, BrokerSender(stack.broker), SystemClock(), fallback=fallback).restore()
    assert fallback.count() == 1
