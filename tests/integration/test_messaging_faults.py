"""Chat deliveries against the database of record going away: a PostgreSQL of the test's own
(tests/private_pg.py), stopped and started again, the real mock-channels server counting what it
accepts, and the deliver_message actor on the StubBroker with a real Worker (retries and all)."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from bootstrap import Container, get_container, set_container
from bootstrap.settings import load_settings
from domain.models import MessageChannel, MessageStatus
from domain.services.messaging import MessagingService
from middleware.deadletters import DeadLetters
from tests import services
from tests.integration.test_channels import Mock, _gateways
from tests.private_pg import PrivatePostgres
from tests.unit.fakes import FakeDeadLetterStore

pytestmark = pytest.mark.fault

WA = MessageChannel.WHATSAPP


class StopDatabaseAfterSend:
    """The WhatsApp gateway, which stops the database right after the channel accepted the first
    message: the SENT record that follows cannot commit."""

    def __init__(self, gateway, pg: PrivatePostgres) -> None:
        self.gateway, self.pg, self.armed = gateway, pg, True

    def send(self, message, idempotency_key):  # type: ignore[no-untyped-def]
        receipt = self.gateway.send(message, idempotency_key)
        if self.armed:
            self.armed = False
            self.pg.stop()
        return receipt


class CountingService(MessagingService):
    calls = 0

    def deliver(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        type(self).calls += 1
        return super().deliver(*args, **kwargs)


@pytest.fixture
def world():
    import actors

    assert isinstance(actors.broker, StubBroker), "these tests run with BROKER_URL unset (stub://)"
    pg = PrivatePostgres().start()
    mock = Mock()
    engine = make_engine(pg.create_database())
    previous = get_container()
    set_container(Container(load_settings()))
    broker = actors.broker
    broker.flush_all()
    broker.dead_letters_by_queue.clear()
    dead_letters = next(m for m in broker.middleware if isinstance(m, DeadLetters))
    previous_store, dead_letters._store = dead_letters._store, FakeDeadLetterStore()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    yield actors, pg, mock, engine, dead_letters.store
    worker.stop()
    dead_letters._store = previous_store
    set_container(previous)
    engine.dispose()
    mock.close()
    pg.close()


def test_postgres_down_between_send_and_record_sends_once(world):
    """Issue 16, hole 1: the channel accepted the message, PostgreSQL went down before SENT was
    recorded, and came back 2+ retries later. The channel took the message once; the retry that
    ran once the database was back recorded the first answer."""
    actors, pg, mock, engine, letters = world
    gateways = _gateways(mock.url)
    gateways[WA] = StopDatabaseAfterSend(gateways[WA], pg)
    # A short lease: without the receipt, the retry after the outage would find it expired and send.
    service = CountingService(uow_factory(engine), gateways, lease_seconds=0.5)
    CountingService.calls = 0
    get_container().__dict__["messaging"] = service
    message, _ = service.create(channel="whatsapp", recipient="+15550001", text="hello")
    service.route(message.id)

    actors.messaging.deliver_message.send_with_options(args=(message.id, "whatsapp"), min_backoff=200,
                                                       max_backoff=400, max_retries=50)
    # The first attempt sent and failed to record; two more ran against the stopped database.
    services.wait_for(lambda: CountingService.calls >= 3, timeout=30, message="retries during the outage")
    assert not pg.running()
    pg.start()
    actors.broker.join(actors.messaging.deliver_message.queue_name, fail_fast=True, timeout=30_000)

    stats = mock.stats("whatsapp")
    assert stats["accepted"] == 1, f"the channel took the message {stats['accepted']} times"
    accepted = mock.deliveries("whatsapp")[message.id]
    with uow_factory(engine)() as uow:
        stored = uow.messages.get(message.id)
    delivery = stored.delivery(WA)
    assert delivery.status is MessageStatus.SENT
    assert delivery.provider_message_id == accepted["provider_message_id"]
    assert delivery.attempts == 1  # one send; recording the receipt is no new attempt
    assert letters.letters == {}
