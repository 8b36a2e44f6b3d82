"""Periodic actors (relay_outbox, drain_fallback, sweep_deliveries) on the StubBroker: a tick that
fails because a server is down is not dead-lettered (issue 16, hole 8: one dead letter per relay
tick during a PostgreSQL outage). The next tick does the work; the failure is logged."""

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from bootstrap import Container, get_container, set_container
from bootstrap.settings import load_settings
from middleware.deadletters import DeadLetters
from tests.unit.fakes import FakeDeadLetterStore


class Down:
    """Any service whose every call fails like a server that is down."""

    calls = 0

    def __getattr__(self, name):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            type(self).calls += 1
            raise ConnectionError("connection refused: the server is down")

        return call


@pytest.fixture
def world():
    import actors

    assert isinstance(actors.broker, StubBroker), "unit tests run with BROKER_URL unset (stub://)"
    previous = get_container()
    container = Container(load_settings())
    for name in ("outbox_relay", "fallback_drainer", "messaging"):
        container.__dict__[name] = Down()
    set_container(container)
    broker = actors.broker
    broker.flush_all()
    broker.dead_letters_by_queue.clear()
    dead_letters = next(m for m in broker.middleware if isinstance(m, DeadLetters))
    previous_store, dead_letters._store = dead_letters._store, FakeDeadLetterStore()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    Down.calls = 0
    yield actors, dead_letters.store
    worker.stop()
    dead_letters._store = previous_store
    set_container(previous)


@pytest.mark.parametrize("name", ["outbox.relay_outbox", "fallback.drain_fallback", "messaging.sweep_deliveries"])
def test_a_tick_failing_on_an_outage_is_not_dead_lettered(world, name, caplog):
    actors, letters = world
    module, actor_name = name.split(".")
    actor = getattr(getattr(actors, module), actor_name)
    for _ in range(3):
        actor.send()
    actors.broker.join(actor.queue_name, fail_fast=True)
    assert Down.calls == 3
    assert letters.letters == {} and actors.broker.dead_letters == []
    assert any("tick failed" in r.getMessage() for r in caplog.records)
