"""The outbox relay's periodic tick against the database of record going away (a PostgreSQL of
the test's own, tests/private_pg.py): ticks that fail during the outage leave no dead letter
(issue 16, hole 8), and every event recorded before it is published once it is back."""

from __future__ import annotations

import logging

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from bootstrap import Container, get_container, set_container
from bootstrap.settings import load_settings
from domain.models import DomainEvent, new_id
from middleware.deadletters import DeadLetters
from tests.private_pg import PrivatePostgres
from tests.unit.fakes import FakeDeadLetterStore

pytestmark = pytest.mark.fault


class Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_relay_ticks_during_a_postgres_outage_leave_no_dead_letter():
    import actors

    assert isinstance(actors.broker, StubBroker), "these tests run with BROKER_URL unset (stub://)"
    broker = actors.broker
    previous = get_container()
    dead_letters = next(m for m in broker.middleware if isinstance(m, DeadLetters))
    previous_store, dead_letters._store = dead_letters._store, FakeDeadLetterStore()
    with PrivatePostgres() as pg:
        url = pg.create_database()
        set_container(Container(load_settings(database_url=url)))
        engine = make_engine(url)
        uow = uow_factory(engine)
        ids = []
        with uow() as u:
            for _ in range(5):
                event = DomainEvent("message.status", "message", new_id(), {})  # announced only
                u.add_event(event)
                ids.append(event.id)
            u.commit()
        broker.flush_all()
        failures = Failures()  # after the migrations, which configure logging their own way
        logging.getLogger("actors.ticks").addHandler(failures)
        worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
        worker.start()
        try:
            pg.stop()
            for _ in range(3):
                actors.outbox.relay_outbox.send()
            broker.join(actors.outbox.relay_outbox.queue_name, fail_fast=True)
            assert dead_letters.store.letters == {} and broker.dead_letters == []
            assert sum("relay_outbox tick failed" in m for m in failures.messages) == 3

            pg.start()
            actors.outbox.relay_outbox.send()
            broker.join(actors.outbox.relay_outbox.queue_name, fail_fast=True)
            with uow() as u:
                assert all(u.outbox.get(i).published_at is not None for i in ids)
        finally:
            worker.stop()
            logging.getLogger("actors.ticks").removeHandler(failures)
            dead_letters._store = previous_store
            get_container().close()
            set_container(previous)
            engine.dispose()
