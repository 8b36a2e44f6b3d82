"""On real RabbitMQ with the dedup state in real Redis: every deduplicated message's done mark is in
Redis before its ack leaves (written by the consumer thread for each batch of acks it sends,
brokers/consumers.py "settle"), so a worker killed between the two leaves nothing that a duplicate
could run again (issue 16, item 8)."""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
import pika.adapters.blocking_connection as blocking
from dramatiq.middleware import Retries

from adapters.state.redis import RedisDedupStore
from brokers.consumers import AtelierRabbitmqConsumer
from brokers.dispatch import AtelierRabbitmqBroker
from middleware.dedup import Dedup
from tests import services


def test_each_done_mark_is_written_before_its_ack_is_sent(redis_ns: tuple[Any, str], monkeypatch) -> None:
    client, ns = redis_ns
    broker = AtelierRabbitmqBroker(url=services.RABBITMQ_URL, confirm_delivery=True,
                                   middleware=[Retries(max_retries=0), Dedup(lambda: RedisDedupStore(client, ns))])
    queue = services.unique("settle")
    runs: list[int] = []
    lock = threading.Lock()

    @dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"{queue}_job", dedup_key=lambda i: f"k{i}")
    def job(i: int) -> None:
        with lock:
            runs.append(i)

    sent: dict[int, int] = {}  # delivery tag -> argument of the message it acknowledges
    acks: list[tuple[int, bytes | None]] = []  # (argument, its dedup key when its ack went out)
    real_settle, real_ack = AtelierRabbitmqConsumer._settle_later, blocking.BlockingChannel.basic_ack

    def settle_later(consumer: Any, message: Any, ack: bool) -> None:
        if ack:
            sent[message._tag] = message.args[0]
        real_settle(consumer, message, ack)

    def basic_ack(channel: Any, delivery_tag: int = 0, multiple: bool = False) -> None:
        i = sent.pop(delivery_tag, None)
        if i is not None:
            acks.append((i, client.get(f"{ns}{queue}_job:k{i}")))
        real_ack(channel, delivery_tag, multiple)

    try:
        for i in range(150):
            job.send(i)
        monkeypatch.setattr(AtelierRabbitmqConsumer, "_settle_later", settle_later)
        monkeypatch.setattr(blocking.BlockingChannel, "basic_ack", basic_ack)
        worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=100)
        worker.start()
        try:
            services.wait_for(lambda: len(acks) >= 150, timeout=60, message="150 acks")
        finally:
            worker.stop()
        assert sorted(runs) == list(range(150))
        assert sorted(i for i, _ in acks) == list(range(150))
        assert [i for i, held in acks if held != b"done"] == []  # each done mark in before its ack
    finally:
        monkeypatch.undo()
        for suffix in ("", ".DQ", ".XQ"):
            broker.channel.queue_delete(f"{queue}{suffix}")
        broker.close()
