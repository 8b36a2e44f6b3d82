"""Issue 16, hole 6: one poisoned event must not stall the relay, on a real Redis and a real
RabbitMQ broker. Before, each of these rolled back the whole batch without counting an attempt,
and the same batch was claimed first again on every run."""

from __future__ import annotations

from collections import Counter

import dramatiq
import pika
import pytest
import redis
from dramatiq import Message
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

import middleware
from adapters.outbox_publisher import DramatiqPublisher
from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from domain.models import DomainEvent, new_id, utcnow
from domain.services.outbox import OutboxRelay, Route
from tests import services


class Clock:
    def __init__(self) -> None:
        self.t = utcnow()

    def now(self):  # type: ignore[no-untyped-def]
        return self.t


@pytest.fixture
def uow(sqlite_url):
    engine = make_engine(sqlite_url)
    yield uow_factory(engine)
    engine.dispose()


def _record(uow, n: int, event_type: str = "image.processed", **payload) -> list[str]:
    ids = []
    with uow() as u:
        for i in range(n):
            e = DomainEvent(event_type, "image", new_id(), {"i": i, **payload})
            u.add_event(e)
            ids.append(e.id)
        u.commit()
    return ids


def _event(uow, event_id):
    with uow() as u:
        return u.outbox.get(event_id)


def _relay_until_dead(relay: OutboxRelay, uow, clock: Clock, event_id: str) -> None:
    """Run the relay at each of the event's retry times until it is dead (bounded)."""
    for _ in range(relay.max_retries + 1):
        event = _event(uow, event_id)
        if event.dead:
            return
        clock.t = max(clock.t, event.next_attempt_at)
        relay.relay()
    assert _event(uow, event_id).dead


class RedisSubscribers:
    def __init__(self) -> None:
        self.prefix = services.unique("poison") + "_"
        self.broker = RedisBroker(url=services.REDIS_URL, middleware=middleware.build_stack())
        self.good = f"{self.prefix}good"
        self.bad = f"{self.prefix}bad"
        dramatiq.actor(lambda event: None, broker=self.broker, actor_name="sub", queue_name=self.good)
        dramatiq.actor(lambda event: None, broker=self.broker, actor_name="poisoned", queue_name=self.bad)
        self.client = redis.Redis.from_url(services.REDIS_URL)
        # The poisoned actor's queue key holds a string: every write to it is refused (WRONGTYPE).
        self.client.set(f"dramatiq:{self.bad}.msgs", b"not a hash")

    def delivered(self) -> Counter:
        return Counter(Message.decode(v).options["causation_id"]
                       for v in self.client.hvals(f"dramatiq:{self.good}.msgs"))

    def close(self) -> None:
        services.purge_queues(services.REDIS_URL, self.prefix, ())
        self.broker.close()
        self.client.close()


def test_redis_one_refused_message_fails_its_event_alone(uow):
    subs = RedisSubscribers()
    try:
        (bad,) = _record(uow, 1, "poison.created")  # recorded first: claimed first
        good = _record(uow, 5)
        clock = Clock()
        routes = [Route("poison.*", "poisoned"), Route("*", "sub")]
        relay = OutboxRelay(uow, DramatiqPublisher(subs.broker), routes, max_retries=2, backoff_ms=1000,
                            clock=clock)
        stats = relay.relay()
        assert (stats.published, stats.failed, stats.broker_down) == (5, 1, False)
        assert all(subs.delivered()[e] >= 1 for e in good)  # dedup keys absorb a repeat
        event = _event(uow, bad)
        assert event.attempts == 1 and "WRONGTYPE" in event.last_error and not event.dead
        _relay_until_dead(relay, uow, clock, bad)
        assert "WRONGTYPE" in _event(uow, bad).last_error
    finally:
        subs.close()


def test_an_argument_the_encoder_refuses_fails_its_event_alone(uow):
    subs = RedisSubscribers()
    try:
        (bad,) = _record(uow, 1, "image.odd")
        good = _record(uow, 3)
        clock = Clock()
        # A route whose args hold a set: JSON cannot encode it.
        routes = [Route("image.odd", "sub", args=lambda e: ({e["id"]},)), Route("image.processed", "sub")]
        relay = OutboxRelay(uow, DramatiqPublisher(subs.broker), routes, max_retries=0, clock=clock)
        stats = relay.relay()
        assert (stats.published, stats.dead) == (3, 1)
        assert set(subs.delivered()) == set(good)
        assert "TypeError" in _event(uow, bad).last_error
    finally:
        subs.close()


def test_rabbitmq_a_message_refused_while_the_broker_is_up_is_not_an_outage(uow):
    """A queue declared elsewhere with other arguments: RabbitMQ closes the channel on Dramatiq's
    declare (406 PRECONDITION_FAILED), which Dramatiq reports as a closed connection, the same as
    an outage. The broker answers, so it is that message's fault."""
    prefix = services.unique("poison") + "_"
    good_q, bad_q = f"{prefix}good", f"{prefix}bad"
    conn = pika.BlockingConnection(pika.URLParameters(services.RABBITMQ_URL))
    conn.channel().queue_declare(bad_q, durable=False)  # Dramatiq declares it durable, with arguments
    conn.close()
    broker = RabbitmqBroker(url=services.RABBITMQ_URL, confirm_delivery=True, middleware=middleware.build_stack())
    dramatiq.actor(lambda event: None, broker=broker, actor_name="sub", queue_name=good_q)
    dramatiq.actor(lambda event: None, broker=broker, actor_name="poisoned", queue_name=bad_q)
    try:
        (bad,) = _record(uow, 1, "poison.created")
        good = _record(uow, 4)
        clock = Clock()
        routes = [Route("poison.*", "poisoned"), Route("image.*", "sub")]
        relay = OutboxRelay(uow, DramatiqPublisher(broker), routes, max_retries=1, backoff_ms=1000, clock=clock)
        stats = relay.relay()
        assert (stats.published, stats.failed, stats.broker_down) == (4, 1, False)
        assert broker.get_queue_message_counts(good_q)[0] >= 4
        assert all(_event(uow, e).published_at is not None for e in good)
        event = _event(uow, bad)
        assert event.attempts == 1 and "PRECONDITION_FAILED" in event.last_error
        _relay_until_dead(relay, uow, clock, bad)
    finally:
        broker.close()
        services.purge_queues(services.RABBITMQ_URL, prefix, ("good",))
        conn = pika.BlockingConnection(pika.URLParameters(services.RABBITMQ_URL))
        conn.channel().queue_delete(bad_q)
        conn.close()
