"""MessagingService with in-memory fakes: create, route (fan-out), deliver, statuses, events."""

from datetime import timedelta

import pytest

from domain.errors import DeliveryInFlight, InvalidPayload, NotFound, PermanentError, TransientError
from domain.models import MessageChannel, MessageStatus, ReportedStatus, new_id, utcnow
from domain.services.messaging import MessagingService
from tests.unit.fakes import FakeChannelGateway, FakeMessagingUnitOfWork

WA, IG = MessageChannel.WHATSAPP, MessageChannel.INSTAGRAM


class Clock:
    def __init__(self) -> None:
        self.t = utcnow()

    def now(self):  # type: ignore[no-untyped-def]
        return self.t


@pytest.fixture
def world():
    rows, events = {}, []
    gateways = {WA: FakeChannelGateway("wa"), IG: FakeChannelGateway("ig")}
    clock = Clock()
    service = MessagingService(lambda: FakeMessagingUnitOfWork(rows, events), gateways, lease_seconds=30,
                               clock=clock)
    return service, rows, events, gateways, clock


def _statuses(events):
    return [(e.payload["channel"], e.payload["status"]) for e in events if e.type == "message.status"]


def test_create_records_pending_with_a_created_event(world):
    service, rows, events, _, _ = world
    message, created = service.create(channel="whatsapp", recipient="+15550001", text="hello", sender="shop",
                                      conversation_id="c-1")
    assert created and rows[message.id].status is MessageStatus.PENDING
    assert [(e.type, e.aggregate_id, e.payload["channel"]) for e in events] == [
        ("message.created", message.id, "whatsapp")]


def test_create_is_idempotent_on_the_producers_id(world):
    service, rows, events, _, _ = world
    mid = new_id()
    first, created = service.create(channel="all", recipient="ann", text="hi", message_id=mid)
    again, created_again = service.create(channel="all", recipient="ann", text="hi", message_id=mid)
    assert created and not created_again and again.id == first.id == mid
    assert len(rows) == 1 and len(events) == 1
    with pytest.raises(InvalidPayload, match="different message"):
        service.create(channel="all", recipient="bob", text="hi", message_id=mid)


@pytest.mark.parametrize("kwargs, error", [
    ({"channel": "sms", "recipient": "a", "text": "x"}, "channel must be"),
    ({"channel": "whatsapp", "recipient": " ", "text": "x"}, "recipient is required"),
    ({"channel": "whatsapp", "recipient": "a"}, "exactly one"),
    ({"channel": "whatsapp", "recipient": "a", "text": "x", "template": {"name": "hello_world"}}, "exactly one"),
    ({"channel": "instagram", "recipient": "a", "template": {"name": "hello_world"}}, "templates are WhatsApp's"),
    ({"channel": "all", "recipient": "a", "template": {"name": "hello_world"}}, "templates are WhatsApp's"),
    ({"channel": "whatsapp", "recipient": "a", "template": {"name": "Hello World"}}, "lower-case"),
    ({"channel": "whatsapp", "recipient": "a", "template": {"name": "x", "language": "english"}}, "language"),
    ({"channel": "whatsapp", "recipient": "a", "template": {"name": "x", "lang": "en"}}, "unknown field"),
    ({"channel": "whatsapp", "recipient": "a", "template": {"name": "x", "components": {"type": "body"}}},
     "components must be a list"),
    ({"channel": "whatsapp", "recipient": "a", "template": {"name": "x", "components": [{"parameters": []}]}},
     "component 0 must be an object with a type"),
    ({"channel": "whatsapp", "recipient": "a", "template": {"name": "x", "components": [
        {"type": "body", "parameters": ["Ana"]}]}}, "parameters must be a list of objects"),
    ({"channel": "whatsapp", "recipient": "a", "template": {"name": "x", "components": [
        {"type": "body", "parameters": [{"type": "text", "text": "y" * 20_000}]}]}}, "longer than"),
    ({"channel": "whatsapp", "recipient": "a", "template": {"name": "x", "components": [
        {"type": "body", "parameters": [{"type": "text", "text": float("nan")}]}]}}, "plain JSON"),
    ({"channel": "whatsapp", "recipient": "a", "template": "hello_world"}, "must be an object"),
    ({"channel": "whatsapp", "recipient": "a", "text": "x", "media_url": "https://x/y.png"}, "exactly one"),
    ({"channel": "whatsapp", "recipient": "a", "media_url": "file:///etc/passwd"}, "http"),
    ({"channel": "whatsapp", "recipient": "a", "text": "x" * 4097}, "longer than 4096"),
    ({"channel": "whatsapp", "recipient": "a", "text": "x", "message_id": "nope"}, "UUID"),
])
def test_bad_input_is_refused(world, kwargs, error):
    service, rows, _, _, _ = world
    with pytest.raises(InvalidPayload, match=error):
        service.create(**kwargs)
    assert rows == {}


def test_all_fans_out_into_one_delivery_per_channel(world):
    service, rows, _, _, _ = world
    message, _ = service.create(channel="all", recipient="ann", text="hi")
    assert service.route(message.id) == [WA, IG]
    assert [d.channel for d in rows[message.id].deliveries] == [WA, IG]
    assert service.route(message.id) == [WA, IG]  # routing again adds nothing
    assert len(rows[message.id].deliveries) == 2
    single, _ = service.create(channel="instagram", recipient="ann", text="hi")
    assert service.route(single.id) == [IG]
    with pytest.raises(NotFound):
        service.route(new_id())


def test_deliver_sends_once_and_records_sent_with_an_event(world):
    service, rows, events, gateways, _ = world
    message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    service.route(message.id)
    delivery = service.deliver(message.id, WA)
    assert delivery.status is MessageStatus.SENT and delivery.attempts == 1
    assert delivery.provider_message_id == "wa-1"
    assert gateways[WA].sent == [(message.id, f"{message.id}:whatsapp")]
    assert rows[message.id].status is MessageStatus.SENT
    # Redelivered by the broker: not sent again, nothing changes.
    again = service.deliver(message.id, WA)
    assert again.status is MessageStatus.SENT and again.attempts == 1
    assert len(gateways[WA].sent) == 1
    assert _statuses(events) == [("whatsapp", "SENT")]
    status = [e for e in events if e.type == "message.status"][0]
    assert status.payload["message_status"] == "SENT" and status.payload["provider_message_id"] == "wa-1"


def test_transient_failures_are_counted_and_retried(world):
    service, rows, events, gateways, _ = world
    message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    gateways[WA].fail_with = [TransientError("503 from channel"), TransientError("timeout")]
    for _ in range(2):
        with pytest.raises(TransientError):
            service.deliver(message.id, WA)
    stored = rows[message.id].delivery(WA)
    assert stored.status is MessageStatus.PENDING and stored.attempts == 2
    assert "timeout" in stored.last_error and stored.sending_until is None  # lease released
    assert service.deliver(message.id, WA).attempts == 3
    assert len(gateways[WA].sent) == 1
    assert _statuses(events) == [("whatsapp", "SENT")]  # PENDING -> SENT is the only change


def test_an_unexpected_error_releases_the_lease_too(world):
    service, rows, _, gateways, _ = world
    message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    gateways[WA].fail_with = [RuntimeError("bug in a gateway")]
    with pytest.raises(RuntimeError):
        service.deliver(message.id, WA)
    assert rows[message.id].delivery(WA).sending_until is None
    assert service.deliver(message.id, WA).status is MessageStatus.SENT


def test_permanent_failure_marks_failed_and_is_never_resent(world):
    service, rows, events, gateways, _ = world
    message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    gateways[WA].fail_with = [PermanentError("400: invalid recipient")]
    with pytest.raises(PermanentError):
        service.deliver(message.id, WA)
    assert rows[message.id].status is MessageStatus.FAILED
    assert service.deliver(message.id, WA).status is MessageStatus.FAILED
    assert gateways[WA].sent == []
    assert _statuses(events) == [("whatsapp", "FAILED")]


def test_fan_out_deliveries_are_tracked_on_their_own(world):
    service, rows, events, gateways, _ = world
    message, _ = service.create(channel="all", recipient="ann", text="hi")
    service.route(message.id)
    gateways[IG].fail_with = [PermanentError("403: not allowed to message this user")]
    service.deliver(message.id, WA)
    assert rows[message.id].status is MessageStatus.PENDING  # instagram still pending
    with pytest.raises(PermanentError):
        service.deliver(message.id, IG)
    stored = rows[message.id]
    assert (stored.delivery(WA).status, stored.delivery(IG).status) == (MessageStatus.SENT, MessageStatus.FAILED)
    assert stored.status is MessageStatus.SENT  # one channel got it
    assert stored.attempts == 2
    assert service.route(message.id) == []  # nothing left to send
    assert _statuses(events) == [("whatsapp", "SENT"), ("instagram", "FAILED")]


def test_a_concurrent_run_waits_for_the_lease_instead_of_sending(world):
    service, rows, _, gateways, clock = world
    message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    seen = []

    def competing_run():
        with pytest.raises(DeliveryInFlight):
            service.deliver(message.id, WA)
        seen.append(True)

    gateways[WA].during_send = competing_run
    service.deliver(message.id, WA)
    assert seen == [True] and len(gateways[WA].sent) == 1


def test_an_expired_lease_is_taken_over(world):
    """A run that died mid-send (its lease left behind) does not block the delivery forever."""
    service, rows, _, gateways, clock = world
    message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    service.route(message.id)
    stuck = rows[message.id]
    stuck.delivery(WA).start_attempt(clock.t, clock.t + timedelta(seconds=30))
    with pytest.raises(DeliveryInFlight):
        service.deliver(message.id, WA)
    clock.t += timedelta(seconds=31)
    delivery = service.deliver(message.id, WA)
    assert delivery.status is MessageStatus.SENT and delivery.attempts == 2


def test_deliver_checks_its_arguments(world):
    service, _, _, _, _ = world
    message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    with pytest.raises(InvalidPayload, match="not instagram"):
        service.deliver(message.id, IG)
    with pytest.raises(NotFound):
        service.deliver(new_id(), WA)


def test_delivery_reports_move_sent_to_delivered(world):
    service, rows, events, _, _ = world
    message, _ = service.create(channel="all", recipient="ann", text="hi")
    service.route(message.id)
    wa = service.deliver(message.id, WA)
    service.deliver(message.id, IG)
    assert service.record_status(WA, wa.provider_message_id, MessageStatus.DELIVERED).status is MessageStatus.DELIVERED
    assert rows[message.id].status is MessageStatus.SENT  # instagram not confirmed yet
    service.record_status(IG, rows[message.id].delivery(IG).provider_message_id, MessageStatus.DELIVERED)
    assert rows[message.id].status is MessageStatus.DELIVERED
    service.record_status(WA, wa.provider_message_id, MessageStatus.DELIVERED)  # a repeated report
    assert _statuses(events) == [("whatsapp", "SENT"), ("instagram", "SENT"), ("whatsapp", "DELIVERED"),
                                 ("instagram", "DELIVERED")]
    with pytest.raises(NotFound):
        service.record_status(WA, "wamid.unknown", MessageStatus.DELIVERED)
    with pytest.raises(InvalidPayload):
        service.record_status(WA, wa.provider_message_id, MessageStatus.FAILED)


class _RecordingFails:
    """Wraps the unit of work factory: the next ``n`` commits of a delivery outcome fail, as with
    the database down right after the channel accepted the message."""

    def __init__(self, rows, events, n: int = 1) -> None:
        self.rows, self.events, self.left = rows, events, n
        self.armed = False

    def __call__(self):
        uow = FakeMessagingUnitOfWork(self.rows, self.events)
        if self.armed and self.left > 0:
            self.left -= 1

            def down() -> None:
                raise ConnectionError("database of record unreachable")

            uow.commit = down  # type: ignore[method-assign]
        return uow


def test_a_send_whose_record_failed_hands_back_its_receipt_and_is_never_sent_again(world):
    """Issue 16, hole 1: the channel accepted the message, recording SENT failed. The retry must
    record the receipt, not send a second time, even once the lease has expired."""
    from domain.errors import SendNotRecorded

    _, rows, events, gateways, clock = world
    factory = _RecordingFails(rows, events)
    service = MessagingService(factory, gateways, lease_seconds=30, clock=clock)
    message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    service.route(message.id)

    def database_goes_down() -> None:
        factory.armed = True  # after the lease was taken, before the outcome is recorded

    gateways[WA].during_send = database_goes_down
    with pytest.raises(SendNotRecorded) as failed:
        service.deliver(message.id, WA)
    receipt = failed.value.receipt
    assert receipt.provider_message_id == "wa-1" and len(gateways[WA].sent) == 1
    assert rows[message.id].delivery(WA).status is MessageStatus.PENDING  # nothing recorded

    clock.t += timedelta(seconds=31)  # the lease of the first run has expired
    delivery = service.deliver(message.id, WA, sent=receipt)
    assert delivery.status is MessageStatus.SENT and delivery.provider_message_id == "wa-1"
    assert len(gateways[WA].sent) == 1, "sent twice"
    assert _statuses(events) == [("whatsapp", "SENT")]
    # Carried again later (a replayed dead letter): already SENT, nothing happens.
    assert service.deliver(message.id, WA, sent=receipt).status is MessageStatus.SENT
    assert len(gateways[WA].sent) == 1


def test_a_carried_receipt_is_recorded_even_while_the_lease_is_held(world):
    """The lease left by the run whose record failed must not make the retry wait for it: the
    receipt says the send is done."""
    from domain.models import SendReceipt

    service, rows, _, gateways, clock = world
    message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    service.route(message.id)
    rows[message.id].delivery(WA).start_attempt(clock.t, clock.t + timedelta(seconds=30))
    delivery = service.deliver(message.id, WA, sent=SendReceipt("wamid.1"))
    assert delivery.status is MessageStatus.SENT and delivery.sending_until is None
    assert gateways[WA].sent == []


# --- the sweep of deliveries left PENDING (issue 16, hole 2) ---

def _sweep(service, dispatched, **kw):  # type: ignore[no-untyped-def]
    kw = {"pending_for": 900, "unknown_for": 86_400, **kw}
    return service.sweep_stale(lambda message_id, channel: dispatched.append((message_id, channel)), **kw)


def test_a_delivery_left_pending_is_routed_again_once_per_bound(world):
    """Its message was lost (a circuit's fallback list flushed, say): nothing would ever send it."""
    service, rows, _, gateways, clock = world
    message, _ = service.create(channel="all", recipient="ann", text="hi")
    service.route(message.id)
    service.deliver(message.id, WA)  # whatsapp went out; instagram's message is lost
    dispatched: list = []
    assert _sweep(service, dispatched) == 0  # not stale yet
    clock.t += timedelta(seconds=901)
    assert _sweep(service, dispatched) == 1 and dispatched == [(message.id, IG)]
    assert _sweep(service, dispatched) == 1 - 1  # touched: not routed again on the next tick
    clock.t += timedelta(seconds=901)
    assert _sweep(service, dispatched) == 1  # still pending a bound later: once more
    # What it dispatches is an ordinary delivery: sent once, whatever runs it twice.
    for message_id, channel in dispatched:
        service.deliver(message_id, channel)
    assert len(gateways[IG].sent) == 1 and len(gateways[WA].sent) == 1


def test_the_sweep_leaves_a_delivery_being_sent_alone(world):
    service, rows, _, _, clock = world
    message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    service.route(message.id)
    rows[message.id].delivery(WA).start_attempt(clock.t, clock.t + timedelta(days=2))  # a live lease
    clock.t += timedelta(days=1)
    dispatched: list = []
    assert _sweep(service, dispatched, unknown_for=3600) == 0 and dispatched == []


def test_an_attempt_whose_outcome_is_unknown_waits_for_the_long_bound(world):
    """Its lease expired with nothing recorded: the send may have been accepted and its receipt be
    riding on a retry (SendNotRecorded). Sent again only after unknown_for."""
    service, rows, _, _, clock = world
    message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    service.route(message.id)
    rows[message.id].delivery(WA).start_attempt(clock.t, clock.t + timedelta(seconds=60))
    dispatched: list = []
    clock.t += timedelta(hours=2)
    assert _sweep(service, dispatched, unknown_for=86_400) == 0
    clock.t += timedelta(days=1)
    assert _sweep(service, dispatched, unknown_for=86_400) == 1 and dispatched == [(message.id, WA)]


def test_final_deliveries_are_never_swept_and_a_failed_dispatch_touches_nothing(world):
    service, rows, _, gateways, clock = world
    sent, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    service.deliver(sent.id, WA)
    failed, _ = service.create(channel="whatsapp", recipient="bob", text="hi")
    gateways[WA].fail_with = [PermanentError("400")]
    with pytest.raises(PermanentError):
        service.deliver(failed.id, WA)
    pending, _ = service.create(channel="instagram", recipient="cy", text="hi")
    service.route(pending.id)
    clock.t += timedelta(days=3)

    def broker_down(message_id, channel):  # type: ignore[no-untyped-def]
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        service.sweep_stale(broker_down, pending_for=900, unknown_for=86_400)
    dispatched: list = []
    assert _sweep(service, dispatched) == 1 and dispatched == [(pending.id, IG)]


def test_a_template_is_recorded_compared_and_sent_as_a_template(world):
    service, rows, events, gateways, _ = world
    template = {"name": "order_update", "language": "es", "components": [
        {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "#42"}]}]}
    mid = new_id()
    message, created = service.create(channel="whatsapp", recipient="+1555", template=template, message_id=mid)
    assert created and message.template.as_dict() == template and message.text is None
    assert rows[mid].template == message.template
    assert service.create(channel="whatsapp", recipient="+1555", template=dict(template), message_id=mid)[1] is False
    with pytest.raises(InvalidPayload, match="different message"):
        service.create(channel="whatsapp", recipient="+1555", message_id=mid,
                       template={**template, "language": "en_US"})
    default = service.create(channel="whatsapp", recipient="+1555", template={"name": "hello_world"})[0]
    assert default.template.language == "en_US" and default.template.components == []
    service.route(mid)
    assert service.deliver(mid, WA).status is MessageStatus.SENT


def test_reports_never_move_a_delivery_backwards(world):
    service, rows, events, _, _ = world
    ids = {}
    for name in ("read_first", "failed", "late_failure"):
        message, _ = service.create(channel="whatsapp", recipient=name, text="hi")
        service.route(message.id)
        ids[name] = (message.id, service.deliver(message.id, WA).provider_message_id)

    mid, pid = ids["read_first"]
    assert service.record_report(WA, pid, ReportedStatus.READ).status is MessageStatus.DELIVERED
    d = rows[mid].delivery(WA)
    assert d.read_at is not None and d.delivered_at is not None
    assert service.record_report(WA, pid, ReportedStatus.DELIVERED).read_at == d.read_at  # late: nothing
    assert service.record_report(WA, pid, ReportedStatus.SENT).status is MessageStatus.DELIVERED

    mid, pid = ids["failed"]
    failed = service.record_report(WA, pid, ReportedStatus.FAILED, "whatsapp: 131026 Message undeliverable: ...")
    assert (failed.status, failed.last_error) == (MessageStatus.FAILED, "whatsapp: 131026 Message undeliverable: ...")
    assert rows[mid].status is MessageStatus.FAILED
    for late in (ReportedStatus.DELIVERED, ReportedStatus.READ):
        assert service.record_report(WA, pid, late).status is MessageStatus.FAILED

    mid, pid = ids["late_failure"]
    service.record_report(WA, pid, ReportedStatus.DELIVERED)
    assert service.record_report(WA, pid, ReportedStatus.FAILED, "too late").status is MessageStatus.DELIVERED
    assert rows[mid].delivery(WA).last_error is None

    reported = [(e.aggregate_id, e.payload["status"], e.payload["read_at"] is not None) for e in events
                if e.type == "message.status" and e.payload["status"] != "SENT"]
    assert reported == [(ids["read_first"][0], "DELIVERED", True), (ids["failed"][0], "FAILED", False),
                        (ids["late_failure"][0], "DELIVERED", False)]
    with pytest.raises(NotFound):
        service.record_report(WA, "wamid.unknown", ReportedStatus.READ)


def test_a_template_nested_beyond_reason_is_refused_not_a_crash(world):
    service, rows, _, _, _ = world
    deep: dict = {"type": "text", "text": "x"}
    for _ in range(100_000):
        deep = {"type": "text", "nested": deep}
    with pytest.raises(InvalidPayload, match="plain JSON"):
        service.create(channel="whatsapp", recipient="a", template={"name": "x", "components": [
            {"type": "body", "parameters": [deep]}]})
    assert rows == {}


def test_the_sweep_gives_up_on_a_delivery_that_used_up_its_attempts(world):
    """A delivery whose deliver_message ran out of retries (dead-lettered) stays PENDING: the sweep
    would route it again every bound, for ever. Past max_attempts it is marked FAILED instead."""
    service, rows, events, gateways, clock = world
    message, _ = service.create(channel="whatsapp", recipient="ann", text="hi")
    service.route(message.id)
    delivery = rows[message.id].delivery(WA)
    for _ in range(6):
        delivery.start_attempt(clock.t, clock.t + timedelta(seconds=1))
        delivery.attempt_failed("whatsapp: 503 unavailable", clock.t)
    clock.t += timedelta(seconds=901)
    dispatched: list = []
    assert _sweep(service, dispatched, max_attempts=6) == 0 and dispatched == []
    assert rows[message.id].delivery(WA).status is MessageStatus.FAILED
    assert "gave up after 6 attempts" in rows[message.id].delivery(WA).last_error
    assert "503 unavailable" in rows[message.id].delivery(WA).last_error
    assert _statuses(events)[-1] == ("whatsapp", "FAILED")
    assert gateways[WA].sent == []
