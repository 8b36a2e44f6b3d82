"""The messaging actors on the StubBroker, with the service over in-memory fakes: route_message fans
out one deliver_message per channel; bad payloads fail at once; redelivery sends nothing twice."""

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from bootstrap import Container, get_container, set_container
from bootstrap.settings import load_settings
from domain.models import MessageChannel, MessageStatus, new_id
from domain.services.messaging import MessagingService
from middleware.deadletters import DeadLetters
from tests.unit.fakes import FakeChannelGateway, FakeDeadLetterStore, FakeMessagingUnitOfWork


@pytest.fixture
def world():
    import actors

    assert isinstance(actors.broker, StubBroker), "unit tests run with BROKER_URL unset (stub://)"
    rows, events = {}, []
    gateways = {MessageChannel.WHATSAPP: FakeChannelGateway("wa"), MessageChannel.INSTAGRAM: FakeChannelGateway("ig")}
    service = MessagingService(lambda: FakeMessagingUnitOfWork(rows, events), gateways)
    previous = get_container()
    container = Container(load_settings())
    container.__dict__["messaging"] = service  # the cached_property's slot
    set_container(container)
    broker = actors.broker
    broker.flush_all()
    broker.dead_letters_by_queue.clear()
    # The process-wide broker's dead-letter middleware writes to the fake store for this test.
    dead_letters = next(m for m in broker.middleware if isinstance(m, DeadLetters))
    previous_store, dead_letters._store = dead_letters._store, FakeDeadLetterStore()
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    yield actors, service, rows, gateways
    worker.stop()
    dead_letters._store = previous_store
    set_container(previous)


def test_route_message_fans_out_and_delivers_each_channel_once(world):
    actors, service, rows, gateways = world
    message, _ = service.create(channel="all", recipient="ann", text="hi")
    actors.messaging.route_message.send(message.id)
    actors.messaging.route_message.send(message.id)  # a duplicate from the producer
    actors.broker.join(actors.messaging.route_message.queue_name, fail_fast=True)
    assert rows[message.id].status is MessageStatus.SENT
    assert len(gateways[MessageChannel.WHATSAPP].sent) == len(gateways[MessageChannel.INSTAGRAM].sent) == 1


def test_bad_payloads_fail_at_once(world):
    actors, service, rows, gateways = world
    actors.messaging.deliver_message.send("not-a-uuid", "whatsapp")
    actors.messaging.deliver_message.send(new_id(), "all")
    actors.messaging.route_message.send(new_id())  # no such message: NotFound, permanent
    actors.broker.join(actors.messaging.route_message.queue_name, fail_fast=False)
    assert len(actors.broker.dead_letters) == 3
    letters = next(m for m in actors.broker.middleware if isinstance(m, DeadLetters)).store.list()
    assert sorted(x.actor for x in letters) == ["deliver_message", "deliver_message", "route_message"]
    assert {x.reason for x in letters} == {"permanent"}
    assert gateways[MessageChannel.WHATSAPP].sent == []


def test_the_actors_carry_the_middleware_options_of_the_contract(world):
    actors = world[0]
    m = actors.messaging
    assert {k: m.route_message.options[k] for k in m.ROUTE_OPTIONS} == m.ROUTE_OPTIONS
    assert {k: m.deliver_message.options[k] for k in m.DELIVER_OPTIONS} == m.DELIVER_OPTIONS
    assert actors.messaging.ROUTE_OPTIONS["dedup_key"]("m-1") == "message:m-1"
    assert actors.messaging.ROUTE_OPTIONS["dedup_window"] == 86400
    assert actors.messaging.DELIVER_OPTIONS["circuit"]("m-1", "whatsapp") == "channel:whatsapp"
    assert actors.messaging.DELIVER_OPTIONS["circuit_fallback"] is True


def test_a_send_whose_record_failed_is_recorded_by_the_retry_not_sent_again(world):
    """Issue 16, hole 1, through the actor: the retry carries the receipt in its options."""
    actors, _, rows, gateways = world
    events: list = []
    armed = []

    def uow():
        unit = FakeMessagingUnitOfWork(rows, events)
        if armed and armed.pop():
            def down() -> None:
                raise ConnectionError("database of record unreachable")

            unit.commit = down  # the outcome's commit fails once
        return unit

    # A short lease: without the receipt the retry would find it expired and send again.
    service = MessagingService(uow, gateways, lease_seconds=0.2)
    get_container().__dict__["messaging"] = service
    message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    service.route(message.id)
    gateways[MessageChannel.WHATSAPP].during_send = lambda: armed.append(True)
    actors.messaging.deliver_message.send_with_options(args=(message.id, "whatsapp"), min_backoff=300,
                                                       max_backoff=400)
    actors.broker.join(actors.messaging.deliver_message.queue_name, fail_fast=True)
    delivery = rows[message.id].delivery(MessageChannel.WHATSAPP)
    assert delivery.status is MessageStatus.SENT and delivery.provider_message_id == "wa-1"
    assert len(gateways[MessageChannel.WHATSAPP].sent) == 1, "sent twice"
    assert actors.broker.dead_letters == []


def test_a_carried_receipt_survives_into_the_replay_of_a_dead_letter():
    """A retry that could not record the receipt either ends dead-lettered; its replay carries it."""
    from datetime import UTC, datetime

    from domain.resilience import DeadLetter
    from domain.services.deadletters import DeadLetterService

    receipt = {"message_id": "m", "channel": "whatsapp", "provider_message_id": "wamid.1"}
    letter = DeadLetter(id="l-1", message_id="x", actor="deliver_message", queue="messages", args=["m", "whatsapp"],
                        kwargs={}, options={"delivery_receipt": receipt, "retries": 10}, error_type="E", error="e",
                        traceback="", reason="retries_exhausted", attempts=11, enqueued_at=datetime.now(UTC),
                        failed_at=datetime.now(UTC))
    options = DeadLetterService(None, None, None).replay_options(letter)  # type: ignore[arg-type]
    assert options["delivery_receipt"] == receipt and "retries" not in options


def test_a_delivery_lost_with_the_fallback_list_is_sent_by_the_sweep_once(world):
    """Issue 16, hole 2: the circuit's fallback list held the only copy of an acked delivery and
    Redis lost it (flush, failover). The sweep routes it again from the database of record, and
    the parked copy coming back after all sends nothing twice."""
    from datetime import timedelta

    from adapters.state.memory import InMemoryBreakerStore, InMemoryFallbackQueue
    from domain.models import utcnow
    from middleware.circuit import CircuitBreaker

    actors, _, rows, gateways = world

    class Clock:
        t = utcnow()

        def now(self):  # type: ignore[no-untyped-def]
            return self.t

    clock = Clock()
    service = MessagingService(lambda: FakeMessagingUnitOfWork(rows, []), gateways, clock=clock)
    get_container().__dict__["messaging"] = service
    breaker = next(m for m in actors.broker.middleware if isinstance(m, CircuitBreaker))
    saved = breaker._store, breaker._fallback
    breaker._store, breaker._fallback = InMemoryBreakerStore(), InMemoryFallbackQueue()
    try:
        for _ in range(breaker.policy.failure_threshold):  # the channel is failing: open
            breaker.store.record_failure("channel:whatsapp", int(clock.t.timestamp() * 1000), breaker.policy)
        message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
        service.route(message.id)
        actors.messaging.deliver_message.send(message.id, "whatsapp")
        actors.broker.join(actors.messaging.deliver_message.queue_name, fail_fast=True)
        (parked,) = breaker.fallback.claim("channel:whatsapp", 10)  # its only copy
        breaker._store, breaker._fallback = InMemoryBreakerStore(), InMemoryFallbackQueue()  # Redis flushed

        actors.messaging.sweep_deliveries.send()
        actors.broker.join(actors.messaging.deliver_message.queue_name, fail_fast=True)
        assert rows[message.id].delivery(MessageChannel.WHATSAPP).status is MessageStatus.PENDING  # too soon
        clock.t += timedelta(seconds=actors.settings.message_sweep_after_s + 1)
        actors.messaging.sweep_deliveries.send()
        actors.broker.join(actors.messaging.deliver_message.queue_name, fail_fast=True)
        assert rows[message.id].delivery(MessageChannel.WHATSAPP).status is MessageStatus.SENT
        # Had the parked copy survived after all, draining it sends nothing twice.
        actors.broker.enqueue(dramatiq.Message.decode(parked))
        actors.broker.join(actors.messaging.deliver_message.queue_name, fail_fast=True)
        assert len(gateways[MessageChannel.WHATSAPP].sent) == 1
    finally:
        breaker._store, breaker._fallback = saved


def test_a_carried_receipt_keeps_its_message_retrying_through_a_long_outage():
    """The receipt must outlive the database outage: with the default 10 retries it would rest in
    a dead letter after about half an hour, until someone replays it."""
    import actors
    from domain.models import SendReceipt

    options: dict = {"max_retries": 5}
    actors.messaging.carry_receipt(options, "m-1", "whatsapp", SendReceipt("wamid.1"))
    assert options["max_retries"] == actors.messaging.RECEIPT_MAX_RETRIES >= 1000
    assert actors.messaging.carried_receipt(options, "m-1", "whatsapp") == SendReceipt("wamid.1")
    assert actors.messaging.carried_receipt(options, "m-1", "instagram") is None  # another delivery's
    assert actors.messaging.carried_receipt({"delivery_receipt": "junk"}, "m-1", "whatsapp") is None


class WaitingPacer:
    """Answers the given waits in turn, then lets everything through."""

    def __init__(self, waits):
        self.waits, self.asked = list(waits), 0

    def acquire(self, channel, recipient, token):
        self.asked += 1
        return self.waits.pop(0) if self.waits else 0.0

    def hold(self, channel, recipient, seconds):
        pass


def test_a_short_pacing_wait_is_slept_in_place_a_long_one_parks(world, monkeypatch):
    actors, service, rows, gateways = world
    slept, parked = [], []
    monkeypatch.setattr(actors.messaging, "sleep", slept.append)
    import middleware.retries

    real_park = middleware.retries.park
    monkeypatch.setattr(middleware.retries, "park", lambda broker, message, delay: (parked.append(delay),
                                                                                   real_park(broker, message, 1)))
    pacer = WaitingPacer([0.05, 0.2, 30.0])  # 0.25 s in place (PACING_MAX_SLEEP_MS 500), then a park
    service._pacer = pacer
    message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    service.route(message.id)
    actors.messaging.deliver_message.send(message.id, "whatsapp")
    actors.broker.join(actors.messaging.deliver_message.queue_name, fail_fast=True)
    assert slept == [0.05, 0.2] and parked == [30_000]
    assert pacer.asked == 4 and rows[message.id].status is MessageStatus.SENT
    assert rows[message.id].deliveries[0].attempts == 1


def test_a_carried_receipt_is_recorded_while_the_channels_circuit_is_open(world):
    """A retry carrying a receipt does not call the channel, so an open circuit must not park it:
    parked, its only copy sits in the fallback list in Redis (a flush loses it, and the sweep then
    sends the message again a day later), and its delivery stays PENDING meanwhile."""
    from adapters.state.memory import InMemoryBreakerStore, InMemoryFallbackQueue
    from middleware.circuit import CircuitBreaker

    actors, service, rows, gateways = world
    breaker = next(m for m in actors.broker.middleware if isinstance(m, CircuitBreaker))
    saved = breaker._store, breaker._fallback
    breaker._store, breaker._fallback = InMemoryBreakerStore(), InMemoryFallbackQueue()
    try:
        import time

        for _ in range(breaker.policy.failure_threshold):  # the channel is failing: open
            breaker.store.record_failure("channel:whatsapp", int(time.time() * 1000), breaker.policy)
        message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
        service.route(message.id)
        from domain.models import SendReceipt

        options: dict = {}  # what the run whose record failed leaves on its retry
        actors.messaging.carry_receipt(options, message.id, "whatsapp", SendReceipt("wamid.7"))
        actors.messaging.deliver_message.send_with_options(args=(message.id, "whatsapp"), **options)
        actors.broker.join(actors.messaging.deliver_message.queue_name, fail_fast=True)
        assert breaker.fallback.claim("channel:whatsapp", 10) == []
        delivery = rows[message.id].delivery(MessageChannel.WHATSAPP)
        assert (delivery.status, delivery.provider_message_id) == (MessageStatus.SENT, "wamid.7")
        assert gateways[MessageChannel.WHATSAPP].sent == []
    finally:
        breaker._store, breaker._fallback = saved
