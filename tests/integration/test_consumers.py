"""atelier's consumers (brokers/consumers.py) against the real brokers: a backlog reaches the
middleware in fetched batches and every message runs once; on RabbitMQ every processed message is
settled once, acks and nacks queued together go out in one wake-up of the consumer thread, and
nothing queued is lost when the consumer closes."""

from __future__ import annotations

import base64
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.middleware import Middleware, Retries

from adapters.state.redis import RedisDedupStore
from brokers.admission import CARRIER_ACTOR
from brokers.consumers import AtelierRabbitmqConsumer
from brokers.dispatch import AtelierRabbitmqBroker, AtelierRedisBroker
from middleware.dedup import Dedup
from tests import services
from tests.fault.backlog import wait_empty


@pytest.fixture
def broker() -> Iterator[AtelierRabbitmqBroker]:
    broker = AtelierRabbitmqBroker(url=services.RABBITMQ_URL, middleware=[Retries(max_retries=0)])
    queues: list[str] = []
    broker.test_queues = queues  # type: ignore[attr-defined]
    yield broker
    for name in queues:
        for suffix in ("", ".DQ", ".XQ"):
            broker.channel.queue_delete(f"{name}{suffix}")
    broker.close()


def counts(broker: AtelierRabbitmqBroker, queue: str) -> tuple[int, int]:
    """Ready messages in the queue and in its dead-letter queue (unacked ones are not counted;
    once their consumer is closed they are ready again)."""

    def count(name: str) -> int:
        return broker.channel.queue_declare(name, passive=True).method.message_count

    return count(queue), count(f"{queue}.XQ")


def new_queue(broker: AtelierRabbitmqBroker) -> str:
    name = services.unique("acks")
    broker.test_queues.append(name)  # type: ignore[attr-defined]
    return name


def fetched(broker: AtelierRabbitmqBroker, n: int) -> tuple[str, AtelierRabbitmqConsumer, list[Any]]:
    """n messages of a no-op actor on a queue of their own, received by a consumer of that queue
    and not settled yet."""
    queue = new_queue(broker)

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"{queue}_job")
    def job(i: int) -> None:
        pass

    for i in range(n):
        job.send(i)
    consumer = broker.consume(queue, prefetch=n, timeout=100)
    messages: list[Any] = []
    while len(messages) < n:
        message = next(consumer)
        if message is not None:
            messages.append(message)
    return queue, consumer, messages


def test_the_broker_uses_the_coalescing_consumer(broker: AtelierRabbitmqBroker) -> None:
    consumer = broker.consume(new_queue(broker), prefetch=1, timeout=100)
    try:
        assert isinstance(consumer, AtelierRabbitmqConsumer)
    finally:
        consumer.close()


def test_a_worker_acks_every_success_and_nacks_every_failure(broker: AtelierRabbitmqBroker) -> None:
    queue = new_queue(broker)
    ran: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"{queue}_job")
    def job(i: int) -> None:
        with lock:
            ran.append(i)
        if i % 5 == 0:
            raise ValueError(f"job {i} fails")

    for i in range(300):
        job.send(i)
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.start()
    try:
        services.wait_for(lambda: len(ran) >= 300, timeout=60, message="300 jobs run")
    finally:
        worker.stop()  # closes the consumer: anything left unacked would be ready again
    assert sorted(ran) == list(range(300))  # each ran once
    services.wait_for(lambda: counts(broker, queue) == (0, 60), timeout=10, message="0 ready, 60 dead-lettered")


def test_settlements_queued_together_share_one_wakeup_and_survive_close(broker: AtelierRabbitmqBroker) -> None:
    queue, consumer, messages = fetched(broker, 40)
    wakeups = 0
    schedule = consumer.connection.add_callback_threadsafe

    def counting(callback):  # type: ignore[no-untyped-def]
        nonlocal wakeups
        wakeups += 1
        schedule(callback)

    consumer.connection.add_callback_threadsafe = counting
    # Settled from four threads while this (the consumer's) thread is not reading the connection,
    # as when worker threads finish a burst together: the first schedules a drain, the rest join it.
    def settle(part: list) -> None:  # type: ignore[type-arg]
        for message in part:
            if message.args[0] < 10:
                consumer.nack(message)
            else:
                consumer.ack(message)

    threads = [threading.Thread(target=settle, args=(messages[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wakeups == 1
    consumer.close()  # runs the pending drain before closing the connection
    services.wait_for(lambda: counts(broker, queue) == (0, 10), timeout=10, message="0 ready, 10 dead-lettered")


def test_a_settlement_after_a_drain_schedules_another(broker: AtelierRabbitmqBroker) -> None:
    queue, consumer, (first, second) = fetched(broker, 2)
    consumer.ack(first)
    services.wait_for(lambda: consumer.connection.process_data_events(0.01) or not consumer._settle,
                      timeout=5, message="the first ack drained")
    consumer.ack(second)  # must not wait for a drain that already ran
    consumer.close()
    services.wait_for(lambda: counts(broker, queue) == (0, 0), timeout=10, message="both acked")


def test_a_wake_up_that_fails_does_not_hold_back_later_acks(broker: AtelierRabbitmqBroker) -> None:
    queue, consumer, messages = fetched(broker, 2)
    schedule = consumer.connection.add_callback_threadsafe
    failures = [OSError("wake-up socket full")]

    def flaky(callback):  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        schedule(callback)

    consumer.connection.add_callback_threadsafe = flaky
    with pytest.raises(OSError):
        consumer.ack(messages[0])  # queued, but its drain could not be scheduled
    consumer.ack(messages[1])  # schedules the drain, which sends both
    consumer.close()
    services.wait_for(lambda: counts(broker, queue) == (0, 0), timeout=10, message="both acked")


def test_an_undecodable_body_becomes_a_carrier_of_its_dead_letter(broker: AtelierRabbitmqBroker) -> None:
    """Dramatiq's consumer puts a body it cannot decode in the XQ alone; atelier's hands it on as a
    carrier of its dead letter (raw bytes, queue, decode error), which the worker rejects to the XQ
    after DeadLetters has written the letter."""
    queue = new_queue(broker)
    consumer = broker.consume(queue, prefetch=1, timeout=100)  # declares the queue and its XQ
    body = b"not a dramatiq message \xff"
    broker.channel.basic_publish(exchange="", routing_key=queue, body=body)
    try:
        message = services.wait_for(lambda: next(consumer), timeout=10, message="the body handed on")
        assert message.actor_name == CARRIER_ACTOR
        assert message.queue_name == queue
        letter = message.options["dead_letter"]
        assert letter["reason"] == "undecodable" and letter["queue"] == queue
        assert base64.b64decode(letter["options"]["raw_body_base64"]) == body
        assert "undecodable body (24 bytes)" in letter["error"]
        consumer.nack(message)
        for _ in range(20):
            if counts(broker, queue) == (0, 1):
                break
            assert next(consumer) is None
    finally:
        consumer.close()
    services.wait_for(lambda: counts(broker, queue) == (0, 1), timeout=10, message="the body in the XQ")


class Batches(Middleware):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def after_fetch(self, broker, messages):  # type: ignore[no-untyped-def]
        self.sizes.append(len(messages))


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_a_backlog_reaches_the_middleware_in_batches_and_each_message_runs_once(kind: str) -> None:
    batches = Batches()
    queue = services.unique("batches")
    if kind == "redis":
        broker = AtelierRedisBroker(url=services.REDIS_URL, middleware=[batches])
    else:
        broker = AtelierRabbitmqBroker(url=services.RABBITMQ_URL, middleware=[batches])
    ran: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"{queue}_job")
    def job(i: int) -> None:
        with lock:
            ran.append(i)

    try:
        for i in range(200):
            job.send(i)
        worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)  # prefetch 8
        worker.start()
        try:
            services.wait_for(lambda: len(ran) >= 200, timeout=60, message="200 jobs run")
        finally:
            worker.stop()
        assert sorted(ran) == list(range(200))
        assert sum(batches.sizes) == 200
        assert max(batches.sizes) > 1
    finally:
        if kind == "redis":
            client = redis.Redis.from_url(services.REDIS_URL)
            keys = list(client.scan_iter(f"dramatiq:{queue}*"))
            if keys:
                client.delete(*keys)
        else:
            for suffix in ("", ".DQ", ".XQ"):
                broker.channel.queue_delete(f"{queue}{suffix}")
        broker.close()


def drop_connection(connection: Any) -> None:
    """Have RabbitMQ close a pika connection, as a broker restart or a network cut would."""
    port = connection._impl._transport._sock.getsockname()[1]  # pika keeps the socket private
    listed = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "name"], capture_output=True, text=True,
                            check=True, timeout=30).stdout
    (pid,) = [line.split("\t")[0] for line in listed.splitlines() if f":{port} -> " in line]
    subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test: dropped"], check=True, capture_output=True,
                   timeout=30)


def test_a_consumer_connection_dropped_mid_run_runs_each_deduplicated_message_once(
        redis_ns: tuple[Any, str]) -> None:
    client, ns = redis_ns
    dedup = Dedup(lambda: RedisDedupStore(client, f"{ns}dedup:"))
    broker = AtelierRabbitmqBroker(url=services.RABBITMQ_URL, confirm_delivery=True,
                                   middleware=[Retries(max_retries=0), dedup])
    queue = services.unique("drop")
    runs: Counter[int] = Counter()
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"{queue}_job", dedup_key=lambda i: f"k{i}")
    def job(i: int) -> None:
        threading.Event().wait(0.05)  # long enough to be running when the connection drops
        with lock:
            runs[i] += 1

    try:
        for i in range(200):
            job.send(i)
        worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
        worker.start()
        try:
            services.wait_for(lambda: sum(runs.values()) >= 40, timeout=30, message="40 jobs run")
            drop_connection(worker.consumers[queue].consumer.connection)
            # Whatever was in flight is delivered again on the consumer's next connection.
            services.wait_for(lambda: len(runs) >= 200, timeout=60, message="every job run")
            # Ready and unacknowledged, the delay queue's too: a copy delivered again after the drop
            # (or put back by Dedup) can still sit unacked in the consumer's prefetch once every job
            # has run, and would be ready again when the worker stops.
            left = wait_empty(services.RABBITMQ_URL, queue, timeout=30)
            assert left == 0, f"{left} messages still on the broker"
        finally:
            worker.stop()
        assert counts(broker, queue) == (0, 0)  # nothing left unacked to come back
        assert set(runs) == set(range(200))
        # Without Dedup the messages that were running when the connection dropped run twice.
        assert [i for i, n in runs.items() if n > 1] == []
    finally:
        for suffix in ("", ".DQ", ".XQ"):
            broker.channel.queue_delete(f"{queue}{suffix}")
        broker.close()
