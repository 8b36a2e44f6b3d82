"""atelier's Redis consumer (brokers/consumers.py AtelierRedisConsumer, brokers/redis_wakeups.py)
against real Redis: delivery semantics with many consumers on one queue (each message runs once,
acks and nacks land, delayed messages move on time, a dead consumer's messages come back), idle
consumers woken by the enqueue instead of polling, and raw bodies that are not messages."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.middleware import Retries

from adapters.sql.deadletters import SqlDeadLetterStore
from adapters.sql.engine import make_engine
from brokers.admission import CARRIER_ACTOR
from brokers.batch import enqueue_batch
from brokers.dispatch import AtelierRedisBroker
from middleware.deadletters import DeadLetters
from tests import services

#: Latency tests: how long the consumers idle before a send, and how soon every send must start.
#: A polling consumer idle that long looks again about 1.3 s late on average: Dramatiq's (a worker
#: timeout of 5 s) 0.06-2.6 s, under 0.5 s for about 2 % of sends; atelier's without wake-ups, at
#: its 5 s idle limit, about 2.5 s. A woken one starts it within milliseconds; the bound leaves
#: room for a loaded machine.
IDLE_S = 2.5
WOKEN_S = 0.5


class Queue:
    """A queue name of this test's own on the shared Redis, and the brokers made on it; every key
    of the queue (list, hash, delay queue, dead letters, ack sets) is deleted afterwards."""

    def __init__(self, url: str = services.REDIS_URL) -> None:
        self.url = url
        self.name = services.unique("rc")
        self.client = redis.Redis.from_url(url)
        self.brokers: list[AtelierRedisBroker] = []

    def broker(self, **kwargs: Any) -> AtelierRedisBroker:
        broker = AtelierRedisBroker(url=self.url, **kwargs)
        self.brokers.append(broker)
        return broker

    def keys(self) -> list[bytes]:
        return [*self.client.scan_iter(f"dramatiq:{self.name}*", count=1000),
                *self.client.scan_iter(f"dramatiq:__acks__.*.{self.name}*", count=1000)]

    def unacked(self) -> int:
        return sum(self.client.scard(k) for k in self.client.scan_iter(f"dramatiq:__acks__.*.{self.name}*", count=1000))

    def close(self) -> None:
        for broker in self.brokers:
            broker.close()
            self.client.zrem("dramatiq:__heartbeats__", broker.broker_id)
        keys = self.keys()
        if keys:
            self.client.delete(*keys)
        self.client.close()


@pytest.fixture
def queue() -> Iterator[Queue]:
    q = Queue()
    yield q
    q.close()


def start(broker: AtelierRedisBroker, threads: int = 4, timeout: int = 1000) -> dramatiq.Worker:
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=timeout)
    worker.start()
    return worker


def test_with_many_consumers_on_one_queue_every_message_runs_once_and_acks_and_nacks_land(queue: Queue) -> None:
    runs: Counter[int] = Counter()
    lock = threading.Lock()
    brokers = [queue.broker(middleware=[Retries(max_retries=0)]) for _ in range(3)]
    for broker in brokers:
        @dramatiq.actor(broker=broker, queue_name=queue.name, actor_name=f"{queue.name}_job")
        def job(i: int) -> None:
            with lock:
                runs[i] += 1
            if i % 10 == 0:
                raise ValueError(f"job {i} fails")

    producer = queue.broker()
    sender = dramatiq.actor(lambda i: None, broker=producer, queue_name=queue.name, actor_name=f"{queue.name}_job")
    workers = [start(b) for b in brokers]
    try:
        for i in range(600):  # sent while the consumers run: each enqueue may wake them
            sender.send(i)
        services.wait_for(lambda: sum(runs.values()) >= 600, timeout=60, message="600 runs")
        services.wait_for(lambda: queue.unacked() == 0, timeout=10, message="every message settled")
    finally:
        for w in workers:
            w.stop()
    assert sorted(runs) == list(range(600))
    assert set(runs.values()) == {1}
    c = queue.client
    assert c.llen(f"dramatiq:{queue.name}") == 0
    assert c.hlen(f"dramatiq:{queue.name}.msgs") == 0  # every ack removed its body
    assert c.zcard(f"dramatiq:{queue.name}.XQ") == 60  # every nack moved its body to the XQ
    assert c.hlen(f"dramatiq:{queue.name}.XQ.msgs") == 60


def test_an_idle_consumer_starts_a_message_within_milliseconds_not_at_its_next_poll(queue: Queue) -> None:
    started: list[float] = []
    event = threading.Event()
    broker = queue.broker(middleware=[])

    @dramatiq.actor(broker=broker, queue_name=queue.name, actor_name=f"{queue.name}_job")
    def job(sent: float) -> None:
        started.append(time.time() - sent)
        event.set()

    # A worker timeout of 5 s: see IDLE_S.
    worker = start(broker, threads=2, timeout=5000)
    try:
        for _ in range(4):
            # Idle (a measurement gap, not a synchronisation).
            time.sleep(IDLE_S)
            event.clear()
            job.send(time.time())
            assert event.wait(10)
    finally:
        worker.stop()
    assert max(started) < WOKEN_S, started


def test_a_batch_enqueued_in_one_transaction_wakes_an_idle_consumer(queue: Queue) -> None:
    started: list[float] = []
    broker = queue.broker(middleware=[])

    @dramatiq.actor(broker=broker, queue_name=queue.name, actor_name=f"{queue.name}_job")
    def job(sent: float) -> None:
        started.append(time.time() - sent)

    worker = start(broker, threads=2, timeout=5000)
    try:
        for _ in range(2):
            time.sleep(IDLE_S)  # idle (a measurement gap, not a synchronisation)
            count = len(started)
            sent = time.time()
            assert enqueue_batch(broker, [job.message(sent) for _ in range(3)]) == [None] * 3
            services.wait_for(lambda: len(started) >= count + 3, timeout=10, message="the batch run")  # noqa: B023
    finally:
        worker.stop()
    assert max(started) < WOKEN_S, started


def test_delayed_messages_move_to_their_queue_on_time(queue: Queue) -> None:
    lateness: list[float] = []
    done = threading.Event()
    broker = queue.broker(middleware=[])

    @dramatiq.actor(broker=broker, queue_name=queue.name, actor_name=f"{queue.name}_job")
    def job(due: float) -> None:
        lateness.append(time.time() - due)
        if len(lateness) == 5:
            done.set()

    worker = start(broker, threads=2, timeout=1000)
    try:
        now = time.time()
        for i in range(5):
            delay = 400 + 250 * i
            job.send_with_options(args=(now + delay / 1000,), delay=delay)
        assert done.wait(20)
    finally:
        worker.stop()
    # A consumer that looked only at its idle limit (1 s here) would move one of the five, due
    # 250 ms apart, at least 0.75 s late.
    assert max(lateness) < 0.5, lateness
    assert min(lateness) >= -0.01, lateness  # never early


def test_a_dead_consumers_messages_come_back_after_the_heartbeat_timeout(queue: Queue) -> None:
    ran: Counter[int] = Counter()
    dead = queue.broker(middleware=[])
    alive = queue.broker(middleware=[], heartbeat_timeout=1000)
    for broker in (dead, alive):
        @dramatiq.actor(broker=broker, queue_name=queue.name, actor_name=f"{queue.name}_job")
        def job(i: int) -> None:
            ran[i] += 1

    for i in range(10):
        job.send(i)
    # A consumer takes all ten into its process's ack set, then its process dies: no ack, no
    # requeue, no heartbeat again.
    consumer = dead.consume(queue.name, prefetch=10, timeout=100)
    taken = [next(consumer) for _ in range(10)]
    assert sorted(m.args[0] for m in taken) == list(range(10))
    assert queue.unacked() == 10
    died = time.monotonic()

    worker = start(alive, threads=2)
    try:
        services.wait_for(lambda: len(ran) == 10, timeout=15, message="the dead consumer's messages run again")
        recovered = time.monotonic() - died
    finally:
        worker.stop()
    assert set(ran.values()) == {1}
    assert recovered < 1.0 + 0.25 + 5.0  # heartbeat timeout + maintenance interval + slack (a loaded machine)
    assert queue.unacked() == 0


def test_the_fetch_moves_ids_into_the_ack_set_and_returns_each_with_its_body(queue: Queue) -> None:
    broker = queue.broker(middleware=[])
    c = queue.client
    key = f"dramatiq:{queue.name}"
    c.hset(f"{key}.msgs", mapping={"a": b"body a", "b": b"body b"})
    c.rpush(key, "a", "gone", "b")
    assert broker.fetch(queue.name, 2) == [(b"a", b"body a"), (b"gone", None)]
    assert c.smembers(f"dramatiq:__acks__.{broker.broker_id}.{queue.name}") == {b"a", b"gone"}
    assert c.lrange(key, 0, -1) == [b"b"]
    assert broker.fetch(queue.name, 0) == []  # only beats the heartbeat
    assert c.zscore("dramatiq:__heartbeats__", broker.broker_id) is not None
    assert c.lrange(key, 0, -1) == [b"b"]


def good_body(queue_name: str, actor_name: str, *args: Any, **options: Any) -> bytes:
    return json.dumps({"queue_name": queue_name, "actor_name": actor_name, "args": list(args), "kwargs": {},
                       "options": options, "message_id": services.unique("m"),
                       "message_timestamp": int(time.time() * 1000)}).encode()


#: Raw bodies no producer of Dramatiq's would write, and the reason each one's letter gives.
def junk_bodies(queue_name: str, actor_name: str) -> dict[str, tuple[bytes, str]]:
    def fields(**changes: Any) -> bytes:
        base = json.loads(good_body(queue_name, actor_name, 1))
        base.update(changes)
        return json.dumps(base).encode()

    return {
        "not utf-8": (b"\xff\xfe\x00junk", "undecodable"),
        "not json": (b"{not json", "undecodable"),
        "a json list": (b"[1, 2, 3]", "undecodable"),
        "an unknown field": (fields(surprise=True), "undecodable"),
        "no actor_name": (json.dumps({"queue_name": queue_name, "args": [], "kwargs": {}, "options": {}}).encode(),
                          "undecodable"),
        # Decodable, but Dramatiq would run ('a', 'b', 'c') and ('x',): admission refuses them.
        "args a string": (fields(args="abc"), "invalid_arguments"),
        "args an object": (fields(args={"x": 1}), "invalid_arguments"),
        "options a list": (fields(options=[1]), "invalid_options"),
        "an unhashable id": (fields(message_id=["a"]), "invalid_message"),
    }


def write_raw(client: redis.Redis, queue_name: str, bodies: dict[str, bytes]) -> None:
    key = f"dramatiq:{queue_name}"
    client.hset(f"{key}.msgs", mapping=bodies)
    client.rpush(key, *bodies)


def test_undecodable_bodies_mid_fetch_become_carriers_acked_under_their_ids_and_the_rest_is_handed_on(
        queue: Queue) -> None:
    broker = queue.broker(middleware=[])
    actor = f"{queue.name}_job"
    dramatiq.actor(lambda i: None, broker=broker, queue_name=queue.name, actor_name=actor)
    junk = junk_bodies(queue.name, actor)
    key = f"dramatiq:{queue.name}"
    bodies = {"good1": good_body(queue.name, actor, 1), **{k: v for k, (v, _) in junk.items()},
              "good2": good_body(queue.name, actor, 2)}
    queue.client.hset(f"{key}.msgs", mapping=bodies)
    queue.client.rpush(key, "good1", *junk, "missing", "good2")  # "missing": an id without a body
    consumer = broker.consume(queue.name, prefetch=20, timeout=100)
    got = [next(consumer) for _ in range(len(bodies) + 1)]
    by_id = {m.options["redis_message_id"]: m for m in got}  # every delivery acks under its stored id
    assert set(by_id) == {*bodies, "missing"}
    assert by_id["good1"].args == (1,) and by_id["good2"].args == (2,)
    for rid, reason in [*((k, r) for k, (_, r) in junk.items()), ("missing", "undecodable")]:
        message = by_id[rid]
        assert message.actor_name == CARRIER_ACTOR, rid
        letter = message.options["dead_letter"]
        assert letter["reason"] == reason, rid
        if reason == "undecodable":
            assert letter["options"]["broker_message_id"] == rid
    assert "no body" in by_id["missing"].options["dead_letter"]["error"]
    for message in got:
        (consumer.nack if message.actor_name == CARRIER_ACTOR else consumer.ack)(message)
    assert queue.unacked() == 0
    assert consumer.outstanding_message_count == 0


def test_an_id_that_is_not_utf8_is_dead_lettered_and_acked_under_its_raw_bytes(queue: Queue) -> None:
    broker = queue.broker(middleware=[])
    actor = f"{queue.name}_job"
    dramatiq.actor(lambda i: None, broker=broker, queue_name=queue.name, actor_name=actor)
    write_raw(queue.client, queue.name, {b"\xff\xfeid": good_body(queue.name, actor, 1)})
    consumer = broker.consume(queue.name, prefetch=4, timeout=100)
    message = services.wait_for(lambda: next(consumer), timeout=5, message="the delivery")
    assert message.actor_name == CARRIER_ACTOR
    assert message.options["dead_letter"]["reason"] == "undecodable"
    consumer.requeue([message])  # as a stopping worker does with what it did not start
    assert queue.unacked() == 0 and queue.client.lrange(f"dramatiq:{queue.name}", 0, -1) == [b"\xff\xfeid"]
    message = services.wait_for(lambda: next(consumer), timeout=5, message="the delivery again")
    consumer.nack(message)
    assert queue.unacked() == 0
    assert queue.client.hlen(f"dramatiq:{queue.name}.msgs") == 0  # moved to the XQ with its body
    assert queue.client.zcard(f"dramatiq:{queue.name}.XQ") == 1


def test_closing_a_consumer_puts_back_what_it_fetched_and_never_handed_out(queue: Queue) -> None:
    broker = queue.broker(middleware=[])
    job = dramatiq.actor(lambda i: None, broker=broker, queue_name=queue.name, actor_name=f"{queue.name}_job")
    for i in range(5):
        job.send(i)
    consumer = broker.consume(queue.name, prefetch=5, timeout=100)
    first = next(consumer)  # one fetch took all five; one handed out
    assert queue.unacked() == 5
    consumer.close()  # as the consumer thread does when it replaces a consumer after an error
    assert queue.unacked() == 1  # the one handed out is still the worker's
    assert queue.client.llen(f"dramatiq:{queue.name}") == 4
    consumer.ack(first)
    assert queue.unacked() == 0


def test_a_body_acks_under_the_id_it_was_stored_under_whatever_its_options_say(queue: Queue) -> None:
    ran: list[int] = []
    broker = queue.broker(middleware=[])
    actor = f"{queue.name}_job"
    dramatiq.actor(lambda i: ran.append(i), broker=broker, queue_name=queue.name, actor_name=actor)
    write_raw(queue.client, queue.name, {
        "no-option": good_body(queue.name, actor, 1),  # a producer that is not Dramatiq's
        "stored-id": good_body(queue.name, actor, 2, redis_message_id="another-id"),
    })
    worker = start(broker, threads=2)
    try:
        services.wait_for(lambda: sorted(ran) == [1, 2], timeout=10, message="both run")
        services.wait_for(lambda: queue.unacked() == 0, timeout=10, message="both acked")
    finally:
        worker.stop()
    assert queue.client.hlen(f"dramatiq:{queue.name}.msgs") == 0


def test_a_worker_writes_one_dead_letter_per_undecodable_body_and_keeps_running(queue: Queue,
                                                                                 sqlite_url: str) -> None:
    store = SqlDeadLetterStore(make_engine(sqlite_url))
    broker = queue.broker(middleware=[Retries(max_retries=0), DeadLetters(lambda: store)])
    ran: list[int] = []
    actor = f"{queue.name}_job"
    dramatiq.actor(lambda i: ran.append(i), broker=broker, queue_name=queue.name, actor_name=actor)
    junk = junk_bodies(queue.name, actor)
    worker = start(broker, threads=2)
    try:
        write_raw(queue.client, queue.name, {k: v for k, (v, _) in junk.items()})
        services.wait_for(lambda: len(store.list(limit=100)) >= len(junk), timeout=15, message="the dead letters")
        broker.enqueue(dramatiq.Message(queue_name=queue.name, actor_name=actor, args=(7,), kwargs={}, options={}))
        services.wait_for(lambda: ran == [7], timeout=10, message="a good message after the junk")
        services.wait_for(lambda: queue.unacked() == 0, timeout=10, message="nothing left in the ack set")
        assert all(t.is_alive() for t in worker.workers)
        assert all(t.is_alive() for t in worker.consumers.values())
    finally:
        worker.stop()
    letters = store.list(limit=100)
    assert len(letters) == len(junk)  # one each
    assert Counter(letter.reason for letter in letters) == Counter(r for _, r in junk.values())
    assert sorted(letter.options["broker_message_id"] for letter in letters if letter.reason == "undecodable") == \
        sorted(k for k, (_, r) in junk.items() if r == "undecodable")
    assert queue.client.hlen(f"dramatiq:{queue.name}.msgs") == 0  # every body nacked to the XQ


# -- Redis's idle command rate, on a private redis-server (the shared one has other users) --


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed"
    port = services.free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        services.wait_for(up, timeout=10, message="private redis-server")
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def command_rates(url: str, seconds: float) -> tuple[float, float]:
    """Script calls and all commands (those run inside scripts included) per second, over a window."""
    client = redis.Redis.from_url(url)
    try:
        client.config_resetstat()
        at = time.monotonic()
        time.sleep(seconds)  # the measurement window
        calls = {k: v["calls"] for k, v in client.info("commandstats").items() if not k.startswith("cmdstat_config")}
        elapsed = time.monotonic() - at
    finally:
        client.close()
    return calls.get("cmdstat_evalsha", 0) / elapsed, sum(calls.values()) / elapsed


def test_an_idle_worker_sends_one_fetch_per_consumer_per_worker_timeout(private_redis: str) -> None:
    queue = Queue(private_redis)
    try:
        broker = queue.broker(middleware=[])
        dramatiq.actor(lambda: None, broker=broker, queue_name=queue.name, actor_name=f"{queue.name}_job")
        worker = start(broker, threads=8, timeout=1000)  # two consumers: the queue and its delay queue
        try:
            services.wait_for(lambda: queue.client.pubsub_numsub(broker.wake_channel(queue.name))[0][1] == 1,
                              timeout=10, message="the wake-up subscription")
            scripts, everything = command_rates(private_redis, 5.0)
        finally:
            worker.stop()
    finally:
        queue.close()
    # Two idle consumers fetch once per worker timeout each: about 2 script calls/s (Dramatiq's poll
    # 2.4-2.7, 7-8 commands/s). The bounds leave room for a loaded machine (2.4 seen under a full
    # suite beside other work) and still fail a consumer that polls faster instead of waiting.
    assert 1.0 <= scripts <= 3.0, scripts
    assert everything <= 9.0, everything


def test_the_wake_up_listener_reconnects_and_consumers_poll_meanwhile(private_redis: str) -> None:
    queue = Queue(private_redis)
    started: list[float] = []
    try:
        broker = queue.broker(middleware=[])

        @dramatiq.actor(broker=broker, queue_name=queue.name, actor_name=f"{queue.name}_job")
        def job(sent: float) -> None:
            started.append(time.time() - sent)

        channel = broker.wake_channel(queue.name)
        worker = start(broker, threads=2, timeout=5000)
        try:
            services.wait_for(lambda: queue.client.pubsub_numsub(channel)[0][1] == 1, timeout=10,
                              message="the wake-up subscription")
            killed = queue.client.client_kill_filter(_type="pubsub")
            assert killed == 1
            job.send(time.time())  # maybe before the listener is back: the consumer's next fetch gets it
            services.wait_for(lambda: len(started) == 1, timeout=10, message="the message sent meanwhile")
            services.wait_for(lambda: queue.client.pubsub_numsub(channel)[0][1] == 1, timeout=10,
                              message="the subscription made again")
            for _ in range(3):
                time.sleep(IDLE_S)  # idle (a measurement gap)
                count = len(started)
                job.send(time.time())
                services.wait_for(lambda: len(started) > count, timeout=10, message="a message run")  # noqa: B023
        finally:
            worker.stop()
    finally:
        queue.close()
    assert max(started[1:]) < WOKEN_S, started


def test_the_dashboard_reads_atelier_queues_and_workers(queue: Queue) -> None:
    from dramatiq_dashboard.interface import RedisInterface

    broker = queue.broker(middleware=[])
    job = dramatiq.actor(lambda i: None, broker=broker, queue_name=queue.name, actor_name=f"{queue.name}_job")
    for i in range(3):
        job.send(i)
    job.send_with_options(args=(9,), delay=60_000)
    dashboard = RedisInterface(broker)
    stats = dashboard.get_queue(queue.name)
    assert (stats.jobs, stats.jobs_delayed, stats.jobs_dead) == (3, 1, 0)
    consumer = broker.consume(queue.name, prefetch=2, timeout=100)
    held = [next(consumer), next(consumer)]
    workers = {w.name: w.jobs_in_flight for w in dashboard.workers}
    assert workers[broker.broker_id] == 2  # fetched, in this process's ack set
    _, jobs = dashboard.get_jobs(queue.name)
    assert sorted(j.args[0] for j in jobs) == [0, 1, 2]
    for message in held:
        consumer.ack(message)
    consumer.close()


def test_a_delay_admission_shortens_is_moved_at_its_new_eta(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    import brokers.admission

    monkeypatch.setattr(brokers.admission, "MAX_DELAY_MS", 600)  # one park: 0.6 s instead of 15 min
    moved: list[float] = []
    broker = queue.broker(middleware=[])  # no ClassifiedRetries here to honour not_before: it runs

    @dramatiq.actor(broker=broker, queue_name=queue.name, actor_name=f"{queue.name}_job")
    def job(sent: float) -> None:
        moved.append(time.time() - sent)

    worker = start(broker, threads=2, timeout=2000)
    try:
        time.sleep(0.5)  # the consumers idle (a measurement gap)
        job.send_with_options(args=(time.time(),), delay=3_600_000)
        services.wait_for(lambda: moved, timeout=10, message="the message moved after one park")
    finally:
        worker.stop()
    assert 0.55 <= moved[0] < 1.5, moved  # not at the hour it was sent with


def run_all(queue: Queue, broker: AtelierRedisBroker, n: int, *, delay: int | None = None,
            timeout: float = 15, linger: float = 0.0) -> Counter[int]:
    """Send ``n`` messages (with ``delay``), run a worker until each ran or ``timeout``, then
    ``linger`` seconds more (a message that would run a second time has the time to); the runs."""
    ran: Counter[int] = Counter()

    @dramatiq.actor(broker=broker, queue_name=queue.name, actor_name=f"{queue.name}_job")
    def job(i: int) -> None:
        ran[i] += 1

    for i in range(n):
        job.send_with_options(args=(i,), delay=delay)
    worker = start(broker, threads=2, timeout=200)
    try:
        services.wait_for(lambda: len(ran) == n and queue.unacked() == 0, timeout=timeout,
                          message=f"all {n} run and acked")
        time.sleep(linger)  # a second run, had a message been put back after it ran
    finally:
        worker.stop()
    return ran


def test_a_fetch_whose_reply_is_lost_gives_its_messages_back_while_the_worker_lives(queue: Queue) -> None:
    # Redis ran the fetch (ids in this process's ack set, on disk with appendfsync always) and
    # died before its reply: nothing in the process holds those ids, and its heartbeat lives on.
    broker = queue.broker(middleware=[])
    fetch = broker.fetch
    lost: list[bytes] = []

    def reply_lost(queue_name: str, count: int, **kwargs: Any) -> Any:
        pairs = fetch(queue_name, count, **kwargs)
        if pairs and not lost:
            lost.extend(rid for rid, _ in pairs)
            raise redis.ConnectionError("Connection closed by server.")
        return pairs

    broker.fetch = reply_lost  # type: ignore[method-assign]
    ran = run_all(queue, broker, 10)
    assert lost
    assert set(ran.values()) == {1}


def test_a_delayed_message_whose_move_fails_on_a_dropped_connection_comes_back(queue: Queue) -> None:
    # The delay-queue consumer holds its messages in memory until due; the move to the queue
    # meets a dropped connection, and the consumer thread starts over without them.
    broker = queue.broker(middleware=[])
    enqueue = broker.do_enqueue
    failed: list[str] = []

    def dropped(queue_name: str, message_id: str, data: bytes, **kwargs: Any) -> None:
        if queue_name == queue.name and not failed:
            failed.append(message_id)
            raise redis.ConnectionError("Connection closed by server.")
        enqueue(queue_name, message_id, data, **kwargs)

    broker.do_enqueue = dropped  # type: ignore[method-assign]
    ran = run_all(queue, broker, 5, delay=100)
    assert failed
    assert set(ran.values()) == {1}


def test_a_delay_queue_consumer_survives_a_dropped_connection_that_also_fails_its_put_back(queue: Queue) -> None:
    # The move of a due delayed message meets a dropped connection: RedisBroker.enqueue raises
    # redis.ConnectionError (not Dramatiq's), so the consumer thread takes its except-Exception
    # path and closes, putting back the delayed messages it holds in memory, through the same
    # dropped connection. Redis is back half a second later: both messages must still run once.
    broker = queue.broker(middleware=[])
    down_until = [0.0]

    def outage(method: Any) -> Any:
        def call(queue_name: str, *args: Any, **kwargs: Any) -> Any:
            if time.monotonic() < down_until[0]:
                raise redis.ConnectionError("Connection closed by server.")
            return method(queue_name, *args, **kwargs)
        return call

    enqueue = broker.do_enqueue

    def move_drops(queue_name: str, message_id: str, data: bytes, **kwargs: Any) -> None:
        if queue_name == queue.name and not down_until[0]:
            down_until[0] = time.monotonic() + 0.5
        outage(enqueue)(queue_name, message_id, data, **kwargs)

    broker.do_enqueue = move_drops  # type: ignore[method-assign]
    broker.do_requeue = outage(broker.do_requeue)  # type: ignore[method-assign]
    broker.fetch = outage(broker.fetch)  # type: ignore[method-assign]
    ran: Counter[int] = Counter()

    @dramatiq.actor(broker=broker, queue_name=queue.name, actor_name=f"{queue.name}_job")
    def job(i: int) -> None:
        ran[i] += 1

    job.send_with_options(args=(1,), delay=300)
    job.send_with_options(args=(2,), delay=1500)  # still held in memory when the first one moves
    worker = start(broker, threads=2, timeout=200)
    try:
        services.wait_for(lambda: len(ran) == 2 and queue.unacked() == 0, timeout=10,
                          message="both delayed messages run and acked")
        assert all(t.is_alive() for t in worker.consumers.values())
    finally:
        worker.stop()
    assert down_until[0]
    assert ran == Counter({1: 1, 2: 1})


def test_a_nack_retried_after_a_dropped_connection_still_rejects_an_id_that_is_not_utf8(queue: Queue) -> None:
    # The carrier of a non-UTF-8 id is nacked under the id's raw bytes; the first nack meets a
    # dropped connection and Dramatiq retries it. The retry must still name the raw bytes.
    broker = queue.broker(middleware=[])
    actor = f"{queue.name}_job"
    dramatiq.actor(lambda i: None, broker=broker, queue_name=queue.name, actor_name=actor)
    nack = broker.do_nack
    dropped: list[Any] = []

    def drops_once(queue_name: str, message_id: Any) -> Any:
        if not dropped:
            dropped.append(message_id)
            raise redis.ConnectionError("Connection closed by server.")
        return nack(queue_name, message_id)

    broker.do_nack = drops_once  # type: ignore[method-assign]
    write_raw(queue.client, queue.name, {b"\xff\xfeid": good_body(queue.name, actor, 1)})
    worker = start(broker, threads=2, timeout=200)
    try:
        services.wait_for(lambda: dropped and queue.unacked() == 0, timeout=9,
                          message="the carrier rejected out of the ack set")
    finally:
        worker.stop()
    assert dropped == [b"\xff\xfeid"]
    assert queue.client.zrange(f"dramatiq:{queue.name}.XQ", 0, -1) == [b"\xff\xfeid"]


def refuse_first_ack(broker: AtelierRedisBroker, queue_name: str) -> list[str]:
    """Redis refuses the first ack on ``queue_name`` (READONLY: a replica during a failover), and
    the fetch after it on that queue meets a dropped connection, so the consumer is replaced; the
    ids whose ack was refused."""
    ack, fetch = broker.do_ack, broker.fetch
    refused: list[str] = []
    dropped: list[bool] = []

    def readonly_once(name: str, message_id: Any) -> Any:
        if name == queue_name and not refused:
            refused.append(message_id)
            raise redis.ReadOnlyError("You can't write against a read only replica.")
        return ack(name, message_id)

    def drop_after(name: str, count: int, **kwargs: Any) -> Any:
        if name == queue_name and refused and not dropped:
            dropped.append(True)
            raise redis.ConnectionError("Connection closed by server.")
        return fetch(name, count, **kwargs)

    broker.do_ack = readonly_once  # type: ignore[method-assign]
    broker.fetch = drop_after  # type: ignore[method-assign]
    return refused


def test_an_ack_redis_refuses_with_readonly_still_lands_and_its_message_runs_once(queue: Queue) -> None:
    broker = queue.broker(middleware=[])
    refused = refuse_first_ack(broker, queue.name)
    ran = run_all(queue, broker, 3, timeout=8)
    assert refused
    assert set(ran.values()) == {1}


def test_a_delayed_message_whose_ack_after_its_move_redis_refuses_runs_once(queue: Queue) -> None:
    broker = queue.broker(middleware=[])
    refused = refuse_first_ack(broker, f"{queue.name}.DQ")
    ran = run_all(queue, broker, 1, delay=200, timeout=8, linger=1.5)
    assert refused
    assert ran == Counter({0: 1})


def test_a_delayed_message_whose_move_ran_but_lost_its_reply_runs_once(queue: Queue) -> None:
    # Redis ran the move of a due delayed message to its queue (on disk with appendfsync always)
    # and the connection dropped before the reply, as with the fetch whose reply is lost: the
    # message is on its queue, and its delay-queue id is still in this process's ack set.
    broker = queue.broker(middleware=[])
    enqueue = broker.do_enqueue
    lost: list[str] = []

    def reply_lost(queue_name: str, message_id: str, data: bytes, **kwargs: Any) -> None:
        enqueue(queue_name, message_id, data, **kwargs)
        if queue_name == queue.name and not lost:
            lost.append(message_id)
            raise redis.ConnectionError("Connection closed by server.")

    broker.do_enqueue = reply_lost  # type: ignore[method-assign]
    ran = run_all(queue, broker, 1, delay=100, timeout=8, linger=1.5)
    assert lost
    assert ran == Counter({0: 1})


def test_an_ack_redis_refuses_with_oom_is_tried_again_not_given_up(private_redis: str) -> None:
    # Redis at its maxmemory (noeviction) refuses the ack script (its first write, the heartbeat's
    # ZADD, may grow memory): the reply is "-OOM command not allowed ...", which redis-py raises as
    # OutOfMemoryError with the "OOM" code cut off its text. Memory is freed a moment later: the
    # ack must be tried again, as for READONLY or BUSY, not given up with the message left in the
    # live worker's ack set.
    queue = Queue(private_redis)
    try:
        broker = queue.broker(middleware=[])
        ack = broker.do_ack
        refused: list[BaseException] = []
        first = threading.Lock()  # the first ack only: worker threads ack at once

        def oom_once(name: str, message_id: Any) -> Any:
            if name == queue.name and first.acquire(blocking=False):
                queue.client.config_set("maxmemory", "1")  # over it at once: noeviction refuses writes
                try:
                    return ack(name, message_id)
                except redis.RedisError as exc:
                    refused.append(exc)
                    raise
                finally:
                    queue.client.config_set("maxmemory", "0")
            return ack(name, message_id)

        broker.do_ack = oom_once  # type: ignore[method-assign]
        ran = run_all(queue, broker, 3, timeout=8, linger=0.5)
        assert [type(e).__name__ for e in refused] == ["OutOfMemoryError"]
        assert set(ran.values()) == {1}
    finally:
        queue.close()


def test_two_ids_that_are_not_utf8_with_the_same_readable_form_are_both_rejected(queue: Queue) -> None:
    # b"\xff\xfe" and b"\\xff\xfe" (a backslash, "xff", then a lone byte) both read as "\\xff\\xfe"
    # (backslashreplace): the broker keeps one raw id per readable form, so the second delivery's
    # bytes replace the first's, the first carrier's nack rejects the second id, and the second
    # carrier's nack names the readable form: the first id stays in the live worker's ack set.
    broker = queue.broker(middleware=[])
    actor = f"{queue.name}_job"
    dramatiq.actor(lambda i: None, broker=broker, queue_name=queue.name, actor_name=actor)
    ids = [b"\xff\xfe", b"\\xff\xfe"]
    assert len({i.decode("utf-8", "backslashreplace") for i in ids}) == 1
    write_raw(queue.client, queue.name, {i: good_body(queue.name, actor, n) for n, i in enumerate(ids)})
    worker = start(broker, threads=2, timeout=200)
    try:
        services.wait_for(lambda: queue.client.zcard(f"dramatiq:{queue.name}.XQ") == 2 and queue.unacked() == 0,
                          timeout=8, message="both carriers rejected out of the ack set")
    finally:
        worker.stop()
    assert sorted(queue.client.zrange(f"dramatiq:{queue.name}.XQ", 0, -1)) == sorted(ids)
