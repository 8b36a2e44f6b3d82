"""The outbox on real PostgreSQL and SQLite, relayed to a real Redis broker."""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import timedelta

import dramatiq
import pytest
import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import func, insert, select

import middleware
from adapters.outbox_publisher import DramatiqPublisher
from adapters.sql import tables as t
from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from domain.models import DomainEvent, Image, new_id, utcnow
from domain.services.outbox import OutboxRelay, Route
from tests import services


class Clock:
    def __init__(self) -> None:
        self.t = utcnow()

    def now(self):  # type: ignore[no-untyped-def]
        return self.t


@pytest.fixture
def engine(outbox_db):
    engine = make_engine(outbox_db)
    yield engine
    engine.dispose()


@pytest.fixture
def uow(engine):
    return uow_factory(engine, lambda: "corr-42")


@pytest.fixture
def pg_engine(pg_test_url):
    engine = make_engine(pg_test_url, pool_size=4)
    yield engine
    engine.dispose()


class SubscriberBroker:
    """A real Redis broker with two subscriber actors on queues unique to the test."""

    def __init__(self, url: str = services.REDIS_URL) -> None:
        self.prefix = services.unique("obx") + "_"
        self.broker = RedisBroker(url=url, middleware=middleware.build_stack())
        self.queue = f"{self.prefix}subs"
        for name in ("sub_a", "sub_b"):
            dramatiq.actor(lambda event: None, broker=self.broker, actor_name=name, queue_name=self.queue)
        self.client = redis.Redis.from_url(services.REDIS_URL)

    def messages(self) -> list[Message]:
        return [Message.decode(v) for v in self.client.hvals(f"dramatiq:{self.queue}.msgs")]

    def deliveries(self) -> Counter:
        return Counter((m.options["causation_id"], m.actor_name) for m in self.messages())

    def close(self) -> None:
        services.purge_queues(services.REDIS_URL, self.prefix, ())
        self.broker.close()
        self.client.close()


@pytest.fixture
def broker():
    b = SubscriberBroker()
    yield b
    b.close()


ROUTES = [Route("image.*", "sub_a"), Route("*", "sub_b")]


def _record(uow, n: int, event_type: str = "image.processed") -> list[str]:
    ids = []
    with uow() as u:
        for i in range(n):
            e = DomainEvent(event_type, "image", new_id(), {"i": i})
            u.add_event(e)
            ids.append(e.id)
        u.commit()
    return ids


def _bulk_insert(engine, n: int) -> None:
    now = utcnow()
    rows = [{"id": new_id(), "type": "image.processed", "aggregate_type": "image", "aggregate_id": str(i),
             "payload": {"i": i}, "correlation_id": None, "created_at": now, "next_attempt_at": now,
             "attempts": 0, "dead": False} for i in range(n)]
    with engine.begin() as conn:
        for start in range(0, n, 2000):
            conn.execute(insert(t.outbox_events), rows[start:start + 2000])


def test_rolled_back_transaction_leaves_no_event_committed_one_leaves_exactly_one(uow):
    def change(commit: bool) -> tuple[str, str]:
        image_id = new_id()
        event = DomainEvent("image.uploaded", "image", image_id, {"image_id": image_id})
        with uow() as u:
            u.images.add(Image(id=image_id, original_key=f"originals/{image_id}"))
            u.add_event(event)
            if commit:
                u.commit()
        return image_id, event.id

    rolled_back = change(commit=False)
    committed = change(commit=True)
    with uow() as u:
        assert u.images.get(rolled_back[0]) is None and u.outbox.get(rolled_back[1]) is None
        assert u.images.get(committed[0]) is not None
        events = [e for e in u.outbox.list(limit=1000) if e.aggregate_id in (rolled_back[0], committed[0])]
    assert [(e.id, e.type, e.correlation_id, e.attempts, e.dead) for e in events] == [
        (committed[1], "image.uploaded", "corr-42", 0, False)]


def test_relay_delivers_to_each_subscriber_with_the_message_contract(uow, broker):
    ids = _record(uow, 3) + _record(uow, 1, "upload.completed")
    relay = OutboxRelay(uow, DramatiqPublisher(broker.broker, dedup_window=60), ROUTES, batch_size=2)
    stats = relay.relay()
    assert (stats.published, stats.deliveries, stats.batches) == (4, 7, 2)
    assert broker.deliveries() == Counter({**{(i, "sub_a"): 1 for i in ids[:3]}, **{(i, "sub_b"): 1 for i in ids}})
    message = next(m for m in broker.messages() if m.actor_name == "sub_a" and m.options["causation_id"] == ids[0])
    assert message.options["dedup_key"] == f"{ids[0]}:sub_a"
    assert message.options["dedup_window"] == 60
    assert message.options["correlation_id"] == "corr-42"
    (event,) = message.args
    assert (event["id"], event["type"], event["payload"], event["correlation_id"]) == (
        ids[0], "image.processed", {"i": 0}, "corr-42")
    with uow() as u:
        assert all(u.outbox.get(i).published_at is not None for i in ids)
    assert relay.relay().claimed == 0


def test_a_real_worker_runs_what_the_relay_enqueued(uow, broker):
    """The batched Redis enqueue writes what Dramatiq's own consumer reads."""
    seen: list[tuple[str, str]] = []
    done = dramatiq.actor(lambda event: seen.append((event["id"], event["type"])), broker=broker.broker,
                          actor_name="sub_worker", queue_name=broker.queue + "w")
    ids = _record(uow, 25)
    OutboxRelay(uow, DramatiqPublisher(broker.broker), [Route("image.*", done.actor_name)], batch_size=10).relay()
    worker = dramatiq.Worker(broker.broker, queues={done.queue_name}, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        services.wait_for(lambda: len(seen) >= 25, timeout=30, message="25 runs")
    finally:
        worker.stop()
    assert sorted(seen) == sorted((i, "image.processed") for i in ids)


def test_published_events_are_announced_on_redis_pubsub(uow, broker):
    channel = f"{broker.prefix}atelier.events"
    pubsub = broker.client.pubsub()
    pubsub.subscribe(channel)
    services.wait_for(lambda: pubsub.get_message(timeout=0.1), message="subscription confirmed")
    ids = _record(uow, 2)
    publisher = DramatiqPublisher(broker.broker, broker.client, channel=channel)
    OutboxRelay(uow, publisher, ROUTES, batch_size=1).relay()  # one announcement per batch
    got: list[str] = []

    def receive() -> bool:
        message = pubsub.get_message(timeout=0.1)
        if message:
            got.extend(e["id"] for e in json.loads(message["data"]))
        return len(got) == 2

    services.wait_for(receive, message="two announcements")
    pubsub.close()
    assert sorted(got) == sorted(ids)


def test_failing_route_backs_off_then_dies_and_retry_revives(uow, broker, tmp_path):
    (event_id,) = _record(uow, 1)
    clock = Clock()
    relay = OutboxRelay(uow, DramatiqPublisher(broker.broker), [*ROUTES, Route("image.*", "no_such_actor")],
                        max_retries=2, backoff_ms=1000, clock=clock)
    for attempt, wait in ((1, 1), (2, 2)):
        assert relay.relay().failed == 1
        with uow() as u:
            e = u.outbox.get(event_id)
        assert (e.attempts, e.dead, e.next_attempt_at - clock.t) == (attempt, False, timedelta(seconds=wait))
        assert "no_such_actor" in e.last_error
        assert relay.relay().claimed == 0
        clock.t = e.next_attempt_at
    assert relay.relay().dead == 1
    assert [e.id for e in relay.list_dead()] == [event_id]
    # The healthy subscribers got the event on each of the three tries, with one dedup key each.
    msgs = broker.messages()
    assert Counter(m.options["dedup_key"] for m in msgs) == Counter(
        {f"{event_id}:sub_a": 3, f"{event_id}:sub_b": 3})

    relay.router = OutboxRelay(uow, None, ROUTES).router  # type: ignore[arg-type]  (the route is fixed)
    relay.retry(event_id)
    assert relay.relay().published == 1
    assert relay.list_dead() == []


def test_crash_between_enqueue_and_commit_resends_under_the_same_dedup_keys(uow, broker):
    """The subscriber runs once because the dedup middleware (message contract: dedup_key,
    dedup_window) skips the resend; here we check the resend carries the same keys."""
    ids = _record(uow, 5)
    real = DramatiqPublisher(broker.broker)

    class CrashingPublisher:
        def enqueue(self, deliveries):
            real.enqueue(deliveries)
            raise RuntimeError("killed before commit")

        def notify(self, events):
            raise AssertionError("nothing was published")

    with pytest.raises(RuntimeError):
        OutboxRelay(uow, CrashingPublisher(), ROUTES).relay()
    with uow() as u:
        assert all(u.outbox.get(i).published_at is None for i in ids)
    assert OutboxRelay(uow, real, ROUTES).relay().published == 5
    keys = Counter(m.options["dedup_key"] for m in broker.messages())
    assert keys == Counter({f"{i}:{a}": 2 for i in ids for a in ("sub_a", "sub_b")})


def test_broker_down_events_wait_and_are_relayed_when_it_is_back(uow, broker):
    ids = _record(uow, 30)
    down = RedisBroker(url=f"redis://127.0.0.1:{services.free_port()}/0", middleware=middleware.build_stack(),
                       socket_connect_timeout=1)
    for name in ("sub_a", "sub_b"):
        dramatiq.actor(lambda event: None, broker=down, actor_name=name, queue_name=broker.queue)
    for _ in range(3):
        stats = OutboxRelay(uow, DramatiqPublisher(down), ROUTES, max_retries=0, batch_size=10).relay()
        assert stats.broker_down and stats.published == 0
    with uow() as u:
        pending = [u.outbox.get(i) for i in ids]
    assert all(e.published_at is None and e.attempts == 0 and not e.dead for e in pending)
    assert broker.messages() == []

    stats = OutboxRelay(uow, DramatiqPublisher(broker.broker), ROUTES, max_retries=0, batch_size=10).relay()
    assert stats.published == 30
    assert broker.deliveries() == Counter({(i, a): 1 for i in ids for a in ("sub_a", "sub_b")})


def test_claims_skip_rows_another_relay_holds_on_postgresql(pg_engine):
    uow = uow_factory(pg_engine)
    ids = set(_record(uow, 5, "lock.test"))
    with uow() as first:
        a = {e.id for e in first.outbox.claim_due(utcnow(), 3)}
        with uow() as second:
            b = {e.id for e in second.outbox.claim_due(utcnow(), 100)}
        assert len(a) == 3 and len(b) == 2 and a | b == ids


def test_two_relays_in_parallel_deliver_10000_events_once_to_each_subscriber(pg_test_url, broker):
    engine = make_engine(pg_test_url, pool_size=4)
    _bulk_insert(engine, 10_000)
    uow = uow_factory(engine)
    stats = []
    errors = []

    def run() -> None:
        try:
            relay = OutboxRelay(uow, DramatiqPublisher(broker.broker), ROUTES, batch_size=100)
            stats.append(relay.relay(budget_seconds=600))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    with engine.connect() as conn:
        pending = conn.scalar(select(func.count()).select_from(t.outbox_events)
                              .where(t.outbox_events.c.published_at.is_(None)))
        ids = list(conn.scalars(select(t.outbox_events.c.id)))
    engine.dispose()
    assert pending == 0
    assert sum(s.published for s in stats) == 10_000
    assert all(s.published > 0 for s in stats), [s.published for s in stats]  # both relays took part
    deliveries = broker.deliveries()
    assert len(deliveries) == 20_000 and set(deliveries.values()) == {1}
    assert set(deliveries) == {(i, a) for i in ids for a in ("sub_a", "sub_b")}


def test_two_relays_in_parallel_on_sqlite_take_turns_and_deliver_once(sqlite_url, broker):
    """SQLite has no row locks: each batch holds the database write lock (BEGIN IMMEDIATE)."""
    engine = make_engine(sqlite_url)
    _bulk_insert(engine, 2_000)
    uow = uow_factory(engine)
    stats, errors = [], []

    def run() -> None:
        try:
            stats.append(OutboxRelay(uow, DramatiqPublisher(broker.broker), ROUTES).relay(budget_seconds=600))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    engine.dispose()
    assert not errors, errors
    assert sum(s.published for s in stats) == 2_000
    deliveries = broker.deliveries()
    assert len(deliveries) == 4_000 and set(deliveries.values()) == {1}


def test_relay_on_rabbitmq_reaches_a_real_worker_and_waits_out_an_outage(uow):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    prefix = services.unique("obx") + "_"
    seen: list[str] = []
    rabbit = RabbitmqBroker(url=services.RABBITMQ_URL, confirm_delivery=True, middleware=middleware.build_stack())
    dramatiq.actor(lambda event: seen.append(event["id"]), broker=rabbit, actor_name="sub_a",
                   queue_name=f"{prefix}subs")
    down = RabbitmqBroker(url=f"amqp://guest:guest@127.0.0.1:{services.free_port()}/", confirm_delivery=True,
                          middleware=middleware.build_stack())
    dramatiq.actor(lambda event: None, broker=down, actor_name="sub_a", queue_name=f"{prefix}subs")
    routes = [Route("image.*", "sub_a")]
    ids = _record(uow, 12)
    try:
        stats = OutboxRelay(uow, DramatiqPublisher(down), routes, max_retries=0).relay()
        assert stats.broker_down and stats.published == 0
        stats = OutboxRelay(uow, DramatiqPublisher(rabbit), routes, batch_size=5).relay()
        assert stats.published == 12
        worker = dramatiq.Worker(rabbit, worker_threads=2, worker_timeout=100)
        worker.start()
        try:
            services.wait_for(lambda: len(seen) >= 12, timeout=30, message="12 runs on RabbitMQ")
        finally:
            worker.stop()
        assert sorted(seen) == sorted(ids)
    finally:
        rabbit.close()
        down.close()
        services.purge_queues(services.RABBITMQ_URL, prefix, ("subs",))


def test_an_event_recorded_under_a_correlation_id_longer_than_its_column_commits(engine):
    # The running message's correlation id is the producer's choice; one longer than the
    # 64-character column made every commit recording an event fail on PostgreSQL (a delivery
    # already accepted by its channel could not be marked SENT, and was sent again on retry).
    cid = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    [event_id] = _record(uow_factory(engine, lambda: cid), 1)
    with uow_factory(engine)() as u:
        assert u.outbox.get(event_id).correlation_id == cid[:64]


def test_events_recorded_by_an_actor_carry_its_messages_correlation_id(engine):
    """The composition root's unit of work stamps events with the running message's correlation
    id (or a correlation_scope's inside the actor), through the middleware, not log context."""
    from bootstrap import Container
    from bootstrap.settings import Settings
    from brokers.dispatch import AtelierStubBroker
    from runtime import correlation_scope

    container = Container(Settings())
    container.__dict__["engine"] = engine  # the test's database, in place of the settings' one
    broker = AtelierStubBroker(middleware=middleware.build_stack(max_retries=0))
    recorded = {}

    @dramatiq.actor(broker=broker, queue_name="q")
    def records():
        [recorded["inherited"]] = _record(container.uow, 1)
        with correlation_scope("scoped-7"):
            [recorded["scoped"]] = _record(container.uow, 1)

    message = records.send_with_options(correlation_id="from-the-producer")
    services.drain_stub(broker)
    with uow_factory(engine)() as u:
        assert u.outbox.get(recorded["inherited"]).correlation_id == message.options["correlation_id"]
        assert u.outbox.get(recorded["scoped"]).correlation_id == "scoped-7"
    [outside] = _record(container.uow, 1)  # no message running, no scope: none
    with uow_factory(engine)() as u:
        assert u.outbox.get(outside).correlation_id is None
